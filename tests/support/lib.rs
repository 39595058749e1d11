//! Support code for the alloctrace integration tests.
//!
//! * locating the `alloctrace` binary (`ALLOCTRACE_BIN`, else
//!   `<workspace>/target/release/alloctrace`),
//! * compiling the C workloads in `tests/workloads/` (cached by mtime),
//! * driving the `leaky` workload (`ready <pid>` / `go` / `done` protocol),
//! * running the tracer and waiting for its ready line,
//! * reading reports / folded files / JSON ticks,
//! * the table of expected outstanding bytes per leak site ([`SITES`]),
//! * decoding `--pprof` files ([`pprof`]) and scraping `--metrics-addr`.
//!
//! All child processes are SIGKILLed and reaped on drop, so a failing
//! assertion never leaves a tracer or a workload behind.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use serde_json;
pub use tempfile;

pub mod production;

/// How long the tracer may take to attach and print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the workload may take between `go` and `done` (tracing slows it).
pub const DONE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the tracer may take to write its outputs and exit once stopped.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period between the workload's `done` and stopping the tracer.
pub const SETTLE: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Expected results
// ---------------------------------------------------------------------------

/// One allocation site of `tests/workloads/leaky.c` with what must still be
/// outstanding there once the workload printed `done`.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// Name of the noinline C function that calls the allocator
    /// (= `frames[0].function` of its stacks).
    pub name: &'static str,
    /// Expected outstanding bytes (requested sizes).
    pub bytes: u64,
    /// Expected number of outstanding blocks.
    pub count: u64,
}

const fn site(name: &'static str, bytes: u64, count: u64) -> Site {
    Site { name, bytes, count }
}

/// THE table of expected results.  KEEP IN SYNC with tests/workloads/leaky.c.
/// Sites with `count == 0` must not appear in any output.
pub const SITES: &[Site] = &[
    // 10 x malloc(24)
    site("site_malloc_small", 10 * 24, 10),
    // 5 x malloc(4000)
    site("site_malloc_medium", 5 * 4000, 5),
    // 1 x malloc(200000), above the 128 KiB mmap threshold
    site("site_malloc_large", 200_000, 1),
    // 4 x calloc(25, 8)
    site("site_calloc", 4 * 25 * 8, 4),
    // realloc chain 16 -> 64 -> 1024 -> 16384 -> 65536 -> 262144 -> 1 MiB:
    // the block belongs to the LAST realloc (site_chain_final) at its final size.
    site("site_chain_start", 0, 0),
    site("site_chain_grow", 0, 0),
    site("site_chain_final", 1_048_576, 1),
    // 3 x realloc(NULL, 3000)
    site("site_realloc_null", 3 * 3000, 3),
    // 2 x malloc(10000) at site_shrink_alloc, then realloc(p, 100) at site_realloc_shrink
    site("site_shrink_alloc", 0, 0),
    site("site_realloc_shrink", 2 * 100, 2),
    // 3 x (malloc(500); realloc(p, 0)) -> freed
    site("site_realloc_zero", 0, 0),
    // 2 x (reallocarray(NULL, 10, 12) -> reallocarray(p, 100, 12)) = 2 x 1200
    site("site_reallocarray", 2 * 100 * 12, 2),
    // 3 x posix_memalign(&p, 64, 1000)
    site("site_posix_memalign", 3 * 1000, 3),
    // 2 x aligned_alloc(256, 512)
    site("site_aligned_alloc", 2 * 512, 2),
    // 2 x memalign(128, 700)
    site("site_memalign", 2 * 700, 2),
    // 2 x valloc(5000)
    site("site_valloc", 2 * 5000, 2),
    // 2 x pvalloc(6000) (requested size, not page-rounded)
    site("site_pvalloc", 2 * 6000, 2),
    // 8 x malloc(333) on one thread, all freed on another thread
    site("site_cross_thread_alloc", 0, 0),
    // 20 x malloc(128), every other one freed -> 10 x 128
    site("site_half_freed", 10 * 128, 10),
    // 16 x malloc(2048), all freed
    site("site_fully_freed", 0, 0),
    // 4 threads x 25 x malloc(64), concurrently
    site("site_threads", 4 * 25 * 64, 4 * 25),
];

/// Sites that must still hold memory.
pub fn leak_sites() -> impl Iterator<Item = &'static Site> {
    SITES.iter().filter(|s| s.count > 0)
}

/// Sites whose memory was entirely freed (must not appear anywhere).
pub fn freed_sites() -> impl Iterator<Item = &'static Site> {
    SITES.iter().filter(|s| s.count == 0)
}

