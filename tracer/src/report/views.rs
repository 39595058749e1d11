//! heaptrack's views of a run, for the JSON report and the summaries: the
//! peak of outstanding memory and the stacks that held it, allocation hot
//! spots (everything each stack allocated, freed or not, with rates), and
//! temporary allocations (blocks freed within
//! [`crate::ledger::TEMPORARY_NS`] of their allocation); and the few words
//! that say why a suspect is one.
//!
//! All of it comes from the ledger's per-stack counters, so it costs one
//! entry per stack, never per event.

use serde::Serialize;

use super::summary::{bytes, signed_bytes};
use crate::{
    analysis::Evidence,
    ledger::{Allocated, Ledger, Peak, StackId, TEMPORARY_NS},
    symbolize::Frame,
};

use super::NameStacks;

/// The views of one process. JSON key names are a public interface.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HeapViews {
    /// The largest outstanding total since tracing began.
    pub peak: PeakReport,
    /// Every stack that allocated, by bytes allocated (freed or not),
    /// largest first.
    pub hot_spots: Vec<HotSpot>,
    /// A block freed within this many seconds of its allocation (by `free`)
    /// is a temporary allocation.
    pub temporary_threshold_s: f64,
    /// Temporary allocations of all stacks.
    pub temporary_allocs: u64,
    pub temporary_bytes: u64,
    /// The stacks with temporary allocations, most first (the same entries
    /// as in `hot_spots`).
    pub temporary: Vec<HotSpot>,
}

/// The peak of outstanding memory.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeakReport {
    pub pid: u32,
    /// Outstanding bytes and blocks at the peak.
    pub bytes: u64,
    pub count: u64,
    /// When it was reached, in seconds since tracing began.
    pub at_s: f64,
    /// Every stack that held bytes at the peak, largest first; their bytes
    /// add up to `bytes`.
    pub stacks: Vec<PeakStack>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeakStack {
    /// Outstanding bytes of this stack at the peak.
    pub bytes: u64,
    /// Leaf first, as in the report's stacks.
    pub frames: Vec<Frame>,
}

/// What one stack allocated over the run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HotSpot {
    pub pid: u32,
    /// Allocator calls that returned a block (reallocs included).
    pub allocs: u64,
    pub allocated_bytes: u64,
    /// Over the whole run (`duration_s`).
    pub allocs_per_s: f64,
    pub allocated_bytes_per_s: f64,
    pub temporary_allocs: u64,
    pub temporary_bytes: u64,
    pub frames: Vec<Frame>,
}

impl HeapViews {
    /// The views of `ledger` after `duration_s` of tracing, `now_ns` being
    /// the end of those seconds on the events' clock.
    pub fn of(
        ledger: &Ledger,
        symbols: &impl NameStacks,
        pid: u32,
        duration_s: f64,
        now_ns: u64,
    ) -> Self {
        let peak = ledger.peak();
        let mut hot_spots: Vec<HotSpot> = ledger
            .allocated_by_stack()
            .into_iter()
            .map(|(stack, allocated)| hot_spot(symbols, pid, stack, allocated, duration_s))
            .collect();
        hot_spots.sort_by(|a, b| {
            b.allocated_bytes
                .cmp(&a.allocated_bytes)
                .then(b.allocs.cmp(&a.allocs))
        });
        let mut temporary: Vec<HotSpot> = hot_spots
            .iter()
            .filter(|spot| spot.temporary_allocs > 0)
            .cloned()
            .collect();
        temporary.sort_by(|a, b| {
            b.temporary_allocs
                .cmp(&a.temporary_allocs)
                .then(b.temporary_bytes.cmp(&a.temporary_bytes))
        });
        Self {
            peak: PeakReport {
                pid,
                bytes: peak.bytes,
                count: peak.count,
                at_s: peak_at_s(peak, duration_s, now_ns),
                stacks: ledger
                    .stacks_at_peak()
                    .into_iter()
                    .map(|(stack, bytes)| PeakStack {
                        bytes,
                        frames: symbols.frames(stack),
                    })
                    .collect(),
            },
            temporary_threshold_s: TEMPORARY_NS as f64 / 1e9,
            temporary_allocs: temporary.iter().map(|spot| spot.temporary_allocs).sum(),
            temporary_bytes: temporary.iter().map(|spot| spot.temporary_bytes).sum(),
            hot_spots,
            temporary,
        }
    }
}

