//! `cargo xtask test`: setup, build, then run every test in the workspace
//! (tracer unit tests + the integration tests, which use ALLOCTRACE_BIN).

use anyhow::{Context, Result};

use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for the test binaries (after `--test-threads=2`), e.g. a test name filter
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "TEST_ARGS"
    )]
    pub args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let bin = build::build(false)?;
    let bin = bin
        .canonicalize()
        .with_context(|| format!("alloctrace binary not found at {}", bin.display()))?;
    util::run(
        util::cargo()
            .env("ALLOCTRACE_BIN", &bin)
            .args(["test", "--release", "--workspace", "--no-fail-fast"])
            .args(["--", "--test-threads=2"])
            .args(&args.args),
    )?;
    println!("ok: all tests passed");
    Ok(())
}
