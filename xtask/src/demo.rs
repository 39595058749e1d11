//! `cargo xtask demo [--seconds N]`: compile and start the leaky demo service
//! (xtask/demo/leaky_service.c), trace it with alloctrace for N seconds, stream
//! alloctrace's output, then stop the service and say where the outputs are.

use std::path::Path;
use std::process::{Child, Command};

use anyhow::{Context, Result, bail};

use crate::{build, util};

#[derive(clap::Args)]
pub struct Args {
    /// How long to trace the demo service, in seconds
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
}

/// Kills the demo service when dropped, so it never outlives xtask on an error path.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    let tracer = build::build(false)?;
    let root = util::workspace_root();
    let out = util::target_dir().join("demo");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let service_bin = util::compile_c(
        "xtask/demo/leaky_service.c",
        &out,
        "leaky_service",
        &[
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-pthread",
        ],
    )?;

    let svg = out.join("alloctrace-demo.svg");
    let json = out.join("alloctrace-demo.json");
    let folded = out.join("alloctrace-demo.folded");
    for stale in [&svg, &json, &folded] {
        let _ = std::fs::remove_file(stale);
    }

    // The service stops by itself a while after the trace would have ended, in
    // case xtask is killed before it can stop it. Its own process group keeps a
    // Ctrl-C in the terminal away from it: alloctrace gets the Ctrl-C, writes
    // its outputs while the target is still alive, and we stop the service after.
    let mut service_cmd = Command::new(&service_bin);
    service_cmd.arg((args.seconds + 60).to_string());
    std::os::unix::process::CommandExt::process_group(&mut service_cmd, 0);
    util::echo(&service_cmd);
    let mut service = Service(
        service_cmd
            .spawn()
            .with_context(|| format!("starting {}", service_bin.display()))?,
    );
    let pid = service.0.id();

    let mut trace_cmd = Command::new(&tracer);
    trace_cmd
        .current_dir(&root)
        .args(["--pid", &pid.to_string()])
        .args(["--interval", "5s"])
        .args(["--duration", &format!("{}s", args.seconds)])
        .arg("--flamegraph")
        .arg(&svg)
        .arg("--report")
        .arg(&json)
        .arg("--folded")
        .arg(&folded);
    util::echo(&trace_cmd);
    let shown = util::display(&trace_cmd);
    let mut trace = trace_cmd
        .spawn()
        .with_context(|| format!("starting {}", tracer.display()))?;

    // Both children exist now: from here on a Ctrl-C is alloctrace's signal to
    // stop and write its outputs; xtask must survive it to clean up.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };

    let status = trace.wait().context("waiting for alloctrace")?;

    if let Ok(Some(exit)) = service.0.try_wait() {
        bail!("the demo service exited early ({exit}) before tracing ended");
    }
    stop(&mut service);
    util::check(status, &shown)?;

    println!();
    println!("demo finished; alloctrace wrote:");
    let mut missing = Vec::new();
    for (what, path) in [
        ("flamegraph", &svg),
        ("report", &json),
        ("folded stacks", &folded),
    ] {
        if !report_file(what, path) {
            missing.push(path.display().to_string());
        }
    }
    if !missing.is_empty() {
        bail!("alloctrace did not write {}", missing.join(", "));
    }
    println!("open the flamegraph in a browser: the leaking call chains are the widest towers.");
    Ok(())
}

/// SIGTERM the service (it exits on it) and reap it.
fn stop(service: &mut Service) {
    let pid = service.0.id();
    eprintln!("+ kill -TERM {pid}");
    // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = service.0.wait();
}

/// Print one output file's path and size; false if it does not exist.
fn report_file(what: &str, path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) => {
            println!("  {what:<14} {} ({} bytes)", path.display(), meta.len());
            true
        }
        Err(_) => {
            println!("  {what:<14} {} (missing)", path.display());
            false
        }
    }
}
