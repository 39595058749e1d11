//! Reading [`Event`]s out of the kernel's ring buffer.
//!
//! The kernel submits most events without waking the reader (a wake-up per
//! event costs more than the event), so the session drains on a short timer
//! and also when the ring signals it is filling up.

use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracer_ebpf::{Event, EventWithStack, EventWithStackCopy, INLINE_STACK, STACK_COPY};

/// The stack an event brought along, beyond a stack-map id.
pub enum Carried<'a> {
    /// Nothing: the event's `stack_id` (if any) is in the kernel's map.
    Nothing,
    /// Return addresses from the kernel's frame-pointer walk, leaf first.
    Frames(&'a [u64]),
    /// Registers and stack bytes for userspace to unwind.
    StackCopy(StackCopy<'a>),
}

/// The caller's registers at the allocator's return and the top of its stack.
pub struct StackCopy<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes copied from the user stack starting at `sp`.
    pub stack: &'a [u8],
}

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub fn new(ring: RingBuf<MapData>) -> anyhow::Result<Self> {
        Ok(Self {
            ring: watch_readable(ring)?,
        })
    }

    /// Waits until the kernel signals a filling ring.
    pub async fn filling(&self) -> anyhow::Result<()> {
        let mut guard = self.ring.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands every queued event to `sink`, in ring order, with the stack
    /// it carries; returns how many.
    pub fn drain(&mut self, mut sink: impl FnMut(&Event, Carried<'_>)) -> usize {
        let ring = self.ring.get_mut();
        let mut count = 0;
        while let Some(item) = ring.next() {
            if let Some((event, carried)) = decode(&item) {
                sink(&event, carried);
                count += 1;
            }
        }
        count
    }
}

/// One ring item: its event and the stack it carries, or `None` when the
/// item is shorter than its record type says.
pub fn decode(item: &[u8]) -> Option<(Event, Carried<'_>)> {
    let event = read_record::<Event>(item)?;
    let carried = match event.stack_id {
        INLINE_STACK => {
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
