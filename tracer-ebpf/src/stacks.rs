//! The stack an allocation event carries. With `--unwind stack-copy`, a copy
//! of the caller's registers and the top of its user stack, for userspace to
//! unwind; otherwise the caller's stack walked here, with the process's
//! DWARF tables when it has them (`dwarf`), else through frame pointers
//! (`framewalk`), whose frames cross to userspace the first time it is seen
//! and only its hash after (see `tracer_ebpf::STACK_HASH`).
//!
//! Only allocations carry stacks; frees and markers go through `emit`
//! directly.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_RB_FORCE_WAKEUP, pt_regs},
    helpers::generated,
    maps::Array,
};
use tracer_ebpf::{
    Counter, EventKind, EventWithStack, EventWithStackCopy, INLINE_STACK, INLINE_STACK_CUT,
    INLINE_STACK_PARTIAL, KNOWN_STACK_SLOTS, MAX_INLINE_FRAMES, MAX_STACK_COPY_BYTES, STACK_COPY,
    STACK_COPY_CHUNK, STACK_HASH, known_stack_slot,
};

use crate::{
    counters::{Outcome, bump},
    dwarf,
    emit::{emit_hashed, event, ring, wakeup_flags},
    framewalk::walk_frames,
    hit::Hit,
};

/// Bytes of user stack copied into each allocation event for userspace's
/// DWARF unwinder; 0 keeps the kernel's frame-pointer walk. Userspace sets it
/// at load time (`tracer_ebpf::STACK_COPY_BYTES_GLOBAL`): it lives in
/// read-only data, so the verifier knows its value, prunes the unused path
/// and accepts it as a ring-buffer reservation size.
#[unsafe(export_name = tracer_ebpf::shared_name!(STACK_COPY_BYTES_GLOBAL))]
static STACK_COPY_BYTES: Global<u32> = Global::new(0);

shared_map!(
    KNOWN_STACKS_MAP,
    /// Hashes of the frame-pointer stacks already sent to userspace with their
    /// frames (see `tracer_ebpf::STACK_HASH`), direct-mapped by their low bits:
    /// the verifier inlines an array lookup, where a hash map lookup cost ~40 ns
    /// per allocation. Two stacks sharing a slot evict each other, and a stack
    /// evicted is simply sent again; userspace evicts the stacks it forgets
    /// (`--max-stacks`) the same way.
    static KNOWN_STACKS: Array<u64> = Array::with_max_entries(KNOWN_STACK_SLOTS, 0);
);

/// Whether the frames of the stack hashed `hash` were sent and userspace
/// still knows them: an event may then name the stack by its hash alone.
#[inline(always)]
pub fn is_known(hash: u64) -> bool {
    KNOWN_STACKS.get(known_stack_slot(hash)) == Some(&hash)
}

/// Writes an allocation event with the caller's user stack: a copy of the
/// stack for userspace to unwind in DWARF mode; otherwise the frame-pointer
/// chain, as frames the first time this stack is seen and by hash after.
pub fn emit_with_stack<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
) -> Outcome {
    emit_with_stack_at(hit, hit.regs(), kind, addr, old_addr, size)
}

/// [`emit_with_stack`] for a caller whose user registers `regs` are not
/// the program's context (a syscall's, in `mapped`): as at an allocator's
/// return, `rip` must be the return address in the caller.
#[inline(always)]
pub fn emit_with_stack_at<C: EbpfContext>(
    hit: &Hit<C>,
    regs: &pt_regs,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
) -> Outcome {
    let copy_bytes = STACK_COPY_BYTES.load();
    if copy_bytes != 0 {
        return emit_with_stack_copy(hit, regs, kind, addr, old_addr, size, copy_bytes);
    }
    // At the allocator's return, `rip` is the return address in its caller,
    // `rsp` its stack pointer and `rbp` its frame pointer (callee-saved, so
    // restored).
    let (ip, sp, bp) = (regs.rip, regs.rsp, regs.rbp);
    let tgid = hit.pid_tgid >> 32;
    if let Some(walk) = dwarf::walk(tgid as u32, ip, sp, bp) {
        return emit_walked(hit, kind, addr, old_addr, size, &walk);
    }
    // The process is part of the name: the same addresses mean other code
    // in another process (host-wide mode).
    let (hash, _) = walk_frames(ip, bp, tgid, |_, _| {});
    if is_known(hash) {
        return emit_hashed(hit, kind, addr, old_addr, size, STACK_HASH, hash);
    }
    let mut entry = ring()
        .reserve::<EventWithStack>(0)
        .ok_or(Counter::LostEvents)?;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved, writable EventWithStack, and
    // `walk_frames` only hands out indices below MAX_INLINE_FRAMES.
    let (_, count) = walk_frames(ip, bp, tgid, |index, frame| unsafe {
        (*record).frames[index] = frame;
    });
    // SAFETY: as above.
    unsafe {
        let mut event = event(hit.pid_tgid, kind, addr, old_addr, size, INLINE_STACK);
        event.stack_hash = hash;
        (*record).event = event;
        (*record).stack_bytes = (count * 8) as u64;
    }
    // A new stack wakes the reader at once: its frames are named from the
    // live process, which may be about to exit. New stacks are rare.
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    // Only now: a CPU that finds the hash known must find the frames
    // already in the ring ahead of its own event.
    if let Some(known) = KNOWN_STACKS.get_ptr_mut(known_stack_slot(hash)) {
        // SAFETY: plain data; when two CPUs race for the slot, one of their
        // stacks is only sent again later.
        unsafe { *known = hash };
    }
    Ok(())
}

