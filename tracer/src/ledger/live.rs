//! The live blocks themselves: one compact entry per outstanding allocation,
//! in a sharded hash table, which is what the tracer's memory grows with.

use std::collections::HashMap;

use super::StackId;

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
}

const SHARDS: usize = 64;

impl LiveBlocks {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            len: 0,
        }
    }

    pub fn shard(&self, addr: u64) -> usize {
        // Blocks are at least 16-byte aligned; mix the higher bits in so
        // neighbouring blocks spread over every shard.
        ((addr >> 4) ^ (addr >> 12) ^ (addr >> 20)) as usize % SHARDS
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn contains_key(&self, addr: &u64) -> bool {
        self.shards[self.shard(*addr)].contains_key(addr)
    }

    pub fn insert(&mut self, addr: u64, allocation: Allocation) -> Option<Allocation> {
        let shard = self.shard(addr);
        let previous = self.shards[shard].insert(addr, allocation);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub fn remove(&mut self, addr: &u64) -> Option<Allocation> {
        let shard = self.shard(*addr);
        let removed = self.shards[shard].remove(addr);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    pub fn values(&self) -> impl Iterator<Item = &Allocation> {
        self.shards.iter().flat_map(HashMap::values)
    }
}
