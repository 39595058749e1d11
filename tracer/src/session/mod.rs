//! One tracing session, start to finish: attach (or launch and attach), feed
//! events to the ledger, print a summary every interval (and keep the
//! per-stack history leak suspects are ranked from), and on stop detach
//! first, then drain what is left, write the final outputs and judge the
//! leak gate.
//!
//! [`attach`] sets a session up to its ready line; [`outputs`] holds what a
//! session writes.

mod attach;
mod outputs;

pub(crate) use self::attach::StopSignals;

use std::time::{Duration, Instant, SystemTime};

use tokio::time::{Interval, MissedTickBehavior, Sleep, interval, interval_at, sleep_until};
use tracer_ebpf::{Counter, Event, EventKind};

use self::attach::{Attached, ProcessExit};
use crate::{
    analysis::{History, LeakGate, history::DEFAULT_WINDOW},
    armed::ArmedWatch,
    cli::{Config, Outputs, TargetSpec},
    events::{EventReader, Release},
    forks::ForkedChildren,
    launch::Launched,
    ledger::Ledger,
    metrics::Metrics,
    probes::{Counters, Probes},
    report::{SummaryState, Totals},
    symbolize::StackSymbolizer,
    target::Target,
    unwind::StackUnwinder,
};

/// How often the ring buffer is drained when the kernel does not wake us:
/// short enough that an 8 MiB ring cannot fill at realistic call rates.
const LOG_FLUSH_PERIOD: Duration = Duration::from_millis(10);

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(i32),
    Duration,
    TargetExited,
    /// The target replaced its program (`execve`) at this instant.
    TargetExeced(u64),
}

/// How a session that ran to its end turned out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `--fail-on-growth` found stacks that grew too much (printed).
    pub leak_gate_failed: bool,
    /// Launch mode: the command's exit status as a shell reports it.
    pub command_status: Option<u8>,
}

/// Traces the configured target until stopped, writes the final outputs,
/// and says how it went.
pub async fn run(config: &Config) -> anyhow::Result<Outcome> {
    if let TargetSpec::All(spec) = &config.target {
        return crate::host::run(config, spec).await;
    }
    // Bound before attaching, so a taken port costs the target nothing.
    let metrics = match config.watch.metrics_addr {
        Some(addr) => Some(Metrics::serve(addr).await?),
        None => None,
    };
    let mut launched = match &config.target {
        TargetSpec::Pid(_) | TargetSpec::All(_) => None,
        TargetSpec::Launch(command) => Some(Launched::start(command)?),
    };
    let Attached {
        target,
        plan,
        forks,
        armed,
        mut probes,
        maps,
        exit,
        mut stop_signals,
        dwarf_unwinding,
    } = Attached::attach(config, launched.as_ref())?;
    eprintln!(
        "alloctrace: tracing pid {} ({} {}{}, {} functions, {} unwinding{})",
        target.pid,
        target.allocator.kind.describe(),
        target.allocator.path.display(),
        if target.allocator.deleted {
            " (deleted on disk)"
        } else {
            ""
        },
        plan.function_count,
        if dwarf_unwinding {
            "DWARF"
        } else {
            "frame-pointer"
        },
        match &config.sampling {
            Some(sampling) => format!(", sampling 1 per {} B", sampling.rate()),
            None => String::new(),
        }
    );
    if let Some(launched) = &mut launched {
        launched.release()?;
    }

    let outputs = if config.default_outputs {
        Outputs::defaults_for(target.pid)
    } else {
        config.outputs.clone()
    };
    let mut session = Session {
        started: Instant::now(),
        reader: EventReader::new(maps.events, Some(StackUnwinder::new(target.pid)))?,
        symbols: StackSymbolizer::new(target.pid),
        forks,
        armed,
        counters: maps.counters,
        ledger: Ledger::new(config.max_tracked, config.sampling.clone()),
        summaries: SummaryState::default(),
        cut: None,
        lost_seen: 0,
        warned_dropping: false,
        // The launched command's own execve is the start of tracing.
        execs_expected: u32::from(launched.is_some()),
        history: History::new(DEFAULT_WINDOW),
        gate: config
            .watch
            .gate
            .map(|gate| LeakGate::new(gate.threshold_bytes, gate.after)),
        metrics,
        events: 0,
        wall_started: SystemTime::now(),
        target,
        config: config.clone(),
        outputs,
    };
    let stop = session
        .trace_until_stopped(&mut probes, &exit, &mut stop_signals)
        .await?;
    if matches!(stop, Stop::Signal(_)) {
        // A second Ctrl-C ends the tracer at once; the kernel removes the
        // probes when their file descriptors close.
        restore_default_sigint();
    }
    // Probes detach one by one over tens of milliseconds while the target
    // keeps running, so events from that window are a partial view (a free
    // probe gone while malloc's remains, say). Ring order is causal, so the
    // stream up to the first event past this instant is a consistent cut.
    let at_ns = match stop {
        Stop::TargetExeced(at_ns) => at_ns,
        _ => monotonic_ns(),
    };
    session.cut = Some(Cut {
        at: Instant::now(),
        at_ns,
        lost_events: session.counters.get(Counter::LostEvents),
    });
    probes.detach();
    let pid = session.target.pid;
    match stop {
        Stop::TargetExited => {
            session.symbols.target_exited();
            eprintln!("alloctrace: pid {pid} exited");
        }
        Stop::TargetExeced(_) => eprintln!(
            "alloctrace: pid {pid} ran execve; stopped tracing (outstanding blocks are those of the \
             old program at that moment)"
        ),
        _ => {}
    }
    session.drain_until(at_ns);
    session.print_summary();
    session.write_outputs()?;
    let leak_gate_failed = session.judge_leak_gate()?;
    let command_status = match launched {
        Some(mut launched) => {
            if let Stop::Signal(signal) = stop {
                // The command shares our terminal and usually got the
                // signal too; send it anyway for a `kill` aimed at
                // alloctrace alone.
                launched.signal(signal);
            }
            Some(launched.wait()?)
        }
        None => None,
    };
    Ok(Outcome {
        leak_gate_failed,
        command_status,
    })
}

