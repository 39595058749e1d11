//! SIGINT and SIGTERM, caught from before the ready line on: a signal sent
//! as soon as the ready line appears must stop tracing cleanly, not kill the
//! tracer with its probes half-way. SIGUSR1 (`systemctl reload`) asks for
//! the outputs now, without stopping; caught as early, since its default
//! action would end the tracer.

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct StopSignals {
    pub interrupt: Signal,
    pub terminate: Signal,
    pub report_now: Signal,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            report_now: signal(SignalKind::user_defined1()).context("catching SIGUSR1")?,
        })
    }
}

/// Once stopping: a second Ctrl-C ends the tracer at once.
pub fn restore_default_sigint() {
    // SAFETY: resetting a signal disposition to its default has no
    // preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}
