//! The files a process maps, reached exactly as mapped: through
//! `/proc/PID/map_files/START-END`, never by the path the process names.
//!
//! A path from `/proc/PID/maps` is not a safe way to open a target's file:
//! the file may have been deleted or replaced on disk since it was mapped
//! (every long-running service after a libc package upgrade: the maps line
//! then ends in ` (deleted)`), and in a container or chroot the path may be
//! a symlink the process planted to a host file, which `/proc/PID/root`
//! would follow out of its root. A `map_files` link is a magic link to the
//! very inode mapped, whatever happened to its name, and needs
//! `CAP_SYS_ADMIN` (alloctrace runs as root).
//!
//! The link only lives as long as the mapping, so the file is opened at
//! once and kept open: [`MappedFile::path`] (`/proc/self/fd/N`) then names
//! that exact file for as long as the [`MappedFile`] lives, to this process
//! and to the kernel (uprobes resolve a path to an inode when attached, and
//! follow this magic link like any other).

use std::{
    fmt,
    fs::File,
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::safe_open;

/// What the kernel appends to a mapped file's path once it is unlinked.
const DELETED_MARK: &str = " (deleted)";

pub use crate::maps::{FileId, device};

/// A file a process maps, held open.
#[derive(Clone)]
pub struct MappedFile {
    /// Held open: `path` names it through this process's fd table.
    _open: Arc<File>,
    /// `/proc/self/fd/N` of `file`.
    path: PathBuf,
}

impl MappedFile {
    /// Opens the file `pid` maps at `start..end`, which it names `name`
    /// and whose identity is `id`. Without `CAP_SYS_ADMIN` or
    /// `CAP_CHECKPOINT_RESTORE`, which `map_files` needs, the file is opened
    /// by its name inside the process's root instead, and only accepted if
    /// it is still the file mapped (not deleted or replaced since).
    pub fn open(pid: u32, (start, end): (u64, u64), name: &Path, id: FileId) -> io::Result<Self> {
        let file = match File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}")) {
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                let file = safe_open::open_in_root(pid, name)?;
                let metadata = file.metadata()?;
                if (metadata.dev(), metadata.ino()) != id {
                    return Err(io::Error::other(
                        "the file at that path is not the one mapped (deleted or replaced since); \
                         reading the mapped one needs CAP_CHECKPOINT_RESTORE",
                    ));
                }
                file
            }
            opened => opened?,
        };
        Self::from_file(file)
    }

    /// Opens `name` in alloctrace's own root for a process that is gone
    /// (its `map_files` and root with it), only if what is there is still
    /// the regular file it mapped (`id`): a name the process chose (a
    /// symlink or FIFO planted where its library was, a container's path
    /// that means another file here) never makes alloctrace read anything
    /// else. Not following a last symlink, nor blocking on a FIFO.
    pub fn reopen_by_name(name: &Path, id: FileId) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(name)?;
        let metadata = file.metadata()?;
        if (metadata.dev(), metadata.ino()) != id {
            return Err(io::Error::other("not the file that was mapped"));
        }
        Self::from_file(file)
    }

    /// Holds `file` (already opened safely) as a mapped file.
    pub fn from_file(file: File) -> io::Result<Self> {
        if !file.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Ok(Self {
            _open: Arc::new(file),
            path,
        })
    }

    /// A path that opens this very file, for as long as `self` lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path.fmt(formatter)
    }
}

/// A path from `/proc/PID/maps` without the kernel's ` (deleted)` mark,
/// and whether the mark was there.
pub fn without_deleted_mark(path: &Path) -> (PathBuf, bool) {
    match path
        .to_str()
        .and_then(|text| text.strip_suffix(DELETED_MARK))
    {
        Some(name) => (PathBuf::from(name), true),
        None => (path.to_path_buf(), false),
    }
}

