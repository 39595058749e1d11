//! What host-wide mode writes: the JSON report (every process, in the
//! single-process report's shape), the combined flamegraph and folded
//! stacks with a `comm (pid)` frame under the root, and with
//! `--flamegraph-dir` one flamegraph per process.

use std::path::{Path, PathBuf};

use super::HostMode;
use crate::{
    driver::Now,
    report::{
        self, ProcessReport, Report, Totals, folded_lines_under, write_atomically, write_flamegraph,
    },
};

impl HostMode {
    pub(super) fn final_report(&self, now: &Now, totals: Totals) -> Report {
        Report {
            version: report::REPORT_VERSION,
            duration_s: now.elapsed_s,
            min_age_s: self.common.min_age.as_secs_f64(),
            sample_rate_bytes: None,
            totals,
            processes: self.processes.reports(now),
            suspects: self.processes.suspects(now.now_ns, usize::MAX),
            host: Some(self.processes.counts()),
            views: None,
        }
    }
}

/// Every process's folded stacks under its `comm (pid)` frame.
pub(super) fn combined_folded_lines(processes: &[ProcessReport]) -> Vec<String> {
    processes
        .iter()
        .flat_map(|process| folded_lines_under(&process_frame(process), &process.stacks))
        .collect()
}

fn process_frame(process: &ProcessReport) -> String {
    format!("{} ({})", process.comm, process.pid)
}

/// `DIR/COMM-PID.svg` for every process holding outstanding bytes.
pub(super) fn write_per_process_flamegraphs(
    dir: &Path,
    processes: &[ProcessReport],
) -> anyhow::Result<()> {
    for process in processes.iter().filter(|p| !p.stacks.is_empty()) {
        let title = format!(
            "Outstanding bytes by stack: {} (pid {})",
            process.comm, process.pid
        );
        let path = per_process_path(dir, process);
        write_atomically(&path, |out| write_flamegraph(&process.stacks, &title, out))?;
    }
    Ok(())
}

/// `COMM-PID.svg`, with characters a file name cannot hold replaced.
fn per_process_path(dir: &Path, process: &ProcessReport) -> PathBuf {
    let comm: String = process
        .comm
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    dir.join(format!("{comm}-{}.svg", process.pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{StackReport, Totals, test_stack};

    fn process(pid: u32, comm: &str, stacks: Vec<StackReport>) -> ProcessReport {
        ProcessReport {
            pid,
            comm: comm.into(),
            exe: String::new(),
            libc: String::new(),
            container: None,
            totals: Totals::default(),
            mapped: None,
            age_bytes: Default::default(),
            stacks,
            timeline: None,
            growth_bytes_per_s: None,
        }
    }

    fn stack(bytes: u64, function: &str) -> StackReport {
        test_stack(bytes, &[function])
    }

    #[test]
    fn the_first_frame_under_the_root_is_the_process() {
        let processes = [
            process(7, "web server", vec![stack(100, "leak")]),
            process(9, "db", vec![stack(50, "cache"), stack(5, "buf")]),
        ];
        assert_eq!(
            combined_folded_lines(&processes),
            ["web server (7);leak 100", "db (9);cache 50", "db (9);buf 5"]
        );
    }

    #[test]
    fn per_process_files_are_named_comm_pid() {
        let dir = Path::new("/out");
        assert_eq!(
            per_process_path(dir, &process(7, "kworker/0:1", vec![])),
            Path::new("/out/kworker_0:1-7.svg")
        );
    }
}
