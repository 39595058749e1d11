//! What host-wide mode keeps per process, counted at every tick (the JSON
//! tick's `per_pid` key). Each count follows the processes alive now, or
//! has a fixed bound, so hours of short-lived processes leave nothing
//! behind (`tests/bounded.rs` checks them after thousands).

use serde::Serialize;

/// Sizes of the per-process structures at one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerPid {
    /// Live processes with a ledger, each with its stack table, history
    /// and symbolizer.
    pub ledgers: usize,
    /// Names from exec markers of processes without a ledger yet.
    pub names: usize,
    /// Growth histories, one per live process.
    pub growth_histories: usize,
    /// Processes whose allocator libraries were looked up (pruned of the
    /// gone ones at each scan).
    pub library_scans: usize,
    /// Processes whose DWARF tables are in the kernel's maps.
    pub unwind_tables: u64,
    /// Final reports of exited processes kept (at most 1000).
    pub exited_reports: usize,
    /// Distinct stacks, over every live process's table.
    pub stacks: u64,
}
