//! The command line as clap parses it: flags, subcommands and value
//! parsers, nothing more. Turning flags into a `Config`
//! (and refusing what a mode cannot honour) is the `config` module's job.
//!
//! Flags that apply to one process only (`--pid` or `-- CMD`) conflict with
//! `--all` and `--kernel` here, and host-wide flags require `--all`, so
//! clap refuses a flag that does not apply to the chosen mode with one line
//! that names both.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{diff::DiffArgs, html::HtmlArgs, report::LogFormat, unwind::UnwindMode};

/// Trace a live process's heap allocations with eBPF and report the call
/// stacks that hold outstanding (leaked) memory.
#[derive(Debug, Parser)]
#[command(name = "alloctrace", version)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["pid", "command", "all", "kernel"]))]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Subcommands>,

    #[command(flatten)]
    pub trace: TraceArgs,
}

/// What alloctrace does besides tracing.
#[derive(Debug, Subcommand)]
pub enum Subcommands {
    /// Compare two JSON reports: the stacks whose outstanding bytes changed
    /// most, largest change first.
    Diff(DiffArgs),
    /// Render a JSON report (and its run's snapshots) as a self-contained
    /// HTML page.
    Html(HtmlArgs),
}

/// Tracing: what to trace, for how long, and what to write.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Process to trace (it keeps running; nothing is restarted). Tracing
    /// ends if it runs execve: the report is the old program's, and no
    /// probe is left in the new one.
    #[arg(long, value_name = "PID", conflicts_with_all = ["command", "all", "kernel"])]
    pub pid: Option<u32>,

    /// Command to start and trace from its first instruction (after `--`);
    /// alloctrace exits with its exit status.
    #[arg(last = true, value_name = "CMD", conflicts_with_all = ["all", "kernel"])]
    pub command: Vec<OsString>,

    /// Trace the kernel's own allocations instead of a process's heap:
    /// slab objects (kmalloc, kmem_cache), pages and per-CPU blocks, from
    /// the kmem and percpu tracepoints, by kernel stack and allocating task
    /// (by name), host-wide.
    #[arg(long, conflicts_with = "all")]
    pub kernel: bool,

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

    /// Write the HTML report: one self-contained page with memory over
    /// time, flamegraphs and the suspects.
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,

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
    /// stack into every event and unwinds it in userspace (slower; not with
    /// --all).
    #[arg(long, value_enum, default_value_t = UnwindMode::Auto, conflicts_with = "kernel")]
    pub unwind: UnwindMode,

    /// Kernel memory for the DWARF unwinding tables (8 bytes per row),
    /// allocated when tracing starts; files past it fall back to frame
    /// pointers [default: 16M for one process, 64M with --all]
    #[arg(long, value_name = "BYTES", value_parser = parse_table_memory, conflicts_with = "kernel")]
    pub unwind_table_memory: Option<u32>,

    /// Bytes of user stack copied per allocation by `--unwind stack-copy`,
    /// a multiple of 4K (frames beyond them are cut off).
    #[arg(long, value_name = "BYTES", default_value = "8K", value_parser = parse_stack_bytes,
          conflicts_with_all = ["all", "kernel"])]
    pub stack_bytes: u32,

    /// Track at most this many outstanding allocations in all (with --all:
    /// over all processes together); beyond it new ones are dropped and
    /// counted (`dropped_allocations`, with a warning when it starts)
    /// instead of growing the tracer's memory without bound.
    #[arg(long, value_name = "N", default_value = "20000000", value_parser = parse_count)]
    pub max_tracked: u64,

    /// Keep at most this many distinct stacks in all (with --all: over all
    /// processes together); beyond it the stacks that hold no outstanding
    /// block are forgotten, least recently seen first, and counted
    /// (`evicted_stacks`). A forgotten stack that recurs is a new stack,
    /// counted exactly. Each costs ~1 KiB with its symbols.
    #[arg(long, value_name = "N", default_value_t = crate::stacks::DEFAULT_MAX_STACKS as u64, value_parser = parse_count)]
    pub max_stacks: u64,

    /// Sample allocations instead of tracing every one: a mean of one
    /// reported block per BYTES allocated (Poisson sampling by bytes, as
    /// heapprofd does); every number is then an unbiased estimate. Cheaper
    /// for the kernel and the tracer; every call still traps.
    #[arg(long, value_name = "BYTES", value_parser = parse_sample_rate, conflicts_with_all = ["all", "kernel"])]
    pub sample_rate: Option<u64>,

    /// Trace the allocator in this shared library (e.g. a jemalloc or
    /// tcmalloc build the target maps) instead of the one found automatically.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["all", "kernel"])]
    pub allocator_lib: Option<PathBuf>,

    /// What memory is traced: `heap`, the allocator's malloc family (the
    /// default: it is where leaks usually are, and only the traced process
    /// pays for it); `both`, which adds the anonymous private mappings and
    /// break growth the process makes itself (mmap, munmap, mremap,
    /// mprotect, brk; reservations count once committed; the allocator's
    /// own mappings stay heap blocks), at the price of the system-call
    /// tracepoints, whose programs run at every mmap, munmap, mremap,
    /// mprotect and brk of every process on the host while they are on
    /// (about 0.3 us each for a process not traced); or `mapped` alone,
    /// without the heap probes (cheapest for a malloc-heavy process; what
    /// the allocator maps then counts as mapped memory too, at its stacks).
    #[arg(long, value_enum, default_value_t = MemoryKinds::Heap, conflicts_with = "kernel")]
    pub trace_memory: MemoryKinds,

    /// Ask the traced JVM to write its perf map (`jcmd PID Compiler.perfmap`,
    /// JDK 17+) at attach time and at each summary, so JIT-compiled Java
    /// methods are named. It writes /tmp/perf-PID.map for the target. Run
    /// the JVM with -XX:+PreserveFramePointer so its frames can be walked.
    #[arg(long, conflicts_with_all = ["all", "kernel"])]
    pub jvm_perfmap: bool,

    /// Log attach details and kernel-side diagnostics to stderr.
    #[arg(short, long)]
    pub verbose: bool,

    /// Benchmark aid: attach empty programs at the same probe points and
    /// record nothing, so the cost of the traps alone can be measured.
    #[arg(long, hide = true, conflicts_with = "kernel")]
    pub floor: bool,

    /// Test aid: thread ids below this (at most 65536) keep their calls in
    /// flight in the kernel's array, the others in its hash map. Both must
    /// give the same numbers.
    #[arg(long, hide = true, default_value_t = tracer_ebpf::MAX_THREAD_SLOTS,
          value_parser = parse_thread_slots, conflicts_with_all = ["all", "kernel"])]
    pub thread_slots: u32,

    /// Benchmark aid: attach the uprobes through perf events, as before
    /// uprobe_multi links, to compare the two.
    #[arg(long, hide = true, conflicts_with_all = ["all", "kernel"])]
    pub perf_event_uprobes: bool,

    #[command(flatten)]
    pub watch: WatchArgs,
}

