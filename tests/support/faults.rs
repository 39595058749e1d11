//! Support for the fault tests (`tests/faults.rs`): signals to a process
//! the test started, its scheduler state, and a cgroup to hold a tracer.

use std::{fs, path::PathBuf, time::Duration};

/// Sends `signal` to `pid`, a process this test started.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process the test started; it takes no memory.
    let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T`, `Z`...),
/// or `None` once it is reaped.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Waits up to `timeout` for `pid`'s state to satisfy `wanted`; returns the
/// last state seen.
pub fn await_state(pid: u32, timeout: Duration, wanted: impl Fn(char) -> bool) -> Option<char> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = process_state(pid);
        if state.is_some_and(&wanted) || std::time::Instant::now() >= deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The program `pid` runs (`/proc/PID/exe`).
pub fn exe_of(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/exe")).expect("read the target's exe")
}

/// `forkstay COUNT`: forks COUNT children that call malloc and free until
/// killed, and reports their progress.
pub fn forkstay_bin() -> PathBuf {
    crate::compile_c("forkstay.c", "forkstay", crate::WORKLOAD_CFLAGS)
}
