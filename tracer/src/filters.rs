//! Which processes host-wide mode traces: `--comm`, `--cgroup` and
//! `--exclude-pid`, validated, and turned into the settings of the kernel's
//! filter. The tracer itself is always excluded: its own allocations would
//! otherwise feed back into the events it reads.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tracer_ebpf::COMM_LEN;

use crate::probes::KernelFilter;

/// Where cgroup v2 is mounted: the unified hierarchy, or its place beside
/// the v1 controllers on hybrid systems.
const CGROUP2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// `statfs` magic of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Which processes are traced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFilters {
    /// Task names allowed (`--comm`); empty allows all.
    pub comms: Vec<String>,
    /// The cgroup traced with its descendants (`--cgroup`).
    pub cgroup: Option<Cgroup>,
    /// Processes never traced (`--exclude-pid`).
    pub excluded: Vec<u32>,
}

/// A cgroup v2 directory, by the id the kernel's helpers return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The directory's inode number, which is the cgroup's id.
    pub id: u64,
    /// Depth below the root cgroup (the root is 0).
    pub level: u32,
}

impl HostFilters {
    /// Validates `--comm`, `--cgroup` and `--exclude-pid`.
    pub fn new(comms: &[String], cgroup: Option<&Path>, excluded: &[u32]) -> anyhow::Result<Self> {
        for comm in comms {
            if comm.is_empty() || comm.len() >= COMM_LEN {
                bail!(
                    "--comm {comm:?}: a process name is 1 to {} bytes, as in /proc/PID/comm",
                    COMM_LEN - 1
                );
            }
        }
        Ok(Self {
            comms: comms.to_vec(),
            cgroup: cgroup.map(Cgroup::resolve).transpose()?,
            excluded: excluded.to_vec(),
        })
    }

    /// The kernel filter's settings; `own_pid` (the tracer) is excluded.
    pub fn kernel_filter(&self, own_pid: u32) -> KernelFilter {
        let mut excluded: Vec<u32> = self.excluded.clone();
        excluded.push(own_pid);
        KernelFilter {
            excluded,
            comms: self.comms.iter().map(|name| comm_key(name)).collect(),
            cgroup: self.cgroup.as_ref().map(|cgroup| (cgroup.id, cgroup.level)),
        }
    }

    /// Whether process `pid` could be traced at all: the libraries of
    /// excluded processes are not looked at. The other filters are left to
    /// the kernel, since a process may change its name or cgroup.
    pub fn admits(&self, pid: u32) -> bool {
        !self.excluded.contains(&pid)
    }
}

impl Cgroup {
    /// Resolves `--cgroup PATH`: a directory of the cgroup v2 hierarchy,
    /// absolute or relative to its mount point.
    fn resolve(path: &Path) -> anyhow::Result<Self> {
        let Some(root) = CGROUP2_MOUNTS
            .iter()
            .map(Path::new)
            .find(|root| is_cgroup2(root))
        else {
            bail!(
                "--cgroup needs cgroup v2 mounted at {} or {}",
                CGROUP2_MOUNTS[0],
                CGROUP2_MOUNTS[1]
            );
        };
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            root.join(path)
        };
        let canonical = joined
            .canonicalize()
            .with_context(|| format!("--cgroup {}", path.display()))?;
        let Ok(below) = canonical.strip_prefix(root) else {
            bail!(
                "--cgroup {}: not a cgroup (a directory under {})",
                path.display(),
                root.display()
            );
        };
        let metadata = std::fs::metadata(&canonical)
            .with_context(|| format!("--cgroup {}", path.display()))?;
        if !metadata.is_dir() {
            bail!("--cgroup {}: not a directory", path.display());
        }
        let level = below
            .components()
            .filter(|component| matches!(component, Component::Normal(_)))
            .count();
        Ok(Self {
            path: canonical,
            id: metadata.ino(),
            level: level as u32,
        })
    }
}

/// A name as the kernel's `bpf_get_current_comm` returns it: NUL-padded.
fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0; COMM_LEN];
    let bytes = name.as_bytes();
    let len = bytes.len().min(COMM_LEN - 1);
    key[..len].copy_from_slice(&bytes[..len]);
    key
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct passed by pointer.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut stat) == 0 && stat.f_type == CGROUP2_SUPER_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_keys_are_nul_padded_like_the_kernels() {
        let key = comm_key("leaky");
        assert_eq!(&key[..5], b"leaky");
        assert!(key[5..].iter().all(|&b| b == 0));
        assert_eq!(comm_key("a-very-long-process-name")[15], 0);
    }

    #[test]
    fn the_tracer_is_always_excluded() {
        let filters = HostFilters {
            excluded: vec![7],
            ..HostFilters::default()
        };
        let kernel = filters.kernel_filter(42);
        assert_eq!(kernel.excluded, vec![7, 42]);
        assert!(kernel.comms.is_empty() && kernel.cgroup.is_none());
    }

    #[test]
    fn the_root_cgroup_is_level_zero_and_children_count_down_from_it() {
        let Some(mount) = CGROUP2_MOUNTS
            .into_iter()
            .find(|root| is_cgroup2(Path::new(root)))
        else {
            return;
        };
        let root = Cgroup::resolve(Path::new(mount)).unwrap();
        assert_eq!(root.level, 0);
        let child = std::fs::read_dir(mount)
            .unwrap()
            .filter_map(Result::ok)
            .find(|entry| entry.path().is_dir());
        if let Some(child) = child {
            let name = child.file_name();
            let resolved = Cgroup::resolve(Path::new(&name)).unwrap();
            assert_eq!(resolved.level, 1);
        }
    }

    #[test]
    fn excluded_processes_are_not_admitted() {
        let filters = HostFilters {
            comms: vec!["nginx".into()],
            excluded: vec![5],
            cgroup: None,
        };
        assert!(filters.admits(4));
        assert!(!filters.admits(5));
    }
}
