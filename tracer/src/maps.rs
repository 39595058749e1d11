//! The target's memory map, read from `/proc/PID/maps`: which file (or
//! anonymous region) each address range holds.
//!
//! Two stages read it: the unwinder, to find each code module's unwind
//! tables, and the symbolizer, to name an address no symbol covers by its
//! module and offset. It is a snapshot: callers re-read it when an address
//! falls outside every range (a library loaded, JIT code mapped since).

use std::path::PathBuf;

use procfs::process::{MMPermissions, MMapPath};

/// What backs a mapped range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A file, by the path the target sees.
    File(PathBuf),
    /// Anonymous memory: where JIT compilers put generated code.
    Anonymous,
    /// A kernel-named region such as `[heap]`, `[stack]` or `[vdso]`.
    Special(String),
}

/// One mapped range of the target.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    pub executable: bool,
    pub backing: Backing,
    /// The mapped file's device and inode, as the maps line gives them
    /// (`None` for anything but a file): what a file opened later by its
    /// path must still be.
    pub file_id: Option<FileId>,
}

/// A file's identity: device and inode, as `stat` gives them.
pub type FileId = (u64, u64);

/// The device number `/proc/PID/maps` shows as `major:minor`, as `stat`
/// gives it.
pub fn device(major: i32, minor: i32) -> u64 {
    libc::makedev(major as u32, minor as u32)
}

impl Mapping {
    /// The file's path, or the kernel's name for the region (`[anon]` for
    /// anonymous memory such as JIT code).
    pub fn name(&self) -> String {
        match &self.backing {
            Backing::File(path) => path.display().to_string(),
            Backing::Anonymous => "[anon]".to_owned(),
            Backing::Special(name) => name.clone(),
        }
    }

    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// `module+0xoffset` (file offset, which is what `addr2line`-style tools
    /// and `perf` report), `[anon]+0x...` or `[vdso]+0x...` relative to the
    /// mapping's start.
    pub fn describe(&self, address: u64) -> String {
        match &self.backing {
            Backing::File(path) => format!(
                "{}+{:#x}",
                path.display(),
                address - self.start + self.file_offset
            ),
            Backing::Anonymous => format!("[anon]+{:#x}", address - self.start),
            Backing::Special(name) => format!("{name}+{:#x}", address - self.start),
        }
    }
}

/// The mappings of `pid`, in address order; `None` once it is gone.
pub fn read(pid: u32) -> Option<Vec<Mapping>> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let maps = process.maps().ok()?;
    Some(
        maps.iter()
            .map(|map| Mapping {
                start: map.address.0,
                end: map.address.1,
                file_offset: map.offset,
                executable: map.perms.contains(MMPermissions::EXECUTE),
                backing: match &map.pathname {
                    MMapPath::Path(path) => Backing::File(path.clone()),
                    MMapPath::Anonymous => Backing::Anonymous,
                    MMapPath::Heap => Backing::Special("[heap]".into()),
                    MMapPath::Stack | MMapPath::TStack(_) => Backing::Special("[stack]".into()),
                    MMapPath::Vdso => Backing::Special("[vdso]".into()),
                    other => Backing::Special(format!("{other:?}")),
                },
                file_id: matches!(map.pathname, MMapPath::Path(_))
                    .then(|| (device(map.dev.0, map.dev.1), map.inode)),
            })
            .collect(),
    )
}

/// Where `pid`'s program break is now, page-rounded: the end of its
/// `[heap]`, or where the heap would start when it has none yet.
pub fn program_break(pid: u32) -> Option<u64> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let heap = process
        .maps()
        .ok()?
        .iter()
        .find(|map| map.pathname == MMapPath::Heap)
        .map(|map| map.address.1);
    heap.or_else(|| process.stat().ok()?.start_brk)
}

/// The mapping holding `address`, if any.
pub fn find(mappings: &[Mapping], address: u64) -> Option<&Mapping> {
    let after = mappings.partition_point(|mapping| mapping.start <= address);
    mappings[..after]
        .last()
        .filter(|mapping| mapping.contains(address))
}

/// Whether `address` is in an executable mapping: code, compiled or JIT.
pub fn is_code(mappings: &[Mapping], address: u64) -> bool {
    find(mappings, address).is_some_and(|mapping| mapping.executable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, end: u64, backing: Backing) -> Mapping {
        Mapping {
            start,
            end,
            file_offset: 0x1000,
            executable: true,
            backing,
            file_id: None,
        }
    }

    #[test]
    fn finds_the_mapping_holding_an_address() {
        let maps = [
            mapping(0x1000, 0x2000, Backing::File("/bin/a".into())),
            mapping(0x3000, 0x4000, Backing::Anonymous),
        ];
        assert_eq!(find(&maps, 0x1000).map(|m| m.start), Some(0x1000));
        assert_eq!(find(&maps, 0x3fff).map(|m| m.start), Some(0x3000));
        assert!(find(&maps, 0x2000).is_none());
        assert!(find(&maps, 0x500).is_none());
        assert!(find(&maps, 0x4000).is_none());
    }

    #[test]
    fn code_is_what_executable_mappings_hold() {
        let data = Mapping {
            executable: false,
            ..mapping(0x5000, 0x6000, Backing::Special("[heap]".into()))
        };
        let maps = [
            mapping(0x1000, 0x2000, Backing::File("/bin/a".into())),
            mapping(0x3000, 0x4000, Backing::Anonymous),
            data,
        ];
        assert!(is_code(&maps, 0x1abc));
        assert!(is_code(&maps, 0x3010), "JIT code in anonymous memory");
        assert!(!is_code(&maps, 0x5010), "the heap");
        assert!(!is_code(&maps, 0x2010), "between mappings");
    }

    #[test]
    fn describes_addresses_by_module_and_offset() {
        let file = mapping(0x1000, 0x2000, Backing::File("/lib/x.so".into()));
        assert_eq!(file.describe(0x1010), "/lib/x.so+0x1010");
        let anon = mapping(0x3000, 0x4000, Backing::Anonymous);
        assert_eq!(anon.describe(0x3010), "[anon]+0x10");
    }

    #[test]
    fn finds_this_process_break() {
        // Other test threads may move it meanwhile (glibc's main arena).
        // SAFETY: sbrk(0) only reads the break.
        let before = unsafe { libc::sbrk(0) } as u64;
        let found = program_break(std::process::id()).expect("own break");
        // SAFETY: as above.
        let after = unsafe { libc::sbrk(0) } as u64;
        let page_up = |address: u64| (address + 4095) & !4095;
        let (low, high) = (before.min(after), before.max(after));
        assert!(
            (page_up(low)..=page_up(high)).contains(&found),
            "{found:#x}"
        );
    }

    #[test]
    fn reads_this_process() {
        let maps = read(std::process::id()).expect("own maps");
        let here = finds_the_mapping_holding_an_address as fn() as usize as u64;
        let found = find(&maps, here).expect("own code is mapped");
        assert!(found.executable);
        assert!(matches!(found.backing, Backing::File(_)));
    }
}
