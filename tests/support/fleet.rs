//! Helpers for tests/fleet.rs: running alloctrace as a service would, with
//! a capability set instead of root, and the Prometheus server that scrapes
//! it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{alloctrace_bin, temp_dir};

/// What `deploy/alloctrace.service` and the DaemonSet grant for `--all`
/// (CAP_CHECKPOINT_RESTORE is wanted, not needed; see
/// tracer/src/privileges.rs).
pub const HOST_WIDE_CAPS: &[&str] = &[
    "bpf",
    "perfmon",
    "sys_ptrace",
    "dac_read_search",
    "checkpoint_restore",
];

/// What `--pid` needs: it writes forked children's `/proc/PID/mem`.
pub const PID_MODE_CAPS: &[&str] = &["bpf", "perfmon", "sys_ptrace", "dac_override"];

/// The unprivileged user the capability tests run alloctrace as.
pub const NOBODY: u32 = 65534;

/// A copy of the tracer that `uid` 65534 can execute (the build tree may
/// sit under a directory only root can enter), and the directory holding it.
pub fn tracer_for_nobody() -> (tempfile::TempDir, PathBuf) {
    let dir = world_writable_dir(0o755);
    let bin = dir.path().join("alloctrace");
    std::fs::copy(alloctrace_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// A temporary directory with `mode` (0o777 for outputs another user writes).
pub fn world_writable_dir(mode: u32) -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// `program` run as `uid` (root when None) holding exactly `caps`: the
/// inheritable, ambient and bounding sets all say the same, so the process
/// cannot regain anything else.
pub fn with_capabilities(uid: Option<u32>, caps: &[&str], program: &Path) -> Command {
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|cap| format!("+{cap}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    if let Some(uid) = uid {
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
        ]);
    }
    cmd.args([
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ])
    .arg(program)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}
