//! Mapped memory: programs on the `syscalls:sys_exit_*` tracepoints of
//! `mmap`, `munmap`, `mremap`, `mprotect` and `brk`, turned for traced
//! processes into `EventKind::Map`, `Unmap`, `Remap` (`RemapKeep` for
//! `MREMAP_DONTUNMAP`), `Protect` and `Brk` events.
//!
//! One program per call, at its exit: the arguments are still in the
//! task's saved user registers (`bpf_task_pt_regs`), so no entry program
//! and no pairing map are needed. `fexit` on `__x64_sys_*` would spare
//! other tasks the syscall-tracing slow path these tracepoints switch on,
//! but needs ftrace, which the development machine refuses to BPF
//! (`EPERM` on load); the per-syscall tracepoints run nothing for other
//! system calls.
//!
//! Left out here: file-backed and shared mappings (not the process's private
//! memory), and any call made inside a traced allocator call (its slot in
//! `calls` is busy): glibc's mmap'd large blocks and arenas are already
//! counted as heap blocks. `brk` is the exception: every move of the break
//! is sent, since the ledger needs each one to know where the break is, but
//! one made inside an allocator call (glibc's `sbrk` growing or trimming its
//! main arena) is marked so and carries no stack. The mmap stack starts at the return address the
//! libc wrapper will return to, read at the wrapper's stack pointer: glibc's
//! and musl's `mmap` are leaf functions that push nothing before `syscall`,
//! and so are their `brk` (glibc's `sbrk` is not: it keeps the old break in
//! `rbp`, so a frame-pointer walk from it goes astray; `--unwind dwarf`
//! walks it).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_ebpf::{EventKind, NO_STACK};

use crate::{
    calls::thread_slot,
    counters::{Outcome, finish},
    emit::{emit, emit_hashed},
    filter,
    hit::Hit,
    lifecycle::in_target,
    stacks::emit_with_stack_at,
};

/// Where `sys_exit_*` tracepoints keep the call's result.
const SYS_EXIT_RET_OFFSET: usize = 16;

const PROT_NONE: u64 = 0;
const MAP_SHARED: u64 = 0x01;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_NORESERVE: u64 = 0x4000;
const MREMAP_DONTUNMAP: u64 = 4;

#[tracepoint(category = "syscalls", name = "sys_exit_mmap")]
pub fn mmap_exit(ctx: TracePointContext) -> i32 {
    finish(&ctx, try_mmap_exit(&ctx));
    0
}

fn try_mmap_exit(ctx: &TracePointContext) -> Outcome {
    let Some((hit, regs, result)) = traced_call_of_its_own(ctx) else {
        return Ok(());
    };
    // mmap(addr, len, prot, flags, fd, offset)
    let (len, prot, flags) = (regs.rsi, regs.rdx, regs.r10);
    if flags & MAP_ANONYMOUS == 0 || flags & MAP_SHARED != 0 {
        return Ok(());
    }
    let accessible = prot != PROT_NONE && flags & MAP_NORESERVE == 0;
    emit_with_stack_at(
        &hit,
        &wrapper_caller(&regs),
        EventKind::Map,
        result,
        u64::from(accessible),
        len,
    )
}

/// The registers as if the libc wrapper of a system call had returned: its
/// caller's return address on top of the stack (see the module docs).
#[inline(always)]
fn wrapper_caller(regs: &pt_regs) -> pt_regs {
    let mut caller = *regs;
    // SAFETY: reads user memory through the fault-tolerant helper.
    caller.rip = unsafe { bpf_probe_read_user(regs.rsp as *const u64) }.unwrap_or(0);
    caller.rsp = regs.rsp + 8;
    caller
}

#[tracepoint(category = "syscalls", name = "sys_exit_brk")]
pub fn brk_exit(ctx: TracePointContext) -> i32 {
    finish(&ctx, try_brk_exit(&ctx));
    0
}

fn try_brk_exit(ctx: &TracePointContext) -> Outcome {
    let Some((hit, regs, result, in_allocator)) = traced_call(ctx) else {
        return Ok(());
    };
    // brk(addr) returns the break, moved or not (it never fails with an
    // error code), so every call tells where the break is.
    if in_allocator {
        return emit(&hit, EventKind::Brk, result, 1, regs.rdi, NO_STACK);
    }
    emit_with_stack_at(
        &hit,
        &wrapper_caller(&regs),
        EventKind::Brk,
        result,
        0,
        regs.rdi,
    )
}

