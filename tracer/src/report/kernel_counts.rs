//! What `--kernel` counts about its own accuracy, in the report's totals
//! and on each summary line: how many kernel stacks came from the stack
//! cache rather than the kernel's unwinder, how often a checked cached
//! stack turned out wrong, and how many runs the kernel skipped (its
//! programs' `recursion_misses`).

use serde::Serialize;

/// `--kernel`'s counts, flattened into the totals (keys below).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KernelCounts {
    /// Allocations sent with the stack cached for their path.
    pub kernel_stack_cache_hits: u64,
    /// Kernel stacks unwound (cache misses, checks, pages).
    pub kernel_stack_unwinds: u64,
    /// Cache hits unwound anyway and compared.
    pub kernel_stack_cache_checks: u64,
    /// Checks whose unwound stack was not the cached one: about
    /// `hits * mismatches / checks` allocations were put under a wrong
    /// stack of the same path.
    pub kernel_stack_cache_mismatches: u64,
    /// Runs of the programs the kernel skipped because a tracing program
    /// already ran on the CPU (an interrupt's allocation or free).
    pub recursion_misses: u64,
    /// Of which frees: blocks that may have been released yet count as
    /// outstanding.
    pub recursion_missed_frees: u64,
}

impl KernelCounts {
    /// The summary line's part: ` | stacks cached 97.3% (2 of 1500 checks
    /// wrong) | skipped 12 frees`.
    pub fn headline(&self) -> String {
        let stacks = self.kernel_stack_cache_hits + self.kernel_stack_unwinds
            - self.kernel_stack_cache_checks;
        let cached = if stacks == 0 {
            0.0
        } else {
            (self.kernel_stack_cache_hits - self.kernel_stack_cache_checks) as f64 * 100.0
                / stacks as f64
        };
        let mut text = format!(
            " | stacks cached {cached:.1}% ({} of {} checks wrong)",
            self.kernel_stack_cache_mismatches, self.kernel_stack_cache_checks
        );
        if self.recursion_misses > 0 {
            text += &format!(
                " | skipped {} frees, {} allocs",
                self.recursion_missed_frees,
                self.recursion_misses - self.recursion_missed_frees
            );
        }
        text
    }

    /// The warning at the end of a run whose frees the kernel skipped.
    pub fn skipped_frees_warning(&self) -> Option<String> {
        (self.recursion_missed_frees > 0).then(|| {
            format!(
                "alloctrace: the kernel skipped {} frees while another tracing program ran on the \
                 same CPU (recursion_missed_frees): the outstanding numbers may include that many \
                 blocks that were released",
                self.recursion_missed_frees
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headline_counts_checked_hits_as_unwound() {
        let counts = KernelCounts {
            kernel_stack_cache_hits: 1000,
            kernel_stack_unwinds: 100,
            kernel_stack_cache_checks: 16,
            kernel_stack_cache_mismatches: 1,
            recursion_misses: 5,
            recursion_missed_frees: 4,
        };
        // 984 of the 1084 stacks sent came from the cache alone.
        assert_eq!(
            counts.headline(),
            " | stacks cached 90.8% (1 of 16 checks wrong) | skipped 4 frees, 1 allocs"
        );
        assert!(counts.skipped_frees_warning().unwrap().contains(" 4 frees"));
        assert_eq!(
            KernelCounts::default().headline(),
            " | stacks cached 0.0% (0 of 0 checks wrong)"
        );
        assert_eq!(KernelCounts::default().skipped_frees_warning(), None);
    }
}
