//! Ranking leak suspects: stacks whose outstanding bytes grow steadily, as
//! opposed to stacks that churn at a plateau (caches) or rise and fall
//! (pools).
//!
//! Over a stack's kept ticks ([`super::History`]):
//! * the growth rate is the Theil–Sen slope (median of the slopes between
//!   every pair of ticks), which a burst or a single drop cannot swing the way
//!   it swings a least-squares slope; a cache that filled once and then
//!   plateaued has a median slope of zero;
//! * the fit quality is the R² of the least-squares line: a staircase leak
//!   fits a line well, a sawtooth pool does not;
//! * few steps may go down (a leak never gives memory back);
//! * old allocations must still be alive: the retention is the age of the
//!   stack's oldest outstanding block over the window, capped at 1. A pool
//!   or a cache that recycles keeps its blocks young.
//!
//! A stack qualifies with at least [`MIN_TICKS`] ticks, a positive slope,
//! R² ≥ [`MIN_R_SQUARED`] and at most [`MAX_DECREASING_FRACTION`] of its steps
//! down; qualifying stacks rank by score = slope × R² × retention × (1 −
//! fraction of steps down), in bytes/s of "steady, old growth".

use std::collections::HashMap;

use serde::Serialize;

use super::history::{History, Sample};
use crate::ledger::{StackId, StackUsage};

/// Fewer ticks than this say nothing about a trend.
pub const MIN_TICKS: usize = 4;
/// Below this the growth is not line-like (a sawtooth, a step).
pub const MIN_R_SQUARED: f64 = 0.5;
/// Above this the stack gives memory back too often to be a leak.
pub const MAX_DECREASING_FRACTION: f64 = 0.25;

/// Why a stack is suspected. JSON key names are a public interface.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// Theil–Sen growth rate of the outstanding bytes.
    pub slope_bytes_per_s: f64,
    /// R² of the least-squares line through the ticks (1 = a perfect line).
    pub r_squared: f64,
    /// Ticks observed in the window.
    pub ticks: usize,
    /// Seconds from the first to the last tick observed.
    pub window_s: f64,
    pub increasing_steps: usize,
    pub decreasing_steps: usize,
    /// Oldest outstanding block's age over the window, capped at 1.
    pub retention: f64,
    /// What suspects are ranked by (see the module doc).
    pub score: f64,
}

/// A stack suspected of leaking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Suspect {
    pub stack: StackId,
    pub evidence: Evidence,
}

/// The suspects among `history`'s stacks, most suspicious first. `usage` is
/// the ledger now (for the oldest block of each stack), at `now_ns`.
pub fn rank_suspects(history: &History, usage: &[StackUsage], now_ns: u64) -> Vec<Suspect> {
    let oldest_age_s: HashMap<StackId, f64> = usage
        .iter()
        .map(|usage| {
            let age_s = now_ns.saturating_sub(usage.oldest_ns) as f64 / 1e9;
            (usage.stack, age_s)
        })
        .collect();
    let mut suspects: Vec<Suspect> = history
        .stacks()
        .filter_map(|(stack, samples)| {
            let age_s = *oldest_age_s.get(&stack)?;
            let evidence = evaluate(&samples, age_s)?;
            Some(Suspect { stack, evidence })
        })
        .collect();
    suspects.sort_by(|a, b| {
        b.evidence
            .score
            .total_cmp(&a.evidence.score)
            .then(a.stack.cmp(&b.stack))
    });
    suspects
}

/// The evidence against one stack, if its ticks qualify it as a suspect.
pub fn evaluate(samples: &[Sample], oldest_age_s: f64) -> Option<Evidence> {
    if samples.len() < MIN_TICKS {
        return None;
    }
    let steps = samples.len() - 1;
    let increasing_steps = samples
        .windows(2)
        .filter(|w| w[1].bytes > w[0].bytes)
        .count();
    let decreasing_steps = samples
        .windows(2)
        .filter(|w| w[1].bytes < w[0].bytes)
        .count();
    let decreasing_fraction = decreasing_steps as f64 / steps as f64;
    let slope = theil_sen_slope(samples);
    let r_squared = r_squared(samples);
    let qualifies =
        slope > 0.0 && r_squared >= MIN_R_SQUARED && decreasing_fraction <= MAX_DECREASING_FRACTION;
    if !qualifies {
        return None;
    }
    let window_s = samples[steps].elapsed_s - samples[0].elapsed_s;
    let retention = (oldest_age_s / window_s.max(1e-9)).min(1.0);
    Some(Evidence {
        slope_bytes_per_s: slope,
        r_squared,
        ticks: samples.len(),
        window_s,
        increasing_steps,
        decreasing_steps,
        retention,
        score: slope * r_squared * retention * (1.0 - decreasing_fraction),
    })
}

