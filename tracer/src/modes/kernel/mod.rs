//! Kernel mode (`--kernel`): the kernel's own allocations, host-wide,
//! traced until stopped.
//!
//! The programs on the `kmem` and `percpu` tracepoints (see
//! `tracer-ebpf/src/kmem.rs`) send slab objects, pages and per-CPU blocks
//! with their kernel stacks; here they go through the same stack table,
//! ledger, history and reports as a process's heap blocks, in one
//! [`Tracee`] whose symbolizer names kernel addresses
//! (`ProcessSymbolizer::kernel`). Each stack ends with a frame naming the
//! allocating task ([`tasks`]). Frees of blocks allocated before tracing
//! began count apart (`preexisting_frees`), as in user space.
//!
//! Its decisions, as the driver asks for them: stacks are resolved on read
//! when they come with their frames, and otherwise when applied (kernel
//! addresses do not go away; task names are read then, milliseconds after
//! the allocation); nothing ends tracing but a signal or `--duration`; the
//! leak gate's warm-up is its only wakeup. Stacks are of kind `kernel` in
//! every output.

mod counts;
mod tasks;

use std::pin::Pin;

use tokio::time::{Sleep, sleep_until};
use tracer_ebpf::{Event, EventKind};

use self::tasks::Tasks;
use crate::{
    analysis::LeakGate,
    config::{Common, KernelConfig},
    driver::{self, Attached, Mode, Now, Outcome, Stop, StopSignals, Tracee},
    events::{Arrived, Carried},
    ledger::{self, Budget, Ledger},
    memory_limit,
    probes::{Counters, Probes, ProgramStats, Settings, UprobeLinks},
    report::{
        self, KernelCounts, Report, StackKind, StackReport, Summary, SummaryState, SuspectReport,
        Totals,
    },
    stacks::{StackBudget, StackId, StackStats},
    symbolize::{ProcessSymbolizer, SharedSymbols},
};

/// Traces the kernel's allocations until stopped.
pub async fn run(common: &Common, config: KernelConfig) -> anyhow::Result<Outcome> {
    let (mode, attached) = KernelMode::start(common, config)?;
    driver::run(mode, attached, common).await
}

pub struct KernelMode {
    common: Common,
    tracee: Tracee,
    tasks: Tasks,
    gate: Option<LeakGate>,
    /// Ends the leak gate's warm-up (`--after`).
    warm_up: Pin<Box<Sleep>>,
    /// The running kernel's release, for the report.
    release: String,
    /// The programs' skipped runs.
    programs: ProgramStats,
}

/// What wakes kernel mode besides events and timers.
pub enum Wakeup {
    GateWarmedUp,
}

impl KernelMode {
    fn start(common: &Common, config: KernelConfig) -> anyhow::Result<(Self, Attached)> {
        let signals = StopSignals::install()?;
        let (mut probes, mut maps) = Probes::load(&Settings {
            pid: 0,
            ring_size: common.ring_size.unwrap_or(tracer_ebpf::DEFAULT_RING_SIZE),
            stack_copy_bytes: 0,
            sampling: None,
            thread_slots: tracer_ebpf::MAX_THREAD_SLOTS,
            unwind_table_rows: 0,
            // No uprobes at all: perf events need no guardian process.
            uprobe_links: UprobeLinks::PerfEvents,
            kernel_allocations: true,
            verbose: common.verbose,
        })?;
        // Kernel stacks are the kernel's to walk: no tables.
        maps.unwind = None;
        // Symbols first: a stack is named on first sight, and kallsyms is
        // read once.
        let symbols = ProcessSymbolizer::kernel(SharedSymbols::new());
        let programs = probes.attach_kernel()?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .unwrap_or_default();
        eprintln!(
            "alloctrace: tracing the kernel's allocations (Linux {release}: kmalloc, kmem_cache, \
             pages, per-CPU; kernel stacks)"
        );
        let started = std::time::Instant::now();
        let gate = config
            .gate
            .map(|gate| LeakGate::new(gate.threshold_bytes, gate.after));
        let warm_up = tokio::time::Instant::from_std(started)
            + gate
                .as_ref()
                .map_or(std::time::Duration::ZERO, LeakGate::after);
        let ledger = Ledger::new(
            Budget::new(memory_limit::cap_tracked_blocks(common.max_tracked)),
            None,
        );
        let stack_budget = StackBudget::new(common.max_stacks, maps.known_stacks.take());
        let mode = Self {
            common: common.clone(),
            tracee: Tracee::with_symbols(0, ledger, symbols, stack_budget),
            tasks: Tasks::default(),
            gate,
            warm_up: Box::pin(sleep_until(warm_up)),
            release,
            programs,
        };
        let attached = Attached {
            probes,
            maps,
            signals,
            unwinder: None,
            tables: None,
            started,
        };
        Ok((mode, attached))
    }

