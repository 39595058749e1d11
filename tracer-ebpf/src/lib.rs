//! The contract between alloctrace's kernel programs and its userspace
//! aggregator: event layout, map names and counter slots.
//!
//! This is the only place the two sides meet. Everything here is `#[repr(C)]`
//! plain data with its size asserted at compile time, so a change on one side
//! that the other has not seen fails the build instead of misreading events.
//! The crate is `no_std` and has no dependencies on the host, so userspace can
//! use it without compiling aya-ebpf.
//!
//! Every name the two sides share is spelled here once: the maps and
//! globals userspace opens or sets by name (`*_MAP`, `*_GLOBAL`, which the
//! kernel's declarations take through [`shared_name!`]) and the list of
//! event rings ([`for_each_event_ring!`]).
#![no_std]

/// The one list of the event rings, by index and map name: calls
/// `$callback! { 0 => EVENTS_0, ..., 15 => EVENTS_15 }`. The kernel
/// declares a ring per entry, named by its identifier, and picks one by
/// index; userspace reads them by [`EVENT_RING_MAPS`], made from the same
/// list, so a ring cannot be added on one side only.
#[macro_export]
macro_rules! for_each_event_ring {
    ($callback:ident) => {
        $callback! {
            0 => EVENTS_0, 1 => EVENTS_1, 2 => EVENTS_2, 3 => EVENTS_3,
            4 => EVENTS_4, 5 => EVENTS_5, 6 => EVENTS_6, 7 => EVENTS_7,
            8 => EVENTS_8, 9 => EVENTS_9, 10 => EVENTS_10, 11 => EVENTS_11,
            12 => EVENTS_12, 13 => EVENTS_13, 14 => EVENTS_14, 15 => EVENTS_15,
        }
    };
}

/// The ring names of [`for_each_event_ring`], as an array.
macro_rules! ring_names {
    ($($index:literal => $ring:ident),+ $(,)?) => {
        [$(stringify!($ring)),+]
    };
}

/// The ring indices of [`for_each_event_ring`], as an array.
macro_rules! ring_indices {
    ($($index:literal => $ring:ident),+ $(,)?) => {
        [$($index),+]
    };
}

/// Ring buffers that carry [`Event`]s to userspace, one per CPU: CPU `c`
/// writes to ring `c % EVENT_RINGS`, named `EVENT_RING_MAPS[c % EVENT_RINGS]`.
/// Within a ring events are in the order they were written; across rings,
/// userspace orders them by `timestamp_ns`.
pub const EVENT_RINGS: u32 = for_each_event_ring!(ring_names).len() as u32;

/// The map names of the event rings, by index (see [`EVENT_RINGS`]).
pub const EVENT_RING_MAPS: [&str; EVENT_RINGS as usize] = for_each_event_ring!(ring_names);

// The kernel picks ring `cpu % EVENT_RINGS` by the listed index: the list
// must number the rings 0, 1, 2... in order.
const _: () = {
    let indices: [u32; EVENT_RINGS as usize] = for_each_event_ring!(ring_indices);
    let mut position = 0;
    while position < indices.len() {
        assert!(indices[position] as usize == position);
        position += 1;
    }
};

