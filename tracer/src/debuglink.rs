//! Separate debug files, found by alloctrace itself and never by blazesym.
//!
//! A binary names where its debug information is: `.gnu_debuglink` (a file
//! name and the file's CRC), `.gnu_debugaltlink` and `.debug_sup` (a
//! supplementary file shared by several, as `dwz` makes), and its build id.
//! Left to blazesym, those names are looked up in alloctrace's own root,
//! next to the binary's host-visible path, then a `.dwp` next to it: a
//! traced process could name `../../../etc/shadow`, or plant an absolute
//! symlink to a host file, or a FIFO, where its debug file would be, and
//! make alloctrace (root) open and read that host file, or block on the
//! FIFO forever.
//!
//! So alloctrace looks a debug file up itself, inside the target's root
//! only (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from
//! `/proc/PID/root`), where gdb looks: the build-id tree
//! `/usr/lib/debug/.build-id/xx/yyyy.debug`, then, for a link name that is
//! one plain file name, `DIR/NAME`, `DIR/.debug/NAME` and
//! `/usr/lib/debug/DIR/NAME`, `DIR` being the binary's directory as the
//! target sees it; then the host's debuginfod caches by build id
//! ([`crate::debuginfo`]). A candidate must be a regular file (see
//! [`safe_open::open_regular_in`]: a FIFO or a device is never opened)
//! whose build id or CRC matches. A binary whose candidate is refused for
//! another reason than absence gets one warning line.
//!
//! blazesym is then only given files that link to nothing, by paths from
//! which it derives nothing (`/proc/self/fd/N`, whose `.dwp` cannot exist):
//! the binary itself when it carries its own DWARF, or the checked debug
//! file. A debug file that needs a supplementary file (`dwz`) is named from
//! its ELF symbols, read here; a binary whose debug file is not found, from
//! its own ELF symbols. Split DWARF packages (`.dwp`) are not looked up.
//!
//! A process that is gone by the time its stacks are named has no root to
//! look in: its files are then only matched with debug files by build id
//! in the host's own `/usr/lib/debug` tree and the debuginfod caches.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
    rc::{Rc, Weak},
};

