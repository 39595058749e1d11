//! Lifecycle events of traced processes that change what their addresses
//! mean: `execve`, which discards the whole address space, and (host-wide)
//! the exit of a process's last thread, after which its pid may be reused;
//! and the forks that leave a copy of the target's breakpoints in a child.

use aya_ebpf::{
    Global, helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_ebpf::EventKind;

use crate::{
    counters::{Outcome, finish},
    emit::emit_process_marker,
    filter,
};

/// The traced process's pid (its kernel tgid) in single-process mode; set
/// by userspace at load time (`tracer_ebpf::TARGET_PID_GLOBAL`).
#[unsafe(export_name = tracer_ebpf::shared_name!(TARGET_PID_GLOBAL))]
static TARGET_PID: Global<u32> = Global::new(0);

/// Runs in the exec'ing task after its new image is in place.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(ctx: BtfTracePointContext) -> i32 {
    finish(&ctx, try_process_exec(&ctx));
    0
}

fn try_process_exec(ctx: &BtfTracePointContext) -> Outcome {
    let traced = if filter::host_wide() {
        filter::traced(bpf_get_current_pid_tgid())
    } else {
        in_target()
    };
    if traced {
        emit_process_marker(ctx, EventKind::Exec)?;
    }
    Ok(())
}

/// Runs in the parent of every new task. Only attached in single-process
/// mode: a child process forked by the target keeps the breakpoints in its
/// copy of the target's memory, and those of a uprobe_multi link are never
/// removed by the kernel (the link runs nothing for the child, but the
/// child traps on every allocator call), so userspace removes them.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn process_fork(ctx: BtfTracePointContext) -> i32 {
    finish(&ctx, try_process_fork(&ctx));
    0
}

fn try_process_fork(ctx: &BtfTracePointContext) -> Outcome {
    if in_target() {
        emit_process_marker(ctx, EventKind::Fork)?;
    }
    Ok(())
}

/// Whether the current task belongs to the traced process.
pub fn in_target() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == TARGET_PID.load()
}

/// Runs whenever a task's name changes (exec included). Only attached in
/// host-wide mode, where `--comm` decides by name.
#[btf_tracepoint(function = "task_rename")]
pub fn task_renamed(_ctx: BtfTracePointContext) -> i32 {
    filter::names_changed();
    0
}

/// Runs in every exiting thread, before its memory is released. Only
/// attached in host-wide mode, where it tells userspace to close the
/// process's ledger.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit(ctx: BtfTracePointContext) -> i32 {
    finish(&ctx, try_process_exit(&ctx));
    0
}

fn try_process_exit(ctx: &BtfTracePointContext) -> Outcome {
    // `sched_process_exit(struct task_struct *p, bool group_dead)`: only
    // the last thread of the group ends the process.
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 && filter::traced(bpf_get_current_pid_tgid()) {
        emit_process_marker(ctx, EventKind::ProcessExit)?;
    }
    Ok(())
}
