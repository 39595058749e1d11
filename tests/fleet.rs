//! Deployed like any agent: alloctrace with a capability set instead of
//! root, container identity, the image, the unit's checks and a real
//! Prometheus scraping it.

use std::{process::Stdio, time::Duration};

use integration_tests::{fleet::*, *};

const LEAK_SIZE: u64 = 4096;
const STEPS: u64 = 40;
/// growth.c's cache: 128 blocks of 64 KiB, its largest stack.
const CACHE_BYTES: u64 = 128 * 65536;

/// uid 65534 holding the `--pid` capability set traces a root-owned
/// process and finds its leak to the byte.
#[test]
fn an_unprivileged_user_with_the_capabilities_traces_another_users_process() {
    require_root();
    let (_bin_dir, bin) = tracer_for_nobody();
    let out_dir = world_writable_dir(0o777);
    let report = out_dir.path().join("r.json");
    let mut w = Workload::spawn_bin(&growth_bin(), &["leak", &STEPS.to_string()]);
    let mut cmd = with_capabilities(Some(NOBODY), PID_MODE_CAPS, &bin);
    cmd.args(["--pid", &w.pid.to_string(), "--report"])
        .arg(&report)
        .current_dir(out_dir.path());
    let tracer = Tracer::spawn_command(cmd, w.pid);
    w.go();
    w.wait_done();
    std::thread::sleep(SETTLE);
    tracer.stop(libc::SIGINT).assert_success();

    assert_whole_leak(&read_json(&report), w.pid);
}

/// Dropping any one capability of the set fails at once, naming it.
#[test]
fn each_missing_capability_is_named_in_one_line() {
    require_root();
    let (_bin_dir, bin) = tracer_for_nobody();
    let w = Workload::spawn(Mode::Stay);
    for dropped in PID_MODE_CAPS {
        let out_dir = world_writable_dir(0o777);
        let held: Vec<&str> = PID_MODE_CAPS
            .iter()
            .copied()
            .filter(|cap| cap != dropped)
            .collect();
        let mut cmd = with_capabilities(Some(NOBODY), &held, &bin);
        cmd.args(["--pid", &w.pid.to_string()])
            .current_dir(out_dir.path());
        let out = run_to_completion(cmd, Duration::from_secs(20));
        assert_clean_error(&out, dropped);
        let name = format!("CAP_{}", dropped.to_uppercase());
        assert!(out.stderr.contains(&name), "{name}: {}", out.stderr);
        assert!(dir_entries(out_dir.path()).is_empty());
    }
}

