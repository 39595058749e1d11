//! Mapped memory (`--trace-memory both`): the anonymous private mappings a
//! process makes itself are ledgered by range and reported as stacks of
//! kind `mmap`, exact by stack, beside its heap blocks. The workload
//! (tests/workloads/mapped.c) holds a known number of bytes from each of its
//! functions through partial unmaps, a reservation committed in part,
//! MAP_FIXED over a mapping and mremap growth, and maps large malloc blocks,
//! transient mappings and a file that must not count.

use std::collections::BTreeMap;

use integration_tests::*;
use serde_json::Value;

const PAGE: u64 = 4096;
const KIB: u64 = 1024;

/// KEEP IN SYNC with tests/workloads/mapped.c: (bytes, pieces) held by the
/// mmap stacks of each function.
fn expected_mapped() -> BTreeMap<&'static str, (u64, u64)> {
    BTreeMap::from([
        ("leak_mmap", (10 * 256 * KIB, 10)),
        ("pool_pieces", (3 * PAGE, 2)),
        ("reserve_commit", (256 * KIB, 1)),
        ("map_base", (12 * PAGE, 2)),
        ("fixed_over", (4 * PAGE, 1)),
        ("remap_grow", (32 * PAGE, 1)),
    ])
}

fn by_leaf(stacks: &[&Value]) -> BTreeMap<String, (u64, u64)> {
    let mut totals = BTreeMap::new();
    for stack in stacks {
        let leaf = leaf_function(stack).unwrap_or("?").to_owned();
        let entry = totals.entry(leaf).or_insert((0, 0));
        entry.0 += as_u64(stack, "bytes");
        entry.1 += as_u64(stack, "count");
    }
    totals
}

fn of_kind<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    all_stacks(report)
        .into_iter()
        .filter(|stack| stack["kind"] == kind)
        .collect()
}

#[test]
fn mapped_memory_is_exact_by_stack_and_large_malloc_blocks_count_once() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let folded_path = dir.path().join("folded.txt");
    let bin = compile_c("mapped.c", "mapped", WORKLOAD_CFLAGS);
    let mut w = Workload::spawn_bin(&bin, &[]);
    let args = [
        "--trace-memory",
        "both",
        "--report",
        report_path.to_str().unwrap(),
        "--folded",
        folded_path.to_str().unwrap(),
    ];
    let tracer = Tracer::spawn(w.pid, &args, None);
    w.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();

    let report = read_json(&report_path);
    let expected = expected_mapped();
    let mapped = by_leaf(&of_kind(&report, "mmap"));
    let mapped: BTreeMap<&str, (u64, u64)> =
        mapped.iter().map(|(leaf, &v)| (leaf.as_str(), v)).collect();
    assert_eq!(mapped, expected, "{}", summarize_report(&report));
    let process = &processes(&report)[0];
    let expected_bytes: u64 = expected.values().map(|(bytes, _)| bytes).sum();
    assert_eq!(
        as_u64(&process["mapped"], "outstanding_bytes"),
        expected_bytes
    );
    // glibc maps each 1 MiB block itself, inside malloc: one heap block
    // each, and no mapping.
    let heap = by_leaf(&of_kind(&report, "heap"));
    let big = heap.get("big_mallocs").copied().unwrap_or_default();
    assert_eq!(big, (4 << 20, 4), "{}", summarize_report(&report));

    // The flamegraph's stacks stand on a root frame per kind.
    let folded = std::fs::read_to_string(&folded_path).unwrap();
    assert!(folded.lines().count() > 0);
    for line in folded.lines() {
        assert!(
            line.starts_with("[heap];") || line.starts_with("[mmap];"),
            "{line}"
        );
    }
}
