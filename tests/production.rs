//! Running on production hosts: what a long-lived service looks like after
//! a package upgrade (its libc and its program deleted or replaced on disk)
//! is traced exactly, in `--pid` and `--all` modes; killing alloctrace at
//! any moment leaves no probe behind, in the target or in the kernel.
//!
//! Tests that could leak a uprobe if alloctrace regressed run their target
//! on a private copy of libc, so the leak would stay on a temporary file.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
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
    require_root();
    let libc = PrivateLibc::new();
    let spinner = libc.spawn(&spinner_bin(), &[]);
    let pid = spinner.pid.to_string();
    let mut moments = Moments::seeded();
    let mut killed = Vec::new();
    for _ in 0..KILLED_TRACERS {
        let mut tracer = tracer_command();
        tracer
            .args(["--pid", &pid, "--interval", "1h"])
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
    let mut spinner = spinner;
    assert!(spinner.is_alive(), "the target died");
}
