//! The uprobe programs and their maps. See the crate docs for the pairing and
//! ordering rules they implement.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{
        BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_prandom_u32,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user, generated,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::{debug, warn};
use tracer_ebpf::{
    COUNTER_SLOTS, Counter, DEFAULT_RING_SIZE, EVENT_RINGS, Event, EventKind, EventWithStack,
    EventWithStackCopy, INLINE_STACK, INLINE_STACK_PARTIAL, MAX_INLINE_FRAMES,
    MAX_STACK_COPY_BYTES, MAX_THREAD_SLOTS, NO_STACK, SAMPLE_TABLE_SLOTS, STACK_COPY,
    STACK_COPY_CHUNK, STACK_HASH, sample_slot,
};

use crate::{dwarf, filter, stack_hash::start_hash};

/// Declares the event rings, `EVENTS_0` to `EVENTS_{EVENT_RINGS - 1}`, and
/// [`ring`], which picks the current CPU's.
macro_rules! event_rings {
    ($($index:literal => $ring:ident),+ $(,)?) => {
        $(
            #[map]
            static $ring: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_SIZE, 0);
        )+

        /// The ring of the CPU the program runs on. One shared ring made
        /// CPUs fight over its lock and cache lines: on a 2-thread churn that
        /// tripled the cost of each event (bpf_stats: a free from 135 to
        /// 460 ns). Userspace merges the rings by timestamp.
        fn ring() -> &'static RingBuf {
            // SAFETY: a helper without preconditions.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            match cpu % EVENT_RINGS {
                $($index => &$ring,)+
                _ => &EVENTS_0,
            }
        }
    };
}

event_rings!(
    0 => EVENTS_0, 1 => EVENTS_1, 2 => EVENTS_2, 3 => EVENTS_3,
    4 => EVENTS_4, 5 => EVENTS_5, 6 => EVENTS_6, 7 => EVENTS_7,
    8 => EVENTS_8, 9 => EVENTS_9, 10 => EVENTS_10, 11 => EVENTS_11,
    12 => EVENTS_12, 13 => EVENTS_13, 14 => EVENTS_14, 15 => EVENTS_15,
);

/// Hashes of the frame-pointer stacks already sent to userspace with their
/// frames (see `tracer_ebpf::STACK_HASH`), direct-mapped by their low bits:
/// the verifier inlines an array lookup, where a hash map lookup cost ~40 ns
/// per allocation. Two stacks sharing a slot evict each other, and a stack
/// evicted is simply sent again.
#[map]
static KNOWN_STACKS: Array<u64> = Array::with_max_entries(KNOWN_STACK_SLOTS, 0);

const KNOWN_STACK_SLOTS: u32 = 1 << 16;

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// The allocator call in flight on each thread whose id is below
/// [`THREAD_SLOTS`], indexed by thread id. Every probe hit looks its thread's
/// call up, and the verifier inlines an array lookup, where a hash map lookup
/// cost ~30 ns per probe in `bpf_stats` (three per malloc+free). A thread id
/// names one live thread, so no two threads ever share a slot. A slot is
/// rewritten in place, an `entry_sp` of 0 marking it idle. Mappable only
/// because the kernel then page-aligns the values, so that each slot is
/// exactly one cache line (see [`PendingSlot`]).
#[map]
static PENDING: Array<PendingSlot> = Array::with_max_entries(MAX_THREAD_SLOTS, BPF_F_MMAPABLE);

/// A [`Pending`] padded to a cache line of its own: threads with
/// consecutive ids write neighbouring [`PENDING`] slots all the time, and two
/// slots sharing a line tripled the programs' cost on a 2-thread churn. The
/// padding is outside `Pending`, whose copies it would only lengthen.
#[repr(C)]
struct PendingSlot {
    pending: Pending,
    _padding: [u8; 64 - size_of::<Pending>()],
}

/// The calls of threads whose id is [`THREAD_SLOTS`] or more (hosts may
/// raise `pid_max` far beyond the array), by thread id. Created on a
/// thread's first call and then rewritten in place: inserting and deleting a
/// hash element per call cost more than the rest of the entry program. LRU,
/// so the slots of threads that exited make room for new ones.
#[map]
static PENDING_BY_TID: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(65536, 0);

/// Thread ids below this use [`PENDING`], the others [`PENDING_BY_TID`]. Set
/// at load time (`tracer_ebpf::THREAD_SLOTS_GLOBAL`): `MAX_THREAD_SLOTS`,
/// unless a test lowers it to prove the hash map path exact too.
#[unsafe(no_mangle)]
static THREAD_SLOTS: Global<u32> = Global::new(MAX_THREAD_SLOTS);

