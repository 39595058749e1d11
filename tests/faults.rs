//! Faults a long-running tracer meets on a production host, each with what
//! must survive it: the target stopped and resumed (`SIGSTOP`), the target
//! running `execve`, the probed library replaced on disk while `--all`
//! runs, alloctrace killed in the middle of its fork clean-up, alloctrace
//! itself held in a cgroup with a memory limit near its need.
//!
//! Targets that could keep a leaked probe run on a private copy of libc.

use std::{fs, path::Path, process::Command, sync::Mutex, time::Duration};

use integration_tests::{faults::*, production::*, *};

/// Host-wide tracers would trace each other, and probe every other test's
/// private libc: they run one at a time, and apart from the tests that
/// look at a target's code bytes.
static ONE_HOST_WIDE_TRACER: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_HOST_WIDE_TRACER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn a_target_stopped_and_resumed_is_traced_exactly_afterwards() {
    require_root();
    let mut w = Workload::spawn(Mode::Stay);
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn(
        w.pid,
        &[
            "--interval".as_ref(),
            "0.2".as_ref(),
            "--report".as_ref(),
            report_path.as_os_str(),
        ],
        None,
    );
    signal(w.pid, libc::SIGSTOP);
    assert_eq!(
        await_state(w.pid, Duration::from_secs(5), |s| s == 'T'),
        Some('T')
    );
    // Several summaries (and their probe checks) while it is stopped.
    std::thread::sleep(Duration::from_millis(700));
    signal(w.pid, libc::SIGCONT);
    w.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    assert!(
        !out.stderr.contains("lost its breakpoint"),
        "{}",
        out.stderr
    );
    assert_report_complete(&read_json(&report_path), w.pid);
}

/// Stops of the busy target, at random moments of its allocator calls.
const STOPS: usize = 20;

#[test]
fn a_busy_target_stopped_inside_its_allocator_calls_loses_and_doubles_nothing() {
    require_root();
    let libc = PrivateLibc::new();
    let mut spinner = libc.spawn(&spinner_bin(), &[]);
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn(
        spinner.pid,
        &[
            "--interval".as_ref(),
            "0.2".as_ref(),
            "--report".as_ref(),
            report_path.as_os_str(),
        ],
        None,
    );
    // Frees of blocks allocated before the probes were all in place count
    // apart, as `preexisting_frees`: the free probes are armed first (so
    // that no block is recorded without its free), and this spinner frees
    // hundreds of thousands of blocks a second, so a few land in that
    // window (2 to 14 here). Counted once tracing runs; the stops must add
    // none.
    std::thread::sleep(Duration::from_millis(300));
    let at_start = as_u64(
        &kernel::report_now(&tracer, &report_path)["totals"],
        "preexisting_frees",
    );
    fs::remove_file(&report_path).expect("remove the report taken at start");
    let mut moments = Moments::seeded();
    for _ in 0..STOPS {
        std::thread::sleep(Duration::from_millis(moments.below(60)));
        signal(spinner.pid, libc::SIGSTOP);
        await_state(spinner.pid, Duration::from_secs(5), |s| s == 'T');
        std::thread::sleep(Duration::from_millis(moments.below(60)));
        signal(spinner.pid, libc::SIGCONT);
    }
    // Still running, still traced: its count moves on.
    spinner.send("count");
    let before: u64 = spinner.expect_line("allocs ", READY_TIMEOUT)[7..]
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    spinner.send("count");
    let after: u64 = spinner.expect_line("allocs ", READY_TIMEOUT)[7..]
        .parse()
        .unwrap();
    assert!(
        after > before + 1000,
        "the spinner stalled: {before} then {after}"
    );
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let totals = &read_json(&report_path)["totals"];
    // The spinner holds at most one block at a time (its `sink`): any
    // missed free or doubled allocation would stay outstanding.
    assert_eq!(as_u64(totals, "lost_events"), 0, "{totals}");
    assert!(as_u64(totals, "allocs") > 10_000, "{totals}");
    assert!(as_u64(totals, "outstanding_count") <= 1, "{totals}");
    assert!(
        as_u64(totals, "preexisting_frees") <= at_start + 1,
        "{at_start} preexisting frees at start; {totals}"
    );
    assert!(
        as_u64(totals, "allocs").abs_diff(as_u64(totals, "frees")) <= 1,
        "{totals}"
    );
    assert!(spinner.is_alive());
}

