//! Target resolution: from a PID (or a command about to run) to the process's
//! name, executable and the allocator it really uses.
//!
//! The allocator is found among the objects the process maps (or, for a
//! command not yet started, the objects its dynamic loader would map): a
//! library named with `--allocator-lib`, else a known replacement allocator
//! (jemalloc, tcmalloc, mimalloc, which interpose glibc's `malloc`), else the
//! C library, else the executable itself when it is statically linked with
//! its allocator's symbols.
//!
//! A running process's allocator is opened through `/proc/PID/map_files`
//! (see `crate::mapped`), so what is read and probed is the file it really
//! maps: its container's own copy of libc, not the host's at the same path;
//! the copy a package upgrade deleted or replaced on disk since it started;
//! never a file a symlink planted in its root points to.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use object::read::elf::ProgramHeader as _;
use procfs::{ProcError, process::MMapPath};
use thiserror::Error;

use crate::{
    mapped::{self, MappedFile},
    placement,
};

/// How long a dynamically linked process without a mapped allocator is
/// given to finish loading, and how often it is looked at meanwhile.
const LOADER_PATIENCE: Duration = Duration::from_secs(1);
const LOADER_POLL: Duration = Duration::from_millis(5);

/// A process to trace.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    /// The executable, as the process names it.
    pub exe: PathBuf,
    /// The same file, reachable from the tracer's namespace.
    pub host_exe: PathBuf,
    pub allocator: Allocator,
}

/// The object whose allocator functions are probed.
#[derive(Debug, Clone)]
pub struct Allocator {
    /// Path as it appears in the target's mount namespace (without the
    /// kernel's ` (deleted)` mark).
    pub path: PathBuf,
    /// The same file, reachable from the tracer's namespace.
    pub host_path: PathBuf,
    pub kind: AllocatorKind,
    /// The file mapped was deleted (or replaced) on disk since.
    pub deleted: bool,
    /// The file as mapped, held open while `host_path` names it.
    pub mapped: Option<MappedFile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorKind {
    /// The C library (glibc or musl).
    Libc,
    /// A replacement allocator library found by name (jemalloc...).
    Replacement(&'static str),
    /// The library given with `--allocator-lib`.
    Named,
    /// A statically linked executable's own allocator.
    StaticExecutable,
}

impl AllocatorKind {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Libc => "libc",
            Self::Replacement(name) => name,
            Self::Named => "--allocator-lib",
            Self::StaticExecutable => "static executable",
        }
    }
}

/// Why a process cannot be traced; callers turn these into one-line messages.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error(
        "{exe} has no allocator alloctrace can probe: it maps no glibc, musl, jemalloc, tcmalloc or \
         mimalloc library, and its executable has no `malloc` and `free` symbols (stripped static \
         binary?); name the allocator's shared library with --allocator-lib PATH"
    )]
    NoAllocator { exe: String },
    #[error("pid {pid} does not map --allocator-lib {path}")]
    AllocatorNotMapped { pid: u32, path: String },
    #[error("cannot read /proc/{pid}: {source}")]
    Proc { pid: u32, source: ProcError },
    #[error("cannot open {path} as pid {pid} maps it: {error}")]
    Open {
        pid: u32,
        path: String,
        error: std::io::Error,
    },
    #[error("cannot list the libraries of {exe}: {reason}")]
    Libraries { exe: String, reason: String },
}

impl Target {
    /// Resolves a running process.
    pub fn resolve(pid: u32, allocator_lib: Option<&Path>) -> Result<Self, TargetError> {
        // A dynamically linked process caught within its first milliseconds
        // has not had its libraries mapped by the dynamic loader yet: give
        // the loader a moment before concluding there is no allocator.
        let host_exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let mut patience = LOADER_PATIENCE;
        loop {
            match Self::resolve_now(pid, allocator_lib) {
                Err(TargetError::NoAllocator { .. })
                    if !patience.is_zero() && matches!(interpreter_of(&host_exe), Ok(Some(_))) =>
                {
                    std::thread::sleep(LOADER_POLL);
                    patience = patience.saturating_sub(LOADER_POLL);
                }
                result => return result,
            }
        }
    }

