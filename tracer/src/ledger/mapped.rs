//! The ledger of mapped memory: the anonymous private mappings a process
//! made while traced, as a map of address ranges, each piece remembering
//! the stack that mapped it and whether it counts.
//!
//! Mappings are ranges, not blocks: a `munmap` may take the middle of a
//! mapping (splitting it) or its ends (trimming it), `mremap` moves or
//! resizes part of one (or, with `MREMAP_DONTUNMAP`, copies its layout to a
//! new mapping of its own and keeps the old one), and `mmap` with `MAP_FIXED` replaces whatever lay
//! beneath. Every operation here first cuts the pieces it touches at its
//! own bounds, then acts on whole pieces, so no rule needs to know how a
//! piece came to be.
//!
//! What counts is *committed* memory, not address space: a reservation
//! (`PROT_NONE`, or `MAP_NORESERVE`) counts nothing until `mprotect` (or an
//! `mmap` with `MAP_FIXED`) makes part of it accessible, and nothing again
//! once `mprotect(PROT_NONE)` gives it back. That is how glibc grows its
//! 64 MiB per-thread arenas and how the JVM and .NET reserve their heaps:
//! only what they commit is memory the process holds. `madvise(DONTNEED)`
//! is deliberately not an unmap: the range stays committed and usable (the
//! next touch faults in zeroed pages), so it still counts, as the kernel's
//! `Committed_AS` counts it.
//!
//! The program break (`brk`) is one more range, from where the break was
//! when first seen to where it is now: growth made by the process itself
//! (a custom allocator calling `brk` or `sbrk`) is a piece of the stack
//! that moved it; growth made inside an allocator call (glibc's main arena,
//! whose blocks the heap ledger counts) only moves the break, and counts
//! nothing here. Shrinking the break takes back whatever lies above it. Like
//! mappings, the break counts in whole pages: the kernel maps the heap up
//! to the page-rounded break. Every `brk` call tells where the break is
//! (the kernel returns it, moved or not), so the break is known from the
//! first call on: a process started under tracing makes one (`brk(NULL)`,
//! by the dynamic loader or libc) before any growth; for one attached to,
//! the caller gives the break read from `/proc` ([`MappedLedger::set_break`]).
//!
//! Pieces count against the shared [`Budget`] of `--max-tracked`, one
//! entry each, like heap blocks: beyond it new mappings are dropped and
//! counted. Dropping the ledger (a process that ended) gives them back.
//!
//! Which mappings are offered here (anonymous and private only; those the
//! allocator makes inside its own calls are left to the heap ledger) is the
//! caller's choice. Plain data: it knows neither aya nor blazesym.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tracer_ebpf::{Event, EventKind};

use super::{Budget, StackId};

/// One piece of a traced mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    end: u64,
    stack: StackId,
    /// Accessible and backed: counts as held memory.
    committed: bool,
    /// When the mapping was made (CLOCK_MONOTONIC ns).
    mapped_ns: u64,
}

/// Running counters of the mapped-memory ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MappedTotals {
    /// Mappings made (`mmap` calls tracked).
    pub maps: u64,
    /// `munmap` calls that removed tracked memory.
    pub unmaps: u64,
    /// Committed bytes outstanding.
    pub outstanding_bytes: u64,
    /// Pieces of mappings holding committed bytes.
    pub outstanding_count: u64,
    /// Bytes unmapped (or moved away) that no tracked mapping covered:
    /// mappings made before tracing began, or by the allocator itself.
    pub untracked_unmapped_bytes: u64,
    /// Calls to `brk` that moved the break outside any allocator call.
    pub break_moves: u64,
    /// Mappings (or break growth) not tracked because the `--max-tracked`
    /// budget was spent, and their bytes.
    pub dropped_maps: u64,
    pub dropped_bytes: u64,
}

/// Committed mapped memory of one stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappedUsage {
    pub bytes: u64,
    /// Pieces of mappings (a mapping split by a partial unmap is two).
    pub count: u64,
    pub oldest_ns: u64,
}

