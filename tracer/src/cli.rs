//! Command-line flags, and their validation into a [`Config`] the rest of the
//! tracer can trust (sizes in range, output paths writable) before anything is
//! attached to the target.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use crate::sampling::Sampling;

/// Trace a live process's heap allocations with eBPF and report the call
/// stacks that hold outstanding (leaked) memory.
#[derive(Debug, Parser)]
#[command(name = "alloctrace", version)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pid", "command", "all"]))]
pub struct Cli {
    /// Process to trace (it keeps running; nothing is restarted).
    #[arg(long, value_name = "PID", conflicts_with = "command")]
    pub pid: Option<u32>,

    /// Command to start and trace from its first instruction (after `--`);
    /// alloctrace exits with its exit status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,

    #[command(flatten)]
    pub host: HostArgs,

    /// Stop after this long (e.g. 30s, 5m, 1h, or plain seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Time between summary lines.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Stacks shown in each summary.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top: u32,

    /// Format of the periodic summary on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Write a flamegraph (SVG) of outstanding bytes by stack.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,

    /// Write outstanding bytes by stack in folded format (`a;b;c BYTES`).
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,

    /// Write the JSON report.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,

    /// Leave allocations younger than this out of the final outputs.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_age: Option<Duration>,

    /// Size of each CPU's kernel-to-tracer event ring buffer (e.g. 4M; a
    /// power of two) [default: 8M, or 32M with DWARF unwinding]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,

    /// How user stacks are collected: `fp` walks frame pointers in the
    /// kernel (cheapest; breaks at code built without them); `dwarf` unwinds
    /// in the kernel with DWARF CFI tables compiled once per file (falling
    /// back to frame pointers per frame, e.g. in JIT code); `auto` uses
    /// `dwarf` for processes whose executable is built without frame
    /// pointers and `fp` for the others; `stack-copy` copies the top of the
    /// stack into every event and unwinds it in userspace (slower; one
    /// process only).
    #[arg(long, value_enum, default_value_t = UnwindMode::Auto)]
    pub unwind: UnwindMode,

    /// Kernel memory for the DWARF unwinding tables (8 bytes per row),
    /// allocated when tracing starts; files past it fall back to frame
    /// pointers [default: 16M for one process, 64M with --all]
    #[arg(long, value_name = "BYTES", value_parser = parse_table_memory)]
    pub unwind_table_memory: Option<u32>,

    /// Bytes of user stack copied per allocation by `--unwind stack-copy`,
    /// a multiple of 4K (frames beyond them are cut off).
    #[arg(long, value_name = "BYTES", default_value = "8K", value_parser = parse_stack_bytes)]
    pub stack_bytes: u32,

    /// Track at most this many outstanding allocations; beyond it new ones
    /// are dropped and counted (`dropped_allocations`) instead of growing the
    /// tracer's memory without bound.
    #[arg(long, value_name = "N", default_value = "20000000", value_parser = parse_count)]
    pub max_tracked: u64,

    /// Sample allocations instead of tracing every one: a mean of one
    /// reported block per BYTES allocated (Poisson sampling by bytes, as
    /// heapprofd does); every number is then an unbiased estimate. Cheaper
    /// for the kernel and the tracer; every call still traps.
    #[arg(long, value_name = "BYTES", value_parser = parse_sample_rate)]
    pub sample_rate: Option<u64>,

    /// Trace the allocator in this shared library (e.g. a jemalloc or
    /// tcmalloc build the target maps) instead of the one found automatically.
    #[arg(long, value_name = "PATH")]
    pub allocator_lib: Option<PathBuf>,

    /// Log attach details and kernel-side diagnostics to stderr.
    #[arg(short, long)]
    pub verbose: bool,

    /// Benchmark aid: attach empty programs at the same probe points and
    /// record nothing, so the cost of the traps alone can be measured.
    #[arg(long, hide = true)]
    pub floor: bool,

    /// Test aid: thread ids below this (at most 65536) keep their calls in
    /// flight in the kernel's array, the others in its hash map. Both must
    /// give the same numbers.
    #[arg(long, hide = true, default_value_t = tracer_ebpf::MAX_THREAD_SLOTS,
          value_parser = parse_thread_slots)]
    pub thread_slots: u32,

    /// Benchmark aid: attach the uprobes through perf events, as before
    /// uprobe_multi links, to compare the two.
    #[arg(long, hide = true)]
    pub perf_event_uprobes: bool,

    #[command(flatten)]
    pub watch: WatchArgs,
}

