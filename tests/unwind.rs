//! Full stacks without frame pointers: DWARF unwinding in the kernel from
//! per-file tables (`--unwind dwarf`, chosen by `--unwind auto` for such
//! builds), in one process and host-wide, through a library loaded after
//! attaching, frame for frame as the userspace unwinder of copied stacks
//! (`--unwind stack-copy`) finds them; and inlined frames with their own
//! file:line. Host-wide, `--unwind auto` gives tables to a process in a
//! chroot with its own libc; and a table cap too small for every file
//! leaves the others to frame pointers, with one warning. No stack shows a
//! frame that is not code of its process: a walk stops at an rbp that is
//! data (in the kernel, or here for frame-pointer walks).

use std::path::Path;
use std::process::Command;

use integration_tests::{production::chroot_with, *};
use serde_json::Value;

/// One leak site of `tests/workloads/deep_nofp.c`: the whole call chain from
/// the allocator's caller outwards, and what stays outstanding there.
struct DeepSite {
    chain: &'static [&'static str],
    bytes: u64,
    count: u64,
}

/// KEEP IN SYNC with tests/workloads/deep_nofp.c.
const DEEP_SITES: &[DeepSite] = &[
    DeepSite {
        chain: &[
            "deep_a4", "deep_a3", "deep_a2", "deep_a1", "run_all", "main",
        ],
        bytes: 6 * 1000,
        count: 6,
    },
    DeepSite {
        chain: &[
            "deep_b6", "deep_b5", "deep_b4", "deep_b3", "deep_b2", "deep_b1", "run_all", "main",
        ],
        bytes: 3 * 40 * 50,
        count: 3,
    },
    DeepSite {
        chain: &["deep_c4", "deep_c3", "deep_c2", "deep_c1", "thread_main"],
        bytes: 4 * 3000,
        count: 4,
    },
];

/// Checks every [`DEEP_SITES`] chain in `report`: each stack with the
/// site's leaf holds the whole chain in order, and the site's bytes and
/// count are exact.
fn assert_deep_chains_whole(report: &Value) {
    for site in DEEP_SITES {
        assert_site_exact(
            report,
            site.chain[0],
            (site.bytes, site.count),
            |functions| {
                assert!(
                    functions.starts_with(site.chain),
                    "stack of {} is not the whole chain {:?}: {functions:?}",
                    site.chain[0],
                    site.chain
                );
            },
        );
    }
}

/// Checks the functions of each stack of `report` whose leaf is `leaf`
/// with `check`, and that their bytes and count add up to `expected`.
fn assert_site_exact(report: &Value, leaf: &str, expected: (u64, u64), check: impl Fn(&[&str])) {
    let stacks = stacks_with_leaf(report, leaf);
    assert!(
        !stacks.is_empty(),
        "no stack for {leaf}:\n{}",
        summarize_report(report)
    );
    let (mut bytes, mut count) = (0, 0);
    for stack in stacks {
        check(&frame_functions(stack));
        bytes += as_u64(stack, "bytes");
        count += as_u64(stack, "count");
    }
    assert_eq!((bytes, count), expected, "outstanding at {leaf}");
}

/// Runs `bin` (ready/go/done protocol) under `alloctrace <args>` and returns
/// the ready line and the final report.
fn trace(bin: &Path, args: &[&str]) -> (String, Value) {
    trace_command(Command::new(bin), args)
}

fn stacks_with_leaf<'a>(report: &'a Value, leaf: &str) -> Vec<&'a Value> {
    all_stacks(report)
        .into_iter()
        .filter(|s| leaf_function(s) == Some(leaf))
        .collect()
}

/// Built with -O2 and no frame pointers, every leak site's stack holds its
/// whole call chain in order, with exact bytes and counts; `--unwind auto`
/// (the default) sees the missing frame pointers and unwinds with DWARF.
#[test]
fn dwarf_unwinding_recovers_whole_chains_without_frame_pointers() {
    require_root();
    let (ready, report) = trace(&deep_nofp_bin(), &[]);
    assert!(
        ready.contains("DWARF unwinding"),
        "auto should pick DWARF for a build without frame pointers: {ready}"
    );
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    assert_deep_chains_whole(&report);
    // Unwound in the kernel from the files' tables: the executable, libc
    // and the dynamic loader, one table each.
    let tables = &report["totals"]["unwind_tables"];
    assert_eq!(as_u64(tables, "processes"), 1, "{tables}");
    assert!(as_u64(tables, "files") >= 3, "{tables}");
}

