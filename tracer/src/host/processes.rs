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

use std::{
    collections::{HashMap, VecDeque},
    rc::Rc,
};

use tracer_ebpf::{Event, EventKind};

use crate::{
    analysis::AgeBuckets,
    events::Carried,
    ledger::{self, Ledger},
    maps::Backing,
    report::{HostCounts, ProcessReport, StackReport, StackView, Totals},
    symbolize::{SharedSymbols, StackSymbolizer},
    target::allocator_library,
};

/// Growth is measured over this many ticks.
pub const GROWTH_TICKS: usize = 3;

/// Final reports of exited processes kept at most (the largest by
/// outstanding bytes); the rest are only counted.
pub const MAX_EXITED_REPORTS: usize = 1000;

/// What a report needs besides the ledger.
#[derive(Clone, Copy, Debug)]
pub struct ReportClock {
    /// The moment the report describes (CLOCK_MONOTONIC ns).
    pub now_ns: u64,
    /// Blocks younger than this are left out of the stacks.
    pub min_age_ns: u64,
    /// Events the kernel lost on the whole host so far.
    pub lost_events: u64,
}

/// One line of a tick's ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub pid: u32,
    pub comm: String,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub growth_bytes_per_s: f64,
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
    ledger: Ledger,
    symbols: StackSymbolizer,
    growth: Growth,
}

/// Outstanding bytes at the last ticks.
#[derive(Debug)]
struct Growth(VecDeque<(f64, u64)>);

impl Growth {
    /// A process first seen at `elapsed_s`, holding nothing then.
    fn new(elapsed_s: f64) -> Self {
        Self(VecDeque::from([(elapsed_s, 0)]))
    }

    fn record(&mut self, elapsed_s: f64, bytes: u64) {
        self.0.push_back((elapsed_s, bytes));
        while self.0.len() > GROWTH_TICKS + 1 {
            self.0.pop_front();
        }
    }

    /// Change per second between the oldest and newest samples.
    fn bytes_per_s(&self) -> f64 {
        match (self.0.front(), self.0.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => (b1 as f64 - b0 as f64) / (t1 - t0),
            _ => 0.0,
        }
    }
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
        if report.totals.outstanding_bytes == 0 {
            self.omitted += 1;
            return;
        }
        self.kept.push(report);
        if self.kept.len() > MAX_EXITED_REPORTS {
            let smallest = self
                .kept
                .iter()
                .enumerate()
                .min_by_key(|(_, report)| report.totals.outstanding_bytes)
                .map(|(index, _)| index);
            if let Some(index) = smallest {
                self.kept.swap_remove(index);
                self.omitted += 1;
            }
        }
    }
}

pub struct Processes {
    shared: Rc<SharedSymbols>,
    max_tracked: u64,
    live: HashMap<u32, Process>,
    /// Names from exec markers of processes without a ledger yet.
    names: HashMap<u32, String>,
    exited: Exited,
}

impl Processes {
    pub fn new(shared: Rc<SharedSymbols>, max_tracked: u64) -> Self {
        Self {
            shared,
            max_tracked,
            live: HashMap::new(),
            names: HashMap::new(),
            exited: Exited::default(),
        }
    }

    /// Applies one event of the ring, in order.
    pub fn apply(
        &mut self,
        event: &Event,
        carried: Carried<'_>,
        elapsed_s: f64,
        clock: ReportClock,
    ) {
        match event.kind() {
            Some(EventKind::Exec) => {
                // The old image's blocks are gone with it: a new ledger,
                // under the new name, starts at the next event.
                let clock = ReportClock {
                    now_ns: event.timestamp_ns,
                    ..clock
                };
                let comm = comm_text(&event.marker_comm());
                if let Some(process) = self.live.get_mut(&event.pid) {
                    process.name_old_image(event.timestamp_ns, &comm);
                }
                self.end(event.pid, clock);
                self.names.insert(event.pid, comm);
            }
            Some(EventKind::ProcessExit) => {
                let clock = ReportClock {
                    now_ns: event.timestamp_ns,
                    ..clock
                };
                if let Some(process) = self.live.get_mut(&event.pid) {
                    // The name it had when it ended, even if it was gone
                    // before `/proc` could be read.
                    process.comm = comm_text(&event.marker_comm());
                }
                self.end(event.pid, clock);
                self.names.remove(&event.pid);
            }
            Some(_) => {
                let process = self.track(event.pid, elapsed_s);
                // Host-wide mode walks frame pointers in the kernel; stack
                // copies are never requested.
                let stack_id = process.symbols.stack_of(event, carried);
                process.ledger.apply(&Event { stack_id, ..*event });
            }
            None => {}
        }
    }

    /// Tells the ledgers the kernel lost events at or before `at_ns`.
    pub fn note_loss(&mut self, at_ns: u64) {
        for process in self.live.values_mut() {
            process.ledger.note_loss(at_ns);
        }
    }

