//! The Java workloads of `tests/workloads/`: compiling them with `javac`
//! (cached by mtime, like the C ones) and the JVM options that make their
//! frames walkable and their leaking method a frame of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::target_dir;

static COMPILE_LOCK: Mutex<()> = Mutex::new(());

/// Compiles `tests/workloads/<Class>.java` into a directory of its own
/// under `<target>/integration-workloads/java/`; returns the directory (the
/// class path). Reused when newer than the source.
pub fn compile_java(class: &str) -> PathBuf {
    let _guard = COMPILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(format!("{class}.java"));
    let dir = target_dir().join("integration-workloads/java").join(class);
    let class_file = dir.join(format!("{class}.class"));
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&class_file).is_some_and(|built| Some(built) >= modified(&src)) {
        return dir;
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let output = Command::new("javac")
        .arg("-d")
        .arg(&dir)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run javac (apt-get install openjdk-17-jdk-headless): {e}")
        });
    assert!(
        output.status.success(),
        "javac {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

/// JVM options for a traced Java workload whose method `method`
/// (`Class::name`) must appear in stacks: JIT frames keep a frame pointer,
/// compilation finishes before the call that asked for it returns (so a
/// warm-up ends with the method compiled), and the method is not inlined.
pub fn traceable_jvm_options(method: &str) -> Vec<String> {
    vec![
        "-XX:+PreserveFramePointer".to_owned(),
        "-XX:-BackgroundCompilation".to_owned(),
        "-XX:CompileCommand=quiet".to_owned(),
        format!("-XX:CompileCommand=dontinline,{method}"),
    ]
}
