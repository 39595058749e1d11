//! Stack identity: what the stack an event brought becomes, between the
//! events and the ledger.
//!
//! The kernel sends a stack's return addresses once, with the hash it files
//! them under, and afterwards only the hash (see `tracer_ebpf::STACK_HASH`);
//! a stack copy reaches this stage already unwound into addresses by the
//! ring reader. [`StackTable`] interns each distinct address list under one
//! [`StackId`], remembers which id each hash stands for, and keeps the
//! addresses for the symbolizer. It knows neither aya nor blazesym: it is
//! plain data, one table per traced process, and every rule is unit-tested.
//!
//! Its memory is bounded by [`StackBudget`] (`--max-stacks`): beyond it, the
//! caller evicts the stacks it holds nothing of ([`StackTable::evict`]),
//! least recently seen first. An evicted stack is forgotten by the kernel
//! too, so it is sent whole again if it recurs, and gets a new id; ids are
//! never reused, so nothing kept under an old id can be taken for another
//! stack. Hashes the kernel sent before it forgot them stay known for
//! [`RETIRING_NS`] more.

mod budget;

use std::{collections::HashMap, rc::Rc};

use foldhash::fast::FixedState;
use tracer_ebpf::{Event, STACK_HASH};

pub use self::budget::{Cuts, DEFAULT_MAX_STACKS, StackBudget, StackStats};
use crate::{clock::monotonic_ns, events::Carried};

/// One distinct stack of one process, or [`StackId::NONE`] for blocks whose
/// stack could not be collected (they are still counted, under no stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(u32);

impl StackId {
    /// No stack: unreadable user stack, or its hash arrived without the
    /// event that sent its frames (lost).
    pub const NONE: StackId = StackId(0);

    /// The id's number, for maps and tests; ids count up from 1, in the
    /// order stacks were first seen.
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn is_none(self) -> bool {
        self == Self::NONE
    }
}

impl From<u32> for StackId {
    fn from(id: u32) -> Self {
        Self(id)
    }
}

/// How long an evicted stack's hash still names its frames after its slot
/// in the kernel was emptied, on the events' clock: a program that found
/// the hash in the slot just before stamps its event just after. The
/// events are applied in timestamp order, so however far behind the reader
/// is, every event stamped before the slot was emptied is applied before
/// this runs out; 250 ms covers a program preempted between its look at
/// the slot and its timestamp. (What the table holds meanwhile grows with
/// the rate of evictions: ~150 bytes per stack evicted in the last 250 ms.)
pub const RETIRING_NS: u64 = 250_000_000;

/// One stack of the table.
struct Entry {
    /// Return addresses, leaf first.
    frames: Rc<[u64]>,
    /// Hashes the kernel sent it under (one, but for partial DWARF walks).
    hashes: Vec<u64>,
    /// Timestamp of the latest event that brought it.
    last_seen_ns: u64,
}

/// An evicted stack's frames, kept while its hash may still arrive.
struct Retiring {
    frames: Rc<[u64]>,
    until_ns: u64,
}

/// The stacks of one process.
pub struct StackTable {
    entries: HashMap<StackId, Entry, FixedState>,
    ids: HashMap<Rc<[u64]>, StackId, FixedState>,
    /// Ids of the stacks the kernel sent under a hash, by that hash. Looked
    /// up for nearly every event: foldhash rather than the standard
    /// library's SipHash, which made the aggregator benchmark's 1 M events
    /// cost 767 M instructions instead of 700 M (callgrind).
    hashed: HashMap<u64, StackId, FixedState>,
    retiring: HashMap<u64, Retiring, FixedState>,
    last_id: u32,
    budget: StackBudget,
}

impl Default for StackTable {
    fn default() -> Self {
        Self::new()
    }
}

impl StackTable {
    /// A table without bound.
    pub fn new() -> Self {
        Self::with_budget(StackBudget::unbounded())
    }

    /// A table whose stacks count against `budget`.
    pub fn with_budget(budget: StackBudget) -> Self {
        Self {
            entries: HashMap::default(),
            ids: HashMap::default(),
            hashed: HashMap::default(),
            retiring: HashMap::default(),
            last_id: 0,
            budget,
        }
    }

