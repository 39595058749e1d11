//! Attaching to a running process: exact per-site accounting, symbolization,
//! stopping with SIGINT and stopping because the target exited.

use std::time::Duration;

use integration_tests::*;

/// Target stays alive, tracer stopped with SIGINT.
#[test]
fn attach_live_target_sigint() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn(Mode::Stay);
    let tracer = Tracer::spawn(w.pid, &["--report".as_ref(), report_path.as_os_str()], None);
    w.run();
    std::thread::sleep(SETTLE);

    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    assert!(w.is_alive(), "the traced process must survive the tracer");

    let report = read_json(&report_path);
    assert_report_complete(&report, w.pid);
    for st in all_stacks(&report) {
        assert_stack_shape(st);
    }
    // Ages are plausible: not negative, not older than the trace itself.
    let dur = as_f64(&report, "duration_s");
    for s in leak_sites() {
        for st in site_stacks(&report, s.name) {
            let age = as_f64(st, "oldest_age_s");
            assert!(
                age >= 0.0 && age <= dur + 1.0,
                "{}: oldest_age_s {age} vs duration {dur}",
                s.name
            );
        }
    }

    // The target keeps working after the tracer detached.
    w.close_stdin();
    let st = w.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "workload exit status after detach: {st}");
}

/// Target exits while traced: the tracer notices, writes a complete report
/// and exits 0 on its own.
#[test]
fn target_exit_ends_trace() {
    trace_until_target_exits(&[]);
}

/// The perf-event uprobes alloctrace falls back to on kernels without
/// uprobe_multi links account exactly the same.
#[test]
fn perf_event_uprobes_trace_exactly_too() {
    trace_until_target_exits(&["--perf-event-uprobes"]);
}

fn trace_until_target_exits(extra: &[&str]) {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn(Mode::Exit);
    let pid = w.pid;
    let mut args = vec!["--report".as_ref(), report_path.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let tracer = Tracer::spawn(pid, &args, None);
    w.run();
    let st = w.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "workload exit status: {st}");

    let out = tracer.wait_exit(Duration::from_secs(20));
    out.assert_success();

    let report = read_json(&report_path);
    assert_report_complete(&report, pid);
}
