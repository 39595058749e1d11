//! Attaching the kernel's-own-allocation programs (`--kernel`,
//! `tracer-ebpf/src/kmem.rs`) to the `kmem` and `percpu` tracepoints, and
//! what they need of the kernel's BTF.
//!
//! They are raw tracepoints, which need neither kprobes nor ftrace
//! (neither is available to BPF on every machine): each is one
//! `bpf_raw_tracepoint_open` and needs only the tracepoint itself.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, anyhow};
use aya::programs::RawTracePoint;
use btf_rs::{Btf, Type};

use super::{Probes, ProgramStats};

/// Each program of `kmem.rs` and its tracepoint. Frees first: a block
/// whose allocation is seen must have its free seen too, and the other way
/// round a free of an unknown block is counted apart.
const KMEM_PROGRAMS: &[(&str, &str)] = &[
    ("kfree", "kfree"),
    ("kmem_cache_free", "kmem_cache_free"),
    ("mm_page_free", "mm_page_free"),
    ("percpu_free", "percpu_free_percpu"),
    ("kmalloc", "kmalloc"),
    ("kmem_cache_alloc", "kmem_cache_alloc"),
    ("mm_page_alloc", "mm_page_alloc"),
    ("percpu_alloc", "percpu_alloc_percpu"),
];

/// The kernel's BTF, where [`cache_size_offset`] looks.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whether the program named `name` (of [`KMEM_PROGRAMS`]) frees.
pub fn is_free_program(name: &str) -> bool {
    name.ends_with("free")
}

/// The byte offset of `size` in this kernel's `struct kmem_cache`: the
/// `kmem_cache_alloc` program reads an object's size there (the
/// tracepoint passes the cache).
pub fn cache_size_offset() -> anyhow::Result<u32> {
    let btf = Btf::from_file(VMLINUX_BTF).with_context(|| {
        format!("--kernel needs the kernel's BTF ({VMLINUX_BTF}; CONFIG_DEBUG_INFO_BTF)")
    })?;
    for candidate in btf.resolve_types_by_name("kmem_cache")? {
        let Type::Struct(cache) = candidate else {
            continue;
        };
        for member in &cache.members {
            if btf.resolve_name(member)? == "size" {
                return Ok(member.bit_offset() / 8);
            }
        }
    }
    Err(anyhow!(
        "--kernel: the kernel's BTF has no struct kmem_cache with a size field"
    ))
}

impl Probes {
    /// Attaches every program of the kernel's own allocations; returns what
    /// reads their skipped runs, which outlives their detaching.
    pub fn attach_kernel(&mut self) -> anyhow::Result<ProgramStats> {
        let mut programs = Vec::new();
        for (name, tracepoint) in KMEM_PROGRAMS {
            let program = self.loaded_raw_tracepoint(name)?;
            program.attach(tracepoint).with_context(|| {
                format!(
                    "--kernel needs the tracepoint {tracepoint} (see /sys/kernel/tracing/events/kmem \
                     and percpu; needs CONFIG_TRACEPOINTS)"
                )
            })?;
            programs.push((*name, owned_fd(program).context(*name)?));
        }
        Ok(ProgramStats::new(programs))
    }

    /// The raw tracepoint program `name`, loaded into the kernel (not at
    /// [`Probes::load`]: see there).
    fn loaded_raw_tracepoint(&mut self, name: &str) -> anyhow::Result<&mut RawTracePoint> {
        let program: &mut RawTracePoint = self.program_as(name)?;
        program
            .load()
            .with_context(|| format!("loading program {name} into the kernel"))?;
        Ok(program)
    }
}

/// A duplicate of `program`'s file descriptor.
fn owned_fd(program: &RawTracePoint) -> anyhow::Result<std::os::fd::OwnedFd> {
    Ok(program.fd()?.as_fd().try_clone_to_owned()?)
}
