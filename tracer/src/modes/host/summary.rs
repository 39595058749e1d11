//! Host-wide mode's periodic summary: the host's totals, then the traced
//! processes ranked by how fast their outstanding bytes grew over the last
//! ticks, with the largest stacks of the first few.

use std::fmt::Write as _;

use serde::Serialize;

use super::processes::Ranked;
use crate::{
    driver::TickLine,
    report::{HostCounts, StackReport, Summary, bytes, signed_bytes, write_top_stacks},
};

/// Processes whose stacks a human summary shows.
const PROCESSES_WITH_STACKS: usize = 3;

/// One tick. JSON key names are a public interface: the single-process
/// tick's keys (with the host's totals, its largest stacks and its
/// suspects, each naming its pid), the process counts, and the ranked
/// `processes`.
#[derive(Debug, Serialize)]
pub struct HostTick {
    #[serde(flatten)]
    pub summary: Summary,
    #[serde(flatten)]
    pub counts: HostCounts,
    /// The fastest-growing processes, fastest first.
    pub processes: Vec<ProcessTick>,
}

/// One ranked process of a tick.
#[derive(Debug, Serialize)]
pub struct ProcessTick {
    pub pid: u32,
    pub comm: String,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    /// Change of its outstanding bytes per second over the last ticks.
    pub growth_bytes_per_s: f64,
    /// Its largest outstanding stacks.
    pub top: Vec<StackReport>,
}

impl ProcessTick {
    pub fn new(ranked: Ranked, top: Vec<StackReport>) -> Self {
        Self {
            pid: ranked.pid,
            comm: ranked.comm,
            outstanding_bytes: ranked.outstanding_bytes,
            outstanding_count: ranked.outstanding_count,
            growth_bytes_per_s: ranked.growth_bytes_per_s,
            top,
        }
    }
}

impl TickLine for HostTick {
    fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }

    fn to_human(&self) -> String {
        let mut text = self.summary.headline();
        let _ = writeln!(
            text,
            "  processes: {} traced, {} exited",
            self.counts.tracked_processes, self.counts.exited_processes
        );
        for (rank, process) in self.processes.iter().enumerate() {
            let _ = writeln!(
                text,
                "  #{} {} (pid {}): {} in {} blocks, {}/s",
                rank + 1,
                process.comm,
                process.pid,
                bytes(process.outstanding_bytes),
                process.outstanding_count,
                signed_bytes(process.growth_bytes_per_s.round() as i64),
            );
            if rank < PROCESSES_WITH_STACKS {
                write_top_stacks(&mut text, "      ", &process.top);
            }
        }
        self.summary.write_suspects(&mut text);
        text
    }
}
