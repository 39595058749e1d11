//! The kernel's own allocations (`--kernel`): programs on the `kmem` and
//! `percpu` tracepoints, turned into `Alloc` and `Free` events whose stack
//! is the kernel stack of the allocation.
//!
//! Blocks are named so that the three allocators' blocks never share a key
//! in the ledger: slab objects (`kmalloc`, `kmem_cache_alloc`) by their
//! address (the kernel half, top bit set), per-CPU blocks by their
//! `__percpu` pointer (an offset below 2^47), pages by their frame number
//! tagged with [`PAGE_TAG`] (bit 62 alone: neither of the others). Their
//! size is what the allocator set aside (`bytes_alloc`, `4096 << order`).
//!
//! The stack comes from `bpf_get_stack` (the kernel's ORC unwinder) into a
//! per-CPU buffer, is hashed, and goes through the same send-once path as
//! user stacks (`stacks::emit_walked`): frames the first time, the hash
//! after. These tracepoints fire in every context, interrupts included;
//! the kernel runs no second tracing program on a CPU while one runs
//! there, so the buffer is never shared. Events carry the current task,
//! which userspace disregards for stacks that show an interrupt (the
//! record's `common_flags` would say so, but the kernel overwrites the
//! record's header with a registers pointer before BPF programs see it).
//!
//! The tracepoints' field offsets are those of their `format` files
//! (`/sys/kernel/tracing/events/kmem/*/format`), stable since Linux 6.2.

use aya_ebpf::{
    EbpfContext, helpers::generated, macros::map, macros::tracepoint, maps::PerCpuArray,
    programs::TracePointContext,
};
use tracer_ebpf::{Counter, EventKind, MAX_INLINE_FRAMES, NO_STACK};

use crate::{
    counters::{Outcome, finish},
    dwarf::Walk,
    emit::emit,
    hit::Hit,
    stack_hash::start_hash,
    stacks::emit_walked,
};

/// Tag of a page's key: its frame number with bit 62 set.
const PAGE_TAG: u64 = 1 << 62;
const PAGE_SIZE: u64 = 4096;

/// Seed of a kernel stack's hash: not a process id, which seeds user
/// stacks' hashes.
const KERNEL_STACK_SEED: u64 = u64::MAX;

/// Where `bpf_get_stack` leaves a kernel stack before it is hashed.
#[map]
static KERNEL_FRAMES: PerCpuArray<[u64; MAX_INLINE_FRAMES]> = PerCpuArray::with_max_entries(1, 0);

// kmem:kmalloc and kmem:kmem_cache_alloc: call_site, ptr, then the sizes.
const SLAB_PTR: usize = 16;
const KMALLOC_BYTES_ALLOC: usize = 32;
const CACHE_BYTES_ALLOC: usize = 40;
// kmem:kfree and kmem:kmem_cache_free.
const SLAB_FREE_PTR: usize = 16;
// kmem:mm_page_alloc and mm_page_free. Pages freed in batches
// (`free_unref_folios`) pass `mm_page_free` too, in `free_pages_prepare`,
// before `mm_page_free_batched`, which is left alone (it counted every
// such page twice, measured).
const PAGE_PFN: usize = 8;
const PAGE_ORDER: usize = 16;
// percpu:percpu_alloc_percpu and percpu_free_percpu.
const PERCPU_ALLOC_PTR: usize = 56;
const PERCPU_BYTES_ALLOC: usize = 64;
const PERCPU_FREE_PTR: usize = 24;

#[tracepoint(category = "kmem", name = "kmalloc")]
pub fn kmalloc(ctx: TracePointContext) -> i32 {
    finish(&ctx, slab_alloc(&ctx, KMALLOC_BYTES_ALLOC));
    0
}

#[tracepoint(category = "kmem", name = "kmem_cache_alloc")]
pub fn kmem_cache_alloc(ctx: TracePointContext) -> i32 {
    finish(&ctx, slab_alloc(&ctx, CACHE_BYTES_ALLOC));
    0
}

