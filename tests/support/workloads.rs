//! The C workloads of `tests/workloads/`: compiling them (cached by mtime,
//! safe against concurrent test binaries), the flags each is built with, and
//! reading their sources (the lines of markers and functions the reports
//! must point at).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::target_dir;

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
    let mut flags = flags.to_vec();
    flags.push("-Wall");
    compile_with("cc", src, out, &flags)
}

/// Compiles `tests/workloads/<src>` into `<target>/integration-workloads/<out>`
/// with `<compiler> <flags> -o OUT SRC` (cc, g++, rustc); reuses the binary
/// when it is newer than the source.
pub fn compile_with(compiler: &str, src: &str, out: &str, flags: &[&str]) -> PathBuf {
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
    let output = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler} (is it installed?): {e}"));
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "{compiler} {} failed ({}):\n{}",
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

/// The `lifecycle` workload binary (launch mode, fork, exec, stress).
pub fn lifecycle_bin() -> PathBuf {
    compile_c("lifecycle.c", "lifecycle", WORKLOAD_CFLAGS)
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
