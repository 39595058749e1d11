//! Target resolution: from a PID to the process's name, executable and the
//! libc it actually maps, read from `/proc`.
//!
//! Paths are opened through `/proc/PID/root`, so a process in a container
//! (another mount namespace, its own copy of libc) resolves to the file it
//! really uses, not to the host's libc at the same path.

use std::path::{Path, PathBuf};

use procfs::{ProcError, process::MMapPath};
use thiserror::Error;

/// A process to trace.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    /// The executable, as the process names it.
    pub exe: PathBuf,
    pub libc: Libc,
}

/// The C library a target maps.
#[derive(Debug, Clone)]
pub struct Libc {
    /// Path as it appears in the target's mount namespace.
    pub path: PathBuf,
    /// The same file, reachable from the tracer's namespace.
    pub host_path: PathBuf,
}

/// Why a PID cannot be traced; callers turn these into one-line messages.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error(
        "pid {pid} ({exe}) does not map a dynamic libc (statically linked or another C library); \
         alloctrace traces glibc's allocator through its shared library"
    )]
    NoLibc { pid: u32, exe: String },
    #[error("cannot read /proc/{pid}: {source}")]
    Proc { pid: u32, source: ProcError },
}

impl Target {
    pub fn resolve(pid: u32) -> Result<Self, TargetError> {
        let proc_err = |source: ProcError| match source {
            ProcError::NotFound(_) => TargetError::NoSuchProcess(pid),
            source => TargetError::Proc { pid, source },
        };
        let pid_i32 = i32::try_from(pid).map_err(|_| TargetError::NoSuchProcess(pid))?;
        let process = procfs::process::Process::new(pid_i32).map_err(proc_err)?;
        let stat = process.stat().map_err(proc_err)?;
        if stat.state == 'Z' {
            return Err(TargetError::NoSuchProcess(pid));
        }
        let exe = process.exe().unwrap_or_else(|_| PathBuf::from(&stat.comm));
        let maps = process.maps().map_err(proc_err)?;
        let libc_path = maps
            .iter()
            .filter_map(|map| match &map.pathname {
                MMapPath::Path(path) => Some(path),
                _ => None,
            })
            .find(|path| is_glibc(path))
            .cloned()
            .ok_or_else(|| TargetError::NoLibc {
                pid,
                exe: exe.display().to_string(),
            })?;
        Ok(Self {
            pid,
            comm: stat.comm,
            exe,
            libc: Libc {
                host_path: in_process_root(pid, &libc_path),
                path: libc_path,
            },
        })
    }

    /// Whether the process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        procfs::process::Process::new(self.pid as i32)
            .and_then(|process| process.stat())
            .is_ok_and(|stat| stat.state != 'Z')
    }
}

/// `/proc/PID/root` + `path`: the file the process sees at `path`.
pub fn in_process_root(pid: u32, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    PathBuf::from(format!("/proc/{pid}/root")).join(relative)
}

/// glibc's shared object: `libc.so.6` (and the older `libc-2.NN.so`).
fn is_glibc(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| {
            name == "libc.so.6" || (name.starts_with("libc-") && name.ends_with(".so"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_glibc_file_names() {
        assert!(is_glibc(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6")));
        assert!(is_glibc(Path::new("/lib64/libc-2.17.so")));
        assert!(!is_glibc(Path::new("/usr/lib/libcrypto.so.3")));
        assert!(!is_glibc(Path::new("/usr/lib/libc.so.6.bak")));
    }

    #[test]
    fn paths_resolve_through_the_process_root() {
        assert_eq!(
            in_process_root(42, Path::new("/usr/lib/libc.so.6")),
            PathBuf::from("/proc/42/root/usr/lib/libc.so.6")
        );
    }

    #[test]
    fn resolves_this_process_and_its_libc() {
        let target = Target::resolve(std::process::id()).expect("resolve self");
        assert!(target.libc.host_path.exists());
        assert!(target.is_alive());
    }
}
