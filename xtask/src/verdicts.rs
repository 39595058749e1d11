//! `cargo xtask verdicts [--bin PATH]`: the leak-verdict battery's precision
//! and recall (nine heap patterns with known verdicts, traced in `--pid`
//! and launch mode at once; see `tests/support/verdicts.rs`), so a change of
//! the suspects' ranking is measured. `--bin` measures another build, such
//! as the ranking before a change.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// The alloctrace binary to measure (default: build this checkout's)
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    util::require_root()?;
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => build::build(false)?,
    };
    let bin = bin
        .canonicalize()
        .with_context(|| format!("alloctrace binary not found at {}", bin.display()))?;
    util::run(util::cargo().env("ALLOCTRACE_BIN", &bin).args([
        "run",
        "--release",
        "-q",
        "-p",
        "integration-tests",
        "--bin",
        "battery",
    ]))
}