/// Thread `tid`'s call slot, if the kernel has (or makes) one.
fn thread_slot(tid: u32) -> Option<*mut Pending> {
    if tid < THREAD_SLOTS.load() {
        // SAFETY: only computes the address of a field of the slot.
        PENDING
            .get_ptr_mut(tid)
            .map(|slot| unsafe { &raw mut (*slot).pending })
    } else {
        PENDING_BY_TID.get_ptr_mut(&tid)
    }
}

/// What a call's return needs from its entry.
#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    /// Stack pointer at the function's first instruction; 0 when the thread
    /// has no call in flight.
    entry_sp: u64,
    size: u64,
    /// realloc: the block being resized; posix_memalign: where the result goes.
    ptr_arg: u64,
    call: Call,
}

/// How the result of a pending call is read and reported.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Call {
    /// The block is the return value.
    Returns = 0,
    /// realloc and reallocarray: report the move (or failure) of `ptr_arg`.
    Realloc = 1,
    /// posix_memalign: the block is stored at `*ptr_arg` when it returns 0.
    StoresThroughPointer = 2,
}

/// Bytes of user stack copied into each allocation event for userspace's
/// DWARF unwinder; 0 keeps the kernel's frame-pointer walk. Userspace sets it
/// at load time (`tracer_ebpf::STACK_COPY_BYTES_GLOBAL`): it lives in
/// read-only data, so the verifier knows its value, prunes the unused path
/// and accepts it as a ring-buffer reservation size.
#[unsafe(no_mangle)]
static STACK_COPY_BYTES: Global<u32> = Global::new(0);

/// With `--sample-rate`, the width of one slot of [`SAMPLE_TABLE`] in bytes;
/// 0 (the default) reports every call. Set at load time, so the verifier
/// prunes the sampling code from exact tracing.
#[unsafe(no_mangle)]
static SAMPLE_STEP: Global<u64> = Global::new(0);

/// Sampling thresholds by size slot (see `tracer_ebpf::SAMPLE_TABLE_MAP`).
#[map(name = "SAMPLE_TABLE")]
static SAMPLE_TABLE: Array<u64> = Array::with_max_entries(SAMPLE_TABLE_SLOTS, 0);

/// Sampled blocks still live: in sampled mode `free` reports only these, so
/// the frees of unsampled blocks cost a failed delete and no event.
#[map]
static SAMPLED: HashMap<u64, u8> = HashMap::with_max_entries(1 << 20, 0);

/// Once the ring holds 1/WAKEUP_FRACTION of its size, events wake the reader.
const WAKEUP_FRACTION: u64 = 4;

/// Events submitted, on average, between two looks at how full the ring is.
const WAKEUP_CHECK_EVERY: u64 = 64;

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(0).unwrap_or(0);
    enter(&ctx, Call::Returns, size, 0)
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let count = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    enter(&ctx, Call::Returns, array_bytes(count, size), 0)
}

/// `valloc(size)` and `pvalloc(size)` take their size where malloc does.
#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(0).unwrap_or(0);
    enter(&ctx, Call::Returns, size, 0)
}

/// `aligned_alloc(align, size)` and `memalign(align, size)`: one function in
/// glibc (two names for one address, so attached once).
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    enter(&ctx, Call::Returns, size, 0)
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let result_ptr = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    enter(&ctx, Call::StoresThroughPointer, size, result_ptr)
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    enter(&ctx, Call::Realloc, size, old)
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    let count = ctx.arg::<u64>(1).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    enter(&ctx, Call::Realloc, array_bytes(count, size), old)
}

