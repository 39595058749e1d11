//! Loading the kernel programs and attaching them to one process, or (in
//! host-wide mode) to every process that maps a library, behind the
//! in-kernel filter.
//!
//! Owns the aya [`Ebpf`] object: while it lives the probes are attached, and
//! dropping it (or [`Probes::detach`]) removes every one of them from the
//! target. The maps userspace reads (events, stacks, counters) are taken out
//! first so they outlive the probes for a final drain.

pub mod guardian;
mod kmem;
mod known;
mod multi;
mod perf_link;
mod program_stats;

use std::{
    num::NonZeroU32,
    os::fd::AsFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProbeKind, Program, TracePoint, UProbe, uprobe::UProbeScope},
};
use tracer_ebpf::{
    CGROUP_ID_GLOBAL, CGROUP_LEVEL_GLOBAL, COMM_FILTER_GLOBAL, COMM_LEN, COUNTERS_MAP, Counter,
    EVENT_RING_MAPS, EXCLUDED_TGIDS_MAP, FILTER_MODE_GLOBAL, FILTER_VERDICTS_MAP, FilterMode,
    KNOWN_STACKS_MAP, MAX_THREAD_SLOTS, SAMPLE_STEP_GLOBAL, SAMPLE_TABLE_MAP,
    STACK_COPY_BYTES_GLOBAL, TARGET_PID_GLOBAL, THREAD_SLOTS_GLOBAL, TRACED_COMMS_MAP, dwarf,
};

use self::{
    guardian::{Guardian, LinkKind},
    multi::{LinkTarget, MultiPrograms},
};
pub use self::{kmem::is_free_program, known::KnownStacks, program_stats::ProgramStats};
use crate::{
    placement::{Plan, RETURN_PROGRAM, Returns},
    sampling::Sampling,
};

/// The compiled kernel programs, built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// The BTF tracepoint that marks the target's `execve` in the event stream.
const EXEC_PROGRAM: &str = "process_exec";
/// The BTF tracepoint that marks the end of each process (host-wide mode).
const EXIT_PROGRAM: &str = "process_exit";
/// The BTF tracepoint that tells the host-wide filter a task's name changed.
const RENAME_PROGRAM: &str = "task_renamed";
/// The BTF tracepoint that marks the target's forks (see `modes::process::forks`).
const FORK_PROGRAM: &str = "process_fork";

/// The kernel tracepoint of each BTF tracepoint program.
const TRACEPOINTS: &[(&str, &str)] = &[
    (EXEC_PROGRAM, "sched_process_exec"),
    (EXIT_PROGRAM, "sched_process_exit"),
    (RENAME_PROGRAM, "task_rename"),
    (FORK_PROGRAM, "sched_process_fork"),
];

/// The programs of mapped memory (`tracer-ebpf/src/mapped.rs`) and the
/// `syscalls` tracepoint each one runs at.
const MAPPED_PROGRAMS: &[(&str, &str)] = &[
    ("mmap_exit", "sys_exit_mmap"),
    ("munmap_exit", "sys_exit_munmap"),
    ("mremap_exit", "sys_exit_mremap"),
    ("mprotect_exit", "sys_exit_mprotect"),
    ("brk_exit", "sys_exit_brk"),
];

/// What the in-kernel filter of host-wide mode rejects, set at load time.
#[derive(Clone, Debug, Default)]
pub struct KernelFilter {
    /// Processes never traced (tgids).
    pub excluded: Vec<u32>,
    /// When not empty, only tasks with one of these names are traced.
    pub comms: Vec<[u8; COMM_LEN]>,
    /// Only tasks in this cgroup v2 (id, level below the root) or below it.
    pub cgroup: Option<(u64, u32)>,
}

/// How long a uprobe that clashes with another tool's is retried, and how
/// often (see [`Probes::attach_uprobe`]).
const SHARED_PROBE_PATIENCE: Duration = Duration::from_secs(3);
const SHARED_PROBE_RETRY: Duration = Duration::from_millis(100);