/// Defines the names of the maps and globals both sides use, once: a
/// constant for userspace (`EbpfLoader::override_global`, `Ebpf::map_mut`)
/// and, for the kernel's declarations, [`shared_name!`]`(CONSTANT)`, the
/// same name as a literal (attributes such as `export_name` take only
/// literals, never a constant). A kernel map or global named through it
/// cannot drift from the name userspace asks for, and a name the kernel
/// uses but userspace does not know fails to compile.
macro_rules! shared_names {
    ($($(#[$doc:meta])* $constant:ident = $name:literal;)+) => {
        $($(#[$doc])* pub const $constant: &str = $name;)+

        /// The literal name of one of this crate's map and global name
        /// constants, for the kernel's `export_name` attributes.
        #[macro_export]
        macro_rules! shared_name {
            $(($constant) => { $name };)+
        }
    };
}

shared_names! {
    // Maps.
    /// Array of [`dwarf::ProcessMapping`]s: each process's executable
    /// mappings, a contiguous run sorted by `start`. Sized at load time.
    UNWIND_MAPPINGS_MAP = "UNWIND_MAPPINGS";
    /// Hash map `u32 tgid -> dwarf::ProcessTable`: where in
    /// [`UNWIND_MAPPINGS_MAP`] each table-unwound process's executable
    /// mappings are.
    UNWIND_PROCESSES_MAP = "UNWIND_PROCESSES";
    /// Array of one `u32`: userspace gives it a new value after every change
    /// to [`UNWIND_PROCESSES_MAP`], so that the probe's per-CPU copy of the
    /// last process's entry is looked up again.
    UNWIND_GENERATION_MAP = "UNWIND_GENERATION";
    /// Array of [`dwarf::UnwindRow`]s: every loaded file's table, each a
    /// contiguous run sorted by `pc` after the file's bucket index (see
    /// [`dwarf::ProcessMapping`]). Its size (set at load time) is the
    /// table memory cap (see [`dwarf`]).
    UNWIND_ROWS_MAP = "UNWIND_ROWS";
    /// Per-CPU array of `u64` counters, indexed by [`Counter`].
    COUNTERS_MAP = "COUNTERS";
    /// Array of `u64` thresholds: an allocation of `size` bytes is sampled when
    /// `bpf_get_prandom_u32() < table[sample_slot(size, step)]`. Userspace
    /// computes the table (Poisson sampling by bytes: `p = 1 - exp(-size/R)`,
    /// scaled to 2^32) and weighs each sampled block by the same `p`, so the
    /// estimates are unbiased whatever the rounding of the slots.
    SAMPLE_TABLE_MAP = "SAMPLE_TABLE";
    /// Array of the host-wide filter's per-thread verdicts: one entry (unused)
    /// in single-process mode, where userspace shrinks it to save 4 MiB.
    FILTER_VERDICTS_MAP = "FILTER_VERDICTS";
    /// Hash map `u32 tgid -> u8`: processes host-wide tracing never traces (the
    /// tracer itself, `--exclude-pid`).
    EXCLUDED_TGIDS_MAP = "EXCLUDED_TGIDS";
    /// Hash map `[u8; COMM_LEN] -> u8`: the task names `--comm` allows.
    TRACED_COMMS_MAP = "TRACED_COMMS";
    /// Array of `u64` stack hashes, [`KNOWN_STACK_SLOTS`] long: the stacks
    /// whose frames were sent (see [`STACK_HASH`]), each at slot
    /// `hash % KNOWN_STACK_SLOTS`. Userspace zeroes a slot when it forgets
    /// the stack, so the frames are sent again if the stack recurs.
    KNOWN_STACKS_MAP = "KNOWN_STACKS";
    /// Array of [`kernel_stacks::CacheEntry`]s,
    /// [`kernel_stacks::CACHE_SLOTS`] long: the kernel stack last unwound
    /// on each allocation path (`--kernel`, see [`kernel_stacks`]).
    KERNEL_STACK_CACHE_MAP = "KERNEL_STACK_CACHE";

    // Globals: `aya_ebpf::Global`s in the kernel's read-only data, set at
    // load time (`EbpfLoader::override_global`).
    /// Global (`u32`) holding the traced process's pid, set at load time: the
    /// exec tracepoint fires for every process on the host and keeps only it.
    TARGET_PID_GLOBAL = "TARGET_PID";
    /// Global (`u32`): how many bytes of user stack to copy into each
    /// allocation event; 0 (the default) keeps the kernel's frame-pointer
    /// walk. Set at load time, so the verifier sees it as a constant and the
    /// size of every reservation is known.
    STACK_COPY_BYTES_GLOBAL = "STACK_COPY_BYTES";
    /// Global (`u64`): with `--sample-rate R`, the width in bytes of one slot of
    /// [`SAMPLE_TABLE_MAP`] (`R / SAMPLE_SLOTS_PER_RATE`); 0 traces every call.
    SAMPLE_STEP_GLOBAL = "SAMPLE_STEP";
    /// Global (`u32`): thread ids below it use the array, `MAX_THREAD_SLOTS`
    /// unless a test lowers it (hidden `--thread-slots`) to exercise the map.
    THREAD_SLOTS_GLOBAL = "THREAD_SLOTS";
    /// Global (`u32`) choosing which processes the programs trace: one of
    /// [`FilterMode`]. Set at load time.
    FILTER_MODE_GLOBAL = "FILTER_MODE";
    /// Global (`u32`): non-zero when [`TRACED_COMMS_MAP`] restricts host-wide
    /// tracing to the processes named in it (`--comm`).
    COMM_FILTER_GLOBAL = "COMM_FILTER";
    /// Global (`u64`): the cgroup v2 id (inode number of the cgroup directory)
    /// host-wide tracing is restricted to, with its descendants; 0 for none.
    CGROUP_ID_GLOBAL = "CGROUP_ID";
    /// Global (`u32`): the depth of [`CGROUP_ID_GLOBAL`] below the root cgroup
    /// (the root is level 0), where the caller's ancestor is compared with it.
    CGROUP_LEVEL_GLOBAL = "CGROUP_LEVEL";
}

/// Slots of [`SAMPLE_TABLE_MAP`].
pub const SAMPLE_TABLE_SLOTS: u32 = 1024;
/// Slots per sample rate: sizes up to `SAMPLE_TABLE_SLOTS / SAMPLE_SLOTS_PER_RATE`
/// times the rate get their own slot; larger ones share the last (p ≈ 1).
pub const SAMPLE_SLOTS_PER_RATE: u64 = 64;

/// The [`SAMPLE_TABLE_MAP`] slot of an allocation of `size` bytes; `step`
/// is [`SAMPLE_STEP_GLOBAL`] (never 0 when sampling).
pub const fn sample_slot(size: u64, step: u64) -> u32 {
    let slot = size / step;
    if slot >= SAMPLE_TABLE_SLOTS as u64 {
        SAMPLE_TABLE_SLOTS - 1
    } else {
        slot as u32
    }
}

/// Slots of the kernel's per-thread call array, indexed by thread id; the
/// calls of threads with larger ids are kept in a hash map.
pub const MAX_THREAD_SLOTS: u32 = 1 << 16;

/// Entries of [`EXCLUDED_TGIDS_MAP`] and [`TRACED_COMMS_MAP`].
pub const MAX_FILTER_ENTRIES: u32 = 1024;
/// A task name as the kernel keeps it (`TASK_COMM_LEN`): NUL-padded, at
/// most 15 characters.
pub const COMM_LEN: usize = 16;

/// Which processes the programs trace.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterMode {
    /// One process: the uprobes are attached for its pid only, so the
    /// programs need no filter of their own.
    SingleProcess = 0,
    /// Every process on the host that maps a probed library, less those the
    /// in-kernel filter rejects (excluded tgids, `--comm`, `--cgroup`).
    HostWide = 1,
}

/// Default size of each CPU's event ring in bytes (a power of two, as the
/// kernel requires). At 56 bytes per record it holds ~150k events: a CPU
/// allocating as fast as the traps allow writes ~1M events/s, and userspace
/// drains every 10 ms, but a summary over 10 million live blocks can keep it
/// busy for a few hundred milliseconds (4 MiB lost events then, measured).
pub const DEFAULT_RING_SIZE: u32 = 8 << 20;

/// Default size of each CPU's ring when events carry stack copies
/// (`--unwind dwarf`): records are then `--stack-bytes` (8 KiB by default)
/// instead of 56 bytes, and this holds ~4000 of them per CPU: enough for the
/// bursts of the tests' workloads while the tracer symbolizes a large binary
/// for the first time.
pub const DEFAULT_STACK_COPY_RING_SIZE: u32 = 32 << 20;

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
    /// Kernel allocations (`--kernel`) sent with the stack cached for
    /// their path, unwound or not (see [`kernel_stacks`]).
    KernelStackCacheHits = 6,
    /// Kernel stacks unwound (`bpf_get_stack`): cache misses, checks of
    /// cached stacks, and pages.
    KernelStackUnwinds = 7,
    /// Cache hits unwound anyway to check the cached stack.
    KernelStackCacheChecks = 8,
    /// Checks that found another stack than the cached one.
    KernelStackCacheMismatches = 9,
}

/// Number of slots in [`COUNTERS_MAP`].
pub const COUNTER_SLOTS: u32 = 10;

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
    /// Carries the new program's comm (see [`Event::marker_comm`]).
    Exec = 5,
    /// The last thread of process `pid` exited (host-wide mode only): its
    /// ledger is complete, and the pid may be reused from here on. Carries
    /// the process's comm (see [`Event::marker_comm`]).
    ProcessExit = 6,
    /// Process `pid` (the traced one, single-process mode only) made a new
    /// task: a thread, or a child process, which inherits the breakpoints
    /// of the uprobes in its copy of the parent's memory. Carries the
    /// parent's comm (see [`Event::marker_comm`]).
    Fork = 7,
    /// An anonymous private mapping of `size` bytes at `addr` was made
    /// (`mmap`) from stack `stack_id`, outside any traced allocator call;
    /// `old_addr` is 1 when it is accessible memory, 0 for a reservation
    /// (`PROT_NONE` or `MAP_NORESERVE`).
    Map = 8,
    /// `munmap(addr, size)` succeeded.
    Unmap = 9,
    /// `mremap(old_addr, stack_hash, size)` (the old length rides in
    /// `stack_hash`: the event carries no stack) returned `addr`.
    Remap = 10,
    /// `mprotect(addr, size, prot)` succeeded; `old_addr` is 1 when the
    /// range is now accessible, 0 for `PROT_NONE`.
    Protect = 11,
    /// `brk` returned `addr`, the program break now (the old one if the
    /// call failed, the current one for `brk(0)`). `old_addr` is 1 when the
    /// call was made inside a traced allocator call (glibc's `sbrk` for its
    /// main arena, already counted as heap blocks), which moves the break
    /// but attributes nothing; otherwise the event carries the stack of the
    /// call.
    Brk = 12,
    /// `mremap(old_addr, size, size, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)`
    /// returned `addr`, called from `stack_id`: the pages moved to `addr`,
    /// and the old range stays mapped (the kernel keeps it charged; it
    /// reads as zero-fill from then on). The call cannot resize.
    RemapKeep = 13,
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
            6 => Some(Self::ProcessExit),
            7 => Some(Self::Fork),
            8 => Some(Self::Map),
            9 => Some(Self::Unmap),
            10 => Some(Self::Remap),
            11 => Some(Self::Protect),
            12 => Some(Self::Brk),
            13 => Some(Self::RemapKeep),
            _ => None,
        }
    }
}

