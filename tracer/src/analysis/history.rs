//! A short history of each stack's outstanding bytes, one sample per tick,
//! with bounded memory: only the last `window` ticks of a stack are kept, and
//! a stack whose every kept sample is zero is forgotten. Beside it, the
//! process's totals at every tick, kept for the whole run in a bounded
//! [`Timeline`].

use std::collections::{HashMap, VecDeque};

use super::timeline::{Point, Timeline};
use crate::ledger::{StackId, StackUsage};

/// Ticks kept per stack when the caller has no reason to choose: at the
/// default 10 s interval, the last 5 minutes.
pub const DEFAULT_WINDOW: usize = 30;

/// One tick of one stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since tracing began.
    pub elapsed_s: f64,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct History {
    window: usize,
    stacks: HashMap<StackId, VecDeque<Sample>>,
    timeline: Timeline,
}

impl History {
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(2),
            stacks: HashMap::new(),
            timeline: Timeline::default(),
        }
    }

    /// Records one tick: every stack in `usage` at its bytes, every stack
    /// already tracked but absent from `usage` at zero.
    pub fn record(&mut self, elapsed_s: f64, usage: &[StackUsage]) {
        self.timeline.record(Point {
            elapsed_s,
            outstanding_bytes: usage.iter().map(|usage| usage.bytes).sum(),
            outstanding_count: usage.iter().map(|usage| usage.count).sum(),
        });
        let mut bytes_now: HashMap<StackId, u64> = usage
            .iter()
            .map(|usage| (usage.stack, usage.bytes))
            .collect();
        for (stack, samples) in &mut self.stacks {
            let bytes = bytes_now.remove(stack).unwrap_or(0);
            samples.push_back(Sample { elapsed_s, bytes });
        }
        for (stack, bytes) in bytes_now {
            self.stacks
                .insert(stack, VecDeque::from([Sample { elapsed_s, bytes }]));
        }
        let window = self.window;
        self.stacks.retain(|_, samples| {
            while samples.len() > window {
                samples.pop_front();
            }
            samples.iter().any(|sample| sample.bytes > 0)
        });
    }

    /// The kept samples of each tracked stack, oldest first.
    pub fn stacks(&self) -> impl Iterator<Item = (StackId, Vec<Sample>)> + '_ {
        self.stacks
            .iter()
            .map(|(stack, samples)| (*stack, samples.iter().copied().collect()))
    }

    /// The kept samples of `stack`, oldest first (empty when forgotten).
    pub fn samples(&self, stack: StackId) -> Vec<Sample> {
        self.stacks
            .get(&stack)
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The totals at every tick (see [`Timeline`]).
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Number of stacks tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.stacks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::usage;

    fn samples_of(history: &History, stack: StackId) -> Vec<u64> {
        history
            .stacks()
            .find(|(id, _)| *id == stack)
            .map(|(_, samples)| samples.iter().map(|s| s.bytes).collect())
            .unwrap_or_default()
    }

    #[test]
    fn keeps_only_the_last_window_ticks() {
        let mut history = History::new(3);
        for tick in 1..=5 {
            history.record(tick as f64, &[usage(1, tick * 10)]);
        }
        assert_eq!(samples_of(&history, 1), [30, 40, 50]);
    }

    #[test]
    fn a_stack_gone_from_the_ledger_is_recorded_at_zero_then_forgotten() {
        let mut history = History::new(2);
        history.record(1.0, &[usage(1, 8), usage(2, 8)]);
        history.record(2.0, &[usage(2, 8)]);
        assert_eq!(samples_of(&history, 1), [8, 0]);
        history.record(3.0, &[usage(2, 8)]);
        assert_eq!(history.len(), 1, "stack 1 was zero for the whole window");
        assert_eq!(samples_of(&history, 2), [8, 8]);
    }
}
