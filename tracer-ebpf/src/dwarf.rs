//! The in-kernel DWARF unwinder: walks a process's user stack with the CFI
//! tables userspace compiled for its files (see `tracer_ebpf::dwarf`), for
//! processes whose code lacks frame pointers.
//!
//! Per frame: take the pc's rule from a per-CPU cache of recent ones
//! ([`RULE_CACHE`]), else find it: the executable mapping holding the pc
//! (binary search in the process's sorted list), then the table row for
//! `pc - 1 - bias` (every pc here is a return address, and the call it
//! follows may be a function's last instruction: the file's bucket index
//! names where to start, then a five-step binary search in its run of
//! [`UNWIND_ROWS`]). Then apply the rule: CFA from rsp or rbp plus an
//! offset, the return address at CFA - 8, rbp restored from CFA + 8n or
//! unchanged, both read in one go.
//!
//! Cost, in `bpf_stats` on the bench's churn built without frame pointers
//! (3 frames a stack): the return program took 588 ns a call with a 9-step
//! mapping search and a 24-step row search per frame, 514 with the bucket
//! index, ~425 with the rule cache, ~360 reading rbp with the return
//! address; with frame pointers it takes ~255.
//! Code no row covers (JIT code in anonymous memory, PLT stubs, rules the
//! table cannot express, files over the table-memory cap) is stepped
//! through its frame pointer when rbp looks like one, else the walk is cut
//! there (see [`walk`]); code in no listed mapping ends the walk. The
//! check costs nothing measurable: `bpf_stats` on the bench's churn, ~335
//! ns a call before and after (frame pointers ~230).
//!
//! Plain bounded loops, no `bpf_loop` or tail calls: the uprobe programs are
//! loaded for uprobe_multi links by our own loader without BTF, and the
//! kernel accepts `bpf_loop` callbacks only with BTF function info. What
//! keeps the verifier's work linear in the 64 frames:
//! - every table is read through map lookups (helpers), never by indexing
//!   a map value: an index into a value must be exact for the bounds check,
//!   so each comparison of a binary search would double the paths the
//!   verifier explores (a first version indexing an 8 KiB per-process value
//!   hit the 1M-instruction limit); a lookup key need not be, and the two
//!   sides of each comparison converge into one state;
//! - the two ways to a rule (cache or search) join in one state (see
//!   [`rule`]);
//! - the searches always run their full number of steps (a step past the
//!   answer changes nothing): an early exit, or even skipping the lookup of
//!   the steps past the answer, made the verifier explore each exit apart
//!   and hit its 1M-instruction limit (measured).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use tracer_ebpf::{
    MAX_INLINE_FRAMES,
    dwarf::{
        BUCKET_SEARCH_STEPS, DEFAULT_MAPPING_SLOTS, DEFAULT_UNWIND_ROWS, FRAME_POINTER_SPAN,
        MAPPING_SEARCH_STEPS, MAX_BUCKET_ROWS, MAX_UNWIND_PROCESSES, ProcessMapping, ProcessTable,
        UnwindRow, kind,
    },
};

use crate::stack_hash::start_hash;

shared_map!(
    UNWIND_ROWS_MAP,
    /// Every loaded file's table; userspace sets its size, the table memory
    /// cap, at load time, and writes tables straight into its memory
    /// (mappable).
    static UNWIND_ROWS: Array<UnwindRow> =
        Array::with_max_entries(DEFAULT_UNWIND_ROWS, BPF_F_MMAPABLE);
);

shared_map!(
    UNWIND_PROCESSES_MAP,
    /// Where each table-unwound process's mappings are in [`UNWIND_MAPPINGS`].
    static UNWIND_PROCESSES: HashMap<u32, ProcessTable> =
        HashMap::with_max_entries(MAX_UNWIND_PROCESSES, 0);
);

shared_map!(
    UNWIND_GENERATION_MAP,
    /// Bumped by userspace after each change to [`UNWIND_PROCESSES`].
    static UNWIND_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
);

/// This CPU's copy of the last process's [`UNWIND_PROCESSES`] entry (or of
/// its absence), good while [`UNWIND_GENERATION`] holds the value it was
/// copied at: an array lookup instead of a hash lookup (~25 ns) on every
/// allocation, frame-pointer walks included.
#[map]
static PROCESS_CACHE: PerCpuArray<CachedProcess> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct CachedProcess {
    tgid: u32,
    generation: u32,
    /// 1 when the process has an entry.
    present: u32,
    table: ProcessTable,
}

