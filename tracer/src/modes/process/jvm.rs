//! `--jvm-perfmap`: asks a HotSpot JVM to write its perf map
//! (`jcmd PID Compiler.perfmap`, JDK 17+) at attach time and at each
//! summary, so its JIT-compiled Java methods are named in stacks.
//!
//! Opt-in because it makes the target write a file (`/tmp/perf-PID.map`,
//! in its own mount namespace). jcmd attaches through HotSpot's attach
//! mechanism, which starts with a SIGQUIT to the target: a process that
//! is not a JVM, or a JVM that does not catch SIGQUIT (`-Xrs`), would die
//! of it, so jcmd runs only when the target maps `libjvm.so` and catches
//! SIGQUIT. It runs as the target's user (the attach mechanism accepts no
//! other, and the tracer's privileges are not lent to it). Every failure
//! is one warning, after which the run goes on with JIT frames unnamed.

use std::{
    io::Read as _,
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// How long the final summary waits for jcmd; a JVM at a safepoint stall
/// may take a while, but the tracer's exit must not hang on it.
const JCMD_TIMEOUT: Duration = Duration::from_secs(10);

const SIGQUIT_BIT: u64 = 1 << (libc::SIGQUIT - 1);

pub struct JvmPerfMap {
    pid: u32,
    /// A jcmd started at the last summary, not yet reaped.
    running: Option<Child>,
    /// A failure was reported: asking again would repeat it.
    gave_up: bool,
}

/// Why jcmd was not run (or failed), as the warning says it.
enum Refusal {
    /// Not (yet) a JVM: launch mode's command before its exec, or a wrong pid.
    NotAJvm,
    Failed(String),
}

impl JvmPerfMap {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            running: None,
            gave_up: false,
        }
    }

    /// Has the JVM write its perf map now and waits for it (attach time,
    /// the final summary). `quiet_if_not_jvm`: launch mode's command is not
    /// a JVM until it has run.
    pub fn write_now(&mut self, quiet_if_not_jvm: bool) {
        if let Some(child) = self.running.take() {
            let outcome = wait(child);
            self.judge(outcome);
        }
        if self.gave_up {
            return;
        }
        let outcome = self.spawn().and_then(wait);
        match outcome {
            Err(Refusal::NotAJvm) if quiet_if_not_jvm => {}
            outcome => self.judge(outcome),
        }
    }

    /// Starts jcmd unless one is still running (each periodic summary); the
    /// next refresh of the symbols reads what it wrote.
    pub fn request(&mut self) {
        if let Some(child) = &mut self.running {
            match child.try_wait() {
                Ok(None) => return,
                _ => {
                    let child = self.running.take().expect("checked above");
                    let outcome = wait(child);
                    self.judge(outcome);
                }
            }
        }
        if self.gave_up {
            return;
        }
        match self.spawn() {
            Ok(child) => self.running = Some(child),
            // Launch mode: the JVM may not have started yet.
            Err(Refusal::NotAJvm) => {}
            Err(refusal) => self.judge(Err(refusal)),
        }
    }

    fn judge(&mut self, outcome: Result<(), Refusal>) {
        let why = match outcome {
            Ok(()) => return,
            Err(Refusal::NotAJvm) => format!(
                "pid {} is not a JVM that can be asked (no libjvm.so mapped, or SIGQUIT not \
                 caught, as with -Xrs)",
                self.pid
            ),
            Err(Refusal::Failed(why)) => why,
        };
        self.gave_up = true;
        eprintln!("alloctrace: warning: --jvm-perfmap: {why}; Java frames stay unnamed");
    }

    fn spawn(&self) -> Result<Child, Refusal> {
        let owner = askable_jvm(self.pid).ok_or(Refusal::NotAJvm)?;
        Command::new("jcmd")
            .arg(self.pid.to_string())
            .arg("Compiler.perfmap")
            .uid(owner.uid)
            .gid(owner.gid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => {
                    Refusal::Failed("jcmd not found on PATH (it comes with the JDK)".to_owned())
                }
                _ => Refusal::Failed(format!("cannot run jcmd: {error}")),
            })
    }
}

/// Waits for jcmd (killing it past [`JCMD_TIMEOUT`]) and reads its verdict.
fn wait(mut child: Child) -> Result<(), Refusal> {
    let deadline = Instant::now() + JCMD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Refusal::Failed(format!(
                    "jcmd did not answer within {}s",
                    JCMD_TIMEOUT.as_secs()
                )));
            }
        }
    };
    let mut output = String::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let _ = stream.take(64 << 10).read_to_string(&mut output);
    }
    verdict(status, &output)
}

/// jcmd exits 0 even when the JVM refuses the command (an unknown one, on a
/// JVM before 17), so its output decides.
fn verdict(status: ExitStatus, output: &str) -> Result<(), Refusal> {
    if status.success() && output.contains("Command executed successfully") {
        return Ok(());
    }
    let line = output
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.ends_with(':'))
        .unwrap_or("no output");
    Err(Refusal::Failed(format!(
        "jcmd Compiler.perfmap failed ({status}): {line} (it needs JDK 17 or later)"
    )))
}

struct Owner {
    uid: u32,
    gid: u32,
}

/// The owner of `pid` if it is a JVM that survives the attach handshake:
/// it maps `libjvm.so` and catches SIGQUIT.
fn askable_jvm(pid: u32) -> Option<Owner> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if !maps.lines().any(|line| line.ends_with("/libjvm.so")) {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::split_whitespace)
    };
    let caught = u64::from_str_radix(field("SigCgt:")?.next()?, 16).ok()?;
    if caught & SIGQUIT_BIT == 0 {
        return None;
    }
    // Effective ids: the second of real, effective, saved, filesystem.
    let uid = field("Uid:")?.nth(1)?.parse().ok()?;
    let gid = field("Gid:")?.nth(1)?.parse().ok()?;
    Some(Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn only_the_success_line_counts_as_success() {
        let ok = ExitStatus::from_raw(0);
        assert!(verdict(ok, "1234:\nCommand executed successfully\n").is_ok());
        let Err(Refusal::Failed(why)) = verdict(
            ok,
            "1234:\nUnknown diagnostic command\n\nFor more information about a specific \
             command use 'help <command>'.\n",
        ) else {
            panic!("an unknown command is a failure");
        };
        assert!(why.contains("Unknown diagnostic command"), "{why}");
    }

    #[test]
    fn this_test_process_is_not_a_jvm() {
        assert!(askable_jvm(std::process::id()).is_none());
    }
}
