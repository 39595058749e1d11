//! Reading [`Event`]s out of the kernel's per-CPU ring buffers, in one
//! order.
//!
//! The kernel submits most events without waking the reader (a wake-up per
//! event costs more than the event), so a thread reads the rings on a short
//! timer, and also when a ring signals it is filling up or brings a new
//! stack; the session takes each batch as it comes.

use std::{
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
};
use tracer_ebpf::{
    Event, EventWithStack, EventWithStackCopy, INLINE_STACK, INLINE_STACK_CUT,
    INLINE_STACK_PARTIAL, NO_STACK, STACK_COPY,
};

use crate::{
    clock::monotonic_ns,
    unwind::{StackCopy, StackUnwinder},
};

/// The stack an event brought along.
pub enum Carried<'a> {
    /// Nothing: no stack, or only the hash of one sent before (see
    /// `tracer_ebpf::STACK_HASH`).
    Nothing,
    /// Return addresses from the kernel's frame-pointer walk, leaf first.
    Frames(&'a [u64]),
    /// Registers and stack bytes for userspace to unwind.
    StackCopy(StackCopy<'a>),
}

/// How long after its timestamp an event is surely in its ring: a program
/// stamps an event between reserving and submitting it, microseconds apart
/// unless its task is preempted in between (the programs only disable
/// migration). Events are held back this long so that every event stamped
/// before them, on any CPU, has been read first.
const SETTLE_NS: u64 = 5_000_000;

/// Which events a drain hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Those stamped [`SETTLE_NS`] or more ago; the rest wait.
    Settled,
    /// All: the programs are detached, nothing more can arrive.
    All,
}

/// Reads the per-CPU event rings and hands their events out in timestamp
/// order (see `tracer_ebpf::EVENT_RINGS`).
///
/// A thread of its own empties the rings into memory every
/// [`READ_PERIOD_MS`], or at once when a ring signals it is filling, however
/// long the session takes over a summary or a first symbolization: with 10
/// million live blocks a summary took longer than an 8 MiB ring lasts.
///
/// What it holds is bounded ([`MAX_BACKLOG`]): when the session falls
/// behind the event rate for long, the thread stops emptying the rings and
/// the kernel drops what does not fit, counted as lost events, rather than
/// the backlog growing without end. Each drain takes at most
/// [`DRAIN_EVENTS`] of it, so a stop signal or `--duration` is heard
/// between chunks of a long backlog.
///
/// `R` is what a mode resolves a carried stack into when it resolves it on
/// read (see [`EventReader::read`]).
pub struct EventReader<R> {
    batches: UnboundedReceiver<Batch>,
    /// Batches received while waiting for one (see [`EventReader::next_batch`]).
    received: Vec<Batch>,
    /// Events read from the rings and not taken by [`EventReader::read`] yet.
    backlog: Arc<AtomicUsize>,
    /// Asks the reading thread for a last pass.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// When the newest batch's pass over the rings began.
    read_ns: u64,
    merge: Merge<R>,
}

/// How often the reading thread empties the rings when none is filling.
const READ_PERIOD_MS: i32 = 10;

/// Events read and not yet taken by the session at most (about 80 bytes
/// each, plus the frames of new stacks): past it the rings are left to fill.
/// Host-wide with in-kernel DWARF on this VM, during a cargo build with the
/// machine's two cores saturated, the session applied fewer events than
/// arrived and, without this bound, the backlog grew to 6.8 GB RSS in five
/// minutes and the final drain outlived `--duration` by minutes.
pub const MAX_BACKLOG: usize = 1 << 20;

/// Events one drain takes at most (whole batches, at least one).
const DRAIN_EVENTS: usize = 1 << 16;

/// How long one drain hands events out at most, so that a stop signal,
/// `--duration` and the ticks are heard while a long backlog is worked off:
/// host-wide on a saturated VM, stacks new to the tracer cost up to
/// milliseconds each, and a drain of [`DRAIN_EVENTS`] took over a minute.
const DRAIN_TIME: Duration = Duration::from_millis(100);

/// Events read from one ring per pass at most: a ring filled as fast as it
/// is read (an allocation storm) would otherwise keep a pass going, and its
/// batch growing, for as long as the storm lasts, past [`MAX_BACKLOG`].
const PASS_EVENTS: usize = 1 << 15;

