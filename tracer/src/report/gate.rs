//! The leak gate's verdict for people (on stderr): which stacks grew past
//! the threshold, by how much, from where.

use std::{fmt::Write as _, time::Duration};

use super::summary::{bytes, describe_frames};
use crate::{analysis::gate::Offender, symbolize::Frame};

/// The text printed when the gate fails: a headline, then one line per
/// offending stack, largest growth first.
pub fn gate_failure(
    offenders: &[(Offender, Vec<Frame>)],
    threshold: u64,
    after: Duration,
) -> String {
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
    for (offender, frames) in offenders {
        let _ = writeln!(
            text,
            "  +{} ({} -> {}, {} blocks): {}",
            bytes(offender.growth()),
            bytes(offender.bytes_before),
            bytes(offender.bytes_after),
            offender.count_after,
            describe_frames(frames),
        );
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
        };
        let frame = Frame {
            address: 0x10,
            function: Some("leak_site".to_owned()),
            module: None,
            file: Some("/src/growth.c".to_owned()),
            line: Some(30),
            inlined: false,
        };
        let text = gate_failure(&[(offender, vec![frame])], 1024, Duration::from_secs(2));
        assert_eq!(
            text,
            "alloctrace: leak gate failed: 1 stack grew by more than 1.0 KiB after the first 2s\n  \
             +2.0 KiB (1.0 KiB -> 3.0 KiB, 3 blocks): leak_site (growth.c:30)\n"
        );
    }
}
