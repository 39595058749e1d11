//! Where the tests run: the workspace and target directories, the
//! `alloctrace` binary under test (`ALLOCTRACE_BIN`, else
//! `<workspace>/target/release/alloctrace`), the root check, temporary
//! directories.

use std::fs;
use std::path::{Path, PathBuf};

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

/// A directory holding a copy of this machine's C library, for
/// `LD_LIBRARY_PATH`: programs run with it map a libc of their own inode,
/// so uprobes other tests (or other tools on the host) hold on the system
/// libc cannot meet the ones a test places on it.
pub fn private_libc() -> tempfile::TempDir {
    let maps = fs::read_to_string("/proc/self/maps").expect("read own maps");
    let libc = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|name| name == "libc.so.6")
        })
        .expect("the test process maps libc.so.6");
    let dir = temp_dir();
    fs::copy(libc, dir.path().join("libc.so.6")).expect("copy libc");
    dir
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
