//! Stack unwinding beyond frame pointers. The default path is the kernel's
//! own DWARF unwinder, fed by [`tables`] (`--unwind dwarf`, and `auto` for
//! processes without frame pointers). This module itself is the userspace
//! unwinder of `--unwind stack-copy`: it turns the registers and the copy of
//! the top of the user stack that the kernel attached to an allocation
//! event into return addresses, leaf first.
//!
//! Each executable file mapping of the target becomes a [`framehop`] module
//! with its DWARF CFI (`.eh_frame`/`.debug_frame`); frames whose code no CFI
//! covers — JIT-compiled code in anonymous memory, hand-written stubs — are
//! unwound through the frame pointer, which is what JIT compilers keep. The
//! modules follow the target's memory map: it is re-read when an unwound
//! address lies outside every mapping seen so far.
//!
//! The registers are those of the allocator's return probe, so the leaf is
//! the caller's pc right after the call (a return address, looked up one
//! byte back like every other frame), and `sp` and `bp` are the caller's.

mod framepointers;
mod module;
mod segments;
pub mod tables;

use std::time::{Duration, Instant};

use framehop::{
    FrameAddress, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use crate::maps::{self, Backing, Mapping};

/// How user stacks are collected (`--unwind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindMode {
    /// Walk frame pointers in the kernel.
    Fp,
    /// Unwind in the kernel with DWARF CFI tables (see [`tables`]).
    Dwarf,
    /// `dwarf` for processes whose executable lacks frame pointers, else `fp`.
    Auto,
    /// Copy the top of the stack into each event and unwind it here with
    /// DWARF CFI ([`StackUnwinder`]).
    StackCopy,
}

/// The caller's registers at the allocator's return and the top of its
/// stack, as an event carries them for unwinding here.
pub struct StackCopy<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes copied from the user stack starting at `sp`.
    pub stack: &'a [u8],
}

/// Frames kept at most, like the kernel's own limit (`perf_event_max_stack`).
const MAX_FRAMES: usize = 127;

/// The memory map is re-read at most this often when an address is unknown:
/// a wild frame-pointer walk can produce unmapped addresses on every event.
const REFRESH_PERIOD: Duration = Duration::from_millis(100);

/// The stack-copy size for the kernel programs under `mode`: 0 but for
/// `--unwind stack-copy`.
pub fn stack_copy_bytes(mode: UnwindMode, stack_bytes: u32) -> u32 {
    if mode == UnwindMode::StackCopy {
        stack_bytes
    } else {
        0
    }
}

/// Which processes the in-kernel unwinder gives tables under `mode`, if any.
pub fn table_policy(mode: UnwindMode) -> Option<tables::Policy> {
    match mode {
        UnwindMode::Dwarf => Some(tables::Policy::Always),
        UnwindMode::Auto => Some(tables::Policy::WithoutFramePointers),
        UnwindMode::Fp | UnwindMode::StackCopy => None,
    }
}

/// Whether the executable at `path` keeps frame pointers (see
/// [`framepointers`]); not when it cannot be surveyed (stripped of symbols).
pub fn keeps_frame_pointers(path: &std::path::Path) -> bool {
    match framepointers::survey(path) {
        Ok(survey) => {
            log::debug!(
                "{} of {} sampled functions of {} keep a frame pointer",
                survey.with_frame_pointer,
                survey.functions,
                path.display()
            );
            survey.keeps_frame_pointers()
        }
        Err(error) => {
            log::debug!("surveying {} for frame pointers: {error:#}", path.display());
            false
        }
    }
}

/// The outcome of one walk up a stack.
struct Walk {
    frames: Vec<u64>,
    /// The walk stopped at an address outside every known mapping.
    met_unknown_address: bool,
}

pub struct StackUnwinder {
    pid: u32,
    unwinder: UnwinderX86_64<module::SectionBytes>,
    cache: CacheX86_64,
    /// The executable mappings behind the unwinder's modules, in address order.
    mappings: Vec<Mapping>,
    last_refresh: Option<Instant>,
}

