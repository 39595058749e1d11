//! One-process mode: a running process (`--pid`) or a command alloctrace
//! starts (`-- CMD`), traced until stopped.
//!
//! Its decisions, as the driver asks for them: stacks are resolved (and
//! symbolized) on read, while the target surely lives; the target's
//! `execve` ends tracing (the traced program is gone; launch mode's own
//! exec of the command is expected and skipped); its exit is seen through a
//! pidfd; children it forks are rid of the breakpoints they inherit; and it
//! alone has the leak gate, the pprof profile and the metrics endpoint.
//!
//! [`attach`] sets it up to its ready line; [`outputs`] holds what it
//! writes besides the common outputs; [`jvm`] asks a JVM for its perf map
//! (`--jvm-perfmap`).

mod attach;
mod forks;
mod jvm;
mod launch;
mod outputs;

use std::{pin::Pin, time::Instant};

use tokio::time::{Sleep, sleep_until};
use tracer_ebpf::{Event, EventKind};

use self::{
    attach::{Attachment, ProcessExit},
    forks::ForkedChildren,
    jvm::JvmPerfMap,
    launch::Launched,
};
use crate::{
    analysis::LeakGate,
    armed::{ArmedWatch, ProbeChecks, ProbeSites},
    cli::MemoryKinds,
    config::{Common, ProcessConfig, ProcessTarget},
    container::{self, Container},
    driver::{self, Attached, Mode, Now, Outcome, Stop, Tracee},
    events::{Arrived, Carried},
    ledger::{self, Budget, Ledger, mapped::MappedLedger},
    maps, memory_limit,
    metrics::Metrics,
    probes::Probes,
    report::{self, Report, Summary, SummaryState, Totals},
    stacks::{StackBudget, StackId, StackStats},
    symbolize::SharedSymbols,
    target::Target,
};

/// Traces the configured process until stopped.
pub async fn run(common: &Common, config: ProcessConfig) -> anyhow::Result<Outcome> {
    let (mode, attached) = ProcessMode::start(common, config).await?;
    driver::run(mode, attached, common).await
}

pub struct ProcessMode {
    config: ProcessConfig,
    common: Common,
    target: Target,
    tracee: Tracee,
    launched: Option<Launched>,
    exit: ProcessExit,
    /// The target's children, rid of the breakpoints they inherit.
    forks: ForkedChildren,
    /// Whether the probes are still armed in a running target.
    armed: Option<ArmedWatch>,
    /// A launched command's probe sites, watched from its exec on.
    sites_after_exec: Option<ProbeSites>,
    /// `execve`s of the target that do not end tracing (launch mode's own).
    execs_expected: u32,
    gate: Option<LeakGate>,
    /// Ends the leak gate's warm-up (`--after`).
    warm_up: Pin<Box<Sleep>>,
    metrics: Option<Metrics>,
    /// `--jvm-perfmap`.
    jvm: Option<JvmPerfMap>,
    /// The target's cgroup and container, read at attach.
    container: Option<Container>,
    /// Allocator events applied.
    events: u64,
    /// Tracing has stopped: the final tick and outputs remain.
    stopped: bool,
    started: Instant,
    wall_started: std::time::SystemTime,
}

/// What wakes one-process mode.
pub enum Wakeup {
    TargetExited(anyhow::Result<()>),
    GateWarmedUp,
}

