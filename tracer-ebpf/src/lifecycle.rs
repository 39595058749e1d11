//! Lifecycle events of the traced process that change what its addresses
//! mean. Today: `execve`, which discards the whole address space.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_ebpf::EventKind;

use crate::probes::emit_marker;

/// The traced process's pid (its kernel tgid); set by userspace at load time.
#[unsafe(no_mangle)]
static TARGET_PID: u32 = 0;

/// Runs in the exec'ing task after its new image is in place.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: a volatile read keeps the compiler from folding the global to
    // its initial 0; userspace patches it before loading.
    let target = unsafe { core::ptr::read_volatile(&TARGET_PID) };
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == target {
        emit_marker(&ctx, EventKind::Exec);
    }
    0
}
