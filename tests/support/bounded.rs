//! The bounded-memory tests' target and gauges: `stack_storm` (distinct
//! stacks, process churn, renames on command) and the tracer's resident
//! memory as the kernel counts it.

use std::{path::PathBuf, time::Duration};

use crate::{Workload, compile_c, workloads::WORKLOAD_CFLAGS};

/// The `stack_storm` workload (see its header for the commands).
pub fn stack_storm_bin() -> PathBuf {
    compile_c("stack_storm.c", "stack_storm", WORKLOAD_CFLAGS)
}

/// Blocks `leak` keeps at `storm_leak_site`, and their size.
pub const STORM_LEAK_COUNT: u64 = 10;
pub const STORM_LEAK_BYTES: u64 = 4242;
/// Size of each block `keep` keeps at `storm_bottom`.
pub const STORM_KEEP_BYTES: u64 = 77;
/// Functions a path goes through, one per digit (base 8) of its number.
pub const STORM_FANOUT: u32 = 8;
pub const STORM_DEPTH: usize = 6;

/// Sends `command` to a `stack_storm` and waits until it is performed.
pub fn storm_command(storm: &mut Workload, command: &str, timeout: Duration) {
    storm.send(command);
    storm.expect_line("done", timeout);
}

/// The path number a `storm_bottom` stack went through, read from its
/// `storm_stepN` frames (leaf first: the last digit first).
pub fn storm_path(functions: &[&str]) -> Option<u32> {
    let digits: Vec<u32> = functions
        .iter()
        .filter_map(|function| function.strip_prefix("storm_step")?.parse().ok())
        .collect();
    if digits.len() != STORM_DEPTH {
        return None;
    }
    // The first step taken (outermost frame) is the path's lowest digit.
    Some(
        digits
            .iter()
            .fold(0, |path, digit| path * STORM_FANOUT + digit),
    )
}

/// Resident memory of process `pid` in KiB (`VmRSS`), 0 if gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
