//! The CI leak gate (`--fail-on-growth BYTES [--after DURATION]`): a pure
//! decision over the ledger at two moments, the end of the warm-up and the
//! end of the session, independent of how the target was started.
//!
//! A stack offends when its outstanding bytes at the end exceed its bytes at
//! the end of the warm-up by more than the threshold. Without `--after` the
//! warm-up is empty and growth counts from attach (the ledger only knows
//! blocks allocated since then, so its bytes at attach are zero).
//!
//! It judges as the suspects' ranking does ([`super::suspects`]), so the two
//! never disagree on what a leak is:
//! * growth is netted by allocation site: a stack counts no more growth than
//!   its site (all stacks sharing its leaf function) had, so bytes that a
//!   cache moved from its fill path to its refresh path do not fail the gate;
//! * a stack the ranking has judged (enough ticks in its history) and not
//!   found a suspect is cleared: a batch caught at its high point, a pool at
//!   its size. Stacks with too few ticks to judge are held to bytes alone.

use std::{collections::HashMap, time::Duration};

use super::suspects::Sites;
use crate::ledger::{StackId, StackUsage};

/// Exit status of a session whose leak gate failed, distinct from errors (1)
/// and usage errors (2) so scripts can tell them apart.
pub const EXIT_LEAK_GATE_FAILED: u8 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    #[error(
        "tracing stopped before the --after warm-up ended, so the leak gate cannot judge growth; \
         trace for longer or shorten --after"
    )]
    WarmUpNotOver,
}

/// A stack that grew past the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offender {
    pub stack: StackId,
    /// Outstanding bytes at the end of the warm-up.
    pub bytes_before: u64,
    /// Outstanding bytes at the end.
    pub bytes_after: u64,
    pub count_after: u64,
    /// Growth of all stacks at the stack's allocation site (its own growth
    /// when it is alone there).
    pub site_growth: i64,
}

impl Offender {
    /// The growth judged: the stack's, but no more than its site's.
    pub fn growth(&self) -> u64 {
        let own = self.bytes_after.saturating_sub(self.bytes_before);
        own.min(self.site_growth.max(0) as u64)
    }
}

/// How the suspects' ranking sees a stack, for the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranked {
    /// Ranked a suspect.
    Suspect,
    /// Judged over enough ticks and not a suspect.
    Cleared,
    /// Too few ticks to judge.
    Unjudged,
}

#[derive(Debug)]
pub struct LeakGate {
    threshold_bytes: u64,
    after: Duration,
    /// Bytes per stack at the end of the warm-up; `None` until then.
    baseline: Option<HashMap<StackId, u64>>,
}

impl LeakGate {
    pub fn new(threshold_bytes: u64, after: Duration) -> Self {
        Self {
            threshold_bytes,
            after,
            baseline: after.is_zero().then(HashMap::new),
        }
    }

    pub fn threshold_bytes(&self) -> u64 {
        self.threshold_bytes
    }

    /// How long the warm-up lasts.
    pub fn after(&self) -> Duration {
        self.after
    }

    pub fn waiting_for_baseline(&self) -> bool {
        self.baseline.is_none()
    }