/// Why DWARF is needed: the kernel's frame-pointer walk cannot get past the
/// allocator's caller in this build (none of these functions sets up %rbp,
/// so it never points at their frames), although it counts the same bytes.
#[test]
fn frame_pointer_walk_breaks_chains_without_frame_pointers() {
    require_root();
    let (ready, report) = trace(&deep_nofp_bin(), &["--unwind", "fp"]);
    assert!(ready.contains("frame-pointer unwinding"), "{ready}");
    for site in DEEP_SITES {
        let stacks = stacks_with_leaf(&report, site.chain[0]);
        let bytes: u64 = stacks.iter().map(|s| as_u64(s, "bytes")).sum();
        assert_eq!(bytes, site.bytes, "outstanding at {}", site.chain[0]);
        for stack in stacks {
            let functions = frame_functions(stack);
            assert_ne!(
                functions.get(1),
                Some(&site.chain[1]),
                "the frame-pointer walk unexpectedly found {}'s caller: {functions:?}",
                site.chain[0]
            );
        }
    }
}

/// `--unwind auto` keeps the cheap kernel walk for a build with frame pointers.
#[test]
fn auto_keeps_frame_pointers_when_the_build_has_them() {
    require_root();
    let (ready, report) = trace(&leaky_bin(), &["--unwind", "auto"]);
    assert!(ready.contains("frame-pointer unwinding"), "{ready}");
    assert_sites_exact(&report);
}