/// Attached after `free`'s NULL check where the libc allows it (see the
/// tracer's probe placement), so `free(NULL)` usually costs no trap at all.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr == 0 {
        return 0;
    }
    let hit = Hit::new(&ctx);
    if !filter::traced(hit.pid_tgid) {
        return 0;
    }
    // SAFETY: the slot is plain data, only read here.
    if let Some(pending) = thread_slot(hit.tid()).map(|slot| unsafe { *slot })
        && stack_pointer(&ctx) <= pending.entry_sp
    {
        // Inside (or tail-called from) a traced call such as realloc(p, 0):
        // that call's own events account for this block.
        bump(Counter::NestedFrees);
        return 0;
    }
    if was_sampled(addr) {
        emit(&hit, EventKind::Free, addr, 0, 0, NO_STACK);
    }
    0
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
    let hit = Hit::new(&ctx);
    if !filter::traced(hit.pid_tgid) {
        return 0;
    }
    let tid = hit.tid();
    // SAFETY (for every access to `*slot` here): only this thread's
    // programs touch its slot, one at a time.
    let Some(slot) = thread_slot(tid).filter(|slot| unsafe { (**slot).entry_sp } != 0) else {
        bump(Counter::ReturnsWithoutEntry);
        return 0;
    };
    let pending = unsafe { *slot };
    let return_sp = stack_pointer(&ctx);
    let own_return_sp = pending.entry_sp.wrapping_add(8);
    if return_sp < own_return_sp {
        return 0; // a nested call returning inside the pending one
    }
    unsafe { (*slot).entry_sp = 0 };
    if return_sp > own_return_sp {
        bump(Counter::StaleEntries);
        debug!(&ctx, "tid {}: stale allocator call state dropped", tid);
        return 0;
    }
    let returned: u64 = ctx.ret();
    match pending.call {
        Call::Returns => {
            if returned != 0 && sample(returned, pending.size) {
                emit_with_stack(&hit, EventKind::Alloc, returned, 0, pending.size);
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
                    && sample(block, pending.size)
                {
                    emit_with_stack(&hit, EventKind::Alloc, block, 0, pending.size);
                }
            }
        }
        Call::Realloc if SAMPLE_STEP.load() != 0 => {
            // Sampled mode reports a realloc as a free of the old block (at
            // entry) and an allocation of the new one.
            if returned != 0 && sample(returned, pending.size) {
                emit_with_stack(&hit, EventKind::Alloc, returned, 0, pending.size);
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
                );
            } else if pending.ptr_arg != 0 {
                emit(
                    &hit,
                    EventKind::ReallocEnd,
                    0,
                    pending.ptr_arg,
                    pending.size,
                    NO_STACK,
                );
            }
        }
    }
    0
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

/// Parks a call's arguments for its return probe, applying the nesting rules.
fn enter(ctx: &ProbeContext, call: Call, size: u64, ptr_arg: u64) -> u32 {
    let hit = Hit::new(ctx);
    if !filter::traced(hit.pid_tgid) {
        return 0;
    }
    let tid = hit.tid();
    let entry_sp = stack_pointer(ctx);
    let slot = thread_slot(tid);
    // SAFETY: only this thread's programs touch its slot, one at a time.
    let outer = slot.map(|slot| unsafe { *slot });
    if let Some(outer) = outer
        && outer.entry_sp != 0
    {
        if entry_sp < outer.entry_sp {
            return 0; // nested inside a traced call
        }
        if entry_sp == outer.entry_sp
            && call == Call::Realloc
            && outer.call == Call::Realloc
            && outer.ptr_arg == ptr_arg
        {
            // reallocarray tail-calling realloc: the block was already
            // announced; only the size (identical) would change.
            return 0;
        }
    }
    let pending = Pending {
        entry_sp,
        size,
        ptr_arg,
        call,
    };
    match slot {
        // SAFETY: as above.
        Some(slot) => unsafe { *slot = pending },
        None => {
            // Only thread ids past the array get here: array slots always exist.
            if PENDING_BY_TID.insert(&tid, &pending, 0).is_err() {
                bump(Counter::MapErrors);
                return 0;
            }
        }
    }
    if call == Call::Realloc && ptr_arg != 0 {
        if SAMPLE_STEP.load() == 0 {
            emit(&hit, EventKind::ReallocStart, 0, ptr_arg, size, NO_STACK);
        } else if was_sampled(ptr_arg) {
            emit(&hit, EventKind::Free, ptr_arg, 0, 0, NO_STACK);
        }
    }
    0
}

/// Whether to report the allocation of `size` bytes at `addr`: always when
/// tracing every call; with `--sample-rate`, with the probability of its
/// size slot, remembering the block so its free is reported too.
fn sample(addr: u64, size: u64) -> bool {
    let step = SAMPLE_STEP.load();
    if step == 0 {
        return true;
    }
    let threshold = SAMPLE_TABLE
        .get(sample_slot(size, step))
        .copied()
        .unwrap_or(1 << 32);
    // SAFETY: a helper without preconditions.
    let draw = u64::from(unsafe { bpf_get_prandom_u32() });
    if draw >= threshold {
        return false;
    }
    if SAMPLED.insert(&addr, &1, 0).is_err() {
        bump(Counter::MapErrors);
        return false;
    }
    true
}

