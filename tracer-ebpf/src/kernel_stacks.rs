//! The kernel stack of a kernel allocation (`--kernel`, for `kmem`): unwound
//! by the kernel (`bpf_get_stack`, its ORC unwinder), or taken from the
//! cache of the stack last unwound on the same path (see
//! `tracer_ebpf::kernel_stacks`), and sent through the same send-once path
//! as user stacks (`stacks::emit_walked`).
//!
//! An unwind costs ~2.8 µs per allocation on the bench's kernel workload
//! (bpf_stats), and made `--kernel` slow that workload 3.55-3.7x; with the
//! cache, 1.6-1.7x (an allocation's program 340-500 ns, misses included),
//! ~0.1% of checked hits wrong. The tracepoints alone, with programs that
//! return at once, cost 1.3x (bpf_stats on).
//!
//! A hit is sent by hash only while userspace still knows the stack's
//! frames (`stacks::is_known`): userspace forgets stacks beyond
//! `--max-stacks` and clears their slots, and a cached hash it forgot is
//! unwound again, which sends the frames again.

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{bpf_probe_read_kernel, generated},
    maps::{Array, PerCpuArray},
    programs::TracePointContext,
};
use tracer_ebpf::{
    Counter, EventKind, MAX_INLINE_FRAMES, NO_STACK, STACK_HASH,
    kernel_stacks::{AMBIGUOUS, CHECK_EVERY, CacheEntry, cache_slot},
};

use crate::{
    counters::{Outcome, bump},
    dwarf::Walk,
    emit::{emit, emit_hashed},
    hit::Hit,
    stack_hash::start_hash,
    stacks::{emit_walked, is_known},
};

/// Seed of a kernel stack's hash: not a process id, which seeds user
/// stacks' hashes.
const KERNEL_STACK_SEED: u64 = u64::MAX;

/// Seed of a path's key: anything but a stack's seed.
const PATH_SEED: u64 = 0x6b70_6174_6873;

/// Where `bpf_get_stack` leaves a kernel stack before it is hashed. These
/// tracepoints fire in every context, interrupts included; the kernel runs
/// no second tracing program on a CPU while one runs there, so the buffer
/// is never shared.
#[aya_ebpf::macros::map]
static KERNEL_FRAMES: PerCpuArray<[u64; MAX_INLINE_FRAMES]> = PerCpuArray::with_max_entries(1, 0);

shared_map!(
    KERNEL_STACK_CACHE_MAP,
    /// Direct-mapped by the path's bits, like `KNOWN_STACKS`: an array
    /// lookup the verifier inlines, where a hash map (LRU or not) lookup
    /// measured ~40 ns there. Two paths sharing a slot evict each other.
    static CACHE: Array<CacheEntry> =
        Array::with_max_entries(tracer_ebpf::kernel_stacks::CACHE_SLOTS, 0);
);

/// Sends the allocation of `bytes` at `key` with its kernel stack: cached
/// when `path` (see [`path_of`]) has a stack userspace knows, unwound
/// otherwise, and every [`CHECK_EVERY`]th hit on this CPU unwound and
/// compared with the cache (a check costs an unwind: 2.8 µs / 256 = ~11
/// ns per hit, for ~2,000 checks a second on the bench's workload; one in
/// 64 cost 0.05-0.1x more slowdown for no better estimate).
#[inline(always)]
pub fn emit_alloc(ctx: &TracePointContext, key: u64, bytes: u64, path: Option<u64>) -> Outcome {
    let hit = Hit::new(ctx);
    let cached = path.and_then(cached_stack);
    let usable = cached.filter(|&stack| stack != AMBIGUOUS && is_known(stack));
    let checking = match usable {
        Some(stack) => {
            if !bump(Counter::KernelStackCacheHits).is_multiple_of(CHECK_EVERY) {
                return emit_hashed(&hit, EventKind::Alloc, key, 0, bytes, STACK_HASH, stack);
            }
            true
        }
        None => false,
    };
    let walk = match unwind(ctx) {
        Some(walk) => walk,
        None => {
            emit(&hit, EventKind::Alloc, key, 0, bytes, NO_STACK)?;
            return Err(Counter::StackErrors);
        }
    };
    if let Some(path) = path {
        remember(path, cached, walk.hash, checking);
    }
    emit_walked(&hit, EventKind::Alloc, key, 0, bytes, &walk)
}

