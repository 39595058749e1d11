//! Reports: the model of what the tracer found, and the formats it is written
//! in — the JSON report, folded stacks, the flamegraph (final outputs) and the
//! periodic summary.
//!
//! The model is built from the ledger and the symbolizer and is the only
//! thing the formats see, so each format is a small pure function with its own
//! tests.

mod flamegraph;
mod folded;
mod summary;

use std::{io::Write, path::Path};

use anyhow::Context as _;
use serde::Serialize;

pub use flamegraph::write_flamegraph;
pub use folded::write_folded;
pub use summary::SummaryState;

use crate::{
    ledger::{self, StackUsage},
    symbolize::{Frame, StackSymbolizer},
};

/// Version of the JSON report's shape; bumped on incompatible changes.
pub const REPORT_VERSION: u32 = 1;

/// The final JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub duration_s: f64,
    /// Allocations younger than this were left out of the stacks.
    pub min_age_s: f64,
    pub totals: Totals,
    pub processes: Vec<ProcessReport>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub libc: String,
    pub totals: Totals,
    /// Outstanding allocations by stack, largest first.
    pub stacks: Vec<StackReport>,
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
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StackReport {
    pub bytes: u64,
    pub count: u64,
    pub oldest_age_s: f64,
    /// Events were lost while some of these blocks were live, so some may
    /// have been freed unseen: `bytes` and `count` are upper bounds.
    pub approximate: bool,
    /// Leaf first: the allocator's caller first.
    pub frames: Vec<Frame>,
}

impl StackReport {
    /// Symbolized stacks for `usage`, ages measured at `now_ns`.
    pub fn from_usage(usage: &[StackUsage], symbols: &StackSymbolizer, now_ns: u64) -> Vec<Self> {
        usage
            .iter()
            .map(|usage| Self {
                bytes: usage.bytes,
                count: usage.count,
                oldest_age_s: now_ns.saturating_sub(usage.oldest_ns) as f64 / 1e9,
                approximate: usage.approximate,
                frames: symbols.frames(usage.stack),
            })
            .collect()
    }
}

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
