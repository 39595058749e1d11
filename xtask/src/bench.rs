//! `cargo xtask bench [--rounds N] [--threads N] [--seconds S]`: measure what
//! tracing costs the traced program.
//!
//! The workload is xtask/bench/churn.c, a malloc/free churn of small blocks.
//! It is run untraced, under `alloctrace --floor` (empty programs at the same
//! probe points: the bare uprobe trap cost), under alloctrace's full tracing
//! with the kernel's frame-pointer walk (`--unwind fp`), and, on a second
//! build of the same workload without frame pointers, with the kernel's DWARF
//! unwinder (`--unwind dwarf`) and with stack copies unwound in userspace
//! (`--unwind stack-copy`): the unwinding cost; and under
//! bcc's `memleak-bpfcc` when this machine can run it. The same workload's
//! mmap+munmap mode measures what mapped-memory tracing costs per pair, on
//! one thread after a warm-up: untraced, traced (`--trace-memory both`),
//! and untraced while another process is traced so (the system-call
//! tracepoints are on for every process); `--mapped-only` runs just these. A kernel workload runs with and without `--kernel`
//! (`bench_kernel`). Timings move
//! by ±20% from run to run, so the setups are run in rotation for several
//! rounds and medians are reported. The table goes to stdout; the raw numbers
//! to target/bench/results.json.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{bench_kernel, bench_soak, bench_tracer, build, util};

#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each round runs every setup once, in rotation
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Churn threads in the workload
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Length of each churn phase, in seconds
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Outstanding allocations for the tracer-memory measurement (0 skips it)
    #[arg(long, default_value_t = 10_000_000)]
    pub tracked: u64,
    /// Run only the soak (the tracer's memory under days of churn)
    #[arg(long)]
    pub soak_only: bool,
    /// Run only the mmap+munmap rows (mapped-memory tracing's cost per pair)
    #[arg(long, conflicts_with = "soak_only")]
    pub mapped_only: bool,
    /// Run only the kernel workload (`--kernel`'s slowdown)
    #[arg(long, conflicts_with_all = ["soak_only", "mapped_only"])]
    pub kernel_only: bool,
}

/// How long a tracer may take to attach before the run is abandoned.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tracer may take to finish after the workload exited.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// memleak prints its only line before it attaches; give it this long.
const BCC_SETTLE: Duration = Duration::from_secs(3);

/// One way of running the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Untraced,
    /// Empty programs at alloctrace's probe points, attached as alloctrace
    /// attaches its own (uprobe_multi links on this kernel).
    Floor,
    /// The same, through perf-event uprobes: the floor before uprobe_multi.
    FloorPerfEvents,
    /// `alloctrace --all` whose filter rejects the workload in the kernel.
    HostExcluded,
    Ours,
    /// Full tracing with mapped memory too (`--trace-memory both`).
    OursMapped,
    /// In-kernel DWARF unwinding, on the build without frame pointers.
    OursDwarf,
    /// Stack copies unwound in userspace, on the build without frame pointers.
    OursStackCopy,
    OursSampled,
    Bcc,
    /// The mmap+munmap workload, untraced.
    MapUntraced,
    /// The mmap+munmap workload under `--trace-memory both`.
    MapTraced,
    /// The mmap+munmap workload untraced while another process is traced
    /// with `--trace-memory both`.
    MapBystander,
}

/// The mmap+munmap rows.
const MAP_SETUPS: [Setup; 3] = [Setup::MapUntraced, Setup::MapTraced, Setup::MapBystander];

/// The sample rate of the sampled setup: tcmalloc's and heapprofd's order
/// of magnitude for a service's small allocations.
const SAMPLE_RATE: &str = "64K";

