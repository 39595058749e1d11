//! The ledgers of host-wide mode, one per traced process, keyed by pid and
//! created on the process's first event.
//!
//! A process's ledger ends at its exit marker (or its `execve`, which
//! replaces every block it had), at which point its final report is built
//! (its stacks were symbolized while it ran) and everything else it held is
//! released: the ledger, its symbolizer's caches and the kernel stack-map
//! entries no other process uses. Only a bounded number of final reports is
//! kept (those still holding the most bytes), so a storm of short-lived
//! processes costs memory only while they live. Markers travel in the ring
//! with the events, so a reused pid can never reach the ledger of the
//! process that had it before; should a marker be lost anyway, each tick
//! compares every tracked pid's start time with `/proc`.
//!
//! With mapped memory traced, each process also has a ledger of its
//! mappings and break (see `ledger::mapped`), created, counted in the same
//! `--max-tracked` budget and released with its heap ledger. A process is
//! ranked by the growth of both together; its heap and mapped bytes are
//! shown apart.

use std::{collections::HashMap, rc::Rc};

use tracer_ebpf::{Event, EventKind};

use super::residue::PerPid;
use crate::{
    analysis::{AgeBuckets, History},
    cli::MemoryKinds,
    clock::monotonic_ns,
    container::{self, Container},
    driver::{Now, Tracee},
    events::Arrived,
    ledger::{self, Budget, Ledger},
    maps::{Backing, program_break},
    metrics::{MappedMetrics, ProcessMetrics, SuspectMetric, bounded_stacks},
    report::{HostCounts, ProcessReport, StackReport, StackView, SuspectReport, Totals},
    stacks::{StackBudget, StackId, StackStats},
    symbolize::SharedSymbols,
    target::allocator_library,
};

/// Growth is measured over this many ticks.
pub const GROWTH_TICKS: usize = 3;

/// Final reports of exited processes kept at most (the largest by
/// outstanding bytes); the rest are only counted.
pub const MAX_EXITED_REPORTS: usize = 1000;

/// Stacks an exited process's final report keeps (its largest): with
/// [`MAX_EXITED_REPORTS`], what exited processes cost the tracer is bounded
/// whatever they did (its totals stay whole): at most 1000 x 64 stacks of
/// about 1 KiB each. 64 rather than fewer so that a service's whole set of
/// leak sites survives its exit (the host tests' workload has 25).
pub const MAX_EXITED_STACKS: usize = 64;

/// Processes with series of their own in the metrics (the first of the
/// ranking); the others are summed into one (see [`Processes::metrics`]).
pub const MAX_METRIC_PROCESSES: usize = 100;

/// One line of a tick's ranking (JSON ticks carry its keys).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Ranked {
    pub pid: u32,
    pub comm: String,
    /// Heap blocks outstanding.
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    /// Committed mapped memory, when it is traced: bytes and pieces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_count: Option<u64>,
    /// Change of its outstanding bytes (heap and mapped together) per
    /// second over the last ticks.
    pub growth_bytes_per_s: f64,
    /// Its cgroup and the container or pod that names.
    pub container: Option<Container>,
}

/// A traced process.
struct Process {
    pid: u32,
    /// `/proc/PID/stat` start time (clock ticks since boot); 0 when the
    /// process was gone before it could be read.
    start_time: u64,
    comm: String,
    exe: String,
    /// When `comm` and `exe` were read from `/proc` (CLOCK_MONOTONIC ns).
    named_at_ns: u64,
    /// The parent, as `/proc` said then.
    ppid: i32,
    /// Read when the ledger starts: `execve` keeps the cgroup.
    container: Option<Container>,
    tracee: Tracee,
}

/// Processes that exited: their final reports (bounded) and totals.
#[derive(Default)]
struct Exited {
    kept: Vec<ProcessReport>,
    /// Exited processes whose report was not kept.
    omitted: u64,
    count: u64,
    totals: ledger::Totals,
}