/// The path key of the allocation `ctx` reports, made by `call_site` (0
/// for pages, which have none): the caller, the current system call, and
/// the kernel addresses in the top [`SCAN_BYTES`] of the stack above the
/// tracepoint (the nearest return addresses). `None` when the stack
/// cannot be read.
///
/// Measured on the bench's kernel workload, host-wide on a busy machine
/// (3 s runs; "wrong": checked hits whose unwound stack differed):
/// - the first design, the stack's depth at the tracepoint with the call
///   site and the system call, was wrong on 6.8% of checks (1,198 of
///   17,700), and still cached only 57% of stacks once paths found with
///   two stacks were always unwound: the kernel moves each system call's
///   stack by a random 0-1 KiB (`CONFIG_RANDOMIZE_KSTACK_OFFSET`, on by
///   default), so a path had dozens of depths and paths of different
///   depths met at one;
/// - a scan of the stack instead: 512 bytes, 0.05-0.18% wrong, and
///   6-9% of allocations unwound (misses: more distinct paths); 384
///   bytes, 0.05-0.12% wrong, 2-3% unwound, the slowdown 1.6-1.7x
///   against 1.7-1.8x; 256 bytes, 0.3-0.6% wrong and 25% unwound (more
///   paths found ambiguous);
/// - without the system call (`bpf_task_pt_regs(current)->orig_ax`, two
///   helper calls) the bench's workload was as rarely wrong (0.13%
///   against 0.18%), but what it tells apart matters: `socket` and
///   `accept` reach `sock_alloc_inode` and `alloc_empty_file` through the
///   same nearest frames, and without it the held-sockets test
///   (tests/kernel.rs) once found sockets under `accept`'s stack.
#[inline(always)]
pub fn path_of(ctx: &TracePointContext, call_site: u64) -> Option<u64> {
    // The kernel writes the address of the registers it fetched at the
    // tracepoint (`perf_fetch_caller_regs`: `sp` is the tracepoint
    // handler's frame address) over the record's first 8 bytes, which a
    // program may not load directly. Above that frame are the allocator's
    // and its callers' frames, whose return addresses tell the path.
    // SAFETY (all reads): the helper faults safely, and the scan buffer
    // is this CPU's, SCAN_BYTES long.
    let regs: u64 = unsafe { ctx.read_at(0) }.ok()?;
    let sp: u64 =
        unsafe { bpf_probe_read_kernel((regs as *const pt_regs).cast::<u64>().add(RSP_WORD)) }
            .ok()?;
    let scan = KERNEL_FRAMES.get_ptr_mut(0)?;
    if unsafe { generated::bpf_probe_read_kernel(scan.cast(), SCAN_BYTES as u32, sp as *const _) }
        != 0
    {
        return None;
    }
    let mut path = start_hash(PATH_SEED)
        .add_frame(call_site)
        .add_frame(current_syscall());
    for index in 0..SCAN_WORDS {
        // SAFETY: `index` is below the buffer's length.
        let word = unsafe { (*scan)[index] };
        if word >= KERNEL_IMAGE_START {
            path = path.add_frame(word);
        }
    }
    let path = path.finish();
    // FNV's low bits (the cache slot) depend only on its inputs' low bits:
    // fold the high ones in. 0 marks an empty slot.
    Some((path ^ (path >> 29)) | 1)
}

/// Bytes of stack above the tracepoint handler's frame that name a path:
/// 48 words, read at once and filtered in a bounded loop (see
/// [`path_of`] for the sizes measured).
const SCAN_BYTES: usize = 384;
const SCAN_WORDS: usize = SCAN_BYTES / 8;
const _: () = assert!(SCAN_WORDS <= MAX_INLINE_FRAMES);

/// x86_64's kernel image and modules lie at and above this address (the
/// top 2 GiB); the direct map, vmalloc space (stacks) and the slab lie
/// below. A stack word above it is a return address, or a pointer to the
/// kernel's static data, both the same every time a path runs.
const KERNEL_IMAGE_START: u64 = 0xffff_ffff_8000_0000;

/// Index of `rsp` in `pt_regs`, in words.
const RSP_WORD: usize = core::mem::offset_of!(pt_regs, rsp) / 8;

/// The system call the current task is in (`orig_ax` of its user
/// registers; -1 in none, or a fault's error code).
#[inline(always)]
fn current_syscall() -> u64 {
    // SAFETY: helpers without preconditions; `bpf_task_pt_regs` returns a
    // pointer the verifier knows to be a `pt_regs`, read with a checked
    // load.
    unsafe {
        let task = generated::bpf_get_current_task_btf();
        let regs = generated::bpf_task_pt_regs(task) as *const pt_regs;
        (*regs).orig_rax
    }
}

/// The cached stack of `path` (perhaps [`AMBIGUOUS`]).
#[inline(always)]
fn cached_stack(path: u64) -> Option<u64> {
    CACHE.get(cache_slot(path))?.stack_of(path)
}

/// Records the stack just unwound on `path`, which had `cached`: a path
/// new to the cache caches it, a path found with another stack becomes
/// [`AMBIGUOUS`]. `checking`: the unwind checked a cache hit.
#[inline(always)]
fn remember(path: u64, cached: Option<u64>, stack: u64, checking: bool) {
    if checking {
        bump(Counter::KernelStackCacheChecks);
    }
    let remembered = match cached {
        None => stack,
        Some(cached) if cached == stack || cached == AMBIGUOUS => return,
        Some(_) => {
            if checking {
                bump(Counter::KernelStackCacheMismatches);
            }
            AMBIGUOUS
        }
    };
    if let Some(entry) = CACHE.get_ptr_mut(cache_slot(path)) {
        // SAFETY: plain data; a torn entry fails its check (see
        // `CacheEntry`).
        unsafe { *entry = CacheEntry::new(path, remembered) };
    }
}

/// The kernel stack of the allocation `ctx` reports, unwound and hashed.
#[inline(always)]
fn unwind(ctx: &TracePointContext) -> Option<Walk> {
    bump(Counter::KernelStackUnwinds);
    let frames = KERNEL_FRAMES.get_ptr_mut(0)?;
    // SAFETY: the buffer is this CPU's and holds MAX_INLINE_FRAMES frames,
    // the size passed; the kernel writes at most that many bytes.
    let written = unsafe {
        generated::bpf_get_stack(
            ctx.as_ptr(),
            frames.cast(),
            size_of::<[u64; MAX_INLINE_FRAMES]>() as u32,
            0,
        )
    };
    if written <= 0 {
        return None;
    }
    let count = (written as usize / 8).min(MAX_INLINE_FRAMES);
    let mut hash = start_hash(KERNEL_STACK_SEED);
    for index in 0..MAX_INLINE_FRAMES {
        if index >= count {
            break;
        }
        // SAFETY: `index` is below the buffer's length.
        hash = hash.add_frame(unsafe { (*frames)[index] });
    }
    Some(Walk {
        hash: hash.finish(),
        count,
        complete: true,
        cut: false,
        frames,
    })
}
