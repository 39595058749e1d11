//! The ledger of outstanding allocations: which blocks are live, how big,
//! allocated from which stack and when.
//!
//! It is plain data fed one [`Event`] at a time, in ring-buffer order, and
//! knows neither aya nor blazesym, so every rule here is unit-tested. The
//! kernel side guarantees the ordering it relies on (see `tracer-ebpf`): an
//! address is always released in the stream before it can be allocated again,
//! and a block being reallocated is announced (`ReallocStart`) before realloc
//! can give it up.

mod live;
pub mod mapped;
mod per_stack;

use std::collections::{HashMap, HashSet};

use tracer_ebpf::{Event, EventKind};

pub use self::{live::Budget, per_stack::TEMPORARY_NS};
use self::{
    live::{Allocation, LiveBlocks},
    per_stack::PerStack,
};
use crate::sampling::Sampling;

pub use crate::stacks::StackId;

const NS_PER_MS: u64 = 1_000_000;

/// A block whose realloc is in flight on some thread.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    old_addr: u64,
    /// `None` when the block predates tracing.
    allocation: Option<Allocation>,
}

/// Running counters since tracing began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocs: u64,
    pub frees: u64,
    /// Frees (and reallocs) of blocks allocated before tracing began.
    pub preexisting_frees: u64,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    /// Allocations not tracked because the [`Budget`] was spent.
    pub dropped_allocations: u64,
    pub dropped_bytes: u64,
    /// Bytes of every allocation since tracing began, freed or not.
    pub allocated_bytes: u64,
}

/// Outstanding allocations of one stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackUsage {
    pub stack: StackId,
    pub bytes: u64,
    pub count: u64,
    /// Allocation time of the oldest outstanding block (CLOCK_MONOTONIC ns,
    /// to the millisecond).
    pub oldest_ns: u64,
    /// Some of these blocks were live when events were lost, so their free
    /// may have been missed: the numbers are an upper bound.
    pub approximate: bool,
}

/// One outstanding block, as [`Ledger::live_blocks`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBlock {
    pub stack: StackId,
    pub size: u64,
    pub timestamp_ns: u64,
}

/// Everything a stack allocated since tracing began, freed or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocated {
    pub bytes: u64,
    pub count: u64,
    /// Of those, the blocks freed within [`TEMPORARY_NS`] of their
    /// allocation (by `free`; a realloc's release is not counted).
    pub temporary_bytes: u64,
    pub temporary_count: u64,
    /// Bytes of the allocations that replaced a block from before tracing:
    /// a realloc of such a block, or the next allocation of a thread that
    /// had just freed one (a cache refreshing an entry it filled before
    /// attach). They grow the stack's outstanding bytes without growing the
    /// process's.
    pub replaced_bytes: u64,
}

/// The largest outstanding total since tracing began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peak {
    pub bytes: u64,
    pub count: u64,
    /// CLOCK_MONOTONIC ns when it was reached (0 if nothing was allocated).
    pub at_ns: u64,
}

/// What a live block counts for: itself when every call is traced; with
/// sampling, the blocks it stands for (counts in 1/COUNT_UNIT of a block).
#[derive(Clone, Copy, Debug, Default)]
struct Weight {
    bytes: u64,
    units: u64,
}

/// Counts are kept in fractions of a block so that sampled blocks, each
/// standing for `1/p` blocks, add up without rounding bias; exact tracing
/// uses whole units.
const COUNT_UNIT: u64 = 1 << 16;

fn blocks(units: u64) -> u64 {
    (units + COUNT_UNIT / 2) / COUNT_UNIT
}

/// The running totals in weighted units (see [`Totals`] for the meaning).
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    alloc_units: u64,
    free_units: u64,
    preexisting_frees: u64,
    outstanding_bytes: u64,
    outstanding_units: u64,
    dropped_allocations: u64,
    dropped_bytes: u64,
    allocated_bytes: u64,
}

pub struct Ledger {
    live: LiveBlocks,
    /// `--sample-rate`: the blocks recorded are a sample, weighed up.
    sampling: Option<Sampling>,
    /// CLOCK_MONOTONIC ns that `Allocation::time_ms` counts from; set from
    /// the first event.
    epoch_ns: Option<u64>,
    /// Latest moment at which the kernel is known to have lost events.
    last_loss_ns: Option<u64>,
    in_flight: HashMap<u32, InFlight>,
    tally: Tally,
    /// Allocations seen at an address the ledger still held: only possible
    /// when the free in between was lost, so counted to flag inexact numbers.
    overwritten: u64,
    /// Per-stack totals of all allocations (pprof's `alloc_space`), the
    /// temporary ones, and the peak.
    per_stack: PerStack,
    /// Threads whose last event freed a block from before tracing.
    after_unknown_free: HashSet<u32, foldhash::fast::FixedState>,
}

