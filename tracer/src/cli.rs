//! Command-line flags, and their validation into a [`Config`] the rest of the
//! tracer can trust (sizes in range, output paths writable) before anything is
//! attached to the target.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

/// Trace a live process's heap allocations with eBPF and report the call
/// stacks that hold outstanding (leaked) memory.
#[derive(Debug, Parser)]
#[command(name = "alloctrace", version)]
pub struct Cli {
    /// Process to trace (it keeps running; nothing is restarted).
    #[arg(long, value_name = "PID")]
    pub pid: u32,

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

    /// Size of the kernel-to-tracer event ring buffer (e.g. 8M; a power of
    /// two) [default: 8M, or 64M with DWARF unwinding]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,

    /// How user stacks are collected: `fp` walks frame pointers in the
    /// kernel (cheapest; breaks at code built without them), `dwarf` copies
    /// the top of the stack and unwinds it with DWARF CFI (falling back to
    /// frame pointers per frame, e.g. in JIT code), `auto` picks `dwarf`
    /// when the target's executable is built without frame pointers.
    #[arg(long, value_enum, default_value_t = UnwindMode::Auto)]
    pub unwind: UnwindMode,

    /// Bytes of user stack copied per allocation for DWARF unwinding, a
    /// multiple of 4K (frames beyond them are cut off).
    #[arg(long, value_name = "BYTES", default_value = "8K", value_parser = parse_stack_bytes)]
    pub stack_bytes: u32,

    /// Log attach details and kernel-side diagnostics to stderr.
    #[arg(short, long)]
    pub verbose: bool,

    /// Benchmark aid: attach empty programs at the same probe points and
    /// record nothing, so the cost of the traps alone can be measured.
    #[arg(long, hide = true)]
    pub floor: bool,
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
}

/// Where the final outputs go.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub flamegraph: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

impl Outputs {
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.flamegraph, &self.folded, &self.report]
            .into_iter()
            .filter_map(|path| path.as_deref())
    }
}

/// Validated settings for one tracing session.
#[derive(Debug, Clone)]
pub struct Config {
    pub pid: u32,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: usize,
    pub log_format: LogFormat,
    pub outputs: Outputs,
    /// True when the user named no output and the defaults were chosen, so
    /// their paths are worth printing.
    pub default_outputs: bool,
    pub min_age: Duration,
    /// `None`: the default for the unwinding mode chosen.
    pub ring_size: Option<u32>,
    pub unwind: UnwindMode,
    pub stack_bytes: u32,
    pub verbose: bool,
    /// Attach empty programs and write nothing (see `Cli::floor`).
    pub floor: bool,
}

impl Config {
    pub fn from_cli(cli: Cli) -> anyhow::Result<Self> {
        if cli.interval.is_zero() {
            bail!("--interval must be greater than zero");
        }
        let mut outputs = Outputs {
            flamegraph: cli.flamegraph,
            folded: cli.folded,
            report: cli.report,
        };
        let default_outputs = outputs.paths().next().is_none() && !cli.floor;
        if default_outputs {
            outputs.flamegraph = Some(PathBuf::from(format!("alloctrace-{}.svg", cli.pid)));
            outputs.report = Some(PathBuf::from(format!("alloctrace-{}.json", cli.pid)));
        }
        for path in outputs.paths() {
            check_writable(path)?;
        }
        Ok(Self {
            pid: cli.pid,
            duration: cli.duration,
            interval: cli.interval,
            top: cli.top as usize,
            log_format: cli.log_format,
            outputs,
            default_outputs,
            min_age: cli.min_age.unwrap_or_default(),
            ring_size: cli.ring_size,
            unwind: cli.unwind,
            stack_bytes: cli.stack_bytes,
            verbose: cli.verbose,
            floor: cli.floor,
        })
    }
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

/// Accepts sizes such as `8M`, `16MiB` or `4194304`; the kernel requires a
/// power of two of at least one page.
fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|_| format!("'{text}' is not a size (try 8M)"))?;
    let page = 4096;
    match u32::try_from(bytes) {
        Ok(bytes) if bytes >= page && bytes.is_power_of_two() => Ok(bytes),
        _ => Err(format!("'{text}' must be a power of two between 4K and 2G")),
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
