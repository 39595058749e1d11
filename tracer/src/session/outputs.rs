//! What a session writes: the periodic summary (and the metrics and
//! history recorded with it), snapshots, the final outputs, and the leak
//! gate's verdict.

use std::time::SystemTime;

use tracer_ebpf::Counter;

use super::Session;
use crate::{
    analysis::rank_suspects,
    cli::LogFormat,
    metrics::{MetricsSnapshot, SuspectMetric},
    report::{
        self, PprofInput, ProcessReport, Report, StackView, SuspectReport, Totals, write_atomically,
    },
};

impl Session {
    /// One tick: records every stack in the history, then prints the
    /// largest and the most suspicious stacks and publishes the metrics.
    pub(super) fn print_summary(&mut self) {
        let view = StackView::of(&self.ledger, self.now_ns(), u64::MAX);
        let elapsed = self.elapsed_s();
        self.history.record(elapsed, &view.usage);
        let top = view.largest(&self.symbols, self.config.top);
        let suspects = self.suspects(&view, self.config.top);
        let totals = self.totals();
        self.publish_metrics(totals, &view, &suspects);
        let summary = self
            .summaries
            .next(totals, elapsed, top, view.total_ages(), suspects);
        match self.config.log_format {
            LogFormat::Human => print!("{}", summary.to_human()),
            LogFormat::Json => println!("{}", summary.to_json_line()),
        }
    }

    /// The most suspicious stacks of `view`, per the history so far.
    fn suspects(&self, view: &StackView, limit: usize) -> Vec<SuspectReport> {
        let ranked = rank_suspects(&self.history, &view.usage, view.now_ns);
        view.suspects(&ranked, &self.symbols, self.target.pid, limit)
    }

    fn publish_metrics(&self, totals: Totals, view: &StackView, suspects: &[SuspectReport]) {
        let Some(metrics) = &self.metrics else { return };
        metrics.publish(MetricsSnapshot {
            pid: self.target.pid,
            comm: self.target.comm.clone(),
            totals,
            events: self.events,
            age_bytes: view.total_ages(),
            suspects: suspects
                .iter()
                .map(|suspect| SuspectMetric {
                    frame: suspect
                        .stack
                        .frames
                        .first()
                        .map_or_else(|| "[no stack]".to_owned(), |frame| frame.label()),
                    bytes: suspect.stack.bytes,
                    growth_bytes_per_s: suspect.growth_bytes_per_s,
                })
                .collect(),
        });
    }

    /// The report as of now: the final one, and each snapshot.
    pub(super) fn final_report(&self) -> Report {
        let now_ns = self.now_ns();
        let min_age_ns = self.config.min_age.as_nanos() as u64;
        let view = StackView::of(&self.ledger, now_ns, now_ns.saturating_sub(min_age_ns));
        // Suspects are about all blocks, as the history is.
        let suspects = self.suspects(&StackView::of(&self.ledger, now_ns, u64::MAX), usize::MAX);
        let totals = self.totals();
        Report {
            version: report::REPORT_VERSION,
            duration_s: self.elapsed_s(),
            min_age_s: self.config.min_age.as_secs_f64(),
            sample_rate_bytes: self.config.sampling.as_ref().map(|s| s.rate()),
            totals,
            processes: vec![ProcessReport {
                pid: self.target.pid,
                comm: self.target.comm.clone(),
                exe: self.target.exe.display().to_string(),
                libc: self.target.allocator.path.display().to_string(),
                totals,
                age_bytes: view.total_ages(),
                stacks: view.largest(&self.symbols, usize::MAX),
            }],
            suspects,
            host: None,
        }
    }

    /// Writes a timestamped report into the snapshot directory. A failure is
    /// logged, not fatal: tracing matters more than one snapshot.
    pub(super) fn write_snapshot(&mut self) {
        let Some(snapshots) = &self.config.watch.snapshots else {
            return;
        };
        let path = report::snapshot_path(&snapshots.dir, self.target.pid, SystemTime::now());
        let report = self.final_report();
        if let Err(error) = write_atomically(&path, |out| report::write_json(&report, out)) {
            log::warn!("snapshot {}: {error:#}", path.display());
        }
    }

