//! The memory limit of alloctrace's own cgroup, and the number of blocks
//! the ledgers may track under it: a tracer held near its need degrades by
//! dropping allocations it cannot track (counted in the report's
//! `dropped_allocations`) instead of being killed by the kernel with
//! nothing written.
//!
//! The limit is read once the programs are loaded (their maps are charged
//! to the cgroup too): cgroup v2's `memory.max` or v1's
//! `memory.limit_in_bytes`, whichever holds this process's memory
//! controller. Half of what is left under it goes to tracked blocks, at
//! [`BYTES_PER_BLOCK`] each; the other half is for the stack table, the
//! symbolizer and the final outputs.

use std::{fs, path::PathBuf};

/// What one tracked block costs the tracer, with room to spare: 46 bytes
/// measured (a 16-byte ledger entry plus the hash table's slack, see the
/// README's benchmark), rounded up for its stack's share and the growth of
/// the table.
pub const BYTES_PER_BLOCK: u64 = 64;

/// The part of the headroom under the limit given to tracked blocks.
const BLOCKS_SHARE: f64 = 0.5;

/// Limits at or above this are "no limit" (v1 writes 2^63 rounded down to
/// a page; v2 writes `max`).
const UNLIMITED: u64 = 1 << 60;

/// This process's cgroup memory limit and usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The file the limit was read from.
    pub source: PathBuf,
    pub limit_bytes: u64,
    pub usage_bytes: u64,
}

impl MemoryLimit {
    /// The limit of this process's cgroup, if it has one.
    pub fn of_this_process() -> Option<Self> {
        let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
        candidates(&cgroups).into_iter().find_map(|(limit, usage)| {
            let limit_bytes = read_bytes(&limit)?;
            let usage_bytes = read_bytes(&usage)?;
            (limit_bytes < UNLIMITED).then_some(Self {
                source: limit,
                limit_bytes,
                usage_bytes,
            })
        })
    }

    /// How many blocks fit in the share of the headroom left under the
    /// limit.
    pub fn blocks_that_fit(&self) -> u64 {
        let headroom = self.limit_bytes.saturating_sub(self.usage_bytes);
        (headroom as f64 * BLOCKS_SHARE) as u64 / BYTES_PER_BLOCK
    }
}

/// `--max-tracked` lowered to what fits under this process's memory limit,
/// saying so on stderr when it is.
pub fn cap_tracked_blocks(max_tracked: u64) -> u64 {
    let Some(limit) = MemoryLimit::of_this_process() else {
        return max_tracked;
    };
    let fit = limit.blocks_that_fit();
    if fit >= max_tracked {
        return max_tracked;
    }
    eprintln!(
        "alloctrace: memory limit {} MiB ({}), {} MiB in use: tracking at most {fit} blocks \
         (--max-tracked {max_tracked}); allocations beyond are dropped and counted",
        limit.limit_bytes >> 20,
        limit.source.display(),
        limit.usage_bytes >> 20,
    );
    fit
}

/// The (limit, usage) files that may hold this process's memory limit,
/// from `/proc/self/cgroup`: cgroup v2 (`0::/PATH`, at /sys/fs/cgroup or,
/// on a hybrid host, /sys/fs/cgroup/unified), then v1's memory controller.
fn candidates(cgroups: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut files = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let dir = PathBuf::from(root).join(path);
                files.push((dir.join("memory.max"), dir.join("memory.current")));
            }
        } else if controllers.split(',').any(|name| name == "memory") {
            let dir = PathBuf::from("/sys/fs/cgroup/memory").join(path);
            files.push((
                dir.join("memory.limit_in_bytes"),
                dir.join("memory.usage_in_bytes"),
            ));
        }
    }
    files
}

/// A byte count from a cgroup file; `max` is no limit.
fn read_bytes(path: &std::path::Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        number => number.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_and_v1_files_of_a_hybrid_host() {
        let files = candidates("4:memory:/a/b\n0::/c\n1:cpu:/d\n");
        assert_eq!(
            files,
            [
                (
                    PathBuf::from("/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes"),
                    PathBuf::from("/sys/fs/cgroup/memory/a/b/memory.usage_in_bytes")
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/c/memory.max"),
                    PathBuf::from("/sys/fs/cgroup/c/memory.current")
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/unified/c/memory.max"),
                    PathBuf::from("/sys/fs/cgroup/unified/c/memory.current")
                ),
            ]
        );
    }

    #[test]
    fn half_the_headroom_goes_to_blocks() {
        let limit = MemoryLimit {
            source: PathBuf::new(),
            limit_bytes: 200 << 20,
            usage_bytes: 100 << 20,
        };
        assert_eq!(limit.blocks_that_fit(), (50 << 20) / BYTES_PER_BLOCK);
    }
}