impl Setup {
    fn key(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::Floor => "floor",
            Setup::FloorPerfEvents => "floor_perf_events",
            Setup::HostExcluded => "host_wide_filtered_out",
            Setup::Ours => "alloctrace",
            Setup::OursMapped => "alloctrace_mapped",
            Setup::OursDwarf => "alloctrace_dwarf",
            Setup::OursStackCopy => "alloctrace_stack_copy",
            Setup::OursSampled => "alloctrace_sampled",
            Setup::Bcc => "bcc_memleak",
            Setup::MapUntraced => "mmap_untraced",
            Setup::MapTraced => "mmap_traced",
            Setup::MapBystander => "mmap_bystander",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::Floor => "floor (`alloctrace --floor`)",
            Setup::FloorPerfEvents => {
                "floor through perf-event uprobes (`--floor --perf-event-uprobes`)"
            }
            Setup::HostExcluded => {
                "host-wide, filtered out (`--all --unwind dwarf --comm no-such-comm`)"
            }
            Setup::Ours => "alloctrace (full tracing, `--unwind fp`)",
            Setup::OursMapped => "alloctrace (full tracing, `--trace-memory both`)",
            Setup::OursDwarf => {
                "alloctrace (full tracing, `--unwind dwarf`, in the kernel; build without frame pointers)"
            }
            Setup::OursStackCopy => {
                "alloctrace (full tracing, `--unwind stack-copy`; build without frame pointers)"
            }
            Setup::OursSampled => "alloctrace (`--sample-rate 64K`, `--unwind fp`)",
            Setup::Bcc => "bcc memleak-bpfcc",
            Setup::MapUntraced => "mmap+munmap, untraced",
            Setup::MapTraced => "mmap+munmap, traced (`--trace-memory both`)",
            Setup::MapBystander => {
                "mmap+munmap, untraced, while another process is traced with `--trace-memory both`"
            }
        }
    }

    /// Whether the workload runs mmap+munmap pairs rather than malloc+free.
    fn maps(self) -> bool {
        matches!(
            self,
            Setup::MapUntraced | Setup::MapTraced | Setup::MapBystander
        )
    }
}

/// Everything a run needs to know.
struct Bench {
    churn: PathBuf,
    /// The same workload built without frame pointers, for the DWARF setups.
    churn_nofp: PathBuf,
    tracer: PathBuf,
    /// memleak-bpfcc, when this machine can run it.
    memleak: Option<PathBuf>,
    out: PathBuf,
    threads: u32,
    seconds: f64,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    ns_per_pair: f64,
    /// From alloctrace's report (full tracing only).
    lost_events: Option<u64>,
    events: Option<u64>,
    /// Tracer CPU time from its ready line to its exit, per event.
    cpu_ns_per_event: Option<f64>,
}

pub fn run(args: &Args) -> Result<()> {
    util::require_root()?;
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    let tracer = build::build(false)?;
    let out = util::target_dir().join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if args.soak_only {
        let soak = bench_soak::measure(&tracer, &out)?;
        soak.print();
        return soak.check();
    }
    if args.kernel_only {
        let kernel = bench_kernel::measure(&tracer, &out, args.rounds, args.seconds)?;
        kernel.print();
        return Ok(());
    }
    let churn = compile_churn(&out, "churn", "-fno-omit-frame-pointer")?;
    let churn_nofp = compile_churn(&out, "churn_nofp", "-fomit-frame-pointer")?;
    if args.mapped_only {
        let bench = Bench {
            churn,
            churn_nofp,
            tracer,
            memleak: None,
            out,
            threads: args.threads,
            seconds: args.seconds,
        };
        let results = run_rounds(&bench, &MAP_SETUPS, args.rounds)?;
        print_map_rows(&results);
        return Ok(());
    }

    let mut setups = vec![Setup::Untraced];
    let mut skipped = Vec::new();
    if has_floor(&tracer) {
        setups.push(Setup::Floor);
        setups.push(Setup::FloorPerfEvents);
    } else {
        skipped.push((
            Setup::Floor,
            "this alloctrace has no --floor flag".to_string(),
        ));
    }
    setups.push(Setup::HostExcluded);
    setups.push(Setup::Ours);
    setups.push(Setup::OursMapped);
    setups.push(Setup::OursDwarf);
    setups.push(Setup::OursStackCopy);
    setups.push(Setup::OursSampled);
    setups.extend(MAP_SETUPS);
    let memleak = match find_memleak() {
        Ok(path) => {
            setups.push(Setup::Bcc);
            Some(path)
        }
        Err(reason) => {
            skipped.push((Setup::Bcc, reason));
            None
        }
    };
    for (setup, reason) in &skipped {
        eprintln!("bench: skipping {}: {reason}", setup.key());
    }

    let bench = Bench {
        churn,
        churn_nofp,
        tracer,
        memleak,
        out,
        threads: args.threads,
        seconds: args.seconds,
    };
    let results = run_rounds(&bench, &setups, args.rounds)?;
    let kernel = bench_kernel::measure(&bench.tracer, &bench.out, args.rounds, args.seconds)?;
    let memory = match args.tracked {
        0 => None,
        count => Some(bench_tracer::measure(&bench.tracer, &bench.out, count)?),
    };
    let aggregator = bench_tracer::aggregator_throughput(&bench.tracer)?;
    let soak = bench_soak::measure(&bench.tracer, &bench.out)?;
    let mut summary = summarize(&bench, args.rounds, &results, &skipped);
    if let Some(memory) = &memory {
        summary["memory"] = memory.to_json();
    }
    summary["aggregator_events_per_s"] = json!(aggregator);
    summary["kernel"] = kernel.to_json();
    summary["soak"] = soak.to_json();
    let json_path = bench.out.join("results.json");
    let text = serde_json::to_string_pretty(&summary).context("serializing results")?;
    std::fs::write(&json_path, text + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;

    println!();
    print_table(&results, &skipped);
    println!(
        "- aggregator throughput (synthetic churn with a growing leak, decoding + merging two rings + ledger, one core): {:.1} M events/s",
        aggregator / 1e6
    );
    if let Some(memory) = &memory {
        memory.print();
    }
    kernel.print();
    soak.print();
    println!();
    println!("results: {}", json_path.display());
    soak.check()
}

/// Compile the workload into `out/name`, with `frame_pointers` (the gcc
/// flag that keeps or omits them), and return its path.
fn compile_churn(out: &Path, name: &str, frame_pointers: &str) -> Result<PathBuf> {
    util::compile_c(
        "xtask/bench/churn.c",
        out,
        name,
        &["-O2", "-g", frame_pointers, "-pthread"],
    )
}

/// Whether the tracer accepts the hidden `--floor` flag (clap rejects an
/// unknown flag before it gets to `--help`).
fn has_floor(tracer: &Path) -> bool {
    util::probe(&tracer.to_string_lossy(), ["--floor", "--help"]).is_some()
}

/// The path of memleak-bpfcc, which `cargo xtask setup` installs and makes
/// runnable on this kernel (`setup::bcc_kernel_headers`), once it has
/// attached to a process of the system libc for one interval; or why not.
fn find_memleak() -> Result<PathBuf, String> {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::split_paths(&path_dirs)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("memleak-bpfcc"))
        .find(|path| path.is_file())
        .ok_or_else(|| "memleak-bpfcc not installed (apt-get install bpfcc-tools)".to_string())?;
    memleak_attaches(&path)?;
    Ok(path)
}

