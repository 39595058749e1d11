//! Running on production hosts: what a long-lived service looks like after
//! a package upgrade (its libc and its program deleted or replaced on disk)
//! is traced exactly, in `--pid` and `--all` modes; killing alloctrace at
//! any moment leaves no probe behind, in the target or in the kernel; the
//! ready line means the probes are armed, and a probe that loses its
//! breakpoint afterwards is reported.
//!
//! Tests that could leak a uprobe if alloctrace regressed run their target
//! on a private copy of libc, so the leak would stay on a temporary file.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use integration_tests::{production::*, *};

/// Host-wide tracers would trace each other: one at a time.
static ONE_HOST_WIDE_TRACER: Mutex<()> = Mutex::new(());

/// The `leaky` workload run from copies of its program and of libc, both
/// deleted from disk once it runs, as after an upgrade of both packages.
struct UpgradedService {
    workload: Workload,
    /// The deleted libc's path, as the service names it.
    libc: PathBuf,
    _dir: PrivateLibc,
}

impl UpgradedService {
    /// `name` is the program's file name (and so its `comm`).
    fn start(name: &str) -> Self {
        let libc = PrivateLibc::new();
        let program = libc.dir.path().join(name);
        fs::copy(leaky_bin(), &program).expect("copy leaky");
        let workload = libc.spawn(&program, &["stay"]);
        // The upgrade: one file deleted, the other replaced by a new one.
        fs::remove_file(&program).expect("delete the program");
        fs::remove_file(&libc.path).expect("delete libc");
        fs::write(&libc.path, b"not the libc the service maps").expect("replace libc");
        let maps = fs::read_to_string(format!("/proc/{}/maps", workload.pid)).unwrap();
        assert!(
            maps.contains(&format!("{} (deleted)", libc.path.display())),
            "{maps}"
        );
        Self {
            workload,
            libc: libc.path.clone(),
            _dir: libc,
        }
    }
}

#[test]
fn pid_mode_traces_a_service_whose_libc_and_program_were_deleted() {
    require_root();
    let mut service = UpgradedService::start("leaky");
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn(
        service.workload.pid,
        &["--report".as_ref(), report_path.as_os_str()],
        None,
    );
    assert!(
        tracer.ready_line.contains(&format!(
            "libc {} (deleted on disk)",
            service.libc.display()
        )),
        "{}",
        tracer.ready_line
    );
    service.workload.run();
    std::thread::sleep(SETTLE);
    tracer.stop(libc::SIGINT).assert_success();
    let report = read_json(&report_path);
    // Exact sites, named from the deleted program's symbols and lines.
    assert_report_complete(&report, service.workload.pid);
    let entry = process_entry(&report, service.workload.pid);
    assert_eq!(entry["libc"], service.libc.display().to_string(), "{entry}");
}

#[test]
fn host_wide_mode_traces_a_service_whose_libc_and_program_were_deleted() {
    require_root();
    let _serial = ONE_HOST_WIDE_TRACER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut service = UpgradedService::start("leaky_upgraded");
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn_all(&[
        "--comm",
        "leaky_upgraded",
        "--interval",
        "1h",
        "--report",
        report_path.to_str().unwrap(),
    ]);
    service.workload.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let probing = format!(
        "alloctrace: probing libc {} (deleted on disk)",
        service.libc.display()
    );
    assert!(out.stderr.contains(&probing), "{}", out.stderr);
    let report = read_json(&report_path);
    let pid = service.workload.pid;
    assert_eq!(process_entry(&report, pid)["comm"], "leaky_upgraded");
    let own = report_of_process(&report, pid);
    assert_sites_exact(&own);
    assert_sites_symbolized(&own);
}

/// Tracers killed at random moments in the kill test.
const KILLED_TRACERS: usize = 16;

#[test]
fn sigkill_at_any_moment_leaves_no_probe_behind() {
    kill_tracers_at_random_moments(KILLED_TRACERS, &[]);
}

/// The same with perf-event uprobes (the fallback of kernels without
/// uprobe_multi links), whose events the guardian holds too.
#[test]
fn sigkill_at_any_moment_leaves_no_perf_event_probe_behind() {
    kill_tracers_at_random_moments(KILLED_TRACERS / 4, &["--perf-event-uprobes"]);
}

