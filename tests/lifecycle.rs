//! Launch mode and the target's lifecycle: allocations from the first
//! instruction, threads, fork, exec, and address reuse across threads.
//!
//! Every test starts `tests/workloads/lifecycle.c` under `alloctrace -- CMD`
//! and checks its sites' exact bytes and counts in the report.

use integration_tests::*;
use serde_json::Value;

fn lifecycle(mode: &str) -> (TracerOutput, Value) {
    let bin = lifecycle_bin();
    launch(&["--interval", "1h"], &[bin.as_os_str(), mode.as_ref()])
}

fn assert_site(report: &Value, site: &str, expected: (u64, u64)) {
    assert_eq!(
        site_totals(report, site),
        expected,
        "site {site} (bytes, count)\n{}",
        summarize_report(report)
    );
}

fn totals(report: &Value) -> &Value {
    &processes(report)[0]["totals"]
}

#[test]
fn launch_mode_traces_from_the_first_instruction_and_exits_with_the_commands_status() {
    require_root();
    let (out, report) = lifecycle("early");
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("alloctrace: tracing pid "),
        "{}",
        out.stderr
    );
    // A static constructor, and a thread it starts, both run before main.
    assert_site(&report, "site_constructor", (1111, 1));
    assert_site(&report, "site_early_thread", (3 * 2222, 3));
    assert_site(&report, "site_main", (4 * 333, 4));
    assert_eq!(as_u64(totals(&report), "lost_events"), 0);
    let launched_pid = as_u64(&processes(&report)[0], "pid");
    assert!(
        out.stderr.contains(&ready_prefix(launched_pid as u32)),
        "{}",
        out.stderr
    );
}

#[test]
fn forked_children_are_not_traced_and_leave_the_parents_ledger_alone() {
    require_root();
    let (out, report) = lifecycle("fork");
    out.assert_success();
    assert_site(&report, "site_before_fork", (10 * 1000, 10));
    assert_site(&report, "site_after_fork", (3 * 3000, 3));
    assert_site(&report, "site_in_child", (0, 0));
    // The child freed its copies of all ten parent blocks: none of those
    // frees may reach the parent's ledger.
    assert_eq!(
        as_u64(totals(&report), "frees"),
        0,
        "{}",
        summarize_report(&report)
    );
}

#[test]
fn exec_stops_tracing_with_the_old_programs_blocks() {
    require_root();
    let (out, report) = lifecycle("exec");
    out.assert_success();
    assert!(out.stderr.contains("ran execve"), "{}", out.stderr);
    assert_site(&report, "site_before_exec", (5 * 500, 5));
    assert_site(&report, "site_after_exec", (0, 0));
}

#[test]
fn failed_allocations_are_not_recorded() {
    require_root();
    let (out, report) = lifecycle("failures");
    out.assert_success();
    assert_site(&report, "site_fail_survivor", (100, 1));
    assert_site(&report, "site_failing_calls", (0, 0));
    // Only the constructor's, its thread's and the survivor's blocks (plus
    // glibc's own) were allocated; nine failed calls added nothing.
    let (early, early_report) = lifecycle("early");
    assert_eq!(early.status.code(), Some(3));
    let allocs = |report: &Value| as_u64(totals(report), "allocs");
    assert_eq!(
        allocs(&report),
        allocs(&early_report) - 4 + 1,
        "early mode's 4 site_main blocks vs one survivor\n{}",
        summarize_report(&report)
    );
}

#[test]
fn address_reuse_across_threads_never_confuses_blocks() {
    assert_stress_exact(&[]);
}

#[test]
fn threads_past_the_kernels_call_array_stay_exact() {
    // Every thread id is past the kernel's per-thread call array, as on a
    // host with a high pid_max: calls in flight go through its hash map.
    assert_stress_exact(&["--thread-slots", "0"]);
}

fn assert_stress_exact(args: &[&str]) {
    require_root();
    // 4 producers x 25000 blocks of 48 B, 1 in 100 kept, the rest freed by
    // 4 consumer threads: the allocator hands the same addresses back and
    // forth between threads and CPUs all the time.
    let bin = lifecycle_bin();
    let args = [&["--interval", "1h"], args].concat();
    let (out, report) = launch(&args, &[bin.as_os_str(), "stress".as_ref()]);
    out.assert_success();
    assert_site(&report, "site_stress_leak", (1000 * 48, 1000));
    assert_site(&report, "site_stress_churn", (0, 0));
    let totals = totals(&report);
    assert_eq!(as_u64(totals, "lost_events"), 0);
    assert!(as_u64(totals, "frees") >= 99_000, "{totals}");
    let stacks_count: u64 = all_stacks(&report).iter().map(|s| as_u64(s, "count")).sum();
    assert_eq!(stacks_count, as_u64(totals, "outstanding_count"));
}

#[test]
fn a_signal_in_launch_mode_writes_outputs_and_passes_the_signal_on() {
    require_root();
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    let mut cmd = tracer_command();
    cmd.arg("--report").arg(&report).args(["--", "sleep", "30"]);
    let child = cmd.spawn().expect("spawn alloctrace");
    let tracer = Tracer::adopt(child);
    let out = tracer.stop(libc::SIGTERM);
    // sleep died of the forwarded SIGTERM: 128 + 15, as a shell reports it.
    assert_eq!(out.status.code(), Some(143), "{}", out.stderr);
    let report = read_json(&report);
    assert_eq!(processes(&report)[0]["comm"], "sleep");
}
