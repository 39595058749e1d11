//! Exactness at both ends of a busy run: alloctrace attaches while the target
//! is allocating and freeing ~1,700 times a second, and stops (`--duration`)
//! while it still is. Nothing is leaked, so nothing may be reported
//! outstanding and no free may be of an unknown block (but the one in flight
//! at attach).
//!
//! Probes attach and detach one at a time, tens of milliseconds apart. Before
//! the tracer cut its final drain at the moment it decided to stop, the
//! detach window (a free probe gone while aligned_alloc's remained, say)
//! showed up as hundreds of phantom blocks or unknown frees in most runs.

use std::time::Duration;

use integration_tests::*;

#[test]
fn busy_target_attached_and_detached_mid_churn_is_exact() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let bin = compile_c("steady.c", "steady", WORKLOAD_CFLAGS);
    let mut w = Workload::spawn_bin(&bin, &["6"]);
    w.go();
    std::thread::sleep(Duration::from_millis(300));
    let args = [
        "--duration".as_ref(),
        "5s".as_ref(),
        "--report".as_ref(),
        report_path.as_os_str(),
    ];
    let tracer = Tracer::spawn(w.pid, &args, None);
    tracer.wait_exit(Duration::from_secs(20)).assert_success();
    w.wait_done();

    let report = read_json(&report_path);
    let totals = report.get("totals").expect("totals");
    let (bytes, count) = site_totals(&report, "steady_site");
    assert_eq!(
        (bytes, count),
        (0, 0),
        "freed blocks reported outstanding: {totals}"
    );
    // At most the one block in flight when the probes attached.
    assert!(
        as_u64(totals, "preexisting_frees") <= 1,
        "frees of unknown blocks: {totals}"
    );
    assert!(
        as_u64(totals, "allocs") > 5_000,
        "too few allocations seen: {totals}"
    );
}
