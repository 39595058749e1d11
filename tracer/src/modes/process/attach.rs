//! Setting one-process mode up, up to the ready line: resolve the target,
//! load and attach the probes, and arm what tells it to stop (the target's
//! exit, SIGINT and SIGTERM).

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Context as _, anyhow, bail};
use tokio::io::unix::AsyncFd;

use super::{forks::ForkedChildren, launch::Launched};
use crate::{
    armed::{ArmedWatch, ProbeSites},
    config::{Common, ProcessConfig, ProcessTarget},
    driver::{self, StopSignals},
    events::watch_readable,
    placement::Plan,
    probes::{KernelMaps, Probes, Programs, Settings, UprobeLinks},
    target::{Target, TargetError},
    unwind::{self, StackUnwinder, UnwindMode, tables::TableLoader},
};

/// Everything set up before the ready line.
pub(super) struct Attachment {
    pub target: Target,
    pub plan: Plan,
    /// The target's future children, to rid of the breakpoints they inherit.
    pub forks: ForkedChildren,
    /// The probes' breakpoints in a running target, checked again at each
    /// summary.
    pub armed: Option<ArmedWatch>,
    /// A launched command's probe sites, watched once it runs its program.
    pub sites_after_exec: Option<ProbeSites>,
    pub probes: Probes,
    pub maps: KernelMaps,
    pub exit: ProcessExit,
    pub signals: StopSignals,
    /// Unwinds the stack copies allocation events carry (`stack-copy`).
    pub unwinder: Option<StackUnwinder>,
    /// The in-kernel unwinder's tables (`dwarf`, `auto`).
    pub tables: Option<TableLoader>,
    /// Stacks are unwound with DWARF CFI, in the kernel or from copies.
    pub dwarf: bool,
}

impl Attachment {
    /// Attaches to `config`'s target: the running process, or the
    /// `launched` command still held before its exec.
    pub fn attach(
        common: &Common,
        config: &ProcessConfig,
        launched: Option<&Launched>,
    ) -> anyhow::Result<Self> {
        Self::try_attach(common, config, launched).map_err(|error| explain_failure(config, error))
    }

    fn try_attach(
        common: &Common,
        config: &ProcessConfig,
        launched: Option<&Launched>,
    ) -> anyhow::Result<Self> {
        let allocator_lib = config.allocator_lib.as_deref();
        let target = match launched {
            Some(launched) => Target::for_command(launched.pid(), launched.exe(), allocator_lib)?,
            None => {
                let ProcessTarget::Pid(pid) = config.target else {
                    anyhow::bail!("launch mode starts its command before attaching");
                };
                Target::resolve(pid, allocator_lib)?
            }
        };
        let plan = Plan::for_object(&target.allocator.host_path)?;
        let sites = ProbeSites::new(&target.allocator.host_path, &plan)?;
        let forks = ForkedChildren::new(target.pid, sites.clone());
        for point in &plan.points {
            log::debug!(
                "probe {} at file offset {:#x}+{} ({:?} return probe)",
                point.functions.join("/"),
                point.function_offset,
                point.entry_skip,
                point.returns
            );
        }
        let exit = ProcessExit::watch(target.pid)?;
        // Before the ready line: a signal sent as soon as it appears must
        // stop tracing cleanly, not kill the tracer.
        let signals = StopSignals::install()?;
        let stack_copy_bytes = unwind::stack_copy_bytes(config.unwind, config.stack_bytes);
        let ring_size = common.ring_size.unwrap_or(if stack_copy_bytes == 0 {
            tracer_ebpf::DEFAULT_RING_SIZE
        } else {
            tracer_ebpf::DEFAULT_STACK_COPY_RING_SIZE
        });
        let (mut probes, mut maps) = Probes::load(&Settings {
            pid: target.pid,
            ring_size,
            stack_copy_bytes,
            sampling: config.sampling.as_ref(),
            thread_slots: config.thread_slots,
            unwind_table_rows: common.unwind_table_rows,
            uprobe_links: if config.perf_event_uprobes {
                UprobeLinks::PerfEvents
            } else {
                UprobeLinks::Fastest
            },
            kernel_allocations: false,
            verbose: common.verbose,
        })?;
        let programs = if common.floor {
            Programs::Floor
        } else {
            Programs::Tracing
        };
        // Before the uprobes: a mapping made inside an allocator call is
        // told apart by the call in flight, which the uprobes record.
        if config.memory.mapped() {
            probes.attach_mapped()?;
        }
        let mut tables = driver::table_loader(config.unwind, &mut maps)?;
        // Before the probes, so the first allocation is unwound with them. A
        // launched command gets its own at its exec (the driver sees it).
        let kernel_dwarf = match (&mut tables, launched) {
            (Some(tables), None) => tables.load_process(target.pid),
            (Some(_), Some(_)) => {
                config.unwind == UnwindMode::Dwarf
                    || !unwind::keeps_frame_pointers(&target.host_exe)
            }
            (None, _) => false,
        };
        if config.memory.heap() {
            probes.attach(&plan, &target.allocator.host_path, target.pid, programs)?;
        } else {
            probes.attach_exec_marker()?;
        }
        // A launched command is held before its exec: its probes are armed
        // when its new image maps the library, after the ready line.
        // Without heap probes (`--trace-memory mapped`) there is nothing to arm.
        let (armed, sites_after_exec) = if !config.memory.heap() {
            (None, None)
        } else if launched.is_none() {
            if !target.is_alive() {
                bail!("pid {} exited while alloctrace was attaching", target.pid);
            }
            sites.await_armed(target.pid)?;
            (Some(ArmedWatch::new(sites, target.pid)), None)
        } else {
            (None, Some(sites))
        };
        let unwinder = (stack_copy_bytes > 0).then(|| StackUnwinder::new(target.pid));
        Ok(Self {
            target,
            plan,
            forks,
            armed,
            sites_after_exec,
            probes,
            maps,
            exit,
            signals,
            unwinder,
            tables,
            dwarf: stack_copy_bytes > 0 || kernel_dwarf,
        })
    }
}

/// A process that exits while being resolved or attached to makes any step
/// fail (its maps read empty, perf_event_open says ESRCH...): say what
/// really happened rather than the step's symptom.
fn explain_failure(config: &ProcessConfig, error: anyhow::Error) -> anyhow::Error {
    let ProcessTarget::Pid(pid) = config.target else {
        return error;
    };
    let gone = procfs::process::Process::new(pid as i32)
        .and_then(|process| process.stat())
        .map_or(true, |stat| stat.state == 'Z');
    let already_said = matches!(
        error.downcast_ref::<TargetError>(),
        Some(TargetError::NoSuchProcess(_))
    ) || error.to_string().contains("exited while");
    if gone && !already_said {
        anyhow!("pid {pid} exited while alloctrace was attaching")
    } else {
        error
    }
}

/// Becomes ready when a process exits, through a pidfd (no polling of /proc).
pub(super) struct ProcessExit(AsyncFd<OwnedFd>);

impl ProcessExit {
    fn watch(pid: u32) -> anyhow::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ESRCH) {
                return Err(anyhow!(TargetError::NoSuchProcess(pid)));
            }
            return Err(error).context("pidfd_open (needs Linux 5.3 or newer)");
        }
        // SAFETY: the fd was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self(watch_readable(fd)?))
    }

    pub async fn exited(&self) -> anyhow::Result<()> {
        let _ready = self.0.readable().await?;
        Ok(())
    }
}
