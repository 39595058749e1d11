//! Host-wide mode's periodic summary: the host's totals, then the traced
//! processes ranked by how fast their outstanding bytes grew over the last
//! ticks, with the largest stacks of the first few.

use std::fmt::Write as _;

use serde::Serialize;

use super::{processes::Ranked, residue::PerPid};
use crate::{
    container::Container,
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
    /// What is kept per process, counted.
    pub per_pid: PerPid,
}

/// One ranked process of a tick: its ranking line (`pid`, `comm`,
/// outstanding bytes and blocks, `growth_bytes_per_s`, `container`) and its
/// largest outstanding stacks.
#[derive(Debug, Serialize)]
pub struct ProcessTick {
    #[serde(flatten)]
    pub process: Ranked,
    pub top: Vec<StackReport>,
}

impl ProcessTick {
    pub fn new(process: Ranked, top: Vec<StackReport>) -> Self {
        Self { process, top }
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
            "  processes: {} traced, {} exited{}",
            self.counts.tracked_processes,
            self.counts.exited_processes,
            mapped_part(
                self.counts.mapped_outstanding_bytes,
                self.counts.mapped_outstanding_count
            ),
        );
        for (rank, ProcessTick { process, top }) in self.processes.iter().enumerate() {
            let _ = writeln!(
                text,
                "  #{} {} (pid {}{}): {} in {} blocks{}, {}/s",
                rank + 1,
                process.comm,
                process.pid,
                process
                    .container
                    .as_ref()
                    .map_or_else(String::new, in_container),
                bytes(process.outstanding_bytes),
                process.outstanding_count,
                mapped_part(process.mapped_bytes, process.mapped_count),
                signed_bytes(process.growth_bytes_per_s.round() as i64),
            );
            if rank < PROCESSES_WITH_STACKS {
                write_top_stacks(&mut text, "      ", top);
            }
        }
        self.summary.write_suspects(&mut text);
        text
    }
}

/// `, mapped 2.5 MiB in 12 mappings` when mapped memory is traced.
fn mapped_part(bytes_held: Option<u64>, count: Option<u64>) -> String {
    match (bytes_held, count) {
        (Some(held), Some(count)) => format!(", mapped {} in {count} mappings", bytes(held)),
        _ => String::new(),
    }
}

/// `, container 4c2e5a9b1f3d` (the short id `docker ps` shows), and the pod
/// when there is one.
fn in_container(container: &Container) -> String {
    let mut text = String::new();
    if let Some(id) = &container.id {
        let _ = write!(text, ", container {}", &id[..12]);
    }
    if let Some(pod) = &container.pod_uid {
        let _ = write!(text, ", pod {pod}");
    }
    text
}