/// Sum of the bytes of all leak sites.
pub fn expected_leak_bytes() -> u64 {
    leak_sites().map(|s| s.bytes).sum()
}

/// Sum of the block counts of all leak sites.
pub fn expected_leak_count() -> u64 {
    leak_sites().map(|s| s.count).sum()
}

/// Allocator entry points; none of them may be `frames[0]` of a stack.
pub const ALLOCATOR_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_free",
    "__libc_memalign",
    "__libc_valloc",
    "__libc_pvalloc",
    "__posix_memalign",
    "__libc_reallocarray",
];

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// The cargo workspace root (parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Path of the `alloctrace` binary under test. Panics with a hint when missing.
pub fn alloctrace_bin() -> PathBuf {
    let (path, origin) = match std::env::var_os("ALLOCTRACE_BIN") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), "ALLOCTRACE_BIN"),
        _ => (
            workspace_root().join("target/release/alloctrace"),
            "default location",
        ),
    };
    if !path.is_file() {
        panic!(
            "alloctrace binary not found at {} ({origin}); build it and run the \
             integration tests with `cargo xtask test` (or set ALLOCTRACE_BIN)",
            path.display()
        );
    }
    path
}

/// The tests need root (eBPF). They FAIL, not skip, without it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the alloctrace integration tests must run as root (euid is {euid}); \
         run them with `sudo -E cargo xtask test`"
    );
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("alloctrace-it-")
        .tempdir()
        .expect("create temp dir")
}

/// Names of the entries of `dir` (sorted).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Workload compilation
// ---------------------------------------------------------------------------

/// Flags every traced workload is built with (frame-pointer unwinding).
pub const WORKLOAD_CFLAGS: &[&str] = &[
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-optimize-sibling-calls",
    "-pthread",
];

static COMPILE_LOCK: Mutex<()> = Mutex::new(());
static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// Compiles `tests/workloads/<src>` into `<target>/integration-workloads/<out>`
/// with `cc <flags>`; reuses the binary when it is newer than the source.
pub fn compile_c(src: &str, out: &str, flags: &[&str]) -> PathBuf {
    let _guard = COMPILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(src);
    let dir = target_dir().join("integration-workloads");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let out_path = dir.join(out);

    let src_mtime = fs::metadata(&src_path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("stat {}: {e}", src_path.display()));
    let fresh = fs::metadata(&out_path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= src_mtime);
    if fresh {
        return out_path;
    }

    // Compile to a unique name and rename: safe against concurrent test binaries.
    let tmp = dir.join(format!(
        ".{out}.tmp.{}.{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    let output = Command::new("cc")
        .args(flags)
        .arg("-Wall")
        .arg("-o")
        .arg(&tmp)
        .arg(&src_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc (is gcc installed?): {e}"));
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "cc {} failed ({}):\n{}",
            src_path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&tmp, &out_path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), out_path.display()));
    out_path
}

/// The `leaky` workload binary.
pub fn leaky_bin() -> PathBuf {
    compile_c("leaky.c", "leaky", WORKLOAD_CFLAGS)
}

/// The `growth` workload (a steady leak, a plateaued cache, a sawtooth pool).
pub fn growth_bin() -> PathBuf {
    compile_c("growth.c", "growth", WORKLOAD_CFLAGS)
}

/// A statically linked program (no shared libc), same ready protocol.
pub fn static_target_bin() -> PathBuf {
    compile_c(
        "static_target.c",
        "static_target",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-static"],
    )
}

/// The `churn_meter` workload: measures its malloc+free speed on request.
pub fn churn_meter_bin() -> PathBuf {
    compile_c("churn_meter.c", "churn_meter", WORKLOAD_CFLAGS)
}

/// `probe_holder`: holds a uprobe on libc's malloc with a USDT semaphore,
/// as a conflicting tool would.
pub fn probe_holder_bin() -> PathBuf {
    compile_c("probe_holder.c", "probe_holder", &["-O1", "-ldl"])
}

/// What one `go` of the static target allocates: (site, bytes, count).
pub const STATIC_SITE: (&str, u64, u64) = ("site_static", 3 * 555, 3);

/// The `lifecycle` workload binary (launch mode, fork, exec, stress).
pub fn lifecycle_bin() -> PathBuf {
    compile_c("lifecycle.c", "lifecycle", WORKLOAD_CFLAGS)
}

