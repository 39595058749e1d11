//! `cargo xtask bench`: placeholder, to be written.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the benchmark (unused for now)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(_args: &Args) -> Result<()> {
    println!("bench: not implemented yet");
    std::process::exit(2);
}
