//! Host-wide mode (`alloctrace --all`): one tracer for every process on the
//! host, for an operator who does not know yet which process leaks.
//!
//! The kernel programs are attached once per distinct allocator library
//! ([`libraries`], rescanned for new ones every second: the mode's own
//! wake-up) for all processes, behind the in-kernel filter of
//! `crate::filters`; exec and exit markers share the ring with the
//! allocator events. Each traced process gets its own ledger, stacks and
//! symbolizer ([`processes`]), resolved at release (which process an event
//! belongs to is only known once the markers before it are applied); an
//! `execve` ends a process's ledger and starts a new one. The ticks rank
//! processes by growth ([`summary`]) and the final outputs cover every
//! process, exited ones included ([`outputs`]).
//!
//! With `--trace-memory both` (or `mapped`) the mapped-memory programs run
//! for every process the filter lets through, and each process's mappings
//! and break get their own ledger beside its heap blocks (see
//! [`processes`]). With `mapped` alone, no allocator library is probed.

mod libraries;
mod outputs;
mod processes;
mod residue;
mod summary;

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::time::Interval;
use tracer_ebpf::{Event, EventKind};

use self::{
    libraries::{Libraries, Library},
    processes::{MAX_METRIC_PROCESSES, Processes},
    residue::PerPid,
    summary::{HostTick, ProcessTick},
};
use crate::{
    armed::{HostWatch, ProbeChecks, ProbeSites},
    cli::MemoryKinds,
    config::{Common, HostConfig},
    driver::{self, Attached, Mode, Now, Outcome, Stop, StopSignals},
    events::{Arrived, Carried},
    ledger::{self, Budget},
    memory_limit,
    metrics::{Metrics, MetricsSnapshot},
    placement::Plan,
    probes::{Probes, Programs},
    report::{Report, SummaryState, Totals},
    stacks::{StackBudget, StackId, StackStats},
    symbolize::SharedSymbols,
    unwind::{UnwindMode, tables::TableLoader},
};

/// How often `/proc` is scanned for allocator libraries not probed yet
/// (a container started with its own libc): a new file's first process is
/// untraced for at most this long.
const RESCAN_PERIOD: Duration = Duration::from_secs(1);

/// Traces every process the filters let through until stopped.
pub async fn run(common: &Common, config: HostConfig) -> anyhow::Result<Outcome> {
    // Bound before attaching, so a taken port fails before any probe.
    let metrics = match config.metrics_addr {
        Some(addr) => Some(Metrics::serve(addr).await?),
        None => None,
    };
    let (mode, attached) = HostMode::start(common, config, metrics)?;
    driver::run(mode, attached, common).await
}

pub struct HostMode {
    common: Common,
    config: HostConfig,
    processes: Processes,
    libraries: Libraries,
    probed: Probed,
    programs: Programs,
    rescan_timer: Interval,
    metrics: Option<Metrics>,
    /// Allocator events applied (markers left out).
    events: u64,
    /// Tracing has stopped (the probes are gone): the final tick remains.
    stopped: bool,
}