impl Exited {
    fn add(&mut self, report: ProcessReport, totals: ledger::Totals) {
        self.count += 1;
        add_totals(&mut self.totals, totals);
        if held_bytes(&report) == 0 {
            self.omitted += 1;
            return;
        }
        self.kept.push(report);
        if self.kept.len() > MAX_EXITED_REPORTS {
            let smallest = self
                .kept
                .iter()
                .enumerate()
                .min_by_key(|(_, report)| held_bytes(report))
                .map(|(index, _)| index);
            if let Some(index) = smallest {
                self.kept.swap_remove(index);
                self.omitted += 1;
            }
        }
    }
}

/// Each live process's ledger by stack at one tick, walked once and shared
/// by everything the tick shows (history, ranking, largest stacks,
/// suspects, ages, metrics): a walk visits every live block.
pub struct LiveViews(HashMap<u32, StackView>);

pub struct Processes {
    shared: Rc<SharedSymbols>,
    /// `--max-tracked`, shared by every process's ledgers.
    budget: Budget,
    /// `--max-stacks`, shared by every process's stack table.
    stack_budget: StackBudget,
    /// `--trace-memory`: whether each process gets a mapped-memory ledger.
    memory: MemoryKinds,
    live: HashMap<u32, Process>,
    /// Each live process's outstanding bytes at the last ticks.
    growth: History<u32>,
    /// Names from exec markers of processes without a ledger yet.
    names: HashMap<u32, String>,
    exited: Exited,
}

impl Processes {
    pub fn new(
        shared: Rc<SharedSymbols>,
        budget: Budget,
        stack_budget: StackBudget,
        memory: MemoryKinds,
    ) -> Self {
        Self {
            shared,
            budget,
            stack_budget,
            memory,
            live: HashMap::new(),
            growth: History::new(GROWTH_TICKS + 1),
            names: HashMap::new(),
            exited: Exited::default(),
        }
    }

    /// Applies one event of the ring, in order.
    pub fn apply(&mut self, event: &Event, arrived: Arrived<'_, StackId>, now: &Now) {
        match event.kind() {
            Some(EventKind::Exec) => {
                // The old image's blocks are gone with it: a new ledger,
                // under the new name, starts at the next event.
                let clock = Now {
                    now_ns: event.timestamp_ns,
                    ..*now
                };
                let comm = comm_text(&event.marker_comm());
                if let Some(process) = self.live.get_mut(&event.pid) {
                    process.name_old_image(event.timestamp_ns, &comm);
                }
                self.end(event.pid, &clock);
                self.names.insert(event.pid, comm);
            }
            Some(EventKind::ProcessExit) => {
                let clock = Now {
                    now_ns: event.timestamp_ns,
                    ..*now
                };
                if let Some(process) = self.live.get_mut(&event.pid) {
                    // The name it had when it ended, even if it was gone
                    // before `/proc` could be read.
                    process.comm = comm_text(&event.marker_comm());
                }
                self.end(event.pid, &clock);
                self.names.remove(&event.pid);
            }
            Some(_) => self
                .track(event.pid, now.elapsed_s)
                .tracee
                .apply(event, arrived),
            None => {}
        }
    }

    /// Tells the ledgers the kernel lost events at or before `at_ns`.
    pub fn note_loss(&mut self, at_ns: u64) {
        for process in self.live.values_mut() {
            process.tracee.ledger.note_loss(at_ns);
        }
    }

    /// Beyond `--max-stacks`, evicts idle stacks, from the processes with
    /// the most stacks first.
    pub fn evict_stacks(&mut self) {
        let mut excess = self.stack_budget.excess();
        if excess == 0 {
            return;
        }
        let mut largest: Vec<(usize, u32)> = self
            .live
            .values()
            .map(|process| (process.tracee.stacks.len(), process.pid))
            .collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        for (_, pid) in largest {
            let Some(process) = self.live.get_mut(&pid) else {
                continue;
            };
            excess = excess.saturating_sub(process.tracee.evict_stacks(excess));
            if excess == 0 {
                break;
            }
        }
    }

    /// The sizes of what is kept per process (the library scan's and the
    /// unwinder's left at 0).
    pub fn per_pid(&self) -> PerPid {
        PerPid {
            ledgers: self.live.len(),
            names: self.names.len(),
            growth_histories: self.growth.len(),
            exited_reports: self.exited.kept.len(),
            stacks: self.stack_budget.stats().stacks,
            ..PerPid::default()
        }
    }