/// Runs `alloctrace <args> -- <command>` to completion and returns its
/// output and the JSON report it wrote (`--report` is added here).
pub fn launch<S: AsRef<OsStr>>(args: &[&str], command: &[S]) -> (TracerOutput, Value) {
    launch_with_env(&[], args, command)
}

/// [`launch`] with extra environment variables (inherited by the command).
pub fn launch_with_env<S: AsRef<OsStr>>(
    env: &[(&str, &str)],
    args: &[&str],
    command: &[S],
) -> (TracerOutput, Value) {
    let dir = temp_dir();
    let report = dir.path().join("report.json");
    let mut cmd = tracer_command();
    cmd.envs(env.iter().copied())
        .args(args)
        .arg("--report")
        .arg(&report)
        .arg("--")
        .args(command);
    let out = run_to_completion(cmd, Duration::from_secs(120));
    assert!(
        report.exists(),
        "alloctrace wrote no report ({})\n--- stderr ---\n{}",
        out.status,
        out.stderr
    );
    let report = read_json(&report);
    (out, report)
}

/// Flags of the workloads that must be unwound without frame pointers:
/// optimised like a distro build, with debug info for names and lines.
pub const NO_FRAME_POINTER_CFLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-pthread"];

/// The `leaky` workload built like a distro binary, without frame pointers
/// (host-wide mode's second service; its sites are the same).
pub fn leaky_nofp_bin() -> PathBuf {
    compile_c("leaky.c", "leaky_nofp", NO_FRAME_POINTER_CFLAGS)
}

/// One process of a storm of short-lived processes (`storm_leak` leaks
/// 100 bytes, then it exits).
pub fn storm_bin() -> PathBuf {
    compile_c("storm.c", "storm", WORKLOAD_CFLAGS)
}

/// The deep call-chain workload, built without frame pointers.
pub fn deep_nofp_bin() -> PathBuf {
    compile_c("deep_nofp.c", "deep_nofp", NO_FRAME_POINTER_CFLAGS)
}

/// The inlined-allocation workload.
pub fn inline_bin() -> PathBuf {
    compile_c("inline.c", "inline", NO_FRAME_POINTER_CFLAGS)
}

/// Path of a file in `tests/workloads/`.
pub fn workload_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(name)
}

/// The 1-based line of `tests/workloads/<file>` that contains `marker`
/// (exactly one must).
pub fn marker_line(file: &str, marker: &str) -> u64 {
    let src =
        fs::read_to_string(workload_source(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let lines: Vec<usize> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{marker:?} must be on exactly one line of {file}"
    );
    lines[0] as u64
}

/// Line range (first, last) of the C function `name` in leaky.c.
pub fn leaky_function_lines(name: &str) -> (u64, u64) {
    let src = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/leaky.c"))
        .expect("read leaky.c");
    let needle = format!(" {name}(");
    let lines: Vec<&str> = src.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("NOINLINE") && l.contains(&needle))
        .unwrap_or_else(|| panic!("function {name} not found in leaky.c"));
    let end = (start..lines.len())
        .find(|&i| lines[i] == "}")
        .unwrap_or_else(|| panic!("end of {name} not found in leaky.c"));
    (start as u64 + 1, end as u64 + 1)
}

// ---------------------------------------------------------------------------
// Line readers
// ---------------------------------------------------------------------------

/// Reads a child pipe line by line on a thread: lines go to a channel and
/// are also accumulated (raw) for error messages / final output.
struct LineReader {
    rx: Receiver<String>,
    all: Arc<Mutex<String>>,
    handle: Option<JoinHandle<()>>,
}

impl LineReader {
    fn new<R: Read + Send + 'static>(r: R) -> Self {
        let (tx, rx) = mpsc::channel();
        let all = Arc::new(Mutex::new(String::new()));
        let all2 = Arc::clone(&all);
        let handle = std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&buf).into_owned();
                        all2.lock().unwrap().push_str(&s);
                        let _ = tx.send(s.trim_end_matches(['\n', '\r']).to_string());
                    }
                }
            }
        });
        LineReader {
            rx,
            all,
            handle: Some(handle),
        }
    }

    fn collected(&self) -> String {
        self.all.lock().unwrap().clone()
    }

    /// Waits for a line satisfying `pred`. `Err` carries why it failed.
    fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(format!("timeout after {timeout:?}")),
                Err(RecvTimeoutError::Disconnected) => return Err("stream closed (EOF)".into()),
            }
        }
    }

    /// Joins the reader thread (after the child exited) and returns everything.
    fn finish(mut self, timeout: Duration) -> String {
        if let Some(h) = self.handle.take() {
            let deadline = Instant::now() + timeout;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        self.collected()
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    }
}