/// Host-wide mode: every process on the host, ranked by growth.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// Trace every process on the host that maps a C library or a known
    /// allocator (including processes started later and in containers).
    #[arg(long)]
    pub all: bool,

    /// With --all: trace only processes (threads) with this name, as in
    /// /proc/PID/comm (repeatable).
    #[arg(long, value_name = "NAME", requires = "all")]
    pub comm: Vec<String>,

    /// With --all: trace only processes in this cgroup (v2) or below it,
    /// e.g. /sys/fs/cgroup/system.slice/nginx.service.
    #[arg(long, value_name = "PATH", requires = "all")]
    pub cgroup: Option<PathBuf>,

    /// With --all: never trace this process (repeatable).
    #[arg(long, value_name = "PID", requires = "all")]
    pub exclude_pid: Vec<u32>,

    /// With --all: also write one flamegraph per process, DIR/COMM-PID.svg.
    #[arg(long, value_name = "DIR", requires = "all")]
    pub flamegraph_dir: Option<PathBuf>,
}

/// Leak hunting over time: snapshots, the CI leak gate and exports.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Write a timestamped JSON report into --snapshot-dir this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          requires = "snapshot_dir")]
    pub snapshot_every: Option<Duration>,

    /// Directory for --snapshot-every (created if missing).
    #[arg(long, value_name = "DIR", requires = "snapshot_every")]
    pub snapshot_dir: Option<PathBuf>,

    /// Leak gate: exit with status 3 if any stack's outstanding bytes grew
    /// by more than this (e.g. 1M) after --after.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub fail_on_growth: Option<u64>,

    /// Warm-up before --fail-on-growth counts growth (default: none).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          requires = "fail_on_growth")]
    pub after: Option<Duration>,

    /// Write the outstanding allocations as a gzipped pprof profile.
    #[arg(long, value_name = "FILE.pb.gz")]
    pub pprof: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics; a bare port binds
    /// 127.0.0.1 only.
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable block per interval.
    Human,
    /// One JSON object per interval, one per line.
    Json,
}

/// How user stacks are collected (see `Cli::unwind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UnwindMode {
    Fp,
    Dwarf,
    Auto,
    StackCopy,
}

/// Where the final outputs go.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub flamegraph: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub pprof: Option<PathBuf>,
}

impl Outputs {
    /// `alloctrace-PID.svg` and `alloctrace-PID.json` in the current directory.
    pub fn defaults_for(pid: u32) -> Self {
        Self::defaults_named(&pid.to_string())
    }

    /// `alloctrace-NAME.svg` and `alloctrace-NAME.json`.
    pub fn defaults_named(name: &str) -> Self {
        Self {
            flamegraph: Some(PathBuf::from(format!("alloctrace-{name}.svg"))),
            folded: None,
            report: Some(PathBuf::from(format!("alloctrace-{name}.json"))),
            pprof: None,
        }
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.flamegraph, &self.folded, &self.report, &self.pprof]
            .into_iter()
            .filter_map(|path| path.as_deref())
    }
}

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A process that is already running.
    Pid(u32),
    /// A command alloctrace starts, with every probe in place before it runs.
    Launch(Vec<OsString>),
    /// Every process on the host (`--all`), less those filtered out.
    All(crate::host::HostSpec),
}

/// Validated settings for one tracing session.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: usize,
    pub log_format: LogFormat,
    pub outputs: Outputs,
    /// True when the user named no output: the defaults, named after the
    /// traced pid (see [`Outputs::defaults_for`]), are written and printed.
    pub default_outputs: bool,
    pub min_age: Duration,
    /// `None`: the default for the unwinding mode chosen.
    pub ring_size: Option<u32>,
    pub unwind: UnwindMode,
    /// Rows of the in-kernel unwinder's tables (`--unwind-table-memory`).
    pub unwind_table_rows: u32,
    pub stack_bytes: u32,
    pub max_tracked: u64,
    /// `--sample-rate`: the kernel reports a sample, the ledger weighs it up.
    pub sampling: Option<Sampling>,
    pub allocator_lib: Option<PathBuf>,
    pub verbose: bool,
    /// Attach empty programs and write nothing (see `Cli::floor`).
    pub floor: bool,
    pub thread_slots: u32,
    /// See `Cli::perf_event_uprobes`.
    pub perf_event_uprobes: bool,
    pub watch: Watch,
}