/// `stack_id` of an event whose stack could not be collected.
pub const NO_STACK: i32 = -1;

/// `stack_id` of an event that carries its own frames: the record is an
/// [`EventWithStack`], sent the first time a frame-pointer stack is seen
/// (see [`STACK_HASH`]). The kernel's own stack map was not used: it places
/// stacks in buckets by hash and refuses a new stack whose bucket is taken,
/// and its walk measured far slower than the programs' own.
pub const INLINE_STACK: i32 = -2;

/// `stack_id` of an [`EventWithStack`] whose frames the DWARF unwinder
/// walked into code in no mapping userspace had listed for the process (a
/// library `dlopen`ed since) and stopped there: the frames past it are
/// missing, those it has are right. Userspace
/// re-reads the process's mappings; the kernel does not remember the
/// stack's hash, so it is sent whole until the walk is complete.
pub const INLINE_STACK_PARTIAL: i32 = -5;

/// `stack_id` of an [`EventWithStack`] whose frames the DWARF unwinder cut
/// short where it would have followed a frame pointer it does not believe
/// (see [`dwarf::FRAME_POINTER_SPAN`]): in code without a table row (a
/// file over the table-memory cap, without CFI, JIT code) rbp is a general
/// register unless the code keeps frame pointers, and following it read
/// garbage frames. The frames it has are right; the kernel remembers its
/// hash as for [`INLINE_STACK`], since walking again would cut it again.
pub const INLINE_STACK_CUT: i32 = -6;

