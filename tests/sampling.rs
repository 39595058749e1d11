//! `--sample-rate`: Poisson sampling by bytes. The estimates must be
//! unbiased and within their statistical error of the workload's truth;
//! blocks far above the rate are always seen, so their numbers are exact.

use integration_tests::*;

/// KEEP IN SYNC with `run_sampling` in tests/workloads/lifecycle.c.
const SMALL_BLOCKS: f64 = 200_000.0;
const SMALL_SIZE: f64 = 64.0;
const LARGE: (u64, u64) = (20 << 20, 20);
const RATE: f64 = 4096.0;
/// The kernel's table puts every size below RATE/64 in the first slot,
/// sampled at the probability of the slot's upper bound.
const SLOT_UPPER_BOUND: f64 = RATE / 64.0;

#[test]
fn sampled_estimates_are_within_their_error_and_large_blocks_exact() {
    require_root();
    let bin = lifecycle_bin();
    let (out, report) = launch(
        &["--sample-rate", "4K", "--interval", "1h"],
        &[bin.as_os_str(), "sampling".as_ref()],
    );
    out.assert_success();
    assert!(
        out.stderr.contains("sampling 1 per 4096 B"),
        "{}",
        out.stderr
    );
    assert_eq!(as_u64(&report, "sample_rate_bytes"), 4096);

    assert_eq!(
        site_totals(&report, "site_sample_large"),
        LARGE,
        "{}",
        summarize_report(&report)
    );
    // Every churned block was freed: whatever was sampled was released.
    assert_eq!(site_totals(&report, "site_sample_churn"), (0, 0));

    // Each small block is reported with probability p and weighs 1/p: the
    // estimate of n blocks has a standard deviation of sqrt(n (1-p) / p).
    let p = -(-SLOT_UPPER_BOUND / RATE).exp_m1();
    let sigma_count = (SMALL_BLOCKS * (1.0 - p) / p).sqrt();
    let (bytes, count) = site_totals(&report, "site_sample_small");
    let tolerance = 5.0 * sigma_count; // fails about once in 1.7 million runs
    println!(
        "estimated {count} blocks / {bytes} B for {SMALL_BLOCKS} / {} (σ = {sigma_count:.0} blocks)",
        SMALL_BLOCKS * SMALL_SIZE
    );
    assert!(
        (count as f64 - SMALL_BLOCKS).abs() < tolerance,
        "estimated {count} blocks, truth {SMALL_BLOCKS} ± {tolerance:.0}"
    );
    assert!(
        (bytes as f64 - SMALL_BLOCKS * SMALL_SIZE).abs() < tolerance * SMALL_SIZE,
        "estimated {bytes} B, truth {} ± {:.0}",
        SMALL_BLOCKS * SMALL_SIZE,
        tolerance * SMALL_SIZE
    );
}
