//! Running `alloctrace`: a [`Tracer`] started against a pid, host-wide or
//! adopted from launch mode, waited on until its ready line; runs to
//! completion ([`run_to_completion`], [`launch`]); and the error contract
//! every refused input must keep ([`assert_clean_error`]). The tracer is
//! SIGKILLed and reaped on drop.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::child::{LineReader, send_signal, wait_child};
use crate::{READY_TIMEOUT, STOP_TIMEOUT, alloctrace_bin, read_json, temp_dir};

/// What a finished tracer produced.
#[derive(Debug)]
pub struct TracerOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl TracerOutput {
    /// Panics unless the tracer exited with status 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "alloctrace failed: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.status,
            self.stderr,
            self.stdout
        );
        let low = self.stderr.to_lowercase();
        assert!(
            !low.contains("panicked"),
            "alloctrace panicked:\n{}",
            self.stderr
        );
    }
}

/// The prefix of the ready line for `pid`.
pub fn ready_prefix(pid: u32) -> String {
    format!("alloctrace: tracing pid {pid} (")
}

/// The prefix of host-wide mode's ready line.
pub const HOST_READY_PREFIX: &str = "alloctrace: tracing all processes (";

/// A running `alloctrace` that has printed its ready line.
pub struct Tracer {
    child: Option<Child>,
    stdout: Option<LineReader>,
    stderr: Option<LineReader>,
    /// The ready line.
    pub ready_line: String,
    /// When the ready line was seen.
    pub ready_at: Instant,
    /// When the process was spawned.
    pub spawned_at: Instant,
}