use blazesym::{
    Addr,
    helper::ElfResolver,
    symbolize::{
        FindSymOpts, ProcessMemberInfo, ProcessMemberType, Reason, Resolve, ResolvedSym, SrcLang,
        Symbolize, TranslateFileOffset,
    },
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use crate::{
    debuginfo,
    mapped::{MappedFile, without_deleted_mark},
    maps::FileId,
    safe_open,
};

/// The distribution's debug tree, in the target's root.
const DEBUG_DIR: &str = "/usr/lib/debug";

/// Warned binaries and checked CRCs are remembered up to this many each;
/// past it the set is cleared (a warning may then repeat), so that weeks
/// of host-wide churn cannot grow them.
const MEMORY_LIMIT: usize = 4096;

/// How to symbolize one file a process maps.
#[derive(Debug)]
pub enum DebugInfo {
    /// From its own DWARF: it links to no other file.
    Own,
    /// From a separate debug file, checked; `dwarf` is false when that file
    /// needs a supplementary file (`dwz`), and only its symbols are used.
    Separate { file: MappedFile, dwarf: bool },
    /// From its ELF symbols only.
    SymbolsOnly,
}

/// What an ELF file says about its debug information.
struct Links<'data> {
    own_dwarf: bool,
    build_id: Option<&'data [u8]>,
    /// `.gnu_debuglink`: a file name and that file's CRC-32.
    debuglink: Option<(&'data [u8], u32)>,
    /// `.gnu_debugaltlink` or `.debug_sup`: DWARF shared with other files.
    supplementary: bool,
}

impl<'data> Links<'data> {
    fn read(elf: &object::File<'data>) -> Self {
        let present = |name| {
            elf.section_by_name(name).is_some_and(|section| {
                section.kind() != object::SectionKind::UninitializedData && section.size() > 0
            })
        };
        Self {
            own_dwarf: present(".debug_info"),
            build_id: elf.build_id().ok().flatten(),
            debuglink: elf.gnu_debuglink().ok().flatten(),
            supplementary: elf.gnu_debugaltlink().ok().flatten().is_some() || present(".debug_sup"),
        }
    }

    /// Whether blazesym, given this file with DWARF enabled, would look
    /// for another file by a name derived from it.
    fn links(&self) -> bool {
        self.debuglink.is_some() || self.supplementary
    }
}

/// What a candidate debug file must match.
#[derive(Clone, Copy)]
enum Check<'data> {
    BuildId(&'data [u8]),
    Crc(u32),
}

/// Where a process's debug files are looked for.
struct Place {
    /// The process's root, or alloctrace's own for a gone process.
    root: File,
    /// The binary's directory as the process sees it (none for a gone
    /// process: a directory named by it is not safe to look in here).
    dir: Option<PathBuf>,
}

/// Which root a candidate debug file is looked up in.
#[derive(Clone, Copy)]
enum In {
    /// The [`Place`]'s.
    Place,
    /// alloctrace's own.
    Host,
}

/// Identity and version of a file, as blazesym's own file cache keys it.
type FileVersion = (u64, u64, u64, i64, i64);

fn version(metadata: &std::fs::Metadata) -> FileVersion {
    (
        metadata.dev(),
        metadata.ino(),
        metadata.size(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    )
}

/// The debug files of every traced process: chosen safely, their DWARF
/// parsed once however many processes map the binary, refusals warned
/// about once per binary.
pub struct DebugFiles {
    cache_dirs: Vec<PathBuf>,
    /// Resolvers of checked files, by the version of the file they read
    /// and whether they read its DWARF, while some process's resolver holds
    /// them.
    resolvers: RefCell<HashMap<(FileVersion, bool), Weak<dyn Symbolize>>>,
    /// Debug files whose CRC matched the one expected.
    crc_matched: RefCell<HashSet<(FileVersion, u32)>>,
    /// Binaries a refusal was warned about.
    warned: RefCell<HashSet<FileId>>,
}

impl DebugFiles {
    /// Also looking in the debuginfod client caches `cache_dirs` (see
    /// [`debuginfo::cache_dirs`]).
    pub fn new(cache_dirs: Vec<PathBuf>) -> Rc<Self> {
        Rc::new(Self {
            cache_dirs,
            resolvers: RefCell::default(),
            crc_matched: RefCell::default(),
            warned: RefCell::default(),
        })
    }

    /// A blazesym process dispatcher that gives blazesym, for each mapped
    /// file, a resolver reading only what [`DebugFiles`] chose. It returns
    /// none for a file to name from its ELF symbols: the process source
    /// must then be used with `debug_syms: false`, so that blazesym follows
    /// no link itself.
    pub fn dispatcher(
        self: &Rc<Self>,
    ) -> impl Fn(ProcessMemberInfo<'_>) -> blazesym::Result<Option<Box<dyn Resolve>>> + 'static
    {
        let this = Rc::clone(self);
        move |info| {
            let ProcessMemberType::Path(path) = info.member_entry else {
                return Ok(None);
            };
            Ok(this.resolver(&path.maps_file, &path.symbolic_path))
        }
    }

    /// The resolver of the file mapped at `maps_file`
    /// (`/proc/PID/map_files/START-END`), which the process's maps name
    /// `symbolic`; none for symbols only.
    fn resolver(&self, maps_file: &Path, symbolic: &Path) -> Option<Box<dyn Resolve>> {
        let pid = pid_of_map_files(maps_file)?;
        let binary = MappedFile::from_file(open_nonblocking(maps_file).ok()?).ok()?;
        let place = Place::of_process(pid, symbolic)?;
        let label = format!("{} (pid {pid})", without_deleted_mark(symbolic).0.display());
        let names = match self.choose(&binary, &label, &place) {
            DebugInfo::Own => self.resolver_of(binary.path(), true)?,
            DebugInfo::Separate { file, dwarf } => self.resolver_of(file.path(), dwarf)?,
            DebugInfo::SymbolsOnly => return None,
        };
        let segments = Segments::read(binary.path())?;
        Some(Box::new(Named { segments, names }))
    }

    /// How to symbolize `binary` (held open) of a process that is gone,
    /// which its maps named `name`.
    pub fn for_gone_process(&self, binary: &MappedFile, name: &Path) -> DebugInfo {
        match File::open("/") {
            Ok(root) => {
                let place = Place { root, dir: None };
                let label = name.display().to_string();
                self.choose(binary, &label, &place)
            }
            Err(_) => DebugInfo::SymbolsOnly,
        }
    }

    /// Chooses how to symbolize `binary`, looking for its debug file in
    /// `place`; `label` names it in warnings.
    fn choose(&self, binary: &MappedFile, label: &str, place: &Place) -> DebugInfo {
        let Some(data) = map(binary.path()) else {
            return DebugInfo::SymbolsOnly;
        };
        let Ok(elf) = object::File::parse(&*data) else {
            return DebugInfo::SymbolsOnly;
        };
        let links = Links::read(&elf);
        if links.own_dwarf && !links.links() {
            return DebugInfo::Own;
        }
        let Ok(metadata) = std::fs::metadata(binary.path()) else {
            return DebugInfo::SymbolsOnly;
        };
        let binary_id = (metadata.dev(), metadata.ino());
        let warn = |why: String| self.warn(binary_id, label, &why);
        let host = std::cell::OnceCell::new();
        for (root, path, check) in self.candidates(&links, place, &warn) {
            let root = match root {
                In::Place => &place.root,
                In::Host => match host.get_or_init(|| File::open("/").ok()) {
                    Some(root) => root,
                    None => continue,
                },
            };
            let file = match open_regular_in(root, &path) {
                Ok(Some(file)) => file,
                Ok(None) => continue,
                Err(why) => {
                    warn(format!("{}: {why}", path.display()));
                    continue;
                }
            };
            let Ok(file) = MappedFile::from_file(file) else {
                continue;
            };
            match self.verify(&file, binary_id, check) {
                Ok(Some(dwarf)) => return DebugInfo::Separate { file, dwarf },
                Ok(None) => continue,
                Err(why) => warn(format!("{}: {why}", path.display())),
            }
        }
        DebugInfo::SymbolsOnly
    }

    /// Where `links` say the debug file may be, in gdb's order, with the
    /// root to look in and what it must match.
    fn candidates<'data>(
        &self,
        links: &Links<'data>,
        place: &Place,
        warn: &dyn Fn(String),
    ) -> Vec<(In, PathBuf, Check<'data>)> {
        let mut candidates = Vec::new();
        let build_id = links.build_id.filter(|id| id.len() >= 2);
        if let Some(id) = build_id {
            let hex = debuginfo::hex(id);
            let path = Path::new(DEBUG_DIR)
                .join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..]));
            candidates.push((In::Place, path, Check::BuildId(id)));
        }
        if let Some((name, crc)) = links.debuglink
            && let Some(dir) = &place.dir
        {
            match plain_name(name) {
                Some(name) => {
                    let under_debug =
                        Path::new(DEBUG_DIR).join(dir.strip_prefix("/").unwrap_or(dir));
                    for dir in [dir.clone(), dir.join(".debug"), under_debug] {
                        candidates.push((In::Place, dir.join(name), Check::Crc(crc)));
                    }
                }
                None => warn(format!(
                    "its debug link {:?} is not a plain file name",
                    String::from_utf8_lossy(name)
                )),
            }
        }
        // The caches are the operator's, looked up in alloctrace's root.
        if let Some(id) = build_id {
            let hex = debuginfo::hex(id);
            for dir in &self.cache_dirs {
                let path = dir.join(&hex).join("debuginfo");
                candidates.push((In::Host, path, Check::BuildId(id)));
            }
        }
        candidates
    }

    /// Whether `file` is the debug file `check` describes, and then whether
    /// blazesym may read its DWARF; `Ok(None)` for the binary itself.
    fn verify(
        &self,
        file: &MappedFile,
        binary: FileId,
        check: Check<'_>,
    ) -> Result<Option<bool>, String> {
        let metadata = std::fs::metadata(file.path()).map_err(|error| error.to_string())?;
        if (metadata.dev(), metadata.ino()) == binary {
            return Ok(None);
        }
        let data = map(file.path()).ok_or("cannot be read")?;
        match check {
            Check::BuildId(expected) => {
                let elf = object::File::parse(&*data).map_err(|error| error.to_string())?;
                if elf.build_id().ok().flatten() != Some(expected) {
                    return Err("its build id is not the binary's".to_owned());
                }
            }
            Check::Crc(expected) => {
                let key = (version(&metadata), expected);
                if !self.crc_matched.borrow().contains(&key) {
                    let crc = crc32fast::hash(&data);
                    if crc != expected {
                        return Err(format!(
                            "its CRC is {crc:08x}, the debug link says {expected:08x}"
                        ));
                    }
                    let mut matched = self.crc_matched.borrow_mut();
                    if matched.len() >= MEMORY_LIMIT {
                        matched.clear();
                    }
                    matched.insert(key);
                }
            }
        }
        let elf = object::File::parse(&*data).map_err(|error| error.to_string())?;
        let links = Links::read(&elf);
        if links.links() {
            log::debug!(
                "{}: debug file links further, symbols only",
                file.path().display()
            );
        }
        Ok(Some(!links.links()))
    }

    /// One warning per binary whose debug file was refused.
    fn warn(&self, binary: FileId, label: &str, why: &str) {
        let mut warned = self.warned.borrow_mut();
        if warned.len() >= MEMORY_LIMIT {
            warned.clear();
        }
        if warned.insert(binary) {
            eprintln!("alloctrace: warning: not using a debug file for {label}: {why}");
        }
    }

    /// The resolver of the file at `path` (`/proc/self/fd/N` of a checked
    /// file), shared by every process mapping that version of it: blazesym's
    /// DWARF resolver when `dwarf` (the file links to nothing), else its
    /// ELF symbols read here.
    fn resolver_of(&self, path: &Path, dwarf: bool) -> Option<Rc<dyn Symbolize>> {
        let key = (version(&std::fs::metadata(path).ok()?), dwarf);
        if let Some(resolver) = self.resolvers.borrow().get(&key).and_then(Weak::upgrade) {
            return Some(resolver);
        }
        let resolver: Rc<dyn Symbolize> = if dwarf {
            let no_debug_dirs: [&Path; 0] = [];
            match ElfResolver::open_with_debug_dirs(path, no_debug_dirs) {
                Ok(resolver) => Rc::new(resolver),
                Err(error) => {
                    log::debug!("reading the DWARF of {}: {error}", path.display());
                    return None;
                }
            }
        } else {
            Rc::new(Symbols::read(path)?)
        };
        let mut resolvers = self.resolvers.borrow_mut();
        if resolvers.len() >= MEMORY_LIMIT {
            resolvers.retain(|_, resolver| resolver.strong_count() > 0);
        }
        resolvers.insert(key, Rc::downgrade(&resolver));
        Some(resolver)
    }
}