/// The image, run as the Containerfile says (host PID namespace, only the
/// host-wide capabilities), traces a host process and a process in another
/// container, and names that container.
#[test]
fn the_image_traces_host_and_container_processes_with_only_its_capabilities() {
    require_root();
    build_test_image();
    let out_dir = temp_dir();
    let steps = STEPS.to_string();
    let mut host = Workload::spawn_bin(&growth_bin(), &["leak", &steps]);
    let mut contained = ContainerWorkload::start(&growth_bin(), &["leak", &steps]);
    let mut cmd = podman_run();
    cmd.args(["--pid=host", "--cap-drop=all"])
        .arg(format!("--cap-add={}", HOST_WIDE_CAPS.join(",")))
        // The default seccomp profile allows bpf() and perf_event_open()
        // only to CAP_SYS_ADMIN (README: "Running it on a fleet").
        .args(["--security-opt", "seccomp=unconfined"])
        .arg("-v")
        .arg(format!("{}:/out", out_dir.path().display()))
        .arg(TEST_IMAGE)
        .args(["--all", "--comm", "growth", "--report", "/out/r.json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The container's libc is a file of its own, probed before the ready
    // line since the container already runs.
    let tracer = Tracer::spawn_all_command(cmd);
    host.run();
    contained.run();
    std::thread::sleep(SETTLE);
    tracer.stop(libc::SIGINT).assert_success();

    let report = read_json(&out_dir.path().join("r.json"));
    assert_whole_leak(&report, host.pid);
    assert_whole_leak(&report, contained.pid);
    let container = &only_process(&report, contained.pid)["processes"][0]["container"];
    assert_eq!(container["id"], contained.id.as_str(), "{container}");
    assert_eq!(container["runtime"], "podman", "{container}");
    assert!(
        container["cgroup"]
            .as_str()
            .unwrap()
            .contains(&contained.id),
        "{container}"
    );
    assert!(only_process(&report, host.pid)["processes"][0]["container"]["id"].is_null());
}

/// `pid`'s entry of `report` has every block `growth leak STEPS` leaked.
fn assert_whole_leak(report: &serde_json::Value, pid: u32) {
    let process = only_process(report, pid);
    assert_eq!(
        site_totals(&process, "leak_site"),
        (STEPS * LEAK_SIZE, STEPS),
        "{}",
        summarize_report(&process)
    );
}

/// growth.c leaks LEAK_SIZE bytes every 50 ms.
const LEAK_BYTES_PER_S: f64 = LEAK_SIZE as f64 / 0.050;

/// A real Prometheus scraping `--metrics-addr` sees the leaking stack grow
/// at the workload's rate.
#[test]
fn a_real_prometheus_sees_the_leaking_stack_grow_at_its_rate() {
    require_root();
    let addr = format!("127.0.0.1:{}", free_port());
    // 300 steps of 50 ms: 15 s of steady growth.
    let mut w = Workload::spawn_bin(&growth_bin(), &["leak", "300"]);
    let tracer = Tracer::spawn(
        w.pid,
        &["--interval", "250ms", "--metrics-addr", &addr],
        None,
    );
    let prometheus = Prometheus::start(&[&addr], "500ms");
    w.go();
    std::thread::sleep(Duration::from_secs(9));
    let growth =
        prometheus.query(r#"deriv(alloctrace_stack_outstanding_bytes{frame="leak_site"}[6s])"#);
    let whole = prometheus.query(&format!(
        r#"deriv(alloctrace_outstanding_bytes{{pid="{}"}}[6s])"#,
        w.pid
    ));
    drop(tracer);

    assert_eq!(growth.len(), 1, "{growth:?}");
    let (labels, rate) = &growth[0];
    assert_eq!(labels["pid"], w.pid.to_string().as_str(), "{labels}");
    assert_eq!(labels["comm"], "growth", "{labels}");
    // The tracer slows each step a little: the rate can only be lower.
    assert!(
        (0.7 * LEAK_BYTES_PER_S..=1.05 * LEAK_BYTES_PER_S).contains(rate),
        "leak_site grows {rate} B/s, the workload leaks {LEAK_BYTES_PER_S} B/s"
    );
    // The process as a whole grows too (its pool's sawtooth around it).
    assert!(
        whole.len() == 1 && whole[0].1 > 0.5 * LEAK_BYTES_PER_S,
        "{whole:?}"
    );
}

/// `--all` as an agent: metrics for every process with its container's
/// labels and a bounded number of stack series, snapshots rotated to the
/// newest N, and the report written on SIGUSR1 without stopping.
#[test]
fn the_host_wide_agent_serves_bounded_labelled_metrics_rotates_snapshots_and_reports_on_demand() {
    require_root();
    build_test_image();
    let dir = temp_dir();
    let snapshots = dir.path().join("snapshots");
    let report = dir.path().join("report.json");
    let addr = format!("127.0.0.1:{}", free_port());
    let steps = STEPS.to_string();
    let mut host = Workload::spawn_bin(&growth_bin(), &["leak", &steps]);
    let mut contained = ContainerWorkload::start(&growth_bin(), &["leak", &steps]);
    let args = [
        "--comm",
        "growth",
        "--interval",
        "300ms",
        "--top",
        "1",
        "--metrics-addr",
        &addr,
        "--snapshot-every",
        "300ms",
        "--snapshot-dir",
        snapshots.to_str().unwrap(),
        "--snapshot-keep",
        "2",
        "--report",
        report.to_str().unwrap(),
    ];
    let tracer = Tracer::spawn_all(&args);
    host.run();
    contained.run();
    std::thread::sleep(Duration::from_millis(1500));
    let (_, body) = http_get(&addr, "/metrics");
    let snapshot_files = dir_entries(&snapshots);
    assert!(
        !report.exists(),
        "the report is written at the end, or on SIGUSR1"
    );
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGUSR1) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !report.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no report after SIGUSR1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let on_demand = read_json(&report);
    let mut tracer = tracer;
    assert!(tracer.is_running(), "SIGUSR1 stopped the tracer");
    tracer.stop(libc::SIGINT).assert_success();

    // Metrics: one process, its largest stack and the rest summed.
    let host_pid = host.pid.to_string();
    let host_labels = [("pid", host_pid.as_str()), ("comm", "growth")];
    let stack_lines: Vec<&str> = body
        .lines()
        .filter(|line| {
            line.starts_with("alloctrace_stack_outstanding_bytes{")
                && line.contains(&format!("pid=\"{host_pid}\""))
        })
        .collect();
    assert_eq!(
        stack_lines.len(),
        2,
        "--top 1: one stack and the rest\n{body}"
    );
    let metric = |name: &str, labels: &[(&str, &str)]| {
        metric_value(&body, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}\n{body}"))
    };
    let outstanding = metric("alloctrace_outstanding_bytes", &host_labels);
    let largest = metric(
        "alloctrace_stack_outstanding_bytes",
        &[("pid", &host_pid), ("frame", "cache_site")],
    );
    let rest = metric(
        "alloctrace_stack_outstanding_bytes",
        &[("pid", &host_pid), ("stack", "other"), ("frame", "[other]")],
    );
    assert_eq!(largest + rest, outstanding, "{body}");
    assert_eq!(largest as u64, CACHE_BYTES, "{body}");
    let contained_pid = contained.pid.to_string();
    let in_container = [
        ("pid", contained_pid.as_str()),
        ("container_id", contained.id.as_str()),
    ];
    assert_eq!(
        metric("alloctrace_outstanding_bytes", &in_container),
        outstanding,
        "the same workload in a container holds the same\n{body}"
    );
    assert!(metric("alloctrace_events_total", &[]) > 0.0);

    // Snapshots: only the newest two are left.
    assert_eq!(snapshot_files.len(), 2, "{snapshot_files:?}");
    assert!(
        snapshot_files
            .iter()
            .all(|name| name.starts_with("alloctrace-all-"))
    );

    // The report written on demand has the whole leak.
    assert_whole_leak(&on_demand, host.pid);
}

/// The capabilities the unit, the DaemonSet and the image's instructions
/// grant, as `setpriv` names them.
fn granted(file: &str, line_prefix: &str) -> Vec<String> {
    let path = workspace_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(line_prefix))
        .unwrap_or_else(|| panic!("no {line_prefix} in {}", path.display()));
    line.split([' ', ',', '[', ']', '"'])
        .filter(|cap| !cap.is_empty() && !cap.starts_with('\\'))
        .map(|cap| cap.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// The unit passes `systemd-analyze verify`; the unit, the DaemonSet and
/// the image grant the same capabilities; and alloctrace run the way the
/// unit runs it (an unprivileged user holding exactly those, as ambient
/// capabilities) traces a leak to the byte. This machine's PID 1 is not
/// systemd, so `setpriv` stands in for the service manager.
#[test]
fn the_unit_verifies_and_its_capabilities_are_enough_for_the_agent() {
    require_root();
    let unit = granted("deploy/alloctrace.service", "AmbientCapabilities=");
    assert_eq!(unit, HOST_WIDE_CAPS, "the tests grant what the unit grants");
    assert_eq!(
        granted("deploy/alloctrace.service", "CapabilityBoundingSet="),
        unit
    );
    assert_eq!(
        granted("deploy/kubernetes/alloctrace-daemonset.yaml", "add:"),
        unit
    );
    assert_eq!(granted("deploy/Containerfile", "#     --cap-add="), unit);

    // `verify` wants the binary ExecStart names to exist.
    let dir = temp_dir();
    let text = std::fs::read_to_string(workspace_root().join("deploy/alloctrace.service")).unwrap();
    let unit_file = dir.path().join("alloctrace.service");
    let bin = alloctrace_bin();
    std::fs::write(
        &unit_file,
        text.replace("/usr/local/bin/alloctrace", bin.to_str().unwrap()),
    )
    .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_file)
        .output()
        .expect("systemd-analyze (apt package systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    let (_bin_dir, bin) = tracer_for_nobody();
    let out_dir = world_writable_dir(0o777);
    let report = out_dir.path().join("r.json");
    let mut w = Workload::spawn_bin(&growth_bin(), &["leak", &STEPS.to_string()]);
    let caps: Vec<&str> = unit.iter().map(String::as_str).collect();
    let mut cmd = with_capabilities(Some(NOBODY), &caps, &bin);
    cmd.args(["--all", "--comm", "growth", "--report"])
        .arg(&report)
        .current_dir(out_dir.path());
    let tracer = Tracer::spawn_all_command(cmd);
    w.run();
    std::thread::sleep(SETTLE);
    tracer.stop(libc::SIGTERM).assert_success();
    assert_whole_leak(&read_json(&report), w.pid);
}

/// The example alerting rule loads, and fires on a leak but not on a cache
/// that filled once (`promtool test rules` on synthetic series).
#[test]
fn the_alerting_rule_passes_promtool() {
    let dir = workspace_root().join("deploy/prometheus");
    for args in [
        ["check", "rules", "alloctrace-rules.yml"],
        ["test", "rules", "alloctrace-rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (apt package prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
