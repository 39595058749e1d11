//! The uprobe programs: one `<symbol>_enter` per allocator entry point, the
//! shared return program [`alloc_exit`], and the empty pair `--floor`
//! attaches instead. Each is a thin wrapper that hands its context to a
//! fallible `try_*` body and counts why the body stopped early
//! (`counters::finish`); a program never fails the traced call.
//!
//! The bodies apply the pairing and nesting rules of the crate docs: an
//! entry parks its arguments in the thread's call slot (`calls`), the
//! return pairs its result with them, and `free`/`realloc` announce the
//! block they give up on entry. Every body first asks the host-wide filter
//! (`filter`) whether the caller is traced, before any other work.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::debug;
use tracer_ebpf::{Counter, EventKind, NO_STACK};

use crate::{
    calls::{Call, Pending, park, thread_slot},
    counters::{Outcome, finish},
    emit::emit,
    filter,
    hit::Hit,
    sampling::{sample, sampling, was_sampled},
    stacks::emit_with_stack,
};

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_malloc_enter(&ctx));
    0
}

fn try_malloc_enter(ctx: &ProbeContext) -> Outcome {
    let size = ctx.arg::<u64>(0).unwrap_or(0);
    try_enter(ctx, Call::Returns, size, 0)
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_calloc_enter(&ctx));
    0
}

fn try_calloc_enter(ctx: &ProbeContext) -> Outcome {
    let count = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    try_enter(ctx, Call::Returns, array_bytes(count, size), 0)
}

/// `valloc(size)` and `pvalloc(size)` take their size where malloc does.
#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_malloc_enter(&ctx));
    0
}

/// `aligned_alloc(align, size)` and `memalign(align, size)`: one function in
/// glibc (two names for one address, so attached once).
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_memalign_enter(&ctx));
    0
}

fn try_memalign_enter(ctx: &ProbeContext) -> Outcome {
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    try_enter(ctx, Call::Returns, size, 0)
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_posix_memalign_enter(&ctx));
    0
}

fn try_posix_memalign_enter(ctx: &ProbeContext) -> Outcome {
    let result_ptr = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    try_enter(ctx, Call::StoresThroughPointer, size, result_ptr)
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_realloc_enter(&ctx));
    0
}

fn try_realloc_enter(ctx: &ProbeContext) -> Outcome {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    try_enter(ctx, Call::Realloc, size, old)
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_reallocarray_enter(&ctx));
    0
}

fn try_reallocarray_enter(ctx: &ProbeContext) -> Outcome {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    let count = ctx.arg::<u64>(1).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    try_enter(ctx, Call::Realloc, array_bytes(count, size), old)
}

/// Attached after `free`'s NULL check where the libc allows it (see the
/// tracer's probe placement), so `free(NULL)` usually costs no trap at all.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_free_enter(&ctx));
    0
}

fn try_free_enter(ctx: &ProbeContext) -> Outcome {
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr == 0 {
        return Ok(());
    }
    let hit = Hit::new(ctx);
    if !filter::traced(hit.pid_tgid) {
        return Ok(());
    }
    // SAFETY: the slot is plain data, only read here.
    if let Some(pending) = thread_slot(hit.tid()).map(|slot| unsafe { *slot })
        && hit.stack_pointer() <= pending.entry_sp
    {
        // Inside (or tail-called from) a traced call such as realloc(p, 0):
        // that call's own events account for this block.
        return Err(Counter::NestedFrees);
    }
    if was_sampled(addr) {
        emit(&hit, EventKind::Free, addr, 0, 0, NO_STACK)?;
    }
    Ok(())
}

/// Does nothing: attached instead of the real programs by `--floor`, so a
/// benchmark can measure what the traps alone cost at the same probe points.
#[uprobe]
pub fn empty_enter(_ctx: ProbeContext) -> u32 {
    0
}

/// The return-probe counterpart of [`empty_enter`].
#[uretprobe]
pub fn empty_exit(_ctx: RetProbeContext) -> u32 {
    0
}

/// Shared return probe of every allocating function.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    finish(&ctx, try_alloc_exit(&ctx));
    0
}