/// Bound on [`Ledger::after_unknown_free`]: far more threads than a process
/// runs at once.
const MAX_THREADS_AFTER_UNKNOWN_FREE: usize = 4096;

impl Ledger {
    /// An empty ledger that tracks live blocks while `budget` lasts (new
    /// ones beyond it are dropped and counted). With `sampling`, it holds
    /// the blocks a sampled kernel reported, and every number it gives is an
    /// estimate for all blocks.
    pub fn new(budget: Budget, sampling: Option<Sampling>) -> Self {
        Self {
            live: LiveBlocks::new(budget),
            sampling,
            epoch_ns: None,
            last_loss_ns: None,
            in_flight: HashMap::new(),
            tally: Tally::default(),
            overwritten: 0,
            per_stack: PerStack::default(),
            after_unknown_free: HashSet::default(),
        }
    }

    /// Records that the kernel lost events at or before `at_ns`: blocks
    /// live then may have been freed unseen.
    pub fn note_loss(&mut self, at_ns: u64) {
        self.last_loss_ns = Some(at_ns);
    }

    /// Applies one event from the kernel, whose allocation (if it makes
    /// one) came from `stack`. Unknown kinds are ignored.
    pub fn apply(&mut self, event: &Event, stack: StackId) {
        let Some(kind) = event.kind() else { return };
        // Empty most of the time: only frees of blocks from before tracing
        // fill it.
        let after_unknown_free =
            !self.after_unknown_free.is_empty() && self.after_unknown_free.remove(&event.tid);
        match kind {
            EventKind::Alloc => {
                let tracked = self.allocate(event.addr, event, stack);
                if tracked && after_unknown_free {
                    self.note_replacement(event, stack);
                }
            }
            EventKind::Free => {
                if !self.free(event.addr, event.timestamp_ns) {
                    self.note_unknown_free(event.tid);
                }
            }
            EventKind::ReallocStart => self.start_realloc(event.tid, event.old_addr),
            EventKind::ReallocEnd => {
                let (tracked, moved_unknown) = self.end_realloc(event, stack);
                if tracked && (moved_unknown || after_unknown_free) {
                    self.note_replacement(event, stack);
                }
            }
            EventKind::Exec
            | EventKind::ProcessExit
            | EventKind::Fork
            | EventKind::Map
            | EventKind::Unmap
            | EventKind::Remap
            | EventKind::Protect
            | EventKind::Brk
            | EventKind::RemapKeep => {}
        }
    }

    /// A thread freed a block from before tracing: its next allocation, if
    /// it comes next, is taken as that block's replacement.
    fn note_unknown_free(&mut self, tid: u32) {
        if self.after_unknown_free.len() >= MAX_THREADS_AFTER_UNKNOWN_FREE {
            // Threads that exited right after such a free (glibc's thread
            // exit frees its cache): forget them all rather than grow.
            self.after_unknown_free.clear();
        }
        self.after_unknown_free.insert(tid);
    }

    /// The allocation `event` replaced a block from before tracing.
    fn note_replacement(&mut self, event: &Event, stack: StackId) {
        let bytes = self.weigh(event.size).bytes;
        self.per_stack.replaced(stack, bytes);
    }

    pub fn totals(&self) -> Totals {
        let tally = self.tally;
        Totals {
            allocs: blocks(tally.alloc_units),
            frees: blocks(tally.free_units),
            preexisting_frees: tally.preexisting_frees,
            outstanding_bytes: tally.outstanding_bytes,
            outstanding_count: blocks(tally.outstanding_units),
            dropped_allocations: tally.dropped_allocations,
            dropped_bytes: tally.dropped_bytes,
            allocated_bytes: tally.allocated_bytes,
        }
    }

    fn weigh(&self, size: u64) -> Weight {
        match &self.sampling {
            None => Weight {
                bytes: size,
                units: COUNT_UNIT,
            },
            Some(sampling) => {
                let p = sampling.probability(size);
                Weight {
                    bytes: (size as f64 / p).round() as u64,
                    units: (COUNT_UNIT as f64 / p).round() as u64,
                }
            }
        }
    }