#[test]
fn a_target_that_execs_ends_tracing_and_keeps_no_probe_in_its_new_program() {
    require_root();
    let _serial = serial();
    let libc = PrivateLibc::new();
    let spinner = spinner_bin();
    // A shell on the private libc that, on `go`, allocates and then
    // replaces itself with the spinner (same pid, same libc path).
    let [env, library_path] = libc.env();
    let mut command = Command::new(env);
    command.arg(library_path).args(["sh", "-c"]).arg(format!(
        "echo ready $$; read line; echo allocating $(ls /); exec {}",
        spinner.display()
    ));
    let mut target = Workload::spawn_command(command);
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn(
        target.pid,
        &[
            "--interval".as_ref(),
            "1h".as_ref(),
            "--report".as_ref(),
            report_path.as_os_str(),
        ],
        None,
    );
    target.go();
    target.expect_line("ready ", READY_TIMEOUT);
    assert_eq!(exe_of(target.pid), spinner);
    // It stops on its own, with its report.
    let out = tracer.wait_exit(STOP_TIMEOUT);
    out.assert_success();
    assert!(
        out.stderr.contains(&format!(
            "alloctrace: pid {} ran execve; stopped tracing",
            target.pid
        )),
        "{}",
        out.stderr
    );
    let report = read_json(&report_path);
    assert!(
        as_u64(&report["totals"], "allocs") > 0,
        "{}",
        report["totals"]
    );
    // The new program's code is its files' bytes: no breakpoint is left.
    await_no_other_host_wide_tracer();
    assert_eq!(
        code_bytes_changed(target.pid, &libc.path),
        0,
        "breakpoints left in the new program"
    );
    assert_eq!(code_bytes_changed(target.pid, &spinner), 0);
    target.send("count");
    target.expect_line("allocs ", READY_TIMEOUT);
    assert_ne!(process_state(target.pid), Some('T'));
}

#[test]
fn a_library_replaced_on_disk_while_host_wide_mode_runs_is_probed_in_both_versions() {
    require_root();
    let _serial = serial();
    let libc = PrivateLibc::new();
    let program = libc.dir.path().join("leaky_swapped");
    fs::copy(leaky_bin(), &program).expect("copy leaky");
    let mut old = libc.spawn(&program, &["stay"]);
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn_all(&[
        "--comm",
        "leaky_swapped",
        "--interval",
        "1h",
        "--report",
        report_path.to_str().unwrap(),
    ]);
    upgrade(&libc.path);
    let mut new = libc.spawn(&program, &["stay"]);
    // Found by the next rescan, in the new process.
    let probing = tracer.wait_stderr(Duration::from_secs(10), |line| {
        line.starts_with(&format!("alloctrace: probing libc {}", libc.path.display()))
    });
    assert!(
        probing.ends_with(&format!("(found in pid {})", new.pid)),
        "{probing}"
    );
    old.run();
    new.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let report = read_json(&report_path);
    for (pid, version) in [(old.pid, "old"), (new.pid, "new")] {
        let entry = process_entry(&report, pid);
        assert_eq!(entry["comm"], "leaky_swapped", "{version}: {entry}");
        assert_sites_exact(&report_of_process(&report, pid));
    }
    assert!(old.is_alive() && new.is_alive());
}

/// Replaces `library` as a package manager does: a new file written next
/// to it, renamed over it (the running processes keep the old inode).
fn upgrade(library: &Path) {
    let next = library.with_extension("6.dpkg-new");
    fs::copy(system_libc(), &next).expect("write the new library");
    fs::rename(&next, library).expect("rename the new library over the old");
}

/// Children of the target in the fork clean-up test.
const CHILDREN: &str = "3";

#[test]
fn sigkill_in_the_middle_of_the_fork_clean_up_leaves_the_children_runnable() {
    require_root();
    let _serial = serial();
    let libc = PrivateLibc::new();
    let mut target = libc.spawn(&forkstay_bin(), &[CHILDREN]);
    let mut tracer = tracer_command();
    tracer
        .args(["--pid", &target.pid.to_string(), "--interval", "1h"])
        .env("ALLOCTRACE_TEST_PAUSE_IN_FORK_CLEAN_UP", "1");
    let tracer = Tracer::spawn_command(tracer, target.pid);
    target.go();
    let forked = target.expect_line("forked ", READY_TIMEOUT);
    let children: Vec<u32> = forked
        .split_whitespace()
        .skip(1)
        .map(|pid| pid.parse().unwrap())
        .collect();
    let paused = tracer.wait_stderr(Duration::from_secs(10), |line| {
        line.starts_with("alloctrace: paused in the fork clean-up of pid ")
    });
    let child: u32 = paused.split_whitespace().nth(8).unwrap().parse().unwrap();
    assert!(children.contains(&child), "{paused} / {forked}");
    // Half done: one breakpoint written back, the others still there.
    assert!(code_bytes_changed(child, &libc.path) > 0, "{paused}");
    signal(tracer.pid(), libc::SIGKILL);
    let out = tracer.wait_exit(STOP_TIMEOUT);
    assert!(!out.status.success());
    // The guardian releases the probes: the kernel takes the breakpoints
    // out of the target and of every child, cleaned or not.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let left = || {
        children
            .iter()
            .chain([&target.pid])
            .map(|&pid| code_bytes_changed(pid, &libc.path))
            .sum::<usize>()
    };
    await_no_other_host_wide_tracer();
    while left() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left(), 0, "breakpoints left in the target or its children");
    // Runnable: not stopped, and still calling malloc without a stray trap.
    target.send("count");
    let first = target.expect_line("calls ", READY_TIMEOUT);
    std::thread::sleep(Duration::from_millis(300));
    target.send("count");
    let then = target.expect_line("calls ", READY_TIMEOUT);
    let calls = |line: &str| -> u64 { line.split_whitespace().nth(1).unwrap().parse().unwrap() };
    assert!(then.ends_with(" dead 0"), "a child died: {then}");
    assert!(
        calls(&then) > calls(&first) + 1000,
        "a child stalled: {first} then {then}"
    );
    for &pid in &children {
        assert!(
            matches!(process_state(pid), Some('R' | 'S')),
            "pid {pid}: {:?}",
            process_state(pid)
        );
    }
}

