//! Workloads of the in-kernel DWARF unwinding tests (`tests/unwind_kernel.rs`):
//! a program that `dlopen`s, after alloctrace attached, a library built
//! without frame pointers.

use std::path::PathBuf;

use crate::{NO_FRAME_POINTER_CFLAGS, compile_c};

/// The library `dlopen_nofp` loads: a five-function chain ending in malloc.
pub fn chain_nofp_library() -> PathBuf {
    let mut flags = NO_FRAME_POINTER_CFLAGS.to_vec();
    flags.extend(["-shared", "-fPIC"]);
    compile_c("chain_nofp.c", "libchain_nofp.so", &flags)
}

/// The program that loads [`chain_nofp_library`] when told to.
pub fn dlopen_nofp_bin() -> PathBuf {
    let mut flags = NO_FRAME_POINTER_CFLAGS.to_vec();
    flags.push("-ldl");
    compile_c("dlopen_nofp.c", "dlopen_nofp", &flags)
}
