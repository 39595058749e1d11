//! Reading [`Event`]s out of the kernel's ring buffer.
//!
//! The kernel submits most events without waking the reader (a wake-up per
//! event costs more than the event), so the session drains on a short timer
//! and also when the ring signals it is filling up.

use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracer_ebpf::{Event, EventWithStack};

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

    /// Hands every queued event to `sink`, in ring order, with the frames
    /// of events that carry their own stack; returns how many.
    pub fn drain(&mut self, mut sink: impl FnMut(&Event, Option<&[u64]>)) -> usize {
        let ring = self.ring.get_mut();
        let mut count = 0;
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<EventWithStack>() {
                // SAFETY: the kernel wrote a whole record of this type
                // (checked length); read unaligned, as ring records are only
                // guaranteed 8-byte alignment.
                let record =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<EventWithStack>()) };
                sink(&record.event, Some(record.frames()));
            } else if item.len() >= size_of::<Event>() {
                // SAFETY: as above.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
                sink(&event, None);
            } else {
                continue;
            }
            count += 1;
        }
        count
    }
}

/// Registers an owned file descriptor with the runtime for readability.
pub fn watch_readable<T: AsRawFd>(owner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `owner` owns its descriptor and keeps it open, unchanged, for
    // as long as the returned AsyncFd holds it.
    Ok(unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }?)
}
