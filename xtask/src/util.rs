//! Helpers shared by the subcommands.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// An error that should make xtask exit with a specific code (e.g. a child's
/// exit code we pass through). Everything else exits with 1.
#[derive(Debug)]
pub struct ExitCode(pub i32, pub String);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ExitCode {}

pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    err.downcast_ref::<ExitCode>().map_or(1, |e| e.0)
}

/// The workspace root: the parent of xtask's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// A `Command` for the cargo that launched us (falls back to `cargo` on PATH),
/// running in the workspace root.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Render a command the way a shell user would type it (env overrides first;
/// `cargo` is shown by name rather than by the full path in $CARGO).
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    let program = cmd.get_program();
    let is_cargo = std::env::var_os("CARGO").is_some_and(|c| c == program);
    parts.push(if is_cargo {
        "cargo".to_string()
    } else {
        quote(program)
    });
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Print `+ <command>` to stderr.
pub fn echo(cmd: &Command) {
    eprintln!("+ {}", display(cmd));
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Echo, run with inherited stdio, and fail unless it exits successfully.
/// A failing child's exit code becomes xtask's exit code.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let shown = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{shown}`"))?;
    check(status, &shown)
}

pub fn check(status: ExitStatus, shown: &str) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let code = status.code().unwrap_or(1).max(1);
    Err(ExitCode(
        code,
        format!("`{shown}` failed ({})", describe_status(status)),
    )
    .into())
}

/// Run a read-only probe quietly and return its stdout if it succeeded, or
/// `None` if it failed or the program does not exist. Probes are not echoed:
/// setup reports each check as one `ok: …` line instead.
pub fn probe<I, S>(program: &str, args: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fail with a clear message unless running as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "not running as root (uid {euid}): cargo xtask installs apt packages and alloctrace loads eBPF uprobes, re-run as root"
        );
    }
    Ok(())
}

/// Compiles the C program `source` (relative to the workspace root) with
/// `cc` and `flags` into `out/name`; returns the binary's path.
pub fn compile_c(source: &str, out: &Path, name: &str, flags: &[&str]) -> Result<PathBuf> {
    let bin = out.join(name);
    run(Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(workspace_root().join(source)))
    .with_context(|| format!("compiling {source}"))?;
    Ok(bin)
}
