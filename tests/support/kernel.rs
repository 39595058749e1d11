//! `--kernel` runs: starting the tracer in kernel mode, asking it for its
//! report while it runs (SIGUSR1), once or until it shows something, and
//! reading kernel stacks: the task
//! frame each ends with, a slab cache's object size.

use std::{
    ffi::OsStr,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    child::send_signal,
    report::{all_stacks, frame_functions, frames, leaf_function, read_json},
    tracer::{Tracer, tracer_command},
};

/// The prefix of kernel mode's ready line.
pub const KERNEL_READY_PREFIX: &str = "alloctrace: tracing the kernel's allocations (";

/// Runs `alloctrace --kernel <args>` and waits for its ready line.
pub fn spawn_kernel<S: AsRef<OsStr>>(args: &[S]) -> Tracer {
    let mut cmd = tracer_command();
    cmd.arg("--kernel").args(args);
    Tracer::spawn_ready(cmd, KERNEL_READY_PREFIX)
}

/// Has the running `tracer` write its outputs now (SIGUSR1) and returns
/// the JSON report it writes at `path` (which must not exist yet).
pub fn report_now(tracer: &Tracer, path: &Path) -> Value {
    assert!(!path.exists(), "{} exists already", path.display());
    send_signal(tracer.pid(), libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Written to a temporary file and renamed: there once complete.
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no report at {} after SIGUSR1",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    read_json(path)
}

/// Asks the running `tracer` for its report at `path` (see [`report_now`])
/// every half second until `done` accepts one or `timeout` passes; returns
/// the last, with its file removed.
pub fn wait_for_report(
    tracer: &Tracer,
    path: &Path,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let report = report_now(tracer, path);
        std::fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        if done(&report) || Instant::now() > deadline {
            return report;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The name of the task a kernel stack ends with (its `[task]` frame).
pub fn task_of(stack: &Value) -> Option<&str> {
    let last = frames(stack).last()?;
    (last["module"] == "[task]")
        .then(|| last["function"].as_str())
        .flatten()
}

/// (bytes, count) of the kernel stacks of `task` whose first frame is
/// `leaf` and that pass `through`, summed.
pub fn task_path_totals(report: &Value, task: &str, leaf: &str, through: &str) -> (u64, u64) {
    all_stacks(report)
        .into_iter()
        .filter(|stack| {
            task_of(stack) == Some(task)
                && leaf_function(stack) == Some(leaf)
                && frame_functions(stack).contains(&through)
        })
        .fold((0, 0), |(bytes, count), stack| {
            (
                bytes + stack["bytes"].as_u64().unwrap_or(0),
                count + stack["count"].as_u64().unwrap_or(0),
            )
        })
}

/// The bytes the slab allocator sets aside per object of `cache` (its
/// `slab_size`, what the kmem tracepoints report as `bytes_alloc`).
pub fn slab_object_bytes(cache: &str) -> u64 {
    let path = format!("/sys/kernel/slab/{cache}/slab_size");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
}
