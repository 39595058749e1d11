//! Reading the JSON ticks `--log-format json` prints on stdout.

use serde_json::Value;

use crate::{as_u64, assert_stack_shape};

/// Keys every `--log-format json` tick must have.
pub const TICK_KEYS: &[&str] = &[
    "ts",
    "outstanding_bytes",
    "outstanding_count",
    "allocs",
    "frees",
    "lost_events",
    "top",
];

/// Parses stdout of `--log-format json`: every non-empty line must be one
/// JSON object with [`TICK_KEYS`].
pub fn parse_ticks(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stdout line is not one JSON object ({e}): {l:?}"));
            assert!(v.is_object(), "stdout line is not a JSON object: {l:?}");
            for k in TICK_KEYS {
                assert!(v.get(k).is_some(), "tick without `{k}`: {l}");
            }
            for k in [
                "outstanding_bytes",
                "outstanding_count",
                "allocs",
                "frees",
                "lost_events",
            ] {
                as_u64(&v, k);
            }
            let top = v["top"]
                .as_array()
                .unwrap_or_else(|| panic!("`top` not an array: {l}"));
            for s in top {
                assert_stack_shape(s);
            }
            v
        })
        .collect()
}
