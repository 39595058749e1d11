//! Which task a kernel allocation was made for: each allocation's kernel
//! stack is extended by one outermost frame naming the allocating task (by
//! its process's name, `/proc/PID/comm`), so the ledger counts the same
//! kernel path separately for each program that holds memory through it,
//! exactly, and the flamegraph shows the task between `[kernel]` and the
//! system call. Allocations made in interrupt context (their stack passes
//! an interrupt or softirq entry) and by the idle task (pid 0) are the
//! `[interrupt]` task's: the interrupted task has nothing to do with them.
//!
//! By name rather than pid: a host runs many short-lived processes of the
//! same program, and their stacks would otherwise grow without bound. The
//! names of pids are re-read at every tick (a pid may be reused).

use std::collections::HashMap;

use crate::{
    driver::Tracee,
    report::NameStacks,
    stacks::StackId,
    symbolize::{Frame, TASK_MODULE},
};

/// Task frames are addresses no kernel return address can be (the kernel
/// half starts at 0xffff8...): this base, plus the task's index.
const TASK_FRAME_BASE: u64 = 0x7a5c_0000_0000_0000;

/// Name of the allocations made in interrupt context (pid 0).
pub const INTERRUPT_TASK: &str = "[interrupt]";

/// Name of a process gone before its name could be read.
const EXITED_TASK: &str = "[exited]";

/// Functions through which the kernel enters interrupt context: hard
/// interrupts (`asm_sysvec_*`, `asm_common_interrupt`), softirqs (run on
/// interrupt exit or when a task re-enables them) and NMIs.
const INTERRUPT_ENTRIES: &[&str] = &[
    "asm_sysvec_",
    "asm_common_interrupt",
    "asm_exc_nmi",
    "handle_softirqs",
    "__do_softirq",
    "irq_exit_rcu",
];

/// Whether a stack named `frames` runs in interrupt context.
fn in_interrupt(frames: &[Frame]) -> bool {
    frames.iter().any(|frame| {
        frame.function.as_deref().is_some_and(|function| {
            INTERRUPT_ENTRIES
                .iter()
                .any(|entry| function.starts_with(entry))
        })
    })
}

#[derive(Default)]
pub struct Tasks {
    /// Each pid's process name, until the next tick.
    names: HashMap<u32, String>,
    /// Each task name's frame address.
    frames: HashMap<String, u64>,
    /// The stack with its task frame, by kernel stack and pid, until the
    /// next tick.
    stacks: HashMap<(StackId, u32), StackId>,
    /// Whether each kernel stack seen runs in interrupt context.
    interrupt: HashMap<StackId, bool>,
}

impl Tasks {
    /// `kernel_stack` (of `tracee`'s table) extended by the frame of the
    /// task `pid`, for an event stamped `at_ns`: the stack is not evicted
    /// before that event is applied (it may be resolved on read, drains
    /// before it is applied).
    pub fn stack_with_task(
        &mut self,
        tracee: &mut Tracee,
        kernel_stack: StackId,
        pid: u32,
        at_ns: u64,
    ) -> StackId {
        if let Some(&stack) = self.stacks.get(&(kernel_stack, pid)) {
            tracee.stacks.touch(stack, at_ns);
            return stack;
        }
        let interrupt = *self
            .interrupt
            .entry(kernel_stack)
            .or_insert_with(|| in_interrupt(&tracee.frames(kernel_stack)));
        let task = if interrupt { 0 } else { pid };
        let name = self
            .names
            .entry(task)
            .or_insert_with(|| task_name(task))
            .clone();
        let next_address = TASK_FRAME_BASE + self.frames.len() as u64;
        let task_frame = *self.frames.entry(name.clone()).or_insert_with(|| {
            tracee.symbols.name_address(Frame {
                address: next_address,
                function: Some(name),
                module: Some(TASK_MODULE.to_owned()),
                file: None,
                line: None,
                inlined: false,
                offset: None,
            });
            next_address
        });
        let mut addresses = tracee.stacks.addresses(kernel_stack).to_vec();
        addresses.push(task_frame);
        let stack = tracee.stacks.intern_at(&addresses, at_ns);
        self.stacks.insert((kernel_stack, pid), stack);
        stack
    }

    /// Forgets which pid is which task: pids are reused.
    pub fn forget_pids(&mut self) {
        self.names.clear();
        self.stacks.clear();
    }

    /// Forgets the stacks it knew by id, after the table evicted stacks
    /// (`--max-stacks`): a task's stack whose blocks were all freed is
    /// idle and may be evicted, and allocations still sent to its id would
    /// land on no stack (measured: every block of a program holding 300
    /// sockets, under `--max-stacks 32`).
    pub fn forget_stacks(&mut self) {
        self.stacks.clear();
        self.interrupt.clear();
    }
}

/// The name of process `pid`, as the kernel keeps it.
fn task_name(pid: u32) -> String {
    if pid == 0 {
        return INTERRUPT_TASK.to_owned();
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim_end_matches('\n').to_owned(),
        Err(_) => EXITED_TASK.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(functions: &[&str]) -> Vec<Frame> {
        functions
            .iter()
            .map(|function| Frame {
                address: 1,
                function: Some((*function).to_owned()),
                module: None,
                file: None,
                line: None,
                inlined: false,
                offset: None,
            })
            .collect()
    }

    #[test]
    fn stacks_through_an_interrupt_entry_run_in_interrupt_context() {
        assert!(in_interrupt(&frames(&[
            "kmem_cache_free",
            "rcu_core",
            "handle_softirqs",
            "irq_exit_rcu",
            "asm_sysvec_apic_timer_interrupt",
        ])));
        assert!(!in_interrupt(&frames(&[
            "sock_alloc_inode",
            "__sys_socket",
            "do_syscall_64",
            "entry_SYSCALL_64_after_hwframe",
        ])));
    }
}