/// Whether an error, or one of its causes, is an OS error EINVAL.
fn is_invalid_argument(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// How the kernel programs are set up at load time.
pub struct Settings<'a> {
    /// The traced process (the exec marker is for it alone).
    pub pid: u32,
    pub ring_size: u32,
    /// Bytes of user stack per allocation event for DWARF unwinding; 0 for
    /// the kernel's frame-pointer walk.
    pub stack_copy_bytes: u32,
    /// `--sample-rate`: report a sample of the allocations.
    pub sampling: Option<&'a Sampling>,
    /// Thread ids below this keep their calls in flight in the kernel's
    /// array, the others in its hash map: `MAX_THREAD_SLOTS` but in tests.
    pub thread_slots: u32,
    /// Rows of the in-kernel unwinder's tables (its memory cap); 0 when no
    /// process is unwound with tables.
    pub unwind_table_rows: u32,
    pub uprobe_links: UprobeLinks,
    pub verbose: bool,
}

/// How the uprobe programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UprobeLinks {
    /// uprobe_multi links where the kernel has them (6.6+), else perf events.
    #[default]
    Fastest,
    /// Perf events, as aya attaches them (hidden `--perf-event-uprobes`, so
    /// a benchmark can compare the two).
    PerfEvents,
}

/// Loaded and attached kernel programs.
pub struct Probes {
    ebpf: Ebpf,
    /// The uprobe programs as loaded for uprobe_multi links; `None` when
    /// perf-event uprobes of aya's programs are used instead.
    multi: Option<MultiPrograms>,
    /// The process that holds every uprobe link, of either kind.
    guardian: Guardian,
    /// Forwards the programs' aya-log records; must live as long as they do.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// The in-kernel DWARF unwinder's maps (see `tracer_ebpf::dwarf`), for the
/// table loader (`unwind::tables`) to fill.
pub struct UnwindMaps {
    pub rows: aya::maps::Map,
    pub mappings: aya::maps::Map,
    pub processes: aya::maps::Map,
    pub generation: aya::maps::Map,
}

/// Maps userspace reads, detached from the programs' lifetime.
pub struct KernelMaps {
    /// The event rings CPUs write to (see `tracer_ebpf::EVENT_RINGS`).
    pub events: Vec<RingBuf<MapData>>,
    pub counters: Counters,
    /// The in-kernel unwinder's tables (see `unwind::tables`), until taken.
    pub unwind: Option<UnwindMaps>,
    /// The stacks the kernel sends by hash, for the stack tables to forget
    /// (see `stacks`), until taken.
    pub known_stacks: Option<KnownStacks>,
}

impl Probes {
    /// Loads the programs for process `pid` with an event ring of
    /// `ring_size` bytes. With a non-zero `stack_copy_bytes`, allocation
    /// events carry that much of the user stack for DWARF unwinding instead
    /// of a frame-pointer stack id.
    pub fn load(settings: &Settings) -> anyhow::Result<(Self, KernelMaps)> {
        let &Settings {
            pid,
            ring_size,
            stack_copy_bytes,
            sampling,
            thread_slots,
            unwind_table_rows,
            uprobe_links,
            verbose,
        } = settings;
        let sample_step = sampling.map_or(0, Sampling::step);
        let thread_slots = thread_slots.min(MAX_THREAD_SLOTS);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(TARGET_PID_GLOBAL, &pid, true)
            .override_global(STACK_COPY_BYTES_GLOBAL, &stack_copy_bytes, true)
            .override_global(SAMPLE_STEP_GLOBAL, &sample_step, true)
            .override_global(THREAD_SLOTS_GLOBAL, &thread_slots, true)
            .map_max_entries(FILTER_VERDICTS_MAP, 1);
        size_unwind_maps(&mut loader, unwind_table_rows);
        let (mut probes, maps) = Self::load_with(loader, ring_size, uprobe_links, verbose)?;
        if let Some(sampling) = sampling {
            let mut table: Array<_, u64> = Array::try_from(probes.map_mut(SAMPLE_TABLE_MAP)?)?;
            for (slot, &threshold) in sampling.thresholds().iter().enumerate() {
                table.set(slot as u32, threshold, 0)?;
            }
        }
        Ok((probes, maps))
    }
    /// Loads the programs for every process `filter` lets through, with
    /// frame-pointer stacks.
    pub fn load_host_wide(
        filter: &KernelFilter,
        ring_size: u32,
        unwind_table_rows: u32,
        verbose: bool,
    ) -> anyhow::Result<(Self, KernelMaps)> {
        let mode = FilterMode::HostWide as u32;
        let comm_filter = u32::from(!filter.comms.is_empty());
        let (cgroup_id, cgroup_level) = filter.cgroup.unwrap_or((0, 0));
        let mut loader = EbpfLoader::new();
        loader
            .override_global(FILTER_MODE_GLOBAL, &mode, true)
            .override_global(COMM_FILTER_GLOBAL, &comm_filter, true)
            .override_global(CGROUP_ID_GLOBAL, &cgroup_id, true)
            .override_global(CGROUP_LEVEL_GLOBAL, &cgroup_level, true);
        size_unwind_maps(&mut loader, unwind_table_rows);
        let links = UprobeLinks::Fastest;
        let (mut probes, maps) = Self::load_with(loader, ring_size, links, verbose)?;
        let guardian = probes.guardian_pid();
        let mut excluded: HashMap<_, u32, u8> =
            HashMap::try_from(probes.map_mut(EXCLUDED_TGIDS_MAP)?)?;
        for tgid in filter.excluded.iter().chain([&guardian]) {
            excluded
                .insert(tgid, 1, 0)
                .context("filling the excluded processes map")?;
        }
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> =
            HashMap::try_from(probes.map_mut(TRACED_COMMS_MAP)?)?;
        for comm in &filter.comms {
            comms
                .insert(comm, 1, 0)
                .context("filling the traced names map")?;
        }
        Ok((probes, maps))
    }

