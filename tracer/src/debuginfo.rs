//! Separate debug info found by build id: in the distribution's
//! `/usr/lib/debug/.build-id` tree and in debuginfod-style local caches.
//!
//! The debuginfod client's cache, `<cache>/<build-id>/debuginfo`, is where
//! `debuginfod-find` (and gdb, perf, systemd-coredump with debuginfod
//! enabled) leave the debug files they fetched; it also works for binaries
//! stripped without a debug link. The symbolizer's debug-file lookup (the
//! `debuglink` module, a stage above this one) looks there through
//! [`cache_dirs`], the unwinder through [`debug_file_by_build_id`].

use std::path::{Path, PathBuf};

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

/// `bytes` as lowercase hex, as build-id paths spell them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_are_lowercase_hex() {
        assert_eq!(hex(&[0x0a, 0xbc, 0xff]), "0abcff");
    }
}