/// The moment tracing stopped: the final numbers, ages and history describe
/// the target then, however long detaching takes after it.
#[derive(Clone, Copy)]
pub(crate) struct Cut {
    pub at: Instant,
    /// The same moment in CLOCK_MONOTONIC ns, the clock of the events.
    pub at_ns: u64,
    /// Events lost by then; those lost while the probes were being detached
    /// belong to the discarded window.
    pub lost_events: u64,
}

struct Session {
    target: Target,
    config: Config,
    outputs: Outputs,
    started: Instant,
    wall_started: SystemTime,
    reader: EventReader,
    symbols: StackSymbolizer,
    counters: Counters,
    ledger: Ledger,
    summaries: SummaryState,
    /// Where the final drain stops, once tracing has stopped.
    cut: Option<Cut>,
    /// Lost events already noted in the ledger.
    lost_seen: u64,
    warned_dropping: bool,
    /// `execve`s of the target that do not end tracing (launch mode's own).
    execs_expected: u32,
    /// The target's children, rid of the breakpoints they inherit.
    forks: ForkedChildren,
    /// Whether the probes are still armed in the target.
    armed: Option<ArmedWatch>,
    /// Each stack's outstanding bytes at the last ticks.
    history: History,
    gate: Option<LeakGate>,
    metrics: Option<Metrics>,
    /// Events applied to the ledger.
    events: u64,
}

impl Session {
    async fn trace_until_stopped(
        &mut self,
        probes: &mut Probes,
        exit: &ProcessExit,
        stop_signals: &mut StopSignals,
    ) -> anyhow::Result<Stop> {
        let Clocks {
            started,
            mut log_timer,
            mut summary_timer,
            deadline,
        } = Clocks::new(self.started, &self.config);
        tokio::pin!(deadline);
        let warm_up =
            sleep_until(started + self.gate.as_ref().map_or(Duration::ZERO, LeakGate::after));
        tokio::pin!(warm_up);
        let snapshot_every = self.config.watch.snapshots.as_ref().map(|s| s.every);
        let every = snapshot_every.unwrap_or(Duration::from_secs(1 << 40));
        let mut snapshot_timer = periodic(started, every);
        loop {
            tokio::select! {
                _ = log_timer.tick() => probes.flush_log(),
                batch = self.reader.next_batch() => {
                    batch?;
                    if let Some(exec_ns) = self.drain() {
                        return Ok(Stop::TargetExeced(exec_ns));
                    }
                }
                _ = summary_timer.tick() => {
                    if let Some(exec_ns) = self.drain() {
                        return Ok(Stop::TargetExeced(exec_ns));
                    }
                    self.symbols.refresh_maps();
                    if let Some(armed) = &mut self.armed {
                        armed.check();
                    }
                    self.print_summary();
                }
                _ = &mut warm_up, if self.gate.as_ref().is_some_and(LeakGate::waiting_for_baseline) => {
                    if let Some(exec_ns) = self.drain() {
                        return Ok(Stop::TargetExeced(exec_ns));
                    }
                    self.take_gate_baseline();
                }
                _ = snapshot_timer.tick(), if snapshot_every.is_some() => {
                    if let Some(exec_ns) = self.drain() {
                        return Ok(Stop::TargetExeced(exec_ns));
                    }
                    self.write_snapshot();
                }
                _ = stop_signals.interrupt.recv() => return Ok(Stop::Signal(libc::SIGINT)),
                _ = stop_signals.terminate.recv() => return Ok(Stop::Signal(libc::SIGTERM)),
                _ = &mut deadline, if self.config.duration.is_some() => return Ok(Stop::Duration),
                exited = exit.exited() => {
                    exited?;
                    return Ok(Stop::TargetExited);
                }
            }
        }
    }