    fn load_with(
        mut loader: EbpfLoader<'_>,
        ring_size: u32,
        uprobe_links: UprobeLinks,
        verbose: bool,
    ) -> anyhow::Result<(Self, KernelMaps)> {
        raise_memlock_limit();
        let btf = Btf::from_sys_fs().context(
            "reading the kernel's BTF (/sys/kernel/btf/vmlinux; needs CONFIG_DEBUG_INFO_BTF)",
        )?;
        let rings = rings_in_use();
        for (index, name) in EVENT_RING_MAPS.iter().enumerate() {
            // Rings no CPU writes to get the smallest size the kernel allows.
            let size = if index < rings {
                ring_size
            } else {
                UNUSED_RING_SIZE
            };
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (is this kernel built with BPF and uprobes?)")?;
        let multi = match uprobe_links {
            UprobeLinks::Fastest => MultiPrograms::load(&ebpf, EBPF_OBJECT)
                .inspect_err(|error| {
                    log::info!("no uprobe_multi links ({error:#}); using perf-event uprobes")
                })
                .ok(),
            UprobeLinks::PerfEvents => None,
        };
        let guardian = Guardian::start()?;
        for (name, program) in ebpf.programs_mut() {
            match program {
                Program::UProbe(_) if multi.is_some() => Ok(()),
                Program::UProbe(program) => program.load(),
                Program::BtfTracePoint(program) => {
                    let (_, tracepoint) = TRACEPOINTS
                        .iter()
                        .find(|(program, _)| *program == name)
                        .ok_or_else(|| anyhow!("no tracepoint for program {name}"))?;
                    program.load(tracepoint, &btf)
                }
                // Loaded when attached (`attach_mapped`, `attach_kernel`):
                // only those runs need them, and verifying them (each one
                // walks stacks) is most of a run's start-up on a loaded
                // machine.
                Program::TracePoint(_) => Ok(()),
                _ => return Err(anyhow!("unexpected program type for {name}")),
            }
            .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        let logger = if verbose {
            Some(aya_log::EbpfLogger::init(&mut ebpf).context("starting the kernel log reader")?)
        } else {
            None
        };
        let maps = KernelMaps {
            events: EVENT_RING_MAPS[..rings]
                .iter()
                .map(|name| Ok(RingBuf::try_from(take_map(&mut ebpf, name)?)?))
                .collect::<anyhow::Result<_>>()?,
            counters: Counters(PerCpuArray::try_from(take_map(&mut ebpf, COUNTERS_MAP)?)?),
            unwind: Some(UnwindMaps {
                rows: take_map(&mut ebpf, dwarf::UNWIND_ROWS_MAP)?,
                mappings: take_map(&mut ebpf, dwarf::UNWIND_MAPPINGS_MAP)?,
                processes: take_map(&mut ebpf, dwarf::UNWIND_PROCESSES_MAP)?,
                generation: take_map(&mut ebpf, dwarf::UNWIND_GENERATION_MAP)?,
            }),
            known_stacks: Some(KnownStacks::new(take_map(&mut ebpf, KNOWN_STACKS_MAP)?)?),
        };
        let probes = Self {
            ebpf,
            multi,
            guardian,
            logger,
        };
        Ok((probes, maps))
    }

    /// Attaches every probe of `plan` in `libc` (a path the tracer can open),
    /// firing only for process `pid`.
    pub fn attach(
        &mut self,
        plan: &Plan,
        libc: &Path,
        pid: u32,
        programs: Programs,
    ) -> anyhow::Result<()> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be traced"))?,
        );
        // Before the first uprobe, so no event of a new image can precede
        // the marker that tells it apart, and no fork goes unseen.
        self.attach_exec_marker()?;
        self.attach_tracepoint(FORK_PROGRAM)?;
        self.attach_uprobes(plan, libc, scope, programs)
    }

