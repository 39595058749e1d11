//! The one run loop every mode plugs into.
//!
//! [`run`] owns what all modes share: the event reader, the kernel's
//! counters and log, the clocks (summary interval, `--duration`, snapshot
//! period), SIGINT/SIGTERM, lost-event accounting, the `--max-tracked`
//! warning, and the end sequence — cut, detach, final drain up to the cut,
//! last summary, outputs. A [`Mode`] supplies only its decisions: how it
//! resolves a stack on read, how it applies an event, what wakes it besides
//! events and timers, what a tick and a report contain, and what it writes
//! besides the common outputs. `main` picks the mode; no mode calls
//! another's code.
//!
//! The choices that differ between modes, named:
//! * stacks resolved on read (one process: symbolized within milliseconds,
//!   while the target surely lives) or at release (host-wide: which process
//!   an event belongs to is known only once the exec and exit markers before
//!   it are applied) — [`Mode::resolve_on_read`];
//! * what an `execve` does: it ends a one-process run (the traced program is
//!   gone) and starts a new ledger host-wide — [`Mode::apply`];
//! * how the end of a process is seen: a pidfd for one process, ring markers
//!   (and a `/proc` check per tick) host-wide — [`Mode::wakeup`].

mod signals;
pub mod tracee;

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime},
};

use tokio::time::{Interval, MissedTickBehavior, interval, interval_at, sleep_until};
use tracer_ebpf::{Counter, Event};

pub use self::{signals::StopSignals, tracee::Tracee};
use crate::{
    armed::ProbeChecks,
    clock::monotonic_ns,
    config::{Common, Outputs},
    events::{Arrived, Carried, EventReader, Release},
    ledger,
    probes::{Counters, KernelMaps, Probes},
    report::{
        self, KernelCounts, LogFormat, Report, SummaryState, Totals, folded_lines,
        write_atomically, write_flamegraph_lines,
    },
    stacks::{StackId, StackStats},
    unwind::{
        self, StackUnwinder, UnwindMode,
        tables::{TableLoader, TableStats},
    },
};

/// How often the programs' log records are forwarded (`--verbose`). Events
/// need no timer: the ring reading thread sends a batch every 10 ms at most.
const LOG_FLUSH_PERIOD: Duration = Duration::from_millis(10);

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal(i32),
    Duration,
    TargetExited,
    /// The target replaced its program (`execve`) at this instant.
    TargetExeced(u64),
}

/// How a run that went to its end turned out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `--fail-on-growth` found stacks that grew too much (printed).
    pub leak_gate_failed: bool,
    /// Launch mode: the command's exit status as a shell reports it.
    pub command_status: Option<u8>,
}

/// The moment a tick or report describes.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// CLOCK_MONOTONIC ns, the clock of the events.
    pub now_ns: u64,
    /// Seconds since the ready line.
    pub elapsed_s: f64,
    /// Blocks younger than this are left out of final outputs' stacks.
    pub min_age_ns: u64,
    /// Events the kernel lost by then.
    pub lost_events: u64,
}

impl Now {
    /// Blocks allocated after this are left out of final outputs.
    pub fn allocated_before_ns(&self) -> u64 {
        self.now_ns.saturating_sub(self.min_age_ns)
    }
}

/// A periodic summary, as the user asked for it (`--log-format`).
pub trait TickLine {
    fn to_human(&self) -> String;
    fn to_json_line(&self) -> String;
}

impl TickLine for report::Summary {
    fn to_human(&self) -> String {
        report::Summary::to_human(self)
    }

    fn to_json_line(&self) -> String {
        report::Summary::to_json_line(self)
    }
}

/// What a mode decides; everything else is [`run`]'s.
pub trait Mode {
    /// What wakes the mode besides events and the common timers.
    type Wakeup;
    type Tick: TickLine;

    /// Name of the default outputs (`alloctrace-NAME.json`) and snapshots.
    fn output_name(&self) -> String;

