//! `cargo xtask run -- ARGS…`: build, then exec `target/release/alloctrace ARGS…`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for alloctrace, e.g. `-- --pid 1234 --duration 30s`
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ALLOCTRACE_ARGS"
    )]
    pub args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let bin = build::build(false)?;
    let mut cmd = Command::new(&bin);
    cmd.args(&args.args);
    util::echo(&cmd);
    // Replace this process so signals (Ctrl-C) and the exit code go straight
    // to/from alloctrace. exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("failed to exec {}", bin.display()))
}