    /// Moves every queued event into the ledger and symbolizes new stacks
    /// while the target is still there to be read. Returns the time of an
    /// unexpected `execve` of the target, after which nothing is applied.
    fn drain(&mut self) -> Option<u64> {
        self.apply_events(Release::Settled, u64::MAX)
    }

    /// Once the probes are detached: like [`Session::drain`], but takes every
    /// event left, and stops applying them at the first one stamped after
    /// `cut_ns`, discarding it and all that follow.
    fn drain_until(&mut self, cut_ns: u64) -> Option<u64> {
        self.apply_events(Release::All, cut_ns)
    }

    fn apply_events(&mut self, release: Release, cut_ns: u64) -> Option<u64> {
        let ledger = &mut self.ledger;
        let symbols = &mut self.symbols;
        let execs_expected = &mut self.execs_expected;
        let forks = &mut self.forks;
        let mut exec_ns = None;
        let mut past_cut = false;
        let mut events = 0;
        let horizon = self.reader.read(release, |event, carried| {
            Some(symbols.stack_of(event, carried))
        });
        self.reader.release(horizon, |event: &Event, carried| {
            past_cut |= event.timestamp_ns > cut_ns || exec_ns.is_some();
            if past_cut {
                return;
            }
            match event.kind() {
                Some(EventKind::Exec) => {
                    match execs_expected.checked_sub(1) {
                        Some(left) => *execs_expected = left,
                        None => exec_ns = Some(event.timestamp_ns),
                    }
                    return;
                }
                Some(EventKind::Fork) => {
                    forks.note_fork();
                    return;
                }
                _ => {}
            }
            events += 1;
            ledger.apply(&Event {
                stack_id: symbols.stack_of(event, carried),
                ..*event
            });
        });
        self.events += events;
        self.forks.clean_up();
        self.note_losses();
        exec_ns
    }

    /// Tells the ledger when the kernel lost events, and the user when the
    /// ledger started dropping allocations: both make numbers inexact.
    fn note_losses(&mut self) {
        let lost = self.counters.get(Counter::LostEvents);
        if lost > self.lost_seen {
            self.lost_seen = lost;
            self.ledger.note_loss(monotonic_ns());
        }
        if !self.warned_dropping && self.ledger.totals().dropped_allocations > 0 {
            self.warned_dropping = true;
            eprintln!(
                "alloctrace: tracking {} allocations (--max-tracked): newer ones are dropped and \
                 counted as dropped_allocations",
                self.config.max_tracked
            );
        }
    }

    fn totals(&self) -> Totals {
        let lost = self
            .cut
            .map(|cut| cut.lost_events)
            .unwrap_or_else(|| self.counters.get(Counter::LostEvents));
        Totals::new(self.ledger.totals(), lost)
    }

    /// Now, or the moment tracing stopped once it has.
    fn now_ns(&self) -> u64 {
        self.cut.map_or_else(monotonic_ns, |cut| cut.at_ns)
    }

    /// Seconds traced: until now, or until tracing stopped.
    fn elapsed_s(&self) -> f64 {
        self.cut
            .map_or_else(Instant::now, |cut| cut.at)
            .duration_since(self.started)
            .as_secs_f64()
    }
}

/// The timers every session's loop runs on.
pub(crate) struct Clocks {
    /// The ready line, as the runtime's instant.
    pub started: tokio::time::Instant,
    /// Forwards the programs' log records (`--verbose`). Events need no
    /// timer: the ring reading thread sends a batch every 10 ms at most.
    pub log_timer: Interval,
    /// Prints a summary every `--interval`.
    pub summary_timer: Interval,
    /// Ends a session with `--duration` (far in the future without).
    pub deadline: Sleep,
}

impl Clocks {
    /// Every clock runs from the ready line, `started`, not from when the
    /// loop starts: setting up the symbolizer takes a moment, and
    /// `--duration` is a promise about how long the target is traced.
    pub fn new(started: Instant, config: &Config) -> Self {
        let mut log_timer = interval(LOG_FLUSH_PERIOD);
        log_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let started = tokio::time::Instant::from_std(started);
        let duration = config.duration.unwrap_or(Duration::from_secs(1 << 40));
        Self {
            started,
            log_timer,
            summary_timer: periodic(started, config.interval),
            deadline: sleep_until(started + duration),
        }
    }
}

/// Ticks every `period` after `started`; late ticks are delayed, not
/// bunched.
pub(crate) fn periodic(started: tokio::time::Instant, period: Duration) -> Interval {
    let mut timer = interval_at(started + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// stamps the events.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct passed by pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

pub(crate) fn restore_default_sigint() {
    // SAFETY: resetting a signal disposition to its default has no
    // preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}
