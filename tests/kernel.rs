//! `--kernel`: the kernel's own allocations, by kernel stack and task. A
//! workload (tests/workloads/kernel_hold.c) opens and holds N UDP sockets,
//! so the kernel allocates N objects from each of three slab caches on
//! three known paths; the report taken while it holds them must attribute
//! exactly those bytes to those paths under its name, and the one taken
//! after it closed them (it still runs) must show them released (all but
//! the rare free the kernel skips, see below).

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

fn describe(report: &Value) -> String {
    let mut lines: Vec<String> = all_stacks(report)
        .into_iter()
        .filter(|stack| task_of(stack) == Some(TASK))
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

#[test]
fn held_sockets_show_as_kernel_memory_of_their_paths_and_go_when_closed() {
    require_root();
    let dir = temp_dir();
    let final_path = dir.path().join("final.json");
    let bin = compile_c("kernel_hold.c", TASK, WORKLOAD_CFLAGS);
    let tracer = spawn_kernel(&["--interval", "1s", "--report", final_path.to_str().unwrap()]);
    let mut workload = Workload::spawn_bin(&bin, &[&SOCKETS.to_string()]);
    workload.run();
    // The events of the last socket are read within milliseconds.
    std::thread::sleep(SETTLE);
    // SIGUSR1 writes the final report's file as of now; the final one
    // will write it again.
    let held = report_now(&tracer, &final_path);
    std::fs::remove_file(&final_path).expect("remove the report taken while held");

    workload.send("close");
    workload.expect_line("closed", DONE_TIMEOUT);
    // Socket inodes and socks are freed after an RCU grace period.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    let released = read_json(&final_path);

    for &(leaf, cache) in PATHS {
        let per_object = slab_object_bytes(cache);
        assert_eq!(
            task_path_totals(&held, TASK, leaf, SOCKET_CALL),
            (SOCKETS * per_object, SOCKETS),
            "{leaf} ({cache}, {per_object} B per object) while held:\n{}",
            describe(&held)
        );
        // Bounded, not exact: the socket inodes and socks are freed in RCU
        // callbacks, in softirqs, which the kernel does not trace while a
        // tracing program runs on the same CPU (it counts them as the
        // program's recursion misses; about 0.2% of frees under the
        // bench's load). A missed free leaves its object outstanding.
        let (bytes, count) = task_path_totals(&released, TASK, leaf, SOCKET_CALL);
        assert!(
            count <= SOCKETS / 100 && bytes == count * per_object,
            "{leaf} after close: {count} objects, {bytes} B left:\n{}",
            describe(&released)
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
