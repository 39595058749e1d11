//! Running on production hosts: what a long-lived service looks like after
//! a package upgrade (its libc and its program deleted or replaced on disk)
//! is traced exactly, in `--pid` and `--all` modes.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use integration_tests::*;

/// Host-wide tracers would trace each other: one at a time.
static ONE_HOST_WIDE_TRACER: Mutex<()> = Mutex::new(());

/// The `leaky` workload run from copies of its program and of libc, both
/// deleted from disk once it runs, as after an upgrade of both packages.
struct UpgradedService {
    workload: Workload,
    /// The deleted libc's path, as the service names it.
    libc: PathBuf,
    _dir: tempfile::TempDir,
}

impl UpgradedService {
    /// `name` is the program's file name (and so its `comm`).
    fn start(name: &str) -> Self {
        let dir = temp_dir();
        let program = dir.path().join(name);
        let lib = dir.path().join("lib");
        fs::create_dir(&lib).expect("mkdir lib");
        let libc = lib.join("libc.so.6");
        fs::copy(leaky_bin(), &program).expect("copy leaky");
        fs::copy(system_libc(), &libc).expect("copy libc");
        // `env` execs the program in place, so the pid is the program's.
        let workload = Workload::spawn_bin(
            Path::new("/usr/bin/env"),
            &[
                &format!("LD_LIBRARY_PATH={}", lib.display()),
                program.to_str().unwrap(),
                "stay",
            ],
        );
        // The upgrade: one file deleted, the other replaced by a new one.
        fs::remove_file(&program).expect("delete the program");
        fs::remove_file(&libc).expect("delete libc");
        fs::write(&libc, b"not the libc the service maps").expect("replace libc");
        let maps = fs::read_to_string(format!("/proc/{}/maps", workload.pid)).unwrap();
        assert!(
            maps.contains(&format!("{} (deleted)", libc.display())),
            "{maps}"
        );
        Self {
            workload,
            libc,
            _dir: dir,
        }
    }
}

/// The libc this test binary maps.
fn system_libc() -> PathBuf {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libc.so.6"))
        .map(PathBuf::from)
        .expect("this test maps libc.so.6")
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
