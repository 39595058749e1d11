//! One traced process's share of the pipeline, the same in every mode:
//! its stacks, its ledger, the history its suspects are ranked from, and
//! its symbolizer. One-process mode has one; host-wide mode one per live
//! process.

use std::rc::Rc;

use tracer_ebpf::Event;

use crate::{
    analysis::{
        History, LedgerNow, Sites, Suspect, Tick, history::DEFAULT_WINDOW, rank_suspects,
        window_live_bytes,
    },
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
    /// The allocation site of each stack the history has held, named once
    /// (a stack's frames do not change).
    sites: Sites,
    /// The last tick recorded, on the events' clock.
    last_tick_ns: u64,
}

impl Tracee {
    pub fn new(pid: u32, ledger: Ledger, shared: Rc<SharedSymbols>) -> Self {
        Self {
            pid,
            ledger,
            stacks: StackTable::new(),
            symbols: ProcessSymbolizer::sharing(pid, shared),
            history: History::new(DEFAULT_WINDOW),
            sites: Sites::new(),
            last_tick_ns: 0,
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
        self.last_tick_ns = view.now_ns;
        self.history.record(Tick {
            elapsed_s,
            at_ns: view.now_ns,
            usage: &view.usage,
            allocated: &self.ledger.allocated_by_stack(),
        });
        for (stack, _, _) in self.history.windows() {
            if !self.sites.contains_key(&stack)
                && let Some(site) = site_key(&self.frames(stack))
            {
                self.sites.insert(stack, site);
            }
        }
    }

    /// The ledger as of the last tick recorded (the final one, once tracing
    /// stopped), every block included.
    pub fn view_at_last_tick(&self) -> StackView {
        self.view(self.last_tick_ns)
    }

    /// The allocation site of each stack of the history and of `more`.
    pub fn sites(&self, more: impl Iterator<Item = StackId>) -> Sites {
        let history = self.history.windows().map(|(stack, _, _)| stack);
        history
            .chain(more)
            .filter_map(|stack| {
                let site = self.sites.get(&stack).copied();
                Some((stack, site.or_else(|| site_key(&self.frames(stack)))?))
            })
            .collect()
    }

    /// The suspects of `view` (which holds every block, as the history
    /// does), ranked on the history so far.
    pub fn rank(&self, view: &StackView) -> Vec<Suspect> {
        let live = window_live_bytes(&self.history, self.ledger.live_blocks());
        rank_suspects(
            &self.history,
            &LedgerNow {
                usage: &view.usage,
                live: &live,
                sites: &self.sites(std::iter::empty()),
                now_ns: view.now_ns,
            },
        )
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
}

/// The allocation site of a stack named `frames`, as a key the leak ranking
/// nets stacks by: the function of its leaf frame (the first that is not an
/// allocator wrapper) and that function's module, or the frame's address
/// when it has no name. Stacks that reach the allocator through the same
/// function share a site.
fn site_key(frames: &[Frame]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let leaf = frames.first()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match &leaf.function {
        Some(function) => (function, &leaf.module).hash(&mut hasher),
        None => leaf.address.hash(&mut hasher),
    }
    Some(hasher.finish())
}

impl NameStacks for Tracee {
    fn frames(&self, stack: StackId) -> Vec<Frame> {
        self.symbols.frames(self.stacks.addresses(stack))
    }
}
