//! The age view: outstanding bytes by how long ago they were allocated.
//!
//! Caches and pools hold memory for good reasons, but they recycle it, so
//! their bytes stay young; "old and still growing" is the leak signature.

use std::collections::HashMap;

use serde::Serialize;

use crate::ledger::{LiveBlock, StackId};

const NS_PER_S: u64 = 1_000_000_000;

/// Outstanding bytes by age. JSON key names are a public interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgeBuckets {
    /// Allocated less than 10 s ago.
    pub under_10s: u64,
    /// 10 s to 1 min.
    pub under_1m: u64,
    /// 1 min to 10 min.
    pub under_10m: u64,
    /// 10 min or more.
    pub older: u64,
}

impl AgeBuckets {
    /// Adds `bytes` allocated `age_ns` ago.
    pub fn add(&mut self, age_ns: u64, bytes: u64) {
        let bucket = match age_ns / NS_PER_S {
            0..10 => &mut self.under_10s,
            10..60 => &mut self.under_1m,
            60..600 => &mut self.under_10m,
            _ => &mut self.older,
        };
        *bucket += bytes;
    }

    pub fn merge(&mut self, other: &Self) {
        self.under_10s += other.under_10s;
        self.under_1m += other.under_1m;
        self.under_10m += other.under_10m;
        self.older += other.older;
    }

    /// (label, bytes) pairs for people, youngest first.
    pub fn labelled(&self) -> [(&'static str, u64); 4] {
        [
            ("<10s", self.under_10s),
            ("<1m", self.under_1m),
            ("<10m", self.under_10m),
            ("older", self.older),
        ]
    }

    /// Per-stack ages of `blocks` at `now_ns`, leaving out blocks allocated
    /// after `allocated_before_ns` (as [`crate::ledger::Ledger::usage_by_stack`] does).
    pub fn by_stack(
        blocks: impl Iterator<Item = LiveBlock>,
        now_ns: u64,
        allocated_before_ns: u64,
    ) -> HashMap<StackId, AgeBuckets> {
        let mut ages: HashMap<StackId, AgeBuckets> = HashMap::new();
        for block in blocks.filter(|block| block.timestamp_ns <= allocated_before_ns) {
            ages.entry(block.stack)
                .or_default()
                .add(now_ns.saturating_sub(block.timestamp_ns), block.size);
        }
        ages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(stack: u32, size: u64, at_s: u64) -> LiveBlock {
        LiveBlock {
            stack: StackId::from(stack),
            size,
            timestamp_ns: at_s * NS_PER_S,
        }
    }

    #[test]
    fn blocks_fall_in_the_bucket_of_their_age_at_now() {
        let now = 1_000 * NS_PER_S;
        let blocks = [
            block(1, 1, 999),
            block(1, 2, 990),
            block(1, 4, 941),
            block(1, 8, 400),
            block(2, 16, 1),
        ];
        let ages = AgeBuckets::by_stack(blocks.into_iter(), now, u64::MAX);
        assert_eq!(
            ages[&StackId::from(1)],
            AgeBuckets {
                under_10s: 1,
                under_1m: 2 + 4,
                under_10m: 0,
                older: 8
            }
        );
        assert_eq!(ages[&StackId::from(2)].older, 16);
    }

    #[test]
    fn blocks_younger_than_the_cutoff_are_left_out() {
        let now = 100 * NS_PER_S;
        let blocks = [block(1, 1, 10), block(1, 2, 99)];
        let ages = AgeBuckets::by_stack(blocks.into_iter(), now, 50 * NS_PER_S);
        assert_eq!(
            ages[&StackId::from(1)].older
                + ages[&StackId::from(1)].under_10m
                + ages[&StackId::from(1)].under_1m,
            1
        );
        assert_eq!(ages[&StackId::from(1)].under_10s, 0);
    }
}
