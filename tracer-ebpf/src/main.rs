//! alloctrace's kernel side: uprobes on the target's allocator functions that
//! turn each call into an [`tracer_ebpf::Event`] on a ring buffer.
//!
//! Every allocating function gets an entry program (`<symbol>_enter`) that
//! parks its arguments for the calling thread, and shares one return program
//! (`programs::alloc_exit`) that pairs the result with them. `free` needs
//! only an entry program. The programs never aggregate: the ledger lives in
//! userspace.
//!
//! ## Nested and tail calls
//! glibc's allocator calls itself: `realloc(NULL, n)` calls `malloc`,
//! `realloc(p, 0)` calls `free`, `reallocarray` tail-jumps to `realloc`. A
//! single per-thread "pending call" slot would be overwritten by the inner call
//! and the outer result paired with the wrong size. So each pending call
//! remembers the stack pointer at its entry:
//! - an entry with a *lower* stack pointer than the pending call is nested
//!   inside it and is ignored (the outer call reports the net effect);
//! - an entry at the *same* stack pointer is a tail call that replaced the
//!   caller's frame, and it takes over the pending slot (the callee's result is
//!   the caller's result; the caller's return probe then finds nothing);
//! - an entry with a *higher* stack pointer means the pending call's return was
//!   missed (e.g. the probe attached mid-call): the stale slot is replaced.
//!
//! A return is matched to its entry when its stack pointer is the entry's plus
//! the 8 bytes of the popped return address.
//!
//! ## Exec
//! Uprobes follow the traced process through `execve` (the kernel filters
//! them by the task's current address space), so a BTF tracepoint on
//! `sched_process_exec` puts an [`tracer_ebpf::EventKind::Exec`] marker in the same ring:
//! userspace sees exactly which events belong to the old image.
//!
//! ## Host-wide mode
//! With `--all` the uprobes are attached for every process that maps a
//! probed library, and every program first asks the in-kernel filter
//! (`filter.rs`) whether the caller is traced, before any other work. A
//! `sched_process_exit` tracepoint then marks the end of each traced
//! process (`EventKind::ProcessExit`) in the same ring.
//!
//! ## Ordering
//! Each event is stamped (`bpf_ktime_get_ns`) when it is made, and userspace
//! merges the per-CPU rings by that stamp, so it reads them in a single order
//! that respects causality between threads: `free` and `realloc` announce
//! the block they give up on *entry*, before the allocator can recycle it,
//! and allocations are announced on *return*, after the allocator chose the
//! address. An address is therefore always freed in the stream before
//! another thread's allocation of it appears.
//!
//! ## Modules
//! Data flows down this list, and no module uses one above it:
//! - `programs`: the uprobe programs, thin `<symbol>_enter` and
//!   `alloc_exit` wrappers around fallible `try_*` bodies that apply the
//!   nesting rules above; `lifecycle`: the tracepoint programs; `mapped`:
//!   the `fexit` programs on the mapping system calls; `kmem`: the
//!   kernel's own allocations (`--kernel`), with kernel stacks from
//!   `kernel_stacks` (unwound, or cached by allocation path);
//! - `calls`: the call in flight on each thread; `sampling`:
//!   `--sample-rate`; `filter`: the host-wide process filter;
//! - `stacks`: the stack an allocation event carries (a walked stack, sent
//!   once and then named by hash, or a stack copy), walked by `dwarf` from
//!   the process's CFI tables or by `framewalk` through frame pointers,
//!   both hashed by `stack_hash`;
//! - `emit`: writing events to the per-CPU rings, and when to wake the
//!   reader;
//! - `counters`: what the programs count instead of failing, `hit`: the
//!   caller's ids and registers.
//!
//! The names userspace opens maps and sets globals by, and the list of
//! rings, come from the shared ABI (`tracer_ebpf`), never spelled here.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

/// `#[map(name = ...)]` for a map userspace opens by name, with the name
/// from the shared ABI (`tracer_ebpf::shared_name!`): aya's attribute takes
/// only a literal, so this writes the two attributes it expands to.
#[cfg(target_arch = "bpf")]
macro_rules! shared_map {
    ($name:ident, $(#[$attr:meta])* static $map:ident: $type:ty = $init:expr;) => {
        $(#[$attr])*
        #[unsafe(link_section = "maps")]
        #[unsafe(export_name = tracer_ebpf::shared_name!($name))]
        static $map: $type = $init;
    };
}

#[cfg(target_arch = "bpf")]
mod calls;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod dwarf;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod framewalk;
#[cfg(target_arch = "bpf")]
mod hit;
#[cfg(target_arch = "bpf")]
mod kernel_stacks;
#[cfg(target_arch = "bpf")]
mod kmem;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod mapped;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod sampling;
#[cfg(target_arch = "bpf")]
mod stack_hash;
#[cfg(target_arch = "bpf")]
mod stacks;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs only exist for the BPF target; tracer's build script
    // builds them. This keeps host-side workspace commands working.
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that can reach a panic, so this is
    // never executed; it only satisfies the `no_std` contract.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
