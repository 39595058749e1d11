//! Developer tasks for alloctrace:
//! `cargo xtask <setup|build|run|test|demo|bench|verdicts|image|install-unit>`.
//!
//! `main.rs` only parses the command line and dispatches; each subcommand lives
//! in its own module. Shared helpers (echoing/running commands, paths) are in `util`.

mod bench;
mod bench_kernel;
mod bench_soak;
mod bench_tracer;
mod build;
mod demo;
mod deploy;
mod run;
mod setup;
mod test;
mod util;
mod verdicts;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demo alloctrace (run as root)",
    after_help = "On a fresh machine: `cargo xtask demo` or `cargo xtask test`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install prerequisites (apt packages, bpf-linker, nightly + rust-src); fast when present
    Setup,
    /// Set up, then build the `alloctrace` binary (and its eBPF object)
    Build(build::Args),
    /// Build, then run `target/release/alloctrace` with the given arguments
    Run(run::Args),
    /// Build, then run the unit and integration tests
    Test(test::Args),
    /// Trace a bundled leaky demo service and write a flamegraph + report
    Demo(demo::Args),
    /// Build the container image offline (FROM scratch: the binary and its libraries)
    Image(deploy::ImageArgs),
    /// Install the binary and the systemd unit (deploy/alloctrace.service), and start it
    InstallUnit(deploy::UnitArgs),
    /// Measure tracing overhead on a malloc/free churn (untraced, floor, alloctrace, bcc)
    Bench(bench::Args),
    /// Precision and recall of the leak suspects over a battery of heap patterns with known verdicts
    Verdicts(verdicts::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(&args).map(|_| ()),
        Command::Run(args) => run::run(args),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Verdicts(args) => verdicts::run(&args),
        Command::Image(args) => deploy::image(&args),
        Command::InstallUnit(args) => deploy::install_unit(&args),
    };
    if let Err(err) = result {
        // `{:#}` renders the whole context chain on one line.
        eprintln!("xtask: error: {err:#}");
        std::process::exit(util::exit_code_of(&err));
    }
}