/// One pass of the reading thread over every ring.
struct Batch {
    /// When the pass began (or, if it left events in a ring, the stamp of
    /// the last one it read there): every event stamped [`SETTLE_NS`]
    /// before this was in a ring by then, so it is in this batch or an
    /// earlier one.
    started_ns: u64,
    records: Vec<Decoded>,
}

impl<R> EventReader<R> {
    /// Starts reading `rings`. With an `unwinder`, the reading thread turns
    /// stack copies into frames as it reads them, straight from the ring:
    /// copying 8 KiB per event out of the ring first cost more CPU than the
    /// unwinding, and lost events by the million in the bench's DWARF runs.
    pub fn new(
        rings: Vec<RingBuf<MapData>>,
        unwinder: Option<StackUnwinder>,
    ) -> anyhow::Result<Self> {
        let epoll = Epoll::new()?;
        for ring in &rings {
            epoll.add(ring.as_raw_fd())?;
        }
        let (sender, batches) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let backlog = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("ring reader".into())
            .spawn({
                let (stop, backlog) = (stop.clone(), backlog.clone());
                move || {
                    let reader = RingReader {
                        epoll,
                        sender,
                        stop,
                        backlog,
                        warned: false,
                    };
                    reader.run(rings, unwinder);
                }
            })?;
        Ok(Self {
            batches,
            received: Vec::new(),
            backlog,
            stop,
            thread: Some(thread),
            read_ns: 0,
            merge: Merge::default(),
        })
    }

    /// Waits for the reading thread's next batch (one every
    /// [`READ_PERIOD_MS`] at most), to be taken by [`EventReader::read`].
    pub async fn next_batch(&mut self) -> anyhow::Result<()> {
        let batch = self
            .batches
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the ring reading thread stopped"))?;
        self.received.push(batch);
        Ok(())
    }

