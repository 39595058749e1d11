//! The live blocks themselves: one compact entry per outstanding allocation,
//! in a sharded hash table, which is what the tracer's memory grows with.

use std::{cell::Cell, collections::HashMap, rc::Rc};

use super::StackId;

/// `--max-tracked`: how many live blocks the ledgers sharing it may hold
/// together (one-process mode has one ledger, host-wide mode one per
/// process), so the tracer's memory has one ceiling whatever the number of
/// processes.
#[derive(Clone, Debug)]
pub struct Budget(Rc<BudgetState>);

#[derive(Debug)]
struct BudgetState {
    max: u64,
    used: Cell<u64>,
}

impl Budget {
    pub fn new(max: u64) -> Self {
        Self(Rc::new(BudgetState {
            max,
            used: Cell::new(0),
        }))
    }

    /// The blocks tracked, over every ledger sharing it.
    pub fn used(&self) -> u64 {
        self.0.used.get()
    }

    pub fn max(&self) -> u64 {
        self.0.max
    }

    pub(super) fn is_spent(&self) -> bool {
        self.used() >= self.0.max
    }

    pub(super) fn add(&self, blocks: u64) {
        self.0.used.set(self.used() + blocks);
    }

    pub(super) fn sub(&self, blocks: u64) {
        self.0.used.set(self.used().saturating_sub(blocks));
    }
}

/// One live block. Kept to 16 bytes (24 with its address key) because the
/// ledger holds one per outstanding allocation of the target: tens of
/// millions in a big leak, and the tracer's memory per tracked block is a
/// number users budget for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Allocation {
    pub size: u64,
    pub stack: StackId,
    /// Milliseconds since the ledger's epoch (49 days fit).
    pub time_ms: u32,
}

const _: () = assert!(std::mem::size_of::<Allocation>() == 16);

/// Live blocks by address, split into shards that each grow on their own: a
/// hash table doubles by copying into a new one, which for a single table of
/// ten million blocks briefly holds both (~1.5x the memory at the moment of
/// growth); with shards only one small table is being copied at a time.
pub(super) struct LiveBlocks {
    shards: Vec<HashMap<u64, Allocation>>,
    len: usize,
    budget: Budget,
}

const SHARDS: usize = 64;

impl LiveBlocks {
    pub fn new(budget: Budget) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            len: 0,
            budget,
        }
    }

    /// Whether the budget shared with other ledgers is spent.
    pub fn is_full(&self) -> bool {
        self.budget.is_spent()
    }

    pub fn shard(&self, addr: u64) -> usize {
        // Blocks are at least 16-byte aligned; mix the higher bits in so
        // neighbouring blocks spread over every shard.
        ((addr >> 4) ^ (addr >> 12) ^ (addr >> 20)) as usize % SHARDS
    }

    pub fn contains_key(&self, addr: &u64) -> bool {
        self.shards[self.shard(*addr)].contains_key(addr)
    }

    pub fn insert(&mut self, addr: u64, allocation: Allocation) -> Option<Allocation> {
        let shard = self.shard(addr);
        let previous = self.shards[shard].insert(addr, allocation);
        if previous.is_none() {
            self.len += 1;
            self.budget.add(1);
        }
        previous
    }

    pub fn remove(&mut self, addr: &u64) -> Option<Allocation> {
        let shard = self.shard(*addr);
        let removed = self.shards[shard].remove(addr);
        if removed.is_some() {
            self.len -= 1;
            self.budget.sub(1);
        }
        removed
    }

    pub fn values(&self) -> impl Iterator<Item = &Allocation> {
        self.shards.iter().flat_map(HashMap::values)
    }
}

impl Drop for LiveBlocks {
    /// A ledger that ends (a process that exited) gives its blocks back.
    fn drop(&mut self) {
        self.budget.sub(self.len as u64);
    }
}
