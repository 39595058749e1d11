//! The soak run of `cargo xtask bench`: days of a hostile target's churn
//! in a few minutes, and the tracer's resident memory, which must stay
//! flat once warmed up.
//!
//! `tests/workloads/stack_storm.c` makes, round after round, 10,000 stacks
//! never seen before (each block freed at once), 200 short processes (a
//! quarter exec) and 2,000 task names, then pauses for [`PAUSE`], while a
//! host-wide tracer (`--all --comm stack_storm`, so other processes of the
//! machine stay out) ticks every second and writes a snapshot every 2 s,
//! keeping 5. A service making a new stack a second would take a week to
//! reach what the soak makes in under three minutes.
//!
//! The pause lets the tracer keep up: a storm of new stacks faster than it
//! can take them (each new stack's event carries its frames) piles up in
//! the reader's backlog, bounded by `events::MAX_BACKLOG` events, whose
//! high-water mark the allocator keeps; measured without a pause, the
//! soak's memory climbed with that backlog (211 to 324 MiB), and that
//! bound is the backlog's, not the tables'.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    bench_tracer::{lines_of, status_kib, wait_for},
    util,
};

/// How long the soak runs, and how much of it is warm-up (the allocator's
/// and the tables' high-water marks are reached in it).
const SOAK: Duration = Duration::from_secs(150);
const WARM_UP: Duration = Duration::from_secs(30);
/// The stack cap the soak runs with: small, so eviction runs all along.
const MAX_STACKS: u32 = 20_000;
/// Resident memory may end this much above where it was after warm-up:
/// 10 %, plus 4 MiB for the allocator's slack.
const TOLERANCE_PERCENT: u64 = 10;
const TOLERANCE_KIB: u64 = 4096;
/// Stacks each round makes, and the pause after it.
const STACKS_PER_ROUND: u32 = 10_000;
const PAUSE: Duration = Duration::from_millis(500);
/// Paths `stack_storm` tells apart (8^6): past them, the first stacks
/// recur, long evicted.
const STORM_PATHS: u32 = 262_144;

/// What the soak measured.
pub struct Soak {
    rounds: u32,
    stacks_made: u64,
    processes: u64,
    renames: u64,
    rss_start_kib: u64,
    rss_end_kib: u64,
    rss_max_kib: u64,
    evicted_stacks: u64,
    stacks_held: u64,
    lost_events: u64,
}

impl Soak {
    pub fn to_json(&self) -> Value {
        json!({
            "seconds": SOAK.as_secs(),
            "rounds": self.rounds,
            "stacks_made": self.stacks_made,
            "processes": self.processes,
            "renames": self.renames,
            "rss_start_kib": self.rss_start_kib,
            "rss_end_kib": self.rss_end_kib,
            "rss_max_kib": self.rss_max_kib,
            "evicted_stacks": self.evicted_stacks,
            "stacks_held": self.stacks_held,
            "lost_events": self.lost_events,
        })
    }

    pub fn print(&self) {
        println!(
            "- soak ({} s, --max-stacks {MAX_STACKS}): {} new stacks, {} processes, {} renames; \
             tracer RSS {:.1} MiB after {} s warm-up, {:.1} MiB at the end (max {:.1} MiB); \
             {} stacks evicted, {} held, {} events lost",
            SOAK.as_secs(),
            self.stacks_made,
            self.processes,
            self.renames,
            self.rss_start_kib as f64 / 1024.0,
            WARM_UP.as_secs(),
            self.rss_end_kib as f64 / 1024.0,
            self.rss_max_kib as f64 / 1024.0,
            self.evicted_stacks,
            self.stacks_held,
            self.lost_events,
        );
    }

    /// Fails when the memory did not stay flat.
    pub fn check(&self) -> Result<()> {
        let allowed = self.rss_start_kib * (100 + TOLERANCE_PERCENT) / 100 + TOLERANCE_KIB;
        if self.rss_end_kib > allowed {
            bail!(
                "soak: the tracer grew from {} KiB to {} KiB (allowed {allowed} KiB)",
                self.rss_start_kib,
                self.rss_end_kib
            );
        }
        if self.evicted_stacks == 0 {
            bail!("soak: no stack was evicted");
        }
        Ok(())
    }
}