fn send_signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child we own (not yet reaped).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

/// What the leaky workload does after `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stay alive until stdin is closed.
    Stay,
    /// Exit 0 right after `done`.
    Exit,
}

/// A running workload speaking the `ready <pid>` / `go` / `done` protocol.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    pub pid: u32,
}

impl Workload {
    /// Starts the leaky workload and waits for `ready`.
    pub fn spawn(mode: Mode) -> Self {
        let arg = match mode {
            Mode::Stay => "stay",
            Mode::Exit => "exit",
        };
        Self::spawn_bin(&leaky_bin(), &[arg])
    }

    /// Starts any program using the same protocol and waits for `ready <pid>`.
    pub fn spawn_bin(bin: &Path, args: &[&str]) -> Self {
        Self::spawn_bin_in(bin, args, None)
    }

    /// Like [`Workload::spawn_bin`], running in `cwd` when given (for
    /// programs that leave files in their working directory).
    pub fn spawn_bin_in(bin: &Path, args: &[&str], cwd: Option<&Path>) -> Self {
        let mut command = Command::new(bin);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = LineReader::new(child.stdout.take().unwrap());
        let w = Workload {
            pid: child.id(),
            child,
            stdin,
            stdout,
        };
        let line = w
            .stdout
            .wait_for(Duration::from_secs(10), |l| l.starts_with("ready "))
            .unwrap_or_else(|e| panic!("workload {} never printed ready: {e}", bin.display()));
        let pid: u32 = line["ready ".len()..].trim().parse().expect("ready <pid>");
        assert_eq!(pid, w.pid, "workload reported a different pid");
        w
    }

    /// Sends `go`.
    pub fn go(&mut self) {
        self.send("go");
    }

    /// Sends one line on the workload's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .expect("write to workload");
    }

    /// Waits for the next stdout line starting with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        self.stdout
            .wait_for(timeout, |l| l.starts_with(prefix))
            .unwrap_or_else(|e| panic!("workload pid {} never printed {prefix}: {e}", self.pid))
    }

    /// Waits for `done` (all allocations performed).
    pub fn wait_done(&mut self) {
        if let Err(e) = self.stdout.wait_for(DONE_TIMEOUT, |l| l == "done") {
            panic!("workload pid {} never printed done: {e}", self.pid);
        }
    }

    /// `go` then wait for `done`.
    pub fn run(&mut self) {
        self.go();
        self.wait_done();
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes stdin (a `Stay` workload then exits).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_child(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("workload pid {} did not exit within {timeout:?}", self.pid))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Tracer
// ---------------------------------------------------------------------------

/// What a finished tracer produced.
#[derive(Debug)]
pub struct TracerOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl TracerOutput {
    /// Panics unless the tracer exited with status 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "alloctrace failed: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.status,
            self.stderr,
            self.stdout
        );
        let low = self.stderr.to_lowercase();
        assert!(
            !low.contains("panicked"),
            "alloctrace panicked:\n{}",
            self.stderr
        );
    }
}

/// The prefix of the ready line for `pid`.
pub fn ready_prefix(pid: u32) -> String {
    format!("alloctrace: tracing pid {pid} (")
}

/// The prefix of host-wide mode's ready line.
pub const HOST_READY_PREFIX: &str = "alloctrace: tracing all processes (";

/// A running `alloctrace` that has printed its ready line.
pub struct Tracer {
    child: Option<Child>,
    stdout: Option<LineReader>,
    stderr: Option<LineReader>,
    /// The ready line.
    pub ready_line: String,
    /// When the ready line was seen.
    pub ready_at: Instant,
    /// When the process was spawned.
    pub spawned_at: Instant,
}

