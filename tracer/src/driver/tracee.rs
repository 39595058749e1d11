//! One traced process's share of the pipeline, the same in every mode:
//! its stacks, its ledger, the history its suspects are ranked from, and
//! its symbolizer. One-process mode has one; host-wide mode one per live
//! process.

use std::rc::Rc;

use tracer_ebpf::Event;

use crate::{
    analysis::{
        History, Suspect,
        history::DEFAULT_WINDOW,
        rank_suspects,
        timeline::{Point, StackSeries, Timeline, TimelineReport},
    },
    events::{Arrived, Carried},
    ledger::Ledger,
    report::{NameStacks, StackReport, StackView, SuspectReport, TIMELINE_SUSPECTS},
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
    /// The process's totals at every tick of the run (bounded).
    pub timeline: Timeline,
}

impl Tracee {
    pub fn new(pid: u32, ledger: Ledger, shared: Rc<SharedSymbols>) -> Self {
        Self {
            pid,
            ledger,
            stacks: StackTable::new(),
            symbols: ProcessSymbolizer::sharing(pid, shared),
            history: History::new(DEFAULT_WINDOW),
            timeline: Timeline::default(),
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

    /// Records a tick of `view` in the history and the timeline.
    pub fn record(&mut self, elapsed_s: f64, view: &StackView) {
        self.history.record(elapsed_s, &view.usage);
        self.timeline.record(Point {
            elapsed_s,
            outstanding_bytes: view.usage.iter().map(|usage| usage.bytes).sum(),
            outstanding_count: view.usage.iter().map(|usage| usage.count).sum(),
        });
    }

    /// The timeline as the report writes it, with the series of the first
    /// [`TIMELINE_SUSPECTS`] of `ranked` (this process's suspects, in the
    /// report's order)
    /// from the history they were ranked on.
    pub fn timeline(&self, ranked: &[Suspect]) -> TimelineReport {
        let stacks = ranked
            .iter()
            .take(TIMELINE_SUSPECTS)
            .enumerate()
            .map(|(index, suspect)| StackSeries::new(index, &self.history.samples(&suspect.stack)))
            .collect();
        self.timeline.report(stacks)
    }

    /// The `limit` largest stacks of `view`, named.
    pub fn largest(&self, view: &StackView, limit: usize) -> Vec<StackReport> {
        view.largest(self, limit)
    }

    /// The `limit` most suspicious stacks of `view` (which holds every
    /// block, as the history does), named.
    pub fn suspects(&self, view: &StackView, limit: usize) -> Vec<SuspectReport> {
        view.suspects(&self.rank(view), self, self.pid, limit)
    }

    /// The stacks of `view` suspected of leaking, most suspicious first.
    pub fn rank(&self, view: &StackView) -> Vec<Suspect> {
        rank_suspects(&self.history, &view.usage, view.now_ns)
    }
}

impl NameStacks for Tracee {
    fn frames(&self, stack: StackId) -> Vec<Frame> {
        self.symbols.frames(self.stacks.addresses(stack))
    }
}