/// The views in a tick: the numbers, not the stacks (those are in the
/// report). JSON key names are a public interface.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TickViews {
    pub peak_bytes: u64,
    /// Seconds since tracing began.
    pub peak_at_s: f64,
    /// Allocations since tracing began that were temporary.
    pub temporary_allocs: u64,
    /// The stack that allocated the most bytes since tracing began.
    pub hot_spot: Option<HotSpot>,
}

impl TickViews {
    /// The tick's share of [`HeapViews::of`]: only the top hot spot is
    /// named (symbolizing every stack each tick would cost too much).
    pub fn of(
        ledger: &Ledger,
        symbols: &impl NameStacks,
        pid: u32,
        duration_s: f64,
        now_ns: u64,
    ) -> Self {
        let allocated = ledger.allocated_by_stack();
        let hot_spot = allocated
            .iter()
            .max_by(|a, b| a.1.bytes.cmp(&b.1.bytes).then(b.0.cmp(a.0)))
            .map(|(&stack, &allocated)| hot_spot(symbols, pid, stack, allocated, duration_s));
        Self {
            peak_bytes: ledger.peak().bytes,
            peak_at_s: peak_at_s(ledger.peak(), duration_s, now_ns),
            temporary_allocs: allocated.values().map(|a| a.temporary_count).sum(),
            hot_spot,
        }
    }
}

/// Seconds since tracing began of the peak, from the end of `duration_s`
/// at `now_ns`.
fn peak_at_s(peak: Peak, duration_s: f64, now_ns: u64) -> f64 {
    if peak.at_ns == 0 {
        return 0.0;
    }
    (duration_s - now_ns.saturating_sub(peak.at_ns) as f64 / 1e9).max(0.0)
}

fn hot_spot(
    symbols: &impl NameStacks,
    pid: u32,
    stack: StackId,
    allocated: Allocated,
    duration_s: f64,
) -> HotSpot {
    let per_s = |n: u64| n as f64 / duration_s.max(1e-9);
    HotSpot {
        pid,
        allocs: allocated.count,
        allocated_bytes: allocated.bytes,
        allocs_per_s: per_s(allocated.count),
        allocated_bytes_per_s: per_s(allocated.bytes),
        temporary_allocs: allocated.temporary_count,
        temporary_bytes: allocated.temporary_bytes,
        frames: symbols.frames(stack),
    }
}

/// A suspect's evidence in a few words: how it grows and what sets it apart
/// from a cache or a pool.
pub fn why_suspect(evidence: &Evidence) -> String {
    let mut why = format!(
        "grows {}/s steadily (R² {:.2}), keeps {:.0}% of what it allocated, {:.0}% of its bytes from \
         the older half of the window",
        signed_bytes(evidence.net_slope_bytes_per_s.round() as i64),
        evidence.r_squared,
        100.0 * evidence.retained_fraction,
        100.0 * evidence.old_bytes_fraction,
    );
    if evidence.site_stacks > 1 {
        why.push_str(&format!(
            ", its site ({} stacks) grows {}/s",
            evidence.site_stacks,
            bytes(evidence.site_slope_bytes_per_s.max(0.0).round() as u64)
        ));
    }
    if evidence.replaced_fraction > 0.0 {
        why.push_str(&format!(
            ", {:.0}% of its allocations replaced blocks from before tracing",
            100.0 * evidence.replaced_fraction
        ));
    }
    if evidence.late_growth_ratio < 0.75 {
        why.push_str(&format!(
            ", slowing ({:.0}% of its earlier pace)",
            100.0 * evidence.late_growth_ratio
        ));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_growth_retention_age_and_site() {
        let evidence = Evidence {
            slope_bytes_per_s: 81920.0,
            r_squared: 0.99,
            ticks: 10,
            window_s: 9.0,
            increasing_steps: 9,
            decreasing_steps: 0,
            retention: 1.0,
            score: 80000.0,
            retained_fraction: 0.98,
            old_bytes_fraction: 0.5,
            late_growth_ratio: 0.5,
            site_stacks: 2,
            site_slope_bytes_per_s: 90000.0,
            replaced_fraction: 0.0,
            net_slope_bytes_per_s: 81920.0,
        };
        assert_eq!(
            why_suspect(&evidence),
            "grows +80.0 KiB/s steadily (R² 0.99), keeps 98% of what it allocated, 50% of its bytes \
             from the older half of the window, its site (2 stacks) grows 87.9 KiB/s, slowing (50% \
             of its earlier pace)"
        );
    }
}
