//! JIT frames: a Node.js program run with `--perf-basic-prof` leaks Buffers
//! from a named JS function; its bytes must be attributed to stacks that
//! name that function, found through native code without frame pointers'
//! help (DWARF) and JIT code with them (the per-frame fallback).

use std::path::Path;
use std::process::Command;

use integration_tests::*;
use serde_json::Value;

/// KEEP IN SYNC with tests/workloads/leak.js.
const JS_FUNCTION: &str = "leakyJsFunction";
const LEAKS: u64 = 200;
const BUFFER_BYTES: u64 = 64 * 1024;

fn node() -> &'static str {
    let found = Command::new("node").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "the JIT test needs Node.js on PATH (apt-get install nodejs)"
    );
    "node"
}

fn names_js_function(frame: &Value) -> bool {
    frame["function"]
        .as_str()
        .is_some_and(|f| f.contains(JS_FUNCTION))
}

#[test]
fn node_buffers_are_attributed_to_the_js_function_that_leaks_them() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let script = workload_source("leak.js");
    // In the temporary directory: V8 leaves an isolate log in its cwd.
    let mut w = Workload::spawn_bin_in(
        Path::new(node()),
        &[
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            script.to_str().unwrap(),
        ],
        Some(dir.path()),
    );
    let perf_map = format!("/tmp/perf-{}.map", w.pid);
    let args = [
        "--unwind".as_ref(),
        "dwarf".as_ref(),
        "--report".as_ref(),
        report_path.as_os_str(),
    ];
    let tracer = Tracer::spawn(w.pid, &args, None);
    w.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    w.close_stdin();
    let _ = std::fs::remove_file(&perf_map);
    out.assert_success();

    let report = read_json(&report_path);
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    let attributed: Vec<&Value> = all_stacks(&report)
        .into_iter()
        .filter(|s| frames(s).iter().any(names_js_function))
        .collect();
    let bytes: u64 = attributed.iter().map(|s| as_u64(s, "bytes")).sum();
    assert!(
        bytes >= LEAKS * BUFFER_BYTES,
        "only {bytes} bytes attributed to {JS_FUNCTION}, expected at least {}:\n{}",
        LEAKS * BUFFER_BYTES,
        summarize_report(&report)
    );
    // The stacks are mixed: native frames of node named from its symbols
    // below the JIT frame named from the perf map.
    for stack in attributed {
        let js = frames(stack).iter().find(|f| names_js_function(f)).unwrap();
        assert_eq!(js["module"].as_str(), Some("[jit]"), "{js}");
        let native_leaf = &frames(stack)[0];
        assert!(
            native_leaf["module"]
                .as_str()
                .is_some_and(|m| m.ends_with("/node")),
            "the allocator's caller should be native node code: {native_leaf}"
        );
    }
}
