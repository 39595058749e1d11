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
//!
//! The memory written must be the one whose mappings were read, even if the
//! child runs `execve` meanwhile (a new program may well have 0xcc bytes,
//! alignment padding, at those addresses): `mem` is opened first, which
//! pins the image it belongs to, then the mappings are read, and each byte
//! is checked to be a breakpoint before it is written.
//!
//! Only a descendant that still runs the image it forked from the target is
//! touched: one whose probe sites sit at the target's very addresses. A
//! descendant that ran `execve` has a new image (its libraries elsewhere,
//! address space layout randomization makes sure of it) with no inherited
//! breakpoint, and the 0xcc bytes at its probe sites are another tool's:
//! another tracer attached to it with `--pid`, say. Removing those made
//! that tracer print its ready line and then record nothing.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use crate::armed::{BREAKPOINT, ProbeSites};

/// Scans of `/proc` are at least this far apart: a fork marker also comes
/// with every thread the target starts.
const SCAN_INTERVAL: Duration = Duration::from_millis(20);

pub struct ForkedChildren {
    target: u32,
    /// Where the probes are in the library, and the bytes they replaced.
    sites: ProbeSites,
    /// Descendants already rid of their breakpoints.
    cleaned: HashSet<u32>,
    pending: bool,
    last_scan: Option<Instant>,
}

impl ForkedChildren {
    /// For the target `pid`, probed at `sites`.
    pub fn new(pid: u32, sites: ProbeSites) -> Self {
        Self {
            target: pid,
            sites,
            cleaned: HashSet::new(),
            pending: false,
            last_scan: None,
        }
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
        let Ok(target_sites) = self.sites.placed_in(self.target) else {
            return;
        };
        let target_sites: Vec<u64> = target_sites.iter().map(|place| place.address).collect();
        for pid in descendants(self.target) {
            if self.cleaned.contains(&pid) {
                continue;
            }
            match self.remove_breakpoints(pid, &target_sites) {
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
    fn remove_breakpoints(&self, pid: u32, target_sites: &[u64]) -> anyhow::Result<usize> {
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        let placed = self.sites.placed_in(pid)?;
        if !placed
            .iter()
            .map(|place| place.address)
            .eq(target_sites.iter().copied())
        {
            log::debug!("pid {pid} runs another image than the target's (execve since the fork)");
            return Ok(0);
        }
        let mut removed = 0;
        for place in placed {
            let mut byte = [0];
            mem.read_exact_at(&mut byte, place.address)?;
            if byte[0] == BREAKPOINT && place.original != BREAKPOINT {
                mem.write_all_at(&[place.original], place.address)?;
                removed += 1;
                if removed == 1 {
                    pause_if_a_test_asks(pid);
                }
            }
        }
        Ok(removed)
    }
}

/// The environment variable that makes alloctrace stop for good in the
/// middle of a child's clean-up (one breakpoint removed, the others not),
/// for a test to `SIGKILL` it at that very moment: the child must be left
/// runnable, its remaining breakpoints taken out when the guardian
/// releases the probes.
const PAUSE_VARIABLE: &str = "ALLOCTRACE_TEST_PAUSE_IN_FORK_CLEAN_UP";

fn pause_if_a_test_asks(pid: u32) {
    if std::env::var_os(PAUSE_VARIABLE).is_some() {
        eprintln!("alloctrace: paused in the fork clean-up of pid {pid} ({PAUSE_VARIABLE})");
        loop {
            std::thread::park();
        }
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