    pub fn stack_stats(&self) -> StackStats {
        self.stack_budget.stats()
    }

    /// One tick: records each process's outstanding bytes and stacks, ends
    /// the processes that are gone without a marker, and ranks the rest by
    /// growth, then by outstanding bytes.
    pub fn tick(&mut self, now: &Now) -> (Vec<Ranked>, LiveViews) {
        let gone: Vec<u32> = self
            .live
            .values()
            .filter(|process| !process.still_running())
            .map(|process| process.pid)
            .collect();
        for pid in gone {
            self.end(pid, now);
        }
        self.names
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        let mut views = LiveViews(HashMap::with_capacity(self.live.len()));
        for process in self.live.values_mut() {
            let view = process.tracee.view(now.now_ns);
            process.tracee.record(now.elapsed_s, &view);
            views.0.insert(process.pid, view);
        }
        let outstanding = self
            .live
            .values()
            .map(|process| (process.pid, process.held_bytes()));
        self.growth.record_bytes(now.elapsed_s, outstanding);
        let mut ranked: Vec<Ranked> = self
            .live
            .values()
            .map(|process| {
                let totals = process.tracee.ledger.totals();
                let (mapped_bytes, mapped_count) = process.tracee.mapped_outstanding();
                let mapped = self.memory.mapped();
                Ranked {
                    pid: process.pid,
                    comm: process.comm.clone(),
                    outstanding_bytes: totals.outstanding_bytes,
                    outstanding_count: totals.outstanding_count,
                    mapped_bytes: mapped.then_some(mapped_bytes),
                    mapped_count: mapped.then_some(mapped_count),
                    growth_bytes_per_s: self.growth.growth_bytes_per_s(&process.pid),
                    container: process.container.clone(),
                }
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.growth_bytes_per_s
                .total_cmp(&a.growth_bytes_per_s)
                .then(b.held_bytes().cmp(&a.held_bytes()))
                .then(a.pid.cmp(&b.pid))
        });
        (ranked, views)
    }

    /// The `limit` largest stacks of a live process, heap and mapped.
    pub fn top_stacks(&self, pid: u32, views: &LiveViews, limit: usize) -> Vec<StackReport> {
        match (self.live.get(&pid), views.0.get(&pid)) {
            (Some(process), Some(view)) => process.tracee.largest_of_both(view, limit),
            _ => Vec::new(),
        }
    }