impl HostMode {
    fn start(
        common: &Common,
        config: HostConfig,
        metrics: Option<Metrics>,
    ) -> anyhow::Result<(Self, Attached)> {
        let own_pid = std::process::id();
        // Before the ready line: a signal sent as soon as it appears must
        // stop tracing cleanly, not kill the tracer.
        let signals = StopSignals::install()?;
        let ring_size = common.ring_size.unwrap_or(tracer_ebpf::DEFAULT_RING_SIZE);
        let filter = config.filters.kernel_filter(own_pid);
        let (mut probes, mut maps) =
            Probes::load_host_wide(&filter, ring_size, common.unwind_table_rows, common.verbose)?;
        let mut tables = driver::table_loader(config.unwind, &mut maps)?;
        if let Some(tables) = &mut tables {
            load_running_processes(tables, &config, own_pid);
        }
        probes.attach_process_markers()?;
        // Before the uprobes, as in one-process mode: a mapping made inside
        // an allocator call is told apart by the call in flight.
        if config.memory.mapped() {
            probes.attach_mapped()?;
        }
        let programs = if common.floor {
            Programs::Floor
        } else {
            Programs::Tracing
        };
        let mut libraries = Libraries::new(config.filters.clone(), own_pid);
        let mut probed = Probed::default();
        if config.memory.heap() {
            for library in libraries.scan() {
                probed.attach(&mut probes, &library, programs);
            }
            if probed.libraries == 0 {
                bail!("no process maps a C library or known allocator that could be probed");
            }
        }
        let unwinding = match config.unwind {
            UnwindMode::Auto => "DWARF unwinding where frame pointers are missing",
            UnwindMode::Dwarf => "DWARF unwinding",
            UnwindMode::Fp | UnwindMode::StackCopy => "frame-pointer unwinding",
        };
        let what = match config.memory {
            MemoryKinds::Heap => format!(
                "{} allocator libraries, {} functions",
                probed.libraries, probed.functions
            ),
            MemoryKinds::Both => format!(
                "{} allocator libraries, {} functions, mapped memory",
                probed.libraries, probed.functions
            ),
            MemoryKinds::Mapped => "mapped memory only".to_owned(),
        };
        eprintln!("alloctrace: tracing all processes ({what}, {unwinding})");
        let started = Instant::now();
        let mode = Self {
            common: common.clone(),
            processes: Processes::new(
                SharedSymbols::new(),
                Budget::new(memory_limit::cap_tracked_blocks(common.max_tracked)),
                StackBudget::new(common.max_stacks, maps.known_stacks.take()),
                config.memory,
            ),
            libraries,
            probed,
            programs,
            rescan_timer: driver::periodic(tokio::time::Instant::from_std(started), RESCAN_PERIOD),
            metrics,
            events: 0,
            stopped: false,
            config,
        };
        let attached = Attached {
            probes,
            maps,
            signals,
            unwinder: None,
            tables,
            started,
        };
        Ok((mode, attached))
    }
}

/// How long the tables of the processes already running may delay the
/// ready line (a table still compiling then is finished without waiting). Newest first: the process a user just started is the likely
/// suspect. Measured on the development VM with ~60 processes of compilers
/// (8.3 million rows, ~400,000 rows compiled per second) the whole set took
/// ~20 s; a process whose tables come later walks frame pointers until then.
const STARTUP_TABLE_BUDGET: Duration = Duration::from_secs(2);

/// Loads the tables of the processes the filters admit that run now (but
/// this one): before the probes for as long as [`STARTUP_TABLE_BUDGET`]
/// allows, the others in the background. Those started later get theirs at
/// their exec or first event (the driver).
fn load_running_processes(tables: &mut TableLoader, config: &HostConfig, own_pid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != own_pid && config.filters.admits(pid))
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    let started = Instant::now();
    let mut loaded_now = 0;
    for (index, &pid) in pids.iter().enumerate() {
        let left = STARTUP_TABLE_BUDGET.saturating_sub(started.elapsed());
        // The newest process, the likeliest suspect (a program the user
        // just started, the only one a filter admits), is waited for.
        let limit = if index == 0 { Duration::MAX } else { left };
        if !limit.is_zero() {
            loaded_now += usize::from(tables.load_process_within(pid, limit));
        } else {
            tables.load_process_in_background(pid);
        }
    }
    log::debug!(
        "unwind tables of {loaded_now} of {} running processes loaded in {:.1}s, the others in \
         the background",
        pids.len(),
        started.elapsed().as_secs_f64()
    );
    tables.stats().log();
}

/// The libraries probed so far.
#[derive(Default)]
struct Probed {
    libraries: usize,
    functions: usize,
    /// Their breakpoints, looked at in a few processes at each summary.
    watch: HostWatch,
}

impl Probed {
    /// Attaches the probes to `library`; a library that cannot be probed is
    /// reported and left alone (its processes go untraced).
    fn attach(&mut self, probes: &mut Probes, library: &Library, programs: Programs) {
        let attached = Plan::for_object(library.file.path()).and_then(|plan| {
            probes.attach_library(&plan, library.file.path(), programs)?;
            Ok(plan)
        });
        match attached {
            Ok(plan) => {
                let functions = plan.function_count;
                match ProbeSites::new(library.file.path(), &plan) {
                    Ok(sites) => self.watch.add(sites),
                    Err(error) => log::debug!("not watching {}: {error:#}", library.path.display()),
                }
                self.libraries += 1;
                self.functions += functions;
                eprintln!(
                    "alloctrace: probing {} {}{} (found in pid {})",
                    library.kind.describe(),
                    library.path.display(),
                    if library.deleted {
                        " (deleted on disk)"
                    } else {
                        ""
                    },
                    library.pid
                );
            }
            Err(error) => eprintln!(
                "alloctrace: cannot probe {} (found in pid {}): {error:#}",
                library.path.display(),
                library.pid
            ),
        }
    }
}