    /// The stack of `event`: the frames it carries, interned (and
    /// remembered under the hash the kernel sent them with), or the stack
    /// an earlier event sent under this event's hash ([`StackId::NONE`] if
    /// that event was lost, or the event has no stack).
    pub fn stack_of(&mut self, event: &Event, carried: Carried<'_>) -> StackId {
        let at_ns = event.timestamp_ns;
        match carried {
            Carried::Frames(frames) => {
                let id = self.intern_at(frames, at_ns);
                if event.stack_hash != 0 {
                    self.learn(event.stack_hash, id);
                }
                id
            }
            // The ring reader unwinds stack copies into frames before they
            // get here; without an unwinder a copy is no stack.
            Carried::StackCopy(_) => StackId::NONE,
            Carried::Nothing if event.stack_id == STACK_HASH => {
                self.by_hash(event.stack_hash, at_ns)
            }
            Carried::Nothing => StackId::NONE,
        }
    }

    /// The id of a stack given as return addresses, leaf first, shared by
    /// every identical stack so the ledger counts each distinct stack once.
    pub fn intern(&mut self, frames: &[u64]) -> StackId {
        self.intern_at(frames, 0)
    }

    /// [`Self::intern`] for an event stamped `at_ns`: the stack is not idle
    /// (see [`Self::evict`]) until events up to then are applied.
    pub fn intern_at(&mut self, frames: &[u64], at_ns: u64) -> StackId {
        if let Some(&id) = self.ids.get(frames) {
            self.touch(id, at_ns);
            return id;
        }
        // 2^32 - 1 distinct stacks in one process's life: none after.
        let Some(next) = self.last_id.checked_add(1) else {
            return StackId::NONE;
        };
        self.last_id = next;
        let id = StackId(next);
        let frames: Rc<[u64]> = Rc::from(frames);
        self.ids.insert(frames.clone(), id);
        self.entries.insert(
            id,
            Entry {
                frames,
                hashes: Vec::new(),
                last_seen_ns: at_ns,
            },
        );
        self.budget.added();
        id
    }

    /// The stack the kernel sent under `hash`, seen again at `at_ns`.
    fn by_hash(&mut self, hash: u64, at_ns: u64) -> StackId {
        if let Some(&id) = self.hashed.get(&hash) {
            self.touch(id, at_ns);
            return id;
        }
        // Evicted, and stamped before the kernel forgot it.
        let Some(retiring) = self.retiring.remove(&hash) else {
            return StackId::NONE;
        };
        let id = self.intern_at(&retiring.frames, at_ns);
        self.learn(hash, id);
        id
    }

    /// `hash` names stack `id` from now on.
    /// A hash the kernel was asked to send again ([`Self::send_again`])
    /// may come back with other frames: it then moves to their stack.
    fn learn(&mut self, hash: u64, id: StackId) {
        if let Some(before) = self.hashed.insert(hash, id)
            && before != id
            && let Some(entry) = self.entries.get_mut(&before)
        {
            entry.hashes.retain(|&other| other != hash);
        }
        self.retiring.remove(&hash);
        if let Some(entry) = self.entries.get_mut(&id)
            && !entry.hashes.contains(&hash)
        {
            entry.hashes.push(hash);
        }
    }

