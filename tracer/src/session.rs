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
    cli::{Config, LogFormat},
    events::{Carried, EventReader, watch_readable},
    ledger::Ledger,
    placement::Plan,
    probes::{Counters, Probes, Programs},
    report::{self, ProcessReport, Report, StackReport, SummaryState, Totals, write_atomically},
    symbolize::StackSymbolizer,
    target::Target,
    unwind::{self, StackUnwinder},
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

/// Traces `config.pid` until stopped, then writes the final outputs.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let target = Target::resolve(config.pid)?;
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
    let stack_copy_bytes = unwind::stack_copy_bytes(config.unwind, config.stack_bytes, target.pid);
    let ring_size = config.ring_size.unwrap_or(if stack_copy_bytes == 0 {
        tracer_ebpf::DEFAULT_RING_SIZE
    } else {
        tracer_ebpf::DEFAULT_STACK_COPY_RING_SIZE
    });
    let (mut probes, maps) = Probes::load(ring_size, stack_copy_bytes, config.verbose)?;
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
        "alloctrace: tracing pid {} (libc {}, {} functions, {} unwinding)",
        target.pid,
        target.libc.path.display(),
        plan.function_count,
        if stack_copy_bytes == 0 {
            "frame-pointer"
        } else {
            "DWARF"
        }
    );

    let mut session = Session {
        started: Instant::now(),
        reader: EventReader::new(maps.events)?,
        symbols: StackSymbolizer::new(target.pid, maps.stacks),
        unwinder: StackUnwinder::new(target.pid),
        counters: maps.counters,
        ledger: Ledger::new(),
        summaries: SummaryState::default(),
        lost_at_cut: None,
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
    probes.detach();
    if stop == Stop::TargetExited {
        session.symbols.target_exited();
        eprintln!("alloctrace: pid {} exited", session.target.pid);
    }
    session.drain_until(cut_ns);
    session.print_summary();
    session.write_outputs()
}

struct Session {
    target: Target,
    config: Config,
    started: Instant,
    reader: EventReader,
    symbols: StackSymbolizer,
    unwinder: StackUnwinder,
    counters: Counters,
    ledger: Ledger,
    summaries: SummaryState,
    /// Lost events when tracing stopped; events lost while the probes were
    /// being detached belong to the discarded window.
    lost_at_cut: Option<u64>,
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
        let unwinder = &mut self.unwinder;
        let mut past_cut = false;
        self.reader.drain(|event: &Event, carried| {
            past_cut |= event.timestamp_ns > cut_ns;
            if past_cut {
                return;
            }
            match carried {
                Carried::Frames(frames) => ledger.apply(&Event {
                    stack_id: symbols.intern(frames),
                    ..*event
                }),
                Carried::StackCopy(copy) => ledger.apply(&Event {
                    stack_id: symbols.intern(&unwinder.unwind(&copy)),
                    ..*event
                }),
                Carried::Nothing => {
                    ledger.apply(event);
                    if matches!(event.kind(), Some(EventKind::Alloc | EventKind::ReallocEnd)) {
                        new_stacks.insert(event.stack_id);
                    }
                }
            }
        });
        self.symbols.learn(new_stacks);
    }

    fn totals(&self) -> Totals {
        let lost = self
            .lost_at_cut
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
        let now_ns = monotonic_ns();
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
                libc: self.target.libc.path.display().to_string(),
                totals,
                stacks: StackReport::from_usage(&usage, &self.symbols, now_ns),
            }],
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