/// A `Command` for the tracer binary with piped stdout/stderr, run in a
/// scratch directory so that default outputs (`alloctrace-PID.json`, the
/// flamegraph) never land in the checkout; tests that read them set their
/// own directory.
pub fn tracer_command() -> Command {
    let scratch = std::env::temp_dir().join("alloctrace-tests-cwd");
    std::fs::create_dir_all(&scratch).expect("create the tracer's scratch directory");
    let mut c = Command::new(alloctrace_bin());
    c.current_dir(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

impl Tracer {
    /// Runs `alloctrace --pid <pid> <args>` (in `cwd` if given) and waits for
    /// the ready line; panics with the stderr collected so far on failure.
    pub fn spawn<S: AsRef<OsStr>>(pid: u32, args: &[S], cwd: Option<&Path>) -> Self {
        let mut cmd = tracer_command();
        cmd.arg("--pid").arg(pid.to_string()).args(args);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        Self::spawn_command(cmd, pid)
    }

    /// Runs `cmd` (a [`tracer_command`] with its arguments, environment...)
    /// tracing `pid` and waits for the ready line, like [`Tracer::spawn`].
    pub fn spawn_command(mut cmd: Command, pid: u32) -> Self {
        let spawned_at = Instant::now();
        let child = cmd.spawn().expect("spawn alloctrace");
        Self::wait_ready(child, &ready_prefix(pid), spawned_at)
    }

    /// Runs `alloctrace --all <args>` and waits for its ready line.
    pub fn spawn_all<S: AsRef<OsStr>>(args: &[S]) -> Self {
        let mut cmd = tracer_command();
        cmd.arg("--all").args(args);
        Self::spawn_all_command(cmd)
    }

    /// Runs `cmd`, a host-wide tracer however started (under `setpriv`, in a
    /// container), with piped stdout and stderr, and waits for its ready line.
    pub fn spawn_all_command(cmd: Command) -> Self {
        Self::spawn_ready(cmd, HOST_READY_PREFIX)
    }

    /// Waits for a stderr line (after the ready line) satisfying `pred`.
    pub fn wait_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let stderr = self.stderr.as_ref().expect("stderr reader");
        stderr.wait_for(timeout, pred).unwrap_or_else(|e| {
            panic!(
                "alloctrace never printed the expected line ({e})\n--- stderr so far ---\n{}",
                stderr.collected()
            )
        })
    }

    /// Takes over an `alloctrace` started with [`tracer_command`] (e.g. in
    /// launch mode, where the pid is not known in advance) and waits for its
    /// ready line.
    pub fn adopt(child: Child) -> Self {
        Self::wait_ready(child, "alloctrace: tracing pid ", Instant::now())
    }

    /// Runs `cmd` (a [`tracer_command`] with its arguments) and waits for
    /// a ready line starting with `prefix`.
    pub fn spawn_ready(mut cmd: Command, prefix: &str) -> Self {
        let spawned_at = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self::wait_ready(child, prefix, spawned_at)
    }

    fn wait_ready(mut child: Child, prefix: &str, spawned_at: Instant) -> Self {
        let stdout = LineReader::new(child.stdout.take().unwrap());
        let stderr = LineReader::new(child.stderr.take().unwrap());
        let res = stderr.wait_for(READY_TIMEOUT, |l| l.starts_with(prefix));
        let mut t = Tracer {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
            ready_line: String::new(),
            ready_at: Instant::now(),
            spawned_at,
        };
        match res {
            Ok(line) => t.ready_line = line,
            Err(why) => {
                let child = t.child.as_mut().unwrap();
                let status = match child.try_wait() {
                    Ok(Some(st)) => format!("exited with {st}"),
                    _ => "still running (killed)".to_string(),
                };
                let _ = child.kill();
                let _ = child.wait();
                let err = t.stderr.take().unwrap().finish(Duration::from_secs(2));
                panic!(
                    "alloctrace never printed `{prefix}...` ({why}); it {status}\n--- stderr so far ---\n{err}"
                );
            }
        }
        t
    }

    /// The tracer's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the tracer is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// Sends `sig` (e.g. `libc::SIGINT`) and collects the outcome.
    pub fn stop(self, sig: i32) -> TracerOutput {
        send_signal(self.pid(), sig);
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Waits for the tracer to exit on its own and collects the outcome.
    pub fn wait_exit(mut self, timeout: Duration) -> TracerOutput {
        let child = self.child.take().unwrap();
        let stdout = self.stdout.take().unwrap();
        let stderr = self.stderr.take().unwrap();
        collect_output(child, stdout, stderr, timeout, "alloctrace")
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command to completion (killing it after `timeout`), collecting output.
pub fn run_to_completion(mut cmd: Command, timeout: Duration) -> TracerOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = LineReader::new(child.stdout.take().unwrap());
    let stderr = LineReader::new(child.stderr.take().unwrap());
    collect_output(child, stdout, stderr, timeout, &format!("{cmd:?}"))
}

/// Waits up to `timeout` for `child` (`what` names it in the panic), kills
/// it after that, and gathers everything its pipes printed.
fn collect_output(
    mut child: Child,
    stdout: LineReader,
    stderr: LineReader,
    timeout: Duration,
    what: &str,
) -> TracerOutput {
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.finish(Duration::from_secs(5));
    let stderr = stderr.finish(Duration::from_secs(5));
    match status {
        Some(status) => TracerOutput {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not exit within {timeout:?} (killed)\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
        ),
    }
}

/// Asserts the error contract: non-zero exit code (not a signal), stderr is
/// exactly one non-empty line starting with `alloctrace: ` or `error:`, and
/// contains neither `panicked` nor `backtrace`.
pub fn assert_clean_error(out: &TracerOutput, what: &str) {
    let ctx = || {
        format!(
            "[{what}] status: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status, out.stderr, out.stdout
        )
    };
    match out.status.code() {
        Some(0) => panic!("expected a non-zero exit code\n{}", ctx()),
        Some(_) => {}
        None => panic!(
            "expected an exit code, tracer died from a signal\n{}",
            ctx()
        ),
    }
    let low = out.stderr.to_lowercase();
    assert!(
        !low.contains("panicked"),
        "stderr mentions a panic\n{}",
        ctx()
    );
    assert!(
        !low.contains("backtrace"),
        "stderr mentions a backtrace\n{}",
        ctx()
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "stderr must be exactly one non-empty line\n{}",
        ctx()
    );
    assert!(
        lines[0].starts_with("alloctrace: ") || lines[0].starts_with("error:"),
        "the error line must start with `alloctrace: ` or `error:`\n{}",
        ctx()
    );
    assert!(
        lines[0].trim().len() > "alloctrace: ".len(),
        "the error line has no message\n{}",
        ctx()
    );
}

/// Runs `alloctrace <args> -- <command>` to completion and returns its
/// output and the JSON report it wrote (`--report` is added here).
pub fn launch<S: AsRef<OsStr>>(args: &[&str], command: &[S]) -> (TracerOutput, Value) {
    launch_with_env(&[], args, command)
}

/// [`launch`] with extra environment variables (inherited by the command).
pub fn launch_with_env<S: AsRef<OsStr>>(
    env: &[(&str, &str)],
    args: &[&str],
    command: &[S],
) -> (TracerOutput, Value) {
    let dir = temp_dir();
    let report = dir.path().join("report.json");
    let mut cmd = tracer_command();
    cmd.envs(env.iter().copied())
        .args(args)
        .arg("--report")
        .arg(&report)
        .arg("--")
        .args(command);
    let out = run_to_completion(cmd, Duration::from_secs(120));
    assert!(
        report.exists(),
        "alloctrace wrote no report ({})\n--- stderr ---\n{}",
        out.status,
        out.stderr
    );
    let report = read_json(&report);
    (out, report)
}
