//! Leak analysis over time, on top of the ledger: which stacks keep growing
//! ([`suspects`], from a bounded per-stack [`history`] of ticks), how old the
//! outstanding bytes are ([`age`]), the totals over the whole run for the
//! HTML report's chart ([`timeline`]), and the CI leak [`gate`].
//!
//! Like the ledger, everything here is plain data (no aya, no blazesym), fed
//! by the session and unit-tested on synthetic histories; naming stacks and
//! writing reports is left to `report`.

pub mod age;
pub mod gate;
pub mod history;
pub mod suspects;
pub mod timeline;

pub use age::AgeBuckets;
pub use gate::LeakGate;
pub use history::{History, Tick};
pub use suspects::{Evidence, LedgerNow, Sites, Suspect, rank_suspects, window_live_bytes};

/// A stack's usage with one block allocated at time zero, for the tests.
#[cfg(test)]
fn usage(stack: u32, bytes: u64) -> crate::ledger::StackUsage {
    crate::ledger::StackUsage {
        stack: crate::stacks::StackId::from(stack),
        bytes,
        count: 1,
        oldest_ns: 0,
        approximate: false,
    }
}
