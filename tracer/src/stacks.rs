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

use std::{collections::HashMap, rc::Rc};

use foldhash::fast::FixedState;
use tracer_ebpf::{Event, STACK_HASH};

use crate::events::Carried;

/// One distinct stack of one process, or [`StackId::NONE`] for blocks whose
/// stack could not be collected (they are still counted, under no stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(u32);

impl StackId {
    /// No stack: unreadable user stack, or its hash arrived without the
    /// event that sent its frames (lost).
    pub const NONE: StackId = StackId(0);

    /// The id's number, for maps and tests; ids are dense from 1.
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

/// The stacks of one process.
#[derive(Default)]
pub struct StackTable {
    /// Return addresses of each id, leaf first; index `id - 1`.
    addresses: Vec<Rc<[u64]>>,
    ids: HashMap<Rc<[u64]>, StackId, FixedState>,
    /// Ids of the stacks the kernel sent under a hash, by that hash. Looked
    /// up for nearly every event: foldhash rather than the standard
    /// library's SipHash, which made the aggregator benchmark's 1 M events
    /// cost 767 M instructions instead of 700 M (callgrind).
    hashed: HashMap<u64, StackId, FixedState>,
}

impl StackTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stack of `event`: the frames it carries, interned (and
    /// remembered under the hash the kernel sent them with), or the stack
    /// an earlier event sent under this event's hash ([`StackId::NONE`] if
    /// that event was lost, or the event has no stack).
    pub fn stack_of(&mut self, event: &Event, carried: Carried<'_>) -> StackId {
        match carried {
            Carried::Frames(frames) => {
                let id = self.intern(frames);
                if event.stack_hash != 0 {
                    self.hashed.insert(event.stack_hash, id);
                }
                id
            }
            // The ring reader unwinds stack copies into frames before they
            // get here; without an unwinder a copy is no stack.
            Carried::StackCopy(_) => StackId::NONE,
            Carried::Nothing if event.stack_id == STACK_HASH => self
                .hashed
                .get(&event.stack_hash)
                .copied()
                .unwrap_or(StackId::NONE),
            Carried::Nothing => StackId::NONE,
        }
    }

    /// The id of a stack given as return addresses, leaf first, shared by
    /// every identical stack so the ledger counts each distinct stack once.
    pub fn intern(&mut self, frames: &[u64]) -> StackId {
        if let Some(&id) = self.ids.get(frames) {
            return id;
        }
        let frames: Rc<[u64]> = Rc::from(frames);
        self.addresses.push(frames.clone());
        let id = StackId(self.addresses.len() as u32);
        self.ids.insert(frames, id);
        id
    }

    /// The return addresses of `stack`, leaf first (none for
    /// [`StackId::NONE`] or an id of another table).
    pub fn addresses(&self, stack: StackId) -> &[u64] {
        stack
            .0
            .checked_sub(1)
            .and_then(|index| self.addresses.get(index as usize))
            .map_or(&[], |frames| frames)
    }

    /// Distinct stacks interned.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{EventKind, INLINE_STACK, NO_STACK};

    use super::*;

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
}
