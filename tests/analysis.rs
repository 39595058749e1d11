//! Leak analysis over time, against `tests/workloads/growth.c`: a steady
//! leak (`leak_site`), a large cache that fills at once and then churns at a
//! constant size (`cache_site`) and a sawtooth pool (`pool_site`).
//!
//! The tracer attaches before the workload starts (`go`), so it sees every
//! block. Ground truth once the workload printed `done` (STEPS a multiple of
//! the pool's 16 blocks): the leak holds STEPS x 4096 bytes, the cache 128 x
//! 64 KiB, the pool nothing.

use std::{path::Path, time::Duration};

use integration_tests::{verdicts::gate_offenders, *};
use serde_json::Value;

const LEAK_SIZE: u64 = 4096;
const CACHE_BYTES: u64 = 128 * 65536;
const CACHE_BLOCKS: u64 = 128;
/// 80 steps of 50 ms: about 4 s of growth.
const STEPS: u64 = 80;

/// Starts `growth MODE STEPS` and the tracer on it, then lets it go.
fn trace_growth<S: AsRef<std::ffi::OsStr>>(
    mode: &str,
    steps: u64,
    args: &[S],
) -> (Workload, Tracer) {
    let steps = steps.to_string();
    let mut w = Workload::spawn_bin(&growth_bin(), &[mode, &steps]);
    let tracer = Tracer::spawn(w.pid, args, None);
    w.go();
    (w, tracer)
}

/// Traces `growth leak STEPS` until it quiesced, waiting `interval` twice
/// more so ticks see the quiet ledger, then stops the tracer with SIGINT.
fn trace_growth_until_quiet(args: &[std::ffi::OsString], interval: Duration) -> Workload {
    let (mut w, tracer) = trace_growth("leak", STEPS, args);
    quiesce(&mut w, interval);
    tracer.stop(libc::SIGINT).assert_success();
    w
}

/// `frames[0].function` of every suspect of a report or tick.
fn suspect_sites(value: &Value) -> Vec<String> {
    value["suspects"]
        .as_array()
        .unwrap_or_else(|| panic!("no `suspects` array: {value}"))
        .iter()
        .map(|s| leaf_function(s).unwrap_or("?").to_owned())
        .collect()
}

/// Waits for the workload's `done`, then long enough for two ticks of
/// `interval` to see the quiescent ledger.
fn quiesce(w: &mut Workload, interval: Duration) {
    w.wait_done();
    std::thread::sleep(SETTLE + 2 * interval);
}

fn assert_ground_truth(report: &Value, leak_steps: u64) {
    assert_eq!(
        site_totals(report, "leak_site"),
        (leak_steps * LEAK_SIZE, leak_steps),
        "{}",
        summarize_report(report)
    );
    assert_eq!(
        site_totals(report, "cache_site"),
        (CACHE_BYTES, CACHE_BLOCKS),
        "{}",
        summarize_report(report)
    );
    assert_eq!(site_totals(report, "pool_site"), (0, 0));
}

