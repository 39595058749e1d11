//! What host-wide mode writes at the end: the JSON report (every process,
//! in the single-process report's shape), the combined flamegraph and
//! folded stacks with a `comm (pid)` frame under the root, and with
//! `--flamegraph-dir` one flamegraph per process.

use std::path::{Path, PathBuf};

use super::HostSession;
use crate::{
    cli::Outputs,
    report::{
        self, ProcessReport, Report, folded_lines_under, write_atomically, write_flamegraph,
        write_flamegraph_lines,
    },
};

impl HostSession {
    fn final_report(&self) -> Report {
        let clock = self.clock();
        Report {
            version: report::REPORT_VERSION,
            duration_s: self.elapsed_s(),
            min_age_s: self.config.min_age.as_secs_f64(),
            sample_rate_bytes: None,
            totals: self.totals(),
            processes: self.processes.reports(clock),
            suspects: Vec::new(),
            host: Some(self.processes.counts()),
        }
    }

    pub(super) fn write_outputs(&self) -> anyhow::Result<()> {
        if let Some(tables) = &self.tables {
            tables.stats().log();
        }
        let report = self.final_report();
        let outputs = if self.config.default_outputs {
            Outputs::defaults_named("all")
        } else {
            self.config.outputs.clone()
        };
        if let Some(path) = &outputs.report {
            write_atomically(path, |out| report::write_json(&report, out))?;
        }
        let lines = combined_folded_lines(&report.processes);
        if let Some(path) = &outputs.folded {
            write_atomically(path, |out| {
                for line in &lines {
                    writeln!(out, "{line}")?;
                }
                Ok(())
            })?;
        }
        if let Some(path) = &outputs.flamegraph {
            let title = "Outstanding bytes by process and stack (all processes)";
            write_atomically(path, |out| write_flamegraph_lines(&lines, title, out))?;
        }
        if let Some(dir) = &self.spec.flamegraph_dir {
            write_per_process_flamegraphs(dir, &report.processes)?;
        }
        if self.config.default_outputs {
            for path in outputs.paths() {
                eprintln!("alloctrace: wrote {}", path.display());
            }
        }
        Ok(())
    }
}

/// Every process's folded stacks under its `comm (pid)` frame.
fn combined_folded_lines(processes: &[ProcessReport]) -> Vec<String> {
    processes
        .iter()
        .flat_map(|process| folded_lines_under(&process_frame(process), &process.stacks))
        .collect()
}

fn process_frame(process: &ProcessReport) -> String {
    format!("{} ({})", process.comm, process.pid)
}

/// `DIR/COMM-PID.svg` for every process holding outstanding bytes.
fn write_per_process_flamegraphs(dir: &Path, processes: &[ProcessReport]) -> anyhow::Result<()> {
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
            totals: Totals::default(),
            age_bytes: Default::default(),
            stacks,
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
