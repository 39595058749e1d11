//! A short history of each stack's outstanding bytes (and of all it has
//! allocated, freed or not), one sample per tick, with bounded memory: only
//! the last `window` ticks of a stack are kept, and a stack whose every kept
//! sample is zero is forgotten.

use std::collections::{HashMap, VecDeque};

use crate::ledger::{Allocated, StackId, StackUsage};

/// Ticks kept per stack when the caller has no reason to choose: at the
/// default 10 s interval, the last 5 minutes.
pub const DEFAULT_WINDOW: usize = 30;

/// One tick of one stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since tracing began.
    pub elapsed_s: f64,
    /// The tick's CLOCK_MONOTONIC ns, the clock of the ledger's blocks.
    pub at_ns: u64,
    /// Outstanding bytes.
    pub bytes: u64,
    /// Bytes allocated since tracing began, freed or not.
    pub allocated_bytes: u64,
}

/// One tick of the whole ledger, as [`History::record`] takes it.
pub struct Tick<'a> {
    pub elapsed_s: f64,
    pub at_ns: u64,
    pub usage: &'a [StackUsage],
    /// [`crate::ledger::Ledger::allocated_by_stack`] at the tick.
    pub allocated: &'a HashMap<StackId, Allocated>,
}

#[derive(Debug)]
pub struct History {
    window: usize,
    stacks: HashMap<StackId, VecDeque<Sample>>,
}

impl History {
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(2),
            stacks: HashMap::new(),
        }
    }

    /// Records one tick: every stack in `usage` at its bytes, every stack
    /// already tracked but absent from `usage` at zero.
    pub fn record(&mut self, tick: Tick<'_>) {
        let sample = |stack: StackId, bytes: u64| Sample {
            elapsed_s: tick.elapsed_s,
            at_ns: tick.at_ns,
            bytes,
            allocated_bytes: tick.allocated.get(&stack).map_or(0, |a| a.bytes),
        };
        let mut bytes_now: HashMap<StackId, u64> = tick
            .usage
            .iter()
            .map(|usage| (usage.stack, usage.bytes))
            .collect();
        for (stack, samples) in &mut self.stacks {
            let bytes = bytes_now.remove(stack).unwrap_or(0);
            samples.push_back(sample(*stack, bytes));
        }
        for (stack, bytes) in bytes_now {
            self.stacks
                .insert(stack, VecDeque::from([sample(stack, bytes)]));
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

    /// Each tracked stack's window: the CLOCK_MONOTONIC ns of its first and
    /// last kept ticks.
    pub fn windows(&self) -> impl Iterator<Item = (StackId, u64, u64)> + '_ {
        self.stacks.iter().filter_map(|(stack, samples)| {
            Some((*stack, samples.front()?.at_ns, samples.back()?.at_ns))
        })
    }

    /// Ticks kept of `stack` (0 when it is not tracked).
    pub fn ticks_of(&self, stack: StackId) -> usize {
        self.stacks.get(&stack).map_or(0, VecDeque::len)
    }

    /// Number of stacks tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    /// Records a tick of `usage` with nothing allocated beyond it, for the
    /// tests: each stack's allocated bytes are its outstanding bytes.
    #[cfg(test)]
    pub fn record_usage(&mut self, elapsed_s: f64, usage: &[StackUsage]) {
        let allocated = usage
            .iter()
            .map(|u| {
                let allocated = Allocated {
                    bytes: u.bytes,
                    count: u.count,
                    ..Allocated::default()
                };
                (u.stack, allocated)
            })
            .collect();
        self.record(Tick {
            elapsed_s,
            at_ns: (elapsed_s * 1e9) as u64,
            usage,
            allocated: &allocated,
        });
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
            history.record_usage(tick as f64, &[usage(1, tick * 10)]);
        }
        assert_eq!(samples_of(&history, 1), [30, 40, 50]);
    }

    #[test]
    fn a_stack_gone_from_the_ledger_is_recorded_at_zero_then_forgotten() {
        let mut history = History::new(2);
        history.record_usage(1.0, &[usage(1, 8), usage(2, 8)]);
        history.record_usage(2.0, &[usage(2, 8)]);
        assert_eq!(samples_of(&history, 1), [8, 0]);
        history.record_usage(3.0, &[usage(2, 8)]);
        assert_eq!(history.len(), 1, "stack 1 was zero for the whole window");
        assert_eq!(samples_of(&history, 2), [8, 8]);
    }
}