    /// The stack an event carries, resolved as soon as it is read; `None`
    /// leaves it to [`Mode::apply`].
    fn resolve_on_read(&mut self, event: &Event, carried: Carried<'_>) -> Option<StackId>;

    /// Applies one event, in timestamp order. Returns a reason to stop when
    /// the event ends tracing; nothing after it is applied.
    fn apply(&mut self, event: &Event, arrived: Arrived<'_, StackId>, now: &Now) -> Option<Stop>;

    /// After each batch of events is applied.
    fn after_drain(&mut self) {}

    /// The kernel lost events at or before `at_ns`.
    fn note_loss(&mut self, at_ns: u64);

    /// The ledgers' totals, summed.
    fn totals(&self) -> ledger::Totals;

    /// What the stack tables hold and have evicted (`--max-stacks`).
    fn stack_stats(&self) -> StackStats;

    /// What the checks of the probes' breakpoints found, if the mode makes
    /// them.
    fn probe_checks(&self) -> Option<ProbeChecks> {
        None
    }

    /// `--kernel`'s own counts, read from the programs' `counters`.
    fn kernel_counts(&self, _counters: &Counters) -> Option<KernelCounts> {
        None
    }

    /// Waits for the mode's own reason to act.
    fn wakeup(&mut self) -> impl Future<Output = Self::Wakeup>;

    /// Acts on it, with every settled event applied.
    fn on_wakeup(
        &mut self,
        wakeup: Self::Wakeup,
        probes: &mut Probes,
        now: &Now,
    ) -> anyhow::Result<Option<Stop>>;

    /// One tick: records the history and builds the summary.
    fn tick(&mut self, now: &Now, totals: Totals, summaries: &mut SummaryState) -> Self::Tick;

    /// The report as of `now` (the final one, and each snapshot).
    fn report(&self, now: &Now, totals: Totals) -> Report;

    /// Tracing stopped for `stop` (the probes are detached).
    fn stopped(&mut self, _stop: Stop) {}

    /// Folded stack lines of `report` for the folded output and flamegraph.
    fn folded_lines(&self, report: &Report) -> Vec<String> {
        report
            .processes
            .iter()
            .flat_map(|process| folded_lines(&process.stacks))
            .collect()
    }

    fn flamegraph_title(&self) -> String;

    /// Writes what only this mode writes, after the common outputs.
    fn write_own_outputs(&self, now: &Now, report: &Report) -> anyhow::Result<()>;

    /// The outcome, once everything is written.
    fn finish(self, stop: Stop) -> anyhow::Result<Outcome>;
}

/// What a mode set up before its ready line.
pub struct Attached {
    pub probes: Probes,
    pub maps: KernelMaps,
    pub signals: StopSignals,
    /// Turns stack copies into frames on the reading thread
    /// (`--unwind stack-copy`).
    pub unwinder: Option<StackUnwinder>,
    /// Keeps the in-kernel unwinder's tables in step with the traced
    /// processes (`--unwind dwarf`, and `auto`).
    pub tables: Option<TableLoader>,
    /// The ready line: every clock runs from it (`--duration` is a promise
    /// about how long the target is traced).
    pub started: Instant,
}

/// The in-kernel unwinder's table loader for `--unwind mode`, over the maps
/// of the loaded programs; `None` when stacks are not unwound with tables.
pub fn table_loader(
    mode: UnwindMode,
    maps: &mut KernelMaps,
) -> anyhow::Result<Option<TableLoader>> {
    let (Some(policy), Some(unwind)) = (unwind::table_policy(mode), maps.unwind.take()) else {
        return Ok(None);
    };
    let maps = [
        unwind.rows,
        unwind.mappings,
        unwind.processes,
        unwind.generation,
    ];
    TableLoader::spawn(maps, policy).map(Some)
}

/// Runs `mode` from its ready line until stopped, then ends the run.
pub async fn run<M: Mode>(
    mut mode: M,
    attached: Attached,
    common: &Common,
) -> anyhow::Result<Outcome> {
    let Attached {
        mut probes,
        maps,
        mut signals,
        unwinder,
        tables,
        started,
    } = attached;
    let mut driver = Driver {
        reader: EventReader::new(maps.events, unwinder)?,
        counters: maps.counters,
        common,
        started,
        wall_started: SystemTime::now(),
        summaries: SummaryState::default(),
        cut: None,
        lost_seen: 0,
        warned_dropping: false,
        tables,
        tables_logged: None,
    };
    let stop = driver
        .trace_until_stopped(&mut mode, &mut probes, &mut signals)
        .await?;
    if matches!(stop, Stop::Signal(_)) {
        // A second Ctrl-C ends the tracer at once; the kernel removes the
        // probes when their file descriptors close.
        signals::restore_default_sigint();
    }
    // Probes detach one by one over tens of milliseconds while the target
    // keeps running, so events from that window are a partial view (a free
    // probe gone while malloc's remains, say). Ring order is causal, so the
    // stream up to the first event past this instant is a consistent cut.
    let at_ns = match stop {
        Stop::TargetExeced(at_ns) => at_ns,
        _ => monotonic_ns(),
    };
    driver.cut = Some(Cut {
        at: Instant::now(),
        at_ns,
        lost_events: driver.counters.get(Counter::LostEvents),
    });
    probes.detach();
    mode.stopped(stop);
    driver.apply_events(&mut mode, Release::All, at_ns);
    driver.print_tick(&mut mode);
    driver.write_outputs(&mode)?;
    driver.log_counters();
    driver.warn_skipped_frees(&mode);
    mode.finish(stop)
}

/// The moment tracing stopped: the final numbers, ages and history describe
/// the target then, however long detaching takes after it.
#[derive(Clone, Copy)]
struct Cut {
    at: Instant,
    /// The same moment in CLOCK_MONOTONIC ns, the clock of the events.
    at_ns: u64,
    /// Events lost by then; those lost while the probes were being detached
    /// belong to the discarded window.
    lost_events: u64,
}

struct Driver<'a> {
    reader: EventReader<StackId>,
    counters: Counters,
    common: &'a Common,
    started: Instant,
    wall_started: SystemTime,
    summaries: SummaryState,
    /// Where the final drain stops, once tracing has stopped.
    cut: Option<Cut>,
    /// Lost events already noted in the ledgers.
    lost_seen: u64,
    warned_dropping: bool,
    tables: Option<TableLoader>,
    /// The table statistics last logged.
    tables_logged: Option<TableStats>,
}

impl Driver<'_> {
    async fn trace_until_stopped<M: Mode>(
        &mut self,
        mode: &mut M,
        probes: &mut Probes,
        signals: &mut StopSignals,
    ) -> anyhow::Result<Stop> {
        let started = tokio::time::Instant::from_std(self.started);
        let mut log_timer = interval(LOG_FLUSH_PERIOD);
        log_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut summary_timer = periodic(started, self.common.interval);
        let far = Duration::from_secs(1 << 40);
        let deadline = sleep_until(started + self.common.duration.unwrap_or(far));
        tokio::pin!(deadline);
        let snapshot_every = self.common.snapshots.as_ref().map(|s| s.every);
        let mut snapshot_timer = periodic(started, snapshot_every.unwrap_or(far));
        loop {
            tokio::select! {
                _ = log_timer.tick() => probes.flush_log(),
                batch = self.reader.next_batch() => {
                    batch?;
                    if let Some(stop) = self.drain(mode) {
                        return Ok(stop);
                    }
                    if self.common.duration.is_some_and(|d| self.started.elapsed() >= d) {
                        return Ok(Stop::Duration);
                    }
                    // With batches always waiting (a backlog), the loop
                    // would not let the runtime turn its timer and signal
                    // drivers: host-wide on a saturated VM, `--duration` and
                    // the ticks were heard tens of seconds late.
                    tokio::task::yield_now().await;
                }
                _ = summary_timer.tick() => {
                    if let Some(stop) = self.drain(mode) {
                        return Ok(stop);
                    }
                    self.print_tick(mode);
                }
                _ = snapshot_timer.tick(), if snapshot_every.is_some() => {
                    if let Some(stop) = self.drain(mode) {
                        return Ok(stop);
                    }
                    self.write_snapshot(mode);
                }
                wakeup = mode.wakeup() => {
                    if let Some(stop) = self.drain(mode) {
                        return Ok(stop);
                    }
                    if let Some(stop) = mode.on_wakeup(wakeup, probes, &self.now())? {
                        return Ok(stop);
                    }
                }
                _ = signals.report_now.recv() => {
                    if let Some(stop) = self.drain(mode) {
                        return Ok(stop);
                    }
                    self.write_on_demand(mode);
                }
                _ = signals.interrupt.recv() => return Ok(Stop::Signal(libc::SIGINT)),
                _ = signals.terminate.recv() => return Ok(Stop::Signal(libc::SIGTERM)),
                _ = &mut deadline, if self.common.duration.is_some() => return Ok(Stop::Duration),
            }
        }
    }

