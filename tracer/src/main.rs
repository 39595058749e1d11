//! `alloctrace`: attach to a live process and find the call stacks that hold
//! the memory it keeps growing, without restarting it.
//!
//! The data flows through one module per stage: [`probes`] (kernel programs,
//! attached to the target's libc at offsets chosen by [`placement`]) →
//! [`events`] (the ring buffer) → [`ledger`] (outstanding allocations) →
//! [`unwind`] (copied stacks to addresses, with `--unwind dwarf`) →
//! [`symbolize`] (stack ids to frames) → [`report`] (summaries and final
//! outputs). [`session`] runs them; this file only maps errors to exit codes.

mod cli;
mod debuginfo;
mod events;
mod ledger;
mod maps;
mod placement;
mod probes;
mod report;
mod session;
mod symbolize;
mod target;
mod unwind;

use std::{path::Path, process::ExitCode};

use anyhow::bail;
use clap::{Parser as _, error::ErrorKind};

use crate::cli::{Cli, Config};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => return fail(&first_line_of_clap_error(&error), 2),
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&format!("{error:#}"), 1),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    check_privileges()?;
    check_kernel()?;
    let config = Config::from_cli(cli)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(session::run(&config))
}

/// Errors are one line, prefixed with the program name, for people and for
/// scripts that grep logs.
fn fail(message: &str, code: u8) -> ExitCode {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("alloctrace: {message}");
    ExitCode::from(code)
}

/// clap's errors span several lines (usage, a hint); the first says what is
/// wrong.
fn first_line_of_clap_error(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let line = rendered.lines().next().unwrap_or("invalid arguments");
    format!("{} (see --help)", line.trim_start_matches("error: "))
}

fn check_privileges() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "must run as root: loading eBPF programs and attaching uprobes needs CAP_BPF and CAP_PERFMON"
        );
    }
    Ok(())
}

fn check_kernel() -> anyhow::Result<()> {
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        bail!("this kernel has no uprobe support (CONFIG_UPROBE_EVENTS); alloctrace needs it");
    }
    Ok(())
}

fn init_logging(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    env_logger::Builder::new()
        .filter_level(level)
        // aya's own debug output (relocations, BTF fix-ups) buries ours.
        .filter_module("aya", log::LevelFilter::Info)
        .filter_module("aya_obj", log::LevelFilter::Info)
        .format_timestamp(None)
        .format_target(false)
        .init();
}