/// Validated [`WatchArgs`].
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub snapshots: Option<Snapshots>,
    pub gate: Option<GateSettings>,
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Snapshots {
    pub every: Duration,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    pub threshold_bytes: u64,
    pub after: Duration,
}

impl Watch {
    fn from_args(args: WatchArgs, duration: Option<Duration>) -> anyhow::Result<Self> {
        let snapshots = match (args.snapshot_every, args.snapshot_dir) {
            (Some(every), Some(dir)) => {
                if every.is_zero() {
                    bail!("--snapshot-every must be greater than zero");
                }
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create --snapshot-dir {}", dir.display()))?;
                check_writable(&dir.join("snapshot.json"))?;
                Some(Snapshots { every, dir })
            }
            _ => None,
        };
        let gate = args.fail_on_growth.map(|threshold_bytes| GateSettings {
            threshold_bytes,
            after: args.after.unwrap_or_default(),
        });
        if let (Some(gate), Some(duration)) = (gate, duration)
            && gate.after >= duration
        {
            bail!("--after must be shorter than --duration, or the leak gate has nothing to judge");
        }
        Ok(Self {
            snapshots,
            gate,
            metrics_addr: args.metrics_addr,
        })
    }
}

impl Config {
    pub fn from_cli(mut cli: Cli) -> anyhow::Result<Self> {
        if cli.interval.is_zero() {
            bail!("--interval must be greater than zero");
        }
        if cli.host.all {
            check_host_wide(&cli)?;
        }
        let unwind_table_rows = unwind_table_rows(&cli);
        let outputs = Outputs {
            flamegraph: cli.flamegraph,
            folded: cli.folded,
            report: cli.report,
            pprof: cli.watch.pprof.take(),
        };
        let default_outputs = outputs.paths().next().is_none() && !cli.floor;
        let checked = if default_outputs {
            // The pid of a launched command is not known yet; any name in the
            // same directory tells whether the defaults can be written.
            Outputs::defaults_named("all")
        } else {
            outputs.clone()
        };
        for path in checked.paths() {
            check_writable(path)?;
        }
        if let Some(path) = &cli.allocator_lib {
            std::fs::File::open(path)
                .with_context(|| format!("--allocator-lib {}", path.display()))?;
        }
        let target = match cli.pid {
            Some(pid) => TargetSpec::Pid(pid),
            None if cli.host.all => TargetSpec::All(crate::host::HostSpec::from_args(&cli.host)?),
            None => TargetSpec::Launch(cli.command),
        };
        Ok(Self {
            target,
            duration: cli.duration,
            interval: cli.interval,
            top: cli.top as usize,
            log_format: cli.log_format,
            outputs,
            default_outputs,
            min_age: cli.min_age.unwrap_or_default(),
            ring_size: cli.ring_size,
            unwind: cli.unwind,
            unwind_table_rows,
            stack_bytes: cli.stack_bytes,
            max_tracked: cli.max_tracked,
            sampling: cli.sample_rate.map(Sampling::new),
            allocator_lib: cli.allocator_lib,
            verbose: cli.verbose,
            floor: cli.floor,
            thread_slots: cli.thread_slots,
            perf_event_uprobes: cli.perf_event_uprobes,
            watch: Watch::from_args(cli.watch, cli.duration)?,
        })
    }
}

/// Refuses, with `--all`, the options host-wide mode does not implement yet.
fn check_host_wide(cli: &Cli) -> anyhow::Result<()> {
    let unsupported = [
        (cli.watch.pprof.is_some(), "--pprof"),
        (cli.watch.metrics_addr.is_some(), "--metrics-addr"),
        (cli.watch.snapshot_every.is_some(), "--snapshot-every"),
        (cli.watch.fail_on_growth.is_some(), "--fail-on-growth"),
        (cli.allocator_lib.is_some(), "--allocator-lib"),
        (cli.unwind == UnwindMode::StackCopy, "--unwind stack-copy"),
        (cli.sample_rate.is_some(), "--sample-rate"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(given, _)| *given) {
        bail!(
            "{flag} cannot be used with --all (host-wide mode); trace one process with --pid for it"
        );
    }
    if let Some(dir) = &cli.host.flamegraph_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --flamegraph-dir {}", dir.display()))?;
        check_writable(&dir.join("process.svg"))?;
    }
    Ok(())
}

/// Fails now, before attaching, if `path` could not be written at the end.
fn check_writable(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("output path {} is a directory", path.display());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("output path {} is not writable", path.display()))?;
    Ok(())
}

