//! The leak gate's verdict for people (on stderr): which stacks grew past
//! the threshold, by how much, from where, and why the suspects' ranking
//! agrees (or that it had too few ticks to judge).

use std::{fmt::Write as _, time::Duration};

use super::summary::{bytes, describe_frames};
use crate::{analysis::gate::Offender, symbolize::Frame};

/// An offending stack as the gate's verdict names it.
pub struct NamedOffender {
    pub offender: Offender,
    pub frames: Vec<Frame>,
    /// The ranking's reason ([`super::why_suspect`]) when it is a suspect;
    /// `None` when the stack had too few ticks to be judged.
    pub why: Option<String>,
}

/// The text printed when the gate fails: a headline, then for each
/// offending stack, largest growth first, a line and the reason.
pub fn gate_failure(offenders: &[NamedOffender], threshold: u64, after: Duration) -> String {
    let since = if after.is_zero() {
        "since attach".to_owned()
    } else {
        format!("after the first {}", humantime::format_duration(after))
    };
    let plural = if offenders.len() == 1 { "" } else { "s" };
    let mut text = format!(
        "alloctrace: leak gate failed: {} stack{plural} grew by more than {} {since}\n",
        offenders.len(),
        bytes(threshold),
    );
    for NamedOffender {
        offender,
        frames,
        why,
    } in offenders
    {
        let _ = writeln!(
            text,
            "  +{} ({} -> {}, {} blocks): {}",
            bytes(offender.growth()),
            bytes(offender.bytes_before),
            bytes(offender.bytes_after),
            offender.count_after,
            describe_frames(frames),
        );
        let why = why
            .as_deref()
            .unwrap_or("too few ticks to judge its trend: held to bytes alone");
        let _ = writeln!(text, "    why: {why}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_offender_with_its_growth() {
        let offender = Offender {
            stack: crate::stacks::StackId::from(1),
            bytes_before: 1024,
            bytes_after: 3 * 1024,
            count_after: 3,
            site_growth: 2 * 1024,
        };
        let frame = Frame {
            address: 0x10,
            function: Some("leak_site".to_owned()),
            module: None,
            file: Some("/src/growth.c".to_owned()),
            line: Some(30),
            inlined: false,
            offset: None,
        };
        let named = NamedOffender {
            offender,
            frames: vec![frame],
            why: None,
        };
        let text = gate_failure(&[named], 1024, Duration::from_secs(2));
        assert_eq!(
            text,
            "alloctrace: leak gate failed: 1 stack grew by more than 1.0 KiB after the first 2s\n  \
             +2.0 KiB (1.0 KiB -> 3.0 KiB, 3 blocks): leak_site (growth.c:30)\n    \
             why: too few ticks to judge its trend: held to bytes alone\n"
        );
    }
}