impl StackUnwinder {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            mappings: Vec::new(),
            last_refresh: None,
        }
    }

    /// Return addresses of the stack in `copy`, leaf first, ending at the
    /// first one that is not in executable memory (the walk went astray or
    /// left the copied bytes).
    pub fn unwind(&mut self, copy: &StackCopy<'_>) -> Vec<u64> {
        if self.last_refresh.is_none() {
            self.refresh();
        }
        let walk = self.walk(copy);
        // An address outside every known mapping may be a library loaded
        // or JIT code mapped since the map was read.
        if walk.met_unknown_address && self.may_refresh() && self.refresh() {
            return self.walk(copy).frames;
        }
        walk.frames
    }

    fn walk(&mut self, copy: &StackCopy<'_>) -> Walk {
        let mut walk = Walk {
            frames: Vec::with_capacity(32),
            met_unknown_address: !self.is_code(copy.ip),
        };
        if walk.met_unknown_address {
            return walk;
        }
        walk.frames.push(copy.ip);
        let mut regs = UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp);
        let mut read = stack_reader(copy);
        let mut address = FrameAddress::from_return_address(copy.ip);
        while let Some(frame) = address
            && walk.frames.len() < MAX_FRAMES
        {
            let caller = self
                .unwinder
                .unwind_frame(frame, &mut regs, &mut self.cache, &mut read);
            let Ok(Some(caller)) = caller else { break };
            if !self.is_code(caller) {
                walk.met_unknown_address = true;
                break;
            }
            walk.frames.push(caller);
            address = FrameAddress::from_return_address(caller);
        }
        walk
    }

    fn is_code(&self, address: u64) -> bool {
        maps::find(&self.mappings, address).is_some()
    }

    fn may_refresh(&self) -> bool {
        self.last_refresh
            .is_none_or(|at| at.elapsed() >= REFRESH_PERIOD)
    }

    /// Re-reads the memory map and brings the modules in line with it;
    /// true if anything changed.
    fn refresh(&mut self) -> bool {
        self.last_refresh = Some(Instant::now());
        let Some(current) = maps::read(self.pid) else {
            return false;
        };
        let current: Vec<Mapping> = current.into_iter().filter(|m| m.executable).collect();
        let same = |a: &Mapping, b: &Mapping| {
            a.start == b.start && a.end == b.end && a.backing == b.backing
        };
        let mut changed = false;
        for old in &self.mappings {
            if !current.iter().any(|new| same(old, new)) {
                self.unwinder.remove_module(old.start);
                changed = true;
            }
        }
        for new in &current {
            if self.mappings.iter().any(|old| same(old, new)) {
                continue;
            }
            changed = true;
            if matches!(new.backing, Backing::File(_)) {
                match module::load(self.pid, new) {
                    Ok(module) => self.unwinder.add_module(module),
                    // Without its CFI a module is still walked through
                    // frame pointers.
                    Err(error) => log::debug!("unwind tables of {:?}: {error:#}", new.backing),
                }
            }
        }
        self.mappings = current;
        changed
    }
}

/// Reads 8-byte words of the copied stack; anything outside it is unknown.
fn stack_reader<'a>(copy: &'a StackCopy<'_>) -> impl FnMut(u64) -> Result<u64, ()> + 'a {
    move |address| {
        let offset = usize::try_from(address.checked_sub(copy.sp).ok_or(())?).map_err(|_| ())?;
        let bytes = copy
            .stack
            .get(offset..offset.checked_add(8).ok_or(())?)
            .ok_or(())?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_copied_words() {
        let mut stack = vec![0u8; 24];
        stack[8..16].copy_from_slice(&0x1122u64.to_le_bytes());
        let copy = StackCopy {
            ip: 0,
            sp: 0x1000,
            bp: 0,
            stack: &stack,
        };
        let mut read = stack_reader(&copy);
        assert_eq!(read(0x1008), Ok(0x1122));
        assert_eq!(read(0x1010), Ok(0));
        assert_eq!(read(0x1011), Err(()));
        assert_eq!(read(0xff8), Err(()));
    }
}
