//! The tracer's own costs in `cargo xtask bench`: the events per second its
//! aggregator sustains, and its resident memory per tracked (outstanding)
//! allocation with millions of them in the target.
//!
//! Throughput: the kernel cannot feed the aggregator at full speed (each
//! event costs the target a trap), so the `aggregator` example replays
//! a synthetic churn stream with a growing leak, in the ring's record layout,
//! through the tracer's own decoding and ledger code.
//!
//! Memory:
//! A workload (`xtask/bench/hold.c`) mallocs COUNT blocks and keeps them all;
//! alloctrace traces it from before the first one. The tracer's RSS once its
//! ledger holds every block, minus its RSS at the ready line, divided by
//! COUNT, is what each tracked allocation costs (the ledger entry plus its
//! share of the hash table's slack); the high-water mark is reported too,
//! because the table's growth briefly holds two copies.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::util;

/// How long the tracer may take to account for every block.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// What was measured.
pub struct Memory {
    pub tracked: u64,
    pub rss_bytes_per_allocation: f64,
    pub peak_bytes_per_allocation: f64,
    pub lost_events: u64,
}

impl Memory {
    pub fn to_json(&self) -> Value {
        json!({
            "tracked_allocations": self.tracked,
            "rss_bytes_per_tracked_allocation": self.rss_bytes_per_allocation,
            "peak_bytes_per_tracked_allocation": self.peak_bytes_per_allocation,
            "lost_events": self.lost_events,
        })
    }

    pub fn print(&self) {
        println!(
            "- tracer memory with {} outstanding allocations: {:.1} bytes each (RSS), {:.1} at peak; lost events {}",
            self.tracked,
            self.rss_bytes_per_allocation,
            self.peak_bytes_per_allocation,
            self.lost_events
        );
    }
}

/// Events the aggregator replays per measurement, and measurements taken.
const AGGREGATOR_EVENTS: u64 = 20_000_000;
const AGGREGATOR_RUNS: usize = 3;

/// The median of a few runs of the `aggregator` example (built here, next
/// to `tracer`), in events/s.
pub fn aggregator_throughput(tracer: &Path) -> Result<f64> {
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "tracer",
        "--example",
        "aggregator",
    ]))?;
    let aggregator = tracer.with_file_name("examples").join("aggregator");
    let mut rates = Vec::new();
    for _ in 0..AGGREGATOR_RUNS {
        let output = Command::new(&aggregator)
            .arg(AGGREGATOR_EVENTS.to_string())
            .output()
            .with_context(|| format!("running {}", aggregator.display()))?;
        util::check(output.status, "the aggregator benchmark")?;
        let result: Value = serde_json::from_slice(&output.stdout)
            .context("parsing the aggregator benchmark's output")?;
        let rate = result
            .get("events_per_s")
            .and_then(Value::as_f64)
            .context("no events_per_s from the aggregator benchmark")?;
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// Traces `count` outstanding allocations and measures the tracer.
pub fn measure(tracer: &Path, out: &Path, count: u64) -> Result<Memory> {
    let hold = compile_hold(out)?;
    let mut workload = Workload::start(&hold, count)?;
    let mut cmd = Command::new(tracer);
    cmd.args(["--pid", &workload.pid.to_string()])
        // The ledger is measured, not the unwinder: its stack copies would
        // also need a far larger ring at this allocation rate.
        .args([
            "--unwind",
            "fp",
            "--interval",
            "1s",
            "--log-format",
            "json",
            "--report",
        ])
        .arg(out.join("memory-report.json"))
        .args(["--max-tracked", &(count * 2).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting alloctrace")?;
    let ticks = lines_of(child.stdout.take().context("no tracer stdout")?);
    let stderr = lines_of(child.stderr.take().context("no tracer stderr")?);
    let result = (|| {
        wait_for(&stderr, "alloctrace: tracing pid", Duration::from_secs(60))?;
        let before = status_kib(child.id(), "VmRSS")?;
        workload.hold()?;
        let tick = wait_for_tick(&ticks, count)?;
        let after = status_kib(child.id(), "VmRSS")?;
        let peak = status_kib(child.id(), "VmHWM")?;
        let per = |kib: u64| (kib.saturating_sub(before) * 1024) as f64 / count as f64;
        Ok(Memory {
            tracked: count,
            rss_bytes_per_allocation: per(after),
            peak_bytes_per_allocation: per(peak),
            lost_events: tick.get("lost_events").and_then(Value::as_u64).unwrap_or(0),
        })
    })();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    result
}

fn compile_hold(out: &Path) -> Result<std::path::PathBuf> {
    util::compile_c(
        "xtask/bench/hold.c",
        out,
        "hold",
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    )
}

struct Workload {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    stdout: mpsc::Receiver<String>,
}

impl Workload {
    fn start(bin: &Path, count: u64) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().context("no workload stdin")?;
        let stdout = lines_of(child.stdout.take().context("no workload stdout")?);
        wait_for(&stdout, "ready", Duration::from_secs(10))?;
        Ok(Self {
            pid: child.id(),
            child,
            stdin,
            stdout,
        })
    }

    fn hold(&mut self) -> Result<()> {
        self.stdin.write_all(b"go\n").context("starting hold")?;
        self.stdin.flush()?;
        wait_for(&self.stdout, "held", CATCH_UP_TIMEOUT)?;
        Ok(())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn lines_of<R: std::io::Read + Send + 'static>(stream: R) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

pub fn wait_for(lines: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(_) => {}
            Err(_) => bail!("no `{prefix}` line within {timeout:?}"),
        }
    }
}

/// The first JSON tick whose outstanding count reached `count`.
fn wait_for_tick(ticks: &mpsc::Receiver<String>, count: u64) -> Result<Value> {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let line = wait_for(
            ticks,
            "{",
            deadline.saturating_duration_since(Instant::now()),
        )
        .context("waiting for the tracer to account for every block")?;
        let tick: Value = serde_json::from_str(&line).context("parsing a JSON tick")?;
        let outstanding = tick.get("outstanding_count").and_then(Value::as_u64);
        if outstanding.is_some_and(|n| n >= count) {
            return Ok(tick);
        }
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
