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

/// `hoard COUNT`: on `go`, allocates COUNT blocks of 16 bytes and keeps
/// them.
pub fn hoard_bin() -> PathBuf {
    crate::compile_c("hoard.c", "hoard", crate::WORKLOAD_CFLAGS)
}

/// A memory cgroup of its own with a limit, removed when dropped: cgroup
/// v2 where it has the memory controller, else v1's memory hierarchy.
pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    pub fn new(limit_bytes: u64) -> Self {
        let name = format!("alloctrace-test-{}", std::process::id());
        let v2 = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"));
        let (dir, files): (PathBuf, &[&str]) = if v2 {
            (
                PathBuf::from("/sys/fs/cgroup").join(&name),
                &["memory.max", "memory.swap.max"],
            )
        } else {
            (
                PathBuf::from("/sys/fs/cgroup/memory").join(&name),
                &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
            )
        };
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("no memory cgroup at {}: {e}", dir.display()));
        for (index, file) in files.iter().enumerate() {
            let value = if v2 && index == 1 { 0 } else { limit_bytes };
            let path = dir.join(file);
            // The swap limit is optional (no swap accounting).
            if path.exists() {
                fs::write(&path, value.to_string())
                    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            }
        }
        Self { dir }
    }

    /// `program ARGS` run inside the cgroup (it moves itself in, then
    /// execs, so the pid is the program's).
    pub fn command(&self, program: &std::path::Path) -> std::process::Command {
        let mut command = std::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(program);
        command
    }

    /// Times the kernel's OOM killer ran in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        let events = fs::read_to_string(self.dir.join("memory.events"))
            .or_else(|_| fs::read_to_string(self.dir.join("memory.oom_control")))
            .unwrap_or_default();
        events
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty by now (its processes are reaped); retried briefly.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits (up to two minutes) until no `alloctrace --all` runs on the host:
/// a host-wide tracer probes every libc, the tests' private copies too, so
/// a test that counts the breakpoints left in a target waits for the
/// host-wide tracers of other test runs on a shared machine to end.
pub fn await_no_other_host_wide_tracer() {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while host_wide_tracer_running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn host_wide_tracer_running() -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            let mut args = cmdline.split(|&byte| byte == 0);
            args.next()
                .is_some_and(|program| program.ends_with(b"/alloctrace"))
                && args.any(|arg| arg == b"--all")
        })
    })
}