    /// Takes the events read so far (with [`Release::All`], once the
    /// programs are detached: every event left), giving each that carries a
    /// stack to `resolve` at once (see [`Merge::add`]), and returns the
    /// horizon up to which `release` lets events out (see
    /// [`EventReader::release`]).
    pub fn read(
        &mut self,
        release: Release,
        mut resolve: impl FnMut(&Event, Carried<'_>) -> Option<R>,
    ) -> u64 {
        if release == Release::All {
            self.stop_reading();
        }
        let mut taken: usize = self.received.iter().map(|b| b.records.len()).sum();
        while release == Release::All || taken + self.merge.held.len() < DRAIN_EVENTS {
            let Ok(batch) = self.batches.try_recv() else {
                break;
            };
            taken += batch.records.len();
            self.received.push(batch);
        }
        self.backlog.fetch_sub(taken, Ordering::AcqRel);
        for batch in self.received.drain(..) {
            self.read_ns = self.read_ns.max(batch.started_ns);
            for decoded in batch.records {
                self.merge.add(decoded, &mut resolve);
            }
        }
        match release {
            Release::Settled => self.read_ns.saturating_sub(SETTLE_NS),
            Release::All => u64::MAX,
        }
    }

    /// Hands the events read and stamped at or before `horizon_ns` to
    /// `sink`, oldest first, for at most [`DRAIN_TIME`] unless `horizon_ns`
    /// releases all (the last drain); returns how many. Those left are
    /// handed out first next time.
    pub fn release(&mut self, horizon_ns: u64, sink: impl FnMut(&Event, Arrived<'_, R>)) -> usize {
        let deadline = (horizon_ns != u64::MAX).then(|| Instant::now() + DRAIN_TIME);
        self.merge.release_until(horizon_ns, deadline, sink)
    }

    /// Has the reading thread make a last pass over the rings and end.
    fn stop_reading(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reading thread's side of the rings.
struct RingReader {
    epoll: Epoll,
    sender: UnboundedSender<Batch>,
    stop: Arc<AtomicBool>,
    /// Shared with [`EventReader`], which takes what this adds.
    backlog: Arc<AtomicUsize>,
    warned: bool,
}

impl RingReader {
    /// A pass over every ring (none while the backlog is full), then a wait
    /// for a ring's wake-up or [`READ_PERIOD_MS`]; until asked to stop
    /// (after one last pass) or nobody receives its batches any more.
    fn run(mut self, mut rings: Vec<RingBuf<MapData>>, mut unwinder: Option<StackUnwinder>) {
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if !stopping && self.backlog.load(Ordering::Acquire) >= MAX_BACKLOG {
                self.warn_once();
                // Not the epoll: a full ring would wake it at once.
                std::thread::sleep(std::time::Duration::from_millis(READ_PERIOD_MS as u64));
                continue;
            }
            let mut started_ns = monotonic_ns();
            let mut records = Vec::new();
            for ring in &mut rings {
                let first = records.len();
                let mut emptied = false;
                for _ in 0..PASS_EVENTS {
                    let Some(item) = ring.next() else {
                        emptied = true;
                        break;
                    };
                    records.extend(Decoded::decode(&item, unwinder.as_mut()));
                }
                // A ring left with events in it vouches only for what was
                // stamped before its last event read (see `SETTLE_NS`).
                if !emptied && let Some(last) = records[first..].last() {
                    started_ns = started_ns.min(last.event.timestamp_ns);
                }
            }
            self.backlog.fetch_add(records.len(), Ordering::AcqRel);
            let batch = Batch {
                started_ns,
                records,
            };
            if self.sender.send(batch).is_err() || stopping {
                return;
            }
            self.epoll.wait(READ_PERIOD_MS);
        }
    }

    fn warn_once(&mut self) {
        if !std::mem::replace(&mut self.warned, true) {
            log::warn!(
                "alloctrace: {MAX_BACKLOG} events read and not processed yet: the tracer falls \
                 behind the event rate, and events beyond that are dropped (counted as lost)"
            );
        }
    }
}

/// Events read from several rings, each in its own order, put back into
/// one order by timestamp. A CPU stamps its events in the order it writes
/// them, and an event that follows from another (the free of a block
/// allocated on another CPU) is stamped after it, so the timestamp order is
/// an order in which every block's events make sense.
pub struct Merge<R> {
    held: Vec<Record<R>>,
}

impl<R> Default for Merge<R> {
    fn default() -> Self {
        Self { held: Vec::new() }
    }
}

/// An event's stack as it is released: resolved when it was read, or as
/// it arrived.
pub enum Arrived<'a, R> {
    Resolved(R),
    Carried(Carried<'a>),
}

/// An event copied out of its ring, with the frames it brought (or what
/// they were resolved into on read).
struct Record<R> {
    event: Event,
    frames: Option<Vec<u64>>,
    resolved: Option<R>,
}

/// An event and its frames as decoded from one ring item.
struct Decoded {
    event: Event,
    frames: Option<Vec<u64>>,
}

impl Decoded {
    /// Copies one ring item out (`None` when malformed). A stack copy is
    /// kept as the frames `unwinder` finds in it; without an unwinder the
    /// event has no stack.
    fn decode(item: &[u8], unwinder: Option<&mut StackUnwinder>) -> Option<Self> {
        let (mut event, carried) = decode(item)?;
        let frames = match (carried, unwinder) {
            (Carried::Nothing, _) => None,
            (Carried::Frames(frames), _) => Some(frames.to_vec()),
            (Carried::StackCopy(copy), Some(unwinder)) => Some(unwinder.unwind(&copy)),
            (Carried::StackCopy(_), None) => {
                event.stack_id = NO_STACK;
                None
            }
        };
        Some(Self { event, frames })
    }
}

impl<R> Record<R> {
    fn carried(&self) -> Carried<'_> {
        self.frames
            .as_deref()
            .map_or(Carried::Nothing, Carried::Frames)
    }
}

impl<R> Merge<R> {
    /// Adds one ring item (ignored when malformed); see [`Merge::add`].
    pub fn push(
        &mut self,
        item: &[u8],
        resolve: &mut impl FnMut(&Event, Carried<'_>) -> Option<R>,
    ) {
        if let Some(decoded) = Decoded::decode(item, None) {
            self.add(decoded, resolve);
        }
    }

    /// Adds one event. A stack it carries goes to `resolve` right away,
    /// while the process is surely there to be symbolized, and the event is
    /// kept with what it returns; when it returns `None`, with the stack.
    fn add(
        &mut self,
        decoded: Decoded,
        resolve: &mut impl FnMut(&Event, Carried<'_>) -> Option<R>,
    ) {
        let mut record = Record {
            event: decoded.event,
            frames: decoded.frames,
            resolved: None,
        };
        if record.frames.is_some() {
            record.resolved = resolve(&record.event, record.carried());
            if record.resolved.is_some() {
                record.frames = None;
            }
        }
        self.held.push(record);
    }

    /// Hands every event stamped at or before `horizon_ns` to `sink`, oldest
    /// first; returns how many.
    pub fn release(&mut self, horizon_ns: u64, sink: impl FnMut(&Event, Arrived<'_, R>)) -> usize {
        self.release_until(horizon_ns, None, sink)
    }

    /// As [`Merge::release`], but stops at `deadline` (checked every few
    /// hundred events); the events left wait, in order, for the next call.
    pub fn release_until(
        &mut self,
        horizon_ns: u64,
        deadline: Option<Instant>,
        mut sink: impl FnMut(&Event, Arrived<'_, R>),
    ) -> usize {
        // Stable, and fast on what it gets: one sorted run per ring.
        self.held.sort_by_key(|record| record.event.timestamp_ns);
        let ready = self
            .held
            .partition_point(|record| record.event.timestamp_ns <= horizon_ns);
        let mut records = self.held.drain(..ready).collect::<Vec<_>>().into_iter();
        let mut released = 0;
        for mut record in records.by_ref() {
            match record.resolved.take() {
                Some(resolved) => sink(&record.event, Arrived::Resolved(resolved)),
                None => sink(&record.event, Arrived::Carried(record.carried())),
            }
            released += 1;
            if released % 256 == 0 && deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
        }
        self.held.splice(0..0, records);
        released
    }
}

/// An epoll instance watching the rings, so one wait covers them all.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Self> {
        // SAFETY: no pointers; a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd) -> std::io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: `event` is valid for the call; the kernel copies it.
        let ret =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for a ring to signal.
    fn wait(&self, timeout_ms: i32) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: the buffer holds `events.len()` entries.
        unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
    }
}

/// One ring item: its event and the stack it carries, or `None` when the
/// item is shorter than its record type says.
pub fn decode(item: &[u8]) -> Option<(Event, Carried<'_>)> {
    let event = read_record::<Event>(item)?;
    let carried = match event.stack_id {
        INLINE_STACK | INLINE_STACK_PARTIAL | INLINE_STACK_CUT => {
            let record = read_record::<EventWithStack>(item)?;
            let count = record.frames().len();
            let offset = std::mem::offset_of!(EventWithStack, frames);
            // SAFETY: any bytes are valid u64s; align_to only hands out the
            // aligned middle, which is all of it for a ring item (the kernel
            // aligns records to 8 bytes).
            let (before, frames, _) = unsafe { item[offset..].align_to::<u64>() };
            if !before.is_empty() || frames.len() < count {
                return None;
            }
            Carried::Frames(&frames[..count])
        }
        STACK_COPY => {
            let record = read_record::<EventWithStackCopy>(item)?;
            let stack = &item[size_of::<EventWithStackCopy>()..];
            let stack = &stack[..(record.stack_len as usize).min(stack.len())];
            Carried::StackCopy(StackCopy {
                ip: record.ip,
                sp: record.sp,
                bp: record.bp,
                stack,
            })
        }
        _ => Carried::Nothing,
    };
    Some((event, carried))
}

/// The record of type `T` at the start of a ring item, if the item is that
/// long. Every record starts with an [`Event`] whose `stack_id` says which.
fn read_record<T: Copy>(item: &[u8]) -> Option<T> {
    (item.len() >= size_of::<T>()).then(|| {
        // SAFETY: the kernel wrote a whole record of this plain-data type
        // (checked length); read unaligned, as ring records are only
        // guaranteed 8-byte alignment.
        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) }
    })
}

/// Registers an owned file descriptor with the runtime for readability.
pub fn watch_readable<T: AsRawFd>(owner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `owner` owns its descriptor and keeps it open, unchanged, for
    // as long as the returned AsyncFd holds it.
    Ok(unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }?)
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{EventKind, NO_STACK};

    use super::*;

    fn item(kind: EventKind, addr: u64, timestamp_ns: u64) -> [u8; size_of::<Event>()] {
        let event = Event {
            kind: kind as u32,
            tid: 1,
            pid: 1,
            stack_id: NO_STACK,
            size: 16,
            addr,
            old_addr: 0,
            timestamp_ns,
            stack_hash: 0,
        };
        // SAFETY: Event is plain data without padding: its bytes are its wire format.
        unsafe { std::mem::transmute(event) }
    }

    fn released(merge: &mut Merge<()>, horizon_ns: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        merge.release(horizon_ns, |event, _| {
            out.push((event.timestamp_ns, event.addr))
        });
        out
    }

    #[test]
    fn rings_read_one_after_the_other_come_out_in_timestamp_order() {
        let mut merge = Merge::default();
        let mut keep = |_: &Event, _: Carried<'_>| None::<()>;
        // Ring 1 (read first) frees a block that ring 0 allocated earlier.
        merge.push(&item(EventKind::Free, 0xa0, 20), &mut keep);
        merge.push(&item(EventKind::Alloc, 0xb0, 40), &mut keep);
        merge.push(&item(EventKind::Alloc, 0xa0, 10), &mut keep);
        merge.push(&item(EventKind::Free, 0xb0, 50), &mut keep);
        assert_eq!(
            released(&mut merge, 45),
            [(10, 0xa0), (20, 0xa0), (40, 0xb0)]
        );
        // What is past the horizon waits for the next drain, still in order.
        merge.push(&item(EventKind::Alloc, 0xc0, 45), &mut keep);
        assert_eq!(released(&mut merge, u64::MAX), [(45, 0xc0), (50, 0xb0)]);
        assert!(released(&mut merge, u64::MAX).is_empty());
    }

    #[test]
    fn a_drain_out_of_time_leaves_the_rest_in_order_for_the_next() {
        let mut merge = Merge::default();
        let mut keep = |_: &Event, _: Carried<'_>| None::<()>;
        for timestamp_ns in (0..1000).rev() {
            merge.push(
                &item(EventKind::Alloc, timestamp_ns, timestamp_ns),
                &mut keep,
            );
        }
        let mut out = Vec::new();
        let past = Some(Instant::now());
        let first = merge.release_until(900, past, |event, _| out.push(event.timestamp_ns));
        // The deadline is checked every 256 events.
        assert_eq!(first, 256);
        merge.release(u64::MAX, |event, _| out.push(event.timestamp_ns));
        assert_eq!(out, (0..1000).collect::<Vec<u64>>());
    }

    #[test]
    fn stacks_are_resolved_when_read_and_kept_otherwise() {
        // Ring records are 8-byte aligned: build them in words.
        let frames_record = |stack_hash| {
            let mut event: Event = read_record(&item(EventKind::Alloc, 0xa0, 10)).unwrap();
            event.stack_id = INLINE_STACK;
            event.stack_hash = stack_hash;
            let mut frames = [0; tracer_ebpf::MAX_INLINE_FRAMES];
            frames[..2].copy_from_slice(&[0x1111, 0x2222]);
            let record = EventWithStack {
                event,
                stack_bytes: 16,
                frames,
            };
            let mut words = vec![0u64; size_of::<EventWithStack>() / 8];
            // SAFETY: `words` is exactly as large as the record, which is plain data.
            unsafe { std::ptr::write_unaligned(words.as_mut_ptr().cast(), record) };
            words
        };
        let (first, second) = (frames_record(7), frames_record(8));
        // SAFETY: views the words' bytes, keeping their alignment.
        let view = |words: &Vec<u64>| unsafe {
            std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8)
        };
        let mut merge = Merge::default();
        merge.push(view(&first), &mut |_, carried| match carried {
            Carried::Frames(frames) => Some(frames.len() + 100),
            _ => None,
        });
        merge.push(view(&second), &mut |_, _| None);
        let mut seen = Vec::new();
        merge.release(u64::MAX, |event, arrived| {
            seen.push(match arrived {
                Arrived::Resolved(resolved) => (event.stack_hash, Some(resolved), Vec::new()),
                Arrived::Carried(Carried::Frames(frames)) => {
                    (event.stack_hash, None, frames.to_vec())
                }
                Arrived::Carried(_) => (event.stack_hash, None, Vec::new()),
            });
        });
        assert_eq!(
            seen,
            [(7, Some(102), vec![]), (8, None, vec![0x1111, 0x2222])]
        );
    }
}
