//! uprobe_multi links (Linux 6.6+): the cheaper way to attach the uprobe
//! programs, which aya 0.14 does not offer.
//!
//! aya attaches a uprobe through a perf event. At every hit the kernel then
//! runs the perf event's filter and dispatcher before the program; a
//! `BPF_TRACE_UPROBE_MULTI` link calls the program directly. Measured here
//! with empty programs at alloctrace's probe points, on a 2-thread churn:
//! ~1,575 ns per malloc+free through perf events, ~1,440 ns through these
//! links. The kernel only accepts such a link for a program loaded with that
//! attach type, which aya cannot set, so the uprobe programs are loaded here:
//! a second parse of the same object, relocated against the maps aya created,
//! so both loaders' programs share every map.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

use super::guardian::{Guardian, LinkKind};
use anyhow::{Context as _, anyhow, bail};
use aya::{Ebpf, maps::Map};
use aya_obj::{
    Object, ProgramSection,
    generated::{
        BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_cmd, bpf_insn,
        bpf_prog_type::BPF_PROG_TYPE_KPROBE,
    },
};

/// The uprobe programs of the object, loaded for uprobe_multi links.
pub struct MultiPrograms {
    programs: HashMap<String, MultiProgram>,
}

struct MultiProgram {
    fd: OwnedFd,
    /// A return probe (`#[uretprobe]`).
    returns: bool,
}

impl MultiPrograms {
    /// Loads every uprobe program of `object` (the ELF that `ebpf` was
    /// loaded from) with the uprobe_multi attach type. Fails on kernels
    /// without uprobe_multi, or whatever else goes wrong: the caller then
    /// falls back to aya's perf-event uprobes.
    pub fn load(ebpf: &Ebpf, object: &[u8]) -> anyhow::Result<Self> {
        let mut obj = Object::parse(object).context("parsing the eBPF object")?;
        let map_defs: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
        let mut relocations = Vec::with_capacity(map_defs.len());
        for (name, def) in &map_defs {
            let map = ebpf
                .map(name)
                .ok_or_else(|| anyhow!("aya created no map {name}"))?;
            relocations.push((name.as_str(), map_fd(name, map)?, def));
        }
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|&(section, _)| section).collect();
        obj.relocate_maps(relocations.into_iter(), &text_sections)
            .context("relocating map references")?;
        obj.relocate_calls(&text_sections)
            .context("relocating function calls")?;
        let mut programs = HashMap::new();
        for (name, program) in &obj.programs {
            let returns = match program.section {
                ProgramSection::UProbe { .. } => false,
                ProgramSection::URetProbe { .. } => true,
                _ => continue,
            };
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or_else(|| anyhow!("the eBPF object has no code for {name}"))?;
            let fd = load_program(name, &function.instructions, &program.license)
                .with_context(|| format!("loading {name} for a uprobe_multi link"))?;
            programs.insert(name.clone(), MultiProgram { fd, returns });
        }
        Ok(Self { programs })
    }

    /// Attaches `program` at `offset` in `file`, in process `pid` only
    /// (every process mapping `file` when `pid` is 0), through `guardian`,
    /// which keeps the link: the probe stays until the guardian releases it.
    pub fn attach(
        &self,
        program: &str,
        file: &Path,
        offset: u64,
        pid: u32,
        guardian: &Guardian,
    ) -> io::Result<()> {
        let Some(loaded) = self.programs.get(program) else {
            return Err(io::Error::other(format!("no uprobe program {program}")));
        };
        let target = LinkTarget {
            file,
            offset,
            pid,
            returns: loaded.returns,
        };
        guardian.link(loaded.fd.as_fd(), &target, LinkKind::UprobeMulti)
    }
}

/// Where a uprobe_multi link puts its probe.
pub struct LinkTarget<'a> {
    /// The probed file (a path this process can open).
    pub file: &'a Path,
    /// The probe's offset in the file.
    pub offset: u64,
    /// The one process it fires in; 0 for every process mapping `file`.
    pub pid: u32,
    /// A return probe (the program must be one).
    pub returns: bool,
}