#[derive(Debug)]
pub struct MappedLedger {
    /// Pieces by start address; they never overlap.
    pieces: BTreeMap<u64, Piece>,
    totals: MappedTotals,
    /// The page-rounded program break, once known.
    program_break: Option<u64>,
    budget: Budget,
    /// Pieces counted in `budget`.
    budgeted: u64,
}

impl MappedLedger {
    pub fn new(budget: Budget) -> Self {
        Self {
            pieces: BTreeMap::new(),
            totals: MappedTotals::default(),
            program_break: None,
            budget,
            budgeted: 0,
        }
    }

    /// Applies one mapping event (see `tracer_ebpf::EventKind::Map` and
    /// after); other events are not its business.
    pub fn apply(&mut self, event: &Event, stack: StackId) {
        self.apply_event(event, stack);
        self.settle_budget();
    }

    fn apply_event(&mut self, event: &Event, stack: StackId) {
        match event.kind() {
            Some(EventKind::Map) => self.map(
                event.addr,
                event.size,
                event.old_addr != 0,
                stack,
                event.timestamp_ns,
            ),
            Some(EventKind::Unmap) => self.unmap(event.addr, event.size),
            Some(EventKind::Remap) => {
                self.remap(event.old_addr, event.stack_hash, event.addr, event.size)
            }
            Some(EventKind::RemapKeep) => self.remap_keeping(
                event.old_addr,
                event.size,
                event.addr,
                stack,
                event.timestamp_ns,
            ),
            Some(EventKind::Protect) => self.protect(event.addr, event.size, event.old_addr != 0),
            Some(EventKind::Brk) => self.move_break(
                event.addr,
                (event.old_addr == 0).then_some(stack),
                event.timestamp_ns,
            ),
            Some(EventKind::Exec) => self.clear(),
            _ => {}
        }
    }

    /// The break as the process had it before any event (read from
    /// `/proc` when attaching to a running process), unless a `brk` call
    /// told it already.
    pub fn set_break(&mut self, program_break: u64) {
        if self.program_break.is_none() {
            self.program_break = Some(page_up(program_break));
        }
    }

    /// `brk` left the break at `now_at`; growth from `stack` (`None`: the
    /// allocator's own) is a new piece, a shrink takes back what lay above.
    pub fn move_break(&mut self, now_at: u64, stack: Option<StackId>, now_ns: u64) {
        let now_at = page_up(now_at);
        let Some(was_at) = self.program_break.replace(now_at) else {
            return;
        };
        if stack.is_some() && now_at != was_at {
            self.totals.break_moves += 1;
        }
        if now_at < was_at {
            self.take(now_at, was_at);
        } else if let Some(stack) = stack
            && now_at > was_at
        {
            self.map(was_at, now_at - was_at, true, stack, now_ns);
        }
    }

    /// A new mapping of `len` bytes at `start` from `stack`, replacing
    /// whatever was mapped there (`MAP_FIXED`, or an address the kernel
    /// reused). `committed` is false for a reservation.
    pub fn map(&mut self, start: u64, len: u64, committed: bool, stack: StackId, now_ns: u64) {
        let Some(end) = end_of(start, len) else {
            return;
        };
        // Whatever lay beneath is gone; it was replaced, not unmapped.
        self.take(start, end);
        if self.budget.is_spent() {
            self.totals.dropped_maps += 1;
            self.totals.dropped_bytes += end - start;
            return;
        }
        self.insert(
            start,
            Piece {
                end,
                stack,
                committed,
                mapped_ns: now_ns,
            },
        );
        self.totals.maps += 1;
    }

    /// `munmap(start, len)`: the covered parts of tracked pieces are gone.
    pub fn unmap(&mut self, start: u64, len: u64) {
        let Some(end) = end_of(start, len) else {
            return;
        };
        let taken = self.take(start, end);
        let tracked: u64 = taken.iter().map(|(s, p)| p.end - s).sum();
        self.totals.untracked_unmapped_bytes += (end - start) - tracked;
        if !taken.is_empty() {
            self.totals.unmaps += 1;
        }
    }

