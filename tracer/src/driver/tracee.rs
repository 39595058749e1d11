//! One traced process's share of the pipeline, the same in every mode:
//! its stacks, its ledger (and, with mapped memory traced, its ledger of
//! mappings), the history its suspects are ranked from, and its
//! symbolizer. One-process mode has one; host-wide mode one per live
//! process.

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
};

use tracer_ebpf::{Event, INLINE_STACK_CUT, INLINE_STACK_PARTIAL};

use crate::{
    analysis::{
        AgeBuckets, Evidence, History, LeakGate, LedgerNow, Sites, Suspect, Tick,
        gate::Ranked,
        history::DEFAULT_WINDOW,
        rank_suspects,
        suspects::MIN_TICKS,
        timeline::{Point, StackSeries, Timeline, TimelineReport},
        window_live_bytes,
    },
    events::{Arrived, Carried},
    ledger::{Budget, Ledger, mapped::MappedLedger},
    metrics::{MappedMetrics, bounded_stacks},
    report::{
        self, NameStacks, StackKind, StackReport, StackView, SuspectReport, TIMELINE_SUSPECTS,
    },
    stacks::{StackBudget, StackId, StackTable},
    symbolize::{Frame, ProcessSymbolizer, SharedSymbols},
};

pub struct Tracee {
    pub pid: u32,
    pub ledger: Ledger,
    /// Mapped memory, when it is traced.
    pub mapped: Option<MappedLedger>,
    pub stacks: StackTable,
    pub symbols: ProcessSymbolizer,
    /// Each stack's outstanding bytes at the last ticks.
    pub history: History,
    /// The allocation site of each stack the history has held, named once
    /// (a stack's frames do not change).
    sites: Sites,
    /// The last tick recorded, on the events' clock.
    last_tick_ns: u64,
    /// The process's totals at every tick of the run (bounded).
    pub timeline: Timeline,
    /// Timestamp of the latest event applied: stacks seen after it belong
    /// to events still on their way, and are not evicted.
    applied_ns: u64,
    /// Addresses whose frames the symbolizer held after the last pruning.
    symbols_pruned_at: usize,
}

/// The symbolizer's cache of frames is pruned of evicted stacks' addresses
/// once it has doubled since the last pruning, and never below this size.
const MIN_SYMBOLS_PRUNED: usize = 4096;

impl Tracee {
    pub fn new(
        pid: u32,
        ledger: Ledger,
        shared: Rc<SharedSymbols>,
        stack_budget: StackBudget,
    ) -> Self {
        let symbols = ProcessSymbolizer::sharing(pid, shared);
        Self::with_symbols(pid, ledger, symbols, stack_budget)
    }

    /// A tracee whose addresses `symbols` names (the kernel's, in
    /// `--kernel` mode).
    pub fn with_symbols(
        pid: u32,
        ledger: Ledger,
        symbols: ProcessSymbolizer,
        stack_budget: StackBudget,
    ) -> Self {
        Self {
            pid,
            ledger,
            mapped: None,
            stacks: StackTable::with_budget(stack_budget),
            symbols,
            history: History::new(DEFAULT_WINDOW),
            sites: Sites::new(),
            last_tick_ns: 0,
            timeline: Timeline::default(),
            applied_ns: 0,
            symbols_pruned_at: 0,
        }
    }

    /// Traces the process's mapped memory too, in a ledger that counts in
    /// `budget`. A process already running (not about to `execve`) gives
    /// the break it had when its events began (`crate::maps::program_break`,
    /// read once the probes were attached and before anything waits on the
    /// tracer), so its first `brk` growth counts.
    pub fn trace_mapped(&mut self, budget: Budget, program_break: Option<u64>) {
        let mut mapped = MappedLedger::new(budget);
        if let Some(program_break) = program_break {
            mapped.set_break(program_break);
        }
        self.mapped = Some(mapped);
    }

    /// The id of the stack `event` carries; a stack seen for the first time
    /// is symbolized now, while the process is there to be read.
    pub fn resolve(&mut self, event: &Event, carried: Carried<'_>) -> StackId {
        let carried = self.cut_implausible(event, carried);
        let known = self.stacks.len();
        let stack = self.stacks.stack_of(event, carried);
        if self.stacks.len() > known {
            self.symbols.symbolize_new(self.stacks.addresses(stack));
        }
        stack
    }