    /// The stack of `event`, with its task's frame when it allocates.
    fn stack_of(&mut self, event: &Event, carried: Carried<'_>) -> StackId {
        let stack = self.tracee.resolve(event, carried);
        if event.kind() != Some(EventKind::Alloc) {
            return stack;
        }
        self.tasks
            .stack_with_task(&mut self.tracee, stack, event.pid, event.timestamp_ns)
    }

    fn waiting_for_gate_baseline(&self) -> bool {
        self.gate
            .as_ref()
            .is_some_and(LeakGate::waiting_for_baseline)
    }
}

/// Marks `stacks` as the kernel's.
fn kernel_kind(mut stacks: Vec<StackReport>) -> Vec<StackReport> {
    for stack in &mut stacks {
        stack.kind = StackKind::Kernel;
    }
    stacks
}

/// `suspects`, their stacks marked as the kernel's.
fn kernel_suspects(mut suspects: Vec<SuspectReport>) -> Vec<SuspectReport> {
    for suspect in &mut suspects {
        suspect.stack.kind = StackKind::Kernel;
    }
    suspects
}

impl Mode for KernelMode {
    type Wakeup = Wakeup;
    type Tick = Summary;

    fn output_name(&self) -> String {
        "kernel".to_owned()
    }

    fn resolve_on_read(&mut self, event: &Event, carried: Carried<'_>) -> Option<StackId> {
        Some(self.stack_of(event, carried))
    }

    fn apply(&mut self, event: &Event, arrived: Arrived<'_, StackId>, _now: &Now) -> Option<Stop> {
        // Events that name their stack by hash arrive unresolved.
        let stack = match arrived {
            Arrived::Resolved(stack) => stack,
            Arrived::Carried(carried) => self.stack_of(event, carried),
        };
        self.tracee.apply(event, Arrived::Resolved(stack));
        None
    }

    fn note_loss(&mut self, at_ns: u64) {
        self.tracee.ledger.note_loss(at_ns);
    }

    fn totals(&self) -> ledger::Totals {
        self.tracee.ledger.totals()
    }

    fn after_drain(&mut self) {
        let evicted = self.stack_stats().evicted;
        self.tracee.evict_over_budget();
        if self.stack_stats().evicted != evicted {
            self.tasks.forget_stacks();
        }
    }

    fn stack_stats(&self) -> StackStats {
        self.tracee.stacks.budget().stats()
    }

    fn kernel_counts(&self, counters: &Counters) -> Option<KernelCounts> {
        Some(counts::read(counters, &self.programs))
    }

    async fn wakeup(&mut self) -> Wakeup {
        if self.waiting_for_gate_baseline() {
            (&mut self.warm_up).await;
            Wakeup::GateWarmedUp
        } else {
            std::future::pending().await
        }
    }

    fn on_wakeup(
        &mut self,
        wakeup: Wakeup,
        _probes: &mut Probes,
        _now: &Now,
    ) -> anyhow::Result<Option<Stop>> {
        match wakeup {
            Wakeup::GateWarmedUp => {
                if let Some(gate) = &mut self.gate {
                    self.tracee.take_gate_baseline(gate);
                }
            }
        }
        Ok(None)
    }

    fn tick(&mut self, now: &Now, totals: Totals, summaries: &mut SummaryState) -> Summary {
        self.tasks.forget_pids();
        let view = self.tracee.view(now.now_ns);
        self.tracee.record(now.elapsed_s, &view);
        let top = kernel_kind(self.tracee.largest(&view, self.common.top));
        let suspects = kernel_suspects(self.tracee.suspects(&view, self.common.top));
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
            sample_rate_bytes: None,
            totals,
            processes: vec![report::ProcessReport {
                pid: 0,
                comm: "[kernel]".to_owned(),
                exe: format!("linux {}", self.release),
                libc: String::new(),
                container: None,
                totals,
                mapped: None,
                age_bytes: view.total_ages(),
                stacks: kernel_kind(self.tracee.largest(&view, usize::MAX)),
                timeline: Some(self.tracee.timeline(&ranked)),
                growth_bytes_per_s: None,
            }],
            suspects: kernel_suspects(suspects),
            host: None,
            views: Some(report::HeapViews::of(
                &self.tracee.ledger,
                &self.tracee,
                0,
                now.elapsed_s,
                now.now_ns,
            )),
        }
    }

    fn flamegraph_title(&self) -> String {
        format!(
            "Outstanding kernel memory by kernel stack and task (Linux {})",
            self.release
        )
    }

    fn write_own_outputs(&self, _now: &Now, _report: &Report) -> anyhow::Result<()> {
        Ok(())
    }

    fn finish(self, _stop: Stop) -> anyhow::Result<Outcome> {
        let leak_gate_failed = match &self.gate {
            Some(gate) => self.tracee.judge_gate(gate)?,
            None => false,
        };
        Ok(Outcome {
            leak_gate_failed,
            command_status: None,
        })
    }
}
