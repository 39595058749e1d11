//! `cargo xtask bench`'s kernel workload: what `alloctrace --kernel` costs
//! a program that makes the kernel allocate hard (xtask/bench/kernel_churn.c:
//! files created and deleted in a tmpfs, TCP connections on loopback).
//!
//! The workload runs untraced and under `alloctrace --kernel`, alternately,
//! for several rounds; the slowdown is the ratio of the medians of its CPU
//! time (user + system, where the kernel programs run) per operation, and
//! each round's ratio is kept too. The tracer's own report says how many
//! kernel allocations it saw, whether any event was lost, and what its
//! kernel stack cache did (stacks cached, unwound, checks found wrong).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::util;

/// How long the tracer may take to attach, and to write its report.
const TRACER_TIMEOUT: Duration = Duration::from_secs(120);

/// What the kernel workload measured.
pub struct KernelCost {
    /// CPU ns per operation, each round: untraced, then under `--kernel`.
    untraced_ns: Vec<f64>,
    traced_ns: Vec<f64>,
    /// Kernel allocations the tracer saw per round, and events it lost.
    allocs: Vec<u64>,
    lost_events: Vec<u64>,
    /// The tracer's kernel stack cache and skipped runs, per round (its
    /// report's `kernel_stack_*` and `recursion_*` totals).
    cache: Vec<Value>,
}

impl KernelCost {
    fn median(values: &[f64]) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    /// Median traced over median untraced.
    pub fn slowdown(&self) -> f64 {
        Self::median(&self.traced_ns) / Self::median(&self.untraced_ns)
    }

    fn round_ratios(&self) -> Vec<f64> {
        self.traced_ns
            .iter()
            .zip(&self.untraced_ns)
            .map(|(traced, untraced)| traced / untraced)
            .collect()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "untraced_ns_per_op": self.untraced_ns,
            "kernel_ns_per_op": self.traced_ns,
            "slowdown": self.slowdown(),
            "round_ratios": self.round_ratios(),
            "kernel_allocs": self.allocs,
            "lost_events": self.lost_events,
            "stack_cache": self.cache,
        })
    }

    pub fn print(&self) {
        let ratios: Vec<String> = self
            .round_ratios()
            .iter()
            .map(|ratio| format!("{ratio:.2}"))
            .collect();
        println!(
            "- kernel workload (tmpfs file create/write/unlink + loopback TCP connect/accept/send/close, CPU time per op): untraced {:.1} µs, with --kernel {:.1} µs: {:.2}x (rounds: {}); {} kernel allocations traced per round (median), lost events {:?}",
            Self::median(&self.untraced_ns) / 1e3,
            Self::median(&self.traced_ns) / 1e3,
            self.slowdown(),
            ratios.join(", "),
            Self::median(&self.allocs.iter().map(|&n| n as f64).collect::<Vec<_>>()),
            self.lost_events,
        );
        for (round, cache) in self.cache.iter().enumerate() {
            let count = |key: &str| cache[key].as_u64().unwrap_or(0);
            println!(
                "  round {}: {} stacks from the cache, {} unwound; {} of {} checks wrong; {} frees skipped",
                round + 1,
                count("kernel_stack_cache_hits") - count("kernel_stack_cache_checks"),
                count("kernel_stack_unwinds"),
                count("kernel_stack_cache_mismatches"),
                count("kernel_stack_cache_checks"),
                count("recursion_missed_frees"),
            );
        }
    }
}

/// Runs the kernel workload `rounds` times untraced and under
/// `tracer --kernel`, alternately, `seconds` each.
pub fn measure(tracer: &Path, out: &Path, rounds: u32, seconds: f64) -> Result<KernelCost> {
    let workload = compile(out)?;
    let mut cost = KernelCost {
        untraced_ns: Vec::new(),
        traced_ns: Vec::new(),
        allocs: Vec::new(),
        lost_events: Vec::new(),
        cache: Vec::new(),
    };
    for round in 1..=rounds {
        let untraced = run_workload(&workload, seconds)?;
        let report = out.join(format!("alloctrace-kernel-round{round}.json"));
        let _ = std::fs::remove_file(&report);
        let tracing = KernelTracer::start(tracer, &report)?;
        let traced = run_workload(&workload, seconds)?;
        let totals = tracing.finish(&report)?;
        let count = |key: &str| totals[key].as_u64().unwrap_or(0);
        let (allocs, lost) = (count("allocs"), count("lost_events"));
        eprintln!(
            "bench: round {round}/{rounds} kernel workload {:.1} µs/op untraced, {:.1} µs/op with \
             --kernel ({allocs} kernel allocations, {lost} lost)",
            untraced / 1e3,
            traced / 1e3
        );
        cost.untraced_ns.push(untraced);
        cost.traced_ns.push(traced);
        cost.allocs.push(allocs);
        cost.lost_events.push(lost);
        cost.cache.push(cache_counts(&totals));
    }
    Ok(cost)
}

fn compile(out: &Path) -> Result<PathBuf> {
    util::compile_c(
        "xtask/bench/kernel_churn.c",
        out,
        "kernel_churn",
        &["-O2", "-g"],
    )
}

/// Runs the workload for `seconds`; returns its CPU ns per operation.
fn run_workload(bin: &Path, seconds: f64) -> Result<f64> {
    let mut child = Command::new(bin)
        .arg(seconds.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next = || -> Result<String> {
        lines
            .next()
            .transpose()?
            .ok_or_else(|| anyhow!("the kernel workload exited early"))
    };
    let ready = next()?;
    if !ready.starts_with("ready ") {
        bail!("the kernel workload printed `{ready}`, expected `ready <pid>`");
    }
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    stdin.write_all(b"go\n")?;
    drop(stdin);
    let line = next()?;
    let status = child.wait()?;
    util::check(status, "kernel_churn")?;
    line.strip_prefix("ns_per_op ")
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("the kernel workload printed `{line}`, expected `ns_per_op N`"))
}

/// The stack cache's and skipped runs' keys of a report's `totals`.
fn cache_counts(totals: &Value) -> Value {
    let keys = totals
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with("kernel_stack_") || key.starts_with("recursion_"));
    Value::Object(
        keys.map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    )
}

/// `alloctrace --kernel`, running.
struct KernelTracer {
    child: Child,
}

impl KernelTracer {
    fn start(tracer: &Path, report: &Path) -> Result<Self> {
        let mut cmd = Command::new(tracer);
        cmd.args(["--kernel", "--interval", "1h", "--report"])
            .arg(report)
            // Its default flamegraph lands beside the report.
            .current_dir(report.parent().unwrap_or(Path::new(".")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        util::echo(&cmd);
        let mut child = cmd.spawn().context("starting alloctrace --kernel")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let this = Self { child };
        let deadline = Instant::now() + TRACER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("alloctrace: tracing the kernel's") => {
                    return Ok(this);
                }
                Ok(_) => {}
                Err(_) => bail!("alloctrace --kernel did not get ready"),
            }
        }
    }

    /// Stops it (SIGINT) and returns its report's totals.
    fn finish(mut self, report: &Path) -> Result<Value> {
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + TRACER_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("alloctrace --kernel did not exit after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        util::check(status, "alloctrace --kernel")?;
        let text = std::fs::read_to_string(report)
            .with_context(|| format!("reading {}", report.display()))?;
        let mut report: Value = serde_json::from_str(&text)?;
        Ok(report["totals"].take())
    }
}

impl Drop for KernelTracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