/// Starts `count` tracers (with `args`) on a busy target one after the
/// other and SIGKILLs each at a random moment of attach, tracing or
/// detach; then no probe may be left, in the target or in the kernel.
fn kill_tracers_at_random_moments(count: usize, args: &[&str]) {
    require_root();
    let libc = PrivateLibc::new();
    let spinner = libc.spawn(&spinner_bin(), &[]);
    let pid = spinner.pid.to_string();
    let mut moments = Moments::seeded();
    let mut killed = Vec::new();
    for _ in 0..count {
        let mut tracer = tracer_command();
        tracer
            .args(["--pid", &pid, "--interval", "1h"])
            .args(args)
            .stdout(Stdio::null());
        let mut tracer = tracer.spawn().expect("start alloctrace");
        let mut stderr = BufReader::new(tracer.stderr.take().unwrap());
        let phase = moments.below(4);
        if phase == 0 {
            // While attaching (which takes ~750 ms here).
            std::thread::sleep(Duration::from_millis(moments.below(900)));
        } else {
            let mut ready = String::new();
            stderr.read_line(&mut ready).expect("read the ready line");
            assert!(ready.starts_with(&ready_prefix(spinner.pid)), "{ready}");
        }
        killed.push(tracer.id());
        killed.extend(children_of(tracer.id()));
        match phase {
            0 => {}
            // While tracing.
            1 => std::thread::sleep(Duration::from_millis(moments.below(300))),
            // While detaching, after SIGINT: the case that leaked uprobes
            // in 5 of 12 runs before the guardian.
            _ => {
                // SAFETY: kill(2) on our own child, not reaped yet.
                unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
                std::thread::sleep(Duration::from_millis(moments.below(500)));
            }
        }
        tracer.kill().expect("SIGKILL alloctrace");
        tracer.wait().expect("reap alloctrace");
    }
    // What a killed tracer left is released by its guardian in a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while code_bytes_changed(spinner.pid, &libc.path) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        code_bytes_changed(spinner.pid, &libc.path),
        0,
        "breakpoints left in the target's libc"
    );
    let leaked = leaked_uprobes(&kernel_log(), &killed);
    assert!(leaked.is_empty(), "the kernel leaked uprobes: {leaked:#?}");
    // Another tool still gets its probe, with a USDT semaphore, on malloc.
    let [env, library_path] = libc.env();
    let holder = std::process::Command::new(env)
        .arg(library_path)
        .arg(probe_holder_bin())
        .arg("0")
        .output()
        .expect("run probe_holder");
    assert!(
        holder.status.success() && String::from_utf8_lossy(&holder.stdout).starts_with("holding"),
        "another uprobe user cannot attach: {holder:?}"
    );
    // And bcc's memleak, the tool the leaked probes used to lock out.
    if let Err(why) = bcc_memleak_attaches(&libc.path, spinner.pid) {
        panic!("bcc's memleak cannot attach after the kills: {why}");
    }
    let mut spinner = spinner;
    assert!(spinner.is_alive(), "the target died");
}

/// Attachments in a row in the ready-line test.
const ATTACHMENTS: usize = 4;

#[test]
fn every_ready_line_is_followed_by_events_from_a_busy_process() {
    require_root();
    let libc = PrivateLibc::new();
    let spinner = libc.spawn(&spinner_bin(), &[]);
    let pid = spinner.pid.to_string();
    for attempt in 0..ATTACHMENTS {
        let dir = temp_dir();
        let report_path = dir.path().join("report.json");
        let mut tracer = tracer_command();
        tracer.args([
            "--pid",
            &pid,
            "--duration",
            "0.5",
            "--report",
            report_path.to_str().unwrap(),
        ]);
        let out = run_to_completion(tracer, STOP_TIMEOUT);
        out.assert_success();
        assert!(
            out.stderr.starts_with(&ready_prefix(spinner.pid)),
            "{}",
            out.stderr
        );
        let totals = &read_json(&report_path)["totals"];
        assert!(
            as_u64(totals, "allocs") > 1000 && as_u64(totals, "frees") > 1000,
            "attachment {attempt}: ready, then {totals}"
        );
    }
}

