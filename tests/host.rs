//! Host-wide mode (`alloctrace --all`): services started after the tracer
//! are traced exactly, per pid, whatever binary or mount namespace they run
//! from; a storm of short-lived processes leaves no ledger behind; filters
//! keep other processes out; the tracer never traces itself.
//!
//! The services are the `leaky` workload (known sites, see [`SITES`]),
//! built once with frame pointers and once without (`leaky_nofp`): the
//! sites are `frames[0]`, the allocator's caller, which the kernel finds
//! from the return probe's registers even without frame pointers.
//!
//! Two host-wide tracers would trace each other (each one's allocations
//! are events for the other), so these tests run one at a time.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use integration_tests::{production::chroot_with, *};
use serde_json::Value;

static ONE_HOST_WIDE_TRACER: Mutex<()> = Mutex::new(());

/// Short-lived processes in the storm.
const STORM: u64 = 300;
/// What each storm process leaks (storm.c).
const STORM_BYTES: u64 = 100;
const INTERVAL: Duration = Duration::from_millis(500);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_HOST_WIDE_TRACER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `leaky`'s allocations, and waits for the ticks to see them.
fn run_services(services: &mut [&mut Workload]) {
    for service in services.iter_mut() {
        service.go();
    }
    for service in services.iter_mut() {
        service.wait_done();
    }
}

/// Every site of `pid`'s entry has exactly the expected bytes and count.
fn assert_service_sites(report: &Value, pid: u32, comm: &str) {
    let entry = process_entry(report, pid);
    assert_eq!(entry["comm"], comm, "{entry}");
    assert_sites_exact(&report_of_process(report, pid));
}

