//! The contract between alloctrace's kernel programs and its userspace
//! aggregator: event layout, map names and counter slots.
//!
//! This is the only place the two sides meet. Everything here is `#[repr(C)]`
//! plain data with its size asserted at compile time, so a change on one side
//! that the other has not seen fails the build instead of misreading events.
//! The crate is `no_std` and has no dependencies on the host, so userspace can
//! use it without compiling aya-ebpf.
#![no_std]

/// Ring buffer that carries [`Event`]s to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// `BPF_MAP_TYPE_STACK_TRACE` map holding user stacks by id.
pub const STACKS_MAP: &str = "STACKS";
/// Per-CPU array of `u64` counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Global (`u32`) holding the traced process's pid, set at load time: the
/// exec tracepoint fires for every process on the host and keeps only it.
pub const TARGET_PID_GLOBAL: &str = "TARGET_PID";

/// Default size of the event ring buffer in bytes (a power of two, as the
/// kernel requires). At 56 bytes per record it holds ~150k events: userspace
/// drains it every few milliseconds, so this absorbs bursts of tens of
/// millions of calls per second before anything is lost.
pub const DEFAULT_RING_SIZE: u32 = 8 << 20;

/// Slots of the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events that could not be reserved in the ring buffer (it was full).
    LostEvents = 0,
    /// Allocations whose user stack could not be collected.
    StackErrors = 1,
    /// Allocator returns with no parked entry: the tail end of a chained
    /// tail call, or a call in flight when the probes attached.
    ReturnsWithoutEntry = 2,
    /// Parked entries dropped because their return was never seen.
    StaleEntries = 3,
    /// Frees skipped because they ran inside a traced allocator call.
    NestedFrees = 4,
    /// Updates of the per-thread call map that the kernel refused.
    MapErrors = 5,
}

/// Number of slots in [`COUNTERS_MAP`].
pub const COUNTER_SLOTS: u32 = 6;

/// What an [`Event`] records.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A block of `size` bytes at `addr` was allocated from stack `stack_id`.
    Alloc = 1,
    /// The block at `addr` is being freed. Sent on entry to `free`, before the
    /// allocator can hand the address to another thread.
    Free = 2,
    /// Thread `tid` entered `realloc(old_addr, size)`. Sent on entry, before
    /// realloc can free `old_addr`, for the same reason as [`EventKind::Free`].
    ReallocStart = 3,
    /// `realloc(old_addr, size)` on thread `tid` returned `addr` (0 on failure,
    /// or when `size` is 0 and the block was freed), called from `stack_id`.
    ReallocEnd = 4,
    /// Process `pid` replaced its program with `execve`: every block of the
    /// old image is gone, and addresses from here on belong to the new one.
    Exec = 5,
}

impl EventKind {
    /// Decodes the `kind` field of an event read from the ring buffer.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Alloc),
            2 => Some(Self::Free),
            3 => Some(Self::ReallocStart),
            4 => Some(Self::ReallocEnd),
            5 => Some(Self::Exec),
            _ => None,
        }
    }
}

/// `stack_id` of an event whose stack could not be collected.
pub const NO_STACK: i32 = -1;

/// `stack_id` of an event that carries its own frames: the record is an
/// [`EventWithStack`]. The kernel's stack map places stacks in buckets by
/// hash and refuses a new stack whose bucket is taken (`-EEXIST`); with a few
/// hundred distinct stacks that happens often (birthday odds), so rather than
/// lose or misattribute those allocations the frames travel in the event.
pub const INLINE_STACK: i32 = -2;

/// Frames carried by an [`EventWithStack`].
pub const MAX_INLINE_FRAMES: usize = 64;

/// One allocator call, as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Thread id (the kernel's pid) of the caller.
    pub tid: u32,
    /// Process id (the kernel's tgid) of the caller.
    pub pid: u32,
    /// Id in [`STACKS_MAP`], or [`NO_STACK`].
    pub stack_id: i32,
    /// Requested size in bytes (allocations and reallocs).
    pub size: u64,
    /// The block allocated, freed or returned by realloc.
    pub addr: u64,
    /// The block passed to realloc.
    pub old_addr: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was made.
    pub timestamp_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Event>() == 48);

/// An [`Event`] with `stack_id == INLINE_STACK` and its user stack attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventWithStack {
    pub event: Event,
    /// Bytes of `frames` the kernel filled (8 per frame).
    pub stack_bytes: u64,
    /// Return addresses, leaf first.
    pub frames: [u64; MAX_INLINE_FRAMES],
}

impl EventWithStack {
    /// The frames the kernel filled.
    pub fn frames(&self) -> &[u64] {
        let count = (self.stack_bytes as usize / 8).min(MAX_INLINE_FRAMES);
        &self.frames[..count]
    }
}

const _: () = assert!(core::mem::size_of::<EventWithStack>() == 56 + 8 * MAX_INLINE_FRAMES);
const _: () = assert!(core::mem::align_of::<Event>() == 8);

impl Event {
    /// The decoded kind, or `None` for a kind this build does not know.
    pub const fn kind(&self) -> Option<EventKind> {
        EventKind::from_raw(self.kind)
    }
}