/// Accepts `30s`, `5m`, `1h`, `250ms` and plain (possibly fractional) seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("'{text}' is not a duration of zero or more seconds"));
    }
    humantime::parse_duration(text)
        .map_err(|_| format!("'{text}' is not a duration (try 30s, 5m, 1h or plain seconds)"))
}

/// Accepts counts such as `1000000`, `10M` or `1G` (decimal multiples).
fn parse_count(text: &str) -> Result<u64, String> {
    match parse_size::Config::new().with_decimal().parse_size(text) {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!("'{text}' is not a positive count (try 10M)")),
    }
}

/// Accepts sizes such as `512K`, `1M`, `16MiB` or `4096` (binary units).
fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|_| format!("'{text}' is not a size (try 1M)"))
}

/// Accepts sizes such as `64K` or `1M`, at least 64 bytes.
fn parse_sample_rate(text: &str) -> Result<u64, String> {
    match parse_bytes(text)? {
        rate if rate >= 64 => Ok(rate),
        _ => Err(format!(
            "'{text}' is below the smallest sample rate, 64 bytes"
        )),
    }
}

/// Accepts sizes such as `8M`, `16MiB` or `4194304`; the kernel requires a
/// power of two of at least one page.
fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes = parse_bytes(text)?;
    let page = 4096;
    match u32::try_from(bytes) {
        Ok(bytes) if bytes >= page && bytes.is_power_of_two() => Ok(bytes),
        _ => Err(format!("'{text}' must be a power of two between 4K and 2G")),
    }
}

/// Rows of the in-kernel unwinder's tables: none unless some process may
/// be unwound with them. A busy host maps more distinct files than one
/// process (see the README's host-wide memory figures).
fn unwind_table_rows(cli: &Cli) -> u32 {
    if matches!(cli.unwind, UnwindMode::Fp | UnwindMode::StackCopy) {
        return 0;
    }
    let default = if cli.host.all { 64 << 20 } else { 16 << 20 };
    let bytes = cli.unwind_table_memory.unwrap_or(default);
    bytes / size_of::<tracer_ebpf::dwarf::UnwindRow>() as u32
}

/// Accepts sizes such as `64M`, from 1M to 2G.
fn parse_table_memory(text: &str) -> Result<u32, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|_| format!("'{text}' is not a size (try 64M)"))?;
    match u32::try_from(bytes) {
        Ok(bytes) if (1 << 20..=1 << 31).contains(&bytes) => Ok(bytes),
        _ => Err(format!("'{text}' must be from 1M to 2G")),
    }
}

/// Accepts a number from 0 to `MAX_THREAD_SLOTS`.
fn parse_thread_slots(text: &str) -> Result<u32, String> {
    let max = tracer_ebpf::MAX_THREAD_SLOTS;
    match text.parse::<u32>() {
        Ok(slots) if slots <= max => Ok(slots),
        _ => Err(format!("'{text}' must be a number from 0 to {max}")),
    }
}

/// Accepts sizes such as `16K` or `8192`: a multiple of the kernel
/// programs' 4K copy chunk, up to their limit.
fn parse_stack_bytes(text: &str) -> Result<u32, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|_| format!("'{text}' is not a size (try 16K)"))?;
    let (chunk, max) = (
        tracer_ebpf::STACK_COPY_CHUNK,
        tracer_ebpf::MAX_STACK_COPY_BYTES,
    );
    match u32::try_from(bytes) {
        Ok(bytes) if (chunk..=max).contains(&bytes) && bytes % chunk == 0 => Ok(bytes),
        _ => Err(format!(
            "'{text}' must be a multiple of {}K up to {}K",
            chunk >> 10,
            max >> 10
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn ring_sizes_must_be_powers_of_two() {
        assert_eq!(parse_ring_size("8M"), Ok(8 << 20));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert!(parse_ring_size("big").is_err());
    }

    #[test]
    fn stack_bytes_are_bounded_multiples_of_the_chunk() {
        assert_eq!(parse_stack_bytes("16K"), Ok(16384));
        assert_eq!(parse_stack_bytes("4096"), Ok(4096));
        assert_eq!(parse_stack_bytes("64K"), Ok(65536));
        assert!(parse_stack_bytes("68K").is_err());
        assert!(parse_stack_bytes("2K").is_err());
        assert!(parse_stack_bytes("6K").is_err());
    }
}
