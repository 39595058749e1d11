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
        Self::build(dir, &[], "libchain_linked.so", "--strip-debug")
    }

    /// The library exporting only `chain_1`, stripped of all symbols: the
    /// rest of the chain is named only by its debug file's symbol table.
    pub fn hiding_the_chain(dir: &Path) -> Self {
        let script = dir.join("exports.map");
        fs::write(&script, "{ global: chain_1; local: *; };\n").unwrap();
        let exports = format!("-Wl,--version-script={}", script.display());
        Self::build(dir, &[&exports], "libchain_hidden.so", "--strip-all")
    }

    fn build(dir: &Path, flags: &[&str], name: &str, strip: &str) -> Self {
        let mut all = NO_FRAME_POINTER_CFLAGS.to_vec();
        all.extend(["-shared", "-fPIC", "-Wl,--build-id"]);
        all.extend(flags);
        let built = compile_c("chain_nofp.c", name, &all);
        let debug = dir.join("libchain.debug");
        let stripped = dir.join("libchain-stripped.so");
        objcopy(&["--only-keep-debug"], &built, &debug);
        objcopy(&[strip], &built, &stripped);
        Self { stripped, debug }
    }

    /// Gives the debug file a `.gnu_debugaltlink` to `supplementary`, as
    /// `dwz` does: its DWARF then needs that file.
    pub fn needing(&self, supplementary: &Path) {
        let mut section = supplementary.as_os_str().as_bytes().to_vec();
        section.push(0);
        section.extend([0xab; 20]);
        self.add_section(".gnu_debugaltlink", &section, &self.debug, &self.debug);
    }

    /// The library with a `.gnu_debuglink` naming `name` with `crc`,
    /// written to `out`.
    pub fn linked(&self, name: &[u8], crc: u32, out: &Path) {
        let section = debuglink_section(name, crc);
        self.add_section(".gnu_debuglink", &section, &self.stripped, out);
    }

    /// Copies `input` to `output` with a section `name` holding `bytes`.
    fn add_section(&self, name: &str, bytes: &[u8], input: &Path, output: &Path) {
        let contents = output.with_extension(name.trim_start_matches('.'));
        fs::write(&contents, bytes).unwrap();
        let add = format!("{name}={}", contents.display());
        let flags = format!("{name}=readonly");
        objcopy(
            &["--add-section", &add, "--set-section-flags", &flags],
            input,
            output,
        );
        fs::remove_file(&contents).ok();
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
