//! The periodic summary: one tick per interval, as readable lines or as one
//! JSON object per line for log pipelines.

use std::{fmt::Write as _, time::SystemTime};

use serde::Serialize;

use super::{KernelCounts, StackKind, StackReport, SuspectReport, TickViews, Totals};
use crate::{
    analysis::AgeBuckets,
    symbolize::{Frame, TASK_MODULE},
};

/// One interval's summary. JSON key names are a public interface.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Wall-clock time of the tick (RFC 3339).
    pub ts: String,
    /// Seconds since tracing began.
    pub elapsed_s: f64,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    /// Change of the outstanding totals since the previous tick.
    pub growth_bytes: i64,
    pub growth_count: i64,
    /// Totals since tracing began.
    pub allocs: u64,
    pub frees: u64,
    /// Rates over the last interval.
    pub allocs_per_s: f64,
    pub frees_per_s: f64,
    pub lost_events: u64,
    pub preexisting_frees: u64,
    pub dropped_allocations: u64,
    /// Stacks evicted since tracing began (`--max-stacks`).
    pub evicted_stacks: u64,
    /// `--kernel`: the stack cache and the runs the kernel skipped.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelCounts>,
    /// Largest outstanding stacks.
    pub top: Vec<StackReport>,
    /// Outstanding bytes of all stacks by age.
    pub age_bytes: AgeBuckets,
    /// Stacks growing steadily, most suspicious first.
    pub suspects: Vec<SuspectReport>,
    /// The peak so far and the temporary allocations (keys `peak_bytes`,
    /// `peak_at_s`, `temporary_allocs`); not in host-wide mode yet.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub views: Option<TickViews>,
}

/// What a tick needs to remember of the previous one.
#[derive(Debug, Default)]
pub struct SummaryState {
    previous: Totals,
    previous_elapsed_s: f64,
}

impl SummaryState {
    pub fn next(
        &mut self,
        totals: Totals,
        elapsed_s: f64,
        top: Vec<StackReport>,
        age_bytes: AgeBuckets,
        suspects: Vec<SuspectReport>,
    ) -> Summary {
        let interval = (elapsed_s - self.previous_elapsed_s).max(1e-9);
        let previous = std::mem::replace(&mut self.previous, totals);
        self.previous_elapsed_s = elapsed_s;
        Summary {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            elapsed_s,
            outstanding_bytes: totals.outstanding_bytes,
            outstanding_count: totals.outstanding_count,
            growth_bytes: totals.outstanding_bytes as i64 - previous.outstanding_bytes as i64,
            growth_count: totals.outstanding_count as i64 - previous.outstanding_count as i64,
            allocs: totals.allocs,
            frees: totals.frees,
            allocs_per_s: (totals.allocs - previous.allocs) as f64 / interval,
            frees_per_s: (totals.frees - previous.frees) as f64 / interval,
            lost_events: totals.lost_events,
            preexisting_frees: totals.preexisting_frees,
            dropped_allocations: totals.dropped_allocations,
            evicted_stacks: totals.evicted_stacks,
            kernel: totals.kernel,
            top,
            age_bytes,
            suspects,
            views: None,
        }
    }
}

/// Frames of a stack shown in a human summary line.
const FRAMES_SHOWN: usize = 3;

impl Summary {
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }

    pub fn to_human(&self) -> String {
        let mut text = self.headline();
        self.write_stacks(&mut text);
        text
    }

    /// The totals line and the ages line.
    pub fn headline(&self) -> String {
        let mut text = format!(
            "{} outstanding {} in {} blocks ({}, {:+} blocks) | {:.0} allocs/s {:.0} frees/s | lost {}{}{}{}\n",
            self.ts,
            bytes(self.outstanding_bytes),
            self.outstanding_count,
            signed_bytes(self.growth_bytes),
            self.growth_count,
            self.allocs_per_s,
            self.frees_per_s,
            self.lost_events,
            if self.dropped_allocations > 0 {
                format!(" | dropped {} (--max-tracked)", self.dropped_allocations)
            } else {
                String::new()
            },
            if self.evicted_stacks > 0 {
                format!(" | evicted {} stacks (--max-stacks)", self.evicted_stacks)
            } else {
                String::new()
            },
            self.kernel
                .as_ref()
                .map(KernelCounts::headline)
                .unwrap_or_default(),
        );
        let ages: Vec<String> = self
            .age_bytes
            .labelled()
            .iter()
            .map(|(label, count)| format!("{label} {}", bytes(*count)))
            .collect();
        let _ = writeln!(text, "  by age: {}", ages.join(", "));
        if let Some(views) = &self.views {
            let _ = writeln!(
                text,
                "  peak {} at {:.1}s | temporary {} of {} allocs ({:.0}%)",
                bytes(views.peak_bytes),
                views.peak_at_s,
                views.temporary_allocs,
                self.allocs,
                100.0 * views.temporary_allocs as f64 / self.allocs.max(1) as f64
            );
            if let Some(hot) = &views.hot_spot {
                let _ = writeln!(
                    text,
                    "  hot spot {} in {} allocs ({}/s): {}",
                    bytes(hot.allocated_bytes),
                    hot.allocs,
                    bytes(hot.allocated_bytes_per_s.round() as u64),
                    describe_frames(&hot.frames)
                );
            }
        }
        text
    }

    fn write_stacks(&self, text: &mut String) {
        write_top_stacks(text, "  ", &self.top);
        self.write_suspects(text);
    }

    /// One line per suspect, most suspicious first.
    pub fn write_suspects(&self, text: &mut String) {
        for (rank, suspect) in self.suspects.iter().enumerate() {
            let _ = writeln!(
                text,
                "  suspect #{} {}/s over {} ticks (R² {:.2}), {} in {} blocks, oldest {:.0}s: {}",
                rank + 1,
                signed_bytes(suspect.growth_bytes_per_s.round() as i64),
                suspect.evidence.ticks,
                suspect.evidence.r_squared,
                bytes(suspect.stack.bytes),
                suspect.stack.count,
                suspect.stack.oldest_age_s,
                describe_frames(&suspect.stack.frames),
            );
            let _ = writeln!(text, "    why: {}", suspect.why);
        }
    }
}

