//! Host-wide mode (`alloctrace --all`): one tracer for every process on the
//! host, for an operator who does not know yet which process leaks.
//!
//! The kernel programs are attached once per distinct allocator library
//! ([`libraries`], rescanned for new ones every second) for all processes,
//! behind the in-kernel filter of [`filter`]; exec and exit markers share
//! the ring with the allocator events. Each traced process gets its own
//! ledger and symbolizer ([`processes`]), the ticks rank processes by
//! growth ([`summary`]) and the final outputs cover every process, exited
//! ones included ([`outputs`]). Everything downstream of the ring — the
//! ledger, the symbolizer, the report model and formats — is the
//! single-process session's.

mod filter;
mod libraries;
mod outputs;
mod processes;
mod summary;

use std::time::{Duration, Instant};

use anyhow::bail;
use tracer_ebpf::{Counter, EventKind};

pub use self::filter::HostSpec;
use self::{
    libraries::{Libraries, Library},
    processes::{Processes, ReportClock},
    summary::{HostTick, ProcessTick},
};
use crate::{
    cli::{Config, LogFormat},
    events::{EventReader, Release},
    placement::Plan,
    probes::{Counters, Probes, Programs},
    report::{SummaryState, Totals},
    session::{Clocks, Cut, Outcome, StopSignals, monotonic_ns, periodic, restore_default_sigint},
    symbolize::SharedSymbols,
};

/// How often `/proc` is scanned for allocator libraries not probed yet
/// (a container started with its own libc): a new file's first process is
/// untraced for at most this long.
const RESCAN_PERIOD: Duration = Duration::from_secs(1);

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(i32),
    Duration,
}

/// Traces every process the filters let through until stopped, then
/// writes the final outputs.
pub async fn run(config: &Config, spec: &HostSpec) -> anyhow::Result<Outcome> {
    let own_pid = std::process::id();
    // Before the ready line: a signal sent as soon as it appears must stop
    // tracing cleanly, not kill the tracer.
    let mut stop_signals = StopSignals::install()?;
    let ring_size = config.ring_size.unwrap_or(tracer_ebpf::DEFAULT_RING_SIZE);
    let filter = spec.filters.kernel_filter(own_pid);
    let (mut probes, maps) = Probes::load_host_wide(&filter, ring_size, config.verbose)?;
    probes.attach_process_markers()?;
    let programs = if config.floor {
        Programs::Floor
    } else {
        Programs::Tracing
    };
    let mut libraries = Libraries::new(spec.filters.clone(), own_pid);
    let mut probed = Probed::default();
    for library in libraries.scan() {
        probed.attach(&mut probes, &library, programs);
    }
    if probed.libraries == 0 {
        bail!("no process maps a C library or known allocator that could be probed");
    }
    eprintln!(
        "alloctrace: tracing all processes ({} allocator libraries, {} functions, frame-pointer \
         unwinding)",
        probed.libraries, probed.functions
    );
    let shared = SharedSymbols::new();
    let mut session = HostSession {
        started: Instant::now(),
        reader: EventReader::new(maps.events, None)?,
        counters: maps.counters,
        processes: Processes::new(shared, config.max_tracked),
        libraries,
        summaries: SummaryState::default(),
        cut: None,
        lost_seen: 0,
        config: config.clone(),
        spec: spec.clone(),
    };
    let stop = session
        .trace_until_stopped(&mut probes, &mut probed, programs, &mut stop_signals)
        .await?;
    if matches!(stop, Stop::Signal(_)) {
        restore_default_sigint();
    }
    // As in single-process mode: the events up to this instant are a
    // consistent cut; those of the detaching window are discarded.
    let at_ns = monotonic_ns();
    session.cut = Some(Cut {
        at: Instant::now(),
        at_ns,
        lost_events: session.counters.get(Counter::LostEvents),
    });
    probes.detach();
    session.drain_until(at_ns);
    session.print_summary();
    session.write_outputs()?;
    Ok(Outcome::default())
}

/// The libraries probed so far.
#[derive(Default)]
struct Probed {
    libraries: usize,
    functions: usize,
}