#[test]
fn a_steady_leak_ranks_first_and_a_large_stable_cache_is_no_suspect() {
    require_root();
    let dir = temp_dir();
    // The tracer stops while the leak still grows (200 steps = 10 s).
    let args = with_report(
        &[
            "--interval",
            "250ms",
            "--duration",
            "4s",
            "--log-format",
            "json",
        ],
        dir.path(),
    );
    let (_w, tracer) = trace_growth("leak", 200, &args);
    let out = tracer.wait_exit(Duration::from_secs(30));
    out.assert_success();

    let report = read_json(&dir.path().join("report.json"));
    let suspects = suspect_sites(&report);
    assert_eq!(
        suspects.first().map(String::as_str),
        Some("leak_site"),
        "suspects: {suspects:?}\n{}",
        summarize_report(&report)
    );
    assert!(!suspects.iter().any(|s| s == "cache_site"), "{suspects:?}");
    // The cache holds far more than the leak: bytes alone would rank it first.
    let (cache_bytes, _) = site_totals(&report, "cache_site");
    let leak = &report["suspects"][0];
    assert!(
        cache_bytes > 4 * as_u64(leak, "bytes"),
        "{}",
        summarize_report(&report)
    );
    // The evidence: ~80 KiB/s (4 KiB per 50 ms step, slower under load).
    let growth = as_f64(leak, "growth_bytes_per_s");
    assert!(
        growth > 20_000.0 && growth < 90_000.0,
        "growth {growth}: {leak}"
    );
    let evidence = &leak["evidence"];
    assert!(as_f64(evidence, "r_squared") > 0.9, "{evidence}");
    assert!(as_u64(evidence, "ticks") >= 8, "{evidence}");
    assert_eq!(as_u64(evidence, "decreasing_steps"), 0, "{evidence}");
    assert_stack_shape(leak);

    // Every tick carries the age view and the suspects; by the last, the
    // leak leads them.
    let ticks = parse_ticks(&out.stdout);
    let last = ticks.last().expect("ticks");
    assert_eq!(
        suspect_sites(last).first().map(String::as_str),
        Some("leak_site"),
        "{last}"
    );
    for tick in &ticks {
        assert_eq!(
            aged_bytes(tick),
            as_u64(tick, "outstanding_bytes"),
            "{tick}"
        );
    }
    // Per stack, too, the age buckets add up to the stack's bytes.
    for stack in all_stacks(&report) {
        assert_eq!(aged_bytes(stack), as_u64(stack, "bytes"), "{stack}");
    }
}

/// The sum of `age_bytes` over its buckets.
fn aged_bytes(value: &Value) -> u64 {
    let ages = &value["age_bytes"];
    ["under_10s", "under_1m", "under_10m", "older"]
        .iter()
        .map(|k| as_u64(ages, k))
        .sum()
}

/// `--fail-on-growth 96K --after 1s`: the leak grows ~240 KiB in the 3 s
/// judged; the cache is full before the warm-up ends and the pool never holds
/// more than 64 KiB.
fn gate_args() -> [&'static str; 6] {
    [
        "--fail-on-growth",
        "96K",
        "--after",
        "1s",
        "--duration",
        "4s",
    ]
}