/// Creates a uprobe_multi link of `program` at `target`. The probe stays
/// until the returned link is closed.
pub fn create_link(program: BorrowedFd<'_>, target: &LinkTarget<'_>) -> io::Result<OwnedFd> {
    let path = CString::new(target.file.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let offsets = [target.offset];
    let attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_UPROBE_MULTI as u32,
        flags: 0,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        ref_ctr_offsets: 0,
        cookies: 0,
        cnt: 1,
        multi_flags: if target.returns {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        },
        pid: target.pid,
        _padding: 0,
    };
    // SAFETY: `attr` and the buffers it points to outlive the call.
    unsafe { bpf_fd(bpf_cmd::BPF_LINK_CREATE as i32, &attr) }
}

/// The fd of one of the maps our object defines (of the kinds it uses).
fn map_fd(name: &str, map: &Map) -> anyhow::Result<RawFd> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::RingBuf(data) => data,
        _ => bail!("map {name} is of a kind the uprobe_multi loader does not relocate"),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

/// `BPF_PROG_LOAD` as a kprobe-type program with the uprobe_multi attach
/// type; with the verifier's log in the error if it is refused.
fn load_program(
    name: &str,
    instructions: &[bpf_insn],
    license: &CString,
) -> anyhow::Result<OwnedFd> {
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE as u32,
        insn_cnt: instructions.len() as u32,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI as u32,
        ..ProgLoadAttr::default()
    };
    for (to, from) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *to = from as std::ffi::c_char;
    }
    let refused = match load_retrying(&attr) {
        Ok(fd) => return Ok(fd),
        Err(error) => error,
    };
    // Loaded again only for the verifier's log. The kernel keeps its end
    // (where the reason is) and, since 6.4, fails a load whose log did not
    // fit with ENOSPC: the first error is the one to report.
    let mut log = vec![0u8; 1 << 20];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    if let Ok(fd) = load_retrying(&attr) {
        return Ok(fd);
    }
    let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
    let log = String::from_utf8_lossy(&log[..end]);
    let tail: Vec<&str> = log.trim().lines().rev().take(LOG_LINES).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(anyhow::Error::new(refused).context(format!("verifier: {}", tail.join(" | "))))
}

/// Lines of the verifier's log kept in the error: its end says why.
const LOG_LINES: usize = 8;

/// How many times a load the verifier abandoned with EAGAIN is tried again.
const LOAD_ATTEMPTS: u32 = 5;

/// `BPF_PROG_LOAD`, tried again when the verifier gives up with EAGAIN,
/// which it does when a signal arrives during a long check (this object's
/// return program takes it through ~500,000 instructions); libbpf retries
/// the same way.
fn load_retrying(attr: &ProgLoadAttr) -> io::Result<OwnedFd> {
    let mut attempt = 1;
    loop {
        // SAFETY: `attr` and the buffers it points to outlive the call.
        match unsafe { bpf_fd(bpf_cmd::BPF_PROG_LOAD as i32, attr) } {
            Err(error) if error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS => {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Issues `bpf(cmd, attr)` for a command that returns a new fd.
///
/// # Safety
/// `attr` must be a valid attribute block for `cmd`, and every pointer in it
/// valid for the kernel to read (or write, for a log buffer) during the call.
pub(super) unsafe fn bpf_fd<T>(cmd: i32, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: per this function's contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`, up to the
/// attach type; the kernel reads the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [std::ffi::c_char; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with its `uprobe_multi` member
/// (zeroed, as the `perf_event` member of `super::perf_link`: no cookie).
#[repr(C)]
#[derive(Default)]
pub(super) struct LinkCreateAttr {
    pub prog_fd: u32,
    pub target_fd: u32,
    pub attach_type: u32,
    pub flags: u32,
    pub path: u64,
    pub offsets: u64,
    pub ref_ctr_offsets: u64,
    pub cookies: u64,
    pub cnt: u32,
    pub multi_flags: u32,
    pub pid: u32,
    pub _padding: u32,
}
