//! Mapped memory (`--trace-memory both`, and `mapped` alone): the anonymous
//! private mappings and break growth a process makes itself are ledgered by
//! range and reported as stacks of kind `mmap`, exact by stack, beside its
//! heap blocks, with `--pid`, in launch mode and host-wide alike, and in
//! `--metrics-addr` series of their own. The workload
//! (tests/workloads/mapped.c) holds a known number of bytes from each of its
//! functions through partial unmaps, a reservation committed in part,
//! MAP_FIXED over a mapping, mremap growth and a break moved with `brk`, and
//! maps large malloc blocks, grows glibc's main arena, makes transient
//! mappings and maps a file, none of which may count as mapped memory; its
//! `more` mode runs the other hard cases (MREMAP_DONTUNMAP, an mremap that
//! must move, MAP_FIXED over a reservation, MADV_DONTNEED, a shared
//! mapping, a thread with its own arena and stack).

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
        ("grow_break", (24 * PAGE, 1)),
    ])
}

/// KEEP IN SYNC with tests/workloads/mapped.c: the heap blocks of the
/// functions whose memory glibc maps or takes from the break itself.
fn expected_heap() -> BTreeMap<&'static str, (u64, u64)> {
    BTreeMap::from([
        ("big_mallocs", (4 << 20, 4)),
        ("arena_mallocs", (2 * 64 * 16 * KIB, 2 * 64)),
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

/// `report`'s totals by leaf function for `kind`, for the functions of
/// `expected` only.
fn of_functions(
    report: &Value,
    kind: &str,
    expected: &BTreeMap<&'static str, (u64, u64)>,
) -> BTreeMap<&'static str, (u64, u64)> {
    let found = by_leaf(&of_kind(report, kind));
    expected
        .keys()
        .filter_map(|&function| Some((function, *found.get(function)?)))
        .collect()
}

/// Runs the workload (built as `bin_name`, its comm; `workload_args` say
/// what it does) once under a tracer
/// with `args`: attached to it with `--pid`, or `host_wide`, started first
/// and filtered to that comm. Returns the report of the workload alone, the
/// folded stacks and the tracer's output.
fn trace_workload(
    bin_name: &str,
    workload_args: &[&str],
    args: &[&str],
    host_wide: bool,
) -> (Value, String, TracerOutput) {
    trace_workload_then(bin_name, workload_args, args, host_wide, |_| {})
}

/// [`trace_workload`], calling `once_done` with the workload's pid when it
/// has done its work, before the tracer stops.
fn trace_workload_then(
    bin_name: &str,
    workload_args: &[&str],
    args: &[&str],
    host_wide: bool,
    once_done: impl FnOnce(u32),
) -> (Value, String, TracerOutput) {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let folded_path = dir.path().join("folded.txt");
    let bin = compile_c("mapped.c", bin_name, WORKLOAD_CFLAGS);
    let mut outputs: Vec<&str> = args.to_vec();
    outputs.extend([
        "--report",
        report_path.to_str().unwrap(),
        "--folded",
        folded_path.to_str().unwrap(),
    ]);
    let (mut w, tracer) = if host_wide {
        outputs.extend(["--comm", bin_name]);
        if !args.contains(&"--interval") {
            outputs.extend(["--interval", "1h"]);
        }
        let tracer = Tracer::spawn_all(&outputs);
        (Workload::spawn_bin(&bin, workload_args), tracer)
    } else {
        let w = Workload::spawn_bin(&bin, workload_args);
        let tracer = Tracer::spawn(w.pid, &outputs, None);
        (w, tracer)
    };
    w.run();
    std::thread::sleep(SETTLE);
    once_done(w.pid);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let report = report_of_process(&read_json(&report_path), w.pid);
    let folded = std::fs::read_to_string(&folded_path).unwrap();
    (report, folded, out)
}

/// The checks `--trace-memory both` passes in every mode: each function's
/// mapped memory exact, the mapped totals, the blocks glibc maps or takes
/// from the break counted once (as heap blocks), a root frame per kind.
fn assert_both_exact(report: &Value, folded: &str) {
    let expected = expected_mapped();
    let (loader, own): (Vec<&Value>, Vec<&Value>) = of_kind(report, "mmap")
        .into_iter()
        .partition(|stack| from_the_loader(stack));
    let mapped = by_leaf(&own);
    let mapped: BTreeMap<&str, (u64, u64)> =
        mapped.iter().map(|(leaf, &v)| (leaf.as_str(), v)).collect();
    assert_eq!(mapped, expected, "{}", summarize_report(report));
    let process = &processes(report)[0];
    let expected_bytes: u64 = expected.values().map(|(bytes, _)| bytes).sum();
    let loader_bytes: u64 = loader.iter().map(|stack| as_u64(stack, "bytes")).sum();
    let totals = &process["mapped"];
    assert_eq!(
        as_u64(totals, "outstanding_bytes"),
        expected_bytes + loader_bytes
    );
    // Up 40 pages, down 16: both moves, and glibc's own none of them.
    assert_eq!(as_u64(totals, "break_moves"), 2, "{totals}");
    // glibc maps each 1 MiB block itself, and grows its main arena for the
    // 16 KiB ones, inside malloc: heap blocks, and no mapped memory.
    let heap = of_functions(report, "heap", &expected_heap());
    assert_eq!(heap, expected_heap(), "{}", summarize_report(report));

    // The flamegraph's stacks stand on a root frame per kind.
    assert!(folded.lines().count() > 0);
    for line in folded.lines() {
        let line = line.split_once(';').map_or(line, |(first, rest)| {
            // Host-wide lines start at the process frame.
            if first.starts_with('[') { line } else { rest }
        });
        assert!(
            line.starts_with("[heap];") || line.starts_with("[mmap];"),
            "{line}"
        );
    }
}

/// A stack of the dynamic loader's own mappings (the zero-filled `.bss` of
/// the libraries it maps, its allocations before libc's malloc runs): seen
/// when the process is traced from its `execve`, as host-wide mode traces
/// the processes started after it.
fn from_the_loader(stack: &Value) -> bool {
    frames(stack)
        .first()
        .and_then(|leaf| leaf["module"].as_str())
        .is_some_and(|module| module.contains("/ld-linux"))
}

#[test]
fn mapped_memory_is_exact_by_stack_and_large_malloc_blocks_count_once() {
    let (report, folded, _) = trace_workload("mapped", &[], &["--trace-memory", "both"], false);
    assert_both_exact(&report, &folded);
}

#[test]
fn host_wide_mapped_memory_is_exact_per_process_and_shown_apart() {
    let (report, folded, _) = trace_workload("mapped_all", &[], &["--trace-memory", "both"], true);
    assert_both_exact(&report, &folded);
    let process = &processes(&report)[0];
    assert_eq!(process["comm"], "mapped_all");
    // Heap totals stay the heap's: the mapped bytes are apart.
    let heap_bytes: u64 = of_kind(&report, "heap")
        .iter()
        .map(|stack| as_u64(stack, "bytes"))
        .sum();
    assert_eq!(as_u64(&process["totals"], "outstanding_bytes"), heap_bytes);
}

#[test]
fn mapped_alone_traces_no_heap_block_and_every_mapping() {
    let (report, _, out) = trace_workload("mapped_only", &[], &["--trace-memory", "mapped"], false);
    assert!(out.stderr.contains("mapped memory only"), "{}", out.stderr);
    // No heap probe: no heap block, no allocator call.
    assert!(of_kind(&report, "heap").is_empty());
    let process = &processes(&report)[0];
    assert_eq!(as_u64(&process["totals"], "allocs"), 0);
    // The process's own mappings are exact as with `both`...
    let expected = expected_mapped();
    assert_eq!(
        of_functions(&report, "mmap", &expected),
        expected,
        "{}",
        summarize_report(&report)
    );
    // ...and what glibc maps for its large blocks (4 MiB) and takes from
    // the break for its arena (2 MiB of blocks, less the free space the
    // arena had) is mapped memory now.
    let own: u64 = expected.values().map(|(bytes, _)| bytes).sum();
    let all = as_u64(&process["mapped"], "outstanding_bytes");
    assert!(
        all >= own + (5 << 20),
        "{all} {}",
        summarize_report(&report)
    );
}

#[test]
fn mapped_alone_refuses_what_judges_heap_blocks() {
    require_root();
    let w = Workload::spawn(Mode::Stay);
    let pid = w.pid.to_string();
    for (what, flags) in [
        ("--sample-rate", ["--sample-rate", "64K"]),
        ("--fail-on-growth", ["--fail-on-growth", "1M"]),
    ] {
        let dir = temp_dir();
        let mut cmd = tracer_command();
        cmd.args(["--pid", &pid, "--trace-memory", "mapped"])
            .args(flags)
            .current_dir(dir.path());
        let out = run_to_completion(cmd, std::time::Duration::from_secs(20));
        assert_clean_error(&out, what);
        assert!(
            out.stderr.contains("--trace-memory mapped"),
            "{}",
            out.stderr
        );
        assert!(dir_entries(dir.path()).is_empty());
    }
}

#[test]
fn sbrk_growth_is_named_at_its_caller_with_dwarf_unwinding() {
    let args = ["--trace-memory", "both", "--unwind", "dwarf"];
    let (report, _, _) = trace_workload("mapped", &["sbrk"], &args, false);
    let mapped = &processes(&report)[0]["mapped"];
    assert_eq!(as_u64(mapped, "break_moves"), 2, "{mapped}");
    assert_eq!(as_u64(mapped, "outstanding_bytes"), 12 * PAGE, "{mapped}");
    // glibc's sbrk is the leaf (it calls brk); its caller comes next.
    let pool: Vec<&Value> = of_kind(&report, "mmap")
        .into_iter()
        .filter(|stack| frame_functions(stack).get(1) == Some(&"sbrk_pool"))
        .collect();
    assert_eq!(
        by_leaf(&pool).into_values().collect::<Vec<_>>(),
        [(12 * PAGE, 1)],
        "{}",
        summarize_report(&report)
    );
}

/// KEEP IN SYNC with tests/workloads/mapped.c (`more`): (bytes, pieces)
/// held by the mappings each function of the workload made.
fn expected_more() -> BTreeMap<&'static str, (u64, u64)> {
    BTreeMap::from([
        ("dontunmap_source", (10 * PAGE, 1)),
        ("keep_move", (12 * PAGE, 1)),
        ("part_source", (8 * PAGE, 1)),
        ("part_move", (2 * PAGE, 1)),
        ("reserve_move", (4 * PAGE, 1)),
        ("move_grow", (16 * PAGE, 1)),
        ("fixed_commit", (10 * PAGE, 1)),
        ("advise_dontneed", (8 * PAGE, 1)),
        ("spawn_arena_thread", (256 * KIB, 1)),
    ])
}

