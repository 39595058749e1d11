//! The CI leak gate (`--fail-on-growth BYTES [--after DURATION]`): a pure
//! decision over the ledger at two moments, the end of the warm-up and the
//! end of the session, independent of how the target was started.
//!
//! A stack offends when its outstanding bytes at the end exceed its bytes at
//! the end of the warm-up by more than the threshold. Without `--after` the
//! warm-up is empty and growth counts from attach (the ledger only knows
//! blocks allocated since then, so its bytes at attach are zero).

use std::{collections::HashMap, time::Duration};

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
}

impl Offender {
    pub fn growth(&self) -> u64 {
        self.bytes_after - self.bytes_before
    }
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

    /// Remembers the ledger at the end of the warm-up.
    pub fn take_baseline(&mut self, usage: &[StackUsage]) {
        self.baseline = Some(usage.iter().map(|u| (u.stack, u.bytes)).collect());
    }

    /// The stacks whose growth since the warm-up, to `usage`, exceeds the
    /// threshold, largest growth first; empty when the gate passes.
    pub fn judge(&self, usage: &[StackUsage]) -> Result<Vec<Offender>, GateError> {
        let baseline = self.baseline.as_ref().ok_or(GateError::WarmUpNotOver)?;
        let mut offenders: Vec<Offender> = usage
            .iter()
            .map(|usage| Offender {
                stack: usage.stack,
                bytes_before: baseline.get(&usage.stack).copied().unwrap_or(0),
                bytes_after: usage.bytes,
                count_after: usage.count,
            })
            .filter(|offender| {
                offender.bytes_after > offender.bytes_before
                    && offender.growth() > self.threshold_bytes
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

    #[test]
    fn growth_counts_from_the_end_of_the_warm_up() {
        let mut gate = LeakGate::new(100, Duration::from_secs(5));
        assert!(gate.waiting_for_baseline());
        // A cache that was large at the warm-up's end and did not grow, and
        // a leak that grew by 150 bytes.
        gate.take_baseline(&[usage(1, 10_000), usage(2, 50)]);
        let offenders = gate.judge(&[usage(1, 10_000), usage(2, 200)]).unwrap();
        assert_eq!(offenders.len(), 1);
        assert_eq!((offenders[0].stack.get(), offenders[0].growth()), (2, 150));
    }

    #[test]
    fn growth_of_exactly_the_threshold_passes() {
        let gate = LeakGate::new(100, Duration::ZERO);
        assert_eq!(gate.judge(&[usage(1, 100)]), Ok(vec![]));
        assert_eq!(gate.judge(&[usage(1, 101)]).unwrap().len(), 1);
    }

    #[test]
    fn shrinking_stacks_and_new_small_stacks_pass() {
        let mut gate = LeakGate::new(100, Duration::from_secs(1));
        gate.take_baseline(&[usage(1, 5_000)]);
        assert_eq!(gate.judge(&[usage(1, 10), usage(3, 99)]), Ok(vec![]));
    }

    #[test]
    fn a_session_shorter_than_the_warm_up_cannot_be_judged() {
        let gate = LeakGate::new(100, Duration::from_secs(5));
        assert_eq!(gate.judge(&[]), Err(GateError::WarmUpNotOver));
    }
}
