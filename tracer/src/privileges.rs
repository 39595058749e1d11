//! Which capabilities alloctrace needs, checked before anything is loaded,
//! so that a missing one reads as one line naming it rather than as a BPF
//! or `/proc` error from deep inside attaching.
//!
//! alloctrace does not need to be root: a user (or a service unit, or a
//! container) holding the capabilities below works the same. Each was
//! measured by dropping it with `setpriv` as uid 65534 while tracing a
//! process of another user (kernel 6.18):
//!
//! - `CAP_BPF`: creating the rings and maps ("failed to create map").
//! - `CAP_PERFMON`: loading the uprobe and tracepoint programs
//!   (`BPF_PROG_LOAD` returns EPERM) and opening the uprobe perf events.
//! - `CAP_SYS_PTRACE`: reading another user's `/proc/PID/maps` and opening
//!   its files through `/proc/PID/root` (ptrace-mode read access).
//! - `CAP_DAC_READ_SEARCH`: reading executables and libraries whose mode
//!   lets their owner alone read them (a 0711 binary symbolizes to nothing
//!   without it).
//! - `CAP_DAC_OVERRIDE`, with `--pid` and launch mode only: writing the
//!   target's forked children's `/proc/PID/mem` to take the inherited
//!   breakpoints out (the file is 0600, owned by the child's user). Without
//!   it the children would trap into the kernel on every allocator call
//!   (~1.2 µs per malloc+free, README "Threads and forks"). Host-wide probes
//!   cover every process, children included, so `--all` never writes.
//!
//! `CAP_SYS_ADMIN` stands for `CAP_BPF` and `CAP_PERFMON` (kernels before
//! 5.8 have only it). `CAP_CHECKPOINT_RESTORE` is wanted, not required: it
//! opens `/proc/PID/map_files`, which reaches libraries deleted or replaced
//! since the process mapped them (a package upgrade); without it those are
//! read by path, and a replaced one may not symbolize. `RLIMIT_MEMLOCK`
//! needs nothing: kernels since 5.11 charge BPF maps to the memory cgroup.

use caps::{CapSet, Capability};

/// The capabilities a run needs that the process lacks, in the order the
/// README lists them; empty when it can run.
pub fn missing(host_wide: bool, has: impl Fn(Capability) -> bool) -> Vec<Capability> {
    let admin = has(Capability::CAP_SYS_ADMIN);
    let mut needed = vec![
        Capability::CAP_BPF,
        Capability::CAP_PERFMON,
        Capability::CAP_SYS_PTRACE,
        Capability::CAP_DAC_READ_SEARCH,
    ];
    if !host_wide {
        needed.push(Capability::CAP_DAC_OVERRIDE);
    }
    needed
        .into_iter()
        .filter(|&cap| {
            let stood_for_by_admin =
                admin && matches!(cap, Capability::CAP_BPF | Capability::CAP_PERFMON);
            // CAP_DAC_OVERRIDE lets a process read and search what
            // CAP_DAC_READ_SEARCH would.
            let implied =
                cap == Capability::CAP_DAC_READ_SEARCH && has(Capability::CAP_DAC_OVERRIDE);
            !(has(cap) || stood_for_by_admin || implied)
        })
        .collect()
}

/// Fails with one line naming every missing capability; warns once when
/// the wanted-but-optional `CAP_CHECKPOINT_RESTORE` is absent.
pub fn check(host_wide: bool) -> anyhow::Result<()> {
    let missing = missing(host_wide, effective);
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "missing capabilit{} {} in the effective set: run as root, or grant them \
             (e.g. AmbientCapabilities= in a unit, --cap-add in a container; README: \
             \"Running it on a fleet\")",
            if missing.len() == 1 { "y" } else { "ies" },
            names.join(", ")
        );
    }
    if !effective(Capability::CAP_CHECKPOINT_RESTORE) && !effective(Capability::CAP_SYS_ADMIN) {
        log::warn!(
            "without CAP_CHECKPOINT_RESTORE, libraries replaced since a process mapped them \
             are read by path and may not symbolize"
        );
    }
    Ok(())
}

/// A capability this kernel does not know (CAP_BPF before 5.8) counts as
/// absent; CAP_SYS_ADMIN then stands for it.
fn effective(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    fn with(caps: &[Capability]) -> impl Fn(Capability) -> bool + '_ {
        move |cap| caps.contains(&cap)
    }

    #[test]
    fn the_fleet_set_is_enough_in_every_mode() {
        let fleet = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_OVERRIDE];
        assert_eq!(missing(false, with(&fleet)), []);
        assert_eq!(missing(true, with(&fleet)), []);
    }

    #[test]
    fn host_wide_needs_read_search_but_not_override() {
        let host = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];
        assert_eq!(missing(true, with(&host)), []);
        assert_eq!(missing(false, with(&host)), [CAP_DAC_OVERRIDE]);
    }

    #[test]
    fn sys_admin_stands_for_bpf_and_perfmon_only() {
        let old_kernel = [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_OVERRIDE];
        assert_eq!(missing(false, with(&old_kernel)), []);
        assert_eq!(
            missing(true, with(&[CAP_SYS_ADMIN])),
            [CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]
        );
    }

    #[test]
    fn nothing_held_names_every_capability_in_order() {
        assert_eq!(
            missing(false, with(&[])),
            [
                CAP_BPF,
                CAP_PERFMON,
                CAP_SYS_PTRACE,
                CAP_DAC_READ_SEARCH,
                CAP_DAC_OVERRIDE
            ]
        );
    }
}
