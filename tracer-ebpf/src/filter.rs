//! The in-kernel process filter of host-wide mode: which callers the
//! programs record.
//!
//! Host-wide uprobes fire in every process that maps a probed library, so a
//! rejected call must cost as little as possible: every program asks
//! [`traced`] first, before it touches the per-thread call map or the ring.
//! The settings are globals patched at load time (read-only data, so the
//! verifier prunes the checks a session does not use) and two small hash
//! maps userspace fills before attaching. In single-process mode the uprobes
//! are attached for the target's pid only, and the filter is one constant
//! comparison.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::bpf_get_current_ancestor_cgroup_id,
    },
    macros::map,
    maps::HashMap,
};
use tracer_ebpf::{COMM_LEN, FilterMode, MAX_FILTER_ENTRIES};

/// A [`FilterMode`] as `u32` (`tracer_ebpf::FILTER_MODE_GLOBAL`).
#[unsafe(no_mangle)]
static FILTER_MODE: Global<u32> = Global::new(FilterMode::SingleProcess as u32);

/// Non-zero when only the names in [`TRACED_COMMS`] are traced.
#[unsafe(no_mangle)]
static COMM_FILTER: Global<u32> = Global::new(0);

/// The cgroup v2 id traced (with its descendants), 0 for any.
#[unsafe(no_mangle)]
static CGROUP_ID: Global<u64> = Global::new(0);

/// How deep [`CGROUP_ID`] is below the root cgroup.
#[unsafe(no_mangle)]
static CGROUP_LEVEL: Global<u32> = Global::new(0);

#[map(name = "EXCLUDED_TGIDS")]
static EXCLUDED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_ENTRIES, 0);

#[map(name = "TRACED_COMMS")]
static TRACED_COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(MAX_FILTER_ENTRIES, 0);

/// Whether the programs trace every process rather than one.
#[inline(always)]
pub fn host_wide() -> bool {
    FILTER_MODE.load() == FilterMode::HostWide as u32
}

/// Whether the current task's calls are recorded. Cheapest checks first: a
/// rejected call costs a helper call and one or two hash lookups.
#[inline(always)]
pub fn traced() -> bool {
    if !host_wide() {
        return true;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is plain data and only tested for presence.
    if unsafe { EXCLUDED_TGIDS.get(&tgid) }.is_some() {
        return false;
    }
    if COMM_FILTER.load() != 0 {
        let Ok(comm) = bpf_get_current_comm() else {
            return false;
        };
        // SAFETY: as above.
        if unsafe { TRACED_COMMS.get(&comm) }.is_none() {
            return false;
        }
    }
    let cgroup = CGROUP_ID.load();
    if cgroup != 0 {
        // SAFETY: a helper without preconditions; an out-of-range level
        // returns 0, which matches no cgroup.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(CGROUP_LEVEL.load() as i32) };
        if ancestor != cgroup {
            return false;
        }
    }
    true
}