impl ProcessMode {
    async fn start(common: &Common, config: ProcessConfig) -> anyhow::Result<(Self, Attached)> {
        // Bound before attaching, so a taken port costs the target nothing.
        let metrics = match config.metrics_addr {
            Some(addr) => Some(Metrics::serve(addr).await?),
            None => None,
        };
        let mut launched = match &config.target {
            ProcessTarget::Pid(_) => None,
            ProcessTarget::Launch(command) => Some(Launched::start(command)?),
        };
        let Attachment {
            target,
            plan,
            forks,
            armed,
            sites_after_exec,
            probes,
            mut maps,
            exit,
            signals,
            unwinder,
            tables,
            dwarf,
        } = Attachment::attach(common, &config, launched.as_ref())?;
        // Before the ready line: once it is out, the target may move its
        // break, and that move must be counted from where it was.
        let program_break = (config.memory.mapped() && launched.is_none())
            .then(|| maps::program_break(target.pid))
            .flatten();
        let what = if config.memory.heap() {
            format!(
                "{} {}{}, {} functions",
                target.allocator.kind.describe(),
                target.allocator.path.display(),
                if target.allocator.deleted {
                    " (deleted on disk)"
                } else {
                    ""
                },
                plan.function_count,
            )
        } else {
            "mapped memory only".to_owned()
        };
        eprintln!(
            "alloctrace: tracing pid {} ({what}{}, {} unwinding{})",
            target.pid,
            if config.memory == MemoryKinds::Both {
                ", mapped memory"
            } else {
                ""
            },
            if dwarf { "DWARF" } else { "frame-pointer" },
            match &config.sampling {
                Some(sampling) => format!(", sampling 1 per {} B", sampling.rate()),
                None => String::new(),
            }
        );
        // Before the ready line, so the JVM's code compiled so far is named
        // from the first stack on (launch mode's JVM has not started yet).
        let mut jvm = config.jvm_perfmap.then(|| JvmPerfMap::new(target.pid));
        if let Some(jvm) = &mut jvm
            && launched.is_none()
        {
            jvm.write_now(false);
        }
        if let Some(launched) = &mut launched {
            launched.release()?;
        }
        let started = Instant::now();
        let budget = Budget::new(memory_limit::cap_tracked_blocks(common.max_tracked));
        let ledger = Ledger::new(budget.clone(), config.sampling.clone());
        let gate = config
            .gate
            .map(|gate| LeakGate::new(gate.threshold_bytes, gate.after));
        let warm_up = tokio::time::Instant::from_std(started)
            + gate
                .as_ref()
                .map_or(std::time::Duration::ZERO, LeakGate::after);
        let stack_budget = StackBudget::new(common.max_stacks, maps.known_stacks.take());
        let mut tracee = Tracee::new(target.pid, ledger, SharedSymbols::new(), stack_budget);
        if config.memory.mapped() {
            tracee.trace_mapped(budget, program_break);
        }
        let mode = Self {
            container: container::of_process(target.pid),
            tracee,
            // The launched command's own execve is the start of tracing.
            execs_expected: u32::from(launched.is_some()),
            target,
            launched,
            exit,
            forks,
            armed,
            sites_after_exec,
            gate,
            warm_up: Box::pin(sleep_until(warm_up)),
            metrics,
            jvm,
            events: 0,
            stopped: false,
            started,
            wall_started: std::time::SystemTime::now(),
            config,
            common: common.clone(),
        };
        let attached = Attached {
            probes,
            maps,
            signals,
            unwinder,
            tables,
            started,
        };
        Ok((mode, attached))
    }

    fn waiting_for_gate_baseline(&self) -> bool {
        self.gate
            .as_ref()
            .is_some_and(LeakGate::waiting_for_baseline)
    }
}

impl Mode for ProcessMode {
    type Wakeup = Wakeup;
    type Tick = Summary;

    fn output_name(&self) -> String {
        self.target.pid.to_string()
    }

    fn resolve_on_read(&mut self, event: &Event, carried: Carried<'_>) -> Option<StackId> {
        Some(self.tracee.resolve(event, carried))
    }

    fn apply(&mut self, event: &Event, arrived: Arrived<'_, StackId>, _now: &Now) -> Option<Stop> {
        match event.kind() {
            Some(EventKind::Exec) => match self.execs_expected.checked_sub(1) {
                Some(left) => {
                    self.execs_expected = left;
                    // The launched command runs its program: its probes
                    // are armed as its loader maps the library.
                    if let Some(sites) = self.sites_after_exec.take() {
                        self.armed = Some(ArmedWatch::new(sites, self.target.pid));
                    }
                }
                None => return Some(Stop::TargetExeced(event.timestamp_ns)),
            },
            Some(EventKind::Fork) => self.forks.note_fork(),
            _ => {
                self.events += 1;
                self.tracee.apply(event, arrived);
            }
        }
        None
    }

    fn after_drain(&mut self) {
        self.forks.clean_up();
        self.tracee.evict_over_budget();
    }

    fn stack_stats(&self) -> StackStats {
        self.tracee.stacks.budget().stats()
    }

    fn note_loss(&mut self, at_ns: u64) {
        self.tracee.ledger.note_loss(at_ns);
    }

    fn totals(&self) -> ledger::Totals {
        self.tracee.ledger.totals()
    }

    fn probe_checks(&self) -> Option<ProbeChecks> {
        self.armed.as_ref().map(ArmedWatch::stats)
    }

