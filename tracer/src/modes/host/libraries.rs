//! Finding the allocator libraries host-wide mode probes: every distinct C
//! library (and replacement allocator) file mapped by some process, by
//! device and inode, so each is attached once however many processes map
//! it, and so a container's own copy of libc, which is another file at the
//! same path, is attached too. Paths are opened through `/proc/PID/root`,
//! so a file in another mount namespace is reached as the process sees it.
//!
//! Uprobes live on the file: once a library is attached, every process
//! that maps it later is traced without anything done here. Only a file
//! never seen before needs a rescan to be found; [`Libraries::scan`] is
//! called every few seconds and looks only at processes it has not read
//! yet (or that ran `execve` since).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use procfs::process::MMapPath;

use crate::filters::HostFilters;
use crate::target::{AllocatorKind, allocator_library, in_process_root};

/// A mapped file's identity: device (major, minor) and inode.
type FileId = (i32, i32, u64);

/// A library found in some process's memory map.
#[derive(Debug, Clone)]
pub struct Library {
    /// The path as the process that maps it names it.
    pub path: PathBuf,
    /// The same file, reachable from the tracer's mount namespace.
    pub host_path: PathBuf,
    pub kind: AllocatorKind,
    /// The process it was found in.
    pub pid: u32,
}

pub struct Libraries {
    filters: HostFilters,
    own_pid: u32,
    /// Every library found so far, attached or not (an attach that failed
    /// is not retried on every scan).
    known: HashSet<FileId>,
    /// Processes whose allocator libraries are known, by pid, with their
    /// start time (so a reused pid is read again).
    read: HashMap<u32, u64>,
}

impl Libraries {
    pub fn new(filters: HostFilters, own_pid: u32) -> Self {
        Self {
            filters,
            own_pid,
            known: HashSet::new(),
            read: HashMap::new(),
        }
    }

    /// Looks at processes not read before; returns the libraries none of
    /// the earlier scans found.
    pub fn scan(&mut self) -> Vec<Library> {
        let Ok(processes) = procfs::process::all_processes() else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut present = HashSet::new();
        for process in processes.flatten() {
            let pid = process.pid as u32;
            present.insert(pid);
            if pid == self.own_pid {
                continue;
            }
            let Ok(stat) = process.stat() else { continue };
            if !self.filters.admits(pid) || self.read.get(&pid) == Some(&stat.starttime) {
                continue;
            }
            let Ok(maps) = process.maps() else { continue };
            let mut has_allocator = false;
            for map in maps.iter() {
                let MMapPath::Path(path) = &map.pathname else {
                    continue;
                };
                let Some(kind) = allocator_library(path) else {
                    continue;
                };
                has_allocator = true;
                let id = (map.dev.0, map.dev.1, map.inode);
                if self.known.insert(id) {
                    found.push(Library {
                        path: path.clone(),
                        host_path: reachable_path(pid, path, id, map.address),
                        kind,
                        pid,
                    });
                }
            }
            // A process that maps no allocator yet may be in its dynamic
            // loader; only kernel threads (no memory map at all) and
            // processes whose allocator is known are never read again.
            if has_allocator || maps.iter().next().is_none() {
                self.read.insert(pid, stat.starttime);
            }
        }
        self.read.retain(|pid, _| present.contains(pid));
        found
    }

    /// Reads `pid` again at the next scan: it ran `execve`, so it maps
    /// another program's libraries.
    pub fn exec_seen(&mut self, pid: u32) {
        self.read.remove(&pid);
    }
}

/// A path to the mapped file `id` that the tracer can open: the process's
/// path through its root when that is the same file, else the mapping's
/// `/proc/PID/map_files` link, which reaches the exact file mapped whatever
/// namespace or chroot the process is in (`/proc/PID/maps` names a file in a
/// chroot by its path from the tracer's root, not the process's).
fn reachable_path(pid: u32, path: &Path, id: FileId, (start, end): (u64, u64)) -> PathBuf {
    let rooted = in_process_root(pid, path);
    let same = std::fs::metadata(&rooted).is_ok_and(|metadata| {
        let dev = metadata.dev();
        metadata.ino() == id.2 && libc::major(dev) as i32 == id.0 && libc::minor(dev) as i32 == id.1
    });
    if same {
        rooted
    } else {
        PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_libc_once() {
        let mut libraries = Libraries::new(HostFilters::default(), 0);
        let found = libraries.scan();
        let own = std::process::id();
        assert!(
            found
                .iter()
                .any(|library| library.kind == AllocatorKind::Libc && library.host_path.exists()),
            "{found:?}"
        );
        assert!(libraries.read.contains_key(&own));
        assert!(
            libraries.scan().is_empty(),
            "a second scan finds nothing new"
        );
    }
}
