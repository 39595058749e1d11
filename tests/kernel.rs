//! `--kernel`: the kernel's own allocations, by kernel stack and task. A
//! workload (tests/workloads/kernel_hold.c) opens and holds N UDP sockets,
//! so the kernel allocates N objects from each of three slab caches on
//! three known paths; the report taken while it holds them must attribute
//! exactly those bytes to those paths under its name, and the one taken
//! after it closed them (it still runs) must show them released (all but
//! the rare free the kernel skips, see below). The kernel's stack cache
//! (tracer-ebpf/src/kernel_stacks.rs) must keep all of this exact, report
//! what it did, and send again the frames of stacks userspace forgot.

use integration_tests::*;
use serde_json::Value;

/// Sockets the workload holds.
const SOCKETS: u64 = 300;

/// The kernel paths every socket allocates on: the first frame after the
/// allocator, and the slab cache it allocates from.
const PATHS: &[(&str, &str)] = &[
    ("sock_alloc_inode", "sock_inode_cache"),
    ("sk_prot_alloc", "UDP"),
    ("alloc_empty_file", "filp"),
];

const TASK: &str = "kernel_hold";

/// The system call every held object comes from (the workload's loader
/// opens files through `alloc_empty_file` too).
const SOCKET_CALL: &str = "__sys_socket";

fn describe(report: &Value, task: &str) -> String {
    let mut lines: Vec<String> = all_stacks(report)
        .into_iter()
        .filter(|stack| task_of(stack) == Some(task))
        .map(|stack| {
            format!(
                "{} B in {}: {}",
                stack["bytes"],
                stack["count"],
                frame_functions(stack).join(" < ")
            )
        })
        .collect();
    lines.truncate(30);
    lines.join("\n")
}

/// Asserts that `report` holds exactly `SOCKETS` objects of each of the
/// socket paths for `task`, from the socket call.
fn assert_holds_the_sockets(report: &Value, task: &str) {
    for &(leaf, cache) in PATHS {
        let per_object = slab_object_bytes(cache);
        assert_eq!(
            task_path_totals(report, task, leaf, SOCKET_CALL),
            (SOCKETS * per_object, SOCKETS),
            "{leaf} ({cache}, {per_object} B per object) of {task} while held:\n{}\n\
             every task's: {:?}",
            describe(report, task),
            tasks_on(report, leaf)
        );
    }
}

/// (task, count) of every stack of the socket call whose first frame is
/// `leaf`.
fn tasks_on<'a>(report: &'a Value, leaf: &str) -> Vec<(Option<&'a str>, u64)> {
    all_stacks(report)
        .into_iter()
        .filter(|stack| {
            leaf_function(stack) == Some(leaf) && frame_functions(stack).contains(&SOCKET_CALL)
        })
        .map(|stack| (task_of(stack), stack["count"].as_u64().unwrap_or(0)))
        .collect()
}

/// The sockets' objects of `task` still outstanding in `report`, the most
/// of any path.
fn sockets_left(report: &Value, task: &str) -> u64 {
    PATHS
        .iter()
        .map(|&(leaf, _)| task_path_totals(report, task, leaf, SOCKET_CALL).1)
        .max()
        .unwrap_or(0)
}

/// Bounded, not exact: the socket inodes and socks are freed in RCU
/// callbacks, in softirqs, which the kernel does not trace while a tracing
/// program runs on the same CPU (the programs' recursion misses, reported
/// as `recursion_missed_frees`). A missed free leaves its object
/// outstanding: up to 9 of 300 seen with the three tests' tracers running
/// at once (5,706 frees skipped host-wide in that run). Each object left
/// must be one of the frees skipped.
const SOCKETS_LEFT_AT_MOST: u64 = SOCKETS / 10;