    /// Allocations that replaced a block the ledger believed live.
    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// Per-stack outstanding usage of blocks allocated at or before
    /// `allocated_before_ns`, largest first (ties by stack id, so output is
    /// stable).
    pub fn usage_by_stack(&self, allocated_before_ns: u64) -> Vec<StackUsage> {
        let mut by_stack: HashMap<StackId, (StackUsage, u64)> = HashMap::new();
        for allocation in self.live.values() {
            let allocated_ns = self.time_ns(allocation.time_ms);
            if allocated_ns > allocated_before_ns {
                continue;
            }
            let weight = self.weigh(allocation.size);
            let (usage, units) = by_stack.entry(allocation.stack).or_insert((
                StackUsage {
                    stack: allocation.stack,
                    bytes: 0,
                    count: 0,
                    oldest_ns: u64::MAX,
                    approximate: false,
                },
                0,
            ));
            usage.bytes += weight.bytes;
            *units += weight.units;
            usage.oldest_ns = usage.oldest_ns.min(allocated_ns);
        }
        let mut usage: Vec<StackUsage> = by_stack
            .into_values()
            .map(|(usage, units)| StackUsage {
                count: blocks(units),
                ..usage
            })
            .collect();
        if let Some(loss_ns) = self.last_loss_ns {
            for usage in &mut usage {
                usage.approximate = usage.oldest_ns <= loss_ns;
            }
        }
        usage.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.stack.cmp(&b.stack)));
        usage
    }

    /// Every outstanding block, in no particular order.
    pub fn live_blocks(&self) -> impl Iterator<Item = LiveBlock> + '_ {
        self.live.values().map(|allocation| LiveBlock {
            stack: allocation.stack,
            size: self.weigh(allocation.size).bytes,
            timestamp_ns: self.time_ns(allocation.time_ms),
        })
    }

    /// Per-stack totals of everything allocated since tracing began.
    pub fn allocated_by_stack(&self) -> HashMap<StackId, Allocated> {
        self.per_stack
            .totals()
            .map(
                |(
                    stack,
                    [
                        bytes,
                        units,
                        temporary_bytes,
                        temporary_units,
                        replaced_bytes,
                    ],
                )| {
                    let allocated = Allocated {
                        bytes,
                        count: blocks(units),
                        temporary_bytes,
                        temporary_count: blocks(temporary_units),
                        replaced_bytes,
                    };
                    (stack, allocated)
                },
            )
            .collect()
    }

    /// Whether the ledger keeps anything of a stack: outstanding blocks
    /// (one whose realloc is in flight included) or bytes at the peak. The
    /// stack table may evict the others.
    pub fn keeps_stacks(&self) -> impl Fn(StackId) -> bool + '_ {
        let in_flight: HashSet<StackId> = self
            .in_flight
            .values()
            .filter_map(|in_flight| Some(in_flight.allocation?.stack))
            .collect();
        move |stack| in_flight.contains(&stack) || self.per_stack.keeps(stack)
    }

    /// Drops what the ledger counted of stacks the stack table evicted
    /// (they hold no block): their share of the hot spots and temporary
    /// allocations views goes with them.
    pub fn forget_stacks(&mut self, stacks: &[StackId]) {
        self.per_stack.remove(stacks);
    }

    /// The largest outstanding total since tracing began.
    pub fn peak(&self) -> Peak {
        let peak = self.per_stack.peak();
        Peak {
            bytes: peak.bytes,
            count: blocks(peak.units),
            at_ns: peak.at_ns,
        }
    }

    /// The bytes each stack held when the outstanding total peaked (the
    /// stacks holding any), largest first.
    pub fn stacks_at_peak(&self) -> Vec<(StackId, u64)> {
        let mut stacks: Vec<(StackId, u64)> = self.per_stack.at_peak().collect();
        stacks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        stacks
    }

    /// Adds a block; false when the ledger is full and it is dropped.
    fn allocate(&mut self, addr: u64, event: &Event, stack: StackId) -> bool {
        let allocation = Allocation {
            size: event.size,
            stack,
            time_ms: self.time_ms(event.timestamp_ns),
        };
        if self.live.is_full() && !self.live.contains_key(&addr) {
            self.tally.dropped_allocations += 1;
            self.tally.dropped_bytes += allocation.size;
            return false;
        }
        if let Some(previous) = self.live.insert(addr, allocation) {
            self.overwritten += 1;
            self.forget(previous);
        }
        let weight = self.weigh(allocation.size);
        self.tally.alloc_units += weight.units;
        self.tally.allocated_bytes += weight.bytes;
        self.tally.outstanding_bytes += weight.bytes;
        self.tally.outstanding_units += weight.units;
        self.per_stack
            .allocated(allocation.stack, weight.bytes, weight.units);
        self.per_stack.note_total(
            self.tally.outstanding_bytes,
            self.tally.outstanding_units,
            event.timestamp_ns,
        );
        true
    }

    /// Removes a freed block; false when the ledger did not know it (it
    /// was allocated before tracing).
    fn free(&mut self, addr: u64, at_ns: u64) -> bool {
        match self.live.remove(&addr) {
            Some(allocation) => {
                let age_ns = at_ns.saturating_sub(self.time_ns(allocation.time_ms));
                self.release(allocation, age_ns <= TEMPORARY_NS);
                self.tally.free_units += self.weigh(allocation.size).units;
                true
            }
            None => {
                self.tally.preexisting_frees += 1;
                false
            }
        }
    }

    /// Takes the block out of the ledger while realloc may free it, so that
    /// another thread's allocation of the same address cannot collide with it.
    fn start_realloc(&mut self, tid: u32, old_addr: u64) {
        let allocation = self.live.remove(&old_addr);
        if let Some(allocation) = allocation {
            self.forget(allocation);
        }
        let in_flight = InFlight {
            old_addr,
            allocation,
        };
        if let Some(stale) = self.in_flight.insert(tid, in_flight) {
            // The previous realloc's end was lost; its block's fate is unknown.
            self.count_release(stale);
        }
    }

    /// Ends a realloc; returns whether its new block is tracked and whether
    /// the block it replaced was from before tracing.
    fn end_realloc(&mut self, event: &Event, stack: StackId) -> (bool, bool) {
        let in_flight = match self.in_flight.remove(&event.tid) {
            Some(in_flight) if in_flight.old_addr == event.old_addr => Some(in_flight),
            Some(other) => {
                self.count_release(other);
                None
            }
            None => None,
        };
        let in_flight = in_flight.or_else(|| {
            // No start seen (realloc(NULL, n), or a lost start event): take the
            // block now.
            (event.old_addr != 0).then(|| {
                let allocation = self.live.remove(&event.old_addr);
                if let Some(allocation) = allocation {
                    self.forget(allocation);
                }
                InFlight {
                    old_addr: event.old_addr,
                    allocation,
                }
            })
        });
        let failed = event.addr == 0 && event.size != 0;
        if failed {
            // realloc failed: the old block is untouched.
            if let Some(InFlight {
                old_addr,
                allocation: Some(allocation),
            }) = in_flight
            {
                self.restore(old_addr, allocation);
            }
            return (false, false);
        }
        let moved_unknown = in_flight.is_some_and(|in_flight| in_flight.allocation.is_none());
        if let Some(in_flight) = in_flight {
            self.count_release(in_flight);
        }
        let tracked = event.addr != 0 && self.allocate(event.addr, event, stack);
        (tracked, moved_unknown)
    }

    /// Counts a block realloc gave up (or whose realloc's end was lost).
    fn count_release(&mut self, in_flight: InFlight) {
        match in_flight.allocation {
            Some(allocation) => self.tally.free_units += self.weigh(allocation.size).units,
            None => self.tally.preexisting_frees += 1,
        }
    }

    fn restore(&mut self, addr: u64, allocation: Allocation) {
        let weight = self.weigh(allocation.size);
        self.tally.outstanding_bytes += weight.bytes;
        self.tally.outstanding_units += weight.units;
        self.per_stack
            .restored(allocation.stack, weight.bytes, weight.units);
        if let Some(previous) = self.live.insert(addr, allocation) {
            self.overwritten += 1;
            self.forget(previous);
        }
    }

    fn time_ms(&mut self, timestamp_ns: u64) -> u32 {
        // Events reach the ring slightly out of timestamp order across CPUs;
        // a second of slack keeps early stragglers from clamping to 0.
        let epoch_ns = *self
            .epoch_ns
            .get_or_insert_with(|| timestamp_ns.saturating_sub(1_000_000_000));
        let ms = timestamp_ns.saturating_sub(epoch_ns) / NS_PER_MS;
        u32::try_from(ms).unwrap_or(u32::MAX)
    }

    fn time_ns(&self, time_ms: u32) -> u64 {
        self.epoch_ns.unwrap_or(0) + u64::from(time_ms) * NS_PER_MS
    }

    /// Removes a block's contribution to the outstanding totals.
    fn forget(&mut self, allocation: Allocation) {
        self.release(allocation, false);
    }

    /// Removes a block's contribution to the outstanding totals, counting
    /// it as a temporary allocation of its stack if `temporary`.
    fn release(&mut self, allocation: Allocation, temporary: bool) {
        let weight = self.weigh(allocation.size);
        self.tally.outstanding_bytes -= weight.bytes;
        self.tally.outstanding_units -= weight.units;
        self.per_stack
            .released(allocation.stack, weight.bytes, weight.units, temporary);
    }
}

#[cfg(test)]
mod tests;