impl Place {
    /// Process `pid`'s root, and the directory of the file its maps name
    /// `symbolic`, as it sees it.
    fn of_process(pid: u32, symbolic: &Path) -> Option<Self> {
        let root = File::open(format!("/proc/{pid}/root")).ok()?;
        let (path, _) = without_deleted_mark(symbolic);
        let root_path = std::fs::read_link(format!("/proc/{pid}/root")).ok()?;
        // The maps name files from alloctrace's root: a chrooted process's
        // `/lib/x.so` reads as `/its/root/lib/x.so`.
        let inside = path
            .strip_prefix(&root_path)
            .ok()
            .map(|rest| Path::new("/").join(rest));
        Some(Self {
            root,
            dir: inside.and_then(|path| path.parent().map(Path::to_path_buf)),
        })
    }
}

/// The pid in `/proc/PID/map_files/START-END`.
fn pid_of_map_files(path: &Path) -> Option<u32> {
    let mut components = path.components().skip(2);
    match components.next()? {
        Component::Normal(pid) => pid.to_str()?.parse().ok(),
        _ => None,
    }
}

/// A debug link's name when it is one plain file name (no directory, no
/// `..`), as gdb and the tools writing it make it.
fn plain_name(name: &[u8]) -> Option<&Path> {
    let name = std::str::from_utf8(name).ok()?;
    let path = Path::new(name);
    let mut components = path.components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Some(path),
        _ => None,
    }
}