    /// The frames `event` carries up to the first that is not a return
    /// address (see `symbolize::plausible`), counting the stacks cut here
    /// and those the kernel cut. A cut that code mapped since may undo
    /// has the kernel send the stack again, to be judged again.
    fn cut_implausible<'a>(&mut self, event: &Event, carried: Carried<'a>) -> Carried<'a> {
        let Carried::Frames(frames) = carried else {
            return carried;
        };
        let maps_changed = event.stack_id == INLINE_STACK_PARTIAL;
        let judged = (self.symbols).plausible_frames(frames, event.timestamp_ns, maps_changed);
        let cut = judged.kept < frames.len();
        let in_kernel = event.stack_id == INLINE_STACK_CUT;
        if in_kernel || cut {
            (self.stacks.budget()).count_cut(in_kernel, cut);
        }
        if judged.unsure && event.stack_hash != 0 {
            self.stacks.send_again(event.stack_hash);
        }
        Carried::Frames(&frames[..judged.kept])
    }

    /// Applies one allocator event to the ledger.
    pub fn apply(&mut self, event: &Event, arrived: Arrived<'_, StackId>) {
        let stack = match arrived {
            Arrived::Resolved(stack) => stack,
            Arrived::Carried(carried) => self.resolve(event, carried),
        };
        if let Some(mapped) = &mut self.mapped {
            mapped.apply(event, stack);
        }
        self.ledger.apply(event, stack);
        self.applied_ns = self.applied_ns.max(event.timestamp_ns);
    }

    /// Beyond the stack budget (`--max-stacks`), evicts what is over it
    /// (the one table of a one-process run).
    pub fn evict_over_budget(&mut self) {
        let excess = self.stacks.budget().excess();
        if excess > 0 {
            self.evict_stacks(excess);
        }
    }

    /// Evicts up to `count` of the stacks nothing is kept of (no
    /// outstanding block or mapping, no bytes at the peak, no event on its
    /// way), least recently seen first, and everything kept under them:
    /// their history, allocation site, counters and cached frames. Returns
    /// how many were evicted.
    pub fn evict_stacks(&mut self, count: usize) -> usize {
        let mapped: HashSet<StackId> = self
            .mapped
            .as_ref()
            .map(|mapped| mapped.by_stack().into_keys().collect())
            .unwrap_or_default();
        let evicted = {
            let keeps = self.ledger.keeps_stacks();
            self.stacks.evict(count, self.applied_ns, |stack| {
                keeps(stack) || mapped.contains(&stack)
            })
        };
        self.ledger.forget_stacks(&evicted);
        for stack in &evicted {
            self.history.remove(stack);
            self.sites.remove(stack);
        }
        self.prune_symbols();
        evicted.len()
    }

    /// Drops the cached frames of addresses no stack held has any more,
    /// once the cache has doubled since it was last pruned.
    fn prune_symbols(&mut self) {
        let cached = self.symbols.cached_addresses();
        if cached <= MIN_SYMBOLS_PRUNED.max(2 * self.symbols_pruned_at) {
            return;
        }
        let keep: HashSet<u64> = self.stacks.all_addresses().collect();
        self.symbols.retain_addresses(&keep);
        self.symbols_pruned_at = self.symbols.cached_addresses();
    }

    /// The stacks holding mapped memory at `now_ns`, largest first, named.
    pub fn mapped_stacks(&self, now_ns: u64) -> Vec<StackReport> {
        let Some(mapped) = &self.mapped else {
            return Vec::new();
        };
        let mut usage: Vec<_> = mapped.by_stack().into_iter().collect();
        usage.sort_by_key(|(_, usage)| std::cmp::Reverse(usage.bytes));
        usage
            .into_iter()
            .map(|(stack, usage)| {
                let age_ns = now_ns.saturating_sub(usage.oldest_ns);
                // By the oldest piece: pieces are few and mostly one age.
                let mut age_bytes = AgeBuckets::default();
                age_bytes.add(age_ns, usage.bytes);
                StackReport {
                    kind: StackKind::Mmap,
                    bytes: usage.bytes,
                    count: usage.count,
                    oldest_age_s: age_ns as f64 / 1e9,
                    approximate: false,
                    age_bytes,
                    frames: self.frames(stack),
                }
            })
            .collect()
    }

    /// The ledger by stack at `now_ns`, every block included.
    pub fn view(&self, now_ns: u64) -> StackView {
        StackView::of(&self.ledger, now_ns, u64::MAX)
    }

    /// Records a tick of `view` in the history and the timeline.
    pub fn record(&mut self, elapsed_s: f64, view: &StackView) {
        self.last_tick_ns = view.now_ns;
        self.timeline.record(Point {
            elapsed_s,
            outstanding_bytes: view.usage.iter().map(|usage| usage.bytes).sum(),
            outstanding_count: view.usage.iter().map(|usage| usage.count).sum(),
        });
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

    /// The timeline as the report writes it, with the series of the first
    /// [`TIMELINE_SUSPECTS`] of `ranked` (this process's suspects, in the
    /// report's order) from the history they were ranked on.
    pub fn timeline(&self, ranked: &[Suspect]) -> TimelineReport {
        let stacks = ranked
            .iter()
            .take(TIMELINE_SUSPECTS)
            .enumerate()
            .map(|(index, suspect)| StackSeries::new(index, &self.history.samples(&suspect.stack)))
            .collect();
        self.timeline.report(stacks)
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

    /// The `limit` largest stacks of `view` and of mapped memory together
    /// (a summary's ranking: mapped stacks are marked `[mmap]`).
    pub fn largest_of_both(&self, view: &StackView, limit: usize) -> Vec<StackReport> {
        let mut top = self.largest(view, limit);
        top.extend(self.mapped_stacks(view.now_ns));
        top.sort_by_key(|stack| std::cmp::Reverse(stack.bytes));
        top.truncate(limit);
        top
    }

    /// Every stack of `view`, then every mapped one: a report's stacks.
    pub fn all_stacks(&self, view: &StackView) -> Vec<StackReport> {
        [
            self.largest(view, usize::MAX),
            self.mapped_stacks(view.now_ns),
        ]
        .concat()
    }

    /// The mapped-memory series of `--metrics-addr` at `now_ns`: its
    /// totals and its `top` largest stacks, the rest summed (`None` when
    /// mapped memory is not traced).
    pub fn mapped_metrics(&self, now_ns: u64, top: usize) -> Option<MappedMetrics> {
        let totals = self.mapped.as_ref()?.totals();
        Some(MappedMetrics {
            bytes: totals.outstanding_bytes,
            count: totals.outstanding_count,
            stacks: bounded_stacks(&self.mapped_stacks(now_ns), top, totals.outstanding_bytes),
        })
    }

    /// Committed mapped bytes and pieces now (0 when not traced).
    pub fn mapped_outstanding(&self) -> (u64, u64) {
        self.mapped.as_ref().map_or((0, 0), |mapped| {
            let totals = mapped.totals();
            (totals.outstanding_bytes, totals.outstanding_count)
        })
    }

    /// The `limit` most suspicious stacks of `view` (which holds every
    /// block, as the history does), named.
    pub fn suspects(&self, view: &StackView, limit: usize) -> Vec<SuspectReport> {
        view.suspects(&self.rank(view), self, self.pid, limit)
    }

    /// The final report's ranking of every block at `now_ns` and its
    /// suspects; the ranking also draws the report's timeline, so it is
    /// made once for both.
    pub fn final_ranking(&self, now_ns: u64) -> (Vec<Suspect>, Vec<SuspectReport>) {
        // Suspects are about all blocks, as the history is.
        let all = self.view(now_ns);
        let ranked = self.rank(&all);
        let suspects = all.suspects(&ranked, self, self.pid, usize::MAX);
        (ranked, suspects)
    }

    /// The tick's heap views (its top hot spot, named) as of `now`.
    pub fn tick_views(&self, now: &super::Now) -> report::TickViews {
        report::TickViews::of(&self.ledger, self, self.pid, now.elapsed_s, now.now_ns)
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

impl Tracee {
    /// Takes the leak gate's baseline: every stack's outstanding bytes now.
    pub fn take_gate_baseline(&self, gate: &mut LeakGate) {
        gate.take_baseline(&self.ledger.usage_by_stack(u64::MAX));
    }

    /// Judges the leak gate on the ledger as it was at the last tick (when
    /// tracing stopped, at the end), printing the offending stacks to
    /// stderr. Returns whether the gate failed.
    pub fn judge_gate(&self, gate: &LeakGate) -> anyhow::Result<bool> {
        // Judged as the suspects are: netted by site, sparing what the
        // ranking cleared.
        let view = self.view_at_last_tick();
        let suspects: HashMap<StackId, Evidence> = self
            .rank(&view)
            .into_iter()
            .map(|suspect| (suspect.stack, suspect.evidence))
            .collect();
        let ranked = |stack| {
            if suspects.contains_key(&stack) {
                Ranked::Suspect
            } else if self.history.ticks_of(stack) >= MIN_TICKS {
                Ranked::Cleared
            } else {
                Ranked::Unjudged
            }
        };
        let stacks = view.usage.iter().map(|usage| usage.stack);
        let sites = self.sites(stacks.chain(gate.baseline_stacks()));
        let offenders = gate.judge(&view.usage, &sites, ranked)?;
        if offenders.is_empty() {
            return Ok(false);
        }
        let named: Vec<_> = offenders
            .into_iter()
            .map(|offender| report::NamedOffender {
                offender,
                frames: self.frames(offender.stack),
                why: suspects.get(&offender.stack).map(report::why_suspect),
            })
            .collect();
        eprint!(
            "{}",
            report::gate_failure(&named, gate.threshold_bytes(), gate.after())
        );
        Ok(true)
    }
}

impl NameStacks for Tracee {
    fn frames(&self, stack: StackId) -> Vec<Frame> {
        self.symbols.frames(self.stacks.addresses(stack))
    }
}
