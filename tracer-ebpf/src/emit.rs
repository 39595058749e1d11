//! Writing events: the per-CPU event rings (declared from the shared ABI's
//! list, `tracer_ebpf::for_each_event_ring!`), the event header, when a
//! submission wakes the reader, and the process markers of the lifecycle
//! tracepoints.
//!
//! Every writer reserves in [`ring`], the ring of the CPU it runs on, and
//! reports a full ring as `Err(Counter::LostEvents)`: nothing here blocks or
//! retries.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_get_current_comm, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::RingBuf,
};
use tracer_ebpf::{Counter, DEFAULT_RING_SIZE, EVENT_RINGS, Event, EventKind, NO_STACK};

use crate::{counters::Outcome, hit::Hit};

/// Declares one ring per entry of the shared list, named by its
/// identifier, and [`ring`], which picks the current CPU's.
macro_rules! event_rings {
    ($first_index:literal => $first:ident, $($index:literal => $ring:ident),+ $(,)?) => {
        #[map]
        static $first: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_SIZE, 0);
        $(
            #[map]
            static $ring: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_SIZE, 0);
        )+

        /// The ring of the CPU the program runs on. One shared ring made
        /// CPUs fight over its lock and cache lines: on a 2-thread churn that
        /// tripled the cost of each event (bpf_stats: a free from 135 to
        /// 460 ns). Userspace merges the rings by timestamp.
        pub fn ring() -> &'static RingBuf {
            // SAFETY: a helper without preconditions.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            match cpu % EVENT_RINGS {
                $first_index => &$first,
                $($index => &$ring,)+
                _ => &$first,
            }
        }
    };
}

tracer_ebpf::for_each_event_ring!(event_rings);

/// Once the ring holds 1/WAKEUP_FRACTION of its size, events wake the reader.
const WAKEUP_FRACTION: u64 = 4;

/// Events submitted, on average, between two looks at how full the ring is.
const WAKEUP_CHECK_EVERY: u64 = 64;

/// Writes one event to the ring buffer.
#[inline(always)]
pub fn emit<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    stack_id: i32,
) -> Outcome {
    emit_hashed(hit, kind, addr, old_addr, size, stack_id, 0)
}

/// [`emit`] with a stack hash (see `tracer_ebpf::STACK_HASH`).
#[inline(always)]
pub fn emit_hashed<C: EbpfContext>(
    hit: &Hit<C>,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    stack_id: i32,
    stack_hash: u64,
) -> Outcome {
    let mut entry = ring().reserve::<Event>(0).ok_or(Counter::LostEvents)?;
    let mut event = event(hit.pid_tgid, kind, addr, old_addr, size, stack_id);
    event.stack_hash = stack_hash;
    entry.write(event);
    entry.submit(wakeup_flags(event.timestamp_ns));
    Ok(())
}

/// Writes an event that concerns the whole process rather than a block,
/// with the process's name (see `Event::marker_comm`).
pub fn emit_process_marker<C: EbpfContext>(ctx: &C, kind: EventKind) -> Outcome {
    let comm = bpf_get_current_comm().unwrap_or_default();
    let (low, high) = Event::comm_words(&comm);
    emit(&Hit::new(ctx), kind, low, high, 0, NO_STACK)
}

/// The header of every event, stamped now.
pub fn event(
    pid_tgid: u64,
    kind: EventKind,
    addr: u64,
    old_addr: u64,
    size: u64,
    stack_id: i32,
) -> Event {
    Event {
        kind: kind as u32,
        tid: pid_tgid as u32,
        pid: (pid_tgid >> 32) as u32,
        stack_id,
        size,
        addr,
        old_addr,
        // SAFETY: a helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_hash: 0,
    }
}

/// Below a quarter full, events are submitted without waking the reader,
/// which drains on a short timer: a wake-up per event costs more than the
/// event itself. Even asking the ring how full it is costs ~200 ns per
/// malloc+free pair (measured: two queries per event), so only about one
/// event in [`WAKEUP_CHECK_EVERY`] asks, picked by the low bits of its
/// timestamp (free, unlike a per-CPU counter, which measured ~100 ns): a
/// quarter of the default ring is ~40,000 events, far more than a CPU writes
/// between two checks.
pub fn wakeup_flags(timestamp_ns: u64) -> u64 {
    if !(timestamp_ns >> 4).is_multiple_of(WAKEUP_CHECK_EVERY) {
        return BPF_RB_NO_WAKEUP as u64;
    }
    let ring = ring();
    let backlog = ring.query(BPF_RB_AVAIL_DATA as u64);
    let capacity = ring.query(BPF_RB_RING_SIZE as u64);
    let flags = if backlog >= capacity / WAKEUP_FRACTION {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}
