//! The garbage-frame tests (`tests/unwind.rs`): `garbage_rbp.c`, whose
//! allocations happen under a frame whose rbp is data, not a frame
//! pointer; and the rule every reported frame must meet: it is code of the
//! process (in one of its executable mappings, read while it ran) or a
//! named JIT frame.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::{
    NO_FRAME_POINTER_CFLAGS, TracerOutput, all_stacks, compile_c, frames, trace_command_observing,
};

/// `garbage_rbp.c`, built without frame pointers.
pub fn garbage_rbp_bin() -> PathBuf {
    compile_c("garbage_rbp.c", "garbage_rbp", NO_FRAME_POINTER_CFLAGS)
}

/// Address ranges of a process's executable mappings.
pub type CodeRanges = Vec<(u64, u64)>;

/// Runs `command` (ready/go/done protocol) under `alloctrace --pid PID
/// <args>` and returns the final report, what the tracer printed, and the
/// workload's executable mappings once it has made its allocations.
pub fn trace_with_code(command: Command, args: &[&str]) -> (Value, TracerOutput, CodeRanges) {
    let mut code = Vec::new();
    let (_, report, output) = trace_command_observing(command, args, |pid| code = code_ranges(pid));
    assert!(!code.is_empty(), "no executable mappings read");
    (report, output, code)
}

/// The executable mappings of `pid` now.
pub fn code_ranges(pid: u32) -> CodeRanges {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            if !perms.contains('x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

/// Every frame of `report` that is neither in `code` nor a named JIT
/// frame, as `address function`: what a report must never show.
pub fn frames_outside(report: &Value, code: &[(u64, u64)]) -> Vec<String> {
    let in_code = |address: u64| {
        code.iter()
            .any(|&(start, end)| (start..end).contains(&address))
    };
    all_stacks(report)
        .into_iter()
        .flat_map(frames)
        .filter(|frame| {
            let jit = frame["module"] == "[jit]" && frame["function"].is_string();
            let address = frame["address"].as_str().unwrap_or_default();
            let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap_or(0);
            !jit && !in_code(address)
        })
        .map(|frame| format!("{} {}", frame["address"], frame["function"]))
        .collect()
}