/// An allocation inside two inlined functions shows both, innermost first,
/// each marked inlined and with the line of its own call, above the real
/// function they were inlined into.
#[test]
fn inlined_frames_carry_their_own_lines() {
    require_root();
    let (_, report) = trace(&inline_bin(), &["--unwind", "dwarf"]);
    let expected = [
        (
            "alloc_payload",
            true,
            marker_line("inline.c", "LINE:malloc"),
        ),
        (
            "new_record",
            true,
            marker_line("inline.c", "LINE:alloc_payload"),
        ),
        (
            "add_record",
            false,
            marker_line("inline.c", "LINE:new_record"),
        ),
    ];
    let stacks = stacks_with_leaf(&report, "alloc_payload");
    let bytes: u64 = stacks.iter().map(|s| as_u64(s, "bytes")).sum();
    let count: u64 = stacks.iter().map(|s| as_u64(s, "count")).sum();
    assert_eq!(
        (bytes, count),
        (5 * 700, 5),
        "outstanding under alloc_payload:\n{}",
        summarize_report(&report)
    );
    for stack in stacks {
        for (frame, (function, inlined, line)) in frames(stack).iter().zip(expected) {
            assert_eq!(frame["function"].as_str(), Some(function), "{stack}");
            assert_eq!(frame["inlined"].as_bool(), Some(inlined), "{frame}");
            assert_eq!(frame["line"].as_u64(), Some(line), "{frame}");
            assert!(
                frame["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("inline.c")),
                "{frame}"
            );
        }
        assert_eq!(frame_functions(stack).get(3), Some(&"main"), "{stack}");
    }
}

/// Host-wide, a process built without frame pointers that was running when
/// tracing started gets its tables, and every chain comes out whole.
#[test]
fn dwarf_unwinding_host_wide_recovers_whole_chains() {
    require_root();
    let mut w = Workload::spawn_bin(&deep_nofp_bin(), &[]);
    let (report, _) = trace_deep_nofp_host_wide(&mut w, "dwarf", "DWARF unwinding");
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    assert_deep_chains_whole(&report_of_process(&report, w.pid));
}

/// Runs `w` (a `deep_nofp`, started) under `alloctrace --all --comm
/// deep_nofp --unwind <unwind>`, whose ready line must contain `unwinding`,
/// and returns the final report and what the tracer printed.
fn trace_deep_nofp_host_wide(
    w: &mut Workload,
    unwind: &str,
    unwinding: &str,
) -> (Value, TracerOutput) {
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let tracer = Tracer::spawn_all(&[
        "--unwind".as_ref(),
        unwind.as_ref(),
        "--comm".as_ref(),
        "deep_nofp".as_ref(),
        "--interval".as_ref(),
        "1h".as_ref(),
        "--report".as_ref(),
        report_path.as_os_str(),
    ]);
    assert!(
        tracer.ready_line.contains(unwinding),
        "{}",
        tracer.ready_line
    );
    w.run();
    std::thread::sleep(SETTLE);
    let output = tracer.stop(libc::SIGINT);
    output.assert_success();
    (read_json(&report_path), output)
}

/// KEEP IN SYNC with tests/workloads/chain_nofp.c and dlopen_nofp.c.
const LIBRARY_CHAIN: &[&str] = &[
    "chain_5",
    "chain_4",
    "chain_3",
    "chain_2",
    "chain_1",
    "call_library",
    "main",
];

/// A library built without frame pointers and loaded after alloctrace
/// attached is unwound through its whole chain: the first allocation from
/// its code may stop at that code (its table is loaded on seeing it, and a
/// stack is never guessed past code the tracer has not read), every later
/// one is whole, and no block is lost.
#[test]
fn library_loaded_after_attaching_is_unwound_through_its_chain() {
    require_root();
    let library = chain_nofp_library();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn_bin(&dlopen_nofp_bin(), &[library.to_str().unwrap()]);
    let tracer = Tracer::spawn(w.pid, &["--report".as_ref(), report_path.as_os_str()], None);
    for _ in 0..5 {
        w.go();
        w.expect_line("done", DONE_TIMEOUT);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(SETTLE);
    tracer.stop(libc::SIGINT).assert_success();
    let report = read_json(&report_path);
    let stacks = stacks_with_leaf(&report, "chain_5");
    let total: u64 = stacks.iter().map(|s| as_u64(s, "bytes")).sum();
    assert_eq!(total, 5 * 700, "{}", summarize_report(&report));
    let mut whole = 0;
    for stack in &stacks {
        let functions = frame_functions(stack);
        assert!(
            LIBRARY_CHAIN.starts_with(&functions) || functions.starts_with(LIBRARY_CHAIN),
            "not a prefix of the chain: {functions:?}"
        );
        if functions.starts_with(LIBRARY_CHAIN) {
            whole += as_u64(stack, "count");
        }
    }
    assert!(whole >= 4, "only {whole} of 5 blocks with the whole chain");
}

/// A library `dlopen`ed just before its first allocations is named even
/// when they come faster than the memory map may be re-read (100 ms) and
/// the run stops before the next summary: those addresses are named at the
/// next re-read (here, the stop's), not left `[unknown]`.
#[test]
fn a_library_loaded_just_before_the_stop_is_named() {
    require_root();
    let library = chain_nofp_library();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn_bin(&dlopen_nofp_bin(), &[library.to_str().unwrap()]);
    let tracer = Tracer::spawn(
        w.pid,
        &[
            "--report".as_ref(),
            report_path.as_os_str(),
            "--interval".as_ref(),
            "1h".as_ref(),
        ],
        None,
    );
    w.go();
    w.go();
    w.expect_line("done", DONE_TIMEOUT);
    w.expect_line("done", DONE_TIMEOUT);
    std::thread::sleep(SETTLE);
    tracer.stop(libc::SIGINT).assert_success();
    let report = read_json(&report_path);
    let total: u64 = stacks_with_leaf(&report, "chain_5")
        .iter()
        .map(|s| as_u64(s, "bytes"))
        .sum();
    assert_eq!(total, 2 * 700, "{}", summarize_report(&report));
}

/// The kernel's table-driven unwinder and the userspace unwinder of copied
/// stacks find the same stacks, frame for frame, with the same bytes.
#[test]
fn kernel_and_stack_copy_unwinders_agree_frame_for_frame() {
    require_root();
    let kernel = unwound_stacks(Command::new(deep_nofp_bin()), "dwarf");
    let copied = unwound_stacks(Command::new(deep_nofp_bin()), "stack-copy");
    assert!(kernel.len() >= DEEP_SITES.len(), "{kernel:?}");
    assert_eq!(kernel, copied);
}

/// A chroot at `root` holding copies of `deep_nofp` and of the libraries
/// `ldd` lists (its libc is another file than the host's: its own probes,
/// its own tables), and a command running `deep_nofp` there (`chroot` execs
/// it: one pid throughout).
fn deep_nofp_chroot(root: &Path) -> impl Fn() -> Command + use<> {
    let inside = chroot_with(&deep_nofp_bin(), root);
    let root = root.to_owned();
    move || {
        let mut command = Command::new("/usr/sbin/chroot");
        command.arg(&root).arg(&inside);
        command
    }
}

/// Host-wide with the default `--unwind auto`, a process built without
/// frame pointers in a chroot with its own libc gets tables for its own
/// files: every chain whole, bytes exact, and frame for frame what the
/// userspace unwinder of copied stacks finds in the same program.
#[test]
fn host_wide_auto_unwinds_a_chroot_with_its_own_libc_as_stack_copies_do() {
    require_root();
    let dir = temp_dir();
    let in_chroot = deep_nofp_chroot(&dir.path().join("root"));
    let mut w = Workload::spawn_command(in_chroot());
    let (report, output) = trace_deep_nofp_host_wide(
        &mut w,
        "auto",
        "DWARF unwinding where frame pointers are missing",
    );
    // Its libc is a file of its own, which only it maps.
    let probing = format!("(found in pid {})", w.pid);
    assert!(
        output
            .stderr
            .lines()
            .any(|line| line.contains("probing libc") && line.contains(&probing)),
        "{}",
        output.stderr
    );
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    let process = report_of_process(&report, w.pid);
    assert_deep_chains_whole(&process);
    // Its executable, libc and loader, each its own file.
    let tables = &report["totals"]["unwind_tables"];
    assert!(as_u64(tables, "files") >= 3, "{tables}");
    let copied = unwound_stacks(in_chroot(), "stack-copy");
    assert_eq!(frame_lists(&process), copied);
}

/// A table cap with room for the program's own table but not its libc's:
/// libc falls back to frame pointers (counted in the totals, one warning
/// line), tracing goes on, and the chains, all in the program's own code,
/// stay whole with exact bytes. The table loaded first is not evicted to
/// make room for the next one of the same process. Where the walk goes on
/// through libc by rbp (`__libc_start_call_main`, `start_thread`), no frame
/// it shows is outside the process's code.
#[test]
fn files_over_the_table_cap_fall_back_to_frame_pointers_with_one_warning() {
    require_root();
    let (report, output, code) = trace_with_code(
        Command::new(deep_nofp_bin()),
        &["--unwind", "dwarf", "--unwind-table-memory", "64K"],
    );
    let tables = &report["totals"]["unwind_tables"];
    assert!(as_u64(tables, "files_over_cap") >= 1, "{tables}");
    assert!(as_u64(tables, "files") >= 1, "{tables}");
    let warnings: Vec<&str> = output
        .stderr
        .lines()
        .filter(|line| line.contains("unwind tables reached their cap"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", output.stderr);
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    assert_deep_chains_whole(&report);
    assert_eq!(frames_outside(&report, &code), Vec::<String>::new());
    as_u64(&report["totals"], "stacks_cut_in_kernel");
    as_u64(&report["totals"], "stacks_cut_at_unmapped");
}

/// One leak site of `tests/workloads/garbage_rbp.c`: the leaf function, the
/// frames a walk may rightly show (its caller `with_rbp` is the frame whose
/// rbp is data), and what stays outstanding there.
struct GarbageSite {
    leaf: &'static str,
    bytes: u64,
    count: u64,
}

/// KEEP IN SYNC with tests/workloads/garbage_rbp.c.
const GARBAGE_SITES: &[GarbageSite] = &[
    GarbageSite {
        leaf: "leak_below",
        bytes: 5 * 1100,
        count: 5,
    },
    GarbageSite {
        leaf: "leak_above",
        bytes: 7 * 1200,
        count: 7,
    },
];

/// Checks every [`GARBAGE_SITES`] site of `report`: its stacks are exactly
/// `frames` after the leaf (what the walk may rightly show above it), and
/// its bytes and count are exact.
fn assert_garbage_sites_cut(report: &Value, after_leaf: &[&str]) {
    for site in GARBAGE_SITES {
        assert_site_exact(report, site.leaf, (site.bytes, site.count), |functions| {
            assert_eq!(functions[1..], *after_leaf, "stack of {}", site.leaf);
        });
    }
}

/// Under the table cap, a frame whose rbp is data (a heap address below the
/// stack; a fake frame on the stack whose return address is in no mapping)
/// is where the in-kernel walk stops: the stack shows the frames up to it,
/// never the garbage above it, and the cut is counted. Bytes stay exact.
#[test]
fn dwarf_walk_stops_at_a_frame_pointer_that_is_data() {
    require_root();
    let (report, _, code) = trace_with_code(
        Command::new(garbage_rbp_bin()),
        &["--unwind", "dwarf", "--unwind-table-memory", "64K"],
    );
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    assert_eq!(frames_outside(&report, &code), Vec::<String>::new());
    assert_garbage_sites_cut(&report, &["with_rbp"]);
    let totals = &report["totals"];
    assert!(as_u64(totals, "stacks_cut_in_kernel") >= 2, "{totals}");
    assert!(
        as_u64(&totals["unwind_tables"], "files_over_cap") >= 1,
        "{totals}"
    );
}

/// The frame-pointer walk cannot judge rbp (it has no tables), so it shows
/// the fake frames' return address; alloctrace ends each such stack before
/// that frame, in no executable mapping of the process, and counts it.
#[test]
fn frames_outside_the_process_code_are_cut_from_frame_pointer_stacks() {
    require_root();
    let (report, _, code) = trace_with_code(Command::new(garbage_rbp_bin()), &["--unwind", "fp"]);
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    assert_eq!(frames_outside(&report, &code), Vec::<String>::new());
    assert_garbage_sites_cut(&report, &[]);
    let totals = &report["totals"];
    assert!(as_u64(totals, "stacks_cut_at_unmapped") >= 2, "{totals}");
    assert_eq!(as_u64(totals, "stacks_cut_in_kernel"), 0, "{totals}");
}