/// A running `stack_storm`, driven by its commands.
struct Storm {
    child: Child,
    lines: BufReader<std::process::ChildStdout>,
}

impl Storm {
    fn start(bin: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("no storm stdout")?);
        let mut ready = String::new();
        lines.read_line(&mut ready)?;
        if !ready.starts_with("ready ") {
            bail!("stack_storm said {ready:?}");
        }
        Ok(Self { child, lines })
    }

    fn command(&mut self, command: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("no storm stdin")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let mut done = String::new();
        self.lines.read_line(&mut done)?;
        if done.trim() != "done" {
            bail!("stack_storm answered {command:?} with {done:?}");
        }
        Ok(())
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn compile_storm(out: &Path) -> Result<PathBuf> {
    util::compile_c(
        "tests/workloads/stack_storm.c",
        out,
        "stack_storm",
        &[
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
    )
}

pub fn measure(tracer: &Path, out: &Path) -> Result<Soak> {
    let bin = compile_storm(out)?;
    let snapshots = out.join("soak-snapshots");
    let _ = std::fs::remove_dir_all(&snapshots);
    let report = out.join("soak-report.json");
    let mut storm = Storm::start(&bin)?;
    let mut child = Command::new(tracer)
        .args(["--all", "--comm", "stack_storm", "--interval", "1s"])
        .args(["--max-stacks", &MAX_STACKS.to_string()])
        .args([
            "--snapshot-every",
            "2s",
            "--snapshot-keep",
            "5",
            "--snapshot-dir",
        ])
        .arg(&snapshots)
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting alloctrace")?;
    let stderr = lines_of(child.stderr.take().context("no tracer stderr")?);
    let result = (|| -> Result<(u32, u64, u64, u64)> {
        wait_for(
            &stderr,
            "alloctrace: tracing all processes",
            Duration::from_secs(60),
        )?;
        let started = Instant::now();
        let (mut rounds, mut first) = (0, 0);
        let mut rss_start_kib = None;
        let mut rss_max_kib = 0;
        while started.elapsed() < SOAK {
            let count = STACKS_PER_ROUND.min(STORM_PATHS - first);
            storm.command(&format!("storm {first} {count}"))?;
            first = (first + count) % STORM_PATHS;
            storm.command("fork 200")?;
            storm.command("rename 2000")?;
            std::thread::sleep(PAUSE);
            rounds += 1;
            let rss = status_kib(child.id(), "VmRSS")?;
            if started.elapsed() >= WARM_UP {
                rss_start_kib.get_or_insert(rss);
                rss_max_kib = rss_max_kib.max(rss);
            }
        }
        let rss_end_kib = status_kib(child.id(), "VmRSS")?;
        Ok((
            rounds,
            rss_start_kib.unwrap_or(rss_end_kib),
            rss_end_kib,
            rss_max_kib,
        ))
    })();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let (rounds, rss_start_kib, rss_end_kib, rss_max_kib) = result?;
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("reading {}", report.display()))?;
    let report: Value = serde_json::from_str(&text).context("parsing the soak's report")?;
    let totals = &report["totals"];
    let count = |key: &str| totals.get(key).and_then(Value::as_u64).unwrap_or(0);
    let snapshots_kept = std::fs::read_dir(&snapshots).map_or(0, |dir| dir.count());
    if snapshots_kept > 5 {
        bail!("soak: {snapshots_kept} snapshots kept with --snapshot-keep 5");
    }
    Ok(Soak {
        rounds,
        stacks_made: u64::from(rounds) * u64::from(STACKS_PER_ROUND),
        processes: u64::from(rounds) * 200,
        renames: u64::from(rounds) * 2000,
        rss_start_kib,
        rss_end_kib,
        rss_max_kib,
        evicted_stacks: count("evicted_stacks"),
        stacks_held: count("stacks"),
        lost_events: count("lost_events"),
    })
}