/// Opens `path` for reading without blocking (a FIFO, a terminal).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Opens `path` inside `root` if it is a regular file (see
/// [`safe_open::open_regular_in`]): `Ok(None)` when there is nothing
/// there; `Err` says why what is there is refused.
fn open_regular_in(root: &File, path: &Path) -> Result<Option<File>, String> {
    match safe_open::open_regular_in(root, path) {
        Ok(file) => Ok(Some(file)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if safe_open::is_symlink_in(root, path) {
                Err("a symlink to nothing inside the process's root".to_owned())
            } else {
                Ok(None)
            }
        }
        Err(error) if error.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// The contents of the file at `path`, mapped read-only.
fn map(path: &Path) -> Option<memmap2::Mmap> {
    let file = File::open(path).ok()?;
    // SAFETY: mapped read-only and only read through the returned map. A
    // target that truncates its own file under it can fault this process,
    // as it can blazesym's own maps of the same files.
    unsafe { memmap2::Mmap::map(&file) }.ok()
}

/// A binary's loadable segments: file offsets to addresses, as blazesym
/// translates them (a debug-only file's segments have no file contents).
#[derive(Debug)]
struct Segments(Vec<(u64, u64, u64)>);

impl Segments {
    fn read(path: &Path) -> Option<Self> {
        let data = map(path)?;
        let elf = object::File::parse(&*data).ok()?;
        let segments = elf
            .segments()
            .map(|segment| {
                let (offset, size) = segment.file_range();
                (offset, size, segment.address())
            })
            .collect();
        Some(Self(segments))
    }

    fn virtual_offset(&self, file_offset: u64) -> Option<Addr> {
        self.0
            .iter()
            .find(|&&(offset, size, _)| (offset..offset + size).contains(&file_offset))
            .map(|&(offset, _, address)| file_offset - offset + address)
    }
}

/// A mapped file as blazesym symbolizes it: addresses placed with the
/// file's own segments (a debug-only file's have no file contents), named
/// by `names` (its own DWARF, or its debug file's DWARF or symbols).
#[derive(Debug)]
struct Named {
    segments: Segments,
    names: Rc<dyn Symbolize>,
}

impl Symbolize for Named {
    fn find_sym(
        &self,
        addr: Addr,
        opts: &FindSymOpts,
    ) -> blazesym::Result<Result<ResolvedSym<'_>, Reason>> {
        self.names.find_sym(addr, opts)
    }
}

impl TranslateFileOffset for Named {
    fn file_offset_to_virt_offset(&self, file_offset: u64) -> blazesym::Result<Option<Addr>> {
        Ok(self.segments.virtual_offset(file_offset))
    }
}

/// The function symbols of an ELF file, for a debug file whose DWARF
/// blazesym may not read (it needs a supplementary file): names without
/// lines, demangled by blazesym like any other.
#[derive(Debug)]
struct Symbols {
    /// (start, size, name), sorted by start.
    functions: Vec<(u64, u64, String)>,
}

impl Symbols {
    fn read(path: &Path) -> Option<Self> {
        let data = map(path)?;
        let elf = object::File::parse(&*data).ok()?;
        let mut functions: Vec<(u64, u64, String)> = elf
            .symbols()
            .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.is_definition())
            .filter_map(|symbol| {
                let name = symbol.name().ok()?;
                Some((symbol.address(), symbol.size(), name.to_owned()))
            })
            .collect();
        functions.sort_unstable();
        Some(Self { functions })
    }
}

