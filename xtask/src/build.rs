//! `cargo xtask build [--debug]`: setup, then build the `alloctrace` binary.
//! tracer's build.rs compiles the eBPF object (tracer-ebpf) with nightly.

use std::path::PathBuf;

use anyhow::Result;

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Build the debug profile (target/debug/alloctrace) instead of release
    #[arg(long)]
    pub debug: bool,
}

/// Build and return the path of the `alloctrace` binary.
pub fn run(args: &Args) -> Result<PathBuf> {
    let bin = build(args.debug)?;
    println!("{}", bin.display());
    Ok(bin)
}

/// Setup + `cargo build [--release] -p tracer`; returns the binary path.
/// Does not print the path (callers that are not `build` stay quiet).
pub fn build(debug: bool) -> Result<PathBuf> {
    setup::run()?;
    let mut cmd = util::cargo();
    cmd.arg("build");
    if !debug {
        cmd.arg("--release");
    }
    cmd.args(["-p", "tracer"]);
    util::run(&mut cmd)?;
    let profile = if debug { "debug" } else { "release" };
    Ok(util::target_dir().join(profile).join("alloctrace"))
}
