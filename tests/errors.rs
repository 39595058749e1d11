//! Error handling: non-zero exit, exactly one stderr line starting with
//! `alloctrace: ` (or `error:`), no panic/backtrace, no output file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::*;

const ERR_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the tracer in `cwd` and checks the error contract plus "no file in
/// `cwd`" (where default outputs would go; explicit outputs also point there).
fn expect_error(what: &str, args: &[&str], cwd: &Path) {
    let mut cmd = tracer_command();
    cmd.args(args).current_dir(cwd);
    let out = run_to_completion(cmd, ERR_TIMEOUT);
    assert_clean_error(&out, what);
    let left = dir_entries(cwd);
    assert!(
        left.is_empty(),
        "[{what}] output files were created: {left:?}\n{}",
        out.stderr
    );
}

#[test]
fn not_root() {
    require_root();
    let w = Workload::spawn(Mode::Stay);
    // Copy the binary somewhere uid 65534 can execute it.
    let bin_dir = temp_dir();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("alloctrace");
    std::fs::copy(alloctrace_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An output dir the unprivileged user could write to, so "no file" means something.
    let out_dir = temp_dir();
    std::fs::set_permissions(out_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let report = out_dir.path().join("r.json");

    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(&bin)
    .args(["--pid", &w.pid.to_string(), "--duration", "2s", "--report"])
    .arg(&report)
    .current_dir(out_dir.path());
    let out = run_to_completion(cmd, ERR_TIMEOUT);
    assert!(
        !out.stderr.starts_with("setpriv:"),
        "setpriv itself failed (test environment problem):\n{}",
        out.stderr
    );
    assert_clean_error(&out, "not root");
    assert!(
        dir_entries(out_dir.path()).is_empty(),
        "output created: {:?}",
        dir_entries(out_dir.path())
    );
}

#[test]
fn root_without_bpf_capabilities() {
    require_root();
    let w = Workload::spawn(Mode::Stay);
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--inh-caps=-bpf,-perfmon,-sys_admin",
        "--bounding-set=-bpf,-perfmon,-sys_admin",
    ])
    .arg(alloctrace_bin())
    .args(["--pid", &w.pid.to_string(), "--duration", "2s", "--report"])
    .arg(&report)
    .current_dir(dir.path());
    let out = run_to_completion(cmd, ERR_TIMEOUT);
    assert!(
        !out.stderr.starts_with("setpriv:"),
        "setpriv itself failed (test environment problem):\n{}",
        out.stderr
    );
    assert_clean_error(&out, "root without CAP_BPF");
    assert!(out.stderr.contains("CAP_BPF"), "{}", out.stderr);
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn pid_exiting_around_attach_ends_cleanly() {
    require_root();
    // Targets that exit before, during or just after the attach: each run
    // must end in a one-line error with no output, or a complete report of
    // a target that exited while traced; never a panic or a hang.
    let mut outcomes = Vec::new();
    for delay_ms in [0, 2, 5, 10, 20, 40, 80, 160, 320] {
        let dir = temp_dir();
        let report = dir.path().join("r.json");
        let mut target = Command::new("sleep")
            .arg(format!("{}", delay_ms as f64 / 1000.0))
            .spawn()
            .unwrap();
        let mut cmd = tracer_command();
        cmd.args(["--pid", &target.id().to_string(), "--report"])
            .arg(&report)
            .current_dir(dir.path());
        let out = run_to_completion(cmd, ERR_TIMEOUT);
        target.wait().unwrap();
        if out.status.success() {
            let report = read_json(&report);
            assert_eq!(processes(&report).len(), 1, "{report}");
            assert!(out.stderr.contains("exited"), "{}", out.stderr);
            outcomes.push(format!("{delay_ms}ms: traced until exit"));
        } else {
            assert_clean_error(&out, &format!("target exiting after {delay_ms} ms"));
            assert!(dir_entries(dir.path()).is_empty());
            outcomes.push(format!("{delay_ms}ms: {}", out.stderr.trim()));
        }
    }
    println!("{}", outcomes.join("\n"));
}

#[test]
fn no_such_pid() {
    require_root();
    // Above the largest possible pid_max (2^22), so it can never exist.
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    let report = report.to_str().unwrap();
    expect_error(
        "pid 4194303",
        &["--pid", "4194303", "--duration", "2s", "--report", report],
        dir.path(),
    );

    // A child that has exited and been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id().to_string();
    child.wait().unwrap();
    expect_error(
        "reaped pid",
        &["--pid", &pid, "--duration", "2s", "--report", report],
        dir.path(),
    );
}

#[test]
fn stripped_static_binary_has_nothing_to_probe() {
    require_root();
    // A static executable keeps its allocator's symbols unless stripped;
    // stripped, there is no `malloc` to find.
    let dir = temp_dir();
    let stripped = dir.path().join("static_stripped");
    std::fs::copy(static_target_bin(), &stripped).unwrap();
    let status = Command::new("strip")
        .arg(&stripped)
        .status()
        .expect("run strip");
    assert!(status.success());
    let w = Workload::spawn_bin(&stripped, &[]);
    let out_dir = temp_dir();
    let report = out_dir.path().join("r.json");
    let pid = w.pid.to_string();
    expect_error(
        "stripped static binary",
        &[
            "--pid",
            &pid,
            "--duration",
            "2s",
            "--report",
            report.to_str().unwrap(),
        ],
        out_dir.path(),
    );
}

#[test]
fn launch_mode_input_errors() {
    require_root();
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    let report = report.to_str().unwrap();
    let w = Workload::spawn(Mode::Stay);
    let pid = w.pid.to_string();
    let cases: &[(&str, &[&str])] = &[
        (
            "--pid with a command",
            &["--pid", &pid, "--report", report, "--", "true"],
        ),
        ("no target", &["--report", report]),
        (
            "missing command",
            &["--report", report, "--", "/nonexistent/cmd"],
        ),
        (
            "command not on PATH",
            &["--report", report, "--", "no-such-command-xyz"],
        ),
        (
            "not executable",
            &["--report", report, "--", "/etc/hostname"],
        ),
        (
            "--allocator-lib missing",
            &[
                "--allocator-lib",
                "/nonexistent.so",
                "--report",
                report,
                "--",
                "true",
            ],
        ),
        (
            "--allocator-lib not mapped",
            &[
                "--allocator-lib",
                "/bin/true",
                "--pid",
                &pid,
                "--report",
                report,
            ],
        ),
        (
            "bad --max-tracked",
            &["--max-tracked", "0", "--report", report, "--", "true"],
        ),
    ];
    for (what, args) in cases {
        expect_error(what, args, dir.path());
    }
}

#[test]
fn unwritable_output_paths() {
    require_root();
    assert!(
        !Path::new("/nonexistent-dir").exists(),
        "/nonexistent-dir must not exist"
    );
    let w = Workload::spawn(Mode::Stay);
    let pid = w.pid.to_string();
    for (flag, path) in [
        ("--report", "/nonexistent-dir/x.json"),
        ("--flamegraph", "/nonexistent-dir/x.svg"),
        ("--folded", "/nonexistent-dir/x.folded"),
    ] {
        let dir = temp_dir();
        expect_error(
            &format!("{flag} {path}"),
            &["--pid", &pid, "--duration", "2s", flag, path],
            dir.path(),
        );
    }
    assert!(
        !Path::new("/nonexistent-dir").exists(),
        "the tracer created /nonexistent-dir"
    );
}

#[test]
fn bad_flag_values() {
    require_root();
    let w = Workload::spawn(Mode::Stay);
    let pid = w.pid.to_string();
    let cases: &[&[&str]] = &[
        &["--interval", "abc"],
        &["--interval", "0"],
        &["--duration", "abc"],
        &["--min-age", "abc"],
        &["--log-format", "xml"],
        &["--top", "abc"],
        &["--top", "0"],
        &["--ring-size", "abc"],
    ];
    for case in cases {
        let dir = temp_dir();
        let report = dir.path().join("r.json");
        let mut args = vec!["--pid", &pid, "--report", report.to_str().unwrap()];
        args.extend_from_slice(case);
        expect_error(&case.join(" "), &args, dir.path());
    }
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    expect_error(
        "--pid abc",
        &["--pid", "abc", "--report", report.to_str().unwrap()],
        dir.path(),
    );
}

/// Starts `probe_holder SECONDS` with the C library in `libc_dir` and
/// waits until it holds its probe.
fn hold_mallocs_probe(seconds: u32, libc_dir: &Path) -> std::process::Child {
    let mut holder = Command::new(probe_holder_bin())
        .arg(seconds.to_string())
        .env("LD_LIBRARY_PATH", libc_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start probe_holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("holding"), "probe_holder said {line:?}");
    holder
}

#[test]
fn a_probe_another_tool_holds_is_waited_for_then_explained() {
    require_root();
    // The holder and the workload share a libc of their own, so probes
    // that concurrent tests place on the system's cannot meet theirs.
    let libc = private_libc();
    let mut workload = Command::new(leaky_bin());
    workload.arg("stay").env("LD_LIBRARY_PATH", libc.path());
    let w = Workload::spawn_command(workload);
    let pid = w.pid.to_string();
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    let report = report.to_str().unwrap();
    let args = ["--pid", &pid, "--duration", "1", "--report", report];

    // Held for longer than alloctrace waits: one clean line, nothing left.
    let mut holder = hold_mallocs_probe(10, libc.path());
    let mut cmd = tracer_command();
    cmd.args(args).current_dir(dir.path());
    let out = run_to_completion(cmd, ERR_TIMEOUT);
    holder.kill().ok();
    holder.wait().ok();
    assert_clean_error(&out, "probe held by another tool");
    assert!(out.stderr.contains("ref_ctr_offset"), "{}", out.stderr);
    assert!(dir_entries(dir.path()).is_empty());

    // Let go within the wait: alloctrace attaches and traces.
    let mut holder = hold_mallocs_probe(1, libc.path());
    let mut cmd = tracer_command();
    cmd.args(args).current_dir(dir.path());
    let out = run_to_completion(cmd, ERR_TIMEOUT);
    holder.wait().ok();
    out.assert_success();
    assert!(
        out.stderr.contains("alloctrace: tracing pid"),
        "{}",
        out.stderr
    );
}
