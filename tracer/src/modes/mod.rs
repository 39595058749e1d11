//! The modes the driver runs: one process ([`process`]: `--pid` or a
//! launched command), every process on the host ([`host`]: `--all`) and
//! the kernel's own allocations ([`kernel`]: `--kernel`). Each implements
//! `crate::driver::Mode`; none calls another's code.

pub mod host;
pub mod kernel;
pub mod process;
