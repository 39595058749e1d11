//! The validated configuration of one run: [`Config`] is what every flag
//! means once checked (sizes in range, output paths writable, filters
//! resolved), split into what every mode shares ([`Common`]) and what only
//! one mode uses ([`ModeConfig`]), so no mode sees a setting it cannot
//! honour. Everything here is decided before anything is attached.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    cli::{HostArgs, MemoryKinds, TraceArgs, WatchArgs},
    filters::HostFilters,
    report::LogFormat,
    sampling::Sampling,
    unwind::UnwindMode,
};

/// Validated settings for one tracing run.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub mode: ModeConfig,
}

/// What every mode does the same way.
#[derive(Debug, Clone)]
pub struct Common {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: usize,
    pub log_format: LogFormat,
    pub outputs: Outputs,
    /// True when the user named no output: the defaults, named after the
    /// traced pid (or `all`), are written and printed.
    pub default_outputs: bool,
    pub min_age: Duration,
    /// `None`: the default for the unwinding chosen.
    pub ring_size: Option<u32>,
    /// Rows of the in-kernel unwinder's tables (`--unwind-table-memory`);
    /// 0 when no process is unwound with them.
    pub unwind_table_rows: u32,
    /// Outstanding allocations tracked at most, over every traced process.
    pub max_tracked: u64,
    /// Distinct stacks kept at most, over every traced process, beyond
    /// those holding outstanding blocks.
    pub max_stacks: usize,
    pub verbose: bool,
    /// Attach empty programs and record nothing (see `Cli::floor`).
    pub floor: bool,
    pub snapshots: Option<Snapshots>,
}

/// The mode, with the settings only it has.
#[derive(Debug, Clone)]
pub enum ModeConfig {
    /// One process: running (`--pid`) or launched (`-- CMD`).
    Process(ProcessConfig),
    /// Every process on the host (`--all`).
    Host(HostConfig),
    /// The kernel's own allocations (`--kernel`).
    Kernel(KernelConfig),
}

/// Which one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessTarget {
    /// A process that is already running.
    Pid(u32),
    /// A command alloctrace starts, with every probe in place before it runs.
    Launch(Vec<OsString>),
}

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub target: ProcessTarget,
    pub unwind: UnwindMode,
    pub stack_bytes: u32,
    /// `--sample-rate`: the kernel reports a sample, the ledger weighs it up.
    pub sampling: Option<Sampling>,
    pub allocator_lib: Option<PathBuf>,
    /// `--trace-memory`: heap blocks, and mapped memory too?
    pub memory: MemoryKinds,
    /// `--jvm-perfmap`: have the JVM write its perf map at each summary.
    pub jvm_perfmap: bool,
    pub thread_slots: u32,
    /// See `Cli::perf_event_uprobes`.
    pub perf_event_uprobes: bool,
    pub pprof: Option<PathBuf>,
    pub gate: Option<GateSettings>,
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub unwind: UnwindMode,
    pub filters: HostFilters,
    /// `--flamegraph-dir`: one flamegraph per process.
    pub flamegraph_dir: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    /// `--trace-memory`: heap blocks, mapped memory, or both.
    pub memory: MemoryKinds,
}

#[derive(Debug, Clone)]
pub struct KernelConfig {
    pub gate: Option<GateSettings>,
}

/// Where the final outputs every mode writes go.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub flamegraph: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub html: Option<PathBuf>,
}

impl Outputs {
    /// `alloctrace-NAME.svg` and `alloctrace-NAME.json` in the current
    /// directory.
    pub fn defaults_named(name: &str) -> Self {
        Self {
            flamegraph: Some(PathBuf::from(format!("alloctrace-{name}.svg"))),
            folded: None,
            report: Some(PathBuf::from(format!("alloctrace-{name}.json"))),
            html: None,
        }
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.flamegraph, &self.folded, &self.report, &self.html]
            .into_iter()
            .filter_map(|path| path.as_deref())
    }
}

#[derive(Debug, Clone)]
pub struct Snapshots {
    pub every: Duration,
    pub dir: PathBuf,
    /// `--snapshot-keep`: only the newest this many are left in `dir`.
    pub keep: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    pub threshold_bytes: u64,
    pub after: Duration,
}

/// Rows of the in-kernel unwinder's tables: none unless some process may
/// be unwound with them. A busy host maps more distinct files than one
/// process does (see the README's host-wide memory figures).
fn unwind_table_rows(args: &TraceArgs) -> u32 {
    if args.kernel || matches!(args.unwind, UnwindMode::Fp | UnwindMode::StackCopy) {
        return 0;
    }
    let default = if args.host.all { 64 << 20 } else { 16 << 20 };
    let bytes = args.unwind_table_memory.unwrap_or(default);
    bytes / size_of::<tracer_ebpf::dwarf::UnwindRow>() as u32
}

