//! Support for the debug-link tests (`tests/debuglink.rs`): a library
//! (`chain_nofp.c`, which `dlopen_nofp` loads) whose debug information is
//! in a separate file its `.gnu_debuglink` names (any name, with the CRC of
//! any file), FIFOs, and a watch on host files that says whether anything
//! opened or read them.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{NO_FRAME_POINTER_CFLAGS, compile_c};

/// The function of [`SplitLibrary`] that leaks, [`CHAIN_BYTES`] per `go`
/// of `dlopen_nofp` (see `tests/workloads/chain_nofp.c`).
pub const CHAIN_LEAF: &str = "chain_5";
pub const CHAIN_BYTES: u64 = 700;
/// What marks the line of its malloc.
pub const CHAIN_MALLOC: &str = "malloc(700 * chain_one)";

/// The library split as a distribution ships it, in `dir`: the code
/// without DWARF, and its debug file (`objcopy --only-keep-debug`).
pub struct SplitLibrary {
    /// The library without DWARF nor debug link.
    pub stripped: PathBuf,
    /// Its debug file.
    pub debug: PathBuf,
}

impl SplitLibrary {
    pub fn new(dir: &Path) -> Self {
        let mut flags = NO_FRAME_POINTER_CFLAGS.to_vec();
        flags.extend(["-shared", "-fPIC", "-Wl,--build-id"]);
        let built = compile_c("chain_nofp.c", "libchain_linked.so", &flags);
        let debug = dir.join("libchain.debug");
        let stripped = dir.join("libchain-stripped.so");
        objcopy(&["--only-keep-debug"], &built, &debug);
        objcopy(&["--strip-debug"], &built, &stripped);
        Self { stripped, debug }
    }

    /// The library with a `.gnu_debuglink` naming `name` with `crc`,
    /// written to `out`.
    pub fn linked(&self, name: &[u8], crc: u32, out: &Path) {
        let section = out.with_extension("debuglink");
        fs::write(&section, debuglink_section(name, crc)).unwrap();
        let add = format!(".gnu_debuglink={}", section.display());
        objcopy(
            &[
                "--add-section",
                &add,
                "--set-section-flags",
                ".gnu_debuglink=readonly",
            ],
            &self.stripped,
            out,
        );
        fs::remove_file(&section).ok();
    }

    /// The CRC a debug link to [`SplitLibrary::debug`] carries.
    pub fn debug_crc(&self) -> u32 {
        crc32fast::hash(&fs::read(&self.debug).unwrap())
    }
}

/// A `.gnu_debuglink` section's bytes: the name, NUL, padding to four
/// bytes, the CRC-32 (little endian, this machine's ELF).
fn debuglink_section(name: &[u8], crc: u32) -> Vec<u8> {
    let mut bytes = name.to_vec();
    bytes.push(0);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    bytes.extend(crc.to_le_bytes());
    bytes
}

fn objcopy(args: &[&str], input: &Path, output: &Path) {
    let status = Command::new("objcopy")
        .args(args)
        .arg(input)
        .arg(output)
        .status()
        .expect("run objcopy (binutils)");
    assert!(status.success(), "objcopy {args:?} {}", input.display());
}

/// Makes a FIFO at `path`: a file whose open for reading waits for a
/// writer, forever.
pub fn make_fifo(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: creates a FIFO at a NUL-terminated path.
    let made = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
}

/// An inotify watch for opens and reads of some files.
pub struct OpenWatch {
    fd: i32,
    paths: Vec<PathBuf>,
}

impl OpenWatch {
    /// Watches `paths` (which must exist) from now on.
    pub fn new(paths: &[&Path]) -> Self {
        // SAFETY: plain syscall; the descriptor is closed on drop.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        for path in paths {
            let name = CString::new(path.as_os_str().as_bytes()).unwrap();
            // SAFETY: `name` is a NUL-terminated path that outlives the call.
            let watch = unsafe {
                libc::inotify_add_watch(
                    fd,
                    name.as_ptr(),
                    libc::IN_OPEN | libc::IN_ACCESS | libc::IN_DONT_FOLLOW,
                )
            };
            assert!(watch >= 0, "inotify_add_watch {}", path.display());
        }
        Self {
            fd,
            paths: paths.iter().map(|path| path.to_path_buf()).collect(),
        }
    }

    /// How many opens and reads of the watched files happened so far.
    pub fn events(&self) -> usize {
        let mut buffer = [0u8; 4096];
        let mut events = 0;
        loop {
            // SAFETY: reads into a buffer of the given length.
            let read = unsafe { libc::read(self.fd, buffer.as_mut_ptr().cast(), buffer.len()) };
            if read <= 0 {
                return events;
            }
            let mut offset = 0;
            while offset < read as usize {
                // SAFETY: the kernel wrote whole events; read unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buffer[offset..].as_ptr().cast()) };
                events += 1;
                offset += std::mem::size_of::<libc::inotify_event>() + event.len as usize;
            }
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this watch owns.
        unsafe { libc::close(self.fd) };
    }
}