#[test]
fn leak_gate_fails_on_a_leaking_workload_naming_the_leak() {
    require_root();
    let dir = temp_dir();
    let (_w, tracer) = trace_growth("leak", 200, &with_report(&gate_args(), dir.path()));
    let out = tracer.wait_exit(Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected the leak gate's exit status 3\n--- stderr ---\n{}",
        out.stderr
    );
    let offenders = gate_offenders(&out.stderr);
    assert_eq!(offenders.len(), 1, "offending stacks:\n{}", out.stderr);
    assert!(offenders[0].contains("leak_site"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("1 stack grew by more than 96.0 KiB after the first 1s"),
        "{}",
        out.stderr
    );
    // The outputs are still written.
    assert_eq!(
        site_totals(&read_json(&dir.path().join("report.json")), "cache_site").1,
        CACHE_BLOCKS
    );
}

#[test]
fn leak_gate_passes_on_a_clean_workload() {
    require_root();
    let dir = temp_dir();
    let (_w, tracer) = trace_growth("clean", 200, &with_report(&gate_args(), dir.path()));
    let out = tracer.wait_exit(Duration::from_secs(30));
    out.assert_success();
    assert!(!out.stderr.contains("leak gate"), "{}", out.stderr);
    let report = read_json(&dir.path().join("report.json"));
    assert_eq!(site_totals(&report, "leak_site"), (0, 0));
}

/// `args` and `--report DIR/report.json`.
fn with_report(args: &[&str], dir: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    args.push("--report".into());
    args.push(dir.join("report.json").into());
    args
}

#[test]
fn pprof_profile_decodes_and_adds_up_to_the_json_report() {
    require_root();
    let dir = temp_dir();
    let pprof_path = dir.path().join("heap.pb.gz");
    let args = with_report(&["--pprof", pprof_path.to_str().unwrap()], dir.path());
    trace_growth_until_quiet(&args, Duration::ZERO);

    let report = read_json(&dir.path().join("report.json"));
    assert_ground_truth(&report, STEPS);
    let profile = read_pprof(&pprof_path);
    let name = |index: i64| profile.string_table[index as usize].as_str();
    assert_eq!(name(0), "");
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (name(t.ty), name(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes")
        ]
    );
    let total =
        |column: usize| -> u64 { profile.sample.iter().map(|s| s.value[column] as u64).sum() };
    let totals = &report["totals"];
    assert_eq!(total(0), as_u64(totals, "allocs"), "alloc_objects");
    assert_eq!(total(1), as_u64(totals, "allocated_bytes"), "alloc_space");
    assert_eq!(
        total(2),
        as_u64(totals, "outstanding_count"),
        "inuse_objects"
    );
    assert_eq!(total(3), as_u64(totals, "outstanding_bytes"), "inuse_space");
    // 128 fills + STEPS replacements of the cache, STEPS of pool and leak.
    assert!(
        as_u64(totals, "allocs") >= CACHE_BLOCKS + 3 * STEPS,
        "{totals}"
    );

    // Samples are stacks: the leak's leaf location names leak_site, inside
    // a mapping of the growth binary.
    let leaf_function = |sample: &integration_tests::pprof::Sample| {
        let location = &profile.location[sample.location_id[0] as usize - 1];
        let line = &location.line[0];
        name(profile.function[line.function_id as usize - 1].name)
    };
    let leak: Vec<_> = profile
        .sample
        .iter()
        .filter(|s| leaf_function(s) == "leak_site")
        .collect();
    let inuse: i64 = leak.iter().map(|s| s.value[3]).sum();
    assert_eq!(inuse as u64, STEPS * LEAK_SIZE);
    let location = &profile.location[leak[0].location_id[0] as usize - 1];
    let mapping = &profile.mapping[location.mapping_id as usize - 1];
    assert!(name(mapping.filename).ends_with("/growth"), "{mapping:?}");
    assert!((mapping.memory_start..mapping.memory_limit).contains(&location.address));
    // Every id referenced exists.
    for sample in &profile.sample {
        for id in &sample.location_id {
            assert!(*id >= 1 && *id as usize <= profile.location.len());
        }
    }
}

#[test]
fn metrics_endpoint_serves_the_numbers_the_report_has() {
    require_root();
    let dir = temp_dir();
    let addr = format!("127.0.0.1:{}", free_port());
    let interval = Duration::from_millis(250);
    let args = with_report(
        &["--interval", "250ms", "--metrics-addr", &addr],
        dir.path(),
    );
    let (mut w, tracer) = trace_growth("leak", STEPS, &args);
    quiesce(&mut w, interval);
    let (status, body) = http_get(&addr, "/metrics");
    let (missing, _) = http_get(&addr, "/nothing");
    tracer.stop(libc::SIGINT).assert_success();
    let report_path = dir.path().join("report.json");

    assert!(status.contains(" 200 "), "{status}\n{body}");
    assert!(missing.contains(" 404 "), "{missing}");
    let report = read_json(&report_path);
    assert_ground_truth(&report, STEPS);
    let process = [("pid", w.pid.to_string()), ("comm", "growth".to_owned())];
    let process: Vec<(&str, &str)> = process.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let metric = |name: &str, labels: &[(&str, &str)]| {
        metric_value(&body, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"))
    };
    let totals = &report["totals"];
    for (name, key) in [
        ("alloctrace_outstanding_bytes", "outstanding_bytes"),
        ("alloctrace_outstanding_allocations", "outstanding_count"),
        ("alloctrace_allocations_total", "allocs"),
        ("alloctrace_frees_total", "frees"),
        ("alloctrace_lost_events_total", "lost_events"),
    ] {
        assert_eq!(metric(name, &process) as u64, as_u64(totals, key), "{name}");
    }
    // Each allocation and each free is at least one event.
    assert!(
        metric("alloctrace_events_total", &process) as u64
            >= as_u64(totals, "allocs") + as_u64(totals, "frees")
    );
    let top = [("rank", "1"), ("frame", "leak_site")];
    assert_eq!(
        metric("alloctrace_suspect_outstanding_bytes", &top) as u64,
        STEPS * LEAK_SIZE,
        "{body}"
    );
    assert!(metric("alloctrace_suspect_growth_bytes_per_second", &top) > 0.0);
    assert!(
        metric_value(
            &body,
            "alloctrace_suspect_outstanding_bytes",
            &[("frame", "cache_site")]
        )
        .is_none(),
        "{body}"
    );
}

#[test]
fn snapshots_are_reports_and_diff_names_the_leak_between_them() {
    require_root();
    let dir = temp_dir();
    let snapshots = dir.path().join("snaps");
    let svg = dir.path().join("diff.svg");
    let report_path = dir.path().join("report.json");
    let args = with_report(
        &[
            "--snapshot-every",
            "1s",
            "--snapshot-dir",
            snapshots.to_str().unwrap(),
        ],
        dir.path(),
    );
    let w = trace_growth_until_quiet(&args, Duration::ZERO);

    let names = dir_entries(&snapshots);
    assert!(names.len() >= 3, "snapshots: {names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(&format!("alloctrace-{}-", w.pid)) && n.ends_with(".json")),
        "{names:?}"
    );
    let first = snapshots.join(&names[0]);
    let last = &report_path;
    for name in &names {
        let snapshot = read_json(&snapshots.join(name));
        assert!(
            snapshot["suspects"].is_array() && snapshot["processes"].is_array(),
            "{name}"
        );
    }

    let mut diff = tracer_command();
    diff.arg("diff")
        .arg(&first)
        .arg(last)
        .arg("--flamegraph")
        .arg(&svg)
        .arg("--top")
        .arg("3");
    let out = run_to_completion(diff, Duration::from_secs(30));
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("outstanding "), "{}", out.stdout);
    // Between the first snapshot (~1 s in) and the end, the leak grew; the
    // cache, full from the start, did not.
    assert!(
        lines[1].contains("leak_site") && lines[1].trim_start().starts_with('+'),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("cache_site"), "{}", out.stdout);
    let svg = std::fs::read_to_string(&svg).expect("diff flamegraph");
    assert_svg_wellformed(&svg);
    assert!(svg.contains("leak_site"));
}

#[test]
fn diff_of_a_missing_report_is_one_clean_error() {
    let mut diff = tracer_command();
    diff.arg("diff")
        .arg("/nonexistent/old.json")
        .arg("/nonexistent/new.json");
    let out = run_to_completion(diff, Duration::from_secs(10));
    assert_clean_error(&out, "diff of missing files");
    assert_eq!(out.status.code(), Some(1));
}

/// The gate around a launched command, as a CI job would use it.
fn gate_around_launch(mode: &str) -> TracerOutput {
    let bin = growth_bin();
    let (out, _report) = launch(
        &[
            "--fail-on-growth",
            "96K",
            "--after",
            "1s",
            "--interval",
            "1h",
        ],
        &[
            bin.as_os_str(),
            mode.as_ref(),
            "60".as_ref(),
            "run".as_ref(),
        ],
    );
    out
}

#[test]
fn leak_gate_around_a_launched_command_fails_on_a_leak_and_passes_it_clean() {
    require_root();
    let leaking = gate_around_launch("leak");
    assert_eq!(leaking.status.code(), Some(3), "{}", leaking.stderr);
    assert!(leaking.stderr.contains("leak_site"), "{}", leaking.stderr);
    let clean = gate_around_launch("clean");
    assert_eq!(clean.status.code(), Some(0), "{}", clean.stderr);
    assert!(!clean.stderr.contains("leak gate"), "{}", clean.stderr);
}
