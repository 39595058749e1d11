//! `--max-stacks`: how many distinct stacks the tables of every traced
//! process may hold together before the idle ones are evicted, and what
//! the tables share to do it (the kernel's record of the stacks it sent
//! by hash, the eviction count).
//!
//! A stack is idle when nothing outstanding was allocated from it (see
//! `driver::Tracee::evict_stacks`): a leak's stack is never evicted, so
//! the tables hold at most `--max-stacks` stacks plus those holding live
//! blocks (at most one per block, `--max-tracked`).

use std::{cell::Cell, rc::Rc};

use crate::probes::KnownStacks;

/// The default `--max-stacks`. Measured with `tests/workloads/stack_storm.c`
/// (see `tests/bounded.rs`): a table entry, its symbols and its per-stack
/// counters cost ~1 KiB for 10-frame stacks, so 100,000 stacks ~100 MiB.
pub const DEFAULT_MAX_STACKS: usize = 100_000;

/// Shared by every stack table of a run (one per traced process).
#[derive(Clone)]
pub struct StackBudget(Rc<State>);

struct State {
    max: usize,
    used: Cell<usize>,
    evicted: Cell<u64>,
    cut: Cell<Cuts>,
    kernel: Option<KnownStacks>,
}

/// What the tables hold, for the report's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Distinct stacks held now, over every table.
    pub stacks: u64,
    /// Stacks evicted since tracing began.
    pub evicted: u64,
    /// Stacks cut short rather than shown with garbage frames.
    pub cut: Cuts,
}

/// Stacks cut short where a walk would have shown frames that are not
/// return addresses, by where (each time the kernel sends the frames: once
/// per stack, but for walks it sends again until they are complete).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cuts {
    /// By the in-kernel DWARF unwinder, at a frame pointer it did not
    /// believe (`tracer_ebpf::INLINE_STACK_CUT`).
    pub in_kernel: u64,
    /// Here, at a frame in no executable mapping of the process.
    pub at_unmapped: u64,
}

impl StackBudget {
    /// Tables sharing it evict idle stacks beyond `max` in all; with
    /// `kernel`, an evicted stack's frames are sent again if it recurs.
    pub fn new(max: usize, kernel: Option<KnownStacks>) -> Self {
        Self(Rc::new(State {
            max: max.max(1),
            used: Cell::new(0),
            evicted: Cell::new(0),
            cut: Cell::new(Cuts::default()),
            kernel,
        }))
    }

    /// No bound, no kernel (tests, and tables of reports read back).
    pub fn unbounded() -> Self {
        Self::new(usize::MAX, None)
    }

    pub fn max(&self) -> usize {
        self.0.max
    }

    /// Stacks to evict now to get back to the low-water mark (an eighth
    /// below the maximum, so that a pass, which visits a whole table, runs
    /// once per `max / 8` new stacks at most); 0 within the budget.
    pub fn excess(&self) -> usize {
        let used = self.0.used.get();
        if used <= self.0.max {
            return 0;
        }
        used - (self.0.max - self.0.max / 8)
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            stacks: self.0.used.get() as u64,
            evicted: self.0.evicted.get(),
            cut: self.0.cut.get(),
        }
    }

    /// Counts one stack the kernel cut (`in_kernel`) and one cut here at
    /// an unmapped frame (`at_unmapped`).
    pub fn count_cut(&self, in_kernel: bool, at_unmapped: bool) {
        let mut cut = self.0.cut.get();
        cut.in_kernel += u64::from(in_kernel);
        cut.at_unmapped += u64::from(at_unmapped);
        self.0.cut.set(cut);
    }

    pub(super) fn added(&self) {
        self.0.used.set(self.0.used.get() + 1);
    }

    pub(super) fn removed(&self, stacks: usize) {
        self.0.used.set(self.0.used.get().saturating_sub(stacks));
    }

    pub(super) fn evicted(&self, stacks: usize) {
        self.removed(stacks);
        self.0.evicted.set(self.0.evicted.get() + stacks as u64);
    }

    /// The kernel's record of the stacks sent by hash, if there is one.
    pub(super) fn kernel(&self) -> Option<&KnownStacks> {
        self.0.kernel.as_ref()
    }
}
