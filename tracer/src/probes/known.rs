//! The kernel's record of the stacks whose frames it has sent
//! (`tracer_ebpf::KNOWN_STACKS_MAP`), as the stack table forgets them.
//!
//! The kernel sends a stack's frames once and only its hash afterwards; a
//! stack the table evicts must be sent whole again if it recurs, or its
//! hash would name nothing. [`KnownStacks::forget`] empties the stack's
//! slot, [`KnownStacks::remembers`] checks it again later (a program that
//! sent the frames writes the slot just after, and may do so after the
//! slot was emptied).

use std::cell::RefCell;

use aya::maps::{Array, MapData};
use tracer_ebpf::known_stack_slot;

pub struct KnownStacks(RefCell<Array<MapData, u64>>);

impl KnownStacks {
    pub fn new(map: aya::maps::Map) -> anyhow::Result<Self> {
        Ok(Self(RefCell::new(Array::try_from(map)?)))
    }

    /// Whether the kernel takes the stack hashed `hash` as sent.
    pub fn remembers(&self, hash: u64) -> bool {
        self.0.borrow().get(&known_stack_slot(hash), 0).ok() == Some(hash)
    }

    /// Makes the kernel send the frames of the stack hashed `hash` again
    /// the next time it is seen. A slot that holds another stack's hash is
    /// left alone; should that stack take the slot between the check and
    /// the write, it is only sent again once.
    pub fn forget(&self, hash: u64) {
        if self.remembers(hash)
            && let Err(error) = self.0.borrow_mut().set(known_stack_slot(hash), 0, 0)
        {
            log::debug!("forgetting stack {hash:#x} in the kernel: {error}");
        }
    }
}
