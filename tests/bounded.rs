//! Bounded for weeks: whatever the target does, the tracer's memory has a
//! ceiling. A target making tens of thousands of distinct stacks against a
//! small `--max-stacks` has its idle stacks evicted and counted, while its
//! leak, and stacks that recur after their eviction, are counted exactly.

use std::{collections::BTreeSet, time::Duration};

use integration_tests::*;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn idle_stacks_are_evicted_beyond_max_stacks_and_what_recurs_is_exact() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut storm = Workload::spawn_bin(&stack_storm_bin(), &[]);
    let max_stacks = 500;
    let tracer = Tracer::spawn(
        storm.pid,
        &[
            "--max-stacks",
            &max_stacks.to_string(),
            "--interval",
            "1h",
            "--report",
            report_path.to_str().unwrap(),
        ],
        None,
    );
    storm_command(&mut storm, "leak", COMMAND_TIMEOUT);
    // Distinct stacks, each freed at once, 280 times the cap in all: the
    // tracer's memory reaches its high-water mark in the first 80,000 (the
    // allocator keeps what it freed), then stays there.
    storm_command(&mut storm, "storm 0 80000", COMMAND_TIMEOUT);
    std::thread::sleep(SETTLE);
    let rss_warm = rss_kib(tracer.pid());
    storm_command(&mut storm, "storm 80000 60000", COMMAND_TIMEOUT);
    std::thread::sleep(SETTLE);
    let rss_end = rss_kib(tracer.pid());
    // The first 300 paths again, evicted long ago: each keeps a block now.
    let kept = 300;
    storm_command(&mut storm, &format!("keep 0 {kept}"), COMMAND_TIMEOUT);
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let report = read_json(&report_path);
    let totals = &report["totals"];

    let evicted = as_u64(totals, "evicted_stacks");
    assert!(evicted >= 140_000 - max_stacks, "{totals}");
    assert!(as_u64(totals, "stacks") <= max_stacks, "{totals}");
    // Without eviction, 60,000 more stacks cost the tracer ~36 MiB (~0.6 KiB
    // each).
    assert!(
        rss_end < rss_warm + 4 * 1024,
        "the tracer grew from {rss_warm} KiB to {rss_end} KiB"
    );

    assert_eq!(
        site_totals(&report, "storm_leak_site"),
        (STORM_LEAK_COUNT * STORM_LEAK_BYTES, STORM_LEAK_COUNT),
        "{}",
        summarize_report(&report)
    );
    let recurred = site_stacks(&report, "storm_bottom");
    let paths: BTreeSet<u32> = recurred
        .iter()
        .map(|stack| {
            assert_eq!(
                (as_u64(stack, "bytes"), as_u64(stack, "count")),
                (STORM_KEEP_BYTES, 1),
                "{stack}"
            );
            storm_path(&frame_functions(stack))
                .unwrap_or_else(|| panic!("not a path's stack: {stack}"))
        })
        .collect();
    assert_eq!(paths, (0..kept).collect(), "{}", summarize_report(&report));
    assert_eq!(
        as_u64(totals, "outstanding_bytes"),
        STORM_LEAK_COUNT * STORM_LEAK_BYTES + u64::from(kept) * STORM_KEEP_BYTES,
        "{totals}"
    );
    assert_eq!(as_u64(totals, "lost_events"), 0, "{totals}");
}
