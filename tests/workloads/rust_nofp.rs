//! rust_nofp.rs - a Rust release build without frame pointers leaking from
//! nested functions, for the language tests (tests/languages.rs).
//!
//! Build (done by tests/support/languages.rs):
//!   rustc -C opt-level=3 -C force-frame-pointers=no -g
//!
//! Protocol: stdout "ready <pid>", then on stdin "go" perform every
//! allocation, print "done", and stay until stdin closes.
//!
//! Every function of a chain is `#[inline(never)]` and uses its callee's
//! result afterwards (so no call is a tail call): the chain is exactly the
//! one written here. The allocation goes through Rust's global allocator
//! (`__rust_alloc` -> `__rdl_alloc` -> `malloc`). Each site leaks a
//! distinct size into `SINK` (or `ALIGNED`), which lives until the process
//! exits.
//!
//! KEEP IN SYNC with RUST_SITES in tests/languages.rs.

use std::hint::black_box;
use std::io::{BufRead, Write};
use std::sync::Mutex;

static SINK: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Over-aligned: the default allocator takes it from `posix_memalign`, in a
/// real `__rdl_alloc` frame (3333 bytes rounded up to 3392).
#[repr(align(64))]
struct Aligned([u8; 3333]);

static ALIGNED: Mutex<Vec<Box<Aligned>>> = Mutex::new(Vec::new());

/// Leaks `size` bytes (a `Vec<u8>` kept in `SINK`); returns its first byte.
#[inline(never)]
fn keep(block: Vec<u8>) -> usize {
    let first = block[0] as usize;
    SINK.lock().unwrap().push(block);
    first
}

// Chain A: outer_a -> middle_a -> inner_a -> allocation, 5 x 1111 B.
#[inline(never)]
fn inner_a(n: usize) -> usize {
    let block = vec![black_box(7u8); black_box(1111)];
    keep(block) + n
}
#[inline(never)]
fn middle_a(n: usize) -> usize {
    black_box(inner_a(n + 1)) * 3
}
#[inline(never)]
fn outer_a(n: usize) -> usize {
    black_box(middle_a(n + 1)) ^ 5
}

// Chain B: outer_b -> middle_b -> deeper_b -> inner_b -> allocation,
// 3 x 2222 B, through a generic function instantiated for one type.
#[inline(never)]
fn inner_b<T: Copy + Into<u64>>(seed: T) -> usize {
    let block = vec![black_box(seed.into() as u8); black_box(2222)];
    keep(block)
}
#[inline(never)]
fn deeper_b(n: usize) -> usize {
    black_box(inner_b(n as u32)) + 1
}
#[inline(never)]
fn middle_b(n: usize) -> usize {
    black_box(deeper_b(n + 1)) * 7
}
#[inline(never)]
fn outer_b(n: usize) -> usize {
    black_box(middle_b(n + 1)) - 2
}

// Chain C: outer_c -> inner_c -> allocation of an over-aligned box,
// 2 x 3392 B.
#[inline(never)]
fn inner_c(n: usize) -> usize {
    let block = Box::new(Aligned([black_box(3u8); 3333]));
    let first = block.0[0] as usize;
    ALIGNED.lock().unwrap().push(block);
    first + n
}
#[inline(never)]
fn outer_c(n: usize) -> usize {
    black_box(inner_c(n + 1)) << 1
}

#[inline(never)]
fn run_all() -> usize {
    let mut total = 0;
    for i in 0..5 {
        total += outer_a(black_box(i));
    }
    for i in 0..3 {
        total += outer_b(black_box(i));
    }
    for i in 0..2 {
        total += outer_c(black_box(i));
    }
    total
}

fn main() {
    let mut out = std::io::stdout();
    writeln!(out, "ready {}", std::process::id()).unwrap();
    out.flush().unwrap();
    let mut lines = std::io::stdin().lock().lines();
    match lines.next() {
        Some(Ok(line)) if line.starts_with("go") => {}
        _ => std::process::exit(1),
    }
    black_box(run_all());
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    for _ in lines {}
}
