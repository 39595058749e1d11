//! JIT frames: a Node.js program run with `--perf-basic-prof` leaks Buffers
//! from a named JS function; its bytes must be attributed to stacks that
//! name that function, found through native code without frame pointers'
//! help (DWARF) and JIT code with them (the per-frame fallback). A Java
//! program leaking direct ByteBuffers must be named the same way, from the
//! perf map `--jvm-perfmap` has the JVM write.

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

/// Traces runtime workload `w` (DWARF unwinding, plus `extra` flags) while
/// it leaks, into the report at `report_path`; removes the perf map the
/// runtime left in /tmp.
fn trace_leak_with_dwarf(w: &mut Workload, extra: &[&str], report_path: &Path) -> TracerOutput {
    let perf_map = format!("/tmp/perf-{}.map", w.pid);
    let mut args = vec![
        "--unwind",
        "dwarf",
        "--report",
        report_path.to_str().unwrap(),
    ];
    args.extend(extra);
    let tracer = Tracer::spawn(w.pid, &args, None);
    w.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    w.close_stdin();
    let _ = std::fs::remove_file(&perf_map);
    out
}

#[test]
fn node_buffers_are_attributed_to_the_js_function_that_leaks_them() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let script = workload_source("leak.js");
    // In the temporary directory: V8 leaves an isolate log in its cwd.
    // READY_TIMEOUT: the JVM test beside it keeps both cores busy.
    let mut w = Workload::spawn_bin_waiting(
        Path::new(node()),
        &[
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            script.to_str().unwrap(),
        ],
        Some(dir.path()),
        READY_TIMEOUT,
    );
    let out = trace_leak_with_dwarf(&mut w, &[], &report_path);
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

/// KEEP IN SYNC with tests/workloads/DirectLeak.java.
const JAVA_CLASS: &str = "DirectLeak";
const JAVA_METHOD: &str = "DirectLeak.leakyJavaMethod";
const JAVA_LEAKS: u64 = 200;
const JAVA_BUFFER_BYTES: u64 = 64 * 1024;
/// JVM start-up plus the warm-up that compiles the leaking method, on two
/// busy cores.
const JVM_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[test]
fn java_direct_buffers_are_attributed_to_the_java_method_that_leaks_them() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let class_path = compile_java(JAVA_CLASS);
    let mut jvm_args = traceable_jvm_options(&JAVA_METHOD.replace('.', "::"));
    jvm_args.extend(["-cp".to_owned(), class_path.display().to_string()]);
    jvm_args.push(JAVA_CLASS.to_owned());
    let jvm_args: Vec<&str> = jvm_args.iter().map(String::as_str).collect();
    let mut w = Workload::spawn_bin_waiting(Path::new("java"), &jvm_args, None, JVM_READY_TIMEOUT);
    let out = trace_leak_with_dwarf(&mut w, &["--jvm-perfmap"], &report_path);
    out.assert_success();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    let report = read_json(&report_path);
    let names_method = |frame: &Value| {
        frame["function"]
            .as_str()
            .is_some_and(|f| f.contains(JAVA_METHOD))
    };
    let attributed: Vec<&Value> = all_stacks(&report)
        .into_iter()
        .filter(|s| frames(s).iter().any(names_method))
        .collect();
    let bytes: u64 = attributed.iter().map(|s| as_u64(s, "bytes")).sum();
    let count: u64 = attributed.iter().map(|s| as_u64(s, "count")).sum();
    // Every leaked buffer, and nothing else: each is one malloc of its size.
    assert_eq!(
        (bytes, count),
        (JAVA_LEAKS * JAVA_BUFFER_BYTES, JAVA_LEAKS),
        "{}",
        summarize_report(&report)
    );
    for stack in attributed {
        let java = frames(stack).iter().find(|f| names_method(f)).unwrap();
        assert_eq!(java["module"].as_str(), Some("[jit]"), "{java}");
    }
}

/// jcmd's attach handshake starts with a SIGQUIT, which kills a process
/// that is not a JVM: `--jvm-perfmap` must see that, warn once and trace on.
#[test]
fn jvm_perfmap_on_a_process_that_is_not_a_jvm_warns_and_harms_nothing() {
    require_root();
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn(Mode::Stay);
    let args = [
        "--jvm-perfmap".as_ref(),
        "--interval".as_ref(),
        "200ms".as_ref(),
        "--report".as_ref(),
        report_path.as_os_str(),
    ];
    let tracer = Tracer::spawn(w.pid, &args, None);
    w.run();
    std::thread::sleep(SETTLE);
    let out = tracer.stop(libc::SIGINT);
    out.assert_success();
    assert!(w.is_alive(), "the target must survive --jvm-perfmap");
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("--jvm-perfmap"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(
        warnings[0].starts_with("alloctrace: warning: --jvm-perfmap: ")
            && warnings[0].contains("is not a JVM"),
        "{}",
        warnings[0]
    );
    assert_sites_exact(&read_json(&report_path));
}