    /// `mprotect(start, len, prot)`: the covered parts of tracked pieces
    /// count when made accessible, and stop counting at `PROT_NONE`.
    pub fn protect(&mut self, start: u64, len: u64, accessible: bool) {
        let Some(end) = end_of(start, len) else {
            return;
        };
        for (piece_start, mut piece) in self.take(start, end) {
            piece.committed = accessible;
            self.insert(piece_start, piece);
        }
    }

    /// `mremap(old, old_len, new_len)` that returned `new`: the tracked
    /// parts of the old range move to `new` (possibly the same address),
    /// cut to `new_len`; growth beyond `old_len` belongs to the stack of the
    /// piece that ended the old range and counts as it does.
    pub fn remap(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let (Some(old_end), Some(new_end)) = (end_of(old, old_len), end_of(new, new_len)) else {
            return;
        };
        let moved = self.take(old, old_end);
        let tracked: u64 = moved.iter().map(|(s, p)| p.end - s).sum();
        self.totals.untracked_unmapped_bytes += (old_end - old) - tracked;
        // The kernel unmaps whatever lay at the destination.
        self.take(new, new_end);
        for (start, piece) in moved {
            let start = start - old + new;
            // The piece that ended the old range takes the growth.
            let end = if piece.end == old_end && new_len > old_len {
                new_end
            } else {
                (piece.end - old + new).min(new_end)
            };
            if start < end {
                self.insert(start, Piece { end, ..piece });
            }
        }
    }

    /// `mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)` from
    /// `stack` that returned `new`: the pages of the old range moved to
    /// `new`, a new mapping of that call's, which counts where the old range
    /// did (a reservation stays one); the old range stays mapped, and keeps
    /// counting as it did. It holds no page any more (it reads as zero-fill),
    /// but, as after `madvise(DONTNEED)`, it is memory the process may touch
    /// at any time, and the kernel keeps it charged to `Committed_AS` until
    /// it is unmapped (measured on 6.18: +1 GiB at the `mremap` of a 1 GiB
    /// mapping, -1 GiB at each `munmap`). Parts of the old range the ledger
    /// does not track (mapped before tracing, or file-backed) give nothing.
    pub fn remap_keeping(&mut self, old: u64, len: u64, new: u64, stack: StackId, now_ns: u64) {
        let (Some(old_end), Some(new_end)) = (end_of(old, len), end_of(new, len)) else {
            return;
        };
        let copied = self.runs(old, old_end);
        // With MREMAP_FIXED, whatever lay at the destination is unmapped.
        self.take(new, new_end);
        for (start, end, committed) in copied {
            self.map(start - old + new, end - start, committed, stack, now_ns);
        }
    }

    /// The tracked parts of `[start, end)`, clipped to it, as runs of
    /// adjacent pieces that count alike: `(start, end, committed)`.
    fn runs(&self, start: u64, end: u64) -> Vec<(u64, u64, bool)> {
        let first = self
            .pieces
            .range(..=start)
            .next_back()
            .map_or(start, |(&first, _)| first);
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        for (&piece_start, piece) in self.pieces.range(first..end) {
            let (from, to) = (piece_start.max(start), piece.end.min(end));
            if from >= to {
                continue;
            }
            match runs.last_mut() {
                Some(last) if last.1 == from && last.2 == piece.committed => last.1 = to,
                _ => runs.push((from, to, piece.committed)),
            }
        }
        runs
    }

    /// The process replaced its program or exited: nothing it mapped
    /// remains.
    pub fn clear(&mut self) {
        self.pieces.clear();
        self.program_break = None;
        self.totals.outstanding_bytes = 0;
        self.totals.outstanding_count = 0;
        self.settle_budget();
    }

    /// Keeps the pieces held counted in the shared budget.
    fn settle_budget(&mut self) {
        let held = self.pieces.len() as u64;
        if held > self.budgeted {
            self.budget.add(held - self.budgeted);
        } else {
            self.budget.sub(self.budgeted - held);
        }
        self.budgeted = held;
    }

