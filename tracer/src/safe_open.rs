//! Opening files on behalf of a target, safely: inside the target's root,
//! and trusting a perf map only as `perf` does.
//!
//! A path the target names (its perf map in its `/tmp`, a library by name)
//! is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from
//! its `/proc/PID/root`: an absolute symlink the process planted in its
//! root (a container's `/tmp/perf-PID.map` pointing at `/etc/shadow`, say)
//! then resolves inside that root, never to the host's file, which a plain
//! open of `/proc/PID/root/PATH` by root would reach. Mapped files are
//! opened through `/proc/PID/map_files` instead (see the `mapped` module).
//! Only regular files are opened, and without blocking: a FIFO planted
//! where a file is expected never stalls alloctrace.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, openat2};

/// Opens `path`, as process `pid` names it, inside its root, if it is a
/// regular file (see [`open_regular_in`]).
pub fn open_in_root(pid: u32, path: &Path) -> io::Result<File> {
    let root = File::open(format!("/proc/{pid}/root"))?;
    open_regular_in(&root, path)
}

/// Opens `path` inside the directory `root`, taken as `/`, for reading, if
/// it is a regular file. What is there is looked at through an `O_PATH`
/// descriptor first, so that a FIFO (whose open would wait for a writer,
/// forever) or a device (whose open may act on it) is never opened.
pub fn open_regular_in(root: &File, path: &Path) -> io::Result<File> {
    let fd = look_in(root, path, OFlags::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    // Reopened through this process's own descriptor: the very file looked at.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether `path` inside `root` is a symlink (which, when
/// [`open_regular_in`] finds nothing, leads out of the root).
pub fn is_symlink_in(root: &File, path: &Path) -> bool {
    look_in(root, path, OFlags::NOFOLLOW).is_ok()
}

/// An `O_PATH` descriptor of `path` inside `root`, never resolved out of
/// it nor through a magic link.
fn look_in(root: &File, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    Ok(openat2(
        root,
        relative,
        OFlags::PATH | OFlags::CLOEXEC | flags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Whether a process's perf map (`/tmp/perf-PID.map` in its root, PID as
/// its own pid namespace numbers it) may be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PerfMap {
    /// There is none (yet).
    Absent,
    /// A regular file owned by the process's user or root, inside its root.
    Trusted,
    /// Something else, and why.
    Refused(String),
}

/// Judges `pid`'s perf map as `perf` does (a regular file owned by the
/// process's user or by root), and refuses one the symbolizer, which opens
/// `/proc/PID/root/tmp/perf-N.map` by path, would reach outside the
/// process's root.
pub fn perf_map(pid: u32) -> PerfMap {
    let inside = perf_map_path(pid);
    let symbolizer_path =
        Path::new(&format!("/proc/{pid}/root")).join(inside.strip_prefix("/").unwrap_or(&inside));
    let file = match open_in_root(pid, &inside) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            // Nothing inside the root, yet the symbolizer's path leads to a
            // file: a symlink out of it.
            return if symbolizer_path.exists() {
                PerfMap::Refused(format!(
                    "{} leads out of the process's root",
                    inside.display()
                ))
            } else {
                PerfMap::Absent
            };
        }
        Err(error) => {
            return PerfMap::Refused(format!("{}: {error}", inside.display()));
        }
    };
    let Ok(metadata) = file.metadata() else {
        return PerfMap::Absent;
    };
    if !metadata.is_file() {
        return PerfMap::Refused(format!("{} is not a regular file", inside.display()));
    }
    let Ok(owner) = std::fs::metadata(format!("/proc/{pid}")).map(|proc| proc.uid()) else {
        return PerfMap::Absent;
    };
    if metadata.uid() != owner && metadata.uid() != 0 {
        return PerfMap::Refused(format!(
            "{} is owned by uid {}, neither the process's user ({owner}) nor root",
            inside.display(),
            metadata.uid()
        ));
    }
    match std::fs::metadata(&symbolizer_path) {
        Ok(reached) if (reached.dev(), reached.ino()) == (metadata.dev(), metadata.ino()) => {
            PerfMap::Trusted
        }
        _ => PerfMap::Refused(format!(
            "{} leads out of the process's root",
            inside.display()
        )),
    }
}

/// `/tmp/perf-N.map`, N the process's pid in its own pid namespace (the
/// last `NSpid` of its status), as the runtime writing it names it.
fn perf_map_path(pid: u32) -> PathBuf {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let own_pid = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last())
        .and_then(|pid| pid.parse::<u32>().ok())
        .unwrap_or(pid);
    PathBuf::from(format!("/tmp/perf-{own_pid}.map"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absolute_symlink_resolves_inside_the_root() {
        // This process's root is `/`, so resolving in it is resolving
        // normally; a symlink to a magic link is refused.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("to-self");
        std::os::unix::fs::symlink("/proc/self/exe", &link).unwrap();
        let error = open_in_root(std::process::id(), &link).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
        let target = dir.path().join("plain");
        std::fs::write(&target, b"x").unwrap();
        assert!(open_in_root(std::process::id(), &target).is_ok());
    }

    #[test]
    fn this_process_has_no_perf_map() {
        assert_eq!(perf_map(std::process::id()), PerfMap::Absent);
    }
}
