//! Separate debug info found by build id in debuginfod-style local caches.
//!
//! blazesym already follows a binary's `.gnu_debuglink` (next to the binary,
//! in `/usr/lib/debug` and its `.build-id/xx/yyyy.debug` tree). What it does
//! not know is the layout of the debuginfod client's cache,
//! `<cache>/<build-id>/debuginfo`, where `debuginfod-find` (and gdb, perf,
//! systemd-coredump with debuginfod enabled) leave the debug files they
//! fetched, and which also works for binaries stripped without a debug link.
//! This module plugs that lookup into blazesym as a process dispatcher: for a
//! mapped file that has no DWARF of its own, a cached debug file with the
//! same build id is symbolized instead; anything else keeps blazesym's
//! default handling.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use blazesym::{
    Addr,
    helper::ElfResolver,
    symbolize::{
        FindSymOpts, ProcessMemberInfo, ProcessMemberType, Reason, Resolve, ResolvedSym, Symbolize,
        TranslateFileOffset,
    },
};
use object::Object as _;

/// The debuginfod client's cache directories, in the client's order of
/// precedence: `$DEBUGINFOD_CACHE_PATH`, `$XDG_CACHE_HOME/debuginfod_client`,
/// `$HOME/.cache/debuginfod_client`.
pub fn cache_dirs() -> Vec<PathBuf> {
    let env = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    let mut dirs = Vec::new();
    if let Some(path) = env("DEBUGINFOD_CACHE_PATH") {
        dirs.push(PathBuf::from(path));
    }
    if let Some(cache) = env("XDG_CACHE_HOME") {
        dirs.push(Path::new(&cache).join("debuginfod_client"));
    }
    if let Some(home) = env("HOME") {
        dirs.push(Path::new(&home).join(".cache/debuginfod_client"));
    }
    dirs
}

/// A blazesym process dispatcher that symbolizes files without DWARF from
/// their cached debug file, when there is one in `dirs`.
pub fn dispatcher(
    dirs: Vec<PathBuf>,
) -> impl Fn(ProcessMemberInfo<'_>) -> blazesym::Result<Option<Box<dyn Resolve>>> {
    move |info| {
        let ProcessMemberType::Path(path) = info.member_entry else {
            return Ok(None);
        };
        let Some(debug_file) = cached_debug_file(&path.maps_file, &dirs) else {
            return Ok(None);
        };
        log::debug!(
            "debug info of {} from {}",
            path.symbolic_path.display(),
            debug_file.display()
        );
        let split = ElfResolver::open(&path.maps_file).and_then(|binary| {
            Ok(SplitDebug {
                binary,
                debug: ElfResolver::open(&debug_file)?,
            })
        });
        match split {
            Ok(split) => Ok(Some(Box::new(split))),
            Err(error) => {
                log::debug!("opening {}: {error}", debug_file.display());
                Ok(None)
            }
        }
    }
}

/// A binary whose symbols and DWARF are in a separate debug file. Addresses
/// are placed with the binary's own program headers (a debug-only file's
/// segments have no file contents, so it cannot translate file offsets) and
/// named from the debug file.
#[derive(Debug)]
struct SplitDebug {
    binary: ElfResolver,
    debug: ElfResolver,
}

impl Symbolize for SplitDebug {
    fn find_sym(
        &self,
        addr: Addr,
        opts: &FindSymOpts,
    ) -> blazesym::Result<Result<ResolvedSym<'_>, Reason>> {
        self.debug.find_sym(addr, opts)
    }
}

impl TranslateFileOffset for SplitDebug {
    fn file_offset_to_virt_offset(&self, file_offset: u64) -> blazesym::Result<Option<Addr>> {
        self.binary.file_offset_to_virt_offset(file_offset)
    }
}

/// `<dir>/<build-id>/debuginfo` for the ELF file at `binary`, if it has no
/// DWARF of its own and such a file exists.
fn cached_debug_file(binary: &Path, dirs: &[PathBuf]) -> Option<PathBuf> {
    if dirs.is_empty() {
        return None;
    }
    let file = File::open(binary).ok()?;
    // SAFETY: mapped read-only and only read while this function runs.
    let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let elf = object::File::parse(&*data).ok()?;
    if elf.section_by_name(".debug_info").is_some() {
        return None;
    }
    let build_id = hex(elf.build_id().ok()??);
    dirs.iter()
        .map(|dir| dir.join(&build_id).join("debuginfo"))
        .find(|path| path.is_file())
}

/// The separate debug file of the ELF file with `build_id`: in the
/// distribution's `/usr/lib/debug/.build-id/xx/yyyy.debug` tree, else in a
/// debuginfod client cache (see [`cache_dirs`]).
pub fn debug_file_by_build_id(build_id: &[u8]) -> Option<PathBuf> {
    let hex = hex(build_id);
    if hex.len() < 3 {
        return None;
    }
    let system = Path::new("/usr/lib/debug/.build-id")
        .join(&hex[..2])
        .join(format!("{}.debug", &hex[2..]));
    std::iter::once(system)
        .chain(
            cache_dirs()
                .into_iter()
                .map(|dir| dir.join(&hex).join("debuginfo")),
        )
        .find(|path| path.is_file())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_are_lowercase_hex() {
        assert_eq!(hex(&[0x0a, 0xbc, 0xff]), "0abcff");
    }

    #[test]
    fn files_with_their_own_dwarf_are_left_to_blazesym() {
        // This test binary is built with debug info.
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(cached_debug_file(&exe, &[dir.path().to_owned()]), None);
    }
}