/// What memory `--trace-memory` traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryKinds {
    Heap,
    Both,
    Mapped,
}

impl MemoryKinds {
    /// Whether the allocator's heap blocks are traced (its probes attached).
    pub fn heap(self) -> bool {
        self != Self::Mapped
    }

    /// Whether mapped memory is traced.
    pub fn mapped(self) -> bool {
        self != Self::Heap
    }
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

    /// Keep only the newest N snapshots in --snapshot-dir (for a
    /// long-running agent); older ones this run or earlier runs wrote are
    /// deleted.
    #[arg(long, value_name = "N", requires = "snapshot_every")]
    pub snapshot_keep: Option<usize>,

    /// Leak gate: exit with status 3 if any stack's outstanding bytes grew
    /// by more than this (e.g. 1M) after --after.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, conflicts_with = "all")]
    pub fail_on_growth: Option<u64>,

    /// Warm-up before --fail-on-growth counts growth (default: none).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          requires = "fail_on_growth")]
    pub after: Option<Duration>,

    /// Write the outstanding allocations as a gzipped pprof profile.
    #[arg(long, value_name = "FILE.pb.gz", conflicts_with_all = ["all", "kernel"])]
    pub pprof: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics; a bare port binds
    /// 127.0.0.1 only.
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr,
          conflicts_with = "kernel")]
    pub metrics_addr: Option<SocketAddr>,
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
pub(crate) fn parse_count(text: &str) -> Result<u64, String> {
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

/// Accepts sizes such as `64M`, from 64K (room for a small program's own
/// table, not its libc's) to 2G.
fn parse_table_memory(text: &str) -> Result<u32, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|_| format!("'{text}' is not a size (try 64M)"))?;
    match u32::try_from(bytes) {
        Ok(bytes) if (1 << 16..=1 << 31).contains(&bytes) => Ok(bytes),
        _ => Err(format!("'{text}' must be from 64K to 2G")),
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