    /// Each live process with its view of this tick.
    fn with_views<'a>(
        &'a self,
        views: &'a LiveViews,
    ) -> impl Iterator<Item = (&'a Process, &'a StackView)> + 'a {
        self.live
            .values()
            .filter_map(|process| Some((process, views.0.get(&process.pid)?)))
    }

    /// The series of the live processes `shown` (the first
    /// [`MAX_METRIC_PROCESSES`] of the ranking): each one's totals, ages
    /// and suspects, its `top` largest stacks and the rest summed (so a
    /// process with thousands of stacks still has `top` + 1 stack series);
    /// then every other live process summed as one, `pid="0"`,
    /// `comm="[other]"`, so the series stay bounded however many processes
    /// run and still add up to the host's numbers.
    pub fn metrics(
        &self,
        now: &Now,
        views: &LiveViews,
        top: usize,
        shown: &[u32],
    ) -> Vec<ProcessMetrics> {
        let mut series: Vec<ProcessMetrics> = shown
            .iter()
            .filter_map(|pid| Some((self.live.get(pid)?, views.0.get(pid)?)))
            .map(|(process, view)| {
                let totals = Totals::new(process.tracee.ledger.totals(), now.lost_events);
                let largest = process.tracee.largest(view, top);
                ProcessMetrics {
                    pid: process.pid,
                    comm: process.comm.clone(),
                    container: process.container.clone(),
                    totals,
                    events: None,
                    age_bytes: view.total_ages(),
                    suspects: process
                        .tracee
                        .suspects(view, top)
                        .iter()
                        .map(SuspectMetric::from)
                        .collect(),
                    stacks: bounded_stacks(&largest, top, totals.outstanding_bytes),
                    mapped: process.tracee.mapped_metrics(view.now_ns, top),
                }
            })
            .collect();
        let mut others = self
            .with_views(views)
            .filter(|(process, _)| !shown.contains(&process.pid))
            .peekable();
        if others.peek().is_some() {
            let mut totals = ledger::Totals::default();
            let mut age_bytes = AgeBuckets::default();
            let mut mapped = self.memory.mapped().then(MappedMetrics::default);
            for (process, view) in others {
                add_totals(&mut totals, process.tracee.ledger.totals());
                age_bytes.merge(&view.total_ages());
                if let Some(mapped) = &mut mapped {
                    let (bytes, count) = process.tracee.mapped_outstanding();
                    mapped.bytes += bytes;
                    mapped.count += count;
                }
            }
            series.push(ProcessMetrics {
                pid: 0,
                comm: "[other]".to_owned(),
                totals: Totals::new(totals, now.lost_events),
                age_bytes,
                mapped,
                ..ProcessMetrics::default()
            });
        }
        series
    }

    /// The `limit` largest stacks and the `limit` most suspicious ones of
    /// all live processes.
    pub fn largest_and_suspects(
        &self,
        views: &LiveViews,
        limit: usize,
    ) -> (Vec<StackReport>, Vec<SuspectReport>) {
        let mut largest = Vec::new();
        let mut suspects = Vec::new();
        for (process, view) in self.with_views(views) {
            largest.extend(process.tracee.largest_of_both(view, limit));
            suspects.extend(process.tracee.suspects(view, limit));
        }
        largest.sort_by_key(|stack| std::cmp::Reverse(stack.bytes));
        largest.truncate(limit);
        (largest, most_suspicious(suspects, limit))
    }

    /// The `limit` most suspicious stacks of all live processes.
    pub fn suspects(&self, now_ns: u64, limit: usize) -> Vec<SuspectReport> {
        let suspects = self
            .live
            .values()
            .flat_map(|process| process.tracee.suspects(&process.tracee.view(now_ns), limit));
        most_suspicious(suspects.collect(), limit)
    }

    /// Outstanding bytes of every live process by age.
    pub fn total_ages(views: &LiveViews) -> AgeBuckets {
        let mut total = AgeBuckets::default();
        for view in views.0.values() {
            total.merge(&view.total_ages());
        }
        total
    }

    /// The calls of every process since tracing began, exited or not, and
    /// the blocks the live ones hold: an exited process's memory went back
    /// to the system with it (its own report keeps what it held at the end).
    pub fn totals(&self) -> ledger::Totals {
        let mut totals = ledger::Totals {
            outstanding_bytes: 0,
            outstanding_count: 0,
            ..self.exited.totals
        };
        for process in self.live.values() {
            add_totals(&mut totals, process.tracee.ledger.totals());
        }
        totals
    }

    pub fn counts(&self) -> HostCounts {
        let mapped = self.memory.mapped().then(|| {
            self.live
                .values()
                .map(|process| process.tracee.mapped_outstanding())
                .fold((0, 0), |(bytes, count), (more_bytes, more_count)| {
                    (bytes + more_bytes, count + more_count)
                })
        });
        HostCounts {
            tracked_processes: self.live.len(),
            exited_processes: self.exited.count,
            exited_processes_omitted: self.exited.omitted,
            mapped_outstanding_bytes: mapped.map(|(bytes, _)| bytes),
            mapped_outstanding_count: mapped.map(|(_, count)| count),
        }
    }

    /// Reports of the live processes (as of `now`) and of the exited
    /// ones kept, largest outstanding bytes first.
    pub fn reports(&self, now: &Now) -> Vec<ProcessReport> {
        let mut reports: Vec<ProcessReport> = self
            .live
            .values()
            .map(|process| ProcessReport {
                growth_bytes_per_s: Some(self.growth.growth_bytes_per_s(&process.pid)),
                ..process.report(now)
            })
            .chain(self.exited.kept.iter().cloned())
            .collect();
        reports.sort_by(|a, b| held_bytes(b).cmp(&held_bytes(a)).then(a.pid.cmp(&b.pid)));
        reports
    }

    /// The ledger of `pid`, created on its first event.
    fn track(&mut self, pid: u32, elapsed_s: f64) -> &mut Process {
        let names = &mut self.names;
        let shared = &self.shared;
        let budget = &self.budget;
        let stack_budget = &self.stack_budget;
        let growth = &mut self.growth;
        let memory = self.memory;
        self.live.entry(pid).or_insert_with(|| {
            growth.start(pid, elapsed_s);
            let ledger = Ledger::new(budget.clone(), None);
            let mut tracee = Tracee::new(pid, ledger, Rc::clone(shared), stack_budget.clone());
            // A name from an exec marker: a new image, whose first `brk`
            // call (the loader's `brk(NULL)`) tells where its break starts.
            let name = names.remove(&pid);
            if memory.mapped() {
                let program_break = name.is_none().then(|| program_break(pid)).flatten();
                tracee.trace_mapped(budget.clone(), program_break);
            }
            Process::start(pid, name, tracee)
        })
    }

    /// Ends `pid`'s ledger: keeps its final report (within bounds) and
    /// releases everything else.
    fn end(&mut self, pid: u32, now: &Now) {
        let Some(mut process) = self.live.remove(&pid) else {
            return;
        };
        self.growth.remove(&pid);
        process.tracee.symbols.target_exited();
        let mut report = process.report(now);
        report.stacks.truncate(MAX_EXITED_STACKS);
        self.exited.add(report, process.tracee.ledger.totals());
        process.tracee.symbols.release();
    }
}