/// Runs the storm: `STORM` processes, one after the other, from a shell.
fn run_storm() {
    let storm = storm_bin();
    let script = format!(
        "i=0; while [ $i -lt {STORM} ]; do {}; i=$((i+1)); done",
        storm.display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run the storm");
    assert!(status.success());
}

/// A host-wide tracer writing its report into a temporary directory, with
/// no ticks during the test.
struct HostRun {
    tracer: Tracer,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostRun {
    fn start(filters: &[&str]) -> Self {
        let dir = temp_dir();
        let report = dir.path().join("report.json");
        let mut args: Vec<&str> = filters.to_vec();
        args.extend(["--interval", "1h", "--report", report.to_str().unwrap()]);
        Self {
            tracer: Tracer::spawn_all(&args),
            report,
            _dir: dir,
        }
    }

    /// Lets the last events arrive, stops the tracer and reads its report.
    fn finish(self) -> Value {
        std::thread::sleep(SETTLE);
        self.tracer.stop(libc::SIGINT).assert_success();
        read_json(&self.report)
    }
}

/// The pids a report has an entry for.
fn report_pids(report: &Value) -> Vec<u64> {
    processes(report).iter().map(|p| as_u64(p, "pid")).collect()
}

fn pids_of(tick: &Value) -> Vec<(u64, String)> {
    tick["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("tick without `processes`: {tick}"))
        .iter()
        .map(|p| {
            for key in ["outstanding_bytes", "outstanding_count"] {
                as_u64(p, key);
            }
            as_f64(p, "growth_bytes_per_s");
            (
                as_u64(p, "pid"),
                p["comm"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[test]
fn one_run_attributes_every_site_of_each_service_by_pid_and_forgets_the_storm() {
    require_root();
    let _serial = serial();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let folded_path = dir.path().join("all.folded");
    let flames = dir.path().join("flames");
    let tracer = Tracer::spawn_all(&[
        "--interval".as_ref(),
        "0.5".as_ref(),
        "--log-format".as_ref(),
        "json".as_ref(),
        "--top".as_ref(),
        "50".as_ref(),
        "--report".as_ref(),
        report_path.as_os_str(),
        "--folded".as_ref(),
        folded_path.as_os_str(),
        "--flamegraph".as_ref(),
        dir.path().join("all.svg").as_os_str(),
        "--flamegraph-dir".as_ref(),
        flames.as_os_str(),
    ]);
    let mut with_fp = Workload::spawn_bin(&leaky_bin(), &["stay"]);
    let mut without_fp = Workload::spawn_bin(&leaky_nofp_bin(), &["stay"]);
    std::thread::sleep(2 * INTERVAL);
    run_storm();
    run_services(&mut [&mut with_fp, &mut without_fp]);
    std::thread::sleep(SETTLE + 4 * INTERVAL);
    let tracer_pid = tracer.pid();
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let report = read_json(&report_path);

    assert_service_sites(&report, with_fp.pid, "leaky");
    assert_service_sites(&report, without_fp.pid, "leaky_nofp");
    assert!(
        processes(&report)
            .iter()
            .all(|p| as_u64(p, "pid") != u64::from(tracer_pid)),
        "the tracer traced itself"
    );

    // Each storm process ended with its 100 bytes outstanding: its final
    // numbers are kept, but it holds no ledger any more.
    let storm: Vec<&Value> = processes(&report)
        .iter()
        .filter(|p| p["comm"] == "storm")
        .collect();
    assert_eq!(storm.len() as u64, STORM, "storm processes in the report");
    for process in &storm {
        assert_eq!(
            as_u64(&process["totals"], "outstanding_bytes"),
            STORM_BYTES,
            "{process}"
        );
    }
    assert!(
        processes(&report).len() <= 1000 + 200,
        "the report is bounded: {} processes",
        processes(&report).len()
    );
    let ticks = parse_ticks(&out.stdout);
    let before = ticks.first().expect("a tick before the storm");
    let last = ticks.last().expect("a tick after the storm");
    let tracked = |tick: &Value| as_u64(tick, "tracked_processes");
    assert!(
        tracked(last) <= tracked(before) + 20,
        "the storm left ledgers behind: {} tracked before it, {} after",
        tracked(before),
        tracked(last)
    );
    assert!(as_u64(last, "exited_processes") >= STORM, "{last}");
    assert!(as_u64(&report, "exited_processes") >= STORM);

    // Once the services allocated, they grew fastest: ranked above every
    // storm process, both in the tick that saw it.
    let services = [u64::from(with_fp.pid), u64::from(without_fp.pid)];
    let growing = ticks
        .iter()
        .find(|tick| {
            let listed = pids_of(tick);
            services
                .iter()
                .all(|pid| listed.iter().any(|(p, _)| p == pid))
                && tick["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| services.contains(&as_u64(p, "pid")))
                    .all(|p| as_f64(p, "growth_bytes_per_s") > 0.0)
        })
        .unwrap_or_else(|| panic!("no tick shows both services growing:\n{}", out.stdout));
    let listed = pids_of(growing);
    let rank = |pid: u64| listed.iter().position(|(p, _)| *p == pid).unwrap();
    for (position, (_, comm)) in listed.iter().enumerate() {
        if comm == "storm" || comm == "sh" {
            assert!(
                services.iter().all(|&pid| rank(pid) < position),
                "a storm process ranks above a service: {growing}"
            );
        }
    }
    for pid in services {
        let entry = &growing["processes"][rank(pid)];
        assert!(
            !entry["top"].as_array().unwrap().is_empty(),
            "a ranked process shows its top stacks: {entry}"
        );
    }

    // The combined outputs hang every stack under its process.
    let folded = parse_folded(&std::fs::read_to_string(&folded_path).unwrap());
    for (pid, comm) in [(with_fp.pid, "leaky"), (without_fp.pid, "leaky_nofp")] {
        let root = format!("{comm} ({pid})");
        let mine: Vec<_> = folded
            .iter()
            .filter(|(stack, _)| stack[0] == root)
            .cloned()
            .collect();
        for site in leak_sites() {
            assert_eq!(
                folded_site_bytes(&mine, site.name),
                site.bytes,
                "{root} {}",
                site.name
            );
        }
        let svg = std::fs::read_to_string(flames.join(format!("{comm}-{pid}.svg")))
            .expect("a flamegraph per process");
        assert_svg_wellformed(&svg);
    }
    let svg = std::fs::read_to_string(dir.path().join("all.svg")).unwrap();
    assert_svg_wellformed(&svg);
    assert!(svg.contains(&format!("leaky_nofp ({})", without_fp.pid)));
}

#[test]
fn a_comm_filter_traces_only_the_named_processes_and_keeps_those_that_exited() {
    require_root();
    let _serial = serial();
    let run = HostRun::start(&["--comm", "leaky_nofp"]);
    let mut with_fp = Workload::spawn_bin(&leaky_bin(), &["stay"]);
    let mut without_fp = Workload::spawn_bin(&leaky_nofp_bin(), &["stay"]);
    run_services(&mut [&mut with_fp, &mut without_fp]);
    // It exits before the report is written: its final numbers stay, with
    // the frames named while it ran (after a drain of the tracer's, every
    // 10 ms, has seen them: the workload would otherwise exit within
    // milliseconds of its `done`).
    std::thread::sleep(SETTLE);
    without_fp.close_stdin();
    without_fp.wait_exit(DONE_TIMEOUT);
    let report = run.finish();
    assert_eq!(as_u64(&report, "tracked_processes"), 0, "no ledger is left");
    let comms: Vec<&str> = processes(&report)
        .iter()
        .map(|p| p["comm"].as_str().unwrap_or("?"))
        .collect();
    assert!(comms.iter().all(|&c| c == "leaky_nofp"), "{comms:?}");
    assert_service_sites(&report, without_fp.pid, "leaky_nofp");
}

#[test]
fn a_process_that_renames_itself_into_the_comm_filter_is_traced_from_then_on() {
    require_root();
    let _serial = serial();
    let run = HostRun::start(&["--comm", "renamed_svc"]);
    // It allocates as `leaky` first (its stdout buffer), which the filter
    // rejects, then renames itself and runs every site.
    let mut renamed = Workload::spawn_bin(&leaky_bin(), &["stay", "renamed_svc"]);
    run_services(&mut [&mut renamed]);
    let report = run.finish();
    assert_service_sites(&report, renamed.pid, "renamed_svc");
}

#[test]
fn the_tracer_and_excluded_processes_are_never_traced() {
    require_root();
    let _serial = serial();
    let mut excluded = Workload::spawn(Mode::Stay);
    let pid = excluded.pid.to_string();
    let run = HostRun::start(&[
        "--exclude-pid",
        &pid,
        "--comm",
        "leaky",
        "--comm",
        "alloctrace",
    ]);
    let tracer_pid = u64::from(run.tracer.pid());
    let mut traced = Workload::spawn(Mode::Stay);
    run_services(&mut [&mut excluded, &mut traced]);
    let report = run.finish();
    let pids = report_pids(&report);
    assert!(
        !pids.contains(&tracer_pid),
        "the tracer traced itself: {pids:?}"
    );
    assert!(!pids.contains(&u64::from(excluded.pid)), "{pids:?}");
    assert_service_sites(&report, traced.pid, "leaky");
}

#[test]
fn a_process_in_its_own_mount_namespace_with_a_copy_of_libc_is_traced() {
    require_root();
    let _serial = serial();
    let dir = temp_dir();
    let root = dir.path().join("root");
    let inside = chroot_with(&leaky_bin(), &root);
    let run = HostRun::start(&[]);
    // unshare and chroot each exec the next program: one pid throughout.
    let unshare = which("unshare");
    let mut contained = Workload::spawn_bin(
        &unshare,
        &[
            "--mount",
            "chroot",
            root.to_str().unwrap(),
            inside.to_str().unwrap(),
            "stay",
        ],
    );
    let probing = format!("(found in pid {})", contained.pid);
    let line = run
        .tracer
        .wait_stderr(Duration::from_secs(10), |line| line.contains(&probing));
    assert!(line.contains("probing libc"), "{line}");
    contained.run();
    let report = run.finish();
    assert_service_sites(&report, contained.pid, "leaky");
}

fn which(program: &str) -> PathBuf {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{program} is not installed"))
}

#[test]
fn host_wide_flags_are_checked_before_anything_is_attached() {
    let run = |args: &[&str]| {
        let mut cmd = tracer_command();
        cmd.args(args);
        run_to_completion(cmd, Duration::from_secs(30))
    };
    for (args, what) in [
        (&["--all", "--pid", "1"][..], "--all with --pid"),
        (&["--comm", "x", "--pid", "1"][..], "--comm without --all"),
        (
            &["--all", "--comm", "a-name-longer-than-15"][..],
            "long --comm",
        ),
        (
            &["--all", "--cgroup", "/no/such/cgroup"][..],
            "bad --cgroup",
        ),
        (&["--all", "--pprof", "x.pb.gz"][..], "--pprof with --all"),
    ] {
        assert_clean_error(&run(args), what);
    }
}

/// Where cgroup v2 is mounted (unified, or hybrid beside v1).
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("cgroup v2 is mounted")
}

/// A child cgroup, removed (after its processes are moved out) on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> Self {
        let path = cgroup2_mount().join(format!("alloctrace-test-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a cgroup");
        Self(path)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        let parent = self.0.parent().unwrap().join("cgroup.procs");
        for pid in procs.lines() {
            let _ = std::fs::write(&parent, pid);
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_cgroup_filter_traces_only_the_processes_in_it() {
    require_root();
    let _serial = serial();
    let cgroup = TestCgroup::new();
    let mut inside = Workload::spawn(Mode::Stay);
    cgroup.add(inside.pid);
    let run = HostRun::start(&["--cgroup", cgroup.0.to_str().unwrap()]);
    let mut outside = Workload::spawn(Mode::Stay);
    run_services(&mut [&mut inside, &mut outside]);
    let report = run.finish();
    let pids = report_pids(&report);
    assert_eq!(
        pids,
        [u64::from(inside.pid)],
        "only the process in the cgroup"
    );
    assert_service_sites(&report, inside.pid, "leaky");
}