#[test]
fn held_sockets_show_as_kernel_memory_of_their_paths_and_go_when_closed() {
    require_root();
    let dir = temp_dir();
    let final_path = dir.path().join("final.json");
    let bin = compile_c("kernel_hold.c", TASK, WORKLOAD_CFLAGS);
    let tracer = spawn_kernel(&["--interval", "1s", "--report", final_path.to_str().unwrap()]);
    let mut workload = spawn_hold(&bin);
    workload.run();
    // The events of the last socket are read within milliseconds.
    std::thread::sleep(SETTLE);
    // SIGUSR1 writes the final report's file as of now; the final one
    // will write it again.
    let held = report_now(&tracer, &final_path);
    std::fs::remove_file(&final_path).expect("remove the report taken while held");

    workload.send("close");
    workload.expect_line("closed", DONE_TIMEOUT);
    // Socket inodes and socks are freed after an RCU grace period, which
    // a loaded machine stretches past a second.
    wait_for_report(&tracer, &final_path, RCU_TIMEOUT, |report| {
        sockets_left(report, TASK) <= SOCKETS_LEFT_AT_MOST
    });
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let released = read_json(&final_path);

    assert_holds_the_sockets(&held, TASK);
    for &(leaf, cache) in PATHS {
        let per_object = slab_object_bytes(cache);
        let (bytes, count) = task_path_totals(&released, TASK, leaf, SOCKET_CALL);
        let skipped = as_u64(&released["totals"], "recursion_missed_frees");
        assert!(
            count <= SOCKETS_LEFT_AT_MOST.min(skipped) && bytes == count * per_object,
            "{leaf} after close: {count} objects, {bytes} B left ({} frees skipped):\n{}",
            released["totals"]["recursion_missed_frees"],
            describe(&released, TASK)
        );
    }
    // Every held stack is the kernel's, and goes through the socket call.
    for stack in all_stacks(&held) {
        assert_eq!(stack["kind"], "kernel");
    }
    let sockets = all_stacks(&held)
        .into_iter()
        .filter(|stack| {
            task_of(stack) == Some(TASK) && leaf_function(stack) == Some("sock_alloc_inode")
        })
        .collect::<Vec<_>>();
    for stack in sockets {
        let functions = frame_functions(stack);
        assert!(
            functions.contains(&SOCKET_CALL),
            "{}",
            functions.join(" < ")
        );
        let leaf = &frames(stack)[0];
        assert_eq!(leaf["module"], "[kernel]");
        assert!(leaf["offset"].as_u64().is_some(), "{leaf}");
    }
    // The process's totals hold at least what the workload held, and the
    // frees of blocks from before the start count apart.
    let totals = &held["totals"];
    let held_bytes: u64 = PATHS
        .iter()
        .map(|&(_, cache)| SOCKETS * slab_object_bytes(cache))
        .sum();
    assert!(as_u64(totals, "outstanding_bytes") >= held_bytes);
    assert!(as_u64(totals, "preexisting_frees") > 0, "{totals}");
}