impl Process {
    fn start(pid: u32, name: Option<String>, tracee: Tracee) -> Self {
        let proc = procfs::process::Process::new(pid as i32).ok();
        let stat = proc.as_ref().and_then(|proc| proc.stat().ok());
        let comm = name
            .or_else(|| stat.as_ref().map(|stat| stat.comm.clone()))
            .unwrap_or_else(|| "?".to_owned());
        let exe = proc
            .as_ref()
            .and_then(crate::mapped::executable)
            .map_or_else(|| comm.clone(), |exe| exe.display().to_string());
        Self {
            pid,
            start_time: stat.as_ref().map_or(0, |stat| stat.starttime),
            comm,
            exe,
            named_at_ns: monotonic_ns(),
            ppid: stat.map_or(0, |stat| stat.ppid),
            container: container::of_process(pid),
            tracee,
        }
    }

    /// The process ran `execve` at `exec_ns` and is now called `new_comm`.
    /// If its name was read from `/proc` after that, or is already the new
    /// one (the kernel renames the task before the loader maps the program,
    /// well before the exec marker), it is the new program's: the old image,
    /// typically a child between `fork` and `execve` (a shell's, say), had
    /// its parent's name. A program that execs itself is misnamed so.
    fn name_old_image(&mut self, exec_ns: u64, new_comm: &str) {
        if exec_ns >= self.named_at_ns && self.comm != new_comm {
            return;
        }
        let parent = procfs::process::Process::new(self.ppid).ok();
        self.comm = parent
            .as_ref()
            .and_then(|parent| parent.stat().ok())
            .map_or_else(|| "?".to_owned(), |stat| stat.comm);
        self.exe = parent
            .and_then(|parent| crate::mapped::executable(&parent))
            .map_or_else(|| self.comm.clone(), |exe| exe.display().to_string());
    }

    /// Heap and committed mapped bytes it holds.
    fn held_bytes(&self) -> u64 {
        self.tracee.ledger.totals().outstanding_bytes + self.tracee.mapped_outstanding().0
    }

    /// Whether the process that has this pid is still the one traced.
    fn still_running(&self) -> bool {
        let stat = procfs::process::Process::new(self.pid as i32).and_then(|proc| proc.stat());
        match stat {
            Ok(stat) => {
                stat.state != 'Z' && (self.start_time == 0 || stat.starttime == self.start_time)
            }
            Err(_) => false,
        }
    }

    fn report(&self, now: &Now) -> ProcessReport {
        let view = StackView::of(&self.tracee.ledger, now.now_ns, now.allocated_before_ns());
        ProcessReport {
            pid: self.pid,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            libc: self.libc(),
            container: self.container.clone(),
            totals: Totals::new(self.tracee.ledger.totals(), now.lost_events),
            mapped: self.tracee.mapped.as_ref().map(|mapped| mapped.totals()),
            age_bytes: view.total_ages(),
            stacks: self.tracee.all_stacks(&view),
            timeline: Some(
                self.tracee
                    .timeline(&self.tracee.rank(&self.tracee.view(now.now_ns))),
            ),
            growth_bytes_per_s: None,
        }
    }

