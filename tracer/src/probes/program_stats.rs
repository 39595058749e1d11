//! What the kernel counts about the programs themselves: their
//! `recursion_misses`, the runs the kernel skipped because a tracing
//! program was already running on the same CPU (an interrupt that
//! allocated or freed while one of `--kernel`'s programs ran, say).
//!
//! aya's `ProgramInfo` does not expose the field, so this asks
//! `BPF_OBJ_GET_INFO_BY_FD` itself. The programs' file descriptors are
//! duplicates kept here: a detached program stays loaded, with its counts,
//! while one is open, so the final report can still read them.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// Programs whose runs the kernel may skip, by name.
pub struct ProgramStats {
    programs: Vec<(&'static str, OwnedFd)>,
}

impl ProgramStats {
    pub(super) fn new(programs: Vec<(&'static str, OwnedFd)>) -> Self {
        Self { programs }
    }

    /// Runs of the programs `keep` selects (by name) the kernel skipped,
    /// summed; a program whose information cannot be read counts 0.
    pub fn recursion_misses(&self, keep: impl Fn(&str) -> bool) -> u64 {
        self.programs
            .iter()
            .filter(|(name, _)| keep(name))
            .filter_map(|(_, fd)| program_info(fd).ok())
            .map(|info| info.recursion_misses)
            .sum()
    }
}

/// The `info` member of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn program_info(fd: &OwnedFd) -> io::Result<bpf_prog_info> {
    // SAFETY: `bpf_prog_info` is plain integers (its pointers are `u64`s),
    // for which all zeroes is a value, and zero asks for no arrays.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: `attr` is the attribute block of this command, and `info`,
    // which the kernel writes up to `info_len` bytes of, outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as i32,
            std::ptr::from_ref(&attr),
            size_of::<InfoAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