/// Whether a block being released was reported: always when tracing every
/// call; with `--sample-rate`, when it was sampled (and is forgotten now).
fn was_sampled(addr: u64) -> bool {
    SAMPLE_STEP.load() == 0 || SAMPLED.remove(&addr).is_ok()
}

/// Writes one event to the ring buffer, or counts it as lost.
#[inline(always)]
fn emit<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    stack_id: i32,
) {
    emit_hashed(hit, kind, addr, old_addr, size, stack_id, 0);
}

/// [`emit`] with a stack hash (see `tracer_ebpf::STACK_HASH`).
#[inline(always)]
fn emit_hashed<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    stack_id: i32,
    stack_hash: u64,
) {
    let Some(mut entry) = ring().reserve::<Event>(0) else {
        count_lost(hit.ctx);
        return;
    };
    let mut event = event(hit.pid_tgid, kind, addr, old_addr, size, stack_id);
    event.stack_hash = stack_hash;
    entry.write(event);
    entry.submit(wakeup_flags(event.timestamp_ns));
}

/// Writes an event that concerns the whole process rather than a block,
/// with the process's name (see `Event::marker_comm`).
pub fn emit_process_marker<C: EbpfContext>(ctx: &C, kind: EventKind) {
    let comm = bpf_get_current_comm().unwrap_or_default();
    let (low, high) = Event::comm_words(&comm);
    emit(&Hit::new(ctx), kind, low, high, 0, NO_STACK);
}

/// Writes an allocation event with the caller's user stack: a copy of the
/// stack for userspace to unwind in DWARF mode; otherwise the frame-pointer
/// chain, as frames the first time this stack is seen and by hash after.
fn emit_with_stack<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
) {
    let copy_bytes = STACK_COPY_BYTES.load();
    if copy_bytes != 0 {
        emit_with_stack_copy(hit, kind, addr, old_addr, size, copy_bytes);
        return;
    }
    let regs = hit.ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: uprobe contexts are the trapped task's `pt_regs`; at the
    // allocator's return, `rip` is the return address in its caller, `rsp`
    // its stack pointer and `rbp` its frame pointer (callee-saved, so
    // restored).
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    let tgid = hit.pid_tgid >> 32;
    if let Some(walk) = dwarf::walk(tgid as u32, ip, sp, bp) {
        emit_walked(hit, kind, addr, old_addr, size, &walk);
        return;
    }
    // The process is part of the name: the same addresses mean other code
    // in another process (host-wide mode).
    let (hash, _) = walk_frames(ip, bp, tgid, |_, _| {});
    let known_slot = hash as u32 % KNOWN_STACK_SLOTS;
    if KNOWN_STACKS.get(known_slot) == Some(&hash) {
        emit_hashed(hit, kind, addr, old_addr, size, STACK_HASH, hash);
        return;
    }
    let Some(mut entry) = ring().reserve::<EventWithStack>(0) else {
        count_lost(hit.ctx);
        return;
    };
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
    if let Some(known) = KNOWN_STACKS.get_ptr_mut(known_slot) {
        // SAFETY: plain data; when two CPUs race for the slot, one of their
        // stacks is only sent again later.
        unsafe { *known = hash };
    }
}

/// Sends an allocation whose stack the DWARF unwinder walked: by hash when
/// the stack is known, else with its frames (see [`emit_with_stack`]). An
/// incomplete walk is not remembered, so it is sent again until userspace
/// has loaded the tables it lacked.
#[inline(always)]
fn emit_walked<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    walk: &dwarf::Walk,
) {
    let known_slot = walk.hash as u32 % KNOWN_STACK_SLOTS;
    if walk.complete && KNOWN_STACKS.get(known_slot) == Some(&walk.hash) {
        emit_hashed(hit, kind, addr, old_addr, size, STACK_HASH, walk.hash);
        return;
    }
    let Some(mut entry) = ring().reserve::<EventWithStack>(0) else {
        count_lost(hit.ctx);
        return;
    };
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
            bump(Counter::StackErrors);
            return;
        }
        let stack_id = if walk.complete {
            INLINE_STACK
        } else {
            INLINE_STACK_PARTIAL
        };
        let mut event = event(hit.pid_tgid, kind, addr, old_addr, size, stack_id);
        event.stack_hash = walk.hash;
        (*record).event = event;
        (*record).stack_bytes = (walk.count.min(MAX_INLINE_FRAMES) * 8) as u64;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    if walk.complete
        && let Some(known) = KNOWN_STACKS.get_ptr_mut(known_slot)
    {
        // SAFETY: as in `emit_with_stack`.
        unsafe { *known = walk.hash };
    }
}