    /// Moves every settled event into the mode; returns why to stop if an
    /// event ended tracing.
    fn drain<M: Mode>(&mut self, mode: &mut M) -> Option<Stop> {
        self.apply_events(mode, Release::Settled, u64::MAX)
    }

    /// Moves the events `release` lets out of the reader into the mode, up
    /// to the first stamped after `cut_ns` (once tracing has stopped, those
    /// belong to the detaching window) or the first that ends tracing.
    fn apply_events<M: Mode>(
        &mut self,
        mode: &mut M,
        release: Release,
        cut_ns: u64,
    ) -> Option<Stop> {
        let now = self.now();
        let horizon = self.reader.read(release, |event, carried| {
            mode.resolve_on_read(event, carried)
        });
        let (mut stop, mut past_cut) = (None, false);
        let mut tables = self.tables.as_mut();
        self.reader.release(horizon, |event, arrived| {
            past_cut |= event.timestamp_ns > cut_ns;
            if stop.is_none() && !past_cut {
                if let Some(tables) = tables.as_deref_mut() {
                    tables.observe(event);
                }
                stop = mode.apply(event, arrived, &now);
            }
        });
        mode.after_drain();
        self.note_losses(mode);
        stop
    }

    /// Tells the mode when the kernel lost events, and the user when the
    /// ledgers started dropping allocations: both make numbers inexact.
    fn note_losses<M: Mode>(&mut self, mode: &mut M) {
        let lost = self.counters.get(Counter::LostEvents);
        if lost > self.lost_seen {
            self.lost_seen = lost;
            mode.note_loss(monotonic_ns());
        }
        if !self.warned_dropping && mode.totals().dropped_allocations > 0 {
            self.warned_dropping = true;
            eprintln!(
                "alloctrace: tracking budget spent (--max-tracked {}, or less under a memory \
                 limit): newer allocations are dropped and counted as dropped_allocations",
                self.common.max_tracked
            );
        }
    }