/// One line per stack, ranked, each starting with `indent`.
pub fn write_top_stacks(text: &mut String, indent: &str, top: &[StackReport]) {
    for (rank, stack) in top.iter().enumerate() {
        let _ = writeln!(
            text,
            "{indent}#{} {}{}{} in {} {}, oldest {:.0}s{}: {}",
            rank + 1,
            match stack.kind {
                StackKind::Heap => "",
                StackKind::Mmap => "[mmap] ",
                StackKind::Kernel => "[kernel] ",
            },
            // Events were lost while these blocks were live: at most.
            if stack.approximate { "<=" } else { "" },
            bytes(stack.bytes),
            stack.count,
            match stack.kind {
                StackKind::Heap | StackKind::Kernel => "blocks",
                StackKind::Mmap => "mappings",
            },
            stack.oldest_age_s,
            task_of(&stack.frames).map_or(String::new(), |task| format!(", by {task}")),
            describe_frames(&stack.frames),
        );
    }
}

/// The task a kernel stack's last frame names (see `symbolize::TASK_MODULE`).
fn task_of(frames: &[Frame]) -> Option<&str> {
    let last = frames.last()?;
    if last.module.as_deref() == Some(TASK_MODULE) {
        last.function.as_deref()
    } else {
        None
    }
}

/// The first frames of a stack on one line: `leaf (file:line) < caller ...`.
pub fn describe_frames(frames: &[Frame]) -> String {
    if frames.is_empty() {
        return "[no stack]".to_owned();
    }
    let shown: Vec<String> = frames
        .iter()
        .take(FRAMES_SHOWN)
        .map(|frame| match frame.location() {
            Some(location) => format!("{} ({location})", frame.display_name()),
            None => frame.display_name(),
        })
        .collect();
    shown.join(" < ")
}

/// Bytes in binary units, e.g. `1.5 MiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn signed_bytes(delta: i64) -> String {
    let sign = if delta < 0 { '-' } else { '+' };
    format!("{sign}{}", bytes(delta.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(allocs: u64, frees: u64, bytes: u64) -> Totals {
        Totals {
            allocs,
            frees,
            outstanding_bytes: bytes,
            outstanding_count: allocs - frees,
            ..Totals::default()
        }
    }

    #[test]
    fn ticks_report_growth_and_rates_since_the_previous_tick() {
        let mut state = SummaryState::default();
        let first = state.next(
            totals(100, 40, 6000),
            10.0,
            vec![],
            AgeBuckets::default(),
            vec![],
        );
        assert_eq!((first.growth_bytes, first.growth_count), (6000, 60));
        let second = state.next(
            totals(300, 290, 1000),
            20.0,
            vec![],
            AgeBuckets::default(),
            vec![],
        );
        assert_eq!((second.growth_bytes, second.growth_count), (-5000, -50));
        assert_eq!((second.allocs_per_s, second.frees_per_s), (20.0, 25.0));
        assert_eq!((second.allocs, second.frees), (300, 290));
    }

    #[test]
    fn json_ticks_are_one_line_with_the_documented_keys() {
        let summary = SummaryState::default().next(
            totals(1, 0, 8),
            1.0,
            vec![],
            AgeBuckets::default(),
            vec![],
        );
        let line = summary.to_json_line();
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "ts",
            "outstanding_bytes",
            "outstanding_count",
            "allocs",
            "frees",
            "lost_events",
            "top",
            "age_bytes",
            "suspects",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
    }
}
