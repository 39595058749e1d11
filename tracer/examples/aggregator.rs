//! `cargo run --release -p tracer --example aggregator -- EVENTS` (run by
//! `cargo xtask bench`): how many events per second the userspace
//! aggregator sustains on one core.
//!
//! The kernel cannot feed it at full speed here (every event costs the
//! target a trap of a microsecond or more), so this feeds it a synthetic
//! stream in the ring's exact record layout, shaped like the bench's churn
//! workload (threads keeping 64 live blocks each, freeing and reallocating at
//! random, from a few dozen stacks) plus a leak (one block in 16 is never
//! freed, so the ledger grows to hundreds of thousands of blocks and its
//! tables stop fitting in the caches), through the same decoding, merging of
//! the per-CPU rings (each thread writes to its own), stack lookup (each
//! event names its stack by hash, as the kernel sends known stacks) and
//! ledger code the tracer runs. Symbolization is left out: it happens once
//! per new stack, not per event.

use std::time::Instant;

use anyhow::{Context as _, bail};
use tracer::{
    events::{Arrived, Merge},
    ledger::{Budget, Ledger},
    stacks::{StackId, StackTable},
};
use tracer_ebpf::{Event, EventKind, NO_STACK, STACK_HASH};

const THREADS: u64 = 2;
const SLOTS: u64 = 64;
const STACKS: u64 = 48;
/// Events per drain: the tracer drains every 10 ms.
const DRAIN_EVENTS: usize = 20_000;

fn main() {
    if let Err(error) = run(std::env::args_os().skip(1)) {
        eprintln!("aggregator: {error:#}");
        std::process::exit(1);
    }
}

/// Runs the benchmark and prints one JSON line with the result.
fn run(args: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let events: u64 = match args.collect::<Vec<_>>().as_slice() {
        [count] => count
            .to_str()
            .and_then(|count| count.parse().ok())
            .context("usage: aggregator EVENTS")?,
        _ => bail!("usage: aggregator EVENTS"),
    };
    let items = churn_stream(events);
    let mut ledger = Ledger::new(Budget::new(u64::MAX), None);
    let mut stacks = known_stacks();
    let mut merge = Merge::<StackId>::default();
    let mut apply = |event: &Event, arrived: Arrived<'_, StackId>| {
        let stack = match arrived {
            Arrived::Resolved(stack) => stack,
            Arrived::Carried(carried) => stacks.stack_of(event, carried),
        };
        ledger.apply(event, stack);
    };
    let started = Instant::now();
    let mut applied = 0;
    for drain in items.chunks(DRAIN_EVENTS) {
        for ring in 0..THREADS {
            for item in drain.iter().filter(|item| item.ring == ring) {
                merge.push(&item.bytes, &mut |_, _| None);
            }
        }
        let horizon_ns = drain.last().map_or(0, |item| item.timestamp_ns);
        applied += merge.release(horizon_ns, &mut apply);
    }
    applied += merge.release(u64::MAX, &mut apply);
    let applied = applied as u64;
    let seconds = started.elapsed().as_secs_f64();
    let totals = ledger.totals();
    println!(
        "{}",
        serde_json::json!({
            "events": applied,
            "seconds": seconds,
            "events_per_s": applied as f64 / seconds,
            "outstanding_count": totals.outstanding_count,
        })
    );
    Ok(())
}

/// The bench's stacks, as the tracer holds them once the kernel has sent
/// each one's frames: filed under their hash (`stack index + 1`).
fn known_stacks() -> StackTable {
    let mut stacks = StackTable::new();
    for stack in 0..STACKS {
        let frames = [0x40_0000 + stack * 0x10, 0x40_1000, 0x40_2000];
        let sent = Event {
            stack_hash: stack + 1,
            ..record_event(EventKind::Alloc, 0, 0, 0, NO_STACK, 0)
        };
        stacks.stack_of(&sent, tracer::events::Carried::Frames(&frames));
    }
    stacks
}

/// A ring item as the kernel writes it, and which ring it is in.
struct Item {
    ring: u64,
    timestamp_ns: u64,
    bytes: [u8; size_of::<Event>()],
}

/// `count` ring items: a free and an allocation per step, per thread.
fn churn_stream(count: u64) -> Vec<Item> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut live = vec![0u64; (THREADS * SLOTS) as usize];
    let mut fresh_address = 0x5555_0000_0000u64;
    let mut items = Vec::with_capacity(count as usize);
    let mut timestamp_ns = 1_000_000_000u64;
    while (items.len() as u64) < count {
        let random = next();
        let thread = random % THREADS;
        let slot = (thread * SLOTS + (random >> 8) % SLOTS) as usize;
        timestamp_ns += 500;
        let leaked = (random >> 48) % 16 == 0;
        if live[slot] != 0 && !leaked {
            let event = record_event(
                EventKind::Free,
                thread,
                live[slot],
                0,
                NO_STACK,
                timestamp_ns,
            );
            items.push(item(thread, event));
        }
        if leaked {
            live[slot] = 0;
        }
        // Allocators hand recently freed addresses back: reuse one often.
        let address = if random >> 40 & 1 == 0 && live[slot] != 0 {
            live[slot]
        } else {
            fresh_address += 1040;
            fresh_address
        };
        live[slot] = address;
        let size = 16 + (random >> 16) % 1024;
        let stack = (random >> 32) % STACKS;
        let mut event = record_event(
            EventKind::Alloc,
            thread,
            address,
            size,
            STACK_HASH,
            timestamp_ns,
        );
        event.stack_hash = stack + 1;
        items.push(item(thread, event));
    }
    items.truncate(count as usize);
    items
}

fn record_event(
    kind: EventKind,
    thread: u64,
    addr: u64,
    size: u64,
    stack_id: i32,
    timestamp_ns: u64,
) -> Event {
    Event {
        kind: kind as u32,
        tid: 1000 + thread as u32,
        pid: 1000,
        stack_id,
        size,
        addr,
        old_addr: 0,
        timestamp_ns,
        stack_hash: 0,
    }
}

fn item(ring: u64, event: Event) -> Item {
    Item {
        ring,
        timestamp_ns: event.timestamp_ns,
        // SAFETY: Event is plain `#[repr(C)]` data without padding (its size
        // is asserted in tracer-ebpf), so its bytes are its wire format.
        bytes: unsafe { std::mem::transmute::<Event, [u8; size_of::<Event>()]>(event) },
    }
}
