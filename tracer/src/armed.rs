//! Where the probes are in a process, and whether they are really armed
//! there: a uprobe is an `int3` (0xcc) the kernel writes over the first byte
//! of the probed instruction in each process's copy of the code, so reading
//! the process's code through `/proc/PID/mem` at each probe says whether the
//! kernel will run the programs there.
//!
//! With `--pid` the ready line is only printed once every probe is armed in
//! the target, and the check is repeated at each summary: a breakpoint can
//! vanish after the ready line (another tool writing the original code
//! back, as one-process mode's fork clean-up does in children), and the
//! events of that probe with it. A launched command is checked at each
//! summary once it runs its program ([`ArmedWatch`]); host-wide mode checks
//! a few processes of each probed library per summary ([`HostWatch`]).
//! Both count what they find missing ([`ProbeChecks`], in the report's
//! totals).
//! The same sites serve one-process mode's fork clean-up, which writes the original bytes
//! back into the target's children.

use std::{
    fs::File,
    io,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    mapped::{self, FileId},
    placement::Plan,
};

/// The opcode of `int3`, the breakpoint a uprobe writes.
pub const BREAKPOINT: u8 = 0xcc;

/// How long the kernel's breakpoints are waited for before the ready line,
/// and how often they are looked at meanwhile. The kernel writes them all
/// before the attach returns, so a missing one is not late but gone.
const ARMING_PATIENCE: Duration = Duration::from_millis(500);
const ARMING_POLL: Duration = Duration::from_millis(50);

/// The probe points of a plan in one file.
#[derive(Clone, Debug)]
pub struct ProbeSites {
    /// The probed file.
    library: FileId,
    sites: Vec<Site>,
}

#[derive(Clone, Debug)]
struct Site {
    /// The function probed there (the first of its aliases).
    function: &'static str,
    /// The file offset of the probed instruction.
    offset: u64,
    /// The byte the breakpoint replaces.
    original: u8,
}

/// One probe site in one process.
#[derive(Clone, Copy, Debug)]
pub struct Placed<'a> {
    pub function: &'a str,
    pub address: u64,
    pub original: u8,
}

impl ProbeSites {
    /// The sites of `plan` in `library` (a path the tracer can open).
    pub fn new(library: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let file = File::open(library).with_context(|| format!("opening {}", library.display()))?;
        let metadata = file.metadata()?;
        let mut sites = Vec::new();
        for point in &plan.points {
            let offset = point.entry_offset();
            let mut byte = [0];
            file.read_exact_at(&mut byte, offset)
                .with_context(|| format!("reading {} at {offset:#x}", library.display()))?;
            sites.push(Site {
                function: point.functions[0],
                offset,
                original: byte[0],
            });
        }
        Ok(Self {
            library: (metadata.dev(), metadata.ino()),
            sites,
        })
    }

    /// Every site in `pid`'s mappings of the library, from its memory map
    /// read now. Callers that write must open `pid`'s `mem` before calling
    /// this: the mappings then describe that very memory, even if `pid`
    /// runs `execve` in between (the open `mem` keeps the old image's).
    pub fn placed_in(&self, pid: u32) -> io::Result<Vec<Placed<'_>>> {
        let process = procfs::process::Process::new(pid as i32).map_err(io::Error::other)?;
        let maps = process.maps().map_err(io::Error::other)?;
        let mut placed = Vec::new();
        for map in maps.iter() {
            if (mapped::device(map.dev.0, map.dev.1), map.inode) != self.library {
                continue;
            }
            let (start, end) = map.address;
            for site in &self.sites {
                let address = site
                    .offset
                    .checked_sub(map.offset)
                    .map(|delta| start + delta)
                    .filter(|&address| address < end);
                if let Some(address) = address {
                    placed.push(Placed {
                        function: site.function,
                        address,
                        original: site.original,
                    });
                }
            }
        }
        Ok(placed)
    }

    /// The functions whose breakpoint is missing in `pid`.
    pub fn disarmed_in(&self, pid: u32) -> io::Result<Vec<&str>> {
        Ok(self
            .disarmed_if_mapped(pid)?
            .unwrap_or_else(|| self.sites.iter().map(|site| site.function).collect()))
    }

    /// The functions whose breakpoint is missing in `pid`, or `None` when
    /// `pid` does not map the library at all.
    pub fn disarmed_if_mapped(&self, pid: u32) -> io::Result<Option<Vec<&str>>> {
        let mem = File::open(format!("/proc/{pid}/mem"))?;
        let placed = self.placed_in(pid)?;
        if placed.is_empty() {
            return Ok(None);
        }
        let mut disarmed = Vec::new();
        for site in &self.sites {
            let mut armed = false;
            let mut seen = false;
            for place in placed
                .iter()
                .filter(|place| place.function == site.function)
            {
                seen = true;
                let mut byte = [0];
                mem.read_exact_at(&mut byte, place.address)?;
                armed |= byte[0] == BREAKPOINT;
            }
            if !(seen && armed) {
                disarmed.push(site.function);
            }
        }
        Ok(Some(disarmed))
    }

    /// Waits until every probe is armed in `pid`, or says which are not.
    pub fn await_armed(&self, pid: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + ARMING_PATIENCE;
        loop {
            let disarmed = self
                .disarmed_in(pid)
                .with_context(|| format!("reading the code of pid {pid}"))?;
            if disarmed.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} of {} probes are not armed in pid {pid} after attaching (no breakpoint at {}); \
                     nothing would be recorded from them: try again, and look for another tool \
                     rewriting the process's code",
                    disarmed.len(),
                    self.sites.len(),
                    disarmed.join(", ")
                );
            }
            std::thread::sleep(ARMING_POLL);
        }
    }
}