    /// Now, or the moment tracing stopped once it has.
    fn now(&self) -> Now {
        let (at, now_ns, lost_events) = match self.cut {
            Some(cut) => (cut.at, cut.at_ns, cut.lost_events),
            None => (
                Instant::now(),
                monotonic_ns(),
                self.counters.get(Counter::LostEvents),
            ),
        };
        Now {
            now_ns,
            elapsed_s: at.duration_since(self.started).as_secs_f64(),
            min_age_ns: self.common.min_age.as_nanos() as u64,
            lost_events,
        }
    }

    fn totals<M: Mode>(&self, mode: &M, now: &Now) -> Totals {
        let stacks = mode.stack_stats();
        Totals {
            unwind_tables: self.tables.as_ref().map(TableLoader::stats),
            stacks: stacks.stacks,
            evicted_stacks: stacks.evicted,
            stacks_cut_in_kernel: stacks.cut.in_kernel,
            stacks_cut_at_unmapped: stacks.cut.at_unmapped,
            probe_checks: mode.probe_checks(),
            kernel: mode.kernel_counts(&self.counters),
            ..Totals::new(mode.totals(), now.lost_events)
        }
    }

    fn print_tick<M: Mode>(&mut self, mode: &mut M) {
        let now = self.now();
        let totals = self.totals(mode, &now);
        self.log_table_changes(totals.unwind_tables);
        let tick = mode.tick(&now, totals, &mut self.summaries);
        match self.common.log_format {
            LogFormat::Human => print!("{}", tick.to_human()),
            LogFormat::Json => println!("{}", tick.to_json_line()),
        }
    }

    /// `--verbose`: the in-kernel unwinder's tables at each tick where they
    /// changed (host-wide, processes keep coming and going).
    fn log_table_changes(&mut self, stats: Option<TableStats>) {
        if stats.is_some() && stats != self.tables_logged {
            self.tables_logged = stats;
            stats.iter().for_each(TableStats::log);
        }
    }