    /// Attaches the marker of the target's `execve` alone: what
    /// `--trace-memory mapped` needs besides the mapped-memory programs (no
    /// uprobe, so no breakpoint a fork would inherit).
    pub fn attach_exec_marker(&mut self) -> anyhow::Result<()> {
        self.attach_tracepoint(EXEC_PROGRAM)
    }

    /// Host-wide mode: attaches the exec and exit markers of every process
    /// the filter lets through. Before any library, for the same reason as
    /// in [`Probes::attach`].
    pub fn attach_process_markers(&mut self) -> anyhow::Result<()> {
        // Before any verdict of the filter can be cached, too.
        self.attach_tracepoint(RENAME_PROGRAM)?;
        self.attach_tracepoint(EXEC_PROGRAM)?;
        self.attach_tracepoint(EXIT_PROGRAM)
    }

    /// Host-wide mode: attaches every probe of `plan` in `library` (a path
    /// the tracer can open), firing in every process that maps that file.
    pub fn attach_library(
        &mut self,
        plan: &Plan,
        library: &Path,
        programs: Programs,
    ) -> anyhow::Result<()> {
        self.attach_uprobes(plan, library, UProbeScope::AllProcesses, programs)
    }

    /// Attaches the mapped-memory programs (`mmap`, `munmap`, `mremap`, `brk`,
    /// `mprotect` of the traced processes).
    pub fn attach_mapped(&mut self) -> anyhow::Result<()> {
        for (name, tracepoint) in MAPPED_PROGRAMS {
            let program = self.loaded_tracepoint(name)?;
            program.attach("syscalls", tracepoint).with_context(|| {
                format!(
                    "cannot trace mapped memory: the tracepoint syscalls:{tracepoint} is missing \
                     (needs CONFIG_FTRACE_SYSCALLS); use --trace-memory heap"
                )
            })?;
        }
        Ok(())
    }

    /// The `syscalls`/`kmem`-style tracepoint program `name`, loaded into
    /// the kernel (not at [`Probes::load`]: see there).
    fn loaded_tracepoint(&mut self, name: &str) -> anyhow::Result<&mut TracePoint> {
        let program: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("loading program {name} into the kernel"))?;
        Ok(program)
    }

    fn attach_tracepoint(&mut self, name: &str) -> anyhow::Result<()> {
        let program: &mut BtfTracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
            .try_into()?;
        program
            .attach()
            .with_context(|| format!("attaching the tracepoint program {name}"))?;
        Ok(())
    }

    fn attach_uprobes(
        &mut self,
        plan: &Plan,
        libc: &Path,
        scope: UProbeScope,
        programs: Programs,
    ) -> anyhow::Result<()> {
        // Return probes first: a return without a parked entry is ignored,
        // whereas an entry whose return probe is not there yet would leave a
        // stale pending call behind.
        for point in plan
            .points
            .iter()
            .filter(|point| point.returns == Returns::Yes)
        {
            self.attach_uprobe(
                programs.exit(RETURN_PROGRAM),
                point.function_offset,
                libc,
                scope,
            )
            .with_context(|| format!("attaching the return probe of {}", point.functions[0]))?;
        }
        // Then `free` before anything that allocates: probes attach one at a
        // time while the target runs, and an allocation recorded before its
        // free could be seen would stay outstanding forever. The other way
        // round, a free of a block whose allocation was missed is counted as
        // preexisting, which is what it is.
        let frees_first = plan
            .points
            .iter()
            .filter(|point| point.returns == Returns::No)
            .chain(
                plan.points
                    .iter()
                    .filter(|point| point.returns == Returns::Yes),
            );
        for point in frees_first {
            self.attach_uprobe(
                programs.entry(point.entry_program),
                point.entry_offset(),
                libc,
                scope,
            )
            .with_context(|| format!("attaching the probe of {}", point.functions[0]))?;
        }
        Ok(())
    }

