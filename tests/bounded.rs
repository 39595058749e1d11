//! Bounded for weeks: whatever the target does, the tracer's memory has a
//! ceiling. A target making tens of thousands of distinct stacks against a
//! small `--max-stacks` has its idle stacks evicted and counted, while its
//! leak, and stacks that recur after their eviction, are counted exactly.
//! Host-wide, thousands of short processes and a process renaming itself
//! in a loop leave no per-process residue: ledgers, names, histories,
//! library scans, kernel unwind tables and metrics series return to where
//! they were.

use std::{collections::BTreeSet, time::Duration};

use integration_tests::{serde_json::Value, *};

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

/// The sizes of what host-wide mode keeps per process, from a JSON tick.
fn per_pid(tick: &Value) -> [u64; 5] {
    let per_pid = &tick["per_pid"];
    [
        "ledgers",
        "names",
        "growth_histories",
        "library_scans",
        "unwind_tables",
    ]
    .map(|key| as_u64(per_pid, key))
}

/// Distinct `pid` label values of a metrics scrape.
fn metric_pids(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.split("pid=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn thousands_of_short_processes_and_renames_leave_nothing_per_pid_behind() {
    require_root();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut storm = Workload::spawn_bin(&stack_storm_bin(), &[]);
    let tracer = Tracer::spawn_all(&[
        "--interval",
        "0.5",
        "--log-format",
        "json",
        "--metrics-addr",
        &addr,
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let (_, scrape_before) = http_get(&addr, "/metrics");
    // 3,000 processes, one after the other (a quarter exec), then 20,000
    // task names.
    storm_command(&mut storm, "fork 3000", COMMAND_TIMEOUT);
    storm_command(&mut storm, "rename 20000", COMMAND_TIMEOUT);
    std::thread::sleep(Duration::from_secs(3));
    let (_, scrape_after) = http_get(&addr, "/metrics");
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let ticks = parse_ticks(&out.stdout);
    let before = ticks.first().expect("a tick before the churn");
    let after = ticks.last().expect("a tick after the churn");
    assert!(
        as_u64(after, "exited_processes") >= as_u64(before, "exited_processes") + 3000,
        "{after}"
    );
    // Other processes of the machine come and go meanwhile: a margin, far
    // below the 3,000 a leak per process would leave.
    for (key, (then, now)) in [
        "ledgers",
        "names",
        "growth_histories",
        "library_scans",
        "unwind_tables",
    ]
    .iter()
    .zip(per_pid(before).into_iter().zip(per_pid(after)))
    {
        assert!(now <= then + 100, "{key}: {then} before, {now} after");
    }
    assert!(
        as_u64(&after["per_pid"], "exited_reports") <= 1000,
        "{after}"
    );
    let storm_pid = storm.pid.to_string();
    let storm_comms: BTreeSet<&str> = scrape_after
        .lines()
        .filter(|line| line.contains(&format!("pid=\"{storm_pid}\"")))
        .filter_map(|line| line.split("comm=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        storm_comms.len() <= 1,
        "renames became labels: {storm_comms:?}"
    );
    let (pids_before, pids_after) = (metric_pids(&scrape_before), metric_pids(&scrape_after));
    assert!(
        pids_after.len() <= pids_before.len().max(100) + 2,
        "metrics series grew from {} to {} processes",
        pids_before.len(),
        pids_after.len()
    );
}
