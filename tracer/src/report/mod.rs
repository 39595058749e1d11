//! Reports: the model of what the tracer found, and the formats it is written
//! in — the JSON report, folded stacks, the flamegraph, the pprof profile,
//! the HTML page (final outputs), the periodic summary and the leak gate's verdict.
//!
//! The model is built from the ledger and frames named through
//! [`NameStacks`] (so it is unit-tested without a symbolizer) and is the only
//! thing the formats see, so each format is a small pure function with its own
//! tests.

mod flamegraph;
mod folded;
mod frame_name;
mod gate;
pub mod html;
mod kernel_counts;
mod pprof;
mod summary;
mod views;

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use serde::Serialize;

pub use flamegraph::{write_differential_flamegraph, write_flamegraph, write_flamegraph_lines};
pub use folded::{folded_line, folded_lines, folded_lines_under};
pub use frame_name::FrameName;
pub use gate::{NamedOffender, gate_failure};
pub use kernel_counts::KernelCounts;
pub use pprof::{PprofInput, PprofStack, write_pprof};
pub use summary::{Summary, SummaryState, bytes, signed_bytes, write_top_stacks};
pub use views::{HeapViews, TickViews, why_suspect};

use crate::{
    analysis::{AgeBuckets, Evidence, Suspect, timeline::TimelineReport},
    armed::ProbeChecks,
    container::Container,
    ledger::{self, Ledger, StackUsage},
    stacks::StackId,
    symbolize::Frame,
    unwind::tables::TableStats,
};

/// Names a stack's frames, leaf first: what the report model needs of the
/// stacks stage and the symbolizer together.
pub trait NameStacks {
    fn frames(&self, stack: StackId) -> Vec<Frame>;
}

/// Format of the periodic summary on stdout (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable block per interval.
    Human,
    /// One JSON object per interval, one per line.
    Json,
}

/// Version of the JSON report's shape; bumped on incompatible changes.
pub const REPORT_VERSION: u32 = 1;

/// The final JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub duration_s: f64,
    /// Allocations younger than this were left out of the stacks.
    pub min_age_s: f64,
    /// `--sample-rate`: when set, every byte and block number is an unbiased
    /// estimate from a sample of the allocations (see `sampling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate_bytes: Option<u64>,
    pub totals: Totals,
    pub processes: Vec<ProcessReport>,
    /// Stacks whose outstanding bytes grow steadily, most suspicious first.
    pub suspects: Vec<SuspectReport>,
    /// Host-wide mode: the processes seen.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostCounts>,
    /// One process's peak, hot spots and temporary allocations (keys
    /// `peak`, `hot_spots`, `temporary_threshold_s`, `temporary_allocs`,
    /// `temporary_bytes`, `temporary`; see [`HeapViews`]). Not in host-wide
    /// mode yet.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub views: Option<HeapViews>,
}

/// How many processes host-wide mode has seen.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HostCounts {
    /// Processes with a live ledger.
    pub tracked_processes: usize,
    /// Processes (or program images replaced by `execve`) whose ledger
    /// ended.
    pub exited_processes: u64,
    /// Of those, the ones not in `processes` (nothing outstanding, or
    /// beyond the number of exited processes kept).
    pub exited_processes_omitted: u64,
    /// Committed mapped memory of the live processes, when it is traced
    /// (`--trace-memory both` or `mapped`): bytes and pieces of mappings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_outstanding_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_outstanding_count: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub libc: String,
    /// The process's cgroup and the container or pod it names; None when
    /// it was gone before `/proc` could be read.
    pub container: Option<Container>,
    pub totals: Totals,
    /// Mapped memory (`--trace-memory both`); its stacks are those of kind
    /// `mmap` below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped: Option<crate::ledger::mapped::MappedTotals>,
    /// Outstanding bytes of the stacks below by age.
    pub age_bytes: AgeBuckets,
    /// Outstanding allocations by stack, largest first.
    pub stacks: Vec<StackReport>,
    /// The process's totals at every tick (bounded, see
    /// `analysis::timeline`) and the top suspects' bytes over the suspects'
    /// history: the HTML report's chart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineReport>,
    /// Host-wide, for live processes: the growth they are ranked by (see
    /// `modes::host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub allocs: u64,
    pub frees: u64,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub lost_events: u64,
    pub preexisting_frees: u64,
    /// Allocations left untracked beyond `--max-tracked` (their later frees
    /// count as `preexisting_frees`).
    pub dropped_allocations: u64,
    pub dropped_bytes: u64,
    /// Bytes of every allocation seen, freed or not.
    pub allocated_bytes: u64,
    /// Distinct stacks held at the end, over every traced process.
    pub stacks: u64,
    /// Stacks evicted beyond `--max-stacks` (holding nothing outstanding);
    /// one that recurred was counted again, as a new stack.
    pub evicted_stacks: u64,
    /// Stacks the in-kernel DWARF unwinder ended at a frame pointer it did
    /// not believe (in code without a table row, where rbp may hold
    /// anything), rather than follow it to garbage frames.
    pub stacks_cut_in_kernel: u64,
    /// Stacks ended here at the first frame past the leaf in no executable
    /// mapping of the process (and not named JIT code): a frame found
    /// through a stale or garbage frame pointer.
    pub stacks_cut_at_unmapped: u64,
    /// The in-kernel DWARF unwinder's tables: memory and fallbacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwind_tables: Option<TableStats>,
    /// The probes' breakpoints looked for in the traced processes' code,
    /// and how many were found missing (see `crate::armed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_checks: Option<ProbeChecks>,
    /// `--kernel`: the stack cache and the runs the kernel skipped.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelCounts>,
}

