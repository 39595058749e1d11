//! The modes the driver runs: one process ([`process`]: `--pid` or a
//! launched command) and every process on the host ([`host`]: `--all`).
//! Each implements `crate::driver::Mode`; neither calls the other.

pub mod host;
pub mod process;
