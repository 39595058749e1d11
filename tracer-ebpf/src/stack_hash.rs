//! The hash that names a user stack (see `tracer_ebpf::STACK_HASH`), shared
//! by the frame-pointer walk and the DWARF unwinder so that both feed the
//! same send-once path: FNV-1a over the return addresses, seeded with the
//! process id, since the same addresses mean other code in another process.

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A stack hash being computed, one frame at a time.
#[derive(Clone, Copy)]
pub struct StackHash(u64);

/// The hash of an empty stack of process `tgid`.
#[inline(always)]
pub fn start_hash(tgid: u64) -> StackHash {
    StackHash(FNV_OFFSET ^ tgid)
}

impl StackHash {
    #[inline(always)]
    pub fn add_frame(self, return_address: u64) -> Self {
        Self((self.0 ^ return_address).wrapping_mul(FNV_PRIME))
    }

    #[inline(always)]
    pub fn finish(self) -> u64 {
        self.0
    }
}
