//! `--sample-rate`: which allocations are reported, and which frees. An
//! allocation is drawn with the probability of its size slot, from the
//! table userspace computes (`tracer_ebpf::SAMPLE_TABLE_MAP`), and a
//! sampled block is remembered so that only its free is reported. Without
//! sampling, [`SAMPLE_STEP`] is 0 and, being read-only data known to the
//! verifier, prunes all of this from exact tracing.

use aya_ebpf::{
    Global,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, HashMap},
};
use tracer_ebpf::{Counter, SAMPLE_TABLE_SLOTS, sample_slot};

/// With `--sample-rate`, the width of one slot of [`SAMPLE_TABLE`] in bytes;
/// 0 (the default) reports every call. Set at load time, so the verifier
/// prunes the sampling code from exact tracing.
#[unsafe(export_name = tracer_ebpf::shared_name!(SAMPLE_STEP_GLOBAL))]
static SAMPLE_STEP: Global<u64> = Global::new(0);

shared_map!(
    SAMPLE_TABLE_MAP,
    /// Sampling thresholds by size slot (see `tracer_ebpf::SAMPLE_TABLE_MAP`).
    static SAMPLE_TABLE: Array<u64> = Array::with_max_entries(SAMPLE_TABLE_SLOTS, 0);
);

/// Sampled blocks still live: in sampled mode `free` reports only these, so
/// the frees of unsampled blocks cost a failed delete and no event.
#[map]
static SAMPLED: HashMap<u64, u8> = HashMap::with_max_entries(1 << 20, 0);

/// Whether the programs sample (`--sample-rate`) rather than trace every call.
#[inline(always)]
pub fn sampling() -> bool {
    SAMPLE_STEP.load() != 0
}

/// Whether to report the allocation of `size` bytes at `addr`: always when
/// tracing every call; with `--sample-rate`, with the probability of its
/// size slot, remembering the block so its free is reported too.
pub fn sample(addr: u64, size: u64) -> Result<bool, Counter> {
    let step = SAMPLE_STEP.load();
    if step == 0 {
        return Ok(true);
    }
    let threshold = SAMPLE_TABLE
        .get(sample_slot(size, step))
        .copied()
        .unwrap_or(1 << 32);
    // SAFETY: a helper without preconditions.
    let draw = u64::from(unsafe { bpf_get_prandom_u32() });
    if draw >= threshold {
        return Ok(false);
    }
    SAMPLED.insert(addr, 1, 0).map_err(|_| Counter::MapErrors)?;
    Ok(true)
}

/// Whether a block being released was reported: always when tracing every
/// call; with `--sample-rate`, when it was sampled (and is forgotten now).
pub fn was_sampled(addr: u64) -> bool {
    !sampling() || SAMPLED.remove(addr).is_ok()
}
