//! The frame-pointer walk: the caller's return addresses, leaf first, read
//! up its chain of saved frame pointers, and the stack's hash. Reads user
//! memory only through the fault-tolerant helper, and writes nothing: what
//! the frames go into is the caller's business (`stacks`).

use aya_ebpf::helpers::bpf_probe_read_user;
use tracer_ebpf::MAX_INLINE_FRAMES;

/// Walks the caller's frame-pointer chain from `ip`/`bp`, handing each
/// return address (leaf first) to `frame` with its index; returns the
/// stack's hash (mixed with `tgid`) and the number of frames. Stops at the
/// first frame that cannot be read, does not move up the stack, or is 0.
#[inline(always)]
pub fn walk_frames(ip: u64, bp: u64, tgid: u64, mut frame: impl FnMut(usize, u64)) -> (u64, usize) {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = 0xcbf2_9ce4_8422_2325 ^ tgid;
    let mut fp = bp;
    let mut return_address = ip;
    let mut count = 0;
    while count < MAX_INLINE_FRAMES {
        frame(count, return_address);
        hash = (hash ^ return_address).wrapping_mul(FNV_PRIME);
        count += 1;
        // SAFETY: reads user memory through the fault-tolerant helper.
        let Ok([next_fp, next_return]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) })
        else {
            break;
        };
        if next_fp <= fp || next_return == 0 {
            break;
        }
        fp = next_fp;
        return_address = next_return;
    }
    (hash, count)
}
