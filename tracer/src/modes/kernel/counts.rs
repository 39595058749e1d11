//! `--kernel`'s own counts for the totals: the stack cache's counters
//! (`tracer-ebpf/src/kernel_stacks.rs`) and the runs of the programs the
//! kernel skipped.

use tracer_ebpf::Counter;

use crate::{
    probes::{Counters, ProgramStats, is_free_program},
    report::KernelCounts,
};

/// Reads the counts as of now (the programs' skipped runs stay readable
/// after they are detached).
pub fn read(counters: &Counters, programs: &ProgramStats) -> KernelCounts {
    KernelCounts {
        kernel_stack_cache_hits: counters.get(Counter::KernelStackCacheHits),
        kernel_stack_unwinds: counters.get(Counter::KernelStackUnwinds),
        kernel_stack_cache_checks: counters.get(Counter::KernelStackCacheChecks),
        kernel_stack_cache_mismatches: counters.get(Counter::KernelStackCacheMismatches),
        recursion_misses: programs.recursion_misses(|_| true),
        recursion_missed_frees: programs.recursion_misses(is_free_program),
    }
}
