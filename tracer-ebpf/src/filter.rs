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
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_get_current_comm, generated::bpf_get_current_ancestor_cgroup_id},
    macros::map,
    maps::{Array, HashMap},
};
use tracer_ebpf::{COMM_LEN, FilterMode, MAX_FILTER_ENTRIES, MAX_THREAD_SLOTS};

/// A [`FilterMode`] as `u32` (`tracer_ebpf::FILTER_MODE_GLOBAL`).
#[unsafe(export_name = tracer_ebpf::shared_name!(FILTER_MODE_GLOBAL))]
static FILTER_MODE: Global<u32> = Global::new(FilterMode::SingleProcess as u32);

/// Non-zero when only the names in [`TRACED_COMMS`] are traced.
#[unsafe(export_name = tracer_ebpf::shared_name!(COMM_FILTER_GLOBAL))]
static COMM_FILTER: Global<u32> = Global::new(0);

/// The cgroup v2 id traced (with its descendants), 0 for any.
#[unsafe(export_name = tracer_ebpf::shared_name!(CGROUP_ID_GLOBAL))]
static CGROUP_ID: Global<u64> = Global::new(0);

/// How deep [`CGROUP_ID`] is below the root cgroup.
#[unsafe(export_name = tracer_ebpf::shared_name!(CGROUP_LEVEL_GLOBAL))]
static CGROUP_LEVEL: Global<u32> = Global::new(0);

shared_map!(
    EXCLUDED_TGIDS_MAP,
    static EXCLUDED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_ENTRIES, 0);
);

shared_map!(
    TRACED_COMMS_MAP,
    static TRACED_COMMS: HashMap<[u8; COMM_LEN], u8> =
        HashMap::with_max_entries(MAX_FILTER_ENTRIES, 0);
);

shared_map!(
    FILTER_VERDICTS_MAP,
    /// The filter's last verdict for each thread whose id is below
    /// `MAX_THREAD_SLOTS`, by thread id. Every probe hit in every process asks
    /// the filter, which cost ~90 ns per hit in `bpf_stats` with `--comm`
    /// (reading the task's name alone ~50 ns); a cached verdict costs an array
    /// lookup, which the verifier inlines. Sized to one entry (unused) outside
    /// host-wide mode (`tracer_ebpf::FILTER_VERDICTS_MAP`). Mappable so that the
    /// kernel page-aligns the values: each is one cache line.
    static FILTER_VERDICTS: Array<Verdict> =
        Array::with_max_entries(MAX_THREAD_SLOTS, BPF_F_MMAPABLE);
);

/// How many times a task was renamed (exec, `prctl(PR_SET_NAME)`, a write
/// to `/proc/*/comm`) since tracing began: the `task_rename` tracepoint
/// bumps it, and every verdict given before is stale, as `--comm` decides
/// by name. Renames are rare; a name is only read again after one.
#[map]
static NAME_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// A verdict and what it was given for: a thread of a process (the tgid
/// decides exclusion) under the names of [`NAME_GENERATION`]. The cgroup is
/// checked on every hit instead, as a process can be moved to another at
/// any time.
#[derive(Clone, Copy)]
#[repr(C)]
struct Verdict {
    pid_tgid: u64,
    name_generation: u64,
    traced: u64,
    /// To a cache line: neighbouring threads write neighbouring verdicts.
    _padding: [u64; 5],
}

/// Marks every verdict given so far stale (see [`NAME_GENERATION`]). Not
/// atomic: of two renames at once one increment may be lost, but the
/// generation changes all the same.
pub fn names_changed() {
    if let Some(generation) = NAME_GENERATION.get_ptr_mut(0) {
        // SAFETY: plain data (see above).
        unsafe { *generation += 1 };
    }
}

/// Whether the programs trace every process rather than one.
#[inline(always)]
pub fn host_wide() -> bool {
    FILTER_MODE.load() == FilterMode::HostWide as u32
}

/// Whether the current task (`pid_tgid`, as `bpf_get_current_pid_tgid`
/// gives it) is traced: a cached verdict when it was given to this thread
/// since the last rename, then the cgroup.
#[inline(always)]
pub fn traced(pid_tgid: u64) -> bool {
    if !host_wide() {
        return true;
    }
    // Read before the name, so a rename in between makes the verdict stale.
    let name_generation = NAME_GENERATION.get(0).copied().unwrap_or(0);
    let tid = pid_tgid as u32;
    let slot = if tid < MAX_THREAD_SLOTS {
        FILTER_VERDICTS.get_ptr_mut(tid)
    } else {
        None
    };
    // SAFETY (both accesses): a verdict is plain data, written and read
    // only by its thread's programs, one at a time.
    let cached = slot.map(|slot| unsafe { *slot }).filter(|verdict| {
        verdict.pid_tgid == pid_tgid && verdict.name_generation == name_generation
    });
    let traced = match cached {
        Some(verdict) => verdict.traced != 0,
        None => {
            let traced = process_traced(pid_tgid);
            if let Some(slot) = slot {
                let verdict = Verdict {
                    pid_tgid,
                    name_generation,
                    traced: u64::from(traced),
                    _padding: [0; 5],
                };
                unsafe { *slot = verdict };
            }
            traced
        }
    };
    traced && in_traced_cgroup()
}

/// The verdict of the excluded processes and of `--comm` on the calling
/// thread.
#[inline(always)]
fn process_traced(pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY (both lookups): the value is plain data, only tested for
    // presence.
    if unsafe { EXCLUDED_TGIDS.get(tgid) }.is_some() {
        return false;
    }
    if COMM_FILTER.load() == 0 {
        return true;
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    unsafe { TRACED_COMMS.get(comm) }.is_some()
}

/// Whether the calling task is in the `--cgroup` (or there is none).
#[inline(always)]
fn in_traced_cgroup() -> bool {
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