/// A `Command` for the tracer binary with piped stdout/stderr.
pub fn tracer_command() -> Command {
    let mut c = Command::new(alloctrace_bin());
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

impl Tracer {
    /// Runs `alloctrace --pid <pid> <args>` (in `cwd` if given) and waits for
    /// the ready line; panics with the stderr collected so far on failure.
    pub fn spawn<S: AsRef<OsStr>>(pid: u32, args: &[S], cwd: Option<&Path>) -> Self {
        let mut cmd = tracer_command();
        cmd.arg("--pid").arg(pid.to_string()).args(args);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        Self::spawn_command(cmd, pid)
    }

    /// Runs `cmd` (a [`tracer_command`] with its arguments, environment...)
    /// tracing `pid` and waits for the ready line, like [`Tracer::spawn`].
    pub fn spawn_command(mut cmd: Command, pid: u32) -> Self {
        let spawned_at = Instant::now();
        let child = cmd.spawn().expect("spawn alloctrace");
        Self::wait_ready(child, &ready_prefix(pid), spawned_at)
    }

    /// Runs `alloctrace --all <args>` and waits for its ready line.
    pub fn spawn_all<S: AsRef<OsStr>>(args: &[S]) -> Self {
        let mut cmd = tracer_command();
        cmd.arg("--all").args(args);
        let spawned_at = Instant::now();
        let child = cmd.spawn().expect("spawn alloctrace");
        Self::wait_ready(child, HOST_READY_PREFIX, spawned_at)
    }

    /// Waits for a stderr line (after the ready line) satisfying `pred`.
    pub fn wait_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let stderr = self.stderr.as_ref().expect("stderr reader");
        stderr.wait_for(timeout, pred).unwrap_or_else(|e| {
            panic!(
                "alloctrace never printed the expected line ({e})\n--- stderr so far ---\n{}",
                stderr.collected()
            )
        })
    }

    /// Takes over an `alloctrace` started with [`tracer_command`] (e.g. in
    /// launch mode, where the pid is not known in advance) and waits for its
    /// ready line.
    pub fn adopt(child: Child) -> Self {
        Self::wait_ready(child, "alloctrace: tracing pid ", Instant::now())
    }

    fn wait_ready(mut child: Child, prefix: &str, spawned_at: Instant) -> Self {
        let stdout = LineReader::new(child.stdout.take().unwrap());
        let stderr = LineReader::new(child.stderr.take().unwrap());
        let res = stderr.wait_for(READY_TIMEOUT, |l| l.starts_with(prefix));
        let mut t = Tracer {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
            ready_line: String::new(),
            ready_at: Instant::now(),
            spawned_at,
        };
        match res {
            Ok(line) => t.ready_line = line,
            Err(why) => {
                let child = t.child.as_mut().unwrap();
                let status = match child.try_wait() {
                    Ok(Some(st)) => format!("exited with {st}"),
                    _ => "still running (killed)".to_string(),
                };
                let _ = child.kill();
                let _ = child.wait();
                let err = t.stderr.take().unwrap().finish(Duration::from_secs(2));
                panic!(
                    "alloctrace never printed `{prefix}...` ({why}); it {status}\n--- stderr so far ---\n{err}"
                );
            }
        }
        t
    }

    /// The tracer's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the tracer is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// Sends `sig` (e.g. `libc::SIGINT`) and collects the outcome.
    pub fn stop(self, sig: i32) -> TracerOutput {
        send_signal(self.pid(), sig);
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Waits for the tracer to exit on its own and collects the outcome.
    pub fn wait_exit(mut self, timeout: Duration) -> TracerOutput {
        let mut child = self.child.take().unwrap();
        let status = wait_child(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stdout = self.stdout.take().unwrap().finish(Duration::from_secs(5));
        let stderr = self.stderr.take().unwrap().finish(Duration::from_secs(5));
        match status {
            Some(status) => TracerOutput {
                status,
                stdout,
                stderr,
            },
            None => panic!(
                "alloctrace did not exit within {timeout:?} (killed)\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
            ),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command to completion (killing it after `timeout`), collecting output.
pub fn run_to_completion(mut cmd: Command, timeout: Duration) -> TracerOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = LineReader::new(child.stdout.take().unwrap());
    let err = LineReader::new(child.stderr.take().unwrap());
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out.finish(Duration::from_secs(5));
    let stderr = err.finish(Duration::from_secs(5));
    match status {
        Some(status) => TracerOutput {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not exit within {timeout:?} (killed)\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
        ),
    }
}

/// Asserts the error contract: non-zero exit code (not a signal), stderr is
/// exactly one non-empty line starting with `alloctrace: ` or `error:`, and
/// contains neither `panicked` nor `backtrace`.
pub fn assert_clean_error(out: &TracerOutput, what: &str) {
    let ctx = || {
        format!(
            "[{what}] status: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status, out.stderr, out.stdout
        )
    };
    match out.status.code() {
        Some(0) => panic!("expected a non-zero exit code\n{}", ctx()),
        Some(_) => {}
        None => panic!(
            "expected an exit code, tracer died from a signal\n{}",
            ctx()
        ),
    }
    let low = out.stderr.to_lowercase();
    assert!(
        !low.contains("panicked"),
        "stderr mentions a panic\n{}",
        ctx()
    );
    assert!(
        !low.contains("backtrace"),
        "stderr mentions a backtrace\n{}",
        ctx()
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "stderr must be exactly one non-empty line\n{}",
        ctx()
    );
    assert!(
        lines[0].starts_with("alloctrace: ") || lines[0].starts_with("error:"),
        "the error line must start with `alloctrace: ` or `error:`\n{}",
        ctx()
    );
    assert!(
        lines[0].trim().len() > "alloctrace: ".len(),
        "the error line has no message\n{}",
        ctx()
    );
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}\n{text}", path.display()))
}

/// Numeric field as u64 (panics with context otherwise).
pub fn as_u64(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("missing/non-integer `{key}` in {v}"))
}

/// Numeric field as f64 (panics with context otherwise).
pub fn as_f64(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("missing/non-number `{key}` in {v}"))
}

/// `processes` array of a report.
pub fn processes(report: &Value) -> &Vec<Value> {
    report
        .get("processes")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("report has no `processes` array: {report}"))
}