#[test]
fn a_probe_that_loses_its_breakpoint_after_the_ready_line_is_reported() {
    require_root();
    let libc = PrivateLibc::new();
    let spinner = libc.spawn(&spinner_bin(), &[]);
    let outputs = temp_dir();
    let tracer = Tracer::spawn(spinner.pid, &["--interval", "0.3"], Some(outputs.path()));
    // Another tool writes the original code back over every breakpoint.
    let restored = restore_code(spinner.pid, &libc.path);
    assert!(restored >= 2, "alloctrace armed {restored} breakpoints");
    let warning = tracer.wait_stderr(Duration::from_secs(10), |line| {
        line.contains("lost its breakpoint")
    });
    assert!(
        warning.starts_with("alloctrace: warning: the probe of ")
            && warning.contains(&format!("in pid {}", spinner.pid)),
        "{warning}"
    );
    tracer.stop(libc::SIGINT).assert_success();
}

/// Children in the fork-and-exec test.
const FORK_EXECS: &str = "200";

#[test]
fn children_that_exec_at_once_run_their_new_program_untouched() {
    require_root();
    let libc = PrivateLibc::new();
    let selfcheck = selfcheck_bin();
    let mut forker = libc.spawn(&forker_bin(), &[selfcheck.to_str().unwrap(), FORK_EXECS]);
    let outputs = temp_dir();
    let tracer = Tracer::spawn(forker.pid, &["--interval", "1h"], Some(outputs.path()));
    forker.go();
    let done = forker.expect_line("done ", DONE_TIMEOUT);
    assert_eq!(done, "done 0", "children whose new program was changed");
    tracer.stop(libc::SIGINT).assert_success();
}

#[test]
fn a_tracers_fork_clean_up_leaves_another_tracers_probes_alone() {
    require_root();
    let libc = PrivateLibc::new();
    // A shell (traced by the first tracer) that starts the spinner (traced
    // by the second), then keeps forking, so the first keeps scanning its
    // descendants.
    let [env, library_path] = libc.env();
    let mut shell = std::process::Command::new(env)
        .arg(library_path)
        .args(["sh", "-c"])
        .arg(format!(
            "exec 3<&0; {} <&3 & while :; do /bin/true; sleep 0.05; done",
            spinner_bin().display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the shell");
    let _stop_the_shell = KillOnDrop(shell.id());
    let mut ready = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut ready)
        .expect("spinner ready");
    let spinner: u32 = ready["ready ".len()..].trim().parse().expect("ready <pid>");
    // The spinner's tracer first: its breakpoints are in place when the
    // shell's tracer first looks at the shell's descendants.
    let outputs = temp_dir();
    let of_spinner = Tracer::spawn(spinner, &["--interval", "0.2"], Some(outputs.path()));
    let of_shell = Tracer::spawn(shell.id(), &["--interval", "1h"], Some(outputs.path()));
    std::thread::sleep(Duration::from_secs(2));
    let armed = code_bytes_changed(spinner, &libc.path);
    let spinner_out = of_spinner.stop(libc::SIGINT);
    of_shell.stop(libc::SIGINT).assert_success();
    drop(shell.stdin.take()); // The spinner exits with its stdin closed.
    shell.kill().ok();
    shell.wait().ok();
    spinner_out.assert_success();
    assert!(
        !spinner_out.stderr.contains("lost its breakpoint"),
        "{}",
        spinner_out.stderr
    );
    assert!(
        armed >= 2,
        "the spinner's breakpoints were removed ({armed} left)"
    );
}

/// SIGKILLs a process started here when dropped, even by a failing test.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// The function name a perf map gives the `jitter` workload's code.
const JIT_NAME: &str = "jitted_leaker";

/// Runs `jitter` (through `launcher` ARGS when given, e.g. chroot), lets
/// `perf_map(pid, address, size)` put its perf map in place, traces it and
/// returns the tracer's stderr and report.
fn trace_jitter(
    launcher: Option<(&Path, Vec<String>)>,
    perf_map: impl FnOnce(u32, &str, &str),
) -> (String, serde_json::Value) {
    let mut jitter = match launcher {
        Some((program, args)) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Workload::spawn_bin(program, &args)
        }
        None => Workload::spawn_bin(&jitter_bin(), &[]),
    };
    let jit = jitter.expect_line("jit ", READY_TIMEOUT);
    let fields: Vec<&str> = jit.split_whitespace().collect();
    perf_map(jitter.pid, fields[1], fields[2]);
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn(
        jitter.pid,
        &["--report".as_ref(), report_path.as_os_str()],
        None,
    );
    jitter.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    (out.stderr, read_json(&report_path))
}