/// `stack_id` of an event that carries a copy of the caller's registers and
/// the top of its user stack, for userspace to unwind with DWARF CFI: the
/// record is an [`EventWithStackCopy`] followed by `stack_len` stack bytes.
/// Only sent when [`STACK_COPY_BYTES_GLOBAL`] is non-zero (`--unwind dwarf`).
pub const STACK_COPY: i32 = -3;

/// Largest stack copy the programs accept (`--stack-bytes`): a record must
/// fit the ring buffer many times over, and the verifier needs a bound.
pub const MAX_STACK_COPY_BYTES: u32 = 64 << 10;

/// Stack copies are read page by page, upwards from `sp`, and
/// `--stack-bytes` is a multiple of the page size. A thread's stack may end
/// less than `--stack-bytes` above `sp` (the main thread's holds only the
/// environment above `main`), and a read crossing its end fails as a whole
/// (after copying up to the fault and zeroing the rest), so one big read
/// would fail exactly when the stack is shallow; page by page, the copy stops
/// at the first unmapped page, having paid for at most one failed read.
pub const STACK_COPY_CHUNK: u32 = 4096;

/// `stack_id` of an allocation whose frame-pointer stack the kernel has
/// already sent, as an [`EventWithStack`] carrying the same `stack_hash`:
/// userspace names the stack by that hash. The programs walk frame pointers
/// themselves (measured: ~60 ns per allocation, against ~550 ns for the
/// kernel's `bpf_get_stackid`) and send a stack's frames only the first time
/// (or again once their record of it is evicted).
pub const STACK_HASH: i32 = -4;