    /// Attaches `program` at `offset` in `file`. The kernel shares one
    /// uprobe per (file, offset) between every tool probing there, and
    /// refuses (EINVAL) a second registration whose USDT semaphore
    /// (`ref_ctr_offset`) differs — seen here when another tool held glibc's
    /// `malloc` for seconds at a time (dmesg: "ref_ctr_offset mismatch").
    /// Such a conflict is retried for a while, then explained.
    fn attach_uprobe(
        &mut self,
        program: &str,
        offset: u64,
        file: &Path,
        scope: UProbeScope,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + SHARED_PROBE_PATIENCE;
        loop {
            let error = match self.try_attach_uprobe(program, offset, file, scope) {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if !is_invalid_argument(error.as_ref()) {
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Err(error.context(
                    "the kernel refused the uprobe (EINVAL); another tool may hold one at the same \
                     place with a USDT semaphore (dmesg says \"ref_ctr_offset mismatch\")",
                ));
            }
            std::thread::sleep(SHARED_PROBE_RETRY);
        }
    }

    /// One attempt of [`Probes::attach_uprobe`], through a uprobe_multi link
    /// or aya's perf-event uprobe.
    fn try_attach_uprobe(
        &mut self,
        program: &str,
        offset: u64,
        file: &Path,
        scope: UProbeScope,
    ) -> anyhow::Result<()> {
        let pid = match scope {
            UProbeScope::OneProcess(pid) => pid.get(),
            UProbeScope::AllProcesses => 0,
            UProbeScope::CallingProcess => std::process::id(),
        };
        if let Some(multi) = &self.multi {
            multi.attach(program, file, offset, pid, &self.guardian)?;
            return Ok(());
        }
        let program: &UProbe = self
            .ebpf
            .program(program)
            .ok_or_else(|| anyhow!("the eBPF object has no program {program}"))?
            .try_into()?;
        let target = LinkTarget {
            file,
            offset,
            pid,
            returns: matches!(program.kind(), ProbeKind::Return),
        };
        self.guardian
            .link(program.fd()?.as_fd(), &target, LinkKind::PerfEvent)?;
        Ok(())
    }

    /// Forwards pending kernel log records (only with `--verbose`).
    pub fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    /// The guardian process holding the uprobe links: host-wide mode must
    /// not trace it.
    pub fn guardian_pid(&self) -> u32 {
        self.guardian.pid()
    }

    /// Removes every probe from the target.
    pub fn detach(mut self) {
        self.flush_log();
        if let Err(error) = self.guardian.release() {
            log::warn!("the guardian process did not release the probes: {error}");
        }
        drop(self.guardian);
        drop(self.multi);
        drop(self.ebpf);
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }
}

/// Which programs go on the probe points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    /// The real tracing programs.
    Tracing,
    /// Empty programs at the same points: the cost of the traps alone.
    Floor,
}

impl Programs {
    fn entry(self, tracing: &'static str) -> &'static str {
        match self {
            Self::Tracing => tracing,
            Self::Floor => "empty_enter",
        }
    }

    fn exit(self, tracing: &'static str) -> &'static str {
        match self {
            Self::Tracing => tracing,
            Self::Floor => "empty_exit",
        }
    }
}

/// The kernel's per-CPU counters, summed.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0
            .get(&(counter as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// A ring buffer's smallest size: one page.
const UNUSED_RING_SIZE: u32 = 4096;

/// How many event rings the CPUs write to: one each, up to
/// `tracer_ebpf::EVENT_RINGS` (beyond that, CPUs share them).
fn rings_in_use() -> usize {
    let cpus = aya::util::nr_cpus().unwrap_or(EVENT_RING_MAPS.len());
    cpus.clamp(1, EVENT_RING_MAPS.len())
}

/// Sizes the in-kernel unwinder's maps: `rows` table rows (the memory cap),
/// or the smallest maps the kernel allows when no process is unwound with
/// tables (they are allocated whole at load).
fn size_unwind_maps(loader: &mut EbpfLoader<'_>, rows: u32) {
    let mapping_slots = if rows == 0 {
        1
    } else {
        dwarf::DEFAULT_MAPPING_SLOTS
    };
    loader
        .map_max_entries(dwarf::UNWIND_ROWS_MAP, rows.max(1))
        .map_max_entries(dwarf::UNWIND_MAPPINGS_MAP, mapping_slots);
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default is far
/// below an 8 MiB ring buffer; newer kernels use memory cgroups and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct passed by reference.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if result != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