/// The first frame of `stack` in the workload itself (below libc's
/// wrappers), by function.
fn workload_caller<'a>(stack: &'a Value, bin_name: &str) -> Option<&'a str> {
    frames(stack)
        .iter()
        .find(|frame| {
            frame["module"]
                .as_str()
                .is_some_and(|module| module.ends_with(&format!("/{bin_name}")))
        })
        .and_then(|frame| frame["function"].as_str())
}

/// The other hard cases, in `--unwind dwarf` so that stacks starting in
/// libc (glibc's `mremap` and `pthread_create`) reach the workload:
/// `MREMAP_DONTUNMAP` (the old range stays, the new one is the caller's),
/// an `mremap` that must move to grow, `MAP_FIXED` committing part of a
/// reservation, `madvise(MADV_DONTNEED)` (still counts), a shared anonymous
/// mapping (left out), and a thread whose arena glibc reserves inside
/// malloc (heap blocks only) and whose stack it maps in `pthread_create`.
#[test]
fn mremap_dontunmap_forced_moves_fixed_commits_and_threads_are_exact() {
    let args = ["--trace-memory", "both", "--unwind", "dwarf"];
    let (report, _, _) = trace_workload("mapped", &["more"], &args, false);
    let mapped = &processes(&report)[0]["mapped"];
    let expected = expected_more();
    let expected_bytes: u64 = expected.values().map(|(bytes, _)| bytes).sum();
    assert_eq!(
        as_u64(mapped, "outstanding_bytes"),
        expected_bytes,
        "{mapped}"
    );
    // The old ranges of MREMAP_DONTUNMAP stay mapped and tracked: giving
    // back part of one is no unmap of unknown memory.
    assert_eq!(as_u64(mapped, "untracked_unmapped_bytes"), 0, "{mapped}");
    let by_caller = |kind: &str| {
        let mut totals: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for stack in of_kind(&report, kind) {
            let caller = workload_caller(stack, "mapped").unwrap_or("?");
            let entry = totals.entry(caller).or_default();
            entry.0 += as_u64(stack, "bytes");
            entry.1 += as_u64(stack, "count");
        }
        totals
    };
    assert_eq!(by_caller("mmap"), expected, "{}", summarize_report(&report));
    let heap = by_caller("heap");
    assert_eq!(
        heap.get("arena_thread"),
        Some(&(4 * 16 * KIB, 4)),
        "{heap:?}"
    );
    // The new range's stack starts at the system call, in libc's wrapper
    // (it keeps a frame without a frame pointer; DWARF walks past it).
    let moved = of_kind(&report, "mmap")
        .into_iter()
        .find(|stack| workload_caller(stack, "mapped") == Some("keep_move"))
        .expect("keep_move's stack");
    assert!(
        leaf_function(moved).is_some_and(|leaf| leaf.contains("mremap")),
        "{:?}",
        frame_functions(moved)
    );
}

