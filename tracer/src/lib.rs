//! alloctrace: find the call stacks that hold the memory a live process (or
//! a whole host) keeps growing, with eBPF, without restarting anything.
//!
//! The pipeline, one module per stage, each importing only the stages
//! before it:
//!
//! [`probes`] (kernel programs, attached at offsets [`placement`] chooses)
//! → [`events`] (per-CPU rings, merged in time order; stack copies
//! unwound by [`unwind`]) → [`stacks`] (stack identity) → [`ledger`]
//! (outstanding blocks) → [`analysis`] (history, suspects, leak gate) and
//! [`symbolize`] (addresses to frames) → [`report`] (the model and its
//! formats) and [`metrics`].
//!
//! Above them, [`driver`] is the one run loop every mode plugs into, and
//! [`modes`] holds the modes; [`config`] turns the command line ([`cli`])
//! into what a mode needs. [`diff`] compares two reports; [`html`] renders a
//! saved one as a page.

pub mod analysis;
pub mod armed;
pub mod cli;
pub mod clock;
pub mod config;
pub mod container;
pub mod debuginfo;
pub mod debuglink;
pub mod diff;
pub mod driver;
pub mod events;
pub mod filters;
pub mod html;
pub mod kallsyms;
pub mod ledger;
pub mod mapped;
pub mod maps;
pub mod memory_limit;
pub mod metrics;
pub mod modes;
pub mod perfmap;
pub mod placement;
pub mod privileges;
pub mod probes;
pub mod report;
pub mod safe_open;
pub mod sampling;
pub mod stacks;
pub mod symbolize;
pub mod target;
pub mod unwind;

use crate::{
    config::{Config, ModeConfig},
    driver::Outcome,
};

/// Traces what `config` says until stopped, in the mode it names.
pub async fn trace(config: Config) -> anyhow::Result<Outcome> {
    match config.mode {
        ModeConfig::Process(mode) => modes::process::run(&config.common, mode).await,
        ModeConfig::Host(mode) => modes::host::run(&config.common, mode).await,
        ModeConfig::Kernel(mode) => modes::kernel::run(&config.common, mode).await,
    }
}