    /// Stack `id` is named by an event stamped `at_ns` (see
    /// [`Self::intern_at`]).
    pub fn touch(&mut self, id: StackId, at_ns: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.last_seen_ns = entry.last_seen_ns.max(at_ns);
        }
    }

    /// Evicts up to `count` stacks, least recently seen first, among those
    /// last seen at or before `applied_ns` (the latest event the caller has
    /// applied: a stack of an event still on its way is not idle) that
    /// `holds` says nothing is kept of. Returns their ids, for the caller
    /// to drop what it keeps under them.
    pub fn evict(
        &mut self,
        count: usize,
        applied_ns: u64,
        holds: impl Fn(StackId) -> bool,
    ) -> Vec<StackId> {
        self.finish_retiring(applied_ns);
        let mut idle: Vec<(u64, StackId)> = self
            .entries
            .iter()
            .filter(|(id, entry)| entry.last_seen_ns <= applied_ns && !holds(**id))
            .map(|(id, entry)| (entry.last_seen_ns, *id))
            .collect();
        if idle.len() > count {
            idle.select_nth_unstable(count);
            idle.truncate(count);
        }
        let until_ns = monotonic_ns() + RETIRING_NS;
        let mut evicted = Vec::with_capacity(idle.len());
        for (_, id) in idle {
            let Some(entry) = self.entries.remove(&id) else {
                continue;
            };
            self.ids.remove(&entry.frames);
            for hash in entry.hashes {
                self.hashed.remove(&hash);
                if let Some(kernel) = self.budget.kernel() {
                    kernel.forget(hash);
                }
                let frames = entry.frames.clone();
                self.retiring.insert(hash, Retiring { frames, until_ns });
            }
            evicted.push(id);
        }
        self.budget.evicted(evicted.len());
        evicted
    }

    /// Forgets the evicted stacks no event can name any more: their time
    /// is over by `applied_ns`, and the kernel did not take their slot
    /// back after it was emptied (the program that sent the frames writes
    /// the slot after the event; if it does so late, it is emptied again).
    fn finish_retiring(&mut self, applied_ns: u64) {
        let kernel = self.budget.kernel();
        self.retiring.retain(|&hash, retiring| {
            if retiring.until_ns > applied_ns {
                return true;
            }
            match kernel {
                Some(kernel) if kernel.remembers(hash) => {
                    kernel.forget(hash);
                    retiring.until_ns = monotonic_ns() + RETIRING_NS;
                    true
                }
                _ => false,
            }
        });
    }

    /// Makes the kernel send the frames hashed `hash` again the next time
    /// it walks that stack (their stack was made from a judgement that may
    /// change, see `symbolize::plausible`); meanwhile the hash keeps
    /// naming the stack it names.
    pub fn send_again(&self, hash: u64) {
        if let Some(kernel) = self.budget.kernel() {
            kernel.forget(hash);
        }
    }

    /// The return addresses of `stack`, leaf first (none for
    /// [`StackId::NONE`], an evicted stack or an id of another table).
    pub fn addresses(&self, stack: StackId) -> &[u64] {
        self.entries.get(&stack).map_or(&[], |entry| &entry.frames)
    }

    /// Every address of every stack held.
    pub fn all_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .values()
            .flat_map(|entry| entry.frames.iter().copied())
    }

    /// Distinct stacks held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The budget the table's stacks count against.
    pub fn budget(&self) -> &StackBudget {
        &self.budget
    }

    /// Evicted stacks whose hash may still arrive.
    pub fn retiring(&self) -> usize {
        self.retiring.len()
    }
}

