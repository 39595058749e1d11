//! A short history of each stack's (or, host-wide, each process's)
//! outstanding bytes (and, for stacks, of all they allocated, freed or not),
//! one sample per tick, with bounded memory: only the last `window` ticks of
//! a key are kept, and a key whose every kept sample is zero is forgotten.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

use crate::ledger::{Allocated, StackId, StackUsage};

/// Ticks kept per stack when the caller has no reason to choose: at the
/// default 10 s interval, the last 5 minutes.
pub const DEFAULT_WINDOW: usize = 30;

/// One tick of one stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since tracing began.
    pub elapsed_s: f64,
    /// The tick's CLOCK_MONOTONIC ns, the clock of the ledger's blocks (0
    /// in histories of processes).
    pub at_ns: u64,
    /// Outstanding bytes.
    pub bytes: u64,
    /// Bytes allocated since tracing began, freed or not (0 in histories of
    /// processes).
    pub allocated_bytes: u64,
    /// Of those, the bytes that replaced blocks from before tracing
    /// ([`Allocated::replaced_bytes`]; 0 in histories of processes).
    pub replaced_bytes: u64,
}

/// One tick of a whole ledger, as [`History::record`] takes it.
pub struct Tick<'a> {
    pub elapsed_s: f64,
    pub at_ns: u64,
    pub usage: &'a [StackUsage],
    /// [`crate::ledger::Ledger::allocated_by_stack`] at the tick.
    pub allocated: &'a HashMap<StackId, Allocated>,
}

/// Samples by key: stacks ([`StackId`], the default) for leak suspects,
/// process ids for host-wide mode's ranking of processes.
#[derive(Debug)]
pub struct History<K = StackId> {
    window: usize,
    stacks: HashMap<K, VecDeque<Sample>>,
}

impl History {
    /// Records one tick: every stack in `usage` at its bytes, every stack
    /// already tracked but absent from `usage` at zero.
    pub fn record(&mut self, tick: Tick<'_>) {
        self.record_samples(
            tick.elapsed_s,
            tick.at_ns,
            tick.usage.iter().map(|usage| (usage.stack, usage.bytes)),
            |stack| {
                let allocated = tick.allocated.get(stack).copied().unwrap_or_default();
                (allocated.bytes, allocated.replaced_bytes)
            },
        );
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

impl<K: Copy + Eq + Hash> History<K> {
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(2),
            stacks: HashMap::new(),
        }
    }

    /// A key first seen at `elapsed_s`, holding nothing then: its first
    /// recorded tick then counts as growth from zero.
    pub fn start(&mut self, key: K, elapsed_s: f64) {
        self.stacks.entry(key).or_insert_with(|| {
            VecDeque::from([Sample {
                elapsed_s,
                at_ns: 0,
                bytes: 0,
                allocated_bytes: 0,
                replaced_bytes: 0,
            }])
        });
    }

    /// Forgets `key` (a process that ended).
    pub fn remove(&mut self, key: &K) {
        self.stacks.remove(key);
    }

    /// Change of `key`'s bytes per second between its oldest and newest
    /// kept samples (0 with fewer than two).
    pub fn growth_bytes_per_s(&self, key: &K) -> f64 {
        let Some(samples) = self.stacks.get(key) else {
            return 0.0;
        };
        match (samples.front(), samples.back()) {
            (Some(first), Some(last)) if last.elapsed_s > first.elapsed_s => {
                (last.bytes as f64 - first.bytes as f64) / (last.elapsed_s - first.elapsed_s)
            }
            _ => 0.0,
        }
    }

    /// Records one tick: every key in `bytes` at its bytes, every key
    /// already tracked but absent from `bytes` at zero.
    pub fn record_bytes(&mut self, elapsed_s: f64, bytes: impl IntoIterator<Item = (K, u64)>) {
        self.record_samples(elapsed_s, 0, bytes, |_| (0, 0));
    }

    /// [`History::record_bytes`], with the tick's time on the events'
    /// clock and each key's allocated and replaced bytes.
    fn record_samples(
        &mut self,
        elapsed_s: f64,
        at_ns: u64,
        bytes: impl IntoIterator<Item = (K, u64)>,
        allocated: impl Fn(&K) -> (u64, u64),
    ) {
        let sample = |key: &K, bytes: u64| {
            let (allocated_bytes, replaced_bytes) = allocated(key);
            Sample {
                elapsed_s,
                at_ns,
                bytes,
                allocated_bytes,
                replaced_bytes,
            }
        };
        let mut bytes_now: HashMap<K, u64> = bytes.into_iter().collect();
        for (stack, samples) in &mut self.stacks {
            let bytes = bytes_now.remove(stack).unwrap_or(0);
            samples.push_back(sample(stack, bytes));
        }
        for (stack, bytes) in bytes_now {
            let first = sample(&stack, bytes);
            self.stacks.insert(stack, VecDeque::from([first]));
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
    pub fn stacks(&self) -> impl Iterator<Item = (K, Vec<Sample>)> + '_ {
        self.stacks
            .iter()
            .map(|(stack, samples)| (*stack, samples.iter().copied().collect()))
    }

    /// The kept samples of `key`, oldest first (empty when forgotten).
    pub fn samples(&self, key: &K) -> Vec<Sample> {
        self.stacks
            .get(key)
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::usage;

    fn samples_of(history: &History, stack: u32) -> Vec<u64> {
        history
            .stacks()
            .find(|(id, _)| *id == StackId::from(stack))
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