/// Slots of [`KNOWN_STACKS_MAP`].
pub const KNOWN_STACK_SLOTS: u32 = 1 << 16;

/// The slot of [`KNOWN_STACKS_MAP`] that remembers the stack hashed `hash`.
pub const fn known_stack_slot(hash: u64) -> u32 {
    hash as u32 % KNOWN_STACK_SLOTS
}

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
    /// What stack the event carries or names: [`NO_STACK`],
    /// [`INLINE_STACK`], [`STACK_COPY`] or [`STACK_HASH`].
    pub stack_id: i32,
    /// Requested size in bytes (allocations and reallocs).
    pub size: u64,
    /// The block allocated, freed or returned by realloc.
    pub addr: u64,
    /// The block passed to realloc.
    pub old_addr: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was made.
    pub timestamp_ns: u64,
    /// Allocations with a frame-pointer stack: the stack's hash (see
    /// [`STACK_HASH`]); 0 otherwise.
    pub stack_hash: u64,
}

const _: () = assert!(core::mem::size_of::<Event>() == 56);

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

const _: () = assert!(core::mem::size_of::<EventWithStack>() == 64 + 8 * MAX_INLINE_FRAMES);

/// The header of an [`Event`] with `stack_id == STACK_COPY`: the user
/// registers an unwinder starts from, then `stack_len` bytes copied from the
/// user stack at `sp` upwards.
///
/// The event is made in the allocator's return probe, so the registers are
/// those of the caller right after the call returned: `ip` is the return
/// address in the caller (its current pc), `sp` its stack pointer, `bp` its
/// frame pointer (callee-saved, so restored by the allocator).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventWithStackCopy {
    pub event: Event,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of stack that follow this header (0 if none could be read).
    pub stack_len: u64,
}

const _: () = assert!(core::mem::size_of::<EventWithStackCopy>() == 56 + 32);
const _: () = assert!(core::mem::align_of::<Event>() == 8);

impl Event {
    /// The decoded kind, or `None` for a kind this build does not know.
    pub const fn kind(&self) -> Option<EventKind> {
        EventKind::from_raw(self.kind)
    }

    /// The task name a process marker ([`EventKind::Exec`],
    /// [`EventKind::ProcessExit`]) carries in `addr` and `old_addr`, which
    /// markers do not otherwise use: a process that lived only milliseconds
    /// may be gone from `/proc` before userspace reads its events.
    pub fn marker_comm(&self) -> [u8; COMM_LEN] {
        let mut comm = [0; COMM_LEN];
        comm[..8].copy_from_slice(&self.addr.to_ne_bytes());
        comm[8..].copy_from_slice(&self.old_addr.to_ne_bytes());
        comm
    }

    /// The (`addr`, `old_addr`) pair that carries `comm` in a marker.
    pub fn comm_words(comm: &[u8; COMM_LEN]) -> (u64, u64) {
        let mut low = [0; 8];
        let mut high = [0; 8];
        low.copy_from_slice(&comm[..8]);
        high.copy_from_slice(&comm[8..]);
        (u64::from_ne_bytes(low), u64::from_ne_bytes(high))
    }
}

/// The kernel stack cache of `--kernel`: unwinding a kernel stack
/// (`bpf_get_stack`, the kernel's ORC unwinder) costs ~2.8 µs per
/// allocation on this project's machine, so the programs remember, per
/// allocation *path*, the hash of the stack last unwound on it and send
/// that hash instead of unwinding again. A path is what is cheap to read
/// at the tracepoint: the allocator's caller (`call_site`) and the kernel
/// addresses in the top of the stack (see `kernel_stacks.rs` in the
/// programs for what was measured). Two stacks can share a path (the
/// same nearest callers reached by two routes), so one hit in
/// [`CHECK_EVERY`] per CPU is
/// unwound anyway and compared: the counters `KernelStackCacheChecks` and
/// `KernelStackCacheMismatches` measure how often a cached stack was wrong.
pub mod kernel_stacks {
    pub use super::KERNEL_STACK_CACHE_MAP;