impl Config {
    pub fn from_args(args: TraceArgs) -> anyhow::Result<Self> {
        if args.interval.is_zero() {
            bail!("--interval must be greater than zero");
        }
        let outputs = Outputs {
            flamegraph: args.flamegraph.clone(),
            folded: args.folded.clone(),
            report: args.report.clone(),
            html: args.html.clone(),
        };
        let default_outputs =
            outputs.paths().next().is_none() && args.watch.pprof.is_none() && !args.floor;
        let checked = if default_outputs {
            // The pid of a launched command is not known yet; any name in
            // the same directory tells whether the defaults can be written.
            Outputs::defaults_named("all")
        } else {
            outputs.clone()
        };
        for path in checked.paths().chain(args.watch.pprof.as_deref()) {
            check_writable(path)?;
        }
        let common = Common {
            duration: args.duration,
            interval: args.interval,
            top: args.top as usize,
            log_format: args.log_format,
            outputs,
            default_outputs,
            min_age: args.min_age.unwrap_or_default(),
            ring_size: args.ring_size,
            unwind_table_rows: unwind_table_rows(&args),
            max_tracked: args.max_tracked,
            max_stacks: usize::try_from(args.max_stacks).unwrap_or(usize::MAX),
            verbose: args.verbose,
            floor: args.floor,
            snapshots: snapshots(&args.watch)?,
        };
        let mode = if args.host.all {
            ModeConfig::Host(HostConfig::from_args(&args)?)
        } else if args.kernel {
            ModeConfig::Kernel(KernelConfig {
                gate: gate_settings(&args)?,
            })
        } else {
            ModeConfig::Process(ProcessConfig::from_args(args)?)
        };
        Ok(Self { common, mode })
    }
}

impl ProcessConfig {
    fn from_args(args: TraceArgs) -> anyhow::Result<Self> {
        if let Some(path) = &args.allocator_lib {
            std::fs::File::open(path)
                .with_context(|| format!("--allocator-lib {}", path.display()))?;
        }
        let gate = gate_settings(&args)?;
        let target = match args.pid {
            Some(pid) => ProcessTarget::Pid(pid),
            None => ProcessTarget::Launch(args.command),
        };
        if args.trace_memory == MemoryKinds::Mapped {
            if args.sample_rate.is_some() {
                bail!(
                    "--sample-rate samples heap blocks: it cannot be used with --trace-memory mapped"
                );
            }
            if gate.is_some() {
                bail!(
                    "the leak gate judges heap blocks: --fail-on-growth cannot be used with --trace-memory mapped"
                );
            }
        }
        Ok(Self {
            target,
            unwind: args.unwind,
            stack_bytes: args.stack_bytes,
            sampling: args.sample_rate.map(Sampling::new),
            allocator_lib: args.allocator_lib,
            memory: args.trace_memory,
            jvm_perfmap: args.jvm_perfmap,
            thread_slots: args.thread_slots,
            perf_event_uprobes: args.perf_event_uprobes,
            pprof: args.watch.pprof,
            gate,
            metrics_addr: args.watch.metrics_addr,
        })
    }
}

impl HostConfig {
    fn from_args(args: &TraceArgs) -> anyhow::Result<Self> {
        // A value, not a flag, so clap cannot refuse it: stack copies are
        // unwound per process, with one process's memory map.
        if args.unwind == UnwindMode::StackCopy {
            bail!(
                "--unwind stack-copy cannot be used with --all (host-wide mode unwinds in the \
                 kernel); use --unwind dwarf, or trace one process with --pid"
            );
        }
        let HostArgs {
            comm,
            cgroup,
            exclude_pid,
            flamegraph_dir,
            ..
        } = &args.host;
        if let Some(dir) = flamegraph_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --flamegraph-dir {}", dir.display()))?;
            check_writable(&dir.join("process.svg"))?;
        }
        Ok(Self {
            unwind: args.unwind,
            filters: HostFilters::new(comm, cgroup.as_deref(), exclude_pid)?,
            flamegraph_dir: flamegraph_dir.clone(),
            metrics_addr: args.watch.metrics_addr,
            memory: args.trace_memory,
        })
    }
}

/// The leak gate's settings (`--fail-on-growth`, `--after`), if asked for.
fn gate_settings(args: &TraceArgs) -> anyhow::Result<Option<GateSettings>> {
    let gate = args
        .watch
        .fail_on_growth
        .map(|threshold_bytes| GateSettings {
            threshold_bytes,
            after: args.watch.after.unwrap_or_default(),
        });
    if let (Some(gate), Some(duration)) = (gate, args.duration)
        && gate.after >= duration
    {
        bail!("--after must be shorter than --duration, or the leak gate has nothing to judge");
    }
    Ok(gate)
}

fn snapshots(watch: &WatchArgs) -> anyhow::Result<Option<Snapshots>> {
    let (Some(every), Some(dir)) = (watch.snapshot_every, &watch.snapshot_dir) else {
        return Ok(None);
    };
    if every.is_zero() {
        bail!("--snapshot-every must be greater than zero");
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --snapshot-dir {}", dir.display()))?;
    check_writable(&dir.join("snapshot.json"))?;
    if watch.snapshot_keep == Some(0) {
        bail!("--snapshot-keep must be at least 1");
    }
    Ok(Some(Snapshots {
        every,
        dir: dir.clone(),
        keep: watch.snapshot_keep,
    }))
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