/// Starts `kernel_hold` (`bin`) for `SOCKETS` sockets, and lets the
/// tracer (`--interval 1s`) tick once: it caches each pid's name until the
/// next tick, and an allocation of the child made before its `execve`
/// (still named as the test's thread) would name the workload's sockets
/// too (seen: "evicted_kernel_" for all 300).
fn spawn_hold(bin: &std::path::Path) -> Workload {
    let workload = Workload::spawn_bin(bin, &[&SOCKETS.to_string()]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    workload
}

/// How long the sockets' RCU frees may take.
const RCU_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The kernel stack cache (tracer-ebpf/src/kernel_stacks.rs) says what it
/// did: hits, unwinds, checks of hits and checks that found another stack,
/// in the report's totals and on each summary line; the checks' mismatches
/// stay rare, and every allocation sent is a hit or an unwind. Over the
/// bench's 3-second runs 0.05-0.12% of checks were wrong; this short run
/// makes a few hundred checks, and a path is counted wrong at most once
/// (then always unwound), so its rate is higher: 1.1-1.6% seen. Bound 5%.
#[test]
fn kernel_stack_cache_counts_are_reported_and_rarely_wrong() {
    require_root();
    let dir = temp_dir();
    let final_path = dir.path().join("final.json");
    // A name of its own: the tests run at once, each tracer sees them all.
    let bin = compile_c("kernel_hold.c", "kcache_hold", WORKLOAD_CFLAGS);
    let tracer = spawn_kernel(&["--interval", "1s", "--report", final_path.to_str().unwrap()]);
    for _ in 0..3 {
        let mut workload = Workload::spawn_bin(&bin, &[&SOCKETS.to_string()]);
        workload.run();
        workload.send("close");
        workload.expect_line("closed", DONE_TIMEOUT);
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let totals = read_json(&final_path)["totals"].clone();
    let hits = as_u64(&totals, "kernel_stack_cache_hits");
    let unwinds = as_u64(&totals, "kernel_stack_unwinds");
    let checks = as_u64(&totals, "kernel_stack_cache_checks");
    let mismatches = as_u64(&totals, "kernel_stack_cache_mismatches");
    let missed = as_u64(&totals, "recursion_misses");
    assert!(
        as_u64(&totals, "recursion_missed_frees") <= missed,
        "{totals}"
    );
    // 900 sockets' paths recur: most of their stacks come from the cache.
    assert!(hits > 1000 && checks > 0 && unwinds > 0, "{totals}");
    assert!(mismatches * 20 <= checks, "{totals}");
    // Each allocation is a hit, an unwind, or both (a checked hit). The
    // programs count from attaching to detaching, the ledger from the
    // ready line to the cut (detaching takes a while on a busy host).
    let sent = hits + unwinds - checks;
    let allocs = as_u64(&totals, "allocs");
    assert!(
        sent >= allocs,
        "{sent} sent, {allocs} allocations: {totals}"
    );
    assert!(
        out.stdout.contains("| stacks cached ") && out.stdout.contains(" checks wrong)"),
        "{}",
        out.stdout
    );
}

/// `--max-stacks`: userspace forgets idle stacks beyond the budget and
/// clears their slots in the kernel's `KNOWN_STACKS`; the kernel's stack
/// cache still maps their paths to their hashes, and must send the frames
/// again rather than a hash userspace forgot (whose blocks would land on
/// no stack). Each stack a task's allocation gets is its kernel stack plus
/// the task's frame, so the kernel stack alone holds nothing and is
/// evicted under a budget of 32 as soon as it is idle: a second program
/// opening the same sockets a second later reaches the cached paths of
/// forgotten stacks.
#[test]
fn evicted_kernel_stacks_are_sent_again_and_stay_exact() {
    require_root();
    const FIRST_TASK: &str = "kevict_first";
    const SECOND_TASK: &str = "kevict_second";
    let dir = temp_dir();
    let final_path = dir.path().join("final.json");
    let first = compile_c("kernel_hold.c", FIRST_TASK, WORKLOAD_CFLAGS);
    let second = compile_c("kernel_hold.c", SECOND_TASK, WORKLOAD_CFLAGS);
    let tracer = spawn_kernel(&[
        "--interval",
        "1s",
        "--max-stacks",
        "32",
        "--report",
        final_path.to_str().unwrap(),
    ]);
    let mut holding = Vec::new();
    for bin in [&first, &second] {
        let mut workload = spawn_hold(bin);
        workload.run();
        holding.push(workload);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let held = report_now(&tracer, &final_path);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    drop(holding);
    assert!(
        as_u64(&held["totals"], "evicted_stacks") > 0,
        "{}",
        held["totals"]
    );
    assert_holds_the_sockets(&held, FIRST_TASK);
    assert_holds_the_sockets(&held, SECOND_TASK);
}

/// What `--kernel` cannot do gets one clear line and a non-zero exit: flags
/// for one process or every process, and a kernel without the tracepoints
/// (played by an empty tracefs in a mount namespace of its own).
#[test]
fn kernel_mode_refuses_what_it_cannot_honour_in_one_line() {
    require_root();
    let timeout = std::time::Duration::from_secs(60);
    for flags in [
        &["--pid", "1"][..],
        &["--all"],
        &["--sample-rate", "4K"],
        &["--pprof", "out.pb.gz"],
        &["--unwind", "dwarf"],
        &["--", "true"],
    ] {
        let mut cmd = tracer_command();
        cmd.arg("--kernel").args(flags);
        let out = run_to_completion(cmd, timeout);
        assert_clean_error(&out, &flags.join(" "));
        assert!(
            out.stderr.contains("'--kernel' cannot be used"),
            "{}",
            out.stderr
        );
    }
    let script = format!(
        "mount -t tmpfs none /sys/kernel/tracing && (mount -t tmpfs none /sys/kernel/debug \
         2>/dev/null; true) && exec {} --kernel --duration 1",
        alloctrace_bin().display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script]);
    let out = run_to_completion(cmd, timeout);
    assert_clean_error(&out, "no tracepoints");
    assert!(
        out.stderr.contains("--kernel needs the tracepoint kmem:"),
        "{}",
        out.stderr
    );
}