/// The bytes the report puts under stacks whose first frame is `name`.
fn bytes_named(report: &serde_json::Value, name: &str) -> u64 {
    site_totals(report, name).0
}

#[test]
fn a_perf_map_owned_by_the_process_user_names_its_jit_frames() {
    require_root();
    let mut written = None;
    let (stderr, report) = trace_jitter(None, |pid, address, size| {
        let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        fs::write(&path, format!("{address} {size} {JIT_NAME}\n")).unwrap();
        written = Some(path);
    });
    fs::remove_file(written.unwrap()).ok();
    assert!(!stderr.contains("ignoring the perf map"), "{stderr}");
    assert_eq!(
        bytes_named(&report, JIT_NAME),
        4 * 777,
        "{}",
        summarize_report(&report)
    );
}

/// Traces `jitter` with `plant(path, address, size)` making its perf map
/// at `path` (`/tmp/perf-PID.map`) one to refuse; checks that it names
/// nothing and is warned about once, and returns the tracer's stderr.
fn trace_with_a_refused_perf_map(plant: impl FnOnce(&Path, &str, &str)) -> String {
    let mut written = None;
    let (stderr, report) = trace_jitter(None, |pid, address, size| {
        let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        plant(&path, address, size);
        written = Some(path);
    });
    fs::remove_file(written.unwrap()).ok();
    assert_eq!(
        bytes_named(&report, JIT_NAME),
        0,
        "{}",
        summarize_report(&report)
    );
    let warnings = stderr.matches("ignoring the perf map of pid").count();
    assert_eq!(warnings, 1, "{stderr}");
    stderr
}

#[test]
fn a_perf_map_owned_by_another_user_is_ignored_with_a_warning() {
    require_root();
    let stderr = trace_with_a_refused_perf_map(|path, address, size| {
        fs::write(path, format!("{address} {size} {JIT_NAME}\n")).unwrap();
        std::os::unix::fs::chown(path, Some(12345), None).unwrap();
    });
    assert!(stderr.contains("owned by uid 12345"), "{stderr}");
}

#[test]
fn a_perf_map_that_is_a_fifo_is_ignored_without_blocking() {
    require_root();
    let stderr = trace_with_a_refused_perf_map(|path, _, _| {
        integration_tests::debuglink::make_fifo(path);
    });
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[test]
fn a_perf_map_symlinked_out_of_a_chroot_is_not_followed() {
    require_root();
    let dir = temp_dir();
    let root = dir.path().join("root");
    let inside = chroot_with(&jitter_bin(), &root);
    fs::create_dir_all(root.join("tmp")).unwrap();
    // A host file the process must not make alloctrace read.
    let secret = dir.path().join("host-secret.map");
    let chroot = Path::new("/usr/sbin/chroot");
    let launcher = (
        chroot,
        vec![root.display().to_string(), inside.display().to_string()],
    );
    let mut watch = None;
    let (stderr, report) = trace_jitter(Some(launcher), |pid, address, size| {
        fs::write(&secret, format!("{address} {size} host_secret\n")).unwrap();
        std::os::unix::fs::symlink(&secret, root.join(format!("tmp/perf-{pid}.map"))).unwrap();
        watch = Some(integration_tests::debuglink::OpenWatch::new(&[&secret]));
    });
    let watch = watch.unwrap();
    assert_eq!(watch.events(), 0, "{:?} opened or read", watch.paths());
    assert_eq!(
        bytes_named(&report, "host_secret"),
        0,
        "{}",
        summarize_report(&report)
    );
    assert!(
        stderr.contains("ignoring the perf map of pid") && stderr.contains("leads out of"),
        "{stderr}"
    );
}

#[test]
fn outputs_replace_a_planted_symlink_instead_of_following_it() {
    require_root();
    let dir = temp_dir();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let report = dir.path().join("report.json");
    std::os::unix::fs::symlink(&victim, &report).unwrap();
    let mut w = Workload::spawn(Mode::Stay);
    let tracer = Tracer::spawn(w.pid, &["--report".as_ref(), report.as_os_str()], None);
    w.run();
    tracer.stop(libc::SIGINT).assert_success();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(&report).unwrap().is_file());
    assert_report_complete(&read_json(&report), w.pid);
}