    async fn wakeup(&mut self) -> Wakeup {
        let waiting = self.waiting_for_gate_baseline();
        tokio::select! {
            exited = self.exit.exited() => Wakeup::TargetExited(exited),
            _ = &mut self.warm_up, if waiting => Wakeup::GateWarmedUp,
        }
    }

    fn on_wakeup(
        &mut self,
        wakeup: Wakeup,
        _probes: &mut Probes,
        _now: &Now,
    ) -> anyhow::Result<Option<Stop>> {
        match wakeup {
            Wakeup::TargetExited(exited) => {
                exited?;
                Ok(Some(Stop::TargetExited))
            }
            Wakeup::GateWarmedUp => {
                self.take_gate_baseline();
                Ok(None)
            }
        }
    }

    fn tick(&mut self, now: &Now, totals: Totals, summaries: &mut SummaryState) -> Summary {
        if !self.stopped {
            // Libraries loaded since; the last tick, after the target may
            // have gone, keeps the last good view.
            self.tracee.symbols.refresh_maps();
            if let Some(armed) = &mut self.armed {
                armed.check();
            }
            // Read at the next summary's refresh (or the final one).
            if let Some(jvm) = &mut self.jvm {
                jvm.request();
            }
        }
        let view = self.tracee.view(now.now_ns);
        self.tracee.record(now.elapsed_s, &view);
        let top = self.tracee.largest_of_both(&view, self.common.top);
        let suspects = self.tracee.suspects(&view, self.common.top);
        self.publish_metrics(totals, &view, &suspects);
        let mut summary = summaries.next(totals, now.elapsed_s, top, view.total_ages(), suspects);
        summary.views = Some(self.tracee.tick_views(now));
        summary
    }

    fn report(&self, now: &Now, totals: Totals) -> Report {
        let view =
            report::StackView::of(&self.tracee.ledger, now.now_ns, now.allocated_before_ns());
        let (ranked, suspects) = self.tracee.final_ranking(now.now_ns);
        Report {
            version: report::REPORT_VERSION,
            duration_s: now.elapsed_s,
            min_age_s: self.common.min_age.as_secs_f64(),
            sample_rate_bytes: self.config.sampling.as_ref().map(|s| s.rate()),
            totals,
            processes: vec![report::ProcessReport {
                pid: self.target.pid,
                comm: self.target.comm.clone(),
                exe: self.target.exe.display().to_string(),
                libc: self.target.allocator.path.display().to_string(),
                container: self.container.clone(),
                totals,
                mapped: self.tracee.mapped.as_ref().map(MappedLedger::totals),
                age_bytes: view.total_ages(),
                stacks: self.tracee.all_stacks(&view),
                timeline: Some(self.tracee.timeline(&ranked)),
                growth_bytes_per_s: None,
            }],
            suspects,
            host: None,
            views: Some(report::HeapViews::of(
                &self.tracee.ledger,
                &self.tracee,
                self.target.pid,
                now.elapsed_s,
                now.now_ns,
            )),
        }
    }

    fn stopped(&mut self, stop: Stop) {
        self.stopped = true;
        let pid = self.target.pid;
        if let Some(jvm) = &mut self.jvm
            && matches!(stop, Stop::Signal(_) | Stop::Duration)
        {
            // The last word on the JVM's code, before the last events are
            // symbolized and the report names its stacks.
            jvm.write_now(false);
        }
        if matches!(stop, Stop::Signal(_) | Stop::Duration) {
            // The target is still there: code it mapped since the last
            // tick (a library just `dlopen`ed) is named from its maps now.
            self.tracee.symbols.refresh_maps();
        }
        match stop {
            Stop::TargetExited => {
                self.tracee.symbols.target_exited();
                eprintln!("alloctrace: pid {pid} exited");
            }
            Stop::TargetExeced(_) => eprintln!(
                "alloctrace: pid {pid} ran execve; stopped tracing (outstanding blocks are those \
                 of the old program at that moment)"
            ),
            _ => {}
        }
    }

    fn flamegraph_title(&self) -> String {
        format!(
            "Outstanding bytes by stack: {} (pid {})",
            self.target.comm, self.target.pid
        )
    }

    fn write_own_outputs(&self, now: &Now, _report: &Report) -> anyhow::Result<()> {
        self.write_pprof(now)
    }

    fn finish(mut self, stop: Stop) -> anyhow::Result<Outcome> {
        let leak_gate_failed = self.judge_leak_gate()?;
        let command_status = match self.launched.take() {
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
}
