//! The kernel's own allocations (`--kernel`): programs on the `kmem` and
//! `percpu` tracepoints, turned into `Alloc` and `Free` events whose stack
//! is the kernel stack of the allocation.
//!
//! Blocks are named so that the three allocators' blocks never share a key
//! in the ledger: slab objects (`kmalloc`, `kmem_cache_alloc`) by their
//! address (the kernel half, top bit set), per-CPU blocks by their
//! `__percpu` pointer (an offset below 2^47), pages by their `struct page`
//! address tagged with [`PAGE_TAG`]. Their
//! size is what the allocator set aside (`bytes_alloc`, `4096 << order`).
//!
//! The stack comes from `kernel_stacks`: the kernel's unwinder, or the
//! stack last unwound on the same path (the tracepoint's `call_site`, 0 for
//! pages, which have none, and the return addresses nearest the
//! tracepoint). Events carry the current task,
//! which userspace disregards for stacks that show an interrupt (nothing
//! the programs get says so).
//!
//! The programs are raw tracepoints: they get the tracepoint's arguments
//! (its `TP_PROTO`, checked against this kernel's BTF:
//! `bpf_trace_run<N>`'s array of them), where a classic tracepoint program
//! makes the kernel first build the `perf` trace record (buffer, fields,
//! caller's registers). With programs that return at once the bench's
//! kernel workload ran 1.19-1.22x slower on classic tracepoints, 1.09-1.10x
//! on raw ones; with the whole programs, 1.58-1.63x against 1.41-1.47x
//! (interleaved rounds, one session).

use aya_ebpf::{
    Global, helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
};
use tracer_ebpf::{EventKind, NO_STACK};

use crate::{
    counters::{Outcome, finish},
    emit::emit,
    hit::Hit,
    kernel_stacks::{emit_alloc, path_of},
};

/// Tag of a page's key: its `struct page` address with bit 62 set (a
/// no-op on x86_64's kernel addresses, whose vmemmap the slab never
/// shares; kept so that no other allocator's key can be one).
const PAGE_TAG: u64 = 1 << 62;
const PAGE_SIZE: u64 = 4096;

/// The offset of `size` in `struct kmem_cache`, from the kernel's BTF
/// (`tracer_ebpf::KMEM_CACHE_SIZE_OFFSET_GLOBAL`).
#[unsafe(export_name = tracer_ebpf::shared_name!(KMEM_CACHE_SIZE_OFFSET_GLOBAL))]
static KMEM_CACHE_SIZE_OFFSET: Global<u32> = Global::new(0);

// The arguments used, by index (`btf_trace_<name>` in the kernel's BTF,
// less its leading `void *`). kmalloc(call_site, ptr, bytes_req,
// bytes_alloc, gfp_flags, node); kmem_cache_alloc(call_site, ptr, s,
// gfp_flags, node); kfree(call_site, ptr); kmem_cache_free(call_site, ptr,
// s).
const CALL_SITE: usize = 0;
const SLAB_PTR: usize = 1;
const KMALLOC_BYTES_ALLOC: usize = 3;
const CACHE: usize = 2;
// mm_page_alloc(page, order, gfp_flags, migratetype); mm_page_free(page,
// order). Pages freed in batches (`free_unref_folios`) pass
// `mm_page_free` too, in `free_pages_prepare`, before
// `mm_page_free_batched`, which is left alone (it counted every such page
// twice, measured).
const PAGE: usize = 0;
const PAGE_ORDER: usize = 1;
// percpu_alloc_percpu(call_site, reserved, is_atomic, size, align,
// base_addr, off, ptr, bytes_alloc, gfp_flags);
// percpu_free_percpu(base_addr, off, ptr).
const PERCPU_ALLOC_PTR: usize = 7;
const PERCPU_BYTES_ALLOC: usize = 8;
const PERCPU_FREE_PTR: usize = 2;

#[raw_tracepoint(tracepoint = "kmalloc")]
pub fn kmalloc(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, slab_alloc(&ctx, ctx.arg(KMALLOC_BYTES_ALLOC)));
    0
}

#[raw_tracepoint(tracepoint = "kmem_cache_alloc")]
pub fn kmem_cache_alloc(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, try_cache_alloc(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "kfree")]
pub fn kfree(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, SLAB_PTR, 0));
    0
}

#[raw_tracepoint(tracepoint = "kmem_cache_free")]
pub fn kmem_cache_free(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, SLAB_PTR, 0));
    0
}

#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn mm_page_alloc(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, try_page_alloc(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "mm_page_free")]
pub fn mm_page_free(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, PAGE, PAGE_TAG));
    0
}

#[raw_tracepoint(tracepoint = "percpu_alloc_percpu")]
pub fn percpu_alloc(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, try_percpu_alloc(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "percpu_free_percpu")]
pub fn percpu_free(ctx: RawTracePointContext) -> i32 {
    finish(&ctx, free_at(&ctx, PERCPU_FREE_PTR, 0));
    0
}

#[inline(always)]
fn slab_alloc(ctx: &RawTracePointContext, bytes: u64) -> Outcome {
    let call_site = ctx.arg(CALL_SITE);
    alloc(ctx, ctx.arg(SLAB_PTR), bytes, path_of(ctx, call_site))
}

/// A cache's object: its size is the cache's `size` (what the record's
/// `bytes_alloc` held), read through the cache pointer.
#[inline(always)]
fn try_cache_alloc(ctx: &RawTracePointContext) -> Outcome {
    let cache: u64 = ctx.arg(CACHE);
    let field = cache + u64::from(KMEM_CACHE_SIZE_OFFSET.load());
    // SAFETY: the helper faults safely.
    let size: u32 = unsafe { bpf_probe_read_kernel(field as *const u32) }.unwrap_or(0);
    slab_alloc(ctx, u64::from(size))
}

#[inline(always)]
fn try_page_alloc(ctx: &RawTracePointContext) -> Outcome {
    let page: u64 = ctx.arg(PAGE);
    let order: u64 = ctx.arg(PAGE_ORDER);
    // A failed allocation passes no page (NULL: `alloc` drops it).
    // No caller among the arguments: the scanned stack alone names the
    // path (checked pages were as rarely wrong as slab objects, measured).
    if page == 0 {
        return Ok(());
    }
    alloc(
        ctx,
        page | PAGE_TAG,
        PAGE_SIZE << (order & 31),
        path_of(ctx, 0),
    )
}

#[inline(always)]
fn try_percpu_alloc(ctx: &RawTracePointContext) -> Outcome {
    let call_site = ctx.arg(CALL_SITE);
    alloc(
        ctx,
        ctx.arg(PERCPU_ALLOC_PTR),
        ctx.arg(PERCPU_BYTES_ALLOC),
        path_of(ctx, call_site),
    )
}

/// A free of the block keyed by argument `index`, tagged with `tag`.
#[inline(always)]
fn free_at(ctx: &RawTracePointContext, index: usize, tag: u64) -> Outcome {
    let key: u64 = ctx.arg(index);
    // kfree(NULL) and friends are traced too.
    if key == 0 {
        return Ok(());
    }
    emit(&Hit::new(ctx), EventKind::Free, key | tag, 0, 0, NO_STACK)
}

/// An allocation of `bytes` at `key` made on `path` (see
/// `kernel_stacks::path_of`; `None` for none) with its kernel stack.
#[inline(always)]
fn alloc(ctx: &RawTracePointContext, key: u64, bytes: u64, path: Option<u64>) -> Outcome {
    if key == 0 {
        return Ok(());
    }
    emit_alloc(ctx, key, bytes, path)
}
