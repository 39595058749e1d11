//! Debug links are followed only inside the traced process's root, only to
//! regular files whose CRC matches: a chrooted library whose debug link
//! leads to a host file (through an absolute symlink planted in the chroot,
//! or `../` in the link's name) never makes alloctrace open that file; a
//! FIFO where a debug file (or blazesym's `.dwp`) would be never blocks it;
//! each refusal is one warning line; and a good debug file inside the
//! chroot names the library's lines. The trace stays exact in every case.
//!
//! The decoys on the host are valid debug files of the library (its CRC
//! matches): a tracer that reached one would use it, and the watch on it
//! would see it opened.

use std::{
    fs,
    path::{Path, PathBuf},
};

use integration_tests::{debuglink::*, production::chroot_with, *};

/// The library's path inside the chroot.
const LIBRARY: &str = "lib/libchain.so";
/// The debug link's usual name.
const DEBUG_NAME: &str = "libchain.debug";
/// `go`s sent to the program: one leak of [`CHAIN_BYTES`] each.
const GOS: u64 = 2;

/// A chroot holding `dlopen_nofp` and the split library, whose debug link
/// is `name` with the debug file's CRC, in a temporary directory that also
/// holds a host decoy: a copy of the debug file outside the chroot.
struct Chroot {
    dir: tempfile::TempDir,
    root: PathBuf,
    program: PathBuf,
    library: SplitLibrary,
    decoy: PathBuf,
}

impl Chroot {
    fn new(link_name: impl FnOnce(&Path) -> Vec<u8>) -> Self {
        Self::with(SplitLibrary::new, link_name)
    }

    /// Like [`Chroot::new`], with the library `build` makes in a directory.
    fn with(
        build: impl FnOnce(&Path) -> SplitLibrary,
        link_name: impl FnOnce(&Path) -> Vec<u8>,
    ) -> Self {
        let dir = temp_dir();
        let root = dir.path().join("root");
        let program = chroot_with(&dlopen_nofp_bin(), &root);
        let library = build(dir.path());
        let decoy = dir.path().join("decoy.debug");
        fs::copy(&library.debug, &decoy).unwrap();
        let name = link_name(&decoy);
        library.linked(&name, library.debug_crc(), &root.join(LIBRARY));
        Self {
            dir,
            root,
            program,
            library,
            decoy,
        }
    }

    /// `path` inside the chroot, from the host.
    fn inside(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// Traces the program in the chroot (which loads the library at
    /// start) through [`GOS`] `go`s while watching `watched`; returns the tracer's
    /// stderr and report, after checking that nothing opened or read
    /// `watched` and that the trace is exact.
    fn trace(&self, watched: &[&Path]) -> (String, serde_json::Value) {
        let chroot = Path::new("/usr/sbin/chroot");
        let root = self.root.display().to_string();
        let program = self.program.display().to_string();
        let library = format!("/{LIBRARY}");
        let mut workload = Workload::spawn_bin(chroot, &[&root, &program, &library, "now"]);
        let report_path = self.dir.path().join("report.json");
        let watch = OpenWatch::new(watched);
        let tracer = Tracer::spawn(
            workload.pid,
            &["--report".as_ref(), report_path.as_os_str()],
            None,
        );
        for _ in 0..GOS {
            workload.run();
        }
        std::thread::sleep(SETTLE);
        let out = tracer.stop(libc::SIGINT);
        out.assert_success();
        let report = read_json(&report_path);
        assert_eq!(watch.events(), 0, "{:?} opened or read", watch.paths());
        assert_eq!(
            site_totals(&report, CHAIN_LEAF),
            (GOS * CHAIN_BYTES, GOS),
            "{}",
            summarize_report(&report)
        );
        (out.stderr, report)
    }

    /// Traces as [`Chroot::trace`] does and checks that one warning says
    /// the debug file was refused because `why`, and that the library's
    /// frames have no lines (no debug file was read).
    fn trace_refused(&self, watched: &[&Path], why: &str) {
        let (stderr, report) = self.trace(watched);
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains(WARNING))
            .collect();
        assert_eq!(warnings.len(), 1, "{stderr}");
        assert!(warnings[0].contains("libchain.so"), "{stderr}");
        assert!(warnings[0].contains(why), "{stderr}");
        assert_eq!(leaf_lines(&report), [], "{}", summarize_report(&report));
    }
}