/// Whether memleak attaches its probes to the system libc: it announces
/// `Attaching to pid` before it tries, and exits if the kernel refuses one
/// (as it does where another tool left a differently registered uprobe at
/// the same place), so its first interval's heading is the proof.
fn memleak_attaches(memleak: &Path) -> Result<(), String> {
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .spawn()
        .map_err(|e| format!("cannot start sleep: {e}"))?;
    let output = Command::new(memleak)
        .args(["-p", &sleeper.id().to_string(), "1", "1"])
        .output();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let output = output.map_err(|e| format!("cannot run {}: {e}", memleak.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.contains("stacks with outstanding allocations") {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().rev().find(|line| !line.trim().is_empty());
    Err(format!(
        "memleak-bpfcc cannot attach to this host's libc ({})",
        last.unwrap_or("no error output").trim()
    ))
}

/// Run every setup once per round, in rotation, and collect the samples.
/// Each round starts one setup further on, so no setup always runs right
/// after the same other one.
fn run_rounds(bench: &Bench, setups: &[Setup], rounds: u32) -> Result<Vec<(Setup, Vec<Sample>)>> {
    let mut results: Vec<(Setup, Vec<Sample>)> = setups.iter().map(|&s| (s, Vec::new())).collect();
    for round in 1..=rounds {
        let first = (round as usize - 1) % results.len();
        let (before, from) = results.split_at_mut(first);
        for (setup, samples) in from.iter_mut().chain(before) {
            let sample = measure(bench, *setup, round)
                .with_context(|| format!("round {round}: {} run", setup.key()))?;
            eprintln!(
                "bench: round {round}/{rounds} {:<12} {:>9.1} ns/pair",
                setup.key(),
                sample.ns_per_pair
            );
            samples.push(sample);
        }
    }
    Ok(results)
}

/// One run of the workload under `setup`.
fn measure(bench: &Bench, setup: Setup, round: u32) -> Result<Sample> {
    let mut churn = Churn::start(bench, setup)?;
    // The process traced instead of the workload (`MapBystander`).
    let mut bystander = None;
    let report = bench.out.join(format!("alloctrace-round{round}.json"));
    let tracer = match setup {
        Setup::Untraced | Setup::MapUntraced => None,
        Setup::MapTraced => Some(Tracer::start(
            alloctrace(bench, churn.pid, &["--trace-memory", "both"]),
            setup,
        )?),
        Setup::MapBystander => {
            // Another churn, held before its go line, is the traced process.
            let other = Churn::start(bench, Setup::Untraced)?;
            let tracer = Tracer::start(
                alloctrace(bench, other.pid, &["--trace-memory", "both"]),
                setup,
            )?;
            bystander = Some(other);
            Some(tracer)
        }
        Setup::Floor => Some(Tracer::start(
            alloctrace(bench, churn.pid, &["--floor"]),
            setup,
        )?),
        Setup::FloorPerfEvents => Some(Tracer::start(
            alloctrace(bench, churn.pid, &["--floor", "--perf-event-uprobes"]),
            setup,
        )?),
        Setup::Ours
        | Setup::OursMapped
        | Setup::OursDwarf
        | Setup::OursStackCopy
        | Setup::OursSampled => {
            let _ = std::fs::remove_file(&report);
            let unwind = match setup {
                Setup::OursDwarf => "dwarf",
                Setup::OursStackCopy => "stack-copy",
                _ => "fp",
            };
            let mut args = vec![
                OsStr::new("--unwind"),
                OsStr::new(unwind),
                OsStr::new("--report"),
                report.as_os_str(),
            ];
            if setup == Setup::OursSampled {
                args.extend([OsStr::new("--sample-rate"), OsStr::new(SAMPLE_RATE)]);
            }
            if setup == Setup::OursMapped {
                args.extend([OsStr::new("--trace-memory"), OsStr::new("both")]);
            }
            Some(Tracer::start(alloctrace(bench, churn.pid, &args), setup)?)
        }
        Setup::Bcc => Some(Tracer::start(memleak(bench, churn.pid)?, setup)?),
        Setup::HostExcluded => Some(Tracer::start(host_wide_filtered_out(bench), setup)?),
    };
    let ns_per_pair = churn.run()?;
    let mut sample = Sample {
        ns_per_pair,
        ..Sample::default()
    };
    let Some(tracer) = tracer else {
        return Ok(sample);
    };
    // None of these stops when the workload exits.
    let cpu_ticks = tracer.finish(matches!(
        setup,
        Setup::Bcc | Setup::HostExcluded | Setup::MapBystander
    ))?;
    drop(bystander);
    if matches!(setup, Setup::Ours | Setup::OursDwarf | Setup::OursStackCopy) {
        let (events, lost) = read_report(&report)?;
        sample.events = Some(events);
        sample.lost_events = Some(lost);
        if events > 0 {
            sample.cpu_ns_per_event = Some(cpu_ticks as f64 * 1e9 / clock_ticks()? / events as f64);
        }
    }
    Ok(sample)
}

/// Host-wide tracing whose filter rejects every caller in the kernel: the
/// cost host-wide probes put on processes they do not trace.
fn host_wide_filtered_out(bench: &Bench) -> Command {
    let mut cmd = Command::new(&bench.tracer);
    cmd.args(["--all", "--unwind", "dwarf", "--comm", "no-such-comm"])
        .args(["--interval", "1h"])
        .arg("--report")
        .arg(bench.out.join("alloctrace-all.json"))
        .current_dir(&bench.out);
    cmd
}

fn alloctrace<S: AsRef<OsStr>>(bench: &Bench, pid: u32, extra: &[S]) -> Command {
    let mut cmd = Command::new(&bench.tracer);
    cmd.args(["--pid", &pid.to_string()])
        // No periodic summaries during the measurement.
        .args(["--interval", "1h"])
        .args(extra)
        // Its default report and flamegraph land beside the bench's results,
        // not in the checkout the bench was started from.
        .current_dir(&bench.out);
    cmd
}

fn memleak(bench: &Bench, pid: u32) -> Result<Command> {
    let path = bench
        .memleak
        .as_ref()
        .context("memleak-bpfcc was not found")?;
    let mut cmd = Command::new(path);
    cmd.env("PYTHONUNBUFFERED", "1")
        .args(["-p", &pid.to_string()])
        // One summary at most during the measurement.
        .arg("60");
    Ok(cmd)
}

/// `(allocs + frees, lost_events)` from an alloctrace JSON report.
fn read_report(path: &Path) -> Result<(u64, u64)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let field = |name: &str| {
        report["totals"][name]
            .as_u64()
            .with_context(|| format!("{}: no totals.{name}", path.display()))
    };
    Ok((field("allocs")? + field("frees")?, field("lost_events")?))
}

/// The running workload; killed if dropped before it finishes.
struct Churn {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Churn {
    /// Start the workload (the build `setup` runs) and wait for its
    /// `ready <pid>` line.
    fn start(bench: &Bench, setup: Setup) -> Result<Self> {
        let binary = match setup {
            Setup::OursDwarf | Setup::OursStackCopy => &bench.churn_nofp,
            _ => &bench.churn,
        };
        // One thread for mmap+munmap pairs: two threads of one process
        // take turns at its mmap lock (every mmap and munmap holds it for
        // writing), and the time the waiter spins on it counts as its CPU
        // time. Measured (perf, untraced, 2 threads): 10% of the workload's
        // cycles in rwsem_spin_on_owner, more on a quiet machine, where the
        // threads overlap more: traced pairs, which spend longer outside the
        // lock, then spun less and came out cheaper than untraced ones (5.8
        // vs 9.0 µs). The lock is the workload's, not the tracer's cost.
        let threads = if setup.maps() { 1 } else { bench.threads };
        let mut cmd = Command::new(binary);
        cmd.arg(threads.to_string())
            .arg(bench.seconds.to_string())
            .args(setup.maps().then_some("mmap"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("churn has no stdout pipe")?;
        let mut churn = Churn {
            pid: child.id(),
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        let pid = churn.expect_line("ready")?;
        if pid.parse::<u32>().ok() != Some(churn.pid) {
            bail!("churn said `ready {pid}`, expected pid {}", churn.pid);
        }
        Ok(churn)
    }

    /// Let it churn, and return its ns per malloc+free pair once it exits.
    fn run(&mut self) -> Result<f64> {
        let mut stdin = self.stdin.take().context("churn was already started")?;
        stdin.write_all(b"go\n").context("starting the churn")?;
        drop(stdin);
        let value = self.expect_line("ns_per_pair")?;
        let status = self.child.wait().context("waiting for churn")?;
        util::check(status, "churn")?;
        value
            .parse()
            .with_context(|| format!("churn printed a bad ns_per_pair `{value}`"))
    }

    /// Read the next stdout line, which must be `<key> <value>`; return the value.
    fn expect_line(&mut self, key: &str) -> Result<String> {
        let line = self
            .stdout
            .next()
            .transpose()
            .context("reading churn's stdout")?
            .with_context(|| format!("churn exited before printing `{key}`"))?;
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(str::to_string)
            .with_context(|| format!("churn printed `{line}`, expected `{key} ...`"))
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running tracer whose output lines (stdout and stderr) arrive on a channel.
struct Tracer {
    child: Child,
    shown: String,
    lines: Receiver<String>,
    /// Lines seen so far, for error messages.
    seen: Vec<String>,
    /// utime+stime (clock ticks) when it became ready.
    ready_ticks: u64,
}

impl Tracer {
    /// Start the tracer and wait until it is attached.
    fn start(mut cmd: Command, setup: Setup) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        util::echo(&cmd);
        let shown = util::display(&cmd);
        let mut child = cmd.spawn().with_context(|| format!("starting `{shown}`"))?;
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("tracer has no stdout pipe")?;
        let stderr = child.stderr.take().context("tracer has no stderr pipe")?;
        forward_lines(stdout, sender.clone());
        forward_lines(stderr, sender);
        let mut tracer = Tracer {
            child,
            shown,
            lines,
            seen: Vec::new(),
            ready_ticks: 0,
        };
        tracer.wait_ready(setup)?;
        tracer.ready_ticks = cpu_ticks(tracer.child.id())?;
        Ok(tracer)
    }

    fn wait_ready(&mut self, setup: Setup) -> Result<()> {
        let marker = match setup {
            Setup::Bcc => "Attaching to pid",
            // `tracing pid N (...)`, or `tracing all processes (...)`.
            _ => "alloctrace: tracing ",
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(marker);
                    self.seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failure("did not get ready in time"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    return Err(self.failure("exited before it was ready"));
                }
            }
        }
        if setup == Setup::Bcc {
            // memleak prints its line before attaching, and nothing after.
            std::thread::sleep(BCC_SETTLE);
        }
        Ok(())
    }

    /// Wait for the tracer to end (it stops when the workload exits; memleak
    /// is sent SIGINT) and return the CPU ticks it used since it was ready.
    fn finish(mut self, interrupt: bool) -> Result<u64> {
        let pid = self.child.id();
        if interrupt {
            // SAFETY: kill(2) on our own child, which has not been reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
        if !wait_exit_unreaped(pid, EXIT_TIMEOUT)? {
            return Err(self.failure("did not exit after the workload ended"));
        }
        // It is a zombie now: its stat still holds its final CPU times.
        let ticks = cpu_ticks(pid)?;
        let status = self.child.wait().context("reaping the tracer")?;
        self.seen.extend(self.lines.try_iter());
        if !status.success() && !interrupt {
            return Err(self.failure(&format!("failed ({status})")));
        }
        Ok(ticks.saturating_sub(self.ready_ticks))
    }

    /// An error naming the command, with its last output lines.
    fn failure(&mut self, what: &str) -> anyhow::Error {
        self.seen.extend(self.lines.try_iter());
        let tail = self.seen.len().saturating_sub(10);
        anyhow!(
            "`{}` {what}; its last output:\n{}",
            self.shown,
            self.seen[tail..].join("\n")
        )
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Send each line read from `stream` to `sender`, on a thread, until EOF.
fn forward_lines<R: std::io::Read + Send + 'static>(stream: R, sender: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

/// Wait up to `timeout` for child `pid` to exit, leaving it unreaped so its
/// /proc entry can still be read. False on timeout.
fn wait_exit_unreaped(pid: u32, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with a valid siginfo_t pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("waitid({pid})"));
        }
        // SAFETY: si_pid is valid to read after a successful waitid.
        if unsafe { info.si_pid() } != 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime of `pid`, in clock ticks, from /proc/<pid>/stat.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised comm (which may contain spaces) start at
    // field 3 (state); utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no comm field"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: bad field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks() -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64)
}

fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn median_ns(results: &[(Setup, Vec<Sample>)], setup: Setup) -> Option<f64> {
    let samples = &results.iter().find(|(s, _)| *s == setup)?.1;
    median(samples.iter().map(|s| s.ns_per_pair))
}

fn samples(results: &[(Setup, Vec<Sample>)], setup: Setup) -> &[Sample] {
    results
        .iter()
        .find(|(s, _)| *s == setup)
        .map_or(&[], |(_, samples)| samples)
}

/// What DWARF unwinding adds per malloc+free pair over the frame-pointer walk.
fn unwinding_cost(results: &[(Setup, Vec<Sample>)]) -> Option<f64> {
    Some(median_ns(results, Setup::OursDwarf)? - median_ns(results, Setup::Ours)?)
}

fn ratio(results: &[(Setup, Vec<Sample>)], of: Setup, to: Setup) -> Option<f64> {
    Some(median_ns(results, of)? / median_ns(results, to)?)
}

/// `of / to` within each round: both ran minutes apart at most, so this
/// shows how much of the medians' ratio is the VM's drift.
fn per_round_ratios(results: &[(Setup, Vec<Sample>)], of: Setup, to: Setup) -> Vec<f64> {
    samples(results, of)
        .iter()
        .zip(samples(results, to))
        .map(|(of, to)| of.ns_per_pair / to.ns_per_pair)
        .collect()
}

fn summarize(
    bench: &Bench,
    rounds: u32,
    results: &[(Setup, Vec<Sample>)],
    skipped: &[(Setup, String)],
) -> Value {
    let mut setups = serde_json::Map::new();
    for (setup, samples) in results {
        setups.insert(
            setup.key().into(),
            json!({
                "median_ns_per_pair": median_ns(results, *setup),
                "runs": samples.iter().map(|s| json!({
                    "ns_per_pair": s.ns_per_pair,
                    "events": s.events,
                    "lost_events": s.lost_events,
                    "tracer_cpu_ns_per_event": s.cpu_ns_per_event,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    for (setup, reason) in skipped {
        setups.insert(setup.key().into(), json!({ "skipped": reason }));
    }
    let ours = samples(results, Setup::Ours);
    let dwarf = samples(results, Setup::OursDwarf);
    let stack_copy = samples(results, Setup::OursStackCopy);
    json!({
        "workload": {
            "threads": bench.threads,
            "seconds": bench.seconds,
            "slots_per_thread": 64,
            "sizes": "16..1040",
            "mmap_threads": 1,
            "mmap_warmup_pairs": 1000,
        },
        "rounds": rounds,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string()).ok(),
        "setups": setups,
        "ratios": {
            "ours_over_floor": ratio(results, Setup::Ours, Setup::Floor),
            "ours_over_floor_per_round": per_round_ratios(results, Setup::Ours, Setup::Floor),
            "floor_over_floor_perf_events": ratio(results, Setup::Floor, Setup::FloorPerfEvents),
            "ours_over_bcc": ratio(results, Setup::Ours, Setup::Bcc),
            "ours_over_untraced": ratio(results, Setup::Ours, Setup::Untraced),
            // Mapped-memory tracing must stay within 1.05x of heap-only.
            "mapped_over_heap_only": ratio(results, Setup::OursMapped, Setup::Ours),
            "mapped_over_heap_only_per_round":
                per_round_ratios(results, Setup::OursMapped, Setup::Ours),
            "dwarf_over_fp": ratio(results, Setup::OursDwarf, Setup::Ours),
            "dwarf_over_floor": ratio(results, Setup::OursDwarf, Setup::Floor),
            "dwarf_over_floor_per_round": per_round_ratios(results, Setup::OursDwarf, Setup::Floor),
            "stack_copy_over_floor": ratio(results, Setup::OursStackCopy, Setup::Floor),
            "sampled_over_floor": ratio(results, Setup::OursSampled, Setup::Floor),
            "host_wide_filtered_out_over_floor": ratio(results, Setup::HostExcluded, Setup::Floor),
            "mmap_pair_traced_over_untraced": ratio(results, Setup::MapTraced, Setup::MapUntraced),
            "mmap_pair_traced_over_untraced_per_round":
                per_round_ratios(results, Setup::MapTraced, Setup::MapUntraced),
            "mmap_pair_bystander_over_untraced":
                ratio(results, Setup::MapBystander, Setup::MapUntraced),
        },
        "dwarf_unwinding_ns_per_pair": unwinding_cost(results),
        "lost_events_total": ours.iter().filter_map(|s| s.lost_events).sum::<u64>(),
        "tracer_cpu_ns_per_event_median": median(ours.iter().filter_map(|s| s.cpu_ns_per_event)),
        "dwarf_lost_events_total": dwarf.iter().filter_map(|s| s.lost_events).sum::<u64>(),
        "dwarf_tracer_cpu_ns_per_event_median":
            median(dwarf.iter().filter_map(|s| s.cpu_ns_per_event)),
        "stack_copy_lost_events_total": stack_copy.iter().filter_map(|s| s.lost_events).sum::<u64>(),
        "stack_copy_tracer_cpu_ns_per_event_median":
            median(stack_copy.iter().filter_map(|s| s.cpu_ns_per_event)),
    })
}

fn fmt_ns(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.1}"))
}

fn fmt_ratio(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.2}x"))
}

/// A table of `rows` (of `results`): medians per `pair`, against `baseline`.
fn print_rows(
    pair: &str,
    results: &[(Setup, Vec<Sample>)],
    rows: &[&(Setup, Vec<Sample>)],
    baseline: Setup,
) {
    println!("| setup | median ns per {pair} | vs untraced | runs (ns) |");
    println!("|---|---:|---:|---|");
    for (setup, samples) in rows {
        let runs: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1}", s.ns_per_pair))
            .collect();
        println!(
            "| {} | {} | {} | {} |",
            setup.label(),
            fmt_ns(median_ns(results, *setup)),
            fmt_ratio(ratio(results, *setup, baseline)),
            runs.join(", ")
        );
    }
}

/// The mmap+munmap rows, with the ratios of each round (the setups of a
/// round ran within seconds of each other).
fn print_map_rows(results: &[(Setup, Vec<Sample>)]) {
    let rows: Vec<_> = results.iter().filter(|(setup, _)| setup.maps()).collect();
    print_rows(
        "mmap+munmap of 64 KiB (one thread's CPU time)",
        results,
        &rows,
        Setup::MapUntraced,
    );
    for (of, what) in [
        (Setup::MapTraced, "traced/untraced"),
        (
            Setup::MapBystander,
            "untraced beside a traced process/untraced",
        ),
    ] {
        let rounds = per_round_ratios(results, of, Setup::MapUntraced);
        let shown: Vec<String> = rounds.iter().map(|ratio| format!("{ratio:.2}x")).collect();
        println!(
            "- mmap+munmap pair {what}: {} of medians, {} of the rounds' ratios (each round: {}); \
             +{} ns per pair",
            fmt_ratio(ratio(results, of, Setup::MapUntraced)),
            fmt_ratio(median(rounds.iter().copied())),
            shown.join(", "),
            fmt_ns(
                median_ns(results, of)
                    .zip(median_ns(results, Setup::MapUntraced))
                    .map(|(of, untraced)| of - untraced)
            )
        );
    }
}

fn print_table(results: &[(Setup, Vec<Sample>)], skipped: &[(Setup, String)]) {
    let pair_setups: Vec<_> = results.iter().filter(|(setup, _)| !setup.maps()).collect();
    print_rows(
        "malloc+free (target thread CPU time)",
        results,
        &pair_setups,
        Setup::Untraced,
    );
    for (setup, reason) in skipped {
        println!("| {} | skipped | | {reason} |", setup.label());
    }
    println!();
    print_map_rows(results);

    let ours = samples(results, Setup::Ours);
    let dwarf = samples(results, Setup::OursDwarf);
    let stack_copy = samples(results, Setup::OursStackCopy);
    let lost = |samples: &[Sample]| {
        samples
            .iter()
            .map(|s| s.lost_events.map_or("?".into(), |l| l.to_string()))
            .collect::<Vec<String>>()
            .join(", ")
    };
    println!();
    println!(
        "- ours/floor: {}",
        fmt_ratio(ratio(results, Setup::Ours, Setup::Floor))
    );
    let per_round: Vec<String> = per_round_ratios(results, Setup::Ours, Setup::Floor)
        .iter()
        .map(|ratio| format!("{ratio:.2}x"))
        .collect();
    println!("- ours/floor in each round: {}", per_round.join(", "));
    println!(
        "- floor through uprobe_multi links vs perf-event uprobes: {} vs {} ns per pair ({})",
        fmt_ns(median_ns(results, Setup::Floor)),
        fmt_ns(median_ns(results, Setup::FloorPerfEvents)),
        fmt_ratio(ratio(results, Setup::Floor, Setup::FloorPerfEvents))
    );
    println!(
        "- host-wide probes, caller filtered out in the kernel: {} ns per pair (floor {} ns, {})",
        fmt_ns(median_ns(results, Setup::HostExcluded)),
        fmt_ns(median_ns(results, Setup::Floor)),
        fmt_ratio(ratio(results, Setup::HostExcluded, Setup::Floor))
    );
    let mapped_rounds: Vec<String> = per_round_ratios(results, Setup::OursMapped, Setup::Ours)
        .iter()
        .map(|ratio| format!("{ratio:.2}x"))
        .collect();
    println!(
        "- mapped-memory tracing on/off (`--trace-memory both` vs heap only): {} ({} vs {} ns \
         per pair; each round: {}; must stay at most 1.05x)",
        fmt_ratio(ratio(results, Setup::OursMapped, Setup::Ours)),
        fmt_ns(median_ns(results, Setup::OursMapped)),
        fmt_ns(median_ns(results, Setup::Ours)),
        mapped_rounds.join(", ")
    );
    println!(
        "- ours/bcc: {}",
        fmt_ratio(ratio(results, Setup::Ours, Setup::Bcc))
    );
    println!(
        "- sampled (`--sample-rate {SAMPLE_RATE}`)/floor: {}",
        fmt_ratio(ratio(results, Setup::OursSampled, Setup::Floor))
    );
    let dwarf_rounds: Vec<String> = per_round_ratios(results, Setup::OursDwarf, Setup::Floor)
        .iter()
        .map(|ratio| format!("{ratio:.2}x"))
        .collect();
    println!(
        "- in-kernel DWARF/floor: {} (each round: {}); stack-copy/floor: {}",
        fmt_ratio(ratio(results, Setup::OursDwarf, Setup::Floor)),
        dwarf_rounds.join(", "),
        fmt_ratio(ratio(results, Setup::OursStackCopy, Setup::Floor))
    );
    println!(
        "- unwinding cost (`--unwind dwarf` minus `--unwind fp`, medians): {} ns per pair ({})",
        fmt_ns(unwinding_cost(results)),
        fmt_ratio(ratio(results, Setup::OursDwarf, Setup::Ours))
    );
    println!("- lost events (alloctrace fp, per run): {}", lost(ours));
    println!("- lost events (alloctrace dwarf, per run): {}", lost(dwarf));
    println!(
        "- lost events (alloctrace stack-copy, per run): {}",
        lost(stack_copy)
    );
    println!(
        "- alloctrace CPU per event (median; utime+stime from ready to exit / (allocs+frees)): \
         fp {} ns, dwarf {} ns, stack-copy {} ns",
        fmt_ns(median(ours.iter().filter_map(|s| s.cpu_ns_per_event))),
        fmt_ns(median(dwarf.iter().filter_map(|s| s.cpu_ns_per_event))),
        fmt_ns(median(stack_copy.iter().filter_map(|s| s.cpu_ns_per_event)))
    );
}