/// Median of the slopes between every pair of samples.
fn theil_sen_slope(samples: &[Sample]) -> f64 {
    let mut slopes = Vec::with_capacity(samples.len() * samples.len() / 2);
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let dt = b.elapsed_s - a.elapsed_s;
            if dt > 0.0 {
                slopes.push((b.bytes as f64 - a.bytes as f64) / dt);
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_by(f64::total_cmp);
    let middle = slopes.len() / 2;
    if slopes.len() % 2 == 1 {
        slopes[middle]
    } else {
        (slopes[middle - 1] + slopes[middle]) / 2.0
    }
}

/// R² of the least-squares line; 0 when the bytes never change (no trend to
/// explain).
fn r_squared(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.elapsed_s).sum::<f64>() / n;
    let mean_b = samples.iter().map(|s| s.bytes as f64).sum::<f64>() / n;
    let (mut covariance, mut variance_t, mut variance_b) = (0.0, 0.0, 0.0);
    for sample in samples {
        let dt = sample.elapsed_s - mean_t;
        let db = sample.bytes as f64 - mean_b;
        covariance += dt * db;
        variance_t += dt * dt;
        variance_b += db * db;
    }
    if variance_t == 0.0 || variance_b == 0.0 {
        return 0.0;
    }
    covariance * covariance / (variance_t * variance_b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::usage;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    /// One sample per second of the given byte counts.
    fn ticks(bytes: impl IntoIterator<Item = u64>) -> Vec<Sample> {
        bytes
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| Sample {
                elapsed_s: i as f64,
                bytes,
            })
            .collect()
    }

    fn steady_leak() -> Vec<Sample> {
        // 80 KiB/s with a little jitter from a churn on the same stack.
        ticks((0..20).map(|i| i * 80 * KIB + (i % 3) * 512))
    }

    fn plateaued_cache() -> Vec<Sample> {
        // Fills 64 MiB in two ticks, then churns at that size.
        ticks((0..20).map(|i| match i {
            0 => 0,
            1 => 40 * MIB,
            _ => 64 * MIB - (i % 2) * 64 * KIB,
        }))
    }

    fn sawtooth_pool() -> Vec<Sample> {
        // Grows 1 MiB a tick for four ticks, then is released, over and over.
        ticks((0..20).map(|i| (i % 5) * MIB))
    }

    #[test]
    fn a_steady_leak_is_a_suspect_growing_at_its_rate() {
        let evidence = evaluate(&steady_leak(), 19.5).expect("a steady leak is a suspect");
        let rate = (80 * KIB) as f64;
        assert!(
            (evidence.slope_bytes_per_s - rate).abs() < rate * 0.02,
            "{evidence:?}"
        );
        assert!(evidence.r_squared > 0.99, "{evidence:?}");
        assert_eq!((evidence.ticks, evidence.decreasing_steps), (20, 0));
        assert_eq!(evidence.retention, 1.0);
    }

    #[test]
    fn a_plateaued_cache_is_not_a_suspect() {
        assert_eq!(evaluate(&plateaued_cache(), 19.0), None);
    }

    #[test]
    fn a_sawtooth_pool_is_not_a_suspect() {
        assert_eq!(evaluate(&sawtooth_pool(), 0.5), None);
    }

    #[test]
    fn a_trend_needs_a_few_ticks() {
        assert_eq!(evaluate(&ticks([0, KIB, 2 * KIB]), 3.0), None);
    }

    #[test]
    fn growth_of_young_blocks_ranks_below_growth_that_keeps_old_ones() {
        // Same growth, but one stack's oldest block is always young: a buffer
        // reallocated bigger and bigger, not memory left behind.
        let old = evaluate(&steady_leak(), 19.0).unwrap();
        let young = evaluate(&steady_leak(), 1.0).unwrap();
        assert!(old.score > 10.0 * young.score, "{old:?} vs {young:?}");
    }

    #[test]
    fn the_leak_ranks_first_and_the_cache_and_pool_not_at_all() {
        let (leak, cache, pool) = (1, 2, 3);
        let mut history = History::new(30);
        let series = [steady_leak(), plateaued_cache(), sawtooth_pool()];
        for tick in 0..20 {
            let usage: Vec<StackUsage> = [leak, cache, pool]
                .into_iter()
                .zip(&series)
                .map(|(stack, samples)| usage(stack, samples[tick].bytes))
                .collect();
            history.record(tick as f64, &usage);
        }
        let now_ns = 20_000_000_000;
        let now = [leak, cache, pool].map(|stack| usage(stack, 1));
        let suspects = rank_suspects(&history, &now, now_ns);
        let ranked: Vec<u32> = suspects.iter().map(|s| s.stack.get()).collect();
        assert_eq!(ranked, [leak]);
    }
}
