//! The allocator call in flight on each thread: what its return needs from
//! its entry ([`Pending`]), and where that is kept: a cache-line slot per
//! thread id in an array below [`THREAD_SLOTS`], an LRU hash map beyond.
//! The nesting rules that decide when a slot is written or cleared are the
//! programs' (see the crate docs); this module only finds and stores slots.

use aya_ebpf::{
    Global,
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap},
};
use tracer_ebpf::{Counter, MAX_THREAD_SLOTS};

use crate::counters::Outcome;

/// The allocator call in flight on each thread whose id is below
/// [`THREAD_SLOTS`], indexed by thread id. Every probe hit looks its thread's
/// call up, and the verifier inlines an array lookup, where a hash map lookup
/// cost ~30 ns per probe in `bpf_stats` (three per malloc+free). A thread id
/// names one live thread, so no two threads ever share a slot. A slot is
/// rewritten in place, an `entry_sp` of 0 marking it idle. Mappable only
/// because the kernel then page-aligns the values, so that each slot is
/// exactly one cache line (see [`PendingSlot`]).
#[map]
static PENDING: Array<PendingSlot> = Array::with_max_entries(MAX_THREAD_SLOTS, BPF_F_MMAPABLE);

/// A [`Pending`] padded to a cache line of its own: threads with
/// consecutive ids write neighbouring [`PENDING`] slots all the time, and two
/// slots sharing a line tripled the programs' cost on a 2-thread churn. The
/// padding is outside `Pending`, whose copies it would only lengthen.
#[repr(C)]
struct PendingSlot {
    pending: Pending,
    _padding: [u8; 64 - size_of::<Pending>()],
}

/// The calls of threads whose id is [`THREAD_SLOTS`] or more (hosts may
/// raise `pid_max` far beyond the array), by thread id. Created on a
/// thread's first call and then rewritten in place: inserting and deleting a
/// hash element per call cost more than the rest of the entry program. LRU,
/// so the slots of threads that exited make room for new ones.
#[map]
static PENDING_BY_TID: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(65536, 0);

/// Thread ids below this use [`PENDING`], the others [`PENDING_BY_TID`]. Set
/// at load time (`tracer_ebpf::THREAD_SLOTS_GLOBAL`): `MAX_THREAD_SLOTS`,
/// unless a test lowers it to prove the hash map path exact too.
#[unsafe(export_name = tracer_ebpf::shared_name!(THREAD_SLOTS_GLOBAL))]
static THREAD_SLOTS: Global<u32> = Global::new(MAX_THREAD_SLOTS);

/// What a call's return needs from its entry.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Pending {
    /// Stack pointer at the function's first instruction; 0 when the thread
    /// has no call in flight.
    pub entry_sp: u64,
    pub size: u64,
    /// realloc: the block being resized; posix_memalign: where the result goes.
    pub ptr_arg: u64,
    pub call: Call,
}

/// How the result of a pending call is read and reported.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Call {
    /// The block is the return value.
    Returns = 0,
    /// realloc and reallocarray: report the move (or failure) of `ptr_arg`.
    Realloc = 1,
    /// posix_memalign: the block is stored at `*ptr_arg` when it returns 0.
    StoresThroughPointer = 2,
}

/// Thread `tid`'s call slot, if the kernel has (or makes) one.
pub fn thread_slot(tid: u32) -> Option<*mut Pending> {
    if tid < THREAD_SLOTS.load() {
        // SAFETY: only computes the address of a field of the slot.
        PENDING
            .get_ptr_mut(tid)
            .map(|slot| unsafe { &raw mut (*slot).pending })
    } else {
        PENDING_BY_TID.get_ptr_mut(tid)
    }
}

/// Stores `pending` as thread `tid`'s call: in `slot` when it has one (as
/// [`thread_slot`] found it), else in a new hash map entry.
#[inline(always)]
pub fn park(tid: u32, slot: Option<*mut Pending>, pending: Pending) -> Outcome {
    match slot {
        // SAFETY: only this thread's programs touch its slot, one at a time.
        Some(slot) => unsafe { *slot = pending },
        None => {
            // Only thread ids past the array get here: array slots always exist.
            PENDING_BY_TID
                .insert(tid, pending, 0)
                .map_err(|_| Counter::MapErrors)?;
        }
    }
    Ok(())
}
