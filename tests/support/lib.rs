//! Support code for the alloctrace integration tests, one module per thing
//! it holds, all re-exported here so a test file needs only
//! `use integration_tests::*;`:
//!
//! * [`expected`]: the known truth per leak site of `leaky.c` ([`SITES`]),
//! * [`environment`]: the workspace, the `alloctrace` binary under test,
//!   the root check, temporary directories,
//! * [`workloads`]: compiling the C workloads (cached by mtime) and reading
//!   their sources; [`java`]: compiling the Java ones; [`unwinding`]: the
//!   in-kernel DWARF unwinding tests' `dlopen` workload and its library;
//!   [`languages`]: the Rust, C++ and Debian `python3` workloads,
//! * [`kernel`]: `--kernel` runs and their kernel stacks,
//! * [`protocol`]: driving a workload (`ready <pid>` / `go` / `done`),
//! * [`tracer`]: running the tracer, waiting for its ready line, the error
//!   contract,
//! * [`report`], [`folded`], [`ticks`], [`pprof`], [`metrics`]: reading
//!   each output (JSON report, folded stacks and SVG, JSON ticks, `--pprof`
//!   files, `--metrics-addr`),
//! * [`faults`]: signals, process states and cgroups for the fault tests.
//! * [`debuglink`]: a library with a separate debug file its debug link
//!   names, and a watch on opens of host files (the debug-link tests),
//! * [`production`]: a private copy of libc, a busy target, the kernel log
//!   and a target's code as it really is (the production-safety tests).
//! * [`plausible`]: the garbage-frame tests' workload, and the check that
//!   every frame of a report is code of its process,
//! * [`bounded`]: the bounded-memory tests' `stack_storm` target and the
//!   tracer's resident memory,
//! * [`browser`]: a headless Chromium for the HTML report (not re-exported:
//!   `integration_tests::browser::Browser`),
//! * [`verdicts`]: the leak-verdict battery and its scoring (not
//!   re-exported: its names are for the tests that use it).
//!
//! All child processes are SIGKILLed and reaped on drop, so a failing
//! assertion never leaves a tracer or a workload behind.

use std::time::Duration;

pub use serde_json;
pub use tempfile;

pub mod bounded;
pub mod browser;
mod child;
pub mod debuglink;
pub mod environment;
pub mod expected;
pub mod faults;
pub mod fleet;
pub mod folded;
pub mod java;
pub mod kernel;
pub mod languages;
pub mod metrics;
pub mod plausible;
pub mod pprof;
pub mod production;
pub mod protocol;
pub mod report;
pub mod ticks;
pub mod tracer;
pub mod unwinding;
pub mod verdicts;
pub mod workloads;

pub use bounded::*;
pub use environment::*;
pub use expected::*;
pub use folded::*;
pub use java::*;
pub use kernel::*;
pub use languages::*;
pub use metrics::*;
pub use plausible::*;
pub use pprof::read_pprof;
pub use protocol::*;
pub use report::*;
pub use ticks::*;
pub use tracer::*;
pub use unwinding::*;
pub use workloads::*;

/// How long the tracer may take to attach and print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the workload may take between `go` and `done` (tracing slows it).
pub const DONE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the tracer may take to write its outputs and exit once stopped.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period between the workload's `done` and stopping the tracer.
pub const SETTLE: Duration = Duration::from_millis(500);