/// Launch mode traces the program from its `execve`: the same mappings
/// (and the loader's own, apart), counted until it exits. The program runs
/// at once and exits in milliseconds, before its stacks through libc can be
/// named (or walked by DWARF tables loaded after it started): the totals
/// are exact, and so is each mapping whose `mmap` its function made itself.
#[test]
fn launch_mode_traces_mapped_memory_from_exec() {
    require_root();
    let bin = compile_c("mapped.c", "mapped_launch", WORKLOAD_CFLAGS);
    let bin = bin.to_str().unwrap();
    let (out, report) = launch(&["--trace-memory", "both"], &[bin, "more", "now"]);
    out.assert_success();
    let (loader, own): (Vec<&Value>, Vec<&Value>) = of_kind(&report, "mmap")
        .into_iter()
        .partition(|stack| from_the_loader(stack));
    assert!(!loader.is_empty(), "{}", summarize_report(&report));
    let expected = expected_more();
    let own_bytes: u64 = own.iter().map(|stack| as_u64(stack, "bytes")).sum();
    assert_eq!(
        own_bytes,
        expected.values().map(|(bytes, _)| bytes).sum::<u64>(),
        "{}",
        summarize_report(&report)
    );
    let direct = by_leaf(&own);
    for function in [
        "dontunmap_source",
        "part_source",
        "move_grow",
        "fixed_commit",
        "advise_dontneed",
    ] {
        assert_eq!(direct.get(function), expected.get(function), "{function}");
    }
}