/// Sends an allocation with a walked stack (the DWARF unwinder's, or the
/// kernel's, in `kmem`): by hash when
/// the stack is known, else with its frames (see [`emit_with_stack`]). An
/// incomplete walk is not remembered, so it is sent again until userspace
/// has loaded the tables it lacked.
#[inline(always)]
pub fn emit_walked<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    walk: &dwarf::Walk,
) -> Outcome {
    if walk.complete && is_known(walk.hash) {
        return emit_hashed(hit, kind, addr, old_addr, size, STACK_HASH, walk.hash);
    }
    let mut entry = ring()
        .reserve::<EventWithStack>(0)
        .ok_or(Counter::LostEvents)?;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved, writable EventWithStack, and
    // `walk.frames` to the per-CPU frames of this run.
    unsafe {
        let frames = &raw mut (*record).frames;
        if generated::bpf_probe_read_kernel(
            frames.cast(),
            size_of::<[u64; MAX_INLINE_FRAMES]>() as u32,
            walk.frames.cast(),
        ) != 0
        {
            entry.discard(0);
            return Err(Counter::StackErrors);
        }
        let stack_id = match (walk.complete, walk.cut) {
            (false, _) => INLINE_STACK_PARTIAL,
            (true, true) => INLINE_STACK_CUT,
            (true, false) => INLINE_STACK,
        };
        let mut event = event(hit.pid_tgid, kind, addr, old_addr, size, stack_id);
        event.stack_hash = walk.hash;
        (*record).event = event;
        (*record).stack_bytes = (walk.count.min(MAX_INLINE_FRAMES) * 8) as u64;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    if walk.complete
        && let Some(known) = KNOWN_STACKS.get_ptr_mut(known_stack_slot(walk.hash))
    {
        // SAFETY: as in `emit_with_stack`.
        unsafe { *known = walk.hash };
    }
    Ok(())
}

/// Writes an allocation event followed by the caller's registers and up to
/// `copy_bytes` of its user stack, read page by page up to the first page
/// that is not mapped (see [`STACK_COPY_CHUNK`] for why).
#[inline(always)]
fn emit_with_stack_copy<C: EbpfContext>(
    hit: &Hit<C>,
    regs: &pt_regs,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    copy_bytes: u32,
) -> Outcome {
    const HEADER: usize = size_of::<EventWithStackCopy>();
    const CHUNK: usize = STACK_COPY_CHUNK as usize;
    const MAX_CHUNKS: usize = (MAX_STACK_COPY_BYTES / STACK_COPY_CHUNK) as usize;
    let chunks = copy_bytes.min(MAX_STACK_COPY_BYTES) as usize / CHUNK;
    let mut entry = ring()
        .reserve_bytes(HEADER + chunks * CHUNK, 0)
        .ok_or(Counter::LostEvents)?;
    let record = entry.as_mut_ptr();
    let (ip, sp, bp) = (regs.rip, regs.rsp, regs.rbp);
    // The first chunk runs up to the page boundary above `sp`, the others
    // are whole pages: a chunk then faults exactly when its page is not
    // mapped, and everything below the stack's end is kept.
    let first = CHUNK - (sp as usize & (CHUNK - 1));
    // SAFETY (both reads): the destination lies within the `chunks` chunks
    // reserved after the header (`first <= CHUNK`, and the loop stops one
    // chunk early); the helper faults safely on bad sources.
    let read = unsafe {
        generated::bpf_probe_read_user(record.add(HEADER).cast(), first as u32, sp as *const _)
    };
    let mut len = if read == 0 { first } else { 0 };
    for chunk in 1..MAX_CHUNKS {
        if len == 0 || chunk >= chunks {
            break;
        }
        let read = unsafe {
            generated::bpf_probe_read_user(
                record.add(HEADER + len).cast(),
                CHUNK as u32,
                (sp + len as u64) as *const _,
            )
        };
        if read != 0 {
            break;
        }
        len += CHUNK;
    }
    if len == 0 {
        bump(Counter::StackErrors);
    }
    let header = EventWithStackCopy {
        event: event(hit.pid_tgid, kind, addr, old_addr, size, STACK_COPY),
        ip,
        sp,
        bp,
        stack_len: len as u64,
    };
    let timestamp_ns = header.event.timestamp_ns;
    // SAFETY: the reservation starts with room for the header, and ring
    // records are 8-byte aligned.
    unsafe { record.cast::<EventWithStackCopy>().write(header) };
    entry.submit(wakeup_flags(timestamp_ns));
    Ok(())
}
