//! Ranking leak suspects: stacks whose outstanding bytes grow the way a
//! leak grows, as opposed to caches (which churn at a plateau, or move
//! between the stacks that fill and refresh them), pools (which grow to a
//! size and stay) and batches (which rise and fall).
//!
//! Over a stack's kept ticks ([`super::History`]):
//! * the growth rate is the Theil–Sen slope (median of the slopes between
//!   every pair of ticks), which a burst or a single drop cannot swing the way
//!   it swings a least-squares slope; a cache that filled once and then
//!   plateaued has a median slope of zero;
//! * **site netting**: stacks with the same allocation site (the same leaf
//!   function, as the caller names it; see [`Sites`]) are summed, and a stack
//!   grows no faster than its site: a cache filled at start-up from one path
//!   and refreshed in place from another moves bytes between two stacks of one
//!   site whose sum stays flat;
//! * **replacement**: bytes a stack allocated to replace blocks from before
//!   tracing (attached to a running process, a cache refreshing entries it
//!   filled before attach; see `Allocated::replaced_bytes`) grow the stack
//!   but not the process, and are taken off its growth;
//! * a stack whose growth is mostly explained by moves and replacements
//!   (the netted growth below [`MIN_NET_SHARE`] of its own) is not growing;
//! * the fit quality is the R² of the least-squares line: a staircase leak
//!   fits a line well, a sawtooth batch does not;
//! * few steps may go down (a leak never gives memory back);
//! * **saturation**: the growth over the newer half of the ticks against the
//!   growth over the older half; a pool that grows to its size and stays
//!   slows to zero, a leak keeps its pace;
//! * **age structure**: the oldest outstanding block's age over the window
//!   (`retention`, capped at 1), and the share of the live bytes allocated
//!   before the middle of the window (`old_bytes_fraction`): a leak's blocks
//!   age with the wall clock and spread over the window (about half are in
//!   its older half), a cache or a pool that recycles keeps its blocks young;
//! * **retention of the window's allocations**: of the bytes the stack
//!   allocated during the window, the share still live
//!   (`retained_fraction`): a pure leak keeps all, a cache refreshed in place
//!   frees nearly all. A leak hidden in heavy churn on one stack keeps
//!   little, so this weighs the score rather than gating it.
//!
//! A stack qualifies with at least [`MIN_TICKS`] ticks, a netted slope of
//! at least [`MIN_NET_SHARE`] of its own, R² ≥ [`MIN_R_SQUARED`], at most [`MAX_DECREASING_FRACTION`] of its
//! steps down and a newer-half growth at least [`MIN_LATE_GROWTH`] of the
//! older half's. Qualifying stacks rank by score = netted slope × R² × (1 −
//! fraction of steps down) × retention × min(1, 2 × old_bytes_fraction) ×
//! min(1, late growth ratio) × (1 + retained_fraction) / 2, in bytes/s of
//! "steady, old, kept growth".

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::history::{History, Sample};
use crate::ledger::{LiveBlock, StackId, StackUsage};

/// Fewer ticks than this say nothing about a trend.
pub const MIN_TICKS: usize = 4;
/// Below this the growth is not line-like (a sawtooth, a step).
pub const MIN_R_SQUARED: f64 = 0.5;
/// Above this the stack gives memory back too often to be a leak.
pub const MAX_DECREASING_FRACTION: f64 = 0.25;
/// Below this ratio of newer-half to older-half growth, the stack is
/// levelling off: a pool reaching its size.
pub const MIN_LATE_GROWTH: f64 = 0.25;
/// Below this share of its own growth left once moves between stacks of
/// its site and replacements of blocks from before tracing are taken off,
/// a stack's growth is explained; the margin absorbs the noise of the
/// slopes (a cache's refresh stack nets out to a few % either way).
pub const MIN_NET_SHARE: f64 = 0.1;

/// Why a stack is suspected. JSON key names are a public interface.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// Theil–Sen growth rate of the stack's own outstanding bytes.
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
    /// Of the bytes the stack allocated during the window, the share still
    /// outstanding (1 = keeps everything, as a pure leak does).
    pub retained_fraction: f64,
    /// Share of the stack's outstanding bytes allocated before the middle of
    /// its window (a steady leak: about 0.5 or more; a recycling cache: 0).
    pub old_bytes_fraction: f64,
    /// Theil–Sen growth over the newer half of the ticks divided by that over
    /// the older half (1 = steady; near 0 = levelling off, as a pool does).
    pub late_growth_ratio: f64,
    /// Stacks sharing this stack's allocation site (1 = none but itself).
    pub site_stacks: usize,
    /// Theil–Sen growth of the site's summed outstanding bytes.
    pub site_slope_bytes_per_s: f64,
    /// Of the bytes the stack allocated during the window, the share that
    /// replaced blocks from before tracing.
    pub replaced_fraction: f64,
    /// The growth judged: the stack's, but no more than its site's, less
    /// the rate at which it replaced blocks from before tracing.
    pub net_slope_bytes_per_s: f64,
}

