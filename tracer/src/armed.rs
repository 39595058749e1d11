//! Where the probes are in a process, and whether they are really armed
//! there: a uprobe is an `int3` (0xcc) the kernel writes over the first byte
//! of the probed instruction in each process's copy of the code, so reading
//! the process's code through `/proc/PID/mem` at each probe says whether the
//! kernel will run the programs there.
//!
//! The ready line is only printed once every probe is armed in the target,
//! and the check is repeated at each summary: a breakpoint can vanish after
//! the ready line (another tool writing the original code back, as
//! one-process mode's fork clean-up does in children), and the events of that probe with it.
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
        let mem = File::open(format!("/proc/{pid}/mem"))?;
        let placed = self.placed_in(pid)?;
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
        Ok(disarmed)
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

/// The re-check at each summary: warns once for each probe that lost its
/// breakpoint.
#[derive(Debug)]
pub struct ArmedWatch {
    sites: ProbeSites,
    pid: u32,
    lost: Vec<&'static str>,
}

impl ArmedWatch {
    pub fn new(sites: ProbeSites, pid: u32) -> Self {
        Self {
            sites,
            pid,
            lost: Vec::new(),
        }
    }

    /// Looks at the target's code again; a probe found disarmed for the
    /// first time is reported on stderr.
    pub fn check(&mut self) {
        let Ok(disarmed) = self.sites.disarmed_in(self.pid) else {
            return; // Gone: the session notices on its own.
        };
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
