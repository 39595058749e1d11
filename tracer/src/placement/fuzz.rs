//! The probed library is a file alloctrace reads but does not control (a
//! container's own copy, a library named with `--allocator-lib`): however
//! damaged, planning probes in it must fail cleanly or succeed, not panic.

use std::{io::Write as _, path::PathBuf, sync::OnceLock};

use proptest::prelude::*;

use super::*;

/// This process's libc, read once.
fn libc() -> &'static [u8] {
    static LIBC: OnceLock<Vec<u8>> = OnceLock::new();
    LIBC.get_or_init(|| {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        let path = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|path| path.ends_with("/libc.so.6"))
            .map(PathBuf::from)
            .expect("this test maps libc.so.6");
        std::fs::read(path).expect("read libc")
    })
}

/// Plans probes in `bytes` (as a file).
fn plan_in(bytes: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write");
    let _ = defines_allocator(file.path());
    let _ = Plan::for_object(file.path());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// libc with bytes overwritten: headers, tables, code.
    #[test]
    fn a_damaged_library_is_planned_or_refused(
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..64),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = libc().to_vec();
        for (index, byte) in damage {
            // Most of the damage in the first pages, where the ELF and
            // program headers are.
            let at = index.index(bytes.len().min(16 * 4096));
            bytes[at] = byte;
        }
        if let Some(at) = truncate {
            bytes.truncate(at.index(bytes.len()));
        }
        plan_in(&bytes);
    }

    #[test]
    fn any_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        plan_in(&bytes);
    }
}