    fn report<M: Mode>(&self, mode: &M) -> Report {
        let now = self.now();
        mode.report(&now, self.totals(mode, &now))
    }

    /// Writes a timestamped report into the snapshot directory. A failure is
    /// logged, not fatal: tracing matters more than one snapshot.
    fn write_snapshot<M: Mode>(&self, mode: &M) {
        let Some(snapshots) = &self.common.snapshots else {
            return;
        };
        let path = report::snapshot_path(&snapshots.dir, &mode.output_name(), SystemTime::now());
        let report = self.report(mode);
        if let Err(error) = write_atomically(&path, |out| report::write_json(&report, out)) {
            log::warn!("snapshot {}: {error:#}", path.display());
        }
        if let Some(keep) = snapshots.keep
            && let Err(error) = report::prune_snapshots(&snapshots.dir, &mode.output_name(), keep)
        {
            log::warn!(
                "pruning snapshots in {}: {error:#}",
                snapshots.dir.display()
            );
        }
    }

    /// SIGUSR1: the final outputs as of now and a snapshot (with
    /// `--snapshot-dir`), while tracing goes on. A failure is logged, not
    /// fatal, as for a snapshot.
    fn write_on_demand<M: Mode>(&self, mode: &M) {
        self.write_snapshot(mode);
        if let Err(error) = self.write_outputs(mode) {
            log::warn!("writing the outputs on SIGUSR1: {error:#}");
        }
    }

    /// The final outputs every mode writes (JSON report, HTML page, folded
    /// stacks, flamegraph), then the mode's own.
    fn write_outputs<M: Mode>(&self, mode: &M) -> anyhow::Result<()> {
        let now = self.now();
        let report = self.report(mode);
        let outputs = if self.common.default_outputs {
            Outputs::defaults_named(&mode.output_name())
        } else {
            self.common.outputs.clone()
        };
        if let Some(path) = &outputs.report {
            write_atomically(path, |out| report::write_json(&report, out))?;
        }
        if let Some(path) = &outputs.html {
            write_atomically(path, |out| report::html::write_html(&report, out))?;
        }
        let lines = mode.folded_lines(&report);
        if let Some(path) = &outputs.folded {
            write_atomically(path, |out| {
                for line in &lines {
                    writeln!(out, "{line}")?;
                }
                Ok(())
            })?;
        }
        if let Some(path) = &outputs.flamegraph {
            let title = mode.flamegraph_title();
            write_atomically(path, |out| write_flamegraph_lines(&lines, &title, out))?;
        }
        mode.write_own_outputs(&now, &report)?;
        if self.common.default_outputs {
            for path in outputs.paths() {
                eprintln!("alloctrace: wrote {}", path.display());
            }
        }
        Ok(())
    }

    /// Frees the kernel skipped leave blocks outstanding: say how many.
    fn warn_skipped_frees<M: Mode>(&self, mode: &M) {
        let warning = mode
            .kernel_counts(&self.counters)
            .and_then(|counts| counts.skipped_frees_warning());
        if let Some(warning) = warning {
            eprintln!("{warning}");
        }
    }

    fn log_counters(&self) {
        let counter = |counter| self.counters.get(counter);
        log::debug!(
            "kernel counters: lost {}, stack errors {}, returns without entry {}, stale entries {}, \
             nested frees {}, map errors {}; traced for {:.1}s from {}",
            counter(Counter::LostEvents),
            counter(Counter::StackErrors),
            counter(Counter::ReturnsWithoutEntry),
            counter(Counter::StaleEntries),
            counter(Counter::NestedFrees),
            counter(Counter::MapErrors),
            self.now().elapsed_s,
            humantime::format_rfc3339_seconds(self.wall_started),
        );
        if let Some(tables) = &self.tables {
            tables.stats().log();
        }
        let stack_errors = counter(Counter::StackErrors);
        if stack_errors > 0 {
            log::warn!("{stack_errors} allocations had no stack (user stack unreadable)");
        }
    }
}

/// Ticks every `period` after `started`; late ticks are delayed, not
/// bunched.
pub fn periodic(started: tokio::time::Instant, period: Duration) -> Interval {
    let mut timer = interval_at(started + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}