shared_map!(
    UNWIND_MAPPINGS_MAP,
    /// Every table-unwound process's executable mappings, one sorted run
    /// each; userspace sets its size at load time.
    static UNWIND_MAPPINGS: Array<ProcessMapping> =
        Array::with_max_entries(DEFAULT_MAPPING_SLOTS, BPF_F_MMAPABLE);
);

/// Where a walk leaves its frames: the stack is hashed while it is walked,
/// and only copied into an event when the hash is new.
#[map]
static FRAMES: PerCpuArray<[u64; MAX_INLINE_FRAMES]> = PerCpuArray::with_max_entries(1, 0);

/// The rules of recently unwound return addresses, per CPU, direct-mapped
/// by process and address: a process calls malloc from few places, so most
/// frames are found here with one lookup and three comparisons instead of
/// the ~15 lookups of the mapping and row searches (the return program on
/// the bench's churn: 514 ns per call with the searches alone, see
/// [`rule`]). An entry holds for the process's list generation it was found
/// in: userspace gives each new list a new generation, so an entry never
/// outlives the mappings and tables it came from. 24 KiB per CPU.
#[map]
static RULE_CACHE: PerCpuArray<CachedRule> = PerCpuArray::with_max_entries(RULE_CACHE_SLOTS, 0);

/// Entries of [`RULE_CACHE`] per CPU: a power of two (the slot is the top
/// bits of a multiplicative hash).
const RULE_CACHE_SLOTS: u32 = 1 << RULE_CACHE_BITS;
const RULE_CACHE_BITS: u32 = 10;

/// The rule found for return address `pc` of process `tgid`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CachedRule {
    pc: u64,
    tgid: u32,
    /// The generation of the process's mapping list it was found in.
    generation: u32,
    row: UnwindRow,
}

/// A row kind only [`RULE_CACHE`] holds: the address is in no listed mapping.
const UNMAPPED: u8 = 0xff;

/// A finished table walk.
pub struct Walk {
    pub hash: u64,
    pub count: usize,
    /// Every frame's pc lay in a mapping userspace had listed. A walk that
    /// met unlisted code (a library `dlopen`ed since userspace last read the
    /// process's mappings) stops there, cut short but right, and its stack
    /// is sent again until the tables catch up.
    pub complete: bool,
    /// The walk stopped where it would have followed a frame pointer it
    /// does not believe (see [`FRAME_POINTER_SPAN`]), or dropped the frame
    /// such a pointer led to because it lay in no listed mapping: cut short
    /// but right (`tracer_ebpf::INLINE_STACK_CUT`).
    pub cut: bool,
    /// The frames, leaf first (`count` of them).
    pub frames: *const [u64; MAX_INLINE_FRAMES],
}

/// Walks process `tgid`'s stack from the caller registers `pc`, `sp`, `bp`
/// with its tables; `None` when the process has none (the caller then walks
/// frame pointers).
///
/// A frame without a rule is stepped through its frame pointer only if rbp
/// looks like one (see [`FRAME_POINTER_SPAN`]): the code may not keep frame
/// pointers (a file over the table cap or without CFI), and then rbp holds
/// anything. Host-wide, before this check, 40% of one busy run's stacks
/// ended in an address no mapping held. A frame pointer that passes can
/// still lead to garbage (rbp holding the address of a local); when the
/// address it leads to is in no listed mapping, that frame is dropped.
#[inline(always)]
pub fn walk(tgid: u32, mut pc: u64, mut sp: u64, mut bp: u64) -> Option<Walk> {
    let process = process_table(tgid)?;
    let frames = FRAMES.get_ptr_mut(0)?;
    let stack_end = sp.wrapping_add(FRAME_POINTER_SPAN);
    let mut hash = start_hash(u64::from(tgid));
    let mut count = 0;
    let mut complete = true;
    let mut cut = false;
    // `pc` was read through a frame pointer, not by a table row.
    let mut through_frame_pointer = false;
    for index in 0..MAX_INLINE_FRAMES {
        let row = rule(tgid, process, pc);
        if row.kind == UNMAPPED && through_frame_pointer {
            cut = true;
            break;
        }
        // SAFETY: `index` is below the array's length; the per-CPU slot is
        // only used by this program run (uprobe programs are not preempted).
        unsafe { (*frames)[index] = pc };
        hash = hash.add_frame(pc);
        count = index + 1;
        through_frame_pointer = false;
        let next = match row.kind {
            // Code in no listed mapping (mapped since userspace last
            // looked), reached by a table row: whether it keeps frame
            // pointers is unknown, so the walk stops rather than guess a
            // frame.
            UNMAPPED => {
                complete = false;
                break;
            }
            kind::OUTERMOST => break,
            kind::CFA_RSP | kind::CFA_RBP => step_cfi(&row, sp, bp),
            _ if is_frame_pointer(bp, sp, stack_end) => {
                through_frame_pointer = true;
                step_frame_pointer(bp)
            }
            _ => {
                cut = true;
                break;
            }
        };
        let Some((next_pc, next_sp, next_bp)) = next else {
            break;
        };
        if next_pc == 0 || next_sp <= sp {
            break;
        }
        (pc, sp, bp) = (next_pc, next_sp, next_bp);
    }
    Some(Walk {
        hash: hash.finish(),
        count,
        complete,
        cut,
        frames,
    })
}

