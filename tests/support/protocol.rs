//! A running workload driven through the `ready <pid>` / `go` / `done`
//! protocol on its stdin and stdout ([`Workload`]). The process is
//! SIGKILLed and reaped on drop, so a failing assertion leaves nothing
//! behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::DONE_TIMEOUT;
use crate::child::{LineReader, wait_child};
use crate::leaky_bin;

/// What the leaky workload does after `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stay alive until stdin is closed.
    Stay,
    /// Exit 0 right after `done`.
    Exit,
}

/// A running workload speaking the `ready <pid>` / `go` / `done` protocol.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    pub pid: u32,
}

impl Workload {
    /// Starts the leaky workload and waits for `ready`.
    pub fn spawn(mode: Mode) -> Self {
        let arg = match mode {
            Mode::Stay => "stay",
            Mode::Exit => "exit",
        };
        Self::spawn_bin(&leaky_bin(), &[arg])
    }

    /// Starts any program using the same protocol and waits for `ready <pid>`.
    pub fn spawn_bin(bin: &Path, args: &[&str]) -> Self {
        Self::spawn_bin_in(bin, args, None)
    }

    /// Like [`Workload::spawn_bin`], running in `cwd` when given (for
    /// programs that leave files in their working directory).
    pub fn spawn_bin_in(bin: &Path, args: &[&str], cwd: Option<&Path>) -> Self {
        Self::spawn_bin_waiting(bin, args, cwd, Duration::from_secs(10))
    }

    /// Like [`Workload::spawn_bin_in`], waiting up to `ready_timeout` for
    /// `ready` (a JVM takes seconds to start on a busy machine).
    pub fn spawn_bin_waiting(
        bin: &Path,
        args: &[&str],
        cwd: Option<&Path>,
        ready_timeout: Duration,
    ) -> Self {
        let mut command = Command::new(bin);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command.args(args);
        Self::spawn_command_waiting(command, ready_timeout)
    }

    /// Starts `command` (a program using the same protocol, with its
    /// arguments and environment set) and waits for `ready <pid>`.
    pub fn spawn_command(command: Command) -> Self {
        Self::spawn_command_waiting(command, Duration::from_secs(10))
    }

    /// Like [`Workload::spawn_command`], waiting up to `ready_timeout`.
    pub fn spawn_command_waiting(mut command: Command, ready_timeout: Duration) -> Self {
        let bin = PathBuf::from(command.get_program());
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = LineReader::new(child.stdout.take().unwrap());
        let w = Workload {
            pid: child.id(),
            child,
            stdin,
            stdout,
        };
        let line = w
            .stdout
            .wait_for(ready_timeout, |l| l.starts_with("ready "))
            .unwrap_or_else(|e| panic!("workload {} never printed ready: {e}", bin.display()));
        let pid: u32 = line["ready ".len()..].trim().parse().expect("ready <pid>");
        assert_eq!(pid, w.pid, "workload reported a different pid");
        w
    }

    /// Sends `go`.
    pub fn go(&mut self) {
        self.send("go");
    }

    /// Sends one line on the workload's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .expect("write to workload");
    }

    /// Waits for the next stdout line starting with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        self.stdout
            .wait_for(timeout, |l| l.starts_with(prefix))
            .unwrap_or_else(|e| panic!("workload pid {} never printed {prefix}: {e}", self.pid))
    }

    /// Waits for `done` (all allocations performed).
    pub fn wait_done(&mut self) {
        if let Err(e) = self.stdout.wait_for(DONE_TIMEOUT, |l| l == "done") {
            panic!("workload pid {} never printed done: {e}", self.pid);
        }
    }

    /// `go` then wait for `done`.
    pub fn run(&mut self) {
        self.go();
        self.wait_done();
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes stdin (a `Stay` workload then exits).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_child(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("workload pid {} did not exit within {timeout:?}", self.pid))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