/// Writes an allocation event followed by the caller's registers and up to
/// `copy_bytes` of its user stack, read page by page up to the first page
/// that is not mapped (see [`STACK_COPY_CHUNK`] for why).
#[inline(always)]
fn emit_with_stack_copy<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    copy_bytes: u32,
) {
    const HEADER: usize = size_of::<EventWithStackCopy>();
    const CHUNK: usize = STACK_COPY_CHUNK as usize;
    const MAX_CHUNKS: usize = (MAX_STACK_COPY_BYTES / STACK_COPY_CHUNK) as usize;
    let chunks = copy_bytes.min(MAX_STACK_COPY_BYTES) as usize / CHUNK;
    let Some(mut entry) = ring().reserve_bytes(HEADER + chunks * CHUNK, 0) else {
        count_lost(hit.ctx);
        return;
    };
    let record = entry.as_mut_ptr();
    let regs = hit.ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: uprobe contexts are the trapped task's `pt_regs`.
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
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
}

/// Walks the caller's frame-pointer chain from `ip`/`bp`, handing each
/// return address (leaf first) to `frame` with its index; returns the
/// stack's hash (mixed with `tgid`) and the number of frames. Stops at the
/// first frame that cannot be read, does not move up the stack, or is 0.
#[inline(always)]
fn walk_frames(ip: u64, bp: u64, tgid: u64, mut frame: impl FnMut(usize, u64)) -> (u64, usize) {
    let mut hash = start_hash(tgid);
    let mut fp = bp;
    let mut return_address = ip;
    let mut count = 0;
    while count < MAX_INLINE_FRAMES {
        frame(count, return_address);
        hash = hash.add_frame(return_address);
        count += 1;
        // SAFETY: reads user memory through the fault-tolerant helper.
        let Ok([next_fp, next_return]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) })
        else {
            break;
        };
        if next_fp <= fp || next_return == 0 {
            break;
        }
        fp = next_fp;
        return_address = next_return;
    }
    (hash.finish(), count)
}

fn event(
    pid_tgid: u64,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    stack_id: i32,
) -> Event {
    Event {
        kind: kind as u32,
        tid: pid_tgid as u32,
        pid: (pid_tgid >> 32) as u32,
        stack_id,
        size,
        addr,
        old_addr,
        // SAFETY: a helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_hash: 0,
    }
}

fn count_lost<C: EbpfContext>(ctx: &C) {
    if bump(Counter::LostEvents) == 1 {
        // Once per CPU: explains lost events under --verbose without
        // flooding the log ring while the event ring is full.
        warn!(
            ctx,
            "event ring buffer full: events lost; raise --ring-size"
        );
    }
}

/// Below a quarter full, events are submitted without waking the reader,
/// which drains on a short timer: a wake-up per event costs more than the
/// event itself. Even asking the ring how full it is costs ~200 ns per
/// malloc+free pair (measured: two queries per event), so only about one
/// event in [`WAKEUP_CHECK_EVERY`] asks, picked by the low bits of its
/// timestamp (free, unlike a per-CPU counter, which measured ~100 ns): a
/// quarter of the default ring is ~40,000 events, far more than a CPU writes
/// between two checks.
fn wakeup_flags(timestamp_ns: u64) -> u64 {
    if (timestamp_ns >> 4) % WAKEUP_CHECK_EVERY != 0 {
        return BPF_RB_NO_WAKEUP as u64;
    }
    let ring = ring();
    let backlog = ring.query(BPF_RB_AVAIL_DATA as u64);
    let capacity = ring.query(BPF_RB_RING_SIZE as u64);
    let flags = if backlog >= capacity / WAKEUP_FRACTION {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}

/// Increments a counter and returns its new value on this CPU.
fn bump(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot, and uprobe programs run with preemption
        // disabled, so nothing else touches it during the increment.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// A program's context and the calling task's ids, asked of the kernel
/// once per hit (a helper call each time otherwise).
struct Hit<'a, C> {
    ctx: &'a C,
    pid_tgid: u64,
}

impl<'a, C: EbpfContext> Hit<'a, C> {
    #[inline(always)]
    fn new(ctx: &'a C) -> Self {
        Self {
            ctx,
            pid_tgid: bpf_get_current_pid_tgid(),
        }
    }

    fn tid(&self) -> u32 {
        self.pid_tgid as u32
    }
}

fn stack_pointer<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: uprobe contexts are the trapped task's `pt_regs`.
    unsafe { (*regs).rsp }
}
