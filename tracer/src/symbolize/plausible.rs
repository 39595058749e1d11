//! Which frames of a walked stack are return addresses at all: a walk
//! through code without frame pointers (`--unwind fp` on such code, a
//! process whose tables are not loaded yet, a stale frame pointer) reads
//! whatever rbp points at, and shows it as frames. Each frame past the
//! leaf must lie in an executable mapping of the process (compiled code,
//! or JIT code in anonymous memory), or be named by the runtime's perf
//! map; the stack ends before the first that is not.
//!
//! The mappings are the ones the symbolizer read (see
//! `ProcessSymbolizer::read_maps`). When they were read before the event
//! and the process lives, they are read again first (code mapped since,
//! such as a library `dlopen`ed), at most once per `MAPS_REREAD_PERIOD`,
//! except for a walk the kernel marked as reaching unlisted code
//! (`tracer_ebpf::INLINE_STACK_PARTIAL`), which says they changed. A
//! process that has exited is judged by the maps read while it ran; one
//! whose maps were never read keeps its frames.

use super::ProcessSymbolizer;
use crate::maps;

impl ProcessSymbolizer {
    /// How many of `frames` (leaf first, sent by an event stamped `at_ns`)
    /// to keep: all, or up to the first past the leaf that is not code of
    /// the process. The leaf is the program counter, not a walked frame,
    /// and is always kept. `maps_changed`: the kernel's walk met code its
    /// list of mappings lacked.
    pub fn plausible_frames(&mut self, frames: &[u64], at_ns: u64, maps_changed: bool) -> usize {
        if self.kernel.is_some() || self.mappings.is_empty() {
            return frames.len();
        }
        let Some(first) = self.first_implausible(frames) else {
            return frames.len();
        };
        let reread_allowed =
            maps_changed || self.maps_read_at.elapsed() >= super::MAPS_REREAD_PERIOD;
        if self.target_alive && self.maps_read_ns < at_ns && reread_allowed {
            self.read_maps();
            return self.first_implausible(frames).unwrap_or(frames.len());
        }
        first
    }

    /// The index of the first frame past the leaf that is in no executable
    /// mapping and not named as JIT code.
    fn first_implausible(&self, frames: &[u64]) -> Option<usize> {
        let plausible = |address: u64| {
            maps::is_code(&self.mappings, address)
                // One byte back, into the call (as when symbolizing).
                || self.perf_map.find(address.saturating_sub(1)).is_some()
        };
        frames
            .iter()
            .skip(1)
            .position(|&address| !plausible(address))
            .map(|index| index + 1)
    }
}