/// A stack suspected of leaking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Suspect {
    pub stack: StackId,
    pub evidence: Evidence,
}

/// Allocation sites: stacks mapped to the same key share a site (the caller
/// derives the key from the leaf frame's function); a stack not in the map is
/// a site of its own.
pub type Sites = HashMap<StackId, u64>;

/// What the ledger holds now, besides the history, that the ranking reads.
pub struct LedgerNow<'a> {
    /// The ledger by stack (for the oldest block of each).
    pub usage: &'a [StackUsage],
    /// Live blocks by their place in each stack's window
    /// ([`window_live_bytes`]).
    pub live: &'a HashMap<StackId, WindowLive>,
    pub sites: &'a Sites,
    pub now_ns: u64,
}

/// A stack's live bytes by when they were allocated, relative to its kept
/// ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowLive {
    /// Allocated after the stack's first kept tick.
    pub since_start: u64,
    /// Allocated before the middle of the stack's kept ticks.
    pub before_middle: u64,
    /// All of the stack's live bytes allocated by its last kept tick.
    pub total: u64,
}

/// One pass over the live blocks: each tracked stack's [`WindowLive`].
/// Blocks allocated after the stack's last tick are left out, so the
/// numbers describe the same moment as the history.
pub fn window_live_bytes(
    history: &History,
    blocks: impl Iterator<Item = LiveBlock>,
) -> HashMap<StackId, WindowLive> {
    let windows: HashMap<StackId, (u64, u64, u64)> = history
        .windows()
        .map(|(stack, start_ns, end_ns)| (stack, (start_ns, start_ns / 2 + end_ns / 2, end_ns)))
        .collect();
    let mut live: HashMap<StackId, WindowLive> = HashMap::with_capacity(windows.len());
    for block in blocks {
        let Some(&(start_ns, middle_ns, end_ns)) = windows.get(&block.stack) else {
            continue;
        };
        if block.timestamp_ns > end_ns {
            continue;
        }
        let entry = live.entry(block.stack).or_default();
        entry.total += block.size;
        if block.timestamp_ns > start_ns {
            entry.since_start += block.size;
        }
        if block.timestamp_ns <= middle_ns {
            entry.before_middle += block.size;
        }
    }
    live
}