    /// The allocator library the process maps, as it names it.
    fn libc(&self) -> String {
        self.tracee
            .symbols
            .mappings()
            .iter()
            .find_map(|mapping| match &mapping.backing {
                Backing::File(path) if allocator_library(path).is_some() => {
                    Some(path.display().to_string())
                }
                _ => None,
            })
            .unwrap_or_default()
    }
}

impl Ranked {
    fn held_bytes(&self) -> u64 {
        self.outstanding_bytes + self.mapped_bytes.unwrap_or(0)
    }
}

/// Heap and committed mapped bytes a process report holds.
fn held_bytes(report: &ProcessReport) -> u64 {
    report.totals.outstanding_bytes + report.mapped.map_or(0, |mapped| mapped.outstanding_bytes)
}

/// The `limit` highest-scoring of `suspects`.
fn most_suspicious(mut suspects: Vec<SuspectReport>, limit: usize) -> Vec<SuspectReport> {
    suspects.sort_by(|a, b| b.evidence.score.total_cmp(&a.evidence.score));
    suspects.truncate(limit);
    suspects
}

fn add_totals(sum: &mut ledger::Totals, more: ledger::Totals) {
    sum.allocs += more.allocs;
    sum.frees += more.frees;
    sum.preexisting_frees += more.preexisting_frees;
    sum.outstanding_bytes += more.outstanding_bytes;
    sum.outstanding_count += more.outstanding_count;
    sum.dropped_allocations += more.dropped_allocations;
    sum.dropped_bytes += more.dropped_bytes;
    sum.allocated_bytes += more.allocated_bytes;
}

/// A kernel task name: the bytes up to the first NUL.
fn comm_text(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_measured_over_the_last_ticks() {
        let mut growth: History<u32> = History::new(GROWTH_TICKS + 1);
        growth.start(7, 0.0);
        growth.record_bytes(1.0, [(7, 1000)]);
        assert_eq!(growth.growth_bytes_per_s(&7), 1000.0);
        for t in [2.0, 3.0, 4.0] {
            growth.record_bytes(t, [(7, 1000)]);
        }
        // The samples before the last GROWTH_TICKS ticks are forgotten.
        assert_eq!(growth.growth_bytes_per_s(&7), 0.0);
        growth.record_bytes(5.0, [(7, 400)]);
        assert_eq!(growth.growth_bytes_per_s(&7), -200.0);
    }

    #[test]
    fn task_names_end_at_the_first_nul() {
        assert_eq!(comm_text(b"leaky\0\0\0\0\0\0\0\0\0\0\0"), "leaky");
        assert_eq!(comm_text(b"exactly15chars!\0"), "exactly15chars!");
    }

    fn report(pid: u32, bytes: u64) -> ProcessReport {
        ProcessReport {
            pid,
            comm: "x".into(),
            exe: "x".into(),
            libc: String::new(),
            container: None,
            totals: Totals {
                outstanding_bytes: bytes,
                ..Totals::default()
            },
            mapped: None,
            age_bytes: Default::default(),
            stacks: Vec::new(),
            timeline: None,
            growth_bytes_per_s: None,
        }
    }

    #[test]
    fn exited_reports_keep_the_largest_and_count_the_rest() {
        let mut exited = Exited::default();
        exited.add(report(1, 0), ledger::Totals::default());
        for pid in 0..(MAX_EXITED_REPORTS as u32 + 10) {
            exited.add(
                report(pid + 2, u64::from(pid) + 1),
                ledger::Totals::default(),
            );
        }
        assert_eq!(exited.kept.len(), MAX_EXITED_REPORTS);
        assert_eq!(exited.omitted, 11);
        assert_eq!(exited.count, MAX_EXITED_REPORTS as u64 + 11);
        let smallest = exited.kept.iter().map(|r| r.totals.outstanding_bytes).min();
        assert_eq!(smallest, Some(11));
    }
}