fn try_alloc_exit(ctx: &RetProbeContext) -> Outcome {
    let hit = Hit::new(ctx);
    if !filter::traced(hit.pid_tgid) {
        return Ok(());
    }
    let tid = hit.tid();
    // SAFETY (for every access to `*slot` here): only this thread's
    // programs touch its slot, one at a time.
    let slot = thread_slot(tid)
        .filter(|slot| unsafe { (**slot).entry_sp } != 0)
        .ok_or(Counter::ReturnsWithoutEntry)?;
    let pending = unsafe { *slot };
    let return_sp = hit.stack_pointer();
    let own_return_sp = pending.entry_sp.wrapping_add(8);
    if return_sp < own_return_sp {
        return Ok(()); // a nested call returning inside the pending one
    }
    unsafe { (*slot).entry_sp = 0 };
    if return_sp > own_return_sp {
        debug!(ctx, "tid {}: stale allocator call state dropped", tid);
        return Err(Counter::StaleEntries);
    }
    let returned: u64 = ctx.ret();
    match pending.call {
        Call::Returns => {
            if returned != 0 && sample(returned, pending.size)? {
                emit_with_stack(&hit, EventKind::Alloc, returned, 0, pending.size)?;
            }
        }
        Call::StoresThroughPointer => {
            // posix_memalign returns an error number, 0 on success.
            if returned as u32 == 0 {
                // SAFETY: the pointer was the caller's out-parameter, which the
                // call just wrote; a fault only fails the read.
                let block = unsafe { bpf_probe_read_user(pending.ptr_arg as *const u64) };
                if let Ok(block) = block
                    && block != 0
                    && sample(block, pending.size)?
                {
                    emit_with_stack(&hit, EventKind::Alloc, block, 0, pending.size)?;
                }
            }
        }
        Call::Realloc if sampling() => {
            // Sampled mode reports a realloc as a free of the old block (at
            // entry) and an allocation of the new one.
            if returned != 0 && sample(returned, pending.size)? {
                emit_with_stack(&hit, EventKind::Alloc, returned, 0, pending.size)?;
            }
        }
        Call::Realloc => {
            if returned != 0 {
                emit_with_stack(
                    &hit,
                    EventKind::ReallocEnd,
                    returned,
                    pending.ptr_arg,
                    pending.size,
                )?;
            } else if pending.ptr_arg != 0 {
                emit(
                    &hit,
                    EventKind::ReallocEnd,
                    0,
                    pending.ptr_arg,
                    pending.size,
                    NO_STACK,
                )?;
            }
        }
    }
    Ok(())
}

/// `count * size`, or `u64::MAX` when it overflows (the call then fails, and
/// a failed reallocarray must not look like `realloc(p, 0)`). Checked by
/// division because BPF has no 128-bit multiply; the bound is read through a
/// volatile load so LLVM cannot fold the check back into one.
fn array_bytes(count: u64, size: u64) -> u64 {
    let max = u64::MAX;
    // SAFETY: reads a local.
    let max = unsafe { core::ptr::read_volatile(&max) };
    if count != 0 && size > max / count {
        u64::MAX
    } else {
        count * size
    }
}

/// Parks a call's arguments for its return probe, applying the nesting
/// rules, and announces the block a realloc gives up.
fn try_enter(ctx: &ProbeContext, call: Call, size: u64, ptr_arg: u64) -> Outcome {
    let hit = Hit::new(ctx);
    if !filter::traced(hit.pid_tgid) {
        return Ok(());
    }
    let tid = hit.tid();
    let entry_sp = hit.stack_pointer();
    let slot = thread_slot(tid);
    // SAFETY: only this thread's programs touch its slot, one at a time.
    let outer = slot.map(|slot| unsafe { *slot });
    if let Some(outer) = outer
        && outer.entry_sp != 0
    {
        if entry_sp < outer.entry_sp {
            return Ok(()); // nested inside a traced call
        }
        if entry_sp == outer.entry_sp
            && call == Call::Realloc
            && outer.call == Call::Realloc
            && outer.ptr_arg == ptr_arg
        {
            // reallocarray tail-calling realloc: the block was already
            // announced; only the size (identical) would change.
            return Ok(());
        }
    }
    let pending = Pending {
        entry_sp,
        size,
        ptr_arg,
        call,
    };
    park(tid, slot, pending)?;
    if call == Call::Realloc && ptr_arg != 0 {
        if !sampling() {
            emit(&hit, EventKind::ReallocStart, 0, ptr_arg, size, NO_STACK)?;
        } else if was_sampled(ptr_arg) {
            emit(&hit, EventKind::Free, ptr_arg, 0, 0, NO_STACK)?;
        }
    }
    Ok(())
}