/// Scrapes `addr` until `alloctrace_mapped_outstanding_bytes` of `pid` reads
/// the same at two scrapes a tick apart and at least `at_least` (the
/// workload is idle by then); returns that scrape.
fn settled_scrape(addr: &str, pid: u32, at_least: u64) -> String {
    let pid = pid.to_string();
    let read = |body: &str| {
        metric_value(
            body,
            "alloctrace_mapped_outstanding_bytes",
            &[("pid", &pid)],
        )
        .map(|value| value as u64)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = None;
    loop {
        let (_, body) = http_get(addr, "/metrics");
        let now = read(&body);
        if now.is_some_and(|bytes| bytes >= at_least) && now == last {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mapped series never settled:\n{body}"
        );
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// `--metrics-addr` with mapped memory traced: per process, the committed
/// bytes and pieces the report has, and the largest mapped stacks (the rest
/// summed, so the series add up), in series of their own beside the
/// heap's, which keep the heap's numbers.
#[test]
fn metrics_show_mapped_memory_apart_from_the_heap() {
    let own: u64 = expected_mapped().values().map(|(bytes, _)| bytes).sum();
    for host_wide in [false, true] {
        let addr = format!("127.0.0.1:{}", free_port());
        let args = [
            "--trace-memory",
            "both",
            "--interval",
            "250ms",
            "--top",
            "3",
            "--metrics-addr",
            &addr,
        ];
        let mut scrape = String::new();
        let (report, _, _) = trace_workload_then("mapped", &[], &args, host_wide, |pid| {
            scrape = settled_scrape(&addr, pid, own);
        });
        let process = &processes(&report)[0];
        let pid = process["pid"].as_u64().unwrap().to_string();
        let labels = [("pid", pid.as_str()), ("comm", "mapped")];
        let metric = |name: &str, more: &[(&str, &str)]| {
            let labels: Vec<(&str, &str)> = labels.iter().chain(more).copied().collect();
            metric_value(&scrape, name, &labels)
                .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{scrape}")) as u64
        };
        let mapped = &process["mapped"];
        let mapped_bytes = as_u64(mapped, "outstanding_bytes");
        if !host_wide {
            // Attached after start-up: exactly the workload's own.
            assert_eq!(mapped_bytes, own);
        }
        assert_eq!(
            metric("alloctrace_mapped_outstanding_bytes", &[]),
            mapped_bytes
        );
        assert_eq!(
            metric("alloctrace_mapped_outstanding_mappings", &[]),
            as_u64(mapped, "outstanding_count")
        );
        // The heap's series keep the heap's numbers.
        assert_eq!(
            metric("alloctrace_outstanding_bytes", &[]),
            as_u64(&process["totals"], "outstanding_bytes")
        );
        // The largest mapped stack, by its caller, and the rest summed:
        // --top 3 stacks and one `other`, adding up to the total.
        let leak = metric(
            "alloctrace_mapped_stack_outstanding_bytes",
            &[("frame", "leak_mmap")],
        );
        assert_eq!(leak, 10 * 256 * KIB);
        let series: Vec<u64> = scrape
            .lines()
            .filter(|line| {
                line.starts_with("alloctrace_mapped_stack_outstanding_bytes{")
                    && line.contains(&format!("pid=\"{pid}\""))
            })
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(series.len(), 4, "{scrape}");
        assert_eq!(series.iter().sum::<u64>(), mapped_bytes, "{scrape}");
    }
}
