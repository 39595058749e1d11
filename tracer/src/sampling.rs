//! Sampled mode (`--sample-rate BYTES`): Poisson sampling by bytes, as
//! heapprofd and tcmalloc do. An allocation of `size` bytes is reported with
//! probability `p = 1 - exp(-size / rate)`, so a 1 MiB block at a 64 KiB rate
//! is always seen and a 64-byte one about once in a thousand; each reported
//! block then stands for `1/p` blocks and `size/p` bytes, which makes every
//! total and per-stack number an unbiased estimate.
//!
//! The kernel draws against a table of thresholds by size slot
//! (`tracer_ebpf::SAMPLE_TABLE_MAP`), computed here; the weights use the very
//! same thresholds, so the rounding of sizes into slots adds no bias.
//!
//! Every call still traps: sampling saves the stack walk, the event and the
//! aggregator's work for the calls it skips, not the trap.

use tracer_ebpf::{SAMPLE_SLOTS_PER_RATE, SAMPLE_TABLE_SLOTS, sample_slot};

/// The fixed-point scale of the kernel's thresholds (its random draw is a u32).
const ONE: f64 = 4_294_967_296.0;

#[derive(Clone, Debug)]
pub struct Sampling {
    rate: u64,
    step: u64,
    thresholds: Vec<u64>,
}

impl Sampling {
    /// Sampling at a mean of one report per `rate` bytes allocated.
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(SAMPLE_SLOTS_PER_RATE);
        let step = rate / SAMPLE_SLOTS_PER_RATE;
        let last = u64::from(SAMPLE_TABLE_SLOTS) - 1;
        let thresholds = (0..=last)
            .map(|slot| {
                if slot == last {
                    // Blocks of 16 rates and more: always (1 - e^-16 would
                    // miss one in ten million, for nothing).
                    return 1 << 32;
                }
                // The slot's largest size: never 0, so no size is unsampleable.
                let size = ((slot + 1) * step) as f64;
                let probability = -(-size / rate as f64).exp_m1();
                ((probability * ONE).round() as u64).clamp(1, 1 << 32)
            })
            .collect();
        Self {
            rate,
            step,
            thresholds,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Bytes per slot of the kernel's table.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The kernel's table: sampled when `prandom_u32 < threshold`.
    pub fn thresholds(&self) -> &[u64] {
        &self.thresholds
    }

    /// The probability with which the kernel reports a block of `size`.
    pub fn probability(&self, size: u64) -> f64 {
        self.thresholds[sample_slot(size, self.step) as usize] as f64 / ONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_always_sampled_and_small_ones_in_proportion() {
        let sampling = Sampling::new(64 << 10);
        assert_eq!(sampling.probability(16 << 20), 1.0);
        let p = sampling.probability(64);
        // 1 - exp(-(slot's upper bound 1024) / 65536) ≈ 1/64: the 64-byte
        // block shares slot 0 with every size below 1 KiB.
        assert!((p - 0.0155).abs() < 0.001, "{p}");
        assert!(sampling.probability(32 << 10) > p);
    }

    #[test]
    fn every_size_has_a_non_zero_chance() {
        let sampling = Sampling::new(1 << 30);
        assert!(sampling.thresholds().iter().all(|&t| t >= 1));
        assert!(sampling.probability(1) > 0.0);
    }

    #[test]
    fn weights_are_unbiased_over_many_draws() {
        // Simulate the kernel's draw with a fixed sequence: the mean of
        // size/p over sampled blocks estimates the bytes allocated.
        let sampling = Sampling::new(4096);
        let (size, blocks) = (48u64, 400_000u64);
        let p = sampling.probability(size);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut estimate = 0.0;
        for _ in 0..blocks {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let draw = state >> 32;
            if draw < sampling.thresholds()[sample_slot(size, sampling.step()) as usize] {
                estimate += size as f64 / p;
            }
        }
        let truth = (size * blocks) as f64;
        let sigma = truth * ((1.0 - p) / (blocks as f64 * p)).sqrt();
        assert!(
            (estimate - truth).abs() < 4.0 * sigma,
            "{estimate} vs {truth} ± {sigma}"
        );
    }
}
