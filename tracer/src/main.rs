//! `alloctrace`: the command line over the `tracer` library. This file only
//! parses arguments, picks the subcommand (tracing in the mode the flags
//! name, `diff` or `html`), checks privileges and maps errors to exit codes.

use std::{os::fd::AsFd as _, path::Path, process::ExitCode};

use anyhow::bail;
use clap::error::ErrorKind;

use tracer::{
    analysis::gate::EXIT_LEAK_GATE_FAILED,
    cli::{Cli, Subcommands, TraceArgs},
    config::Config,
    diff,
    driver::Outcome,
    html, privileges,
};

fn main() -> ExitCode {
    // Hidden: the process that holds the uprobe links (see probes::guardian).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == tracer::probes::guardian::COMMAND)
    {
        let socket = std::io::stdin().as_fd().try_clone_to_owned();
        let result = socket
            .map(tracer::probes::guardian::serve)
            .map_err(anyhow::Error::from);
        return exit_code(result.map(|()| Outcome::default()));
    }
    let cli = match parse::<Cli>(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.subcommand {
        Some(Subcommands::Diff(args)) => exit_code(diff::run(&args).map(|()| Outcome::default())),
        Some(Subcommands::Html(args)) => exit_code(html::run(&args).map(|()| Outcome::default())),
        None => {
            init_logging(cli.trace.verbose);
            exit_code(trace(cli.trace))
        }
    }
}

/// Parses `args`; help and version print and exit 0, errors exit 2.
fn parse<P: clap::Parser>(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<P, ExitCode> {
    P::try_parse_from(args).map_err(|error| match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        _ => fail(&first_line_of_clap_error(&error), 2),
    })
}

/// 3 when the leak gate failed, else the launched command's status, else 0;
/// 1 on an error (2 is clap's usage errors).
fn exit_code(result: anyhow::Result<Outcome>) -> ExitCode {
    match result {
        Ok(Outcome {
            leak_gate_failed: true,
            ..
        }) => ExitCode::from(EXIT_LEAK_GATE_FAILED),
        Ok(Outcome { command_status, .. }) => ExitCode::from(command_status.unwrap_or(0)),
        Err(error) => fail(&format!("{error:#}"), 1),
    }
}

fn trace(args: TraceArgs) -> anyhow::Result<Outcome> {
    privileges::check(args.host.all || args.kernel)?;
    check_kernel(args.kernel)?;
    let config = Config::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tracer::trace(config))
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
    let mut lines = rendered.lines().map(str::trim);
    let mut line = lines.next().unwrap_or("invalid arguments").to_string();
    if line.ends_with(':') {
        // "the following required arguments were not provided:" lists them
        // on the lines below.
        let listed: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
        line = format!("{line} {}", listed.join(", "));
    }
    format!("{} (see --help)", line.trim_start_matches("error: "))
}

/// What every run needs of the kernel: BTF, and uprobes unless only the
/// kernel's own allocations are traced (`kernel_only`).
fn check_kernel(kernel_only: bool) -> anyhow::Result<()> {
    if !kernel_only && !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        bail!("this kernel has no uprobe support (CONFIG_UPROBE_EVENTS); alloctrace needs it");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF); \
             alloctrace needs it to watch the target's execve"
        );
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