    fn resolve_now(pid: u32, allocator_lib: Option<&Path>) -> Result<Self, TargetError> {
        let proc_err = |source: ProcError| match source {
            ProcError::NotFound(_) => TargetError::NoSuchProcess(pid),
            source => TargetError::Proc { pid, source },
        };
        let pid_i32 = i32::try_from(pid).map_err(|_| TargetError::NoSuchProcess(pid))?;
        let process = procfs::process::Process::new(pid_i32).map_err(proc_err)?;
        let stat = process.stat().map_err(proc_err)?;
        if stat.state == 'Z' {
            return Err(TargetError::NoSuchProcess(pid));
        }
        let exe = mapped::executable(&process).unwrap_or_else(|| PathBuf::from(&stat.comm));
        let maps = process.maps().map_err(proc_err)?;
        // Each mapped file once: its name (as the process sees it), whether
        // it is deleted, its identity and its first mapping.
        let mut objects: Vec<MappedObject> = Vec::new();
        for map in maps.iter() {
            if let MMapPath::Path(path) = &map.pathname {
                let (name, deleted) = mapped::without_deleted_mark(path);
                if !objects.iter().any(|object| object.name == name) {
                    objects.push(MappedObject {
                        name,
                        deleted,
                        id: (mapped::device(map.dev.0, map.dev.1), map.inode),
                        range: map.address,
                    });
                }
            }
        }
        let names: Vec<PathBuf> = objects.iter().map(|object| object.name.clone()).collect();
        let host_exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let mut allocator = match allocator_lib {
            Some(named) => {
                let named_id = std::fs::metadata(named)
                    .map(|metadata| (metadata.dev(), metadata.ino()))
                    .ok();
                if !objects.iter().any(|object| Some(object.id) == named_id) {
                    return Err(TargetError::AllocatorNotMapped {
                        pid,
                        path: named.display().to_string(),
                    });
                }
                named_allocator(named)
            }
            None => find_allocator(&names, &exe, &host_exe)?,
        };
        let object = objects.iter().find(|object| {
            object.name == allocator.path
                || (allocator_lib.is_some() && same_file(&allocator.path, object.id))
        });
        if let Some(object) = object {
            let opened = MappedFile::open(pid, object.range, &object.name, object.id);
            let file = opened.map_err(|error| TargetError::Open {
                pid,
                path: object.name.display().to_string(),
                error,
            })?;
            allocator.host_path = file.path().to_path_buf();
            allocator.deleted = object.deleted;
            allocator.mapped = Some(file);
        }
        Ok(Self {
            pid,
            comm: stat.comm,
            exe,
            host_exe,
            allocator,
        })
    }

    /// Resolves a command that is about to be started as `pid`, from the
    /// objects its dynamic loader will map (in this namespace).
    pub fn for_command(
        pid: u32,
        exe: &Path,
        allocator_lib: Option<&Path>,
    ) -> Result<Self, TargetError> {
        let allocator = match allocator_lib {
            Some(named) => named_allocator(named),
            None => {
                let objects = objects_loaded_by(exe)?;
                find_allocator(&objects, exe, exe)?
            }
        };
        let comm = exe
            .file_name()
            .map(|name| name.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        Ok(Self {
            pid,
            comm,
            exe: exe.to_path_buf(),
            host_exe: exe.to_path_buf(),
            allocator,
        })
    }

    /// Whether the process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        procfs::process::Process::new(self.pid as i32)
            .and_then(|process| process.stat())
            .is_ok_and(|stat| stat.state != 'Z')
    }
}

/// One file a running process maps.
struct MappedObject {
    /// The path the process names it by.
    name: PathBuf,
    deleted: bool,
    id: mapped::FileId,
    /// Its first mapping (start, end).
    range: (u64, u64),
}

fn named_allocator(path: &Path) -> Allocator {
    found_allocator(path, AllocatorKind::Named)
}

/// An allocator at `path`, openable as named until the caller says
/// otherwise.
fn found_allocator(path: &Path, kind: AllocatorKind) -> Allocator {
    Allocator {
        path: path.to_path_buf(),
        host_path: path.to_path_buf(),
        kind,
        deleted: false,
        mapped: None,
    }
}

/// The allocator among `objects` (paths as the target names them), falling
/// back to the executable's own symbols (`host_exe` opens it).
fn find_allocator(
    objects: &[PathBuf],
    exe: &Path,
    host_exe: &Path,
) -> Result<Allocator, TargetError> {
    let found = |path: &PathBuf, kind| found_allocator(path, kind);
    // A replacement allocator interposes libc's functions, so libc's see
    // (almost) nothing: it wins whenever it is mapped.
    let replacement = objects
        .iter()
        .find_map(|path| replacement_allocator(path).map(|name| (path, name)));
    if let Some((path, name)) = replacement {
        return Ok(found(path, AllocatorKind::Replacement(name)));
    }
    if let Some(libc) = objects.iter().find(|path| is_libc(path)) {
        return Ok(found(libc, AllocatorKind::Libc));
    }
    if placement::defines_allocator(host_exe) {
        return Ok(Allocator {
            host_path: host_exe.to_path_buf(),
            ..found_allocator(exe, AllocatorKind::StaticExecutable)
        });
    }
    Err(TargetError::NoAllocator {
        exe: exe.display().to_string(),
    })
}

/// The kind of allocator library `path` names, judged by its file name: a
/// replacement allocator or a C library (host-wide mode probes both).
pub fn allocator_library(path: &Path) -> Option<AllocatorKind> {
    match replacement_allocator(path) {
        Some(name) => Some(AllocatorKind::Replacement(name)),
        None => is_libc(path).then_some(AllocatorKind::Libc),
    }
}

