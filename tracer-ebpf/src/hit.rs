//! One probe hit: the program's context and the calling task's ids, asked
//! of the kernel once per hit (a helper call each time otherwise), and the
//! trapped task's registers. Knows nothing of events or maps.

use aya_ebpf::{EbpfContext, bindings::pt_regs, helpers::bpf_get_current_pid_tgid};

/// A program's context and the calling task's ids.
pub struct Hit<'a, C> {
    pub ctx: &'a C,
    /// As `bpf_get_current_pid_tgid` gives it: tgid high, thread id low.
    pub pid_tgid: u64,
}

impl<'a, C: EbpfContext> Hit<'a, C> {
    #[inline(always)]
    pub fn new(ctx: &'a C) -> Self {
        Self {
            ctx,
            pid_tgid: bpf_get_current_pid_tgid(),
        }
    }

    /// The calling thread's id (the kernel's pid).
    pub fn tid(&self) -> u32 {
        self.pid_tgid as u32
    }

    /// The trapped task's registers. Only for uprobe contexts, which are
    /// the task's `pt_regs`.
    pub fn regs(&self) -> &pt_regs {
        // SAFETY: uprobe contexts are the trapped task's `pt_regs`, and the
        // context outlives the program.
        unsafe { &*self.ctx.as_ptr().cast::<pt_regs>() }
    }

    /// The trapped task's stack pointer.
    pub fn stack_pointer(&self) -> u64 {
        self.regs().rsp
    }
}
