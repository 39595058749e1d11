//! Allocators other than the target's shared glibc: a static executable's
//! own, and replacement allocators (jemalloc, tcmalloc, mimalloc) that
//! interpose `malloc`, found automatically or named with `--allocator-lib`.

use std::path::Path;

use integration_tests::*;
use serde_json::Value;

/// (name in the ready line, library installed by `cargo xtask setup`).
const REPLACEMENTS: &[(&str, &str)] = &[
    ("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    (
        "tcmalloc",
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    ),
    ("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
];

fn assert_fork_sites(report: &Value, what: &str) {
    for (site, expected) in [
        ("site_before_fork", (10 * 1000, 10)),
        ("site_after_fork", (3 * 3000, 3)),
        ("site_constructor", (1111, 1)),
        ("site_in_child", (0, 0)),
    ] {
        assert_eq!(
            site_totals(report, site),
            expected,
            "[{what}] site {site}\n{}",
            summarize_report(report)
        );
    }
}

#[test]
fn static_executables_are_traced_through_their_own_allocator() {
    require_root();
    let mut w = Workload::spawn_bin(&static_target_bin(), &[]);
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    let tracer = Tracer::spawn(w.pid, &[Path::new("--report"), &report], None);
    assert!(
        tracer.ready_line.contains("static executable"),
        "{}",
        tracer.ready_line
    );
    w.run();
    w.run();
    tracer.stop(libc::SIGINT).assert_success();
    let report = read_json(&report);
    let (site, bytes, count) = STATIC_SITE;
    assert_eq!(
        site_totals(&report, site),
        (2 * bytes, 2 * count),
        "{}",
        summarize_report(&report)
    );
}

#[test]
fn replacement_allocators_are_found_and_traced_exactly() {
    require_root();
    let bin = lifecycle_bin();
    for &(name, library) in REPLACEMENTS {
        assert!(
            Path::new(library).exists(),
            "{library} is missing: run `cargo xtask setup`"
        );
        let (out, report) = launch_with_env(
            &[("LD_PRELOAD", library)],
            &["--interval", "1h"],
            &[bin.as_os_str(), "fork".as_ref()],
        );
        out.assert_success();
        assert!(
            out.stderr.contains(&format!("({name} {library}")),
            "[{name}] ready line should name the allocator:\n{}",
            out.stderr
        );
        assert_fork_sites(&report, name);
        // Every free matched a block seen allocated: these allocators have
        // no glibc-style per-thread cache flush at thread exit.
        let totals = &processes(&report)[0]["totals"];
        assert_eq!(as_u64(totals, "preexisting_frees"), 0, "[{name}] {totals}");
    }
}

#[test]
fn allocator_lib_names_the_allocator_to_trace() {
    require_root();
    let (_, library) = REPLACEMENTS[0];
    let bin = lifecycle_bin();
    let (out, report) = launch_with_env(
        &[("LD_PRELOAD", library)],
        &["--allocator-lib", library, "--interval", "1h"],
        &[bin.as_os_str(), "fork".as_ref()],
    );
    out.assert_success();
    assert!(
        out.stderr.contains(&format!("(--allocator-lib {library}")),
        "{}",
        out.stderr
    );
    assert_fork_sites(&report, "--allocator-lib");
}