    pub fn totals(&self) -> MappedTotals {
        self.totals
    }

    /// Committed bytes by stack.
    pub fn by_stack(&self) -> HashMap<StackId, MappedUsage> {
        let mut usage: HashMap<StackId, MappedUsage> = HashMap::new();
        for (start, piece) in self.committed() {
            let entry = usage.entry(piece.stack).or_insert(MappedUsage {
                oldest_ns: u64::MAX,
                ..MappedUsage::default()
            });
            entry.bytes += piece.end - start;
            entry.count += 1;
            entry.oldest_ns = entry.oldest_ns.min(piece.mapped_ns);
        }
        usage
    }

    fn committed(&self) -> impl Iterator<Item = (u64, &Piece)> {
        self.pieces
            .iter()
            .filter(|(_, piece)| piece.committed)
            .map(|(&start, piece)| (start, piece))
    }

    /// Removes and returns the parts of pieces within `[start, end)`,
    /// leaving the parts outside in place.
    fn take(&mut self, start: u64, end: u64) -> Vec<(u64, Piece)> {
        self.cut_at(start);
        self.cut_at(end);
        let starts: Vec<u64> = self.pieces.range(start..end).map(|(&s, _)| s).collect();
        let taken: Vec<(u64, Piece)> = starts
            .into_iter()
            .filter_map(|s| self.pieces.remove(&s).map(|piece| (s, piece)))
            .collect();
        for (start, piece) in &taken {
            self.count(*start, piece, false);
        }
        taken
    }

    /// Splits the piece that straddles `at` into two at `at`.
    fn cut_at(&mut self, at: u64) {
        let Some((&start, &piece)) = self.pieces.range(..at).next_back() else {
            return;
        };
        if piece.end > at {
            self.pieces.insert(start, Piece { end: at, ..piece });
            self.pieces.insert(at, piece);
            if piece.committed {
                self.totals.outstanding_count += 1;
            }
        }
    }

    fn insert(&mut self, start: u64, piece: Piece) {
        self.pieces.insert(start, piece);
        self.count(start, &piece, true);
    }

    /// Keeps the outstanding totals as `piece` (at `start`) comes or goes.
    fn count(&mut self, start: u64, piece: &Piece, added: bool) {
        if !piece.committed {
            return;
        }
        let totals = &mut self.totals;
        if added {
            totals.outstanding_bytes += piece.end - start;
            totals.outstanding_count += 1;
        } else {
            totals.outstanding_bytes -= piece.end - start;
            totals.outstanding_count -= 1;
        }
    }
}

impl Drop for MappedLedger {
    /// A ledger that ends (a process that exited) gives its pieces back.
    fn drop(&mut self) {
        self.budget.sub(self.budgeted);
    }
}

const PAGE: u64 = 4096;

/// The end of `[start, start + len)`, page-rounded as the kernel rounds
/// lengths; `None` for an empty or overflowing range.
fn end_of(start: u64, len: u64) -> Option<u64> {
    let len = len.checked_add(PAGE - 1)? & !(PAGE - 1);
    (len > 0).then_some(start.checked_add(len)?)
}

