//! `alloctrace bench-aggregator EVENTS` (hidden; run by `cargo xtask bench`):
//! how many events per second the userspace aggregator sustains on one core.
//!
//! The kernel cannot feed it at full speed here (every event costs the
//! target a trap of a microsecond or more), so this feeds it a synthetic
//! stream in the ring's exact record layout, shaped like the bench's churn
//! workload (threads keeping 64 live blocks each, freeing and reallocating at
//! random, from a few dozen stacks) plus a leak (one block in 16 is never
//! freed, so the ledger grows to hundreds of thousands of blocks and its
//! tables stop fitting in the caches), through the same decoding, merging of
//! the per-CPU rings (each thread writes to its own) and ledger code the
//! tracer runs. Symbolization is left out: it happens once per new stack,
//! not per event.

use std::time::Instant;

use anyhow::{Context as _, bail};
use tracer_ebpf::{Event, EventKind, NO_STACK};

use crate::{events::Merge, ledger::Ledger};

const THREADS: u64 = 2;
const SLOTS: u64 = 64;
const STACKS: u64 = 48;
/// Events per drain: the tracer drains every 10 ms.
const DRAIN_EVENTS: usize = 20_000;

/// Runs the benchmark and prints one JSON line with the result.
pub fn run(args: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let events: u64 = match args.collect::<Vec<_>>().as_slice() {
        [count] => count
            .to_str()
            .and_then(|count| count.parse().ok())
            .context("usage: alloctrace bench-aggregator EVENTS")?,
        _ => bail!("usage: alloctrace bench-aggregator EVENTS"),
    };
    let items = churn_stream(events);
    let mut ledger = Ledger::new(u64::MAX, None);
    let mut merge = Merge::default();
    let started = Instant::now();
    let mut applied = 0;
    for drain in items.chunks(DRAIN_EVENTS) {
        for ring in 0..THREADS {
            for item in drain.iter().filter(|item| item.ring == ring) {
                merge.push(&item.bytes, &mut |_, _| None);
            }
        }
        let horizon_ns = drain.last().map_or(0, |item| item.timestamp_ns);
        applied += merge.release(horizon_ns, |event, _| ledger.apply(event));
    }
    applied += merge.release(u64::MAX, |event, _| ledger.apply(event));
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
            items.push(record(
                EventKind::Free,
                thread,
                live[slot],
                0,
                NO_STACK,
                timestamp_ns,
            ));
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
        let stack = ((random >> 32) % STACKS) as i32;
        items.push(record(
            EventKind::Alloc,
            thread,
            address,
            size,
            stack,
            timestamp_ns,
        ));
    }
    items.truncate(count as usize);
    items
}

fn record(
    kind: EventKind,
    thread: u64,
    addr: u64,
    size: u64,
    stack_id: i32,
    timestamp_ns: u64,
) -> Item {
    let event = Event {
        kind: kind as u32,
        tid: 1000 + thread as u32,
        pid: 1000,
        stack_id,
        size,
        addr,
        old_addr: 0,
        timestamp_ns,
        stack_hash: 0,
    };
    Item {
        ring: thread,
        timestamp_ns,
        // SAFETY: Event is plain `#[repr(C)]` data without padding (its size
        // is asserted in tracer-ebpf), so its bytes are its wire format.
        bytes: unsafe { std::mem::transmute::<Event, [u8; size_of::<Event>()]>(event) },
    }
}
