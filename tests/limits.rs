//! Bounded and honest under pressure: a ring buffer too small for a burst
//! loses events loudly and marks what they may have skewed, and
//! `--max-tracked` caps the ledger, counting what it drops.

use integration_tests::*;
use serde_json::Value;

fn lifecycle(args: &[&str], mode: &str) -> (TracerOutput, Value) {
    let bin = lifecycle_bin();
    launch(args, &[bin.as_os_str(), mode.as_ref()])
}

#[test]
fn ring_overflow_is_counted_in_every_tick_and_marks_stacks_approximate() {
    require_root();
    // One page of ring for ~200k events from 8 threads: most are lost.
    let (out, report) = lifecycle(
        &[
            "--ring-size",
            "4K",
            "--interval",
            "100ms",
            "--log-format",
            "json",
        ],
        "stress",
    );
    out.assert_success();
    let totals = &processes(&report)[0]["totals"];
    let lost = as_u64(totals, "lost_events");
    assert!(lost > 0, "a 4 KiB ring lost nothing? {totals}");

    let ticks: Vec<Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON tick"))
        .collect();
    assert!(!ticks.is_empty());
    let tick_losses: Vec<u64> = ticks.iter().map(|t| as_u64(t, "lost_events")).collect();
    assert!(
        tick_losses.windows(2).all(|w| w[0] <= w[1]),
        "lost_events must be a running total: {tick_losses:?}"
    );
    assert_eq!(*tick_losses.last().unwrap(), lost, "final tick vs report");

    // Every churned block is freed by the workload, so any that shows as
    // outstanding is a lost free: its stack must say the bytes are an upper
    // bound, and so must the leak site's (its blocks were live at the loss).
    for site in ["site_stress_churn", "site_stress_leak"] {
        for stack in site_stacks(&report, site) {
            assert_eq!(stack["approximate"], true, "{site}: {stack}");
        }
    }
    let (_, leaked) = site_totals(&report, "site_stress_leak");
    assert!(
        leaked <= 1000,
        "more leaks than the workload made: {leaked}"
    );
    // The ledger stays self-consistent.
    let stacks_count: u64 = all_stacks(&report).iter().map(|s| as_u64(s, "count")).sum();
    assert_eq!(stacks_count, as_u64(totals, "outstanding_count"));
}

#[test]
fn max_tracked_caps_the_ledger_and_counts_what_it_drops() {
    require_root();
    let (out, full) = lifecycle(&["--interval", "1h"], "early");
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    let full = &processes(&full)[0]["totals"];
    let (all_count, all_bytes) = (
        as_u64(full, "outstanding_count"),
        as_u64(full, "outstanding_bytes"),
    );
    assert!(all_count > 5, "{full}");

    let (out, capped) = lifecycle(&["--interval", "1h", "--max-tracked", "5"], "early");
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("--max-tracked"),
        "dropping must be announced:\n{}",
        out.stderr
    );
    let capped = &processes(&capped)[0]["totals"];
    assert_eq!(as_u64(capped, "outstanding_count"), 5, "{capped}");
    assert_eq!(
        as_u64(capped, "dropped_allocations"),
        all_count - 5,
        "{capped}"
    );
    assert_eq!(
        as_u64(capped, "outstanding_bytes") + as_u64(capped, "dropped_bytes"),
        all_bytes,
        "{capped}"
    );
}