/// glibc's `libc.so.6` (or the older `libc-2.NN.so`), or musl's libc.
fn is_libc(path: &Path) -> bool {
    file_name(path).is_some_and(|name| {
        name == "libc.so.6"
            || (name.starts_with("libc-") && name.ends_with(".so"))
            || (name.starts_with("libc.musl-") || name.starts_with("ld-musl-"))
    })
}

/// Allocators that replace glibc's by exporting `malloc` and friends.
fn replacement_allocator(path: &Path) -> Option<&'static str> {
    let name = file_name(path)?;
    [
        ("libjemalloc", "jemalloc"),
        ("libtcmalloc", "tcmalloc"),
        ("libmimalloc", "mimalloc"),
    ]
    .into_iter()
    .find(|(prefix, _)| name.starts_with(prefix) && name.contains(".so"))
    .map(|(_, allocator)| allocator)
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}

fn same_file(path: &Path, id: mapped::FileId) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == id)
}

/// The shared objects `exe` will map, as its dynamic loader resolves them in
/// this environment (`LD_PRELOAD` and `LD_LIBRARY_PATH` included), without
/// running any of its code: the loader's `--list` mode is what `ldd` uses.
/// Empty for a statically linked executable.
fn objects_loaded_by(exe: &Path) -> Result<Vec<PathBuf>, TargetError> {
    let error = |reason: String| TargetError::Libraries {
        exe: exe.display().to_string(),
        reason,
    };
    let Some(interpreter) = interpreter_of(exe).map_err(error)? else {
        return Ok(Vec::new());
    };
    let output = Command::new(&interpreter)
        .arg("--list")
        .arg(exe)
        .output()
        .map_err(|e| error(format!("running {}: {e}", interpreter.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(error(stderr.lines().next().unwrap_or("failed").to_string()));
    }
    Ok(parse_loader_list(&String::from_utf8_lossy(&output.stdout)))
}

/// The ELF interpreter (`PT_INTERP`) of `exe`, or `None` when static.
fn interpreter_of(exe: &Path) -> Result<Option<PathBuf>, String> {
    let data = std::fs::read(exe).map_err(|e| e.to_string())?;
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(&*data)
        .map_err(|_| "not a 64-bit ELF executable".to_string())?;
    let endian = elf.endian();
    for header in elf.elf_program_headers() {
        if let Ok(Some(interpreter)) = header.interpreter(endian, &*data) {
            let interpreter = String::from_utf8_lossy(interpreter);
            return Ok(Some(PathBuf::from(interpreter.trim_end_matches('\0'))));
        }
    }
    Ok(None)
}

/// Paths from the loader's list: `name => /path (0x…)` and `/path (0x…)`.
fn parse_loader_list(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once(" => ").map_or(line, |(_, path)| path);
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_libc_file_names() {
        assert!(is_libc(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6")));
        assert!(is_libc(Path::new("/lib64/libc-2.17.so")));
        assert!(is_libc(Path::new("/lib/ld-musl-x86_64.so.1")));
        assert!(!is_libc(Path::new("/usr/lib/libcrypto.so.3")));
        assert!(!is_libc(Path::new("/usr/lib/libc.so.6.bak")));
    }

    #[test]
    fn recognises_replacement_allocators() {
        let name = |path: &str| replacement_allocator(Path::new(path));
        assert_eq!(
            name("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
            Some("jemalloc")
        );
        assert_eq!(
            name("/usr/lib/libtcmalloc_minimal.so.4.5.9"),
            Some("tcmalloc")
        );
        assert_eq!(name("/usr/lib/libmimalloc.so.2.0"), Some("mimalloc"));
        assert_eq!(name("/usr/lib/libc.so.6"), None);
    }

    #[test]
    fn reads_the_loaders_list() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                       \tlibjemalloc.so.2 => /lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f01)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                       \tlibmissing.so => not found\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            parse_loader_list(listing),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn resolves_this_process_and_its_libc() {
        let target = Target::resolve(std::process::id(), None).expect("resolve self");
        assert_eq!(target.allocator.kind, AllocatorKind::Libc);
        assert!(target.allocator.host_path.exists());
        assert!(target.is_alive());
    }

    #[test]
    fn a_command_resolves_to_the_libc_its_loader_maps() {
        let exe = std::env::current_exe().expect("current exe");
        let target = Target::for_command(1, &exe, None).expect("resolve command");
        assert_eq!(target.allocator.kind, AllocatorKind::Libc);
        let ours = Target::resolve(std::process::id(), None).expect("resolve self");
        let ours = std::fs::metadata(&ours.allocator.host_path).expect("our libc");
        assert!(same_file(
            &target.allocator.host_path,
            (ours.dev(), ours.ino())
        ));
    }
}
