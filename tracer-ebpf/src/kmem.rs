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
//! The stack comes from `kernel_stacks`: the kernel's unwinder, or the
//! stack last unwound on the same path (the tracepoint's `call_site`, 0 for
//! pages, which have none, and the return addresses nearest the
//! tracepoint). Events carry the current task,
//! which userspace disregards for stacks that show an interrupt (the
//! record's `common_flags` would say so, but the kernel overwrites the
//! record's header with a registers pointer before BPF programs see it).
//!
//! The tracepoints' field offsets are those of their `format` files
//! (`/sys/kernel/tracing/events/kmem/*/format`), stable since Linux 6.2.

use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use tracer_ebpf::{EventKind, NO_STACK};

use crate::{
    counters::{Outcome, finish},
    emit::emit,
    hit::Hit,
    kernel_stacks::{emit_alloc, path_of},
};

/// Tag of a page's key: its frame number with bit 62 set.
const PAGE_TAG: u64 = 1 << 62;
const PAGE_SIZE: u64 = 4096;

/// The allocator's caller, in kmem:kmalloc, kmem:kmem_cache_alloc and
/// percpu:percpu_alloc_percpu alike.
const CALL_SITE: usize = 8;
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

/// The field of `ctx`'s record at `offset` (past the first 8 bytes, which
/// programs may not read), a direct load: `read_at`'s helper call cost
/// ~15 ns per field (bpf_stats), paid on every event.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is that of a field of type `T` in the tracepoint's
    // format file, within the record, and the verifier checks the load.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

#[inline(always)]
fn slab_alloc(ctx: &TracePointContext, bytes_offset: usize) -> Outcome {
    let call_site = field(ctx, CALL_SITE);
    alloc(
        ctx,
        field(ctx, SLAB_PTR),
        field(ctx, bytes_offset),
        path_of(ctx, call_site),
    )
}

#[inline(always)]
fn try_page_alloc(ctx: &TracePointContext) -> Outcome {
    let pfn: u64 = field(ctx, PAGE_PFN);
    let order: u32 = field(ctx, PAGE_ORDER);
    // A failed allocation is reported with pfn -1.
    if pfn == u64::MAX {
        return Ok(());
    }
    // No caller in the record: the scanned stack alone names the path
    // (checked pages were as rarely wrong as slab objects, measured).
    alloc(
        ctx,
        pfn | PAGE_TAG,
        PAGE_SIZE << (order & 31),
        path_of(ctx, 0),
    )
}

#[inline(always)]
fn try_percpu_alloc(ctx: &TracePointContext) -> Outcome {
    let call_site = field(ctx, CALL_SITE);
    alloc(
        ctx,
        field(ctx, PERCPU_ALLOC_PTR),
        field(ctx, PERCPU_BYTES_ALLOC),
        path_of(ctx, call_site),
    )
}

/// A free of the block keyed by the field at `offset`, tagged with `tag`.
#[inline(always)]
fn free_at(ctx: &TracePointContext, offset: usize, tag: u64) -> Outcome {
    let key: u64 = field(ctx, offset);
    // kfree(NULL) and friends are traced too.
    if key == 0 {
        return Ok(());
    }
    emit(&Hit::new(ctx), EventKind::Free, key | tag, 0, 0, NO_STACK)
}

/// An allocation of `bytes` at `key` made on `path` (see
/// `kernel_stacks::path_of`; `None` for none) with its kernel stack.
#[inline(always)]
fn alloc(ctx: &TracePointContext, key: u64, bytes: u64, path: Option<u64>) -> Outcome {
    if key == 0 {
        return Ok(());
    }
    emit_alloc(ctx, key, bytes, path)
}
