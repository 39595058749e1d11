//! Memory over time: a process's outstanding bytes and blocks at every tick,
//! for the HTML report's chart, in bounded memory however long the run.
//!
//! At most [`MAX_POINTS`] ticks are kept. When the buffer fills, every other
//! kept tick is dropped and from then on only every second tick is recorded
//! (then every fourth, ...), so the points stay evenly spaced over the whole
//! run at a resolution that halves as it grows. The latest tick is always
//! kept, so the series ends where the report's totals are.

use serde::Serialize;

/// Ticks kept at most: 50 minutes at the default 10 s interval before the
/// resolution first halves; about 6 KiB of JSON per process when full.
pub const MAX_POINTS: usize = 256;

/// One tick of a process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Seconds since tracing began.
    pub elapsed_s: f64,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
}

#[derive(Clone, Debug)]
pub struct Timeline {
    max_points: usize,
    /// Record one tick in this many.
    stride: u64,
    ticks_seen: u64,
    points: Vec<Point>,
    /// The latest tick, when `stride` skipped it.
    latest: Option<Point>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new(MAX_POINTS)
    }
}

impl Timeline {
    pub fn new(max_points: usize) -> Self {
        Self {
            max_points: max_points.max(2),
            stride: 1,
            ticks_seen: 0,
            points: Vec::new(),
            latest: None,
        }
    }

    pub fn record(&mut self, point: Point) {
        let tick = self.ticks_seen;
        self.ticks_seen += 1;
        if !tick.is_multiple_of(self.stride) {
            self.latest = Some(point);
            return;
        }
        self.latest = None;
        self.points.push(point);
        if self.points.len() >= self.max_points {
            // Keep ticks 0, 2s, 4s, ...: still on the new, doubled stride.
            let mut index = 0;
            self.points.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.stride *= 2;
        }
    }

    /// The kept ticks, oldest first, ending with the latest.
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter().chain(self.latest.iter())
    }

    /// The timeline as the report writes it, with the series of `stacks`
    /// (each a name for the page and its samples, e.g. the top suspects'
    /// from the suspects' history).
    pub fn report(&self, stacks: Vec<StackSeries>) -> TimelineReport {
        TimelineReport {
            elapsed_s: self.points().map(|p| round_ms(p.elapsed_s)).collect(),
            outstanding_bytes: self.points().map(|p| p.outstanding_bytes).collect(),
            outstanding_count: self.points().map(|p| p.outstanding_count).collect(),
            stacks,
        }
    }
}

/// Milliseconds are plenty for a chart, and keep the JSON short.
fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// `timeline` in a process of the JSON report: parallel arrays, one entry
/// per kept tick (columns keep it compact). JSON key names are a public
/// interface.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TimelineReport {
    /// Seconds since tracing began.
    pub elapsed_s: Vec<f64>,
    pub outstanding_bytes: Vec<u64>,
    pub outstanding_count: Vec<u64>,
    /// Single stacks' outstanding bytes over the ticks of the suspects'
    /// history (its last ticks, see `History`).
    pub stacks: Vec<StackSeries>,
}

/// One stack's outstanding bytes over time.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StackSeries {
    /// The stack is the `suspect`th (from 0) of this process's entries in
    /// the report's `suspects` (in one-process mode, `suspects[suspect]`).
    pub suspect: usize,
    pub elapsed_s: Vec<f64>,
    pub bytes: Vec<u64>,
}

impl StackSeries {
    pub fn new(suspect: usize, samples: &[super::history::Sample]) -> Self {
        Self {
            suspect,
            elapsed_s: samples.iter().map(|s| round_ms(s.elapsed_s)).collect(),
            bytes: samples.iter().map(|s| s.bytes).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(t: u64) -> Point {
        Point {
            elapsed_s: t as f64,
            outstanding_bytes: t * 10,
            outstanding_count: t,
        }
    }

    fn times(timeline: &Timeline) -> Vec<f64> {
        timeline.points().map(|p| p.elapsed_s).collect()
    }

    #[test]
    fn keeps_every_tick_until_full() {
        let mut timeline = Timeline::new(8);
        (0..7).for_each(|t| timeline.record(tick(t)));
        assert_eq!(times(&timeline), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn halves_its_resolution_when_full_and_stays_evenly_spaced() {
        let mut timeline = Timeline::new(4);
        (0..=8).for_each(|t| timeline.record(tick(t)));
        // Full at 0..3: keeps 0, 2, then every second tick: 4, 6 (full:
        // keeps 0, 4), then every fourth: 8.
        assert_eq!(times(&timeline), [0.0, 4.0, 8.0]);
        timeline.record(tick(9));
        assert_eq!(times(&timeline), [0.0, 4.0, 8.0, 9.0], "the latest tick");
        (10..1000).for_each(|t| timeline.record(tick(t)));
        assert!(timeline.points().count() <= 5);
        assert_eq!(timeline.points().last(), Some(&tick(999)));
    }

    #[test]
    fn the_report_is_columns() {
        let mut timeline = Timeline::new(8);
        (1..=2).for_each(|t| timeline.record(tick(t)));
        let report = timeline.report(vec![]);
        assert_eq!(report.elapsed_s, [1.0, 2.0]);
        assert_eq!(report.outstanding_bytes, [10, 20]);
        assert_eq!(report.outstanding_count, [1, 2]);
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({"elapsed_s": [1.0, 2.0], "outstanding_bytes": [10, 20],
                               "outstanding_count": [1, 2], "stacks": []})
        );
    }
}