/// `address` rounded up to a page, as the kernel maps the heap up to the
/// break.
fn page_up(address: u64) -> u64 {
    address.saturating_add(PAGE - 1) & !(PAGE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0x7f00_0000_0000;

    fn stack(n: u32) -> StackId {
        StackId::from(n)
    }

    fn bytes_of(ledger: &MappedLedger, n: u32) -> u64 {
        ledger.by_stack().get(&stack(n)).map_or(0, |u| u.bytes)
    }

    #[test]
    fn a_mapping_counts_until_unmapped() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 10 * PAGE, true, stack(1), 5);
        assert_eq!(ledger.totals().outstanding_bytes, 10 * PAGE);
        assert_eq!(
            ledger.by_stack()[&stack(1)],
            MappedUsage {
                bytes: 10 * PAGE,
                count: 1,
                oldest_ns: 5
            }
        );
        ledger.unmap(A, 10 * PAGE);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
        assert!(ledger.by_stack().is_empty());
    }

    #[test]
    fn unmapping_the_middle_splits_and_the_ends_trim() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 10 * PAGE, true, stack(1), 0);
        ledger.unmap(A + 4 * PAGE, 2 * PAGE);
        assert_eq!(ledger.totals().outstanding_bytes, 8 * PAGE);
        assert_eq!(ledger.totals().outstanding_count, 2);
        ledger.unmap(A, PAGE);
        ledger.unmap(A + 9 * PAGE, PAGE);
        assert_eq!(bytes_of(&ledger, 1), 6 * PAGE);
        // The rest, in one call spanning the holes: the ledger cannot tell
        // a hole from memory mapped before tracing, so both count apart.
        ledger.unmap(A, 10 * PAGE);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
        assert_eq!(ledger.totals().untracked_unmapped_bytes, 4 * PAGE);
    }

    #[test]
    fn lengths_round_up_to_pages_as_the_kernel_rounds_them() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 100, true, stack(1), 0);
        assert_eq!(ledger.totals().outstanding_bytes, PAGE);
        ledger.unmap(A, 1);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
    }

    #[test]
    fn unmapping_what_was_never_tracked_is_counted_apart() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 2 * PAGE, true, stack(1), 0);
        ledger.unmap(A + PAGE, 3 * PAGE);
        assert_eq!(ledger.totals().untracked_unmapped_bytes, 2 * PAGE);
        assert_eq!(ledger.totals().outstanding_bytes, PAGE);
    }

    #[test]
    fn map_fixed_over_a_mapping_replaces_what_it_covers() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 8 * PAGE, true, stack(1), 0);
        ledger.map(A + 2 * PAGE, 2 * PAGE, true, stack(2), 1);
        assert_eq!(bytes_of(&ledger, 1), 6 * PAGE);
        assert_eq!(bytes_of(&ledger, 2), 2 * PAGE);
        assert_eq!(ledger.totals().outstanding_bytes, 8 * PAGE);
    }

    #[test]
    fn a_reservation_counts_only_what_is_committed() {
        // glibc's arena, a JVM heap: reserve, then commit in steps.
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 64 << 20, false, stack(1), 0);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
        ledger.protect(A, 132 * 1024, true);
        assert_eq!(bytes_of(&ledger, 1), 132 * 1024);
        ledger.protect(A + 132 * 1024, 4 * PAGE, true);
        assert_eq!(bytes_of(&ledger, 1), 132 * 1024 + 4 * PAGE);
        // Given back (an arena shrinking), then released whole.
        ledger.protect(A + PAGE, 132 * 1024 + 3 * PAGE, false);
        assert_eq!(bytes_of(&ledger, 1), PAGE);
        ledger.unmap(A, 64 << 20);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
    }

    #[test]
    fn map_fixed_commits_part_of_a_reservation_under_its_own_stack() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 100 * PAGE, false, stack(1), 0);
        ledger.map(A + 10 * PAGE, 5 * PAGE, true, stack(2), 1);
        assert_eq!(bytes_of(&ledger, 1), 0);
        assert_eq!(bytes_of(&ledger, 2), 5 * PAGE);
        // Decommitted by mapping PROT_NONE over it again.
        ledger.map(A + 10 * PAGE, 5 * PAGE, false, stack(1), 2);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
    }

    #[test]
    fn protecting_untracked_memory_tracks_nothing() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.protect(A, 10 * PAGE, true);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
    }

    #[test]
    fn mremap_grows_in_place_under_the_same_stack() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 4 * PAGE, true, stack(1), 0);
        ledger.remap(A, 4 * PAGE, A, 10 * PAGE);
        assert_eq!(bytes_of(&ledger, 1), 10 * PAGE);
        assert_eq!(ledger.totals().outstanding_count, 1);
        ledger.unmap(A, 10 * PAGE);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
    }

    #[test]
    fn mremap_moves_and_shrinks() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        let b = A + (1 << 30);
        ledger.map(A, 8 * PAGE, true, stack(1), 0);
        ledger.remap(A, 8 * PAGE, b, 16 * PAGE);
        ledger.unmap(A, 8 * PAGE);
        assert_eq!(ledger.totals().untracked_unmapped_bytes, 8 * PAGE);
        assert_eq!(bytes_of(&ledger, 1), 16 * PAGE);
        ledger.remap(b, 16 * PAGE, b, 3 * PAGE);
        assert_eq!(bytes_of(&ledger, 1), 3 * PAGE);
        ledger.unmap(b, 3 * PAGE);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
    }

    #[test]
    fn mremap_of_part_of_a_mapping_moves_that_part_only() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        let b = A + (1 << 30);
        ledger.map(A, 8 * PAGE, true, stack(1), 0);
        ledger.remap(A + 2 * PAGE, 2 * PAGE, b, 2 * PAGE);
        assert_eq!(bytes_of(&ledger, 1), 8 * PAGE);
        ledger.unmap(b, 2 * PAGE);
        assert_eq!(bytes_of(&ledger, 1), 6 * PAGE);
        assert_eq!(ledger.totals().outstanding_count, 2);
    }

    #[test]
    fn a_pool_that_maps_and_unmaps_in_pieces_shows_what_it_holds() {
        // A pool maps a slab of 16 pages, hands out pages and returns the
        // ones it frees one by one; it ends holding pages 3, 7 and 8.
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 16 * PAGE, true, stack(1), 0);
        for page in (0..16).filter(|p| ![3, 7, 8].contains(p)) {
            ledger.unmap(A + page * PAGE, PAGE);
        }
        assert_eq!(bytes_of(&ledger, 1), 3 * PAGE);
        assert_eq!(ledger.totals().outstanding_count, 2);
        assert_eq!(ledger.totals().untracked_unmapped_bytes, 0);
    }

    #[test]
    fn mremap_dontunmap_keeps_the_old_range_and_gives_the_new_one_its_stack() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        let b = A + (1 << 30);
        ledger.map(A, 16 * PAGE, true, stack(1), 0);
        ledger.remap_keeping(A, 16 * PAGE, b, stack(2), 1);
        assert_eq!(bytes_of(&ledger, 1), 16 * PAGE);
        assert_eq!(bytes_of(&ledger, 2), 16 * PAGE);
        assert_eq!(ledger.totals().maps, 2);
        // Both ranges are tracked: unmapping parts of either is no stranger.
        ledger.unmap(A, 6 * PAGE);
        ledger.unmap(b + 12 * PAGE, 4 * PAGE);
        assert_eq!(bytes_of(&ledger, 1), 10 * PAGE);
        assert_eq!(bytes_of(&ledger, 2), 12 * PAGE);
        assert_eq!(ledger.totals().untracked_unmapped_bytes, 0);
        assert_eq!(ledger.totals().outstanding_count, 2);
    }

    #[test]
    fn mremap_dontunmap_copies_what_it_covers_as_it_counted() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        let b = A + (1 << 30);
        // Part of a mapping: the old mapping stays whole, one piece.
        ledger.map(A, 8 * PAGE, true, stack(1), 0);
        ledger.remap_keeping(A + 2 * PAGE, 2 * PAGE, b, stack(2), 1);
        assert_eq!(bytes_of(&ledger, 1), 8 * PAGE);
        assert_eq!(bytes_of(&ledger, 2), 2 * PAGE);
        assert_eq!(ledger.totals().outstanding_count, 2);
        // A reservation moves as one, then is committed in part.
        let r = A + (2 << 30);
        let s = A + (3 << 30);
        ledger.map(r, 16 * PAGE, false, stack(3), 2);
        ledger.remap_keeping(r, 16 * PAGE, s, stack(4), 3);
        assert_eq!(bytes_of(&ledger, 4), 0);
        ledger.protect(s, 4 * PAGE, true);
        assert_eq!(bytes_of(&ledger, 4), 4 * PAGE);
        // Pieces of two stacks, committed alike, become one mapping of the
        // call; memory the ledger never saw mapped gives nothing.
        let c = A + (4 << 30);
        let d = A + (5 << 30);
        ledger.map(c, 2 * PAGE, true, stack(5), 4);
        ledger.map(c + 2 * PAGE, 2 * PAGE, true, stack(6), 4);
        ledger.remap_keeping(c, 6 * PAGE, d, stack(7), 5);
        assert_eq!(
            ledger.by_stack()[&stack(7)],
            MappedUsage {
                bytes: 4 * PAGE,
                count: 1,
                oldest_ns: 5
            }
        );
        // Over a tracked mapping (MREMAP_FIXED): it is replaced.
        ledger.remap_keeping(c, 2 * PAGE, b, stack(8), 6);
        assert_eq!(bytes_of(&ledger, 2), 0);
        assert_eq!(bytes_of(&ledger, 8), 2 * PAGE);
    }

    const BREAK: u64 = 0x5555_0000_0000;

    #[test]
    fn break_growth_of_the_process_counts_and_the_allocator_s_does_not() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        // brk(NULL) at start-up: where the break is, nothing moved.
        ledger.move_break(BREAK, Some(stack(1)), 0);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
        // glibc grows its main arena, inside malloc.
        ledger.move_break(BREAK + 33 * PAGE, None, 1);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
        // A custom allocator grows it by 10 pages and a bit: whole pages.
        ledger.move_break(BREAK + 43 * PAGE + 100, Some(stack(2)), 2);
        assert_eq!(bytes_of(&ledger, 2), 11 * PAGE);
        // Then gives back 5 of them; then glibc trims below it all.
        ledger.move_break(BREAK + 39 * PAGE, Some(stack(2)), 3);
        assert_eq!(bytes_of(&ledger, 2), 6 * PAGE);
        assert_eq!(ledger.totals().break_moves, 2);
        ledger.move_break(BREAK + 30 * PAGE, None, 4);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
    }

    #[test]
    fn the_first_break_seen_only_sets_where_it_is() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.move_break(BREAK + 8 * PAGE, Some(stack(1)), 0);
        assert_eq!(ledger.totals().outstanding_bytes, 0);
        ledger.move_break(BREAK + 9 * PAGE, Some(stack(1)), 1);
        assert_eq!(bytes_of(&ledger, 1), PAGE);
        // A break read from /proc afterwards does not override the events'.
        ledger.set_break(BREAK);
        ledger.move_break(BREAK + 10 * PAGE, Some(stack(1)), 2);
        assert_eq!(bytes_of(&ledger, 1), 2 * PAGE);
    }

    #[test]
    fn pieces_count_in_the_shared_budget_and_are_given_back() {
        let budget = Budget::new(3);
        let mut first = MappedLedger::new(budget.clone());
        first.map(A, 4 * PAGE, true, stack(1), 0);
        first.settle_budget();
        first.unmap(A + PAGE, PAGE);
        first.settle_budget();
        assert_eq!(budget.used(), 2);
        let mut second = MappedLedger::new(budget.clone());
        second.map(A, PAGE, true, stack(2), 0);
        second.settle_budget();
        second.map(A + PAGE, PAGE, true, stack(2), 0);
        assert_eq!(second.totals().dropped_maps, 1);
        assert_eq!(second.totals().dropped_bytes, PAGE);
        drop(first);
        assert_eq!(budget.used(), 1);
    }

    #[test]
    fn exec_forgets_everything() {
        let mut ledger = MappedLedger::new(Budget::new(u64::MAX));
        ledger.map(A, 4 * PAGE, true, stack(1), 0);
        ledger.clear();
        assert_eq!(ledger.totals().outstanding_bytes, 0);
        assert!(ledger.by_stack().is_empty());
    }
}
