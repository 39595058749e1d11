//! One tracing session, start to finish: resolve the target, attach, feed
//! events to the ledger, print a summary every interval (and keep the
//! per-stack history leak suspects are ranked from), and on stop detach
//! first, then drain what is left, write the final outputs and judge the
//! leak gate.

use std::{
    collections::HashSet,
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, interval_at, sleep_until},
};
use tracer_ebpf::{Counter, Event, EventKind};

use crate::{
    analysis::{History, LeakGate, history::DEFAULT_WINDOW, rank_suspects},
    cli::{Config, LogFormat},
    events::{EventReader, watch_readable},
    ledger::Ledger,
    metrics::{Metrics, MetricsSnapshot, SuspectMetric},
    placement::Plan,
    probes::{Counters, Probes, Programs},
    report::{
        self, PprofInput, ProcessReport, Report, StackView, SummaryState, SuspectReport, Totals,
        write_atomically,
    },
    symbolize::StackSymbolizer,
    target::Target,
};

/// How often the ring buffer is drained when the kernel does not wake us:
/// short enough that an 8 MiB ring cannot fill at realistic call rates.
const DRAIN_PERIOD: Duration = Duration::from_millis(10);

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal,
    Duration,
    TargetExited,
}

/// How a session that ran to its end turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// `--fail-on-growth` found stacks that grew too much (printed).
    LeakGateFailed,
}

/// Traces `config.pid` until stopped, then writes the final outputs.
pub async fn run(config: &Config) -> anyhow::Result<Outcome> {
    let target = Target::resolve(config.pid)?;
    // Bound before attaching, so a taken port costs the target nothing.
    let metrics = match config.watch.metrics_addr {
        Some(addr) => Some(Metrics::serve(addr).await?),
        None => None,
    };
    let plan = Plan::for_libc(&target.libc.host_path)?;
    for point in &plan.points {
        log::debug!(
            "probe {} at file offset {:#x}+{} ({:?} return probe)",
            point.functions.join("/"),
            point.function_offset,
            point.entry_skip,
            point.returns
        );
    }
    let exit = ProcessExit::watch(target.pid)?;
    let (mut probes, maps) = Probes::load(config.ring_size, config.verbose)?;
    let programs = if config.floor {
        Programs::Floor
    } else {
        Programs::Tracing
    };
    probes.attach(&plan, &target.libc.host_path, target.pid, programs)?;
    if !target.is_alive() {
        bail!("pid {} exited while alloctrace was attaching", target.pid);
    }
    eprintln!(
        "alloctrace: tracing pid {} (libc {}, {} functions)",
        target.pid,
        target.libc.path.display(),
        plan.function_count
    );

    let mut session = Session {
        started: Instant::now(),
        reader: EventReader::new(maps.events)?,
        symbols: StackSymbolizer::new(target.pid, maps.stacks),
        counters: maps.counters,
        ledger: Ledger::new(),
        summaries: SummaryState::default(),
        lost_at_cut: None,
        history: History::new(DEFAULT_WINDOW),
        gate: config
            .watch
            .gate
            .map(|gate| LeakGate::new(gate.threshold_bytes, gate.after)),
        metrics,
        events: 0,
        wall_started: SystemTime::now(),
        stopped_at: None,
        target,
        config: config.clone(),
    };
    let stop = session.trace_until_stopped(&mut probes, &exit).await?;
    if stop == Stop::Signal {
        // A second Ctrl-C ends the tracer at once; the kernel removes the
        // probes when their file descriptors close.
        restore_default_sigint();
    }
    // Probes detach one by one over tens of milliseconds while the target
    // keeps running, so events from that window are a partial view (a free
    // probe gone while malloc's remains, say). Ring order is causal, so the
    // stream up to the first event past this instant is a consistent cut.
    let cut_ns = monotonic_ns();
    session.lost_at_cut = Some(session.counters.get(Counter::LostEvents));
    session.stopped_at = Some((Instant::now(), cut_ns));
    probes.detach();
    if stop == Stop::TargetExited {
        session.symbols.target_exited();
        eprintln!("alloctrace: pid {} exited", session.target.pid);
    }
    session.drain_until(cut_ns);
    session.print_summary();
    session.write_outputs()?;
    session.judge_leak_gate()
}