/// The probe checks in the report's totals: (checks, missing).
fn probe_checks(report: &serde_json::Value) -> (u64, u64) {
    let checks = &report["totals"]["probe_checks"];
    (as_u64(checks, "checks"), as_u64(checks, "missing"))
}

#[test]
fn launch_mode_checks_its_probes_and_counts_one_that_goes_missing() {
    require_root();
    let _serial = serial();
    let libc = PrivateLibc::new();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut command = tracer_command();
    command
        .env("LD_LIBRARY_PATH", libc.dir.path())
        .stdin(std::process::Stdio::piped())
        .args([
            "--interval",
            "0.2",
            "--report",
            report_path.to_str().unwrap(),
            "--",
        ])
        .arg(spinner_bin());
    let mut child = command.spawn().expect("start alloctrace");
    let spinner_stdin = child.stdin.take();
    let tracer = Tracer::adopt(child);
    let pid: u32 = tracer.ready_line["alloctrace: tracing pid ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Two summaries with every probe in place, then another tool writes
    // the original code back.
    std::thread::sleep(Duration::from_millis(600));
    let restored = restore_code(pid, &libc.path);
    assert!(restored >= 2, "alloctrace armed {restored} breakpoints");
    let warning = tracer.wait_stderr(Duration::from_secs(10), |line| {
        line.contains("lost its breakpoint")
    });
    assert!(warning.contains(&format!("in pid {pid}")), "{warning}");
    drop(spinner_stdin); // The spinner exits, and tracing ends with it.
    let out = tracer.wait_exit(STOP_TIMEOUT);
    out.assert_success();
    let (checks, missing) = probe_checks(&read_json(&report_path));
    assert!(checks >= 2, "{checks} checks");
    assert!(
        missing >= 1 && missing <= restored as u64,
        "{missing} of {restored}"
    );
}

#[test]
fn host_wide_mode_checks_its_probes_in_a_sample_of_processes() {
    require_root();
    let _serial = serial();
    let libc = PrivateLibc::new();
    let program = libc.dir.path().join("spin_checked");
    fs::copy(spinner_bin(), &program).expect("copy the spinner");
    let spinner = libc.spawn(&program, &[]);
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn_all(&[
        "--comm",
        "spin_checked",
        "--interval",
        "0.2",
        "--report",
        report_path.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(600));
    let restored = restore_code(spinner.pid, &libc.path);
    assert!(restored >= 2, "alloctrace armed {restored} breakpoints");
    let warning = tracer.wait_stderr(Duration::from_secs(10), |line| {
        line.contains("lost its breakpoint")
    });
    assert!(
        warning.contains(&format!("in pid {}", spinner.pid)),
        "{warning}"
    );
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    // Other processes on the host are sampled too (and may have lost
    // breakpoints to other tools): at least the spinner's are counted.
    let (checks, missing) = probe_checks(&read_json(&report_path));
    assert!(checks >= 2, "{checks} checks");
    assert!(missing >= 1, "{missing} missing of {restored} restored");
}

/// The memory limit of the tracer's cgroup: near what it needs to attach
/// and trace, below what tracking every block of the hoard adds. Here (2
/// CPUs, a ring of 8 MiB each) the cgroup holds 150 MiB once the probes are
/// attached, most of it the maps' kernel memory (more on a busy host), and
/// peaks at 261 MiB tracking 3 million blocks; under 224 MiB a tracer that
/// does not size its budget from the limit was killed by the kernel with
/// nothing written.
fn tracer_memory_limit() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    (240 + 8 * cpus.min(4)) << 20
}
const HOARDED_BLOCKS: &str = "3000000";

#[test]
fn under_a_cgroup_memory_limit_it_drops_and_counts_instead_of_dying() {
    require_root();
    let cgroup = MemoryCgroup::new(tracer_memory_limit());
    let mut hoard = Workload::spawn_bin(&hoard_bin(), &[HOARDED_BLOCKS]);
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut command = cgroup.command(&alloctrace_bin());
    command
        .args(["--pid", &hoard.pid.to_string(), "--interval", "1h"])
        .args(["--report", report_path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let tracer = Tracer::spawn_command(command, hoard.pid);
    hoard.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    assert!(
        out.stderr.contains("alloctrace: memory limit "),
        "{}",
        out.stderr
    );
    let totals = &read_json(&report_path)["totals"];
    let tracked = as_u64(totals, "outstanding_count");
    let dropped = as_u64(totals, "dropped_allocations");
    assert!(tracked > 0 && dropped > 0, "{totals}");
    assert_eq!(
        tracked + dropped + as_u64(totals, "lost_events"),
        3_000_000,
        "{totals}"
    );
    assert_eq!(cgroup.oom_kills(), 0, "{totals}");
}
