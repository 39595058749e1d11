//! The known truth the workloads are built around: what each allocation site
//! of `tests/workloads/leaky.c` must still hold once it printed `done`
//! ([`SITES`]), what the static target allocates, and which function names
//! are the allocator's own (never a stack's leaf).
//!
//! KEEP IN SYNC with the workload sources: a change to a site there is a
//! change to its row here.

/// One allocation site of `tests/workloads/leaky.c` with what must still be
/// outstanding there once the workload printed `done`.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// Name of the noinline C function that calls the allocator
    /// (= `frames[0].function` of its stacks).
    pub name: &'static str,
    /// Expected outstanding bytes (requested sizes).
    pub bytes: u64,
    /// Expected number of outstanding blocks.
    pub count: u64,
}

const fn site(name: &'static str, bytes: u64, count: u64) -> Site {
    Site { name, bytes, count }
}

/// THE table of expected results.  KEEP IN SYNC with tests/workloads/leaky.c.
/// Sites with `count == 0` must not appear in any output.
pub const SITES: &[Site] = &[
    // 10 x malloc(24)
    site("site_malloc_small", 10 * 24, 10),
    // 5 x malloc(4000)
    site("site_malloc_medium", 5 * 4000, 5),
    // 1 x malloc(200000), above the 128 KiB mmap threshold
    site("site_malloc_large", 200_000, 1),
    // 4 x calloc(25, 8)
    site("site_calloc", 4 * 25 * 8, 4),
    // realloc chain 16 -> 64 -> 1024 -> 16384 -> 65536 -> 262144 -> 1 MiB:
    // the block belongs to the LAST realloc (site_chain_final) at its final size.
    site("site_chain_start", 0, 0),
    site("site_chain_grow", 0, 0),
    site("site_chain_final", 1_048_576, 1),
    // 3 x realloc(NULL, 3000)
    site("site_realloc_null", 3 * 3000, 3),
    // 2 x malloc(10000) at site_shrink_alloc, then realloc(p, 100) at site_realloc_shrink
    site("site_shrink_alloc", 0, 0),
    site("site_realloc_shrink", 2 * 100, 2),
    // 3 x (malloc(500); realloc(p, 0)) -> freed
    site("site_realloc_zero", 0, 0),
    // 2 x (reallocarray(NULL, 10, 12) -> reallocarray(p, 100, 12)) = 2 x 1200
    site("site_reallocarray", 2 * 100 * 12, 2),
    // 3 x posix_memalign(&p, 64, 1000)
    site("site_posix_memalign", 3 * 1000, 3),
    // 2 x aligned_alloc(256, 512)
    site("site_aligned_alloc", 2 * 512, 2),
    // 2 x memalign(128, 700)
    site("site_memalign", 2 * 700, 2),
    // 2 x valloc(5000)
    site("site_valloc", 2 * 5000, 2),
    // 2 x pvalloc(6000) (requested size, not page-rounded)
    site("site_pvalloc", 2 * 6000, 2),
    // 8 x malloc(333) on one thread, all freed on another thread
    site("site_cross_thread_alloc", 0, 0),
    // 20 x malloc(128), every other one freed -> 10 x 128
    site("site_half_freed", 10 * 128, 10),
    // 16 x malloc(2048), all freed
    site("site_fully_freed", 0, 0),
    // 4 threads x 25 x malloc(64), concurrently
    site("site_threads", 4 * 25 * 64, 4 * 25),
];

/// Sites that must still hold memory.
pub fn leak_sites() -> impl Iterator<Item = &'static Site> {
    SITES.iter().filter(|s| s.count > 0)
}

/// Sites whose memory was entirely freed (must not appear anywhere).
pub fn freed_sites() -> impl Iterator<Item = &'static Site> {
    SITES.iter().filter(|s| s.count == 0)
}

/// Sum of the bytes of all leak sites.
pub fn expected_leak_bytes() -> u64 {
    leak_sites().map(|s| s.bytes).sum()
}

/// Sum of the block counts of all leak sites.
pub fn expected_leak_count() -> u64 {
    leak_sites().map(|s| s.count).sum()
}

/// Allocator entry points; none of them may be `frames[0]` of a stack.
pub const ALLOCATOR_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_free",
    "__libc_memalign",
    "__libc_valloc",
    "__libc_pvalloc",
    "__posix_memalign",
    "__libc_reallocarray",
];

/// What one `go` of the static target allocates: (site, bytes, count).
pub const STATIC_SITE: (&str, u64, u64) = ("site_static", 3 * 555, 3);
