//! What one-process mode writes besides the common outputs: the metrics it
//! publishes each tick, the leak gate's baseline and verdict, and the pprof
//! profile.

use std::collections::HashMap;

use super::ProcessMode;
use crate::{
    driver::Now,
    metrics::{MetricsSnapshot, ProcessMetrics, SuspectMetric, bounded_stacks},
    report::{self, PprofInput, StackView, SuspectReport, Totals, write_atomically},
};

impl ProcessMode {
    pub(super) fn publish_metrics(
        &self,
        totals: Totals,
        view: &StackView,
        suspects: &[SuspectReport],
    ) {
        let Some(metrics) = &self.metrics else { return };
        let largest = self.tracee.largest(view, self.common.top);
        metrics.publish(MetricsSnapshot {
            events: None,
            processes: vec![ProcessMetrics {
                pid: self.target.pid,
                comm: self.target.comm.clone(),
                container: self.container.clone(),
                totals,
                events: Some(self.events),
                age_bytes: view.total_ages(),
                suspects: suspects.iter().map(SuspectMetric::from).collect(),
                stacks: bounded_stacks(&largest, self.common.top, totals.outstanding_bytes),
                mapped: self.tracee.mapped_metrics(view.now_ns, self.common.top),
            }],
        });
    }

    pub(super) fn take_gate_baseline(&mut self) {
        if let Some(gate) = &mut self.gate {
            self.tracee.take_gate_baseline(gate);
        }
    }

    /// Judges the leak gate (see `Tracee::judge_gate`); returns whether
    /// it failed.
    pub(super) fn judge_leak_gate(&self) -> anyhow::Result<bool> {
        match &self.gate {
            Some(gate) => self.tracee.judge_gate(gate),
            None => Ok(false),
        }
    }

    /// `--pprof`: every stack that allocated, with its outstanding numbers
    /// as in the report's stacks.
    pub(super) fn write_pprof(&self, now: &Now) -> anyhow::Result<()> {
        let Some(path) = &self.config.pprof else {
            return Ok(());
        };
        let view = StackView::of(&self.tracee.ledger, now.now_ns, now.allocated_before_ns());
        let input = self.pprof_input(&view);
        write_atomically(path, |out| report::write_pprof(&input, out))
    }

    fn pprof_input(&self, view: &StackView) -> PprofInput<'_> {
        let outstanding: HashMap<_, _> = view
            .usage
            .iter()
            .map(|usage| (usage.stack, usage))
            .collect();
        let allocated = self.tracee.ledger.allocated_by_stack();
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
                        frames: report::NameStacks::frames(&self.tracee, *stack),
                        inuse_bytes: usage.map_or(0, |u| u.bytes),
                        inuse_count: usage.map_or(0, |u| u.count),
                        alloc_bytes: allocated.bytes,
                        alloc_count: allocated.count,
                    }
                })
                .collect(),
            mappings: self.tracee.symbols.mappings(),
            time_nanos: self
                .wall_started
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as i64),
            duration_nanos: self.started.elapsed().as_nanos() as i64,
        }
    }
}