const WARNING: &str = "alloctrace: warning: not using a debug file for";

/// The source lines the report names for the leaking function's frames.
fn leaf_lines(report: &serde_json::Value) -> Vec<(String, u64)> {
    site_stacks(report, CHAIN_LEAF)
        .iter()
        .map(|stack| &frames(stack)[0])
        .filter_map(|frame| {
            Some((
                frame.get("file")?.as_str()?.to_owned(),
                frame.get("line")?.as_u64()?,
            ))
        })
        .collect()
}

#[test]
fn a_debug_link_symlinked_out_of_a_chroot_is_not_followed() {
    require_root();
    let chroot = Chroot::new(|_| DEBUG_NAME.as_bytes().to_vec());
    // Where the debug file would be in the chroot: an absolute symlink to
    // the host decoy, which a plain open by root would follow.
    std::os::unix::fs::symlink(&chroot.decoy, chroot.inside("lib").join(DEBUG_NAME)).unwrap();
    chroot.trace_refused(
        &[&chroot.decoy],
        "a symlink to nothing inside the process's root",
    );
}

#[test]
fn a_debug_link_climbing_out_of_its_directory_is_not_followed() {
    require_root();
    // `../` enough times to reach `/` from the library's directory, then
    // the decoy's host path.
    let chroot =
        Chroot::new(|decoy| format!("{}{}", "../".repeat(16), decoy.display()).into_bytes());
    chroot.trace_refused(&[&chroot.decoy], "is not a plain file name");
}

#[test]
fn a_fifo_where_a_debug_file_would_be_never_blocks() {
    require_root();
    let chroot = Chroot::new(|_| DEBUG_NAME.as_bytes().to_vec());
    // FIFOs at the debug link's name and at blazesym's `.dwp` name (the
    // library's path with `.dwp` appended): opening either for reading
    // would wait for a writer forever.
    let fifos = [
        chroot.inside("lib").join(DEBUG_NAME),
        chroot.inside(&format!("{LIBRARY}.dwp")),
    ];
    for fifo in &fifos {
        make_fifo(fifo);
    }
    chroot.trace_refused(&[&fifos[0], &fifos[1]], "not a regular file");
}

#[test]
fn a_checked_debug_file_inside_the_chroot_names_the_lines() {
    require_root();
    let chroot = Chroot::new(|_| DEBUG_NAME.as_bytes().to_vec());
    // The debug file where gdb looks second: `.debug/` next to the library.
    let debug_dir = chroot.inside("lib/.debug");
    fs::create_dir_all(&debug_dir).unwrap();
    fs::copy(&chroot.library.debug, debug_dir.join(DEBUG_NAME)).unwrap();
    let (stderr, report) = chroot.trace(&[&chroot.decoy]);
    assert!(!stderr.contains(WARNING), "{stderr}");
    let line = marker_line("chain_nofp.c", CHAIN_MALLOC);
    let lines = leaf_lines(&report);
    assert!(!lines.is_empty(), "{}", summarize_report(&report));
    for (file, at) in lines {
        assert!(file.ends_with("chain_nofp.c"), "{file}");
        assert_eq!(at, line, "{file}");
    }
}

#[test]
fn a_debug_file_needing_a_supplementary_file_names_functions_without_lines() {
    require_root();
    // As `dwz` leaves Debian's debug files: their DWARF needs another file,
    // named by an absolute path (here a host decoy that must stay closed).
    let mut supplementary = PathBuf::new();
    let chroot = Chroot::with(
        |dir| {
            supplementary = dir.join("decoy.dwz");
            let library = SplitLibrary::hiding_the_chain(dir);
            library.needing(&supplementary);
            fs::copy(&library.debug, &supplementary).unwrap();
            library
        },
        |_| DEBUG_NAME.as_bytes().to_vec(),
    );
    fs::copy(&chroot.library.debug, chroot.inside("lib").join(DEBUG_NAME)).unwrap();
    // The leaf is named (only the debug file's symbol table has it), with
    // no line.
    let (stderr, report) = chroot.trace(&[&chroot.decoy, &supplementary]);
    assert!(!stderr.contains(WARNING), "{stderr}");
    assert_eq!(leaf_lines(&report), [], "{}", summarize_report(&report));
}
