//! Deployed like any agent: alloctrace with a capability set instead of
//! root, container identity, the image, the unit's checks and a real
//! Prometheus scraping it.

use std::{process::Stdio, time::Duration};

use integration_tests::{fleet::*, *};

const LEAK_SIZE: u64 = 4096;
const STEPS: u64 = 40;

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

    let report = read_json(&report);
    assert_eq!(
        site_totals(&report, "leak_site"),
        (STEPS * LEAK_SIZE, STEPS),
        "{}",
        summarize_report(&report)
    );
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
    let process = |pid: u32| {
        report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|process| as_u64(process, "pid") == u64::from(pid))
            .unwrap_or_else(|| panic!("pid {pid} not in {}", summarize_report(&report)))
            .clone()
    };
    for traced in [process(host.pid), process(contained.pid)] {
        let single = serde_json::json!({ "processes": [traced] });
        assert_eq!(
            site_totals(&single, "leak_site"),
            (STEPS * LEAK_SIZE, STEPS),
            "{traced}"
        );
    }
    let container = &process(contained.pid)["container"];
    assert_eq!(container["id"], contained.id.as_str(), "{container}");
    assert_eq!(container["runtime"], "podman", "{container}");
    assert!(
        container["cgroup"]
            .as_str()
            .unwrap()
            .contains(&contained.id),
        "{container}"
    );
    assert!(process(host.pid)["container"]["id"].is_null());
}
