//! One tracing session, start to finish: resolve the target, attach, feed
//! events to the ledger, print a summary every interval, and on stop detach
//! first, then drain what is left and write the final outputs.

use std::{
    collections::HashSet,
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, interval_at, sleep_until},
};
use tracer_ebpf::{Counter, Event, EventKind};

use crate::{
    cli::{Config, LogFormat, Outputs, TargetSpec},
    events::{EventReader, watch_readable},
    launch::Launched,
    ledger::Ledger,
    placement::Plan,
    probes::{Counters, KernelMaps, Probes, Programs},
    report::{self, ProcessReport, Report, StackReport, SummaryState, Totals, write_atomically},
    symbolize::StackSymbolizer,
    target::Target,
};

/// How often the ring buffer is drained when the kernel does not wake us:
/// short enough that an 8 MiB ring cannot fill at realistic call rates.
const DRAIN_PERIOD: Duration = Duration::from_millis(10);

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(i32),
    Duration,
    TargetExited,
    /// The target replaced its program (`execve`) at this instant.
    TargetExeced(u64),
}

/// Traces the configured target until stopped, writes the final outputs, and
/// returns the exit status alloctrace should end with: 0, or in launch mode
/// the command's own.
pub async fn run(config: &Config) -> anyhow::Result<u8> {
    let mut launched = match &config.target {
        TargetSpec::Pid(_) => None,
        TargetSpec::Launch(command) => Some(Launched::start(command)?),
    };
    let Attached {
        target,
        plan,
        mut probes,
        maps,
        exit,
        mut stop_signals,
    } = match Attached::attach(config, launched.as_ref()) {
        Ok(attached) => attached,
        Err(error) => return Err(explain_attach_failure(config, error)),
    };
    eprintln!(
        "alloctrace: tracing pid {} ({} {}, {} functions)",
        target.pid,
        target.allocator.kind.describe(),
        target.allocator.path.display(),
        plan.function_count
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
        reader: EventReader::new(maps.events)?,
        symbols: StackSymbolizer::new(target.pid, maps.stacks),
        counters: maps.counters,
        ledger: Ledger::new(config.max_tracked),
        summaries: SummaryState::default(),
        cut: None,
        lost_seen: 0,
        warned_dropping: false,
        // The launched command's own execve is the start of tracing.
        execs_expected: u32::from(launched.is_some()),
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
    let cut_ns = match stop {
        Stop::TargetExeced(at_ns) => at_ns,
        _ => monotonic_ns(),
    };
    session.cut = Some(Cut {
        at_ns: cut_ns,
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
    session.drain_until(cut_ns);
    session.print_summary();
    session.write_outputs()?;
    let Some(mut launched) = launched else {
        return Ok(0);
    };
    if let Stop::Signal(signal) = stop {
        // The command shares our terminal and usually got the signal too;
        // send it anyway for a `kill` aimed at alloctrace alone.
        launched.signal(signal);
    }
    launched.wait()
}

/// The moment tracing stopped: the final outputs describe the target then.
#[derive(Clone, Copy)]
struct Cut {
    at_ns: u64,
    /// Events lost by then; those lost while the probes were being detached
    /// belong to the discarded window.
    lost_events: u64,
}

/// Everything set up before the ready line.
struct Attached {
    target: Target,
    plan: Plan,
    probes: Probes,
    maps: KernelMaps,
    exit: ProcessExit,
    stop_signals: StopSignals,
}

impl Attached {
    fn attach(config: &Config, launched: Option<&Launched>) -> anyhow::Result<Self> {
        let allocator_lib = config.allocator_lib.as_deref();
        let target = match (&config.target, launched) {
            (_, Some(launched)) => {
                Target::for_command(launched.pid(), launched.exe(), allocator_lib)?
            }
            (TargetSpec::Pid(pid), None) => Target::resolve(*pid, allocator_lib)?,
            (TargetSpec::Launch(_), None) => unreachable!("launch mode always has a command"),
        };
        let plan = Plan::for_object(&target.allocator.host_path)?;
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
        // Before the ready line: a signal sent as soon as it appears must
        // stop tracing cleanly, not kill the tracer.
        let stop_signals = StopSignals::install()?;
        let (mut probes, maps) = Probes::load(target.pid, config.ring_size, config.verbose)?;
        let programs = if config.floor {
            Programs::Floor
        } else {
            Programs::Tracing
        };
        probes.attach(&plan, &target.allocator.host_path, target.pid, programs)?;
        if launched.is_none() && !target.is_alive() {
            bail!("pid {} exited while alloctrace was attaching", target.pid);
        }
        Ok(Self {
            target,
            plan,
            probes,
            maps,
            exit,
            stop_signals,
        })
    }
}

/// A process that exits while being resolved or attached to makes any step
/// fail (its maps read empty, perf_event_open says ESRCH...): say what
/// really happened rather than the step's symptom.
fn explain_attach_failure(config: &Config, error: anyhow::Error) -> anyhow::Error {
    let TargetSpec::Pid(pid) = config.target else {
        return error;
    };
    let gone = procfs::process::Process::new(pid as i32)
        .and_then(|process| process.stat())
        .map_or(true, |stat| stat.state == 'Z');
    let already_said = matches!(
        error.downcast_ref::<crate::target::TargetError>(),
        Some(crate::target::TargetError::NoSuchProcess(_))
    ) || error.to_string().contains("exited while");
    if gone && !already_said {
        anyhow!("pid {pid} exited while alloctrace was attaching")
    } else {
        error
    }
}

struct Session {
    target: Target,
    config: Config,
    outputs: Outputs,
    /// `execve`s of the target that do not end tracing (launch mode's own).
    execs_expected: u32,
    started: Instant,
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
}

impl Session {
    async fn trace_until_stopped(
        &mut self,
        probes: &mut Probes,
        exit: &ProcessExit,
        stop_signals: &mut StopSignals,
    ) -> anyhow::Result<Stop> {
        let mut drain_timer = interval(DRAIN_PERIOD);
        drain_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Both clocks run from the ready line, not from when the loop starts:
        // setting up the symbolizer takes a moment, and --duration is a
        // promise about how long the target is traced.
        let started = tokio::time::Instant::from_std(self.started);
        let mut summary_timer = interval_at(started + self.config.interval, self.config.interval);
        summary_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let deadline =
            sleep_until(started + self.config.duration.unwrap_or(Duration::from_secs(1 << 40)));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = drain_timer.tick() => {
                    if let Some(exec_ns) = self.drain() {
                        return Ok(Stop::TargetExeced(exec_ns));
                    }
                    probes.flush_log();
                }
                filling = self.reader.filling() => {
                    filling?;
                    if let Some(exec_ns) = self.drain() {
                        return Ok(Stop::TargetExeced(exec_ns));
                    }
                }
                _ = summary_timer.tick() => {
                    self.drain();
                    self.symbols.refresh_maps();
                    self.print_summary();
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
        self.drain_until(u64::MAX)
    }

    /// Like [`Session::drain`], but stops applying events at the first one
    /// stamped after `cut_ns`, discarding it and all that follow.
    fn drain_until(&mut self, cut_ns: u64) -> Option<u64> {
        let mut new_stacks = HashSet::new();
        let ledger = &mut self.ledger;
        let symbols = &mut self.symbols;
        let execs_expected = &mut self.execs_expected;
        let mut exec_ns = None;
        let mut past_cut = false;
        self.reader.drain(|event: &Event, frames| {
            past_cut |= event.timestamp_ns > cut_ns || exec_ns.is_some();
            if past_cut {
                return;
            }
            if event.kind() == Some(EventKind::Exec) {
                match execs_expected.checked_sub(1) {
                    Some(left) => *execs_expected = left,
                    None => exec_ns = Some(event.timestamp_ns),
                }
                return;
            }
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
        self.symbols.learn(new_stacks);
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

    fn print_summary(&mut self) {
        let now_ns = monotonic_ns();
        let mut usage = self.ledger.usage_by_stack(u64::MAX);
        usage.truncate(self.config.top);
        let top = StackReport::from_usage(&usage, &self.symbols, now_ns);
        let elapsed = self.started.elapsed().as_secs_f64();
        let summary = self.summaries.next(self.totals(), elapsed, top);
        match self.config.log_format {
            LogFormat::Human => print!("{}", summary.to_human()),
            LogFormat::Json => println!("{}", summary.to_json_line()),
        }
    }

    fn final_report(&self) -> Report {
        let now_ns = self.cut.map_or_else(monotonic_ns, |cut| cut.at_ns);
        let min_age_ns = self.config.min_age.as_nanos() as u64;
        let usage = self
            .ledger
            .usage_by_stack(now_ns.saturating_sub(min_age_ns));
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
                libc: self.target.allocator.path.display().to_string(),
                totals,
                stacks: StackReport::from_usage(&usage, &self.symbols, now_ns),
            }],
        }
    }

    fn write_outputs(&self) -> anyhow::Result<()> {
        let report = self.final_report();
        let stacks = &report.processes[0].stacks;
        let outputs = &self.outputs;
        if let Some(path) = &outputs.report {
            write_atomically(path, |out| report::write_json(&report, out))?;
        }
        if let Some(path) = &outputs.folded {
            write_atomically(path, |out| report::write_folded(stacks, out))?;
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

/// SIGINT and SIGTERM, caught from before the ready line on.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
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