/// Process `tgid`'s [`UNWIND_PROCESSES`] entry, through [`PROCESS_CACHE`].
/// Its two ways join as in [`rule`].
#[inline(always)]
fn process_table(tgid: u32) -> Option<ProcessTable> {
    let generation = *UNWIND_GENERATION.get(0)?;
    let cached = PROCESS_CACHE.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry, used by one program run at a time; plain
    // data.
    unsafe {
        if (*cached).tgid != tgid || (*cached).generation != generation {
            let (present, table) = match UNWIND_PROCESSES.get(tgid) {
                Some(table) => (1, *table),
                None => (0, ProcessTable::default()),
            };
            *cached = CachedProcess {
                tgid,
                generation,
                present,
                table,
            };
        }
        if core::ptr::read_volatile(&raw const (*cached).present) == 0 {
            return None;
        }
        Some(core::ptr::read_volatile(&raw const (*cached).table))
    }
}

/// The rule for return address `pc` of process `tgid`: from [`RULE_CACHE`],
/// or found by searching the process's mappings and the file's rows (and
/// cached). A [`kind::FRAME_POINTER`] row where the file has none,
/// [`UNMAPPED`] where no mapping holds `pc` (or the cache cannot be read).
///
/// Both ways end with the rule in the cache entry, read from there after
/// they join: the verifier then finds the two paths in the same state and
/// explores the rest of the walk once, not once per way.
#[inline(always)]
fn rule(tgid: u32, process: ProcessTable, pc: u64) -> UnwindRow {
    let slot = ((pc ^ u64::from(tgid)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        >> (64 - RULE_CACHE_BITS)) as u32;
    let unmapped = UnwindRow {
        kind: UNMAPPED,
        ..UnwindRow::default()
    };
    let Some(cached) = RULE_CACHE.get_ptr_mut(slot) else {
        return unmapped;
    };
    // SAFETY: this CPU's entry, used by one program run at a time (uprobe
    // programs are not preempted); plain data.
    unsafe {
        if (*cached).pc != pc
            || (*cached).tgid != tgid
            || (*cached).generation != process.generation
        {
            let row = match find_mapping(process, pc) {
                None => unmapped,
                Some(mapping) => find_row(mapping, pc).unwrap_or(UnwindRow {
                    kind: kind::FRAME_POINTER,
                    ..UnwindRow::default()
                }),
            };
            *cached = CachedRule {
                pc,
                tgid,
                generation: process.generation,
                row,
            };
        }
        core::ptr::read_volatile(&raw const (*cached).row)
    }
}

/// The caller's (pc, sp, bp) by a table row.
#[inline(always)]
fn step_cfi(row: &UnwindRow, sp: u64, bp: u64) -> Option<(u64, u64, u64)> {
    let base = if row.kind == kind::CFA_RSP { sp } else { bp };
    let cfa = base.wrapping_add(u64::from(row.cfa_offset));
    // rbp saved among the words right below the return address (pushed
    // with the other callee-saved registers on entry, the usual case) is
    // read with it, in one read: each read of user memory costs ~35 ns (the
    // helper and the kernel's checks of its copy). Below the stack's end
    // the read fails, and the two words are read apart.
    if (-(SAVED_WORDS as i8)..=-2).contains(&row.rbp_slot) {
        let words = cfa.wrapping_sub(SAVED_WORDS as u64 * 8) as *const [u64; SAVED_WORDS];
        // SAFETY: user memory through the fault-tolerant helper.
        if let Ok(words) = unsafe { bpf_probe_read_user(words) } {
            let return_address = words[SAVED_WORDS - 1];
            let caller_bp = words[(SAVED_WORDS as i64 + i64::from(row.rbp_slot)) as usize & 7];
            return Some((return_address, cfa, caller_bp));
        }
    }
    // SAFETY (both reads): as above.
    let return_address =
        unsafe { bpf_probe_read_user((cfa.wrapping_sub(8)) as *const u64) }.ok()?;
    let caller_bp = if row.rbp_slot == 0 {
        bp
    } else {
        let slot = cfa.wrapping_add((i64::from(row.rbp_slot) * 8) as u64);
        unsafe { bpf_probe_read_user(slot as *const u64) }.ok()?
    };
    Some((return_address, cfa, caller_bp))
}

/// Words below a frame's CFA read at once by [`step_cfi`]: the return
/// address and up to six callee-saved registers pushed on entry (rbp is
/// the sixth at most, after rbx, r12-r15), with one to spare.
const SAVED_WORDS: usize = 8;

/// Whether `bp` may be a frame pointer for a frame whose stack pointer is
/// `sp`, on a stack the walk started below `stack_end -`
/// [`FRAME_POINTER_SPAN`]: 8-aligned (rsp is, when it is pushed), at or
/// above `sp` (the chain rises: `sp` is the last frame's end), and with the
/// saved rbp and return address below `stack_end`.
#[inline(always)]
fn is_frame_pointer(bp: u64, sp: u64, stack_end: u64) -> bool {
    bp & 7 == 0 && bp >= sp && bp < stack_end.wrapping_sub(16)
}

/// The caller's (pc, sp, bp) through the frame pointer `bp` (see
/// [`is_frame_pointer`]): it points at the saved caller's rbp, with the
/// return address above it.
#[inline(always)]
fn step_frame_pointer(bp: u64) -> Option<(u64, u64, u64)> {
    // SAFETY: user memory through the fault-tolerant helper.
    let [caller_bp, return_address] = unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }.ok()?;
    Some((return_address, bp.wrapping_add(16), caller_bp))
}