impl Symbolize for Symbols {
    fn find_sym(
        &self,
        addr: Addr,
        _opts: &FindSymOpts,
    ) -> blazesym::Result<Result<ResolvedSym<'_>, Reason>> {
        let after = self
            .functions
            .partition_point(|&(start, _, _)| start <= addr);
        // The closest symbols below `addr`: one of them covers it, unless a
        // function's size is wrong (nested symbols are few).
        let covering = self.functions[..after]
            .iter()
            .rev()
            .take(8)
            .find(|&&(start, size, _)| addr < start + size.max(1));
        Ok(match covering {
            Some((start, size, name)) => Ok(ResolvedSym {
                name,
                module: None,
                addr: *start,
                size: usize::try_from(*size).ok(),
                lang: SrcLang::Unknown,
                code_info: None,
                inlined: Box::new([]),
                _non_exhaustive: (),
            }),
            None => Err(Reason::UnknownAddr),
        })
    }
}

/// File offsets in `binary` (held open) as addresses in its debug file
/// (`None` for an offset in no loadable segment).
pub fn virtual_offsets(binary: &MappedFile, file_offsets: &[u64]) -> Vec<Option<Addr>> {
    let segments = Segments::read(binary.path());
    file_offsets
        .iter()
        .map(|&offset| segments.as_ref()?.virtual_offset(offset))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_are_followed() {
        assert_eq!(
            plain_name(b"libc.so.6.debug"),
            Some(Path::new("libc.so.6.debug"))
        );
        for unsafe_name in [
            &b"../../etc/shadow"[..],
            b"/etc/shadow",
            b"..",
            b".",
            b"",
            b"dir/x.debug",
            b"x.debug/",
        ] {
            assert_eq!(plain_name(unsafe_name), None, "{unsafe_name:?}");
        }
    }

    #[test]
    fn reads_the_pid_of_a_map_files_path() {
        assert_eq!(
            pid_of_map_files(Path::new("/proc/1234/map_files/7f00-7f10")),
            Some(1234)
        );
        assert_eq!(pid_of_map_files(Path::new("/tmp/x")), None);
    }

    #[test]
    fn opens_only_regular_files_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = File::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        assert!(
            open_regular_in(&root, Path::new("/plain"))
                .unwrap()
                .is_some()
        );
        assert!(
            open_regular_in(&root, Path::new("/absent"))
                .unwrap()
                .is_none()
        );

        // An absolute symlink resolves inside the root, where there is
        // nothing: refused, the host file never opened.
        let host = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(host.path(), dir.path().join("out")).unwrap();
        let error = open_regular_in(&root, Path::new("/out")).unwrap_err();
        assert!(error.contains("symlink"), "{error}");

        // `..` stays at the root too.
        let escaped = format!("/../../..{}", host.path().display());
        assert!(
            open_regular_in(&root, Path::new(&escaped))
                .unwrap()
                .is_none()
        );

        // A FIFO is refused without being opened (which would block).
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let error = open_regular_in(&root, Path::new("/fifo")).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");

        // A magic link is refused.
        std::os::unix::fs::symlink("/proc/self/exe", dir.path().join("magic")).unwrap();
        assert!(open_regular_in(&root, Path::new("/magic")).is_err());
    }

    #[test]
    fn a_binary_with_its_own_dwarf_is_symbolized_from_it() {
        // This test binary is built with debug info and no debug link.
        let files = DebugFiles::new(Vec::new());
        let exe = MappedFile::from_file(File::open("/proc/self/exe").unwrap()).unwrap();
        assert!(matches!(
            files.for_gone_process(&exe, Path::new("/proc/self/exe")),
            DebugInfo::Own
        ));
    }
}