    pub(super) fn take_gate_baseline(&mut self) {
        let usage = self.ledger.usage_by_stack(u64::MAX);
        if let Some(gate) = &mut self.gate {
            gate.take_baseline(&usage);
        }
    }

    /// Judges the leak gate on the ledger as it was when tracing stopped,
    /// printing the offending stacks to stderr.
    /// Returns whether the gate failed.
    pub(super) fn judge_leak_gate(&self) -> anyhow::Result<bool> {
        let Some(gate) = &self.gate else {
            return Ok(false);
        };
        let offenders = gate.judge(&self.ledger.usage_by_stack(u64::MAX))?;
        if offenders.is_empty() {
            return Ok(false);
        }
        let named: Vec<_> = offenders
            .into_iter()
            .map(|offender| (offender, self.symbols.frames(offender.stack)))
            .collect();
        eprint!(
            "{}",
            report::gate_failure(&named, gate.threshold_bytes(), gate.after())
        );
        Ok(true)
    }

    /// The pprof profile's input: every stack that allocated, with its
    /// outstanding numbers as in the report's stacks.
    fn pprof_input(&self, stacks_view: &StackView) -> PprofInput<'_> {
        let outstanding: std::collections::HashMap<_, _> = stacks_view
            .usage
            .iter()
            .map(|usage| (usage.stack, usage))
            .collect();
        let allocated = self.ledger.allocated_by_stack();
        let mut stacks: Vec<_> = allocated.iter().collect();
        stacks.sort_by_key(|(stack, _)| **stack);
        PprofInput {
            pid: self.target.pid,
            comm: self.target.comm.clone(),
            stacks: stacks
                .into_iter()
                .map(|(stack, allocated)| {
                    let usage = outstanding.get(stack);
                    report::PprofStack {
                        frames: self.symbols.frames(*stack),
                        inuse_bytes: usage.map_or(0, |u| u.bytes),
                        inuse_count: usage.map_or(0, |u| u.count),
                        alloc_bytes: allocated.bytes,
                        alloc_count: allocated.count,
                    }
                })
                .collect(),
            mappings: self.symbols.mappings(),
            time_nanos: self
                .wall_started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as i64),
            duration_nanos: self.started.elapsed().as_nanos() as i64,
        }
    }

    pub(super) fn write_outputs(&self) -> anyhow::Result<()> {
        let report = self.final_report();
        let stacks = &report.processes[0].stacks;
        let outputs = &self.outputs;
        if let Some(path) = &outputs.report {
            write_atomically(path, |out| report::write_json(&report, out))?;
        }
        if let Some(path) = &outputs.folded {
            write_atomically(path, |out| report::write_folded(stacks, out))?;
        }
        if let Some(path) = &outputs.pprof {
            let now_ns = self.now_ns();
            let min_age_ns = self.config.min_age.as_nanos() as u64;
            let view = StackView::of(&self.ledger, now_ns, now_ns.saturating_sub(min_age_ns));
            let input = self.pprof_input(&view);
            write_atomically(path, |out| report::write_pprof(&input, out))?;
        }
        if let Some(path) = &outputs.flamegraph {
            let title = format!(
                "Outstanding bytes by stack: {} (pid {})",
                self.target.comm, self.target.pid
            );
            write_atomically(path, |out| report::write_flamegraph(stacks, &title, out))?;
        }
        if self.config.default_outputs {
            for path in outputs.paths() {
                eprintln!("alloctrace: wrote {}", path.display());
            }
        }
        log::debug!(
            "kernel counters: lost {}, stack errors {}, returns without entry {}, stale entries {}, \
             nested frees {}, map errors {}; ledger overwrites {}",
            self.counters.get(Counter::LostEvents),
            self.counters.get(Counter::StackErrors),
            self.counters.get(Counter::ReturnsWithoutEntry),
            self.counters.get(Counter::StaleEntries),
            self.counters.get(Counter::NestedFrees),
            self.counters.get(Counter::MapErrors),
            self.ledger.overwritten()
        );
        if let Some(tables) = &self.tables {
            tables.stats().log();
        }
        let stack_errors = self.counters.get(Counter::StackErrors);
        if stack_errors > 0 {
            log::warn!("{stack_errors} allocations had no stack (user stack unreadable)");
        }
        Ok(())
    }
}