    /// One tick: records each process's outstanding bytes, ends the
    /// processes that are gone without a marker, and ranks the rest by
    /// growth, then by outstanding bytes.
    pub fn tick(&mut self, elapsed_s: f64, clock: ReportClock) -> Vec<Ranked> {
        let gone: Vec<u32> = self
            .live
            .values()
            .filter(|process| !process.still_running())
            .map(|process| process.pid)
            .collect();
        for pid in gone {
            self.end(pid, clock);
        }
        self.names
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        let mut ranked: Vec<Ranked> = self
            .live
            .values_mut()
            .map(|process| {
                let totals = process.ledger.totals();
                process.growth.record(elapsed_s, totals.outstanding_bytes);
                Ranked {
                    pid: process.pid,
                    comm: process.comm.clone(),
                    outstanding_bytes: totals.outstanding_bytes,
                    outstanding_count: totals.outstanding_count,
                    growth_bytes_per_s: process.growth.bytes_per_s(),
                }
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.growth_bytes_per_s
                .total_cmp(&a.growth_bytes_per_s)
                .then(b.outstanding_bytes.cmp(&a.outstanding_bytes))
                .then(a.pid.cmp(&b.pid))
        });
        ranked
    }

    /// The `limit` largest stacks of a live process.
    pub fn top_stacks(&self, pid: u32, now_ns: u64, limit: usize) -> Vec<StackReport> {
        self.live.get(&pid).map_or_else(Vec::new, |process| {
            StackView::of(&process.ledger, now_ns, u64::MAX).largest(&process.symbols, limit)
        })
    }

    /// Outstanding bytes of every live process by age.
    pub fn total_ages(&self, now_ns: u64) -> AgeBuckets {
        let mut total = AgeBuckets::default();
        for process in self.live.values() {
            total.merge(&StackView::of(&process.ledger, now_ns, u64::MAX).total_ages());
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
            add_totals(&mut totals, process.ledger.totals());
        }
        totals
    }

    pub fn counts(&self) -> HostCounts {
        HostCounts {
            tracked_processes: self.live.len(),
            exited_processes: self.exited.count,
            exited_processes_omitted: self.exited.omitted,
        }
    }

    /// Reports of the live processes (as of `clock`) and of the exited
    /// ones kept, largest outstanding bytes first.
    pub fn reports(&self, clock: ReportClock) -> Vec<ProcessReport> {
        let mut reports: Vec<ProcessReport> = self
            .live
            .values()
            .map(|process| process.report(clock))
            .chain(self.exited.kept.iter().cloned())
            .collect();
        reports.sort_by(|a, b| {
            b.totals
                .outstanding_bytes
                .cmp(&a.totals.outstanding_bytes)
                .then(a.pid.cmp(&b.pid))
        });
        reports
    }

    /// The ledger of `pid`, created on its first event.
    fn track(&mut self, pid: u32, elapsed_s: f64) -> &mut Process {
        let names = &mut self.names;
        let shared = &self.shared;
        let max_tracked = self.max_tracked;
        self.live.entry(pid).or_insert_with(|| {
            let name = names.remove(&pid);
            Process::start(pid, name, Rc::clone(shared), max_tracked, elapsed_s)
        })
    }

    /// Ends `pid`'s ledger: keeps its final report (within bounds) and
    /// releases everything else.
    fn end(&mut self, pid: u32, clock: ReportClock) {
        let Some(mut process) = self.live.remove(&pid) else {
            return;
        };
        process.symbols.target_exited();
        let report = process.report(clock);
        self.exited.add(report, process.ledger.totals());
        process.symbols.release();
    }
}

impl Process {
    fn start(
        pid: u32,
        name: Option<String>,
        shared: Rc<SharedSymbols>,
        max_tracked: u64,
        elapsed_s: f64,
    ) -> Self {
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
            named_at_ns: crate::session::monotonic_ns(),
            ppid: stat.map_or(0, |stat| stat.ppid),
            ledger: Ledger::new(max_tracked, None),
            symbols: StackSymbolizer::sharing(pid, shared),
            growth: Growth::new(elapsed_s),
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

    fn report(&self, clock: ReportClock) -> ProcessReport {
        let allocated_before_ns = clock.now_ns.saturating_sub(clock.min_age_ns);
        let view = StackView::of(&self.ledger, clock.now_ns, allocated_before_ns);
        ProcessReport {
            pid: self.pid,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            libc: self.libc(),
            totals: Totals::new(self.ledger.totals(), clock.lost_events),
            age_bytes: view.total_ages(),
            stacks: view.largest(&self.symbols, usize::MAX),
        }
    }

    /// The allocator library the process maps, as it names it.
    fn libc(&self) -> String {
        self.symbols
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
        let mut growth = Growth::new(0.0);
        growth.record(1.0, 1000);
        assert_eq!(growth.bytes_per_s(), 1000.0);
        for (t, bytes) in [(2.0, 1000), (3.0, 1000), (4.0, 1000)] {
            growth.record(t, bytes);
        }
        // The samples before the last GROWTH_TICKS ticks are forgotten.
        assert_eq!(growth.bytes_per_s(), 0.0);
        growth.record(5.0, 400);
        assert_eq!(growth.bytes_per_s(), -200.0);
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
            totals: Totals {
                outstanding_bytes: bytes,
                ..Totals::default()
            },
            age_bytes: Default::default(),
            stacks: Vec::new(),
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