impl Mode for HostMode {
    type Wakeup = ();
    type Tick = HostTick;

    fn output_name(&self) -> String {
        "all".to_owned()
    }

    fn resolve_on_read(&mut self, _event: &Event, _carried: Carried<'_>) -> Option<StackId> {
        None
    }

    fn apply(&mut self, event: &Event, arrived: Arrived<'_, StackId>, now: &Now) -> Option<Stop> {
        match event.kind() {
            // Only heap tracing probes the libraries a new program maps.
            Some(EventKind::Exec) if self.config.memory.heap() => {
                self.libraries.exec_seen(event.pid)
            }
            Some(EventKind::Exec) => {}
            Some(EventKind::ProcessExit) => {}
            _ => self.events += 1,
        }
        self.processes.apply(event, arrived, now);
        None
    }

    fn note_loss(&mut self, at_ns: u64) {
        self.processes.note_loss(at_ns);
    }

    fn after_drain(&mut self) {
        self.processes.evict_stacks();
    }

    fn stack_stats(&self) -> StackStats {
        self.processes.stack_stats()
    }

    fn totals(&self) -> ledger::Totals {
        self.processes.totals()
    }

    fn probe_checks(&self) -> Option<ProbeChecks> {
        Some(self.probed.watch.stats())
    }

    async fn wakeup(&mut self) {
        self.rescan_timer.tick().await;
    }

    fn on_wakeup(
        &mut self,
        (): (),
        probes: &mut Probes,
        _now: &Now,
    ) -> anyhow::Result<Option<Stop>> {
        if !self.config.memory.heap() {
            return Ok(None);
        }
        for library in self.libraries.scan() {
            self.probed.attach(probes, &library, self.programs);
        }
        Ok(None)
    }

    fn tick(&mut self, now: &Now, totals: Totals, summaries: &mut SummaryState) -> HostTick {
        let top = self.common.top;
        if !self.stopped {
            self.probed.watch.check(&self.libraries.traced());
        }
        let unwind_tables = totals
            .unwind_tables
            .as_ref()
            .map_or(0, |tables| tables.processes);
        let (ranked, views) = self.processes.tick(now);
        let with_metrics: Vec<u32> = ranked
            .iter()
            .take(MAX_METRIC_PROCESSES)
            .map(|ranked| ranked.pid)
            .collect();
        let processes = ranked
            .into_iter()
            .take(top)
            .map(|ranked| {
                let stacks = self.processes.top_stacks(ranked.pid, &views, top);
                ProcessTick::new(ranked, stacks)
            })
            .collect();
        let (largest, suspects) = self.processes.largest_and_suspects(&views, top);
        let ages = Processes::total_ages(&views);
        if let Some(metrics) = &self.metrics {
            metrics.publish(MetricsSnapshot {
                events: Some(self.events),
                processes: self.processes.metrics(now, &views, top, &with_metrics),
            });
        }
        HostTick {
            summary: summaries.next(totals, now.elapsed_s, largest, ages, suspects),
            counts: self.processes.counts(),
            processes,
            per_pid: PerPid {
                library_scans: self.libraries.processes_read(),
                unwind_tables,
                ..self.processes.per_pid()
            },
        }
    }

    fn report(&self, now: &Now, totals: Totals) -> Report {
        self.final_report(now, totals)
    }

    fn stopped(&mut self, _stop: Stop) {
        self.stopped = true;
    }

    fn folded_lines(&self, report: &Report) -> Vec<String> {
        outputs::combined_folded_lines(&report.processes)
    }

    fn flamegraph_title(&self) -> String {
        "Outstanding bytes by process and stack (all processes)".to_owned()
    }

    fn write_own_outputs(&self, _now: &Now, report: &Report) -> anyhow::Result<()> {
        if let Some(dir) = &self.config.flamegraph_dir {
            outputs::write_per_process_flamegraphs(dir, &report.processes)?;
        }
        Ok(())
    }

    fn finish(self, _stop: Stop) -> anyhow::Result<Outcome> {
        Ok(Outcome::default())
    }
}