#[tracepoint(category = "syscalls", name = "sys_exit_munmap")]
pub fn munmap_exit(ctx: TracePointContext) -> i32 {
    finish(&ctx, try_munmap_exit(&ctx));
    0
}

fn try_munmap_exit(ctx: &TracePointContext) -> Outcome {
    let Some((hit, regs, _)) = traced_call_of_its_own(ctx) else {
        return Ok(());
    };
    emit(&hit, EventKind::Unmap, regs.rdi, 0, regs.rsi, NO_STACK)
}

#[tracepoint(category = "syscalls", name = "sys_exit_mremap")]
pub fn mremap_exit(ctx: TracePointContext) -> i32 {
    finish(&ctx, try_mremap_exit(&ctx));
    0
}

fn try_mremap_exit(ctx: &TracePointContext) -> Outcome {
    let Some((hit, regs, result)) = traced_call_of_its_own(ctx) else {
        return Ok(());
    };
    // mremap(old_addr, old_len, new_len, flags, new_addr)
    let (old, old_len, new_len, flags) = (regs.rdi, regs.rsi, regs.rdx, regs.r10);
    if flags & MREMAP_DONTUNMAP != 0 {
        // A mapping of the caller's own, the old one kept: it gets the
        // stack of the call. glibc's `mremap` is no leaf (it keeps its
        // `va_list` in a frame, without a frame pointer), so the stack
        // starts in the wrapper, at the system call: a frame-pointer walk
        // from there misses the wrapper's caller, `--unwind dwarf` does not.
        return emit_with_stack_at(&hit, &regs, EventKind::RemapKeep, result, old, new_len);
    }
    emit_hashed(
        &hit,
        EventKind::Remap,
        result,
        old,
        new_len,
        NO_STACK,
        old_len,
    )
}

#[tracepoint(category = "syscalls", name = "sys_exit_mprotect")]
pub fn mprotect_exit(ctx: TracePointContext) -> i32 {
    finish(&ctx, try_mprotect_exit(&ctx));
    0
}

fn try_mprotect_exit(ctx: &TracePointContext) -> Outcome {
    let Some((hit, regs, _)) = traced_call_of_its_own(ctx) else {
        return Ok(());
    };
    let accessible = regs.rdx != PROT_NONE;
    emit(
        &hit,
        EventKind::Protect,
        regs.rdi,
        u64::from(accessible),
        regs.rsi,
        NO_STACK,
    )
}

/// [`traced_call`] outside any traced allocator call.
#[inline(always)]
fn traced_call_of_its_own(
    ctx: &TracePointContext,
) -> Option<(Hit<'_, TracePointContext>, pt_regs, u64)> {
    match traced_call(ctx)? {
        (_, _, _, true) => None,
        (hit, regs, result, false) => Some((hit, regs, result)),
    }
}

/// The caller, its syscall's user registers, the call's result, if it
/// succeeded, in a traced process, and whether it was made inside a traced
/// allocator call.
#[inline(always)]
fn traced_call(
    ctx: &TracePointContext,
) -> Option<(Hit<'_, TracePointContext>, pt_regs, u64, bool)> {
    let hit = Hit::new(ctx);
    let traced = if filter::host_wide() {
        filter::traced(hit.pid_tgid)
    } else {
        in_target()
    };
    if !traced {
        return None;
    }
    // SAFETY: `ret` of the sys_exit_* format (see its `format` file).
    let result: i64 = unsafe { ctx.read_at(SYS_EXIT_RET_OFFSET) }.ok()?;
    // Errors are -4095..-1; mmap's addresses are never that high.
    if (-4095..0).contains(&result) {
        return None;
    }
    // SAFETY: helpers without preconditions; the task's saved user
    // registers are then read through the fault-tolerant helper.
    let regs = unsafe {
        let regs_ptr = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(regs_ptr)
    }
    .ok()?;
    // Inside the call in flight: the system call's stack is below the
    // allocator's entry (as the allocator probes tell nesting apart); a slot
    // left by a call whose return went unseen is not above us.
    // SAFETY: reading the slot only.
    let entry_sp = thread_slot(hit.tid()).map_or(0, |slot| unsafe { (*slot).entry_sp });
    let in_allocator = entry_sp != 0 && regs.rsp < entry_sp;
    Some((hit, regs, result as u64, in_allocator))
}