/// The executable of `process`, by its path without the ` (deleted)` mark
/// (the program may have been upgraded on disk since it started).
pub fn executable(process: &procfs::process::Process) -> Option<PathBuf> {
    let exe = process.exe().ok()?;
    Some(without_deleted_mark(&exe).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(path: &Path) -> FileId {
        let metadata = std::fs::symlink_metadata(path).unwrap();
        (metadata.dev(), metadata.ino())
    }

    #[test]
    fn a_file_is_reopened_by_name_only_while_it_is_the_one_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("libx.so");
        std::fs::write(&library, b"mapped").unwrap();
        let mapped = id_of(&library);
        assert!(MappedFile::reopen_by_name(&library, mapped).is_ok());

        // Replaced since (a new inode at the same name): refused.
        let replacement = dir.path().join("new");
        std::fs::write(&replacement, b"other").unwrap();
        std::fs::rename(&replacement, &library).unwrap();
        assert!(MappedFile::reopen_by_name(&library, mapped).is_err());

        // A symlink planted at the name, even to the very file mapped: the
        // link is not followed.
        let kept = dir.path().join("kept");
        std::fs::write(&kept, b"mapped").unwrap();
        let kept_id = id_of(&kept);
        std::fs::remove_file(&library).unwrap();
        std::os::unix::fs::symlink(&kept, &library).unwrap();
        assert!(MappedFile::reopen_by_name(&library, kept_id).is_err());

        // A FIFO at the name: refused at once, never waited on.
        std::fs::remove_file(&library).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &library,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let fifo = id_of(&library);
        assert!(MappedFile::reopen_by_name(&library, fifo).is_err());
    }

    #[test]
    fn strips_the_deleted_mark() {
        assert_eq!(
            without_deleted_mark(Path::new("/usr/lib/libc.so.6 (deleted)")),
            (PathBuf::from("/usr/lib/libc.so.6"), true)
        );
        assert_eq!(
            without_deleted_mark(Path::new("/usr/lib/libc.so.6")),
            (PathBuf::from("/usr/lib/libc.so.6"), false)
        );
    }

    #[test]
    fn opens_this_process_code_as_mapped() {
        let pid = std::process::id();
        let maps = crate::maps::read(pid).expect("own maps");
        let here = opens_this_process_code_as_mapped as fn() as usize as u64;
        let mapping = crate::maps::find(&maps, here).expect("own code mapping");
        let exe = std::fs::metadata("/proc/self/exe").expect("own exe");
        let name = std::fs::read_link("/proc/self/exe").expect("own exe path");
        let mapped = MappedFile::open(
            pid,
            (mapping.start, mapping.end),
            &name,
            (exe.dev(), exe.ino()),
        )
        .expect("map_files");
        let through_path = std::fs::metadata(mapped.path()).expect("fd path");
        assert_eq!(
            (through_path.dev(), through_path.ino()),
            (exe.dev(), exe.ino())
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! `/proc/PID/maps` lines name files a target created: any text there
    //! must be read (by procfs, then here) without a panic.
    use procfs::FromRead as _;
    use proptest::prelude::*;

    use super::*;

    /// A maps line with any path text (spaces, newlines, the mark...).
    fn line() -> impl Strategy<Value = String> {
        (
            any::<u64>(),
            any::<u64>(),
            "[rwxsp-]{4}",
            any::<u64>(),
            "[0-9a-f]{1,3}:[0-9a-f]{1,3}",
            any::<u64>(),
            ".{0,40}",
        )
            .prop_map(|(start, end, perms, offset, dev, inode, path)| {
                format!("{start:x}-{end:x} {perms} {offset:08x} {dev} {inode} {path}")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_maps_text_is_read_without_panicking(
            lines in proptest::collection::vec(line(), 0..8),
            junk in ".{0,60}",
        ) {
            let text = format!("{}\n{junk}\n", lines.join("\n"));
            if let Ok(maps) = procfs::process::MemoryMaps::from_read(text.as_bytes()) {
                for map in maps.iter() {
                    if let procfs::process::MMapPath::Path(path) = &map.pathname {
                        let _ = without_deleted_mark(path);
                    }
                    let _ = device(map.dev.0, map.dev.1);
                }
            }
        }
    }
}