impl Totals {
    pub fn new(ledger: ledger::Totals, lost_events: u64) -> Self {
        Self {
            allocs: ledger.allocs,
            frees: ledger.frees,
            outstanding_bytes: ledger.outstanding_bytes,
            outstanding_count: ledger.outstanding_count,
            lost_events,
            preexisting_frees: ledger.preexisting_frees,
            dropped_allocations: ledger.dropped_allocations,
            dropped_bytes: ledger.dropped_bytes,
            allocated_bytes: ledger.allocated_bytes,
            stacks: 0,
            evicted_stacks: 0,
            stacks_cut_in_kernel: 0,
            stacks_cut_at_unmapped: 0,
            unwind_tables: None,
            probe_checks: None,
            kernel: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StackReport {
    /// What the bytes are: heap blocks, mapped memory or kernel memory.
    pub kind: StackKind,
    pub bytes: u64,
    pub count: u64,
    pub oldest_age_s: f64,
    /// Events were lost while some of these blocks were live, so some may
    /// have been freed unseen: `bytes` and `count` are upper bounds.
    pub approximate: bool,
    /// The stack's outstanding bytes by age.
    pub age_bytes: AgeBuckets,
    /// Leaf first: the allocator's caller first.
    pub frames: Vec<Frame>,
}

/// What a stack's bytes are.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StackKind {
    /// Blocks of the allocator's malloc family.
    #[default]
    Heap,
    /// Anonymous private mappings made outside the allocator.
    Mmap,
    /// The kernel's own allocations (`--kernel`): slab objects, pages and
    /// per-CPU blocks, by kernel stack.
    Kernel,
}

/// A stack suspected of leaking, with the evidence.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SuspectReport {
    pub pid: u32,
    /// Theil–Sen growth of the stack's outstanding bytes.
    pub growth_bytes_per_s: f64,
    #[serde(flatten)]
    pub stack: StackReport,
    pub evidence: Evidence,
    /// The evidence in a few words, for people.
    pub why: String,
}

/// The ledger by stack at one moment: what ticks, snapshots and the final
/// report are all built from.
pub struct StackView {
    /// Largest first.
    pub usage: Vec<StackUsage>,
    ages: HashMap<StackId, AgeBuckets>,
    pub now_ns: u64,
}

impl StackView {
    /// The ledger at `now_ns`, leaving out blocks allocated after
    /// `allocated_before_ns`.
    pub fn of(ledger: &Ledger, now_ns: u64, allocated_before_ns: u64) -> Self {
        Self {
            usage: ledger.usage_by_stack(allocated_before_ns),
            ages: AgeBuckets::by_stack(ledger.live_blocks(), now_ns, allocated_before_ns),
            now_ns,
        }
    }

    /// The `limit` largest stacks, symbolized.
    pub fn largest(&self, symbols: &impl NameStacks, limit: usize) -> Vec<StackReport> {
        self.usage
            .iter()
            .take(limit)
            .map(|usage| self.stack_report(usage, symbols))
            .collect()
    }

    /// Outstanding bytes of all stacks by age.
    pub fn total_ages(&self) -> AgeBuckets {
        let mut total = AgeBuckets::default();
        self.ages.values().for_each(|ages| total.merge(ages));
        total
    }

    /// The first `limit` of `suspects` (ranked on this view), symbolized.
    pub fn suspects(
        &self,
        suspects: &[Suspect],
        symbols: &impl NameStacks,
        pid: u32,
        limit: usize,
    ) -> Vec<SuspectReport> {
        suspects
            .iter()
            .filter_map(|suspect| {
                let usage = self.usage.iter().find(|u| u.stack == suspect.stack)?;
                Some(SuspectReport {
                    pid,
                    growth_bytes_per_s: suspect.evidence.slope_bytes_per_s,
                    stack: self.stack_report(usage, symbols),
                    evidence: suspect.evidence,
                    why: why_suspect(&suspect.evidence),
                })
            })
            .take(limit)
            .collect()
    }

    fn stack_report(&self, usage: &StackUsage, symbols: &impl NameStacks) -> StackReport {
        StackReport {
            kind: StackKind::Heap,
            bytes: usage.bytes,
            count: usage.count,
            oldest_age_s: self.now_ns.saturating_sub(usage.oldest_ns) as f64 / 1e9,
            approximate: usage.approximate,
            age_bytes: self.ages.get(&usage.stack).copied().unwrap_or_default(),
            frames: symbols.frames(usage.stack),
        }
    }
}

/// Suspects whose bytes over time the report's timeline carries (see
/// `driver::Tracee::timeline`).
pub const TIMELINE_SUSPECTS: usize = 5;

/// Writes `path` through a temporary file in the same directory and a
/// rename, so readers never see a half-written output.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    {
        let mut buffered = std::io::BufWriter::new(file.as_file_mut());
        write(&mut buffered)?;
        buffered.flush()?;
    }
    file.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes the report as pretty JSON.
