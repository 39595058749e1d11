//! What the programs count instead of failing: the per-CPU counters
//! userspace reports (lost events, stack errors, calls whose state could
//! not be kept), and how a program body's early stop becomes one.
//!
//! A program never fails the traced call: its body returns an [`Outcome`]
//! whose error is the counter of why it stopped, and its wrapper counts it
//! with [`finish`].

use aya_ebpf::{EbpfContext, maps::PerCpuArray};
use aya_log_ebpf::warn;
use tracer_ebpf::{COUNTER_SLOTS, Counter};

shared_map!(
    COUNTERS_MAP,
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
);

/// What a program body returns: `Err` names the counter of why it stopped
/// before its event (the ring was full, the kernel refused a map update,
/// the call had no entry...).
pub type Outcome = Result<(), Counter>;

/// Counts why a program stopped early, if it did.
#[inline(always)]
pub fn finish<C: EbpfContext>(ctx: &C, outcome: Outcome) {
    match outcome {
        Ok(()) => {}
        Err(Counter::LostEvents) => count_lost(ctx),
        Err(counter) => {
            bump(counter);
        }
    }
}

/// Out of line: the log call is ~400 instructions, which each program
/// would otherwise carry (and the verifier walk) on its cold path.
#[inline(never)]
fn count_lost<C: EbpfContext>(ctx: &C) {
    if bump(Counter::LostEvents) == 1 {
        // Once per CPU: explains lost events under --verbose without
        // flooding the log ring while the event ring is full.
        warn!(
            ctx,
            "event ring buffer full: events lost; raise --ring-size"
        );
    }
}

/// Increments a counter and returns its new value on this CPU.
pub fn bump(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot, and uprobe programs run with preemption
        // disabled, so nothing else touches it during the increment.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}