#[tracepoint(category = "kmem", name = "kfree")]
pub fn kfree(ctx: TracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, SLAB_FREE_PTR, 0));
    0
}

#[tracepoint(category = "kmem", name = "kmem_cache_free")]
pub fn kmem_cache_free(ctx: TracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, SLAB_FREE_PTR, 0));
    0
}

#[tracepoint(category = "kmem", name = "mm_page_alloc")]
pub fn mm_page_alloc(ctx: TracePointContext) -> i32 {
    finish(&ctx, try_page_alloc(&ctx));
    0
}

#[tracepoint(category = "kmem", name = "mm_page_free")]
pub fn mm_page_free(ctx: TracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, PAGE_PFN, PAGE_TAG));
    0
}

#[tracepoint(category = "percpu", name = "percpu_alloc_percpu")]
pub fn percpu_alloc(ctx: TracePointContext) -> i32 {
    finish(&ctx, try_percpu_alloc(&ctx));
    0
}

#[tracepoint(category = "percpu", name = "percpu_free_percpu")]
pub fn percpu_free(ctx: TracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, PERCPU_FREE_PTR, 0));
    0
}

fn slab_alloc(ctx: &TracePointContext, bytes_offset: usize) -> Outcome {
    // SAFETY (both reads): fields of the tracepoint's record, at the
    // offsets of its format file. An unreadable key reads as 0, skipped.
    let ptr: u64 = unsafe { ctx.read_at(SLAB_PTR) }.unwrap_or(0);
    let bytes: u64 = unsafe { ctx.read_at(bytes_offset) }.unwrap_or(0);
    alloc(ctx, ptr, bytes)
}

fn try_page_alloc(ctx: &TracePointContext) -> Outcome {
    // SAFETY (both reads): as in `slab_alloc`.
    let pfn: u64 = unsafe { ctx.read_at(PAGE_PFN) }.unwrap_or(u64::MAX);
    let order: u32 = unsafe { ctx.read_at(PAGE_ORDER) }.unwrap_or(0);
    // A failed allocation is reported with pfn -1.
    if pfn == u64::MAX {
        return Ok(());
    }
    alloc(ctx, pfn | PAGE_TAG, PAGE_SIZE << (order & 31))
}

fn try_percpu_alloc(ctx: &TracePointContext) -> Outcome {
    // SAFETY (both reads): as in `slab_alloc`.
    let ptr: u64 = unsafe { ctx.read_at(PERCPU_ALLOC_PTR) }.unwrap_or(0);
    let bytes: u64 = unsafe { ctx.read_at(PERCPU_BYTES_ALLOC) }.unwrap_or(0);
    alloc(ctx, ptr, bytes)
}

/// A free of the block keyed by the field at `offset`, tagged with `tag`.
#[inline(always)]
fn free_at(ctx: &TracePointContext, offset: usize, tag: u64) -> Outcome {
    // SAFETY: a field of the tracepoint's record (see `slab_alloc`).
    let key: u64 = unsafe { ctx.read_at(offset) }.unwrap_or(0);
    // kfree(NULL) and friends are traced too.
    if key == 0 {
        return Ok(());
    }
    emit(&Hit::new(ctx), EventKind::Free, key | tag, 0, 0, NO_STACK)
}

/// An allocation of `bytes` at `key` with the kernel stack that made it.
#[inline(always)]
fn alloc(ctx: &TracePointContext, key: u64, bytes: u64) -> Outcome {
    if key == 0 {
        return Ok(());
    }
    let frames = KERNEL_FRAMES.get_ptr_mut(0).ok_or(Counter::MapErrors)?;
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
    let hit = Hit::new(ctx);
    if written <= 0 {
        emit(&hit, EventKind::Alloc, key, 0, bytes, NO_STACK)?;
        return Err(Counter::StackErrors);
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
    let walk = Walk {
        hash: hash.finish(),
        count,
        complete: true,
        cut: false,
        frames,
    };
    emit_walked(&hit, EventKind::Alloc, key, 0, bytes, &walk)
}
