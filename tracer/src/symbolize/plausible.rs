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
//! (`tracer_ebpf::INLINE_STACK_PARTIAL`), which says they changed; a
//! stack cut on maps that were not re-read for that reason is sent again
//! by the kernel the next time it is walked, and judged again. A process
//! that has exited is judged by the maps read while it ran; one whose maps
//! were never read keeps its frames.

use super::ProcessSymbolizer;
use crate::maps;

/// Which frames of a stack to keep (see [`ProcessSymbolizer::plausible_frames`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plausible {
    /// How many, from the leaf.
    pub kept: usize,
    /// The cut was judged on maps that may predate the event (a re-read
    /// was due but had just been made): code mapped since may prove it
    /// wrong, so the caller asks the kernel to send the stack again.
    pub unsure: bool,
}

impl ProcessSymbolizer {
    /// How many of `frames` (leaf first, sent by an event stamped `at_ns`)
    /// to keep: all, or up to the first past the leaf that is not code of
    /// the process. The leaf is the program counter, not a walked frame,
    /// and is always kept. `maps_changed`: the kernel's walk met code its
    /// list of mappings lacked.
    pub fn plausible_frames(
        &mut self,
        frames: &[u64],
        at_ns: u64,
        maps_changed: bool,
    ) -> Plausible {
        let all = Plausible {
            kept: frames.len(),
            unsure: false,
        };
        if self.kernel.is_some() || self.mappings.is_empty() {
            return all;
        }
        let Some(first) = self.first_implausible(frames) else {
            return all;
        };
        let stale = self.target_alive && self.maps_read_ns < at_ns;
        if !stale {
            return Plausible {
                kept: first,
                unsure: false,
            };
        }
        if maps_changed || self.maps_read_at.elapsed() >= super::MAPS_REREAD_PERIOD {
            self.read_maps();
            let kept = self.first_implausible(frames).unwrap_or(frames.len());
            return Plausible {
                kept,
                unsure: false,
            };
        }
        Plausible {
            kept: first,
            unsure: true,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An address in this test binary's code, and one in no mapping.
    fn own_code() -> u64 {
        own_code as fn() -> u64 as usize as u64
    }
    const GARBAGE: u64 = 0x1234567;

    #[test]
    fn a_stack_ends_before_its_first_frame_outside_the_code() {
        let mut symbols = ProcessSymbolizer::new(std::process::id());
        let code = own_code();
        let frames = [code, code + 1, GARBAGE, code + 2];
        assert_eq!(symbols.plausible_frames(&frames, 0, false).kept, 2);
        assert_eq!(
            symbols.plausible_frames(&[code, code + 1], 0, false).kept,
            2
        );
    }

    #[test]
    fn a_cut_on_maps_older_than_the_event_is_unsure_until_they_are_read_again() {
        let mut symbols = ProcessSymbolizer::new(std::process::id());
        let code = own_code();
        let after_the_read = crate::clock::monotonic_ns();
        // Just read (as at creation): no re-read yet, so the cut is unsure.
        symbols.maps_read_at = std::time::Instant::now();
        let judged = symbols.plausible_frames(&[code, GARBAGE], after_the_read, false);
        assert_eq!(
            judged,
            Plausible {
                kept: 1,
                unsure: true
            }
        );
        // The kernel said the mappings changed: read again, and sure.
        let judged = symbols.plausible_frames(&[code, GARBAGE], after_the_read, true);
        assert_eq!(
            judged,
            Plausible {
                kept: 1,
                unsure: false
            }
        );
    }

    #[test]
    fn the_leaf_is_kept_whatever_it_is() {
        let mut symbols = ProcessSymbolizer::new(std::process::id());
        assert_eq!(
            symbols.plausible_frames(&[GARBAGE, GARBAGE], 0, false).kept,
            1
        );
    }

    #[test]
    fn an_exited_process_is_judged_by_the_maps_read_while_it_ran() {
        let mut symbols = ProcessSymbolizer::new(std::process::id());
        symbols.target_exited();
        let code = own_code();
        // Stamped long after the maps were read: no re-read once exited.
        let later = u64::MAX;
        let judged = symbols.plausible_frames(&[code, code, GARBAGE], later, true);
        let sure = Plausible {
            kept: 2,
            unsure: false,
        };
        assert_eq!(judged, sure);
    }

    #[test]
    fn a_process_whose_maps_were_never_read_keeps_its_frames() {
        // pid 0 is never read.
        let mut symbols = ProcessSymbolizer::new(0);
        assert_eq!(symbols.plausible_frames(&[1, GARBAGE, 2], 0, false).kept, 3);
    }
}
