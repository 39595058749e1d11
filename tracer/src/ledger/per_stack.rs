//! Running counters per stack, kept as events arrive, for heaptrack's views:
//! everything a stack allocated (hot spots), the blocks it freed soon after
//! allocating them (temporary allocations), and what it held at the moment
//! the outstanding total peaked.
//!
//! Memory is one small entry per stack ever seen, like the stack table
//! itself; nothing here grows with the number of events or blocks.
//!
//! The peak is exact without copying every stack at every new peak (a
//! growing process sets a new peak with almost every allocation): each peak
//! starts a new generation, and a stack's bytes at the latest peak are taken
//! lazily, the first time the stack changes after it. A stack that has not
//! changed since the peak still holds what it held then.

use std::collections::HashMap;

use super::StackId;

/// A block freed at most this long after its allocation is *temporary*
/// (heaptrack's notion of memory a program could have kept on the stack or
/// reused): 100 ms covers a request's scratch buffers, not a cache entry.
pub const TEMPORARY_NS: u64 = 100_000_000;

/// Counters of one stack, in the ledger's weighted units (see `Weight`).
#[derive(Clone, Copy, Debug, Default)]
struct StackCounters {
    allocated_bytes: u64,
    allocated_units: u64,
    temporary_bytes: u64,
    temporary_units: u64,
    replaced_bytes: u64,
    live_bytes: u64,
    /// Outstanding blocks (in units), for eviction: a block of 0 bytes
    /// still holds its stack.
    live_units: u64,
    /// `live_bytes` at the latest peak, valid when `generation` is the
    /// peak's generation; otherwise the stack has not changed since and
    /// `live_bytes` is its value at the peak.
    at_peak_bytes: u64,
    generation: u64,
}

/// The largest outstanding total seen, and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peak {
    pub bytes: u64,
    /// In the ledger's count units (converted by the ledger).
    pub units: u64,
    /// CLOCK_MONOTONIC ns of the event that reached it (0 before any).
    pub at_ns: u64,
    generation: u64,
}

#[derive(Debug, Default)]
pub(super) struct PerStack {
    /// Looked up on every allocation and free: foldhash rather than the
    /// default SipHash, which cost the aggregator ~20% of its event rate
    /// (the `aggregator` example, medians of 6 runs: 3.4 M/s against
    /// 4.3 M/s before frees looked this map up; with foldhash 3.8 M/s
    /// against 3.8 M/s, on a shared 2-core machine).
    stacks: HashMap<StackId, StackCounters, foldhash::fast::FixedState>,
    peak: Peak,
}

impl PerStack {
    /// A block of `bytes` (`units`) was allocated from `stack`.
    pub fn allocated(&mut self, stack: StackId, bytes: u64, units: u64) {
        let counters = self.touch(stack);
        counters.allocated_bytes += bytes;
        counters.allocated_units += units;
        counters.live_bytes += bytes;
        counters.live_units += units;
    }

    /// A block of `stack` left the ledger; `temporary` when it was freed
    /// within [`TEMPORARY_NS`] of its allocation.
    pub fn released(&mut self, stack: StackId, bytes: u64, units: u64, temporary: bool) {
        let counters = self.touch(stack);
        counters.live_bytes = counters.live_bytes.saturating_sub(bytes);
        counters.live_units = counters.live_units.saturating_sub(units);
        if temporary {
            counters.temporary_bytes += bytes;
            counters.temporary_units += units;
        }
    }

    /// A block of `bytes` allocated from `stack` replaced one from before
    /// tracing.
    pub fn replaced(&mut self, stack: StackId, bytes: u64) {
        self.touch(stack).replaced_bytes += bytes;
    }

    /// A block came back to `stack` (a failed realloc).
    pub fn restored(&mut self, stack: StackId, bytes: u64, units: u64) {
        let counters = self.touch(stack);
        counters.live_bytes += bytes;
        counters.live_units += units;
    }

    /// Whether `stack` holds outstanding blocks, or held bytes at the peak
    /// (the peak view names it): then it must not be evicted.
    pub fn keeps(&self, stack: StackId) -> bool {
        self.stacks
            .get(&stack)
            .is_some_and(|counters| counters.live_units > 0 || self.bytes_at_peak(counters) > 0)
    }

    /// Drops the counters of stacks evicted from the stack table.
    pub fn remove(&mut self, stacks: &[StackId]) {
        for stack in stacks {
            self.stacks.remove(stack);
        }
    }

    /// Called after every change of the outstanding totals: a new maximum
    /// becomes the peak, at `at_ns`.
    pub fn note_total(&mut self, bytes: u64, units: u64, at_ns: u64) {
        if bytes > self.peak.bytes {
            self.peak = Peak {
                bytes,
                units,
                at_ns,
                generation: self.peak.generation + 1,
            };
        }
    }

    pub fn peak(&self) -> Peak {
        self.peak
    }

    /// Each stack's bytes at the peak, the non-zero ones.
    pub fn at_peak(&self) -> impl Iterator<Item = (StackId, u64)> + '_ {
        self.stacks
            .iter()
            .map(|(&stack, counters)| (stack, self.bytes_at_peak(counters)))
            .filter(|(_, bytes)| *bytes > 0)
    }

    /// (stack, [allocated bytes, allocated units, temporary bytes, temporary
    /// units, replaced bytes]).
    pub fn totals(&self) -> impl Iterator<Item = (StackId, [u64; 5])> + '_ {
        self.stacks.iter().map(|(&stack, c)| {
            (
                stack,
                [
                    c.allocated_bytes,
                    c.allocated_units,
                    c.temporary_bytes,
                    c.temporary_units,
                    c.replaced_bytes,
                ],
            )
        })
    }

    fn bytes_at_peak(&self, counters: &StackCounters) -> u64 {
        if counters.generation == self.peak.generation {
            counters.at_peak_bytes
        } else {
            counters.live_bytes
        }
    }

    /// The stack's counters, about to change: if a peak happened since it
    /// last changed, its bytes now are its bytes at that peak.
    fn touch(&mut self, stack: StackId) -> &mut StackCounters {
        let generation = self.peak.generation;
        let counters = self.stacks.entry(stack).or_default();
        if counters.generation != generation {
            counters.at_peak_bytes = counters.live_bytes;
            counters.generation = generation;
        }
        counters
    }
}
