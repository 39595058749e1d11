//! Output formats: JSON ticks, folded stacks, flamegraph, default outputs,
//! --min-age and --duration.

use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::Value;

/// `--log-format json --interval 1s`: one JSON object per line on stdout.
#[test]
fn json_log_ticks() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn(Mode::Stay);
    let args = [
        "--log-format".as_ref(),
        "json".as_ref(),
        "--interval".as_ref(),
        "1s".as_ref(),
        "--top".as_ref(),
        "3".as_ref(),
        "--report".as_ref(),
        report_path.as_os_str(),
    ];
    let tracer = Tracer::spawn(w.pid, &args, None);
    w.run();
    std::thread::sleep(Duration::from_millis(3200));
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();

    let ticks = parse_ticks(&out.stdout);
    assert!(
        ticks.len() >= 2,
        "expected >= 2 ticks in ~3s with --interval 1s, got {}:\n{}",
        ticks.len(),
        out.stdout
    );
    for t in &ticks {
        let n = t["top"].as_array().unwrap().len();
        assert!(n <= 3, "--top 3 but tick has {n} stacks: {t}");
    }
    let last = ticks.last().unwrap();
    assert!(
        as_u64(last, "outstanding_bytes") >= expected_leak_bytes(),
        "last tick outstanding_bytes {} < leak sites {}: {last}",
        as_u64(last, "outstanding_bytes"),
        expected_leak_bytes()
    );
    assert!(
        as_u64(last, "outstanding_count") >= expected_leak_count(),
        "{last}"
    );
    // The largest leak (site_chain_final, 1 MiB) heads the last tick's top.
    let top0 = &last["top"][0];
    assert_eq!(
        leaf_function(top0),
        Some("site_chain_final"),
        "top[0] of last tick: {top0}"
    );
    assert_eq!(as_u64(top0, "bytes"), 1_048_576, "{top0}");
}