/// What the checks of the probes' breakpoints found, for the report.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProbeChecks {
    /// Looks at one process's code (all the probes of one library in it).
    pub checks: u64,
    /// Probes found without their breakpoint, each counted once per process.
    pub missing: u64,
}

/// The re-check at each summary: warns once for each probe that lost its
/// breakpoint.
#[derive(Debug)]
pub struct ArmedWatch {
    sites: ProbeSites,
    pid: u32,
    lost: Vec<&'static str>,
    checks: u64,
}

impl ArmedWatch {
    pub fn new(sites: ProbeSites, pid: u32) -> Self {
        Self {
            sites,
            pid,
            lost: Vec::new(),
            checks: 0,
        }
    }

    pub fn stats(&self) -> ProbeChecks {
        ProbeChecks {
            checks: self.checks,
            missing: self.lost.len() as u64,
        }
    }

    /// Looks at the target's code again; a probe found disarmed for the
    /// first time is reported on stderr. A process that does not map the
    /// library (yet: a launched command in its dynamic loader) is not
    /// looked at.
    pub fn check(&mut self) {
        let Ok(Some(disarmed)) = self.sites.disarmed_if_mapped(self.pid) else {
            return; // Gone: the session notices on its own.
        };
        self.checks += 1;
        for function in disarmed {
            let site = self
                .sites
                .sites
                .iter()
                .find(|site| site.function == function);
            let Some(site) = site else { continue };
            if !self.lost.contains(&site.function) {
                self.lost.push(site.function);
                eprintln!(
                    "alloctrace: warning: the probe of {function} in pid {} lost its breakpoint \
                     (another tool rewrote the code?); its calls are no longer recorded",
                    self.pid
                );
            }
        }
    }
}

/// Processes looked at per library at each summary in host-wide mode: the
/// check reads one `/proc/PID/maps` and one byte per probe each, so a few
/// per summary cost nothing next to the summary itself.
const HOST_SAMPLE: usize = 4;

/// Host-wide mode's check: at each summary, a few processes that map each
/// probed library, in turn, have their breakpoints looked at.
#[derive(Debug, Default)]
pub struct HostWatch {
    /// The probe sites of each probed library.
    libraries: Vec<ProbeSites>,
    /// Where the turn of the sample starts in the candidates.
    turn: usize,
    /// (pid, function) of each probe found missing, warned about once.
    lost: std::collections::HashSet<(u32, &'static str)>,
    checks: u64,
}

impl HostWatch {
    /// Watches the probes of a library just attached.
    pub fn add(&mut self, sites: ProbeSites) {
        self.libraries.push(sites);
    }

    pub fn stats(&self) -> ProbeChecks {
        ProbeChecks {
            checks: self.checks,
            missing: self.lost.len() as u64,
        }
    }

    /// Looks at up to [`HOST_SAMPLE`] of `candidates` (the traced
    /// processes) per library, the next ones at each call; a process that
    /// does not map a library is skipped for it.
    pub fn check(&mut self, candidates: &[u32]) {
        if candidates.is_empty() {
            return;
        }
        let start = self.turn % candidates.len();
        self.turn = start + HOST_SAMPLE;
        for sites in &self.libraries {
            let mut looked = 0;
            for &pid in candidates.iter().cycle().skip(start).take(candidates.len()) {
                if looked == HOST_SAMPLE {
                    break;
                }
                let Ok(Some(disarmed)) = sites.disarmed_if_mapped(pid) else {
                    continue;
                };
                looked += 1;
                self.checks += 1;
                for function in disarmed {
                    let Some(site) = sites.sites.iter().find(|site| site.function == function)
                    else {
                        continue;
                    };
                    if self.lost.insert((pid, site.function)) {
                        eprintln!(
                            "alloctrace: warning: the probe of {function} in pid {pid} lost its \
                             breakpoint (another tool rewrote the code?); its calls there are no \
                             longer recorded"
                        );
                    }
                }
            }
        }
    }
}
