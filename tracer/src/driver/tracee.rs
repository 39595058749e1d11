//! One traced process's share of the pipeline, the same in every mode:
//! its stacks, its ledger, the history its suspects are ranked from, and
//! its symbolizer. One-process mode has one; host-wide mode one per live
//! process.

use std::rc::Rc;

use tracer_ebpf::Event;

use crate::{
    analysis::{History, history::DEFAULT_WINDOW, rank_suspects},
    events::{Arrived, Carried},
    ledger::Ledger,
    report::{NameStacks, StackReport, StackView, SuspectReport},
    stacks::{StackId, StackTable},
    symbolize::{Frame, ProcessSymbolizer, SharedSymbols},
};

pub struct Tracee {
    pub pid: u32,
    pub ledger: Ledger,
    pub stacks: StackTable,
    pub symbols: ProcessSymbolizer,
    /// Each stack's outstanding bytes at the last ticks.
    pub history: History,
}

impl Tracee {
    pub fn new(pid: u32, ledger: Ledger, shared: Rc<SharedSymbols>) -> Self {
        Self {
            pid,
            ledger,
            stacks: StackTable::new(),
            symbols: ProcessSymbolizer::sharing(pid, shared),
            history: History::new(DEFAULT_WINDOW),
        }
    }

    /// The id of the stack `event` carries; a stack seen for the first time
    /// is symbolized now, while the process is there to be read.
    pub fn resolve(&mut self, event: &Event, carried: Carried<'_>) -> StackId {
        let known = self.stacks.len();
        let stack = self.stacks.stack_of(event, carried);
        if self.stacks.len() > known {
            self.symbols.symbolize_new(self.stacks.addresses(stack));
        }
        stack
    }

    /// Applies one allocator event to the ledger.
    pub fn apply(&mut self, event: &Event, arrived: Arrived<'_, StackId>) {
        let stack = match arrived {
            Arrived::Resolved(stack) => stack,
            Arrived::Carried(carried) => self.resolve(event, carried),
        };
        self.ledger.apply(event, stack);
    }

    /// The ledger by stack at `now_ns`, every block included.
    pub fn view(&self, now_ns: u64) -> StackView {
        StackView::of(&self.ledger, now_ns, u64::MAX)
    }

    /// Records a tick of `view` in the history.
    pub fn record(&mut self, elapsed_s: f64, view: &StackView) {
        self.history.record(elapsed_s, &view.usage);
    }

    /// The `limit` largest stacks of `view`, named.
    pub fn largest(&self, view: &StackView, limit: usize) -> Vec<StackReport> {
        view.largest(self, limit)
    }

    /// The `limit` most suspicious stacks of `view` (which holds every
    /// block, as the history does), named.
    pub fn suspects(&self, view: &StackView, limit: usize) -> Vec<SuspectReport> {
        let ranked = rank_suspects(&self.history, &view.usage, view.now_ns);
        view.suspects(&ranked, self, self.pid, limit)
    }
}

impl NameStacks for Tracee {
    fn frames(&self, stack: StackId) -> Vec<Frame> {
        self.symbols.frames(self.stacks.addresses(stack))
    }
}