/// All stacks of all processes.
pub fn all_stacks(report: &Value) -> Vec<&Value> {
    processes(report)
        .iter()
        .flat_map(|p| {
            p.get("stacks")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("process without `stacks` array: {p}"))
                .iter()
        })
        .collect()
}

/// `frames` of a stack.
pub fn frames(stack: &Value) -> &Vec<Value> {
    stack
        .get("frames")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("stack without `frames` array: {stack}"))
}

/// `function` of every frame of a stack, leaf first (`"?"` when unnamed).
pub fn frame_functions(stack: &Value) -> Vec<&str> {
    frames(stack)
        .iter()
        .map(|f| f.get("function").and_then(Value::as_str).unwrap_or("?"))
        .collect()
}

/// `frames[0].function` of a stack.
pub fn leaf_function(stack: &Value) -> Option<&str> {
    frames(stack).first()?.get("function")?.as_str()
}

/// Stacks whose frames[0].function == `site`.
pub fn site_stacks<'a>(report: &'a Value, site: &str) -> Vec<&'a Value> {
    all_stacks(report)
        .into_iter()
        .filter(|s| leaf_function(s) == Some(site))
        .collect()
}

/// (bytes, count) summed over the stacks whose frames[0].function == `site`.
pub fn site_totals(report: &Value, site: &str) -> (u64, u64) {
    site_stacks(report, site).iter().fold((0, 0), |(b, c), s| {
        (b + as_u64(s, "bytes"), c + as_u64(s, "count"))
    })
}