/// `--folded` and `--flamegraph`: exact bytes per site, sane SVG, no default files.
#[test]
fn folded_and_flamegraph() {
    require_root();
    let dir = temp_dir();
    let folded_path = dir.path().join("out.folded");
    let svg_path = dir.path().join("out.svg");
    let mut w = Workload::spawn(Mode::Stay);
    let args = [
        "--folded".as_ref(),
        folded_path.as_os_str(),
        "--flamegraph".as_ref(),
        svg_path.as_os_str(),
    ];
    let tracer = Tracer::spawn(w.pid, &args, Some(dir.path()));
    w.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();

    assert_eq!(
        dir_entries(dir.path()),
        vec!["out.folded".to_string(), "out.svg".to_string()],
        "only the requested outputs may be written"
    );

    let text = std::fs::read_to_string(&folded_path).expect("read folded");
    let folded = parse_folded(&text);
    let mut bad = Vec::new();
    for s in SITES {
        let got = folded_site_bytes(&folded, s.name);
        if got != s.bytes {
            bad.push(format!(
                "  {:<26} expected {:>8} got {:>8}",
                s.name, s.bytes, got
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "folded bytes per site wrong:\n{}\n--- folded ---\n{text}",
        bad.join("\n")
    );
    // Root = outermost frame: `main` must come before the site on main-thread stacks.
    let (stack, _) = folded
        .iter()
        .find(|(st, _)| st.last().map(|f| folded_frame_function(f)) == Some("site_malloc_large"))
        .unwrap();
    let main_pos = stack
        .iter()
        .position(|f| folded_frame_function(f) == "main");
    assert!(
        main_pos.is_some_and(|p| p + 1 < stack.len()),
        "expected main to be an outer frame of site_malloc_large: {stack:?}"
    );
    for (st, _) in &folded {
        let leaf = folded_frame_function(st.last().unwrap());
        assert!(
            !ALLOCATOR_FUNCTIONS.contains(&leaf),
            "allocator frame as leaf: {st:?}"
        );
    }

    let total: u64 = folded.iter().map(|(_, n)| n).sum();
    let svg = std::fs::read_to_string(&svg_path).expect("read svg");
    assert_svg_wellformed(&svg);
    // Frames narrower than ~1% may be elided by the flamegraph renderer;
    // every site at least that wide must be named.
    for s in leak_sites().filter(|s| s.bytes * 100 >= total) {
        assert!(
            svg.contains(s.name),
            "SVG does not mention {} ({} of {total} B)",
            s.name,
            s.bytes
        );
    }
}

/// No output flag: `alloctrace-<pid>.svg` and `.json` in the working
/// directory, their paths printed on stderr.
#[test]
fn default_outputs_in_cwd() {
    require_root();
    let dir = temp_dir();
    let mut w = Workload::spawn(Mode::Stay);
    let no_args: [&str; 0] = [];
    let tracer = Tracer::spawn(w.pid, &no_args, Some(dir.path()));
    w.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();

    let svg_name = format!("alloctrace-{}.svg", w.pid);
    let json_name = format!("alloctrace-{}.json", w.pid);
    let entries = dir_entries(dir.path());
    assert!(
        entries.contains(&svg_name),
        "{svg_name} missing; cwd has {entries:?}"
    );
    assert!(
        entries.contains(&json_name),
        "{json_name} missing; cwd has {entries:?}"
    );
    assert!(
        out.stderr.contains(&svg_name),
        "stderr does not name {svg_name}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&json_name),
        "stderr does not name {json_name}:\n{}",
        out.stderr
    );

    assert_svg_wellformed(&std::fs::read_to_string(dir.path().join(&svg_name)).unwrap());
    let report = read_json(&dir.path().join(&json_name));
    assert_sites_exact(&report);
}

fn run_with_report(extra: &[&str], after_done: Duration) -> (Value, u32) {
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn(Mode::Stay);
    let mut args: Vec<std::ffi::OsString> = extra.iter().map(Into::into).collect();
    args.push("--report".into());
    args.push(report_path.clone().into());
    let tracer = Tracer::spawn(w.pid, &args, None);
    w.run();
    std::thread::sleep(after_done);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    (read_json(&report_path), w.pid)
}

/// `--min-age 1h`: everything is younger, so no stack is reported.
#[test]
fn min_age_drops_young_allocations() {
    require_root();
    let (report, _) = run_with_report(&["--min-age", "1h"], SETTLE);
    let stacks = all_stacks(&report);
    assert!(
        stacks.is_empty(),
        "--min-age 1h must drop everything:\n{}",
        summarize_report(&report)
    );
}

/// `--min-age 500ms`, stopped ~1.5 s after the allocations: all of them kept.
#[test]
fn min_age_keeps_old_allocations() {
    require_root();
    let (report, _) = run_with_report(&["--min-age", "500ms"], Duration::from_millis(1500));
    assert_sites_exact(&report);
    for s in leak_sites() {
        for st in site_stacks(&report, s.name) {
            let age = as_f64(st, "oldest_age_s");
            assert!(age >= 0.5, "{}: oldest_age_s {age} < min-age 0.5", s.name);
        }
    }
}

fn duration_stops_by_itself(dur_arg: &str) {
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn(Mode::Stay);
    let args = [
        "--duration".as_ref(),
        dur_arg.as_ref(),
        "--report".as_ref(),
        report_path.as_os_str(),
    ];
    let tracer = Tracer::spawn(w.pid, &args, None);
    let ready_at = tracer.ready_at;
    let spawned_at = tracer.spawned_at;
    w.run();
    let done_after = ready_at.elapsed();
    let out = tracer.wait_exit(Duration::from_secs(20));
    let exited = Instant::now();
    out.assert_success();
    assert!(
        exited - spawned_at >= Duration::from_millis(1900),
        "--duration {dur_arg} but the tracer exited after {:?}",
        exited - spawned_at
    );
    assert!(w.is_alive(), "target must survive");
    let report = read_json(&report_path);
    assert_eq!(report.get("version").and_then(Value::as_u64), Some(1));
    // The workload finishes in milliseconds; if it did so well inside the
    // window, its allocations must all be in the report.
    if done_after < Duration::from_secs(1) {
        assert_sites_exact(&report);
    }
}

/// `--duration 2s` stops by itself with exit 0.
#[test]
fn duration_2s_stops_by_itself() {
    require_root();
    duration_stops_by_itself("2s");
}

/// DUR as plain seconds.
#[test]
fn duration_plain_seconds() {
    require_root();
    duration_stops_by_itself("2");
}
