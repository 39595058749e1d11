//! In-kernel DWARF unwinding, userspace side: compiles each executable
//! file's CFI into a compact table ([`compile`]) and keeps the kernel's
//! tables and per-process mapping lists current ([`manager`]).
//!
//! Tables are shared by file identity (device and inode, plus size and
//! modification time so a replaced file is compiled again): a libc mapped by
//! 500 processes is compiled and loaded once.

pub mod compile;
pub mod manager;

pub use manager::{Policy, TableLoader, TableStats};
