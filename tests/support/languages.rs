//! Workloads of the language tests (`tests/languages.rs`): a Rust release
//! binary and a C++ program built without frame pointers, and Debian's own
//! `python3` running a script, all speaking the `ready <pid>` / `go` /
//! `done` protocol; and tracing one such run ([`trace_command`]) and its
//! stacks as one unwinder finds them ([`unwound_stacks`]), which the
//! unwinding tests compare.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::{
    SETTLE, Tracer, TracerOutput, Workload, all_stacks, as_u64, compile_with, frames, read_json,
    temp_dir, workload_source,
};

/// Runs `command` (a workload of the ready/go/done protocol) under
/// `alloctrace --pid PID <args>` and returns the ready line and the final
/// report.
pub fn trace_command(command: Command, args: &[&str]) -> (String, Value) {
    let (ready, report, _) = trace_command_with_output(command, args);
    (ready, report)
}

/// [`trace_command`], with what the tracer printed.
pub fn trace_command_with_output(command: Command, args: &[&str]) -> (String, Value, TracerOutput) {
    trace_command_observing(command, args, |_| {})
}

/// [`trace_command_with_output`], calling `observe` with the workload's
/// pid once it has made its allocations, while it and the tracer still run.
pub fn trace_command_observing(
    command: Command,
    args: &[&str],
    observe: impl FnOnce(u32),
) -> (String, Value, TracerOutput) {
    let dir = temp_dir();
    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn_command(command);
    let mut all: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    all.extend(["--report".as_ref(), report_path.as_os_str()]);
    let tracer = Tracer::spawn(w.pid, &all, None);
    w.run();
    std::thread::sleep(SETTLE);
    observe(w.pid);
    let ready = tracer.ready_line.clone();
    let output = tracer.stop(libc::SIGINT);
    output.assert_success();
    (ready, read_json(&report_path), output)
}

/// The stacks of `command`'s run as `--unwind <unwind>` finds them (see
/// [`frame_lists`]).
pub fn unwound_stacks(command: Command, unwind: &str) -> Vec<(Vec<String>, u64)> {
    let (_, report) = trace_command(command, &["--unwind", unwind]);
    frame_lists(&report)
}

/// Every stack of `report`: each frame's module, name and line, with the
/// stack's bytes; sorted, so two unwinders' results compare frame for
/// frame.
pub fn frame_lists(report: &Value) -> Vec<(Vec<String>, u64)> {
    let mut stacks: Vec<(Vec<String>, u64)> = all_stacks(report)
        .into_iter()
        .map(|stack| {
            let frames = frames(stack)
                .iter()
                .map(|frame| {
                    format!(
                        "{} {}:{}",
                        frame["module"], frame["function"], frame["line"]
                    )
                })
                .collect();
            (frames, as_u64(stack, "bytes"))
        })
        .collect();
    stacks.sort();
    stacks
}

/// Debian's interpreter (the `python3` package), not whatever `python3` is
/// first on `PATH` (pyenv's shims are shell scripts, and its builds are
/// not the distro's).
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// `rust_nofp.rs` as a release build without frame pointers, with debug
/// info for lines and inlined frames.
pub fn rust_nofp_bin() -> PathBuf {
    compile_with(
        "rustc",
        "rust_nofp.rs",
        "rust_nofp",
        &["-C", "opt-level=3", "-C", "force-frame-pointers=no", "-g"],
    )
}

/// `cpp_inline.cpp` built like a distro binary: -O2, no frame pointers.
pub fn cpp_inline_bin() -> PathBuf {
    compile_with(
        "g++",
        "cpp_inline.cpp",
        "cpp_inline",
        &["-O2", "-g", "-fomit-frame-pointer", "-Wall"],
    )
}

/// Debian's `python3` running `py_growth.py` with `PYTHONMALLOC=malloc`, so
/// that every object is allocated by the C library's `malloc` rather than
/// Python's own small-object allocator.
pub fn python_growth_command() -> Command {
    let mut command = Command::new(DEBIAN_PYTHON);
    command
        .arg(workload_source("py_growth.py"))
        .env("PYTHONMALLOC", "malloc")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}
