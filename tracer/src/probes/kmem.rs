//! Attaching the kernel's-own-allocation programs (`--kernel`,
//! `tracer-ebpf/src/kmem.rs`) to the `kmem` and `percpu` tracepoints.
//!
//! They are classic tracepoints, which need neither kprobes nor ftrace
//! (neither is available to BPF on every machine): each is one
//! `perf_event_open` and needs only the tracepoint itself.

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::programs::TracePoint;

use super::{Probes, ProgramStats};

/// Each program of `kmem.rs`, its tracepoint's category and name. Frees
/// first: a block whose allocation is seen must have its free seen too,
/// and the other way round a free of an unknown block is counted apart.
const KMEM_PROGRAMS: &[(&str, &str, &str)] = &[
    ("kfree", "kmem", "kfree"),
    ("kmem_cache_free", "kmem", "kmem_cache_free"),
    ("mm_page_free", "kmem", "mm_page_free"),
    ("percpu_free", "percpu", "percpu_free_percpu"),
    ("kmalloc", "kmem", "kmalloc"),
    ("kmem_cache_alloc", "kmem", "kmem_cache_alloc"),
    ("mm_page_alloc", "kmem", "mm_page_alloc"),
    ("percpu_alloc", "percpu", "percpu_alloc_percpu"),
];

/// Whether the program named `name` (of [`KMEM_PROGRAMS`]) frees.
pub fn is_free_program(name: &str) -> bool {
    name.ends_with("free")
}

impl Probes {
    /// Attaches every program of the kernel's own allocations; returns what
    /// reads their skipped runs, which outlives their detaching.
    pub fn attach_kernel(&mut self) -> anyhow::Result<ProgramStats> {
        let mut programs = Vec::new();
        for (name, category, tracepoint) in KMEM_PROGRAMS {
            let program = self.loaded_tracepoint(name)?;
            program.attach(category, tracepoint).with_context(|| {
                format!(
                    "--kernel needs the tracepoint {category}:{tracepoint} (see \
                     /sys/kernel/tracing/events/{category}; needs CONFIG_TRACEPOINTS and a mounted \
                     tracefs)"
                )
            })?;
            programs.push((*name, owned_fd(program).context(*name)?));
        }
        Ok(ProgramStats::new(programs))
    }
}

/// A duplicate of `program`'s file descriptor.
fn owned_fd(program: &TracePoint) -> anyhow::Result<std::os::fd::OwnedFd> {
    Ok(program.fd()?.as_fd().try_clone_to_owned()?)
}