/// The suspects among `history`'s stacks, most suspicious first.
pub fn rank_suspects(history: &History, now: &LedgerNow<'_>) -> Vec<Suspect> {
    let oldest_age_s: HashMap<StackId, f64> = now
        .usage
        .iter()
        .map(|usage| {
            let age_s = now.now_ns.saturating_sub(usage.oldest_ns) as f64 / 1e9;
            (usage.stack, age_s)
        })
        .collect();
    let stacks: Vec<(StackId, Vec<Sample>)> = history.stacks().collect();
    let site_series = site_series(&stacks, now.sites);
    let mut suspects: Vec<Suspect> = stacks
        .iter()
        .filter_map(|(stack, samples)| {
            let age_s = *oldest_age_s.get(stack)?;
            let site = now.sites.get(stack).map(|key| &site_series[key]);
            let site = match site {
                Some((members, series)) if *members > 1 => Some((*members, series.as_slice())),
                _ => None,
            };
            let live = now.live.get(stack).copied().unwrap_or_default();
            let evidence = evaluate(samples, age_s, live, site)?;
            Some(Suspect {
                stack: *stack,
                evidence,
            })
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

/// Each site's member count and summed outstanding bytes per tick (a
/// member without a sample at a tick held nothing then).
fn site_series(
    stacks: &[(StackId, Vec<Sample>)],
    sites: &Sites,
) -> HashMap<u64, (usize, Vec<Sample>)> {
    let mut by_site: HashMap<u64, (usize, BTreeMap<u64, Sample>)> = HashMap::new();
    for (stack, samples) in stacks {
        let Some(key) = sites.get(stack) else {
            continue;
        };
        let (members, series) = by_site.entry(*key).or_default();
        *members += 1;
        for sample in samples {
            let summed = series.entry(sample.at_ns).or_insert(Sample {
                bytes: 0,
                allocated_bytes: 0,
                ..*sample
            });
            summed.bytes += sample.bytes;
            summed.allocated_bytes += sample.allocated_bytes;
        }
    }
    by_site
        .into_iter()
        .map(|(key, (members, series))| (key, (members, series.into_values().collect())))
        .collect()
}

/// The evidence against one stack, if its ticks qualify it as a suspect.
/// `oldest_age_s` is the age of its oldest outstanding block; `site`, when
/// other stacks share its allocation site, the number of stacks there and
/// their summed ticks.
pub fn evaluate(
    samples: &[Sample],
    oldest_age_s: f64,
    live: WindowLive,
    site: Option<(usize, &[Sample])>,
) -> Option<Evidence> {
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
    let site_slope = site.map_or(slope, |(_, series)| theil_sen_slope(series));
    let window_s = samples[steps].elapsed_s - samples[0].elapsed_s;
    let (first, last) = (samples[0], samples[steps]);
    let allocated_in_window = last.allocated_bytes.saturating_sub(first.allocated_bytes);
    let replaced_in_window = last.replaced_bytes.saturating_sub(first.replaced_bytes);
    let replaced_rate = replaced_in_window as f64 / window_s.max(1e-9);
    let net_slope = slope.min(site_slope) - replaced_rate;
    let r_squared = r_squared(samples);
    let late_growth_ratio = late_growth_ratio(samples);
    let qualifies = slope > 0.0
        && net_slope >= MIN_NET_SHARE * slope
        && r_squared >= MIN_R_SQUARED
        && decreasing_fraction <= MAX_DECREASING_FRACTION
        && late_growth_ratio >= MIN_LATE_GROWTH;
    if !qualifies {
        return None;
    }
    let retention = (oldest_age_s / window_s.max(1e-9)).min(1.0);
    let share = |bytes: u64| {
        if allocated_in_window == 0 {
            0.0
        } else {
            (bytes as f64 / allocated_in_window as f64).min(1.0)
        }
    };
    let retained_fraction = share(live.since_start);
    let old_bytes_fraction = if live.total == 0 {
        0.0
    } else {
        live.before_middle as f64 / live.total as f64
    };
    let score = net_slope
        * r_squared
        * (1.0 - decreasing_fraction)
        * retention
        * (2.0 * old_bytes_fraction).min(1.0)
        * late_growth_ratio.min(1.0)
        * (1.0 + retained_fraction)
        / 2.0;
    Some(Evidence {
        slope_bytes_per_s: slope,
        r_squared,
        ticks: samples.len(),
        window_s,
        increasing_steps,
        decreasing_steps,
        retention,
        score,
        retained_fraction,
        old_bytes_fraction,
        late_growth_ratio,
        site_stacks: site.map_or(1, |(members, _)| members),
        site_slope_bytes_per_s: site_slope,
        replaced_fraction: share(replaced_in_window),
        net_slope_bytes_per_s: net_slope,
    })
}

/// Growth over the newer half of the ticks over growth over the older half
/// (the middle tick belongs to both). A stack that did not grow in its
/// older half but grows now is not levelling off: 1.
fn late_growth_ratio(samples: &[Sample]) -> f64 {
    let middle = samples.len() / 2;
    let early = theil_sen_slope(&samples[..=middle]);
    let late = theil_sen_slope(&samples[middle..]);
    if early <= 0.0 {
        return if late > 0.0 { 1.0 } else { 0.0 };
    }
    (late / early).max(0.0)
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

    /// One sample per second of the given byte counts; each stack allocated
    /// exactly what it holds (nothing freed).
    fn ticks(bytes: impl IntoIterator<Item = u64>) -> Vec<Sample> {
        let mut allocated = 0;
        let mut previous = 0;
        bytes
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                allocated += bytes.saturating_sub(previous);
                previous = bytes;
                Sample {
                    elapsed_s: i as f64,
                    at_ns: i as u64 * 1_000_000_000,
                    bytes,
                    allocated_bytes: allocated,
                    replaced_bytes: 0,
                }
            })
            .collect()
    }

    /// Live bytes spread evenly over the window, all allocated in it.
    fn spread(samples: &[Sample]) -> WindowLive {
        let total = samples.last().unwrap().bytes;
        WindowLive {
            since_start: total,
            before_middle: total / 2,
            total,
        }
    }

    /// `evaluate` for a stack alone at its site whose blocks spread over
    /// its window, the oldest `oldest_age_s` old.
    fn alone(samples: &[Sample], oldest_age_s: f64) -> Option<Evidence> {
        evaluate(samples, oldest_age_s, spread(samples), None)
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

    /// Grows to 8 MiB along 1 − e^(−t/3 s), then stays.
    fn saturating_pool() -> Vec<Sample> {
        ticks((0..20).map(|i| (8.0 * MIB as f64 * (1.0 - (-(i as f64) / 3.0).exp())) as u64))
    }

    #[test]
    fn a_steady_leak_is_a_suspect_growing_at_its_rate() {
        let evidence = alone(&steady_leak(), 19.5).expect("a steady leak is a suspect");
        let rate = (80 * KIB) as f64;
        assert!(
            (evidence.slope_bytes_per_s - rate).abs() < rate * 0.02,
            "{evidence:?}"
        );
        assert!(evidence.r_squared > 0.99, "{evidence:?}");
        assert_eq!((evidence.ticks, evidence.decreasing_steps), (20, 0));
        assert_eq!(evidence.retention, 1.0);
        assert_eq!(evidence.retained_fraction, 1.0);
        assert_eq!(evidence.old_bytes_fraction, 0.5);
        assert!(
            (evidence.late_growth_ratio - 1.0).abs() < 0.05,
            "{evidence:?}"
        );
        assert_eq!(evidence.site_stacks, 1);
        assert_eq!(evidence.net_slope_bytes_per_s, evidence.slope_bytes_per_s);
    }

    #[test]
    fn a_plateaued_cache_is_not_a_suspect() {
        assert_eq!(alone(&plateaued_cache(), 19.0), None);
    }

    #[test]
    fn a_sawtooth_pool_is_not_a_suspect() {
        assert_eq!(alone(&sawtooth_pool(), 0.5), None);
    }

    #[test]
    fn a_pool_levelling_off_to_its_size_is_not_a_suspect() {
        let pool = saturating_pool();
        // Its line fits and it never shrinks: only the slowing tells.
        assert!(r_squared(&pool) > MIN_R_SQUARED);
        assert!(theil_sen_slope(&pool) > 0.0);
        assert!(late_growth_ratio(&pool) < MIN_LATE_GROWTH);
        assert_eq!(alone(&pool, 19.0), None);
    }

    #[test]
    fn a_leak_that_starts_late_is_not_taken_for_saturation() {
        // Flat for half the window, then leaking.
        let late = ticks((0..20u64).map(|i| i.saturating_sub(10) * 40 * KIB));
        let evidence = alone(&late, 9.0).expect("a late leak is a suspect");
        assert_eq!(evidence.late_growth_ratio, 1.0);
    }

    #[test]
    fn a_trend_needs_a_few_ticks() {
        assert_eq!(alone(&ticks([0, KIB, 2 * KIB]), 3.0), None);
    }

    #[test]
    fn growth_of_young_blocks_ranks_below_growth_that_keeps_old_ones() {
        // Same growth, but one stack's oldest block is always young: a buffer
        // reallocated bigger and bigger, not memory left behind.
        let old = alone(&steady_leak(), 19.0).unwrap();
        let young = alone(&steady_leak(), 1.0).unwrap();
        assert!(old.score > 10.0 * young.score, "{old:?} vs {young:?}");
        // Likewise when all live bytes are from the newer half.
        let samples = steady_leak();
        let recent = WindowLive {
            before_middle: 0,
            ..spread(&samples)
        };
        let recent = evaluate(&samples, 19.0, recent, None).unwrap();
        assert!(old.score > 10.0 * recent.score, "{old:?} vs {recent:?}");
    }

    #[test]
    fn a_leak_in_heavy_churn_stays_a_suspect_ranked_below_a_pure_leak() {
        // Same growth, but the stack freed 99% of what it allocated.
        let samples = steady_leak();
        let churned: Vec<Sample> = samples
            .iter()
            .map(|s| Sample {
                allocated_bytes: s.allocated_bytes * 100,
                ..*s
            })
            .collect();
        let pure = alone(&samples, 19.0).unwrap();
        let churn = alone(&churned, 19.0).expect("a leak in churn is a suspect");
        assert!((churn.retained_fraction - 0.01).abs() < 1e-3, "{churn:?}");
        assert!(churn.score < pure.score && churn.score > pure.score / 2.5);
    }

    #[test]
    fn bytes_moving_between_stacks_of_one_site_net_out() {
        // A cache filled at start-up from one path (8 MiB), then refreshed
        // in place from another: the refresh stack rises as steadily as a
        // leak, at 256 KiB/s, and the fill stack falls by as much.
        let refresh = ticks((0..20).map(|i| i * 256 * KIB));
        let fill = ticks((0..20).map(|i| 8 * MIB - i * 256 * KIB));
        let site: Vec<Sample> = refresh
            .iter()
            .zip(&fill)
            .map(|(r, f)| Sample {
                bytes: r.bytes + f.bytes,
                ..*r
            })
            .collect();
        assert!(
            alone(&refresh, 19.0).is_some(),
            "alone it looks like a leak"
        );
        assert_eq!(
            evaluate(&refresh, 19.0, spread(&refresh), Some((2, &site))),
            None
        );
        // A leak that shares its site with a steady stack keeps its growth.
        let leak = steady_leak();
        let steady = ticks((0..20).map(|_| 4 * MIB));
        let site: Vec<Sample> = leak
            .iter()
            .zip(&steady)
            .map(|(l, s)| Sample {
                bytes: l.bytes + s.bytes,
                ..*l
            })
            .collect();
        let evidence = evaluate(&leak, 19.0, spread(&leak), Some((2, &site))).unwrap();
        assert_eq!(evidence.site_stacks, 2);
        assert_eq!(evidence.net_slope_bytes_per_s, evidence.slope_bytes_per_s);
    }

    #[test]
    fn growth_that_replaces_blocks_from_before_tracing_is_no_growth() {
        // Attached after a cache filled: its refresh stack rises at 256
        // KiB/s, every byte of it replacing an entry from before attach.
        let refresh: Vec<Sample> = ticks((0..20).map(|i| i * 256 * KIB))
            .into_iter()
            .map(|s| Sample {
                replaced_bytes: s.allocated_bytes,
                ..s
            })
            .collect();
        assert_eq!(alone(&refresh, 19.0), None);
        // Half of it replacing: half of the growth is left.
        let half: Vec<Sample> = refresh
            .iter()
            .map(|s| Sample {
                replaced_bytes: s.allocated_bytes / 2,
                ..*s
            })
            .collect();
        let evidence = alone(&half, 19.0).unwrap();
        assert_eq!(evidence.replaced_fraction, 0.5);
        let rate = (128 * KIB) as f64;
        assert!(
            (evidence.net_slope_bytes_per_s - rate).abs() < rate * 0.01,
            "{evidence:?}"
        );
    }

    #[test]
    fn the_leak_ranks_first_and_the_cache_pool_and_moved_bytes_not_at_all() {
        let (leak, cache, pool, fill, refresh) = (1, 2, 3, 4, 5);
        let stacks = [leak, cache, pool, fill, refresh];
        let id = StackId::from;
        let series = [
            steady_leak(),
            plateaued_cache(),
            sawtooth_pool(),
            ticks((0..20).map(|i| 8 * MIB - i * 256 * KIB)),
            ticks((0..20).map(|i| i * 256 * KIB)),
        ];
        let mut history = History::new(30);
        for tick in 0..20 {
            let usage: Vec<StackUsage> = stacks
                .into_iter()
                .zip(&series)
                .map(|(stack, samples)| usage(stack, samples[tick].bytes))
                .collect();
            history.record_usage(tick as f64, &usage);
        }
        let now_ns = 20_000_000_000;
        let now = stacks.map(|stack| usage(stack, 1));
        let live: HashMap<StackId, WindowLive> = stacks
            .into_iter()
            .zip(&series)
            .map(|(stack, samples)| (id(stack), spread(samples)))
            .collect();
        let sites: Sites = [(id(fill), 7), (id(refresh), 7)].into();
        let suspects = rank_suspects(
            &history,
            &LedgerNow {
                usage: &now,
                live: &live,
                sites: &sites,
                now_ns,
            },
        );
        let ranked: Vec<u32> = suspects.iter().map(|s| s.stack.get()).collect();
        assert_eq!(ranked, [leak]);
    }

    #[test]
    fn live_bytes_are_placed_in_each_stack_window() {
        let mut history = History::new(30);
        for tick in 0..5 {
            history.record_usage(tick as f64 + 1.0, &[usage(1, 1)]);
        }
        // Window 1 s .. 5 s, middle 3 s.
        let block = |size, at_s: f64| LiveBlock {
            stack: StackId::from(1),
            size,
            timestamp_ns: (at_s * 1e9) as u64,
        };
        let blocks = [
            block(1, 0.5),
            block(2, 2.0),
            block(4, 3.5),
            block(8, 6.0),
            LiveBlock {
                stack: StackId::from(9),
                ..block(16, 2.0)
            },
        ];
        let live = window_live_bytes(&history, blocks.into_iter());
        assert_eq!(
            live[&StackId::from(1)],
            WindowLive {
                since_start: 2 + 4,
                before_middle: 1 + 2,
                total: 1 + 2 + 4,
            }
        );
        assert!(!live.contains_key(&StackId::from(9)));
    }
}