impl Probed {
    /// Attaches the probes to `library`; a library that cannot be probed is
    /// reported and left alone (its processes go untraced).
    fn attach(&mut self, probes: &mut Probes, library: &Library, programs: Programs) {
        let attached = Plan::for_object(library.file.path()).and_then(|plan| {
            probes.attach_library(&plan, library.file.path(), programs)?;
            Ok(plan.function_count)
        });
        match attached {
            Ok(functions) => {
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

struct HostSession {
    config: Config,
    spec: HostSpec,
    started: Instant,
    reader: EventReader,
    counters: Counters,
    processes: Processes,
    libraries: Libraries,
    summaries: SummaryState,
    /// Where the final drain stops, once tracing has stopped.
    cut: Option<Cut>,
    /// Lost events already noted in the ledgers.
    lost_seen: u64,
}

impl HostSession {
    async fn trace_until_stopped(
        &mut self,
        probes: &mut Probes,
        probed: &mut Probed,
        programs: Programs,
        stop_signals: &mut StopSignals,
    ) -> anyhow::Result<Stop> {
        let Clocks {
            started,
            mut log_timer,
            mut summary_timer,
            deadline,
        } = Clocks::new(self.started, &self.config);
        tokio::pin!(deadline);
        let mut rescan_timer = periodic(started, RESCAN_PERIOD);
        loop {
            tokio::select! {
                _ = log_timer.tick() => probes.flush_log(),
                batch = self.reader.next_batch() => {
                    batch?;
                    self.drain();
                }
                _ = summary_timer.tick() => {
                    self.drain();
                    self.print_summary();
                }
                _ = rescan_timer.tick() => {
                    self.drain();
                    for library in self.libraries.scan() {
                        probed.attach(probes, &library, programs);
                    }
                }
                _ = stop_signals.interrupt.recv() => return Ok(Stop::Signal(libc::SIGINT)),
                _ = stop_signals.terminate.recv() => return Ok(Stop::Signal(libc::SIGTERM)),
                _ = &mut deadline, if self.config.duration.is_some() => return Ok(Stop::Duration),
            }
        }
    }

    fn drain(&mut self) {
        self.apply_events(Release::Settled, u64::MAX);
    }

    /// Once the probes are detached: moves every event left stamped at or
    /// before `cut_ns` into the ledgers.
    fn drain_until(&mut self, cut_ns: u64) {
        self.apply_events(Release::All, cut_ns);
    }

    /// Moves the events `release` lets out of the reader, up to the first
    /// stamped after `cut_ns`, into the ledgers, then reads and symbolizes
    /// the new stacks.
    fn apply_events(&mut self, release: Release, cut_ns: u64) {
        let elapsed_s = self.elapsed_s();
        let clock = self.clock();
        let processes = &mut self.processes;
        let libraries = &mut self.libraries;
        let mut past_cut = false;
        // Stacks are interned at release, in the process the event belongs
        // to by then (an exec marker read later may end the old one first).
        let horizon = self.reader.read(release, |_, _| None);
        self.reader.release(horizon, |event, carried| {
            past_cut |= event.timestamp_ns > cut_ns;
            if past_cut {
                return;
            }
            if event.kind() == Some(EventKind::Exec) {
                libraries.exec_seen(event.pid);
            }
            processes.apply(event, carried, elapsed_s, clock);
        });
        let lost = self.counters.get(Counter::LostEvents);
        if lost > self.lost_seen {
            self.lost_seen = lost;
            self.processes.note_loss(monotonic_ns());
        }
    }

    /// One tick: the host's totals and the processes ranked by growth.
    fn print_summary(&mut self) {
        let elapsed_s = self.elapsed_s();
        let clock = self.clock();
        let ranked = self.processes.tick(elapsed_s, clock);
        let top = self.config.top;
        let processes = ranked
            .into_iter()
            .take(top)
            .map(|ranked| {
                let stacks = self.processes.top_stacks(ranked.pid, clock.now_ns, top);
                ProcessTick::new(ranked, stacks)
            })
            .collect();
        let totals = self.totals();
        let ages = self.processes.total_ages(clock.now_ns);
        let summary = self
            .summaries
            .next(totals, elapsed_s, Vec::new(), ages, Vec::new());
        let tick = HostTick {
            summary,
            counts: self.processes.counts(),
            processes,
        };
        match self.config.log_format {
            LogFormat::Human => print!("{}", tick.to_human()),
            LogFormat::Json => println!("{}", tick.to_json_line()),
        }
    }

    fn totals(&self) -> Totals {
        Totals::new(self.processes.totals(), self.clock().lost_events)
    }

    /// Now (or the moment tracing stopped), for reports.
    fn clock(&self) -> ReportClock {
        ReportClock {
            now_ns: self.cut.map_or_else(monotonic_ns, |cut| cut.at_ns),
            min_age_ns: self.config.min_age.as_nanos() as u64,
            lost_events: self.cut.map_or_else(
                || self.counters.get(Counter::LostEvents),
                |cut| cut.lost_events,
            ),
        }
    }

    /// Seconds traced: until now, or until tracing stopped.
    fn elapsed_s(&self) -> f64 {
        self.cut
            .map_or_else(Instant::now, |cut| cut.at)
            .duration_since(self.started)
            .as_secs_f64()
    }
}