/// The mapping holding `pc`: the last one starting at or before it.
#[inline(always)]
fn find_mapping(process: ProcessTable, pc: u64) -> Option<ProcessMapping> {
    let index = last_at_or_before(
        process.first_mapping,
        process.mapping_count,
        MAPPING_SEARCH_STEPS,
        |index| Some(UNWIND_MAPPINGS.get(index)?.start <= pc),
    )?;
    let mapping = *UNWIND_MAPPINGS.get(index)?;
    (mapping.start <= pc && pc < mapping.end).then_some(mapping)
}

/// The table row covering return address `pc` in `mapping`, if its file has
/// a table and one of its rows starts at or before `pc - 1`: its bucket
/// names the first candidate row, and the row is among the
/// [`MAX_BUCKET_ROWS`] from there (see `ProcessMapping`).
#[inline(always)]
fn find_row(mapping: ProcessMapping, pc: u64) -> Option<UnwindRow> {
    let address = pc.wrapping_sub(1).wrapping_sub(mapping.bias);
    let address = u32::try_from(address).ok()?;
    if mapping.row_count == 0 || address < mapping.index_base {
        return None;
    }
    let bucket = ((address - mapping.index_base) >> mapping.bucket_shift)
        .min(mapping.bucket_count.saturating_sub(1));
    let slot = UNWIND_ROWS.get_ptr(mapping.first_bucket + bucket / 2)?;
    // SAFETY: a slot of the rows map, 8 bytes, holding two bucket entries.
    let pair = unsafe { *slot.cast::<u64>() };
    let first = (pair >> ((bucket & 1) * 32)) as u32;
    let index = last_at_or_before(
        mapping.first_row + first,
        MAX_BUCKET_ROWS.min(mapping.row_count.checked_sub(first)?),
        BUCKET_SEARCH_STEPS,
        |index| Some(UNWIND_ROWS.get(index)?.pc <= address),
    )?;
    let row = *UNWIND_ROWS.get(index)?;
    (row.pc <= address).then_some(row)
}

/// Binary search over slots `first..first + count` for the last one at or
/// before the searched value (`at_or_before(slot)`), in exactly `steps`
/// steps (see the module doc); the caller checks that slot itself, as it is
/// the first when every slot is after the value. `None` for no slots, or a
/// slot that cannot be read.
#[inline(always)]
fn last_at_or_before(
    first: u32,
    count: u32,
    steps: u32,
    at_or_before: impl Fn(u32) -> Option<bool>,
) -> Option<u32> {
    if count == 0 {
        return None;
    }
    let mut base = first;
    let mut size = count;
    for _ in 0..steps {
        let half = size / 2;
        if at_or_before(base + half)? {
            base += half;
        }
        size -= half;
    }
    Some(base)
}