pub fn write_json(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)?;
    Ok(())
}

/// `DIR/alloctrace-NAME-YYYY-MM-DDTHH-MM-SS.mmmZ.json` (NAME: the pid, or
/// `all`): sorts by time, and has no `:` (awkward in shells and some file
/// systems).
pub fn snapshot_path(dir: &Path, name: &str, at: SystemTime) -> PathBuf {
    let stamp = humantime::format_rfc3339_millis(at)
        .to_string()
        .replace(':', "-");
    dir.join(format!("alloctrace-{name}-{stamp}.json"))
}

/// Deletes all but the newest `keep` snapshots named `name` in `dir`
/// (names sort by time). Files of any other name are never touched.
pub fn prune_snapshots(dir: &Path, name: &str, keep: usize) -> std::io::Result<()> {
    let prefix = format!("alloctrace-{name}-");
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|entry| {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            file_name.ends_with(".json")
                && file_name
                    .strip_prefix(&prefix)
                    .is_some_and(|stamp| stamp.starts_with(|c: char| c.is_ascii_digit()))
                && entry.file_type().is_ok_and(|kind| kind.is_file())
        })
        .map(|entry| entry.path())
        .collect();
    snapshots.sort();
    let excess = snapshots.len().saturating_sub(keep);
    for old in &snapshots[..excess] {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

/// A stack of one block whose frames are named `leaf_first`, for the tests
/// of the formats.
#[cfg(test)]
pub fn test_stack(bytes: u64, leaf_first: &[&str]) -> StackReport {
    StackReport {
        kind: StackKind::Heap,
        bytes,
        count: 1,
        oldest_age_s: 0.0,
        approximate: false,
        age_bytes: Default::default(),
        frames: leaf_first
            .iter()
            .map(|name| Frame {
                address: 0x1000,
                function: Some((*name).to_owned()),
                module: None,
                file: None,
                line: None,
                inlined: false,
                offset: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{Event, EventKind};

    use super::*;
    use crate::ledger::Budget;

    /// Names stack N's one frame `fN`: the report model needs no symbolizer.
    struct Named;

    impl NameStacks for Named {
        fn frames(&self, stack: StackId) -> Vec<Frame> {
            test_stack(0, &[&format!("f{}", stack.get())]).frames
        }
    }

    fn alloc(addr: u64, size: u64, at_s: u64) -> Event {
        Event {
            kind: EventKind::Alloc as u32,
            tid: 1,
            pid: 1,
            stack_id: 0,
            size,
            addr,
            old_addr: 0,
            timestamp_ns: at_s * 1_000_000_000,
            stack_hash: 0,
        }
    }

    #[test]
    fn a_view_lists_the_largest_stacks_first_with_their_names_and_ages() {
        let mut ledger = Ledger::new(Budget::new(u64::MAX), None);
        ledger.apply(&alloc(0x10, 100, 1), StackId::from(1));
        ledger.apply(&alloc(0x20, 300, 5), StackId::from(2));
        ledger.apply(&alloc(0x30, 50, 3), StackId::from(1));
        let view = StackView::of(&ledger, 11_000_000_000, u64::MAX);
        let largest = view.largest(&Named, 10);
        let summary: Vec<(String, u64, u64, f64)> = largest
            .iter()
            .map(|s| (s.frames[0].label(), s.bytes, s.count, s.oldest_age_s))
            .collect();
        assert_eq!(
            summary,
            [
                ("f2".to_owned(), 300, 1, 6.0),
                ("f1".to_owned(), 150, 2, 10.0)
            ]
        );
        assert_eq!(view.largest(&Named, 1).len(), 1);
    }

    #[test]
    fn snapshot_names_sort_by_time_and_avoid_colons() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let path = snapshot_path(Path::new("/snaps"), "42", at);
        assert_eq!(
            path,
            Path::new("/snaps/alloctrace-42-2023-11-14T22-13-20.123Z.json")
        );
    }

    #[test]
    fn pruning_keeps_the_newest_snapshots_of_that_name_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let snapshots: Vec<PathBuf> = (0..5)
            .map(|minute| {
                let at = start + std::time::Duration::from_secs(60 * minute);
                snapshot_path(dir.path(), "all", at)
            })
            .collect();
        let others = [
            "alloctrace-42-2023-11-14T22-13-20.123Z.json",
            "notes.json",
            "alloctrace-all-x.json",
        ];
        for path in snapshots
            .iter()
            .chain(&others.map(|name| dir.path().join(name)))
        {
            std::fs::write(path, "{}").unwrap();
        }
        prune_snapshots(dir.path(), "all", 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = snapshots[3..]
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .chain(others.iter().map(|name| (*name).to_owned()))
            .collect();
        expected.sort();
        assert_eq!(left, expected);
    }
}
