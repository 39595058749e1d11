//! Children the target forks while it is traced: the breakpoints they
//! inherit are taken out of them.
//!
//! A uprobe is an `int3` the kernel writes into the traced process's copy of
//! the probed code, and `fork` copies it into the child. Through perf-event
//! uprobes the kernel removes it from the child at the child's first hit;
//! through the uprobe_multi links alloctrace uses, it never does: the link
//! runs nothing for the child, which still traps on every allocator call
//! (measured: a forked child's malloc+free went from ~5 ns to ~1,200 ns for
//! as long as it lived). So when the kernel marks a fork of the target,
//! alloctrace finds the target's new child processes (and theirs) and writes
//! the original instruction bytes back over the breakpoints, through
//! `/proc/PID/mem`, as the kernel itself would.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::placement::Plan;

/// The opcode of `int3`, the breakpoint a uprobe writes.
const BREAKPOINT: u8 = 0xcc;

/// Scans of `/proc` are at least this far apart: a fork marker also comes
/// with every thread the target starts.
const SCAN_INTERVAL: Duration = Duration::from_millis(20);

pub struct ForkedChildren {
    target: u32,
    /// The probed library, by device and inode as `/proc/PID/maps` shows it.
    library: (u64, u64),
    /// Each probe's file offset in the library, and the byte it replaced.
    probes: Vec<(u64, u8)>,
    /// Descendants already rid of their breakpoints.
    cleaned: HashSet<u32>,
    pending: bool,
    last_scan: Option<Instant>,
}

impl ForkedChildren {
    /// For the target `pid`, probed at `plan`'s points in `library` (a path
    /// the tracer can open).
    pub fn new(pid: u32, library: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let file = File::open(library).with_context(|| format!("opening {}", library.display()))?;
        let metadata = file.metadata()?;
        let mut probes = Vec::new();
        for offset in plan.points.iter().map(|point| point.entry_offset()) {
            let mut byte = [0];
            file.read_exact_at(&mut byte, offset)
                .with_context(|| format!("reading {} at {offset:#x}", library.display()))?;
            probes.push((offset, byte[0]));
        }
        Ok(Self {
            target: pid,
            library: (metadata.dev(), metadata.ino()),
            probes,
            cleaned: HashSet::new(),
            pending: false,
            last_scan: None,
        })
    }

    /// The kernel marked a new task of the target.
    pub fn note_fork(&mut self) {
        self.pending = true;
    }

    /// After a fork marker: removes the breakpoints of every descendant of
    /// the target not yet cleaned.
    pub fn clean_up(&mut self) {
        if !self.pending
            || self
                .last_scan
                .is_some_and(|at| at.elapsed() < SCAN_INTERVAL)
        {
            return;
        }
        self.pending = false;
        self.last_scan = Some(Instant::now());
        for pid in descendants(self.target) {
            if self.cleaned.contains(&pid) {
                continue;
            }
            match self.remove_breakpoints(pid) {
                Ok(removed) => {
                    log::debug!("removed {removed} inherited breakpoints from pid {pid}");
                    self.cleaned.insert(pid);
                }
                // Gone already, or exec'd into another program.
                Err(error) => log::debug!("forked pid {pid}: {error:#}"),
            }
        }
    }

    /// Writes the original byte back wherever `pid` still has one of the
    /// target's breakpoints in its mappings of the library; returns how many.
    fn remove_breakpoints(&self, pid: u32) -> anyhow::Result<usize> {
        let process = procfs::process::Process::new(pid as i32)?;
        let maps = process.maps()?;
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        let mut removed = 0;
        for map in maps.iter() {
            let (major, minor) = map.dev;
            if libc::makedev(major as u32, minor as u32) != self.library.0
                || map.inode != self.library.1
            {
                continue;
            }
            let (start, end) = map.address;
            for &(offset, original) in &self.probes {
                let Some(address) = offset
                    .checked_sub(map.offset)
                    .map(|delta| start + delta)
                    .filter(|&address| address < end)
                else {
                    continue;
                };
                let mut byte = [0];
                mem.read_exact_at(&mut byte, address)?;
                if byte[0] == BREAKPOINT && original != BREAKPOINT {
                    mem.write_all_at(&[original], address)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The processes descended from `ancestor`, by their parent pids in `/proc`.
fn descendants(ancestor: u32) -> Vec<u32> {
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for stat in processes
        .flatten()
        .filter_map(|process| process.stat().ok())
    {
        children
            .entry(stat.ppid as u32)
            .or_default()
            .push(stat.pid as u32);
    }
    let mut found = Vec::new();
    let mut next = vec![ancestor];
    while let Some(parent) = next.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            found.push(child);
            next.push(child);
        }
    }
    found
}