    /// The stacks remembered at the end of the warm-up.
    pub fn baseline_stacks(&self) -> impl Iterator<Item = StackId> + '_ {
        self.baseline
            .iter()
            .flat_map(|baseline| baseline.keys().copied())
    }

    /// Remembers the ledger at the end of the warm-up.
    pub fn take_baseline(&mut self, usage: &[StackUsage]) {
        self.baseline = Some(usage.iter().map(|u| (u.stack, u.bytes)).collect());
    }

    /// The stacks whose growth since the warm-up, to `usage`, netted by
    /// `sites`, exceeds the threshold and that `ranked` does not clear,
    /// largest growth first; empty when the gate passes.
    pub fn judge(
        &self,
        usage: &[StackUsage],
        sites: &Sites,
        ranked: impl Fn(StackId) -> Ranked,
    ) -> Result<Vec<Offender>, GateError> {
        let baseline = self.baseline.as_ref().ok_or(GateError::WarmUpNotOver)?;
        let after: HashMap<StackId, u64> = usage.iter().map(|u| (u.stack, u.bytes)).collect();
        let mut site_growth: HashMap<u64, i64> = HashMap::new();
        let stacks = baseline
            .keys()
            .chain(after.keys().filter(|s| !baseline.contains_key(s)));
        for stack in stacks {
            if let Some(site) = sites.get(stack) {
                let before = baseline.get(stack).copied().unwrap_or(0) as i64;
                let now = after.get(stack).copied().unwrap_or(0) as i64;
                *site_growth.entry(*site).or_default() += now - before;
            }
        }
        let mut offenders: Vec<Offender> = usage
            .iter()
            .map(|usage| {
                let bytes_before = baseline.get(&usage.stack).copied().unwrap_or(0);
                let own = usage.bytes as i64 - bytes_before as i64;
                Offender {
                    stack: usage.stack,
                    bytes_before,
                    bytes_after: usage.bytes,
                    count_after: usage.count,
                    site_growth: sites
                        .get(&usage.stack)
                        .map_or(own, |site| site_growth[site]),
                }
            })
            .filter(|offender| {
                offender.growth() > self.threshold_bytes
                    && ranked(offender.stack) != Ranked::Cleared
            })
            .collect();
        offenders.sort_by(|a, b| b.growth().cmp(&a.growth()).then(a.stack.cmp(&b.stack)));
        Ok(offenders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::usage;

    fn unjudged(_: StackId) -> Ranked {
        Ranked::Unjudged
    }

    /// Judged by bytes alone: every stack its own site, none ranked.
    fn judge_bytes(gate: &LeakGate, usage: &[StackUsage]) -> Result<Vec<Offender>, GateError> {
        gate.judge(usage, &Sites::new(), unjudged)
    }

    #[test]
    fn growth_counts_from_the_end_of_the_warm_up() {
        let mut gate = LeakGate::new(100, Duration::from_secs(5));
        assert!(gate.waiting_for_baseline());
        // A cache that was large at the warm-up's end and did not grow, and
        // a leak that grew by 150 bytes.
        gate.take_baseline(&[usage(1, 10_000), usage(2, 50)]);
        let offenders = judge_bytes(&gate, &[usage(1, 10_000), usage(2, 200)]).unwrap();
        assert_eq!(offenders.len(), 1);
        assert_eq!((offenders[0].stack.get(), offenders[0].growth()), (2, 150));
    }

    #[test]
    fn growth_of_exactly_the_threshold_passes() {
        let gate = LeakGate::new(100, Duration::ZERO);
        assert_eq!(judge_bytes(&gate, &[usage(1, 100)]), Ok(vec![]));
        assert_eq!(judge_bytes(&gate, &[usage(1, 101)]).unwrap().len(), 1);
    }

    #[test]
    fn shrinking_stacks_and_new_small_stacks_pass() {
        let mut gate = LeakGate::new(100, Duration::from_secs(1));
        gate.take_baseline(&[usage(1, 5_000)]);
        assert_eq!(
            judge_bytes(&gate, &[usage(1, 10), usage(3, 99)]),
            Ok(vec![])
        );
    }

    #[test]
    fn a_session_shorter_than_the_warm_up_cannot_be_judged() {
        let gate = LeakGate::new(100, Duration::from_secs(5));
        assert_eq!(judge_bytes(&gate, &[]), Err(GateError::WarmUpNotOver));
    }

    #[test]
    fn bytes_moved_between_stacks_of_one_site_do_not_fail_the_gate() {
        // A cache's fill stack gave 5000 bytes to its refresh stack; a leak
        // at the same site as a steady stack keeps its growth.
        let (fill, refresh, leak, steady) = (1, 2, 3, 4);
        let id = StackId::from;
        let mut gate = LeakGate::new(100, Duration::from_secs(1));
        gate.take_baseline(&[usage(fill, 8_000), usage(refresh, 0), usage(steady, 500)]);
        let sites: Sites = [
            (id(fill), 7),
            (id(refresh), 7),
            (id(leak), 8),
            (id(steady), 8),
        ]
        .into();
        let end = [
            usage(fill, 3_000),
            usage(refresh, 5_000),
            usage(leak, 300),
            usage(steady, 500),
        ];
        let offenders = gate.judge(&end, &sites, unjudged).unwrap();
        let judged: Vec<(u32, u64)> = offenders
            .iter()
            .map(|o| (o.stack.get(), o.growth()))
            .collect();
        assert_eq!(judged, [(leak, 300)]);
    }

    #[test]
    fn stacks_the_ranking_cleared_pass_and_suspects_fail() {
        let mut gate = LeakGate::new(100, Duration::from_secs(1));
        gate.take_baseline(&[]);
        let end = [usage(1, 1_000), usage(2, 1_000), usage(3, 1_000)];
        let ranked = |stack: StackId| match stack.get() {
            1 => Ranked::Cleared,
            2 => Ranked::Suspect,
            _ => Ranked::Unjudged,
        };
        let offenders = gate.judge(&end, &Sites::new(), ranked).unwrap();
        let stacks: Vec<u32> = offenders.iter().map(|o| o.stack.get()).collect();
        assert_eq!(stacks, [2, 3]);
    }
}