    /// Slots of [`KERNEL_STACK_CACHE_MAP`] (24 bytes each: 6 MiB). A
    /// busy host has many paths: with 16,384 slots, 9% of the bench's
    /// allocations found their path's slot taken by another path (and
    /// were unwound), 2.8% with these.
    pub const CACHE_SLOTS: u32 = 1 << 18;
    /// One cache hit in this many (per CPU) is unwound and checked: ~2,000
    /// checks a second on the bench's kernel workload, enough to see a
    /// 0.1% mismatch rate; every 64th cost 0.05-0.1x more slowdown.
    pub const CHECK_EVERY: u64 = 256;

    /// One path's cached stack. `check` ties the two others together
    /// (`path ^ stack.rotate_left(CHECK_ROTATION)`): two CPUs writing one
    /// slot at once, or a reader between a writer's stores, leave an entry
    /// whose check fails, which reads as a miss.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CacheEntry {
        /// The path's key (never 0: 0 is an empty slot).
        pub path: u64,
        /// The hash of the stack last unwound on the path.
        pub stack: u64,
        pub check: u64,
    }

    const _: () = assert!(core::mem::size_of::<CacheEntry>() == 24);

    /// See [`CacheEntry::check`].
    pub const CHECK_ROTATION: u32 = 29;

    /// The cached "stack" of a path seen with two different stacks: its
    /// allocations are always unwound.
    pub const AMBIGUOUS: u64 = 0;

    impl CacheEntry {
        pub const fn new(path: u64, stack: u64) -> Self {
            Self {
                path,
                stack,
                check: path ^ stack.rotate_left(CHECK_ROTATION),
            }
        }

        /// The cached stack of `path`, if this entry is whole and is
        /// `path`'s.
        pub const fn stack_of(&self, path: u64) -> Option<u64> {
            if self.path == path && self.check == path ^ self.stack.rotate_left(CHECK_ROTATION) {
                Some(self.stack)
            } else {
                None
            }
        }
    }

    /// The slot of [`KERNEL_STACK_CACHE_MAP`] that caches `path`.
    pub const fn cache_slot(path: u64) -> u32 {
        path as u32 % CACHE_SLOTS
    }
}

/// In-kernel DWARF unwinding (`--unwind dwarf`, and `auto` for processes
/// without frame pointers): the programs walk a process's stack with
/// per-file CFI tables that userspace compiles from `.eh_frame` and loads
/// into [`UNWIND_ROWS_MAP`], located through the process's
/// [`UNWIND_PROCESSES_MAP`] entry. A process without an entry keeps the
/// frame-pointer walk.
pub mod dwarf {
    pub use super::{
        UNWIND_GENERATION_MAP, UNWIND_MAPPINGS_MAP, UNWIND_PROCESSES_MAP, UNWIND_ROWS_MAP,
    };

