//! Finding the allocator libraries host-wide mode probes: every distinct C
//! library (and replacement allocator) file mapped by some process, by
//! device and inode, so each is attached once however many processes map
//! it, and so a container's own copy of libc, which is another file at the
//! same path, is attached too. Each is opened through `/proc/PID/map_files`
//! (see `crate::mapped`): the file really mapped, in any namespace, even
//! deleted or replaced on disk since, and never a planted symlink's target.
//!
//! Uprobes live on the file: once a library is attached, every process
//! that maps it later is traced without anything done here. Only a file
//! never seen before needs a rescan to be found; [`Libraries::scan`] is
//! called every few seconds and looks only at processes it has not read
//! yet (or that ran `execve` since).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use procfs::process::MMapPath;

use crate::{
    filters::HostFilters,
    mapped::{self, FileId, MappedFile},
    target::{AllocatorKind, allocator_library},
};

/// A library found in some process's memory map.
#[derive(Debug, Clone)]
pub struct Library {
    /// The path as the process that maps it names it (without the kernel's
    /// ` (deleted)` mark).
    pub path: PathBuf,
    /// The file as mapped, held open.
    pub file: MappedFile,
    /// Deleted or replaced on disk since it was mapped.
    pub deleted: bool,
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
    /// Of those, the ones that map an allocator library.
    with_allocator: HashSet<u32>,
}

impl Libraries {
    pub fn new(filters: HostFilters, own_pid: u32) -> Self {
        Self {
            filters,
            own_pid,
            known: HashSet::new(),
            read: HashMap::new(),
            with_allocator: HashSet::new(),
        }
    }

    /// Processes whose libraries are known (pruned at each scan).
    pub fn processes_read(&self) -> usize {
        self.read.len()
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
                let (path, deleted) = mapped::without_deleted_mark(path);
                let Some(kind) = allocator_library(&path) else {
                    continue;
                };
                has_allocator = true;
                let id = (mapped::device(map.dev.0, map.dev.1), map.inode);
                if self.known.contains(&id) {
                    continue;
                }
                // A process that exits before its file is opened leaves it
                // unknown, to be found in the next process that maps it.
                let Ok(file) = MappedFile::open(pid, map.address, &path, id) else {
                    continue;
                };
                self.known.insert(id);
                found.push(Library {
                    path,
                    file,
                    deleted,
                    kind,
                    pid,
                });
            }
            // A process that maps no allocator yet may be in its dynamic
            // loader; only kernel threads (no memory map at all) and
            // processes whose allocator is known are never read again.
            if has_allocator || maps.iter().next().is_none() {
                self.read.insert(pid, stat.starttime);
            }
            if has_allocator {
                self.with_allocator.insert(pid);
            }
        }
        self.read.retain(|pid, _| present.contains(pid));
        self.with_allocator
            .retain(|pid| self.read.contains_key(pid));
        found
    }

    /// The processes known to map an allocator library, by pid.
    pub fn traced(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.with_allocator.iter().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// Reads `pid` again at the next scan: it ran `execve`, so it maps
    /// another program's libraries.
    pub fn exec_seen(&mut self, pid: u32) {
        self.read.remove(&pid);
        self.with_allocator.remove(&pid);
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
                .any(|library| library.kind == AllocatorKind::Libc && library.file.path().exists()),
            "{found:?}"
        );
        assert!(libraries.read.contains_key(&own));
        assert!(
            libraries.scan().is_empty(),
            "a second scan finds nothing new"
        );
    }
}