struct Session {
    target: Target,
    config: Config,
    started: Instant,
    reader: EventReader,
    symbols: StackSymbolizer,
    counters: Counters,
    ledger: Ledger,
    summaries: SummaryState,
    /// Lost events when tracing stopped; events lost while the probes were
    /// being detached belong to the discarded window.
    lost_at_cut: Option<u64>,
    /// Each stack's outstanding bytes at the last ticks.
    history: History,
    gate: Option<LeakGate>,
    metrics: Option<Metrics>,
    /// Events applied to the ledger.
    events: u64,
    wall_started: SystemTime,
    /// When tracing stopped (and the same moment in CLOCK_MONOTONIC ns): the
    /// moment the final numbers, ages and history describe, however long
    /// detaching takes after it.
    stopped_at: Option<(Instant, u64)>,
}

impl Session {
    async fn trace_until_stopped(
        &mut self,
        probes: &mut Probes,
        exit: &ProcessExit,
    ) -> anyhow::Result<Stop> {
        let mut drain_timer = interval(DRAIN_PERIOD);
        drain_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Both clocks run from the ready line, not from when the loop starts:
        // setting up the symbolizer takes a moment, and --duration is a
        // promise about how long the target is traced.
        let started = tokio::time::Instant::from_std(self.started);
        let mut summary_timer = interval_at(started + self.config.interval, self.config.interval);
        summary_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let deadline =
            sleep_until(started + self.config.duration.unwrap_or(Duration::from_secs(1 << 40)));
        tokio::pin!(deadline);
        let warm_up =
            sleep_until(started + self.gate.as_ref().map_or(Duration::ZERO, LeakGate::after));
        tokio::pin!(warm_up);
        let snapshot_every = self.config.watch.snapshots.as_ref().map(|s| s.every);
        let every = snapshot_every.unwrap_or(Duration::from_secs(1 << 40));
        let mut snapshot_timer = interval_at(started + every, every);
        snapshot_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain_timer.tick() => {
                    self.drain();
                    probes.flush_log();
                }
                filling = self.reader.filling() => {
                    filling?;
                    self.drain();
                }
                _ = summary_timer.tick() => {
                    self.drain();
                    self.symbols.refresh_maps();
                    self.print_summary();
                }
                _ = &mut warm_up, if self.gate.as_ref().is_some_and(LeakGate::waiting_for_baseline) => {
                    self.drain();
                    self.take_gate_baseline();
                }
                _ = snapshot_timer.tick(), if snapshot_every.is_some() => {
                    self.drain();
                    self.write_snapshot();
                }
                _ = interrupt.recv() => return Ok(Stop::Signal),
                _ = terminate.recv() => return Ok(Stop::Signal),
                _ = &mut deadline, if self.config.duration.is_some() => return Ok(Stop::Duration),
                exited = exit.exited() => {
                    exited?;
                    return Ok(Stop::TargetExited);
                }
            }
        }
    }

    /// Moves every queued event into the ledger and symbolizes new stacks
    /// while the target is still there to be read.
    fn drain(&mut self) {
        self.drain_until(u64::MAX);
    }

    /// Like [`Session::drain`], but stops applying events at the first one
    /// stamped after `cut_ns`, discarding it and all that follow.
    fn drain_until(&mut self, cut_ns: u64) {
        let mut new_stacks = HashSet::new();
        let ledger = &mut self.ledger;
        let symbols = &mut self.symbols;
        let mut past_cut = false;
        let mut events = 0;
        self.reader.drain(|event: &Event, frames| {
            past_cut |= event.timestamp_ns > cut_ns;
            if past_cut {
                return;
            }
            events += 1;
            match frames {
                Some(frames) => ledger.apply(&Event {
                    stack_id: symbols.intern(frames),
                    ..*event
                }),
                None => {
                    ledger.apply(event);
                    if matches!(event.kind(), Some(EventKind::Alloc | EventKind::ReallocEnd)) {
                        new_stacks.insert(event.stack_id);
                    }
                }
            }
        });
        self.events += events;
        self.symbols.learn(new_stacks);
    }

    fn totals(&self) -> Totals {
        let lost = self
            .lost_at_cut
            .unwrap_or_else(|| self.counters.get(Counter::LostEvents));
        Totals::new(self.ledger.totals(), lost)
    }

    /// One tick: records every stack in the history, then prints the
    /// largest and the most suspicious stacks and publishes the metrics.
    fn print_summary(&mut self) {
        let view = StackView::of(&self.ledger, self.now_ns(), u64::MAX);
        let elapsed = self
            .stopped_at
            .map_or_else(Instant::now, |(at, _)| at)
            .duration_since(self.started)
            .as_secs_f64();
        self.history.record(elapsed, &view.usage);
        let top = view.largest(&self.symbols, self.config.top);
        let suspects = self.suspects(&view, self.config.top);
        let totals = self.totals();
        self.publish_metrics(totals, &view, &suspects);
        let summary = self
            .summaries
            .next(totals, elapsed, top, view.total_ages(), suspects);
        match self.config.log_format {
            LogFormat::Human => print!("{}", summary.to_human()),
            LogFormat::Json => println!("{}", summary.to_json_line()),
        }
    }

    /// The most suspicious stacks of `view`, per the history so far.
    fn suspects(&self, view: &StackView, limit: usize) -> Vec<SuspectReport> {
        let ranked = rank_suspects(&self.history, &view.usage, view.now_ns);
        view.suspects(&ranked, &self.symbols, self.target.pid, limit)
    }

    fn publish_metrics(&self, totals: Totals, view: &StackView, suspects: &[SuspectReport]) {
        let Some(metrics) = &self.metrics else { return };
        metrics.publish(MetricsSnapshot {
            pid: self.target.pid,
            comm: self.target.comm.clone(),
            totals,
            events: self.events,
            age_bytes: view.total_ages(),
            suspects: suspects
                .iter()
                .map(|suspect| SuspectMetric {
                    frame: suspect
                        .stack
                        .frames
                        .first()
                        .map_or_else(|| "[no stack]".to_owned(), |frame| frame.label()),
                    bytes: suspect.stack.bytes,
                    growth_bytes_per_s: suspect.growth_bytes_per_s,
                })
                .collect(),
        });
    }

    /// Now, or the moment tracing stopped once it has.
    fn now_ns(&self) -> u64 {
        self.stopped_at.map_or_else(monotonic_ns, |(_, ns)| ns)
    }

    /// The report as of now: the final one, and each snapshot.
    fn final_report(&self) -> Report {
        let now_ns = self.now_ns();
        let min_age_ns = self.config.min_age.as_nanos() as u64;
        let view = StackView::of(&self.ledger, now_ns, now_ns.saturating_sub(min_age_ns));
        // Suspects are about all blocks, as the history is.
        let suspects = self.suspects(&StackView::of(&self.ledger, now_ns, u64::MAX), usize::MAX);
        let totals = self.totals();
        Report {
            version: report::REPORT_VERSION,
            duration_s: self.started.elapsed().as_secs_f64(),
            min_age_s: self.config.min_age.as_secs_f64(),
            totals,
            processes: vec![ProcessReport {
                pid: self.target.pid,
                comm: self.target.comm.clone(),
                exe: self.target.exe.display().to_string(),
                libc: self.target.libc.path.display().to_string(),
                totals,
                age_bytes: view.total_ages(),
                stacks: view.largest(&self.symbols, usize::MAX),
            }],
            suspects,
        }
    }

    /// Writes a timestamped report into the snapshot directory. A failure is
    /// logged, not fatal: tracing matters more than one snapshot.
    fn write_snapshot(&mut self) {
        let Some(snapshots) = &self.config.watch.snapshots else {
            return;
        };
        let path = report::snapshot_path(&snapshots.dir, self.target.pid, SystemTime::now());
        let report = self.final_report();
        if let Err(error) = write_atomically(&path, |out| report::write_json(&report, out)) {
            log::warn!("snapshot {}: {error:#}", path.display());
        }
    }

    fn take_gate_baseline(&mut self) {
        let usage = self.ledger.usage_by_stack(u64::MAX);
        if let Some(gate) = &mut self.gate {
            gate.take_baseline(&usage);
        }
    }

    /// Judges the leak gate on the ledger as it was when tracing stopped,
    /// printing the offending stacks to stderr.
    fn judge_leak_gate(&self) -> anyhow::Result<Outcome> {
        let Some(gate) = &self.gate else {
            return Ok(Outcome::Done);
        };
        let offenders = gate.judge(&self.ledger.usage_by_stack(u64::MAX))?;
        if offenders.is_empty() {
            return Ok(Outcome::Done);
        }
        let named: Vec<_> = offenders
            .into_iter()
            .map(|offender| (offender, self.symbols.frames(offender.stack)))
            .collect();
        eprint!(
            "{}",
            report::gate_failure(&named, gate.threshold_bytes(), gate.after())
        );
        Ok(Outcome::LeakGateFailed)
    }

    /// The pprof profile's input: every stack that allocated, with its
    /// outstanding numbers as in the report's stacks.
    fn pprof_input(&self, stacks_view: &StackView) -> PprofInput<'_> {
        let outstanding: std::collections::HashMap<_, _> = stacks_view
            .usage
            .iter()
            .map(|usage| (usage.stack, usage))
            .collect();
        let mut stacks: Vec<_> = self.ledger.allocated_by_stack().iter().collect();
        stacks.sort_by_key(|(stack, _)| **stack);
        PprofInput {
            pid: self.target.pid,
            comm: self.target.comm.clone(),
            stacks: stacks
                .into_iter()
                .map(|(stack, allocated)| {
                    let usage = outstanding.get(stack);
                    report::PprofStack {
                        frames: self.symbols.frames(*stack),
                        inuse_bytes: usage.map_or(0, |u| u.bytes),
                        inuse_count: usage.map_or(0, |u| u.count),
                        alloc_bytes: allocated.bytes,
                        alloc_count: allocated.count,
                    }
                })
                .collect(),
            mappings: self.symbols.mappings(),
            time_nanos: self
                .wall_started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as i64),
            duration_nanos: self.started.elapsed().as_nanos() as i64,
        }
    }

    fn write_outputs(&self) -> anyhow::Result<()> {
        let report = self.final_report();
        let stacks = &report.processes[0].stacks;
        let outputs = &self.config.outputs;
        if let Some(path) = &outputs.report {
            write_atomically(path, |out| report::write_json(&report, out))?;
        }
        if let Some(path) = &outputs.folded {
            write_atomically(path, |out| report::write_folded(stacks, out))?;
        }
        if let Some(path) = &outputs.pprof {
            let now_ns = self.now_ns();
            let min_age_ns = self.config.min_age.as_nanos() as u64;
            let view = StackView::of(&self.ledger, now_ns, now_ns.saturating_sub(min_age_ns));
            let input = self.pprof_input(&view);
            write_atomically(path, |out| report::write_pprof(&input, out))?;
        }
        if let Some(path) = &outputs.flamegraph {
            let title = format!(
                "Outstanding bytes by stack: {} (pid {})",
                self.target.comm, self.target.pid
            );
            write_atomically(path, |out| report::write_flamegraph(stacks, &title, out))?;
        }
        if self.config.default_outputs {
            for path in outputs.paths() {
                eprintln!("alloctrace: wrote {}", path.display());
            }
        }
        log::debug!(
            "kernel counters: lost {}, stack errors {}, returns without entry {}, stale entries {}, \
             nested frees {}, map errors {}; ledger overwrites {}",
            self.counters.get(Counter::LostEvents),
            self.counters.get(Counter::StackErrors),
            self.counters.get(Counter::ReturnsWithoutEntry),
            self.counters.get(Counter::StaleEntries),
            self.counters.get(Counter::NestedFrees),
            self.counters.get(Counter::MapErrors),
            self.ledger.overwritten()
        );
        let stack_errors = self.counters.get(Counter::StackErrors);
        if stack_errors > 0 {
            log::warn!("{stack_errors} allocations had no stack (stack map full or unreadable)");
        }
        Ok(())
    }
}

/// Becomes ready when a process exits, through a pidfd (no polling of /proc).
struct ProcessExit(AsyncFd<OwnedFd>);

impl ProcessExit {
    fn watch(pid: u32) -> anyhow::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ESRCH) {
                return Err(anyhow!(crate::target::TargetError::NoSuchProcess(pid)));
            }
            return Err(error).context("pidfd_open (needs Linux 5.3 or newer)");
        }
        // SAFETY: the fd was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self(watch_readable(fd)?))
    }

    async fn exited(&self) -> anyhow::Result<()> {
        let _ready = self.0.readable().await?;
        Ok(())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// stamps the events.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct passed by pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn restore_default_sigint() {
    // SAFETY: resetting a signal disposition to its default has no
    // preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}