    /// Entries of [`UNWIND_PROCESSES_MAP`]: processes unwound with tables at once.
    pub const MAX_UNWIND_PROCESSES: u32 = 16384;
    /// Slots of [`UNWIND_MAPPINGS_MAP`] by default (48 bytes each: 6 MiB).
    pub const DEFAULT_MAPPING_SLOTS: u32 = 1 << 17;
    /// Executable mappings kept per process (the binary search makes
    /// `log2` of it steps); a process with more keeps only the first ones,
    /// the others falling back to frame pointers.
    pub const MAX_PROCESS_MAPPINGS: u32 = 512;
    /// Binary-search steps over a process's mappings.
    pub const MAPPING_SEARCH_STEPS: u32 = 9;
    /// Slots of [`UNWIND_ROWS_MAP`] by default: 8 bytes each, so 64 MiB of
    /// kernel memory, allocated when the map is created.
    pub const DEFAULT_UNWIND_ROWS: u32 = 8 << 20;
    /// Binary-search steps over one bucket of a file's rows (see
    /// [`ProcessMapping::bucket_shift`]): a bucket spans at most
    /// [`MAX_BUCKET_ROWS`] rows. Five steps with a one-lookup index cost a
    /// fifth of the 24-step search over a whole file that they replace.
    pub const BUCKET_SEARCH_STEPS: u32 = 5;
    /// Rows a bucket may span: the row at or before its first address, and
    /// every row starting inside it.
    pub const MAX_BUCKET_ROWS: u32 = 1 << BUCKET_SEARCH_STEPS;
    /// The finest bucket: 16 bytes hold at most 15 row starts besides the
    /// row before them (rows start at distinct addresses), so any table has
    /// an index whose buckets span at most 16 rows.
    pub const MIN_BUCKET_SHIFT: u32 = 4;
    /// The coarsest bucket tried (64 KiB).
    pub const MAX_BUCKET_SHIFT: u32 = 16;
    /// How far above the walk's first stack pointer a frame pointer may
    /// point for the walk to follow it (a [`kind::FRAME_POINTER`] frame):
    /// the largest `--stack-bytes`, as much stack as the stack-copy
    /// unwinder ever sees. Besides, it must be 8-aligned and at or above
    /// the current stack pointer, so that the chain strictly rises; any
    /// other rbp is not a frame pointer, and the walk stops there
    /// ([`super::INLINE_STACK_CUT`]).
    pub const FRAME_POINTER_SPAN: u64 = super::MAX_STACK_COPY_BYTES as u64;

    /// How a row finds the caller's frame.
    pub mod kind {
        /// CFA = rsp + `cfa_offset`.
        pub const CFA_RSP: u8 = 0;
        /// CFA = rbp + `cfa_offset`.
        pub const CFA_RBP: u8 = 1;
        /// No rule the table can express (PLT stubs, DWARF expressions, DRAP
        /// realignment, code without CFI): this frame is unwound through
        /// its frame pointer, as the frame-pointer walk would.
        pub const FRAME_POINTER: u8 = 2;
        /// The return address is undefined: the outermost frame (`_start`,
        /// `clone`'s child); the walk stops after it.
        pub const OUTERMOST: u8 = 3;
    }

    /// One row of a file's table: the rule from `pc` (an ELF virtual address
    /// of the file) up to the next row's `pc`. The return address is always
    /// at CFA - 8 (x86_64's call pushes it there); a row whose CFI says
    /// otherwise is a [`kind::FRAME_POINTER`] row.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct UnwindRow {
        pub pc: u32,
        pub cfa_offset: u16,
        /// One of [`kind`].
        pub kind: u8,
        /// The caller's rbp is saved at CFA + 8 * `rbp_slot`; 0: rbp is unchanged.
        pub rbp_slot: i8,
    }

    const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);

    /// One executable mapping of a process: addresses `start..end` hold
    /// file code whose ELF address is `address - bias`, unwound with rows
    /// `first_row..first_row + row_count` of [`UNWIND_ROWS_MAP`]
    /// (`row_count == 0`: no table, frame pointers).
    ///
    /// The file's rows are found through its bucket index, which sits in
    /// [`UNWIND_ROWS_MAP`] too (so the table memory cap counts it): ELF
    /// address `a` at or after `index_base` is in bucket
    /// `min((a - index_base) >> bucket_shift, bucket_count - 1)`, whose
    /// entry (a `u32`, two per slot from slot `first_bucket` on, the even
    /// bucket in the low half) is the offset from `first_row` of the last
    /// row starting at or before the bucket's first address. The row for
    /// `a` is among the [`MAX_BUCKET_ROWS`] rows from there.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ProcessMapping {
        pub start: u64,
        pub end: u64,
        pub bias: u64,
        pub first_row: u32,
        pub row_count: u32,
        pub first_bucket: u32,
        pub bucket_count: u32,
        /// The first row's `pc`: where bucket 0 starts.
        pub index_base: u32,
        pub bucket_shift: u32,
    }

    const _: () = assert!(core::mem::size_of::<ProcessMapping>() == 48);

    /// A process's run of [`UNWIND_MAPPINGS_MAP`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ProcessTable {
        pub first_mapping: u32,
        pub mapping_count: u32,
        /// Different for every list userspace writes (never 0): what the
        /// probe found with an older list of the process is not used. The
        /// value [`UNWIND_GENERATION_MAP`] holds once the entry is written.
        pub generation: u32,
    }

    const _: () = assert!(core::mem::size_of::<ProcessTable>() == 12);
}