impl Drop for StackTable {
    /// A table that ends (a process that exited) gives its stacks back.
    fn drop(&mut self) {
        self.budget.removed(self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{EventKind, INLINE_STACK, NO_STACK};

    use super::*;

    fn event_at(stack_id: i32, stack_hash: u64, timestamp_ns: u64) -> Event {
        Event {
            timestamp_ns,
            ..event(stack_id, stack_hash)
        }
    }

    fn event(stack_id: i32, stack_hash: u64) -> Event {
        Event {
            kind: EventKind::Alloc as u32,
            tid: 1,
            pid: 1,
            stack_id,
            size: 16,
            addr: 0x10,
            old_addr: 0,
            timestamp_ns: 1,
            stack_hash,
        }
    }

    #[test]
    fn a_hash_sent_again_with_other_frames_names_the_new_stack_only() {
        let mut table = StackTable::new();
        let cut = table.stack_of(&event_at(INLINE_STACK, 9, 10), Carried::Frames(&[5]));
        let whole = table.stack_of(&event_at(INLINE_STACK, 9, 20), Carried::Frames(&[5, 6]));
        assert_ne!(cut, whole);
        assert_eq!(
            table.stack_of(&event_at(STACK_HASH, 9, 30), Carried::Nothing),
            whole
        );
        // Evicting the first stack leaves the hash to the second.
        assert_eq!(table.evict(1, 40, |stack| stack == whole), [cut]);
        assert_eq!(
            table.stack_of(&event_at(STACK_HASH, 9, 50), Carried::Nothing),
            whole
        );
    }

    #[test]
    fn identical_stacks_share_one_id_and_different_ones_do_not() {
        let mut table = StackTable::new();
        let a = table.intern(&[1, 2, 3]);
        let b = table.intern(&[1, 2, 4]);
        assert_eq!(table.intern(&[1, 2, 3]), a);
        assert_ne!(a, b);
        assert!(!a.is_none() && !b.is_none());
        assert_eq!(table.addresses(b), [1, 2, 4]);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_hash_stands_for_the_frames_first_sent_under_it() {
        let mut table = StackTable::new();
        let sent = table.stack_of(&event(INLINE_STACK, 77), Carried::Frames(&[5, 6]));
        assert_eq!(
            table.stack_of(&event(STACK_HASH, 77), Carried::Nothing),
            sent
        );
    }

    #[test]
    fn a_hash_whose_frames_were_lost_and_a_missing_stack_are_no_stack() {
        let mut table = StackTable::new();
        assert_eq!(
            table.stack_of(&event(STACK_HASH, 78), Carried::Nothing),
            StackId::NONE
        );
        assert_eq!(
            table.stack_of(&event(NO_STACK, 0), Carried::Nothing),
            StackId::NONE
        );
        assert!(table.addresses(StackId::NONE).is_empty());
        assert!(table.addresses(StackId::from(9)).is_empty());
    }

    #[test]
    fn eviction_takes_the_least_recently_seen_idle_stacks_and_counts_them() {
        let budget = StackBudget::new(2, None);
        let mut table = StackTable::with_budget(budget.clone());
        let old = table.stack_of(&event_at(INLINE_STACK, 1, 10), Carried::Frames(&[1]));
        let held = table.stack_of(&event_at(INLINE_STACK, 2, 20), Carried::Frames(&[2]));
        let recent = table.stack_of(&event_at(INLINE_STACK, 3, 30), Carried::Frames(&[3]));
        let on_its_way = table.stack_of(&event_at(INLINE_STACK, 4, 90), Carried::Frames(&[4]));
        assert_eq!(budget.stats().stacks, 4);
        // 4 held, 2 allowed: 2 to evict (the low-water mark, an eighth
        // below 2, rounds to 2).
        assert_eq!(budget.excess(), 2);
        let evicted = table.evict(1, 50, |stack| stack == held);
        assert_eq!(evicted, [old]);
        let evicted = table.evict(5, 50, |stack| stack == held);
        assert_eq!(evicted, [recent]);
        assert!(table.addresses(old).is_empty());
        assert_eq!(table.addresses(held), [2]);
        assert_eq!(table.addresses(on_its_way), [4]);
        assert_eq!(
            budget.stats(),
            StackStats {
                stacks: 2,
                evicted: 2,
                cut: Cuts::default(),
            }
        );
        drop(table);
        assert_eq!(budget.stats().stacks, 0);
    }

    #[test]
    fn an_evicted_stack_that_recurs_is_a_new_stack_with_the_same_frames() {
        let mut table = StackTable::new();
        let first = table.stack_of(&event_at(INLINE_STACK, 7, 10), Carried::Frames(&[5, 6]));
        assert_eq!(table.evict(1, 10, |_| false), [first]);
        // Sent by hash just before the kernel forgot it: still named.
        let late = table.stack_of(&event_at(STACK_HASH, 7, 11), Carried::Nothing);
        assert!(late > first);
        assert_eq!(table.addresses(late), [5, 6]);
        assert_eq!(table.retiring(), 0);
        // Evicted again; once its time is over only its frames name it.
        assert_eq!(table.evict(1, 11, |_| false), [late]);
        table.evict(0, u64::MAX, |_| false);
        assert_eq!(table.retiring(), 0);
        assert_eq!(
            table.stack_of(&event_at(STACK_HASH, 7, 12), Carried::Nothing),
            StackId::NONE
        );
        let again = table.stack_of(&event_at(INLINE_STACK, 7, 13), Carried::Frames(&[5, 6]));
        assert!(again > late);
        assert_eq!(
            table.stack_of(&event_at(STACK_HASH, 7, 14), Carried::Nothing),
            again
        );
    }
}