/// Short human dump of a report's stacks (for assertion messages).
pub fn summarize_report(report: &Value) -> String {
    let mut s = String::new();
    if let Some(t) = report.get("totals") {
        s.push_str(&format!("totals: {t}\n"));
    }
    for st in all_stacks(report).iter().take(60) {
        let names: Vec<String> = frames(st)
            .iter()
            .take(4)
            .map(|f| {
                f.get("function")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        s.push_str(&format!(
            "  {:>9} B {:>5}x  {}\n",
            st.get("bytes").unwrap_or(&Value::Null),
            st.get("count").unwrap_or(&Value::Null),
            names.join(" <- ")
        ));
    }
    s
}

/// Every site in [`SITES`] has exactly the expected (bytes, count); freed
/// sites have no stack at all. Reports every mismatch at once.
pub fn assert_sites_exact(report: &Value) {
    let mut bad = Vec::new();
    for s in SITES {
        let got = site_totals(report, s.name);
        if got != (s.bytes, s.count) {
            bad.push(format!(
                "  {:<26} expected {:>8} B {:>4}x   got {:>8} B {:>4}x",
                s.name, s.bytes, s.count, got.0, got.1
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "per-site outstanding memory is wrong:\n{}\nreport:\n{}",
        bad.join("\n"),
        summarize_report(report)
    );
}

/// The entry of `pid` in a report's `processes`.
pub fn process_entry(report: &Value, pid: u32) -> &Value {
    processes(report)
        .iter()
        .find(|p| p.get("pid").and_then(Value::as_u64) == Some(pid as u64))
        .unwrap_or_else(|| {
            let pids: Vec<String> = processes(report)
                .iter()
                .map(|p| format!("{} ({})", p["comm"], p["pid"]))
                .collect();
            panic!("no process entry for pid {pid} among {}", pids.join(", "))
        })
}

/// A report holding only `pid`'s entry, for the per-report helpers.
pub fn report_of_process(report: &Value, pid: u32) -> Value {
    serde_json::json!({ "processes": [process_entry(report, pid).clone()] })
}

/// Structural checks on a report + exact site numbers + symbolization.
pub fn assert_report_complete(report: &Value, pid: u32) {
    assert_eq!(
        report.get("version").and_then(Value::as_u64),
        Some(1),
        "version: {report}"
    );
    assert!(as_f64(report, "duration_s") >= 0.0);
    let totals = report.get("totals").expect("report totals");
    for key in [
        "allocs",
        "frees",
        "outstanding_bytes",
        "outstanding_count",
        "lost_events",
        "preexisting_frees",
    ] {
        as_u64(totals, key);
    }
    assert_eq!(
        as_u64(totals, "lost_events"),
        0,
        "events were lost: {totals}"
    );

    let procs = processes(report);
    let proc_ = procs
        .iter()
        .find(|p| p.get("pid").and_then(Value::as_u64) == Some(pid as u64))
        .unwrap_or_else(|| panic!("no process entry for pid {pid}: {procs:?}"));
    assert_eq!(
        proc_.get("comm").and_then(Value::as_str),
        Some("leaky"),
        "comm"
    );
    let exe = proc_
        .get("exe")
        .and_then(Value::as_str)
        .expect("exe string");
    assert!(exe.ends_with("/leaky") || exe == "leaky", "exe = {exe:?}");
    let ptotals = proc_.get("totals").expect("process totals");
    for key in [
        "allocs",
        "frees",
        "outstanding_bytes",
        "outstanding_count",
        "lost_events",
    ] {
        as_u64(ptotals, key);
    }

    assert_sites_exact(report);

    // Totals cover at least the leak sites.
    for t in [totals, ptotals] {
        assert!(
            as_u64(t, "outstanding_bytes") >= expected_leak_bytes(),
            "outstanding_bytes {} < sum of leak sites {}",
            as_u64(t, "outstanding_bytes"),
            expected_leak_bytes()
        );
        assert!(
            as_u64(t, "outstanding_count") >= expected_leak_count(),
            "{t}"
        );
        assert!(as_u64(t, "allocs") >= expected_leak_count(), "{t}");
        // free() calls made explicitly: 8 cross-thread + 10 half + 16 full.
        assert!(as_u64(t, "frees") >= 8 + 10 + 16, "{t}");
    }

    // Stacks sorted by bytes, descending; allocator frames dropped.
    for p in procs {
        let stacks = p["stacks"].as_array().unwrap();
        let bytes: Vec<u64> = stacks.iter().map(|s| as_u64(s, "bytes")).collect();
        assert!(
            bytes.windows(2).all(|w| w[0] >= w[1]),
            "stacks not sorted by bytes desc: {bytes:?}"
        );
        for s in stacks {
            assert!(!frames(s).is_empty(), "empty frames: {s}");
            if let Some(f) = leaf_function(s) {
                assert!(
                    !ALLOCATOR_FUNCTIONS.contains(&f),
                    "allocator frame `{f}` not dropped from stack {s}"
                );
            }
        }
    }

    assert_sites_symbolized(report);
}

/// frames[0] of every leak-site stack is resolved: function, module, file
/// ending in leaky.c, line inside the site function, hex address.
pub fn assert_sites_symbolized(report: &Value) {
    for s in leak_sites() {
        let stacks = site_stacks(report, s.name);
        assert!(!stacks.is_empty(), "no stack for {}", s.name);
        let (first, last) = leaky_function_lines(s.name);
        for st in stacks {
            let f = &frames(st)[0];
            let addr = f.get("address").and_then(Value::as_str).unwrap_or("");
            assert!(
                addr.starts_with("0x")
                    && addr.len() > 2
                    && u64::from_str_radix(&addr[2..], 16).is_ok(),
                "bad address in {f}"
            );
            let module = f.get("module").and_then(Value::as_str);
            assert!(
                module.is_some_and(|m| m.contains("leaky")),
                "frames[0].module of {} should be the leaky binary: {f}",
                s.name
            );
            let file = f.get("file").and_then(Value::as_str);
            assert!(
                file.is_some_and(|p| p.ends_with("leaky.c")),
                "frames[0].file of {} should end with leaky.c: {f}",
                s.name
            );
            let line = f.get("line").and_then(Value::as_u64).unwrap_or(0);
            assert!(
                line >= first && line <= last,
                "frames[0].line of {} = {line}, expected within {first}..={last} of leaky.c: {f}",
                s.name
            );
            assert_eq!(
                f.get("inlined").and_then(Value::as_bool),
                Some(false),
                "inlined: {f}"
            );
        }
    }
}

/// Asserts a parsed report stack / tick `top` entry has the stack shape.
pub fn assert_stack_shape(s: &Value) {
    as_u64(s, "bytes");
    as_u64(s, "count");
    as_f64(s, "oldest_age_s");
    for f in frames(s) {
        assert!(
            f.get("address").and_then(Value::as_str).is_some(),
            "frame address: {f}"
        );
        for k in ["function", "module", "file", "line"] {
            assert!(
                f.get(k).is_some(),
                "frame without `{k}` (null allowed): {f}"
            );
        }
        assert!(
            f.get("inlined").and_then(Value::as_bool).is_some(),
            "frame inlined: {f}"
        );
    }
}

// ---------------------------------------------------------------------------
// Folded stacks / flamegraph
// ---------------------------------------------------------------------------

/// Parses folded output (`outer;...;leaf BYTES`), panicking on malformed lines.
pub fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (stack, n) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without ` BYTES`: {l:?}"));
            let n: u64 = n
                .parse()
                .unwrap_or_else(|_| panic!("folded line does not end with a byte count: {l:?}"));
            assert!(!stack.is_empty(), "folded line with an empty stack: {l:?}");
            (stack.split(';').map(str::to_string).collect(), n)
        })
        .collect()
}

/// Function name of a folded frame: tolerates a `module`` prefix and a
/// ` (file:line)` / `[...]` suffix.
pub fn folded_frame_function(frame: &str) -> &str {
    let f = frame.rsplit('`').next().unwrap_or(frame);
    let end = f.find([' ', '(', '[']).unwrap_or(f.len());
    &f[..end]
}

/// Sum of the bytes of folded lines whose last (leaf) frame is `site`.
pub fn folded_site_bytes(folded: &[(Vec<String>, u64)], site: &str) -> u64 {
    folded
        .iter()
        .filter(|(st, _)| st.last().map(|f| folded_frame_function(f)) == Some(site))
        .map(|(_, n)| n)
        .sum()
}

/// `<svg` ... `</svg>`.
pub fn assert_svg_wellformed(svg: &str) {
    assert!(
        svg.contains("<svg"),
        "no <svg element:\n{}",
        &svg[..svg.len().min(500)]
    );
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "SVG does not end with </svg>: ...{}",
        &svg[svg.len().saturating_sub(300)..]
    );
}

// ---------------------------------------------------------------------------
// JSON ticks
// ---------------------------------------------------------------------------

/// Keys every `--log-format json` tick must have.
pub const TICK_KEYS: &[&str] = &[
    "ts",
    "outstanding_bytes",
    "outstanding_count",
    "allocs",
    "frees",
    "lost_events",
    "top",
];

/// Parses stdout of `--log-format json`: every non-empty line must be one
/// JSON object with [`TICK_KEYS`].
pub fn parse_ticks(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stdout line is not one JSON object ({e}): {l:?}"));
            assert!(v.is_object(), "stdout line is not a JSON object: {l:?}");
            for k in TICK_KEYS {
                assert!(v.get(k).is_some(), "tick without `{k}`: {l}");
            }
            for k in [
                "outstanding_bytes",
                "outstanding_count",
                "allocs",
                "frees",
                "lost_events",
            ] {
                as_u64(&v, k);
            }
            let top = v["top"]
                .as_array()
                .unwrap_or_else(|| panic!("`top` not an array: {l}"));
            for s in top {
                assert_stack_shape(s);
            }
            v
        })
        .collect()
}

// ---------------------------------------------------------------------------
// pprof and metrics
// ---------------------------------------------------------------------------

/// The pprof schema, generated by `build.rs` from the vendored
/// `tracer/proto/profile.proto`.
pub mod pprof {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// Reads a gzipped pprof file.
pub fn read_pprof(path: &Path) -> pprof::Profile {
    use prost::Message as _;
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{} is not gzip: {e}", path.display()));
    pprof::Profile::decode(raw.as_slice())
        .unwrap_or_else(|e| panic!("{} is not a pprof profile: {e}", path.display()))
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// `GET path` over plain HTTP/1.1; returns (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {response:?}"));
    let status = head.lines().next().unwrap_or_default().to_owned();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// The value of the sample line `name{labels} value` whose labels include
/// every `key="value"` of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}
