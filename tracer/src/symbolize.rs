//! Turning return addresses into readable frames: function, module,
//! file:line, with inlined functions expanded.
//!
//! Which addresses make up which stack is the `stacks` stage's business;
//! this one only names addresses. A stack's addresses are symbolized the
//! first time it is seen ([`ProcessSymbolizer::symbolize_new`]), while the
//! target is alive, and the results are cached by address. The process's memory maps are cached too (in blazesym and in a
//! snapshot of our own), so the final report is complete even when the
//! target exited before it was written. JIT frames are named from the
//! runtime's perf map ([`crate::perfmap`]), re-read with the memory map
//! when an address outside every mapped file turns up, and at every
//! refresh, when frames it did not name before are named again. Separate
//! debug files are found by [`crate::debuglink`], never by blazesym, which
//! only reads files that link to no other. An
//! address that cannot be named still says which module and offset it is in.
//!
//! The kernel's own stacks (`--kernel`) are named by the same type, made
//! with [`ProcessSymbolizer::kernel`]: from `/proc/kallsyms` (or a
//! `vmlinux` blazesym finds), each frame as `function+offset` in its
//! module ([`crate::kallsyms`]).

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        cache::{self, Cache},
        evict::{self, Evict},
        source::{Elf, Kernel, Process, Source},
    },
};
use serde::{Serialize, Serializer};

mod plausible;

pub use self::plausible::Plausible;

use crate::{
    debuginfo,
    debuglink::{self, DebugFiles, DebugInfo},
    kallsyms::KernelModules,
    mapped::{FileId, MappedFile},
    maps::{self, Backing, Mapping},
    perfmap::PerfMap,
};

/// Module name of the frame that ends each `--kernel` stack, naming the
/// task the allocation was made for (see `modes::kernel`).
pub const TASK_MODULE: &str = "[task]";

/// Module name of frames in JIT-compiled code (anonymous executable memory),
/// named from the runtime's perf map.
const JIT_MODULE: &str = "[jit]";

/// One frame of a reported stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Return address (instruction pointer) in the target.
    #[serde(serialize_with = "hex")]
    pub address: u64,
    pub function: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// True for a function inlined into the frame that follows it.
    pub inlined: bool,
    /// Kernel frames: the address's offset in `function`, shown as
    /// `function+0x1c` (kernel code has no line numbers to show).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Frame {
    /// The frame's name in summaries: its label, and its offset when it
    /// has one (kernel frames).
    pub fn display_name(&self) -> String {
        match self.offset {
            Some(offset) => format!("{}+{offset:#x}", self.label()),
            None => self.label(),
        }
    }

    /// The frame's name in folded stacks and summaries.
    pub fn label(&self) -> String {
        match (&self.function, &self.module) {
            (Some(function), _) => function.clone(),
            (None, Some(module)) => format!("[{module}]"),
            (None, None) => "[unknown]".to_owned(),
        }
    }

    /// `file:line` when known.
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_deref()?;
        let name = file.rsplit('/').next().unwrap_or(file);
        Some(match self.line {
            Some(line) => format!("{name}:{line}"),
            None => name.to_owned(),
        })
    }
}

fn hex<S: Serializer>(address: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{address:#x}"))
}

/// Functions that only forward to the allocator (including inlined wrappers
/// named like it, such as ld.so's `calloc`); a stack's first meaningful frame
/// is below them.
const ALLOCATOR_WRAPPERS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "strdup",
    "strndup",
    "__strdup",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
];

/// Rust's global allocator shims: `__rust_alloc` jumps to the default
/// `__rdl_alloc`, which calls `malloc`, or `posix_memalign` for an
/// over-aligned type (a frame of its own then). Recent compilers mangle
/// them, demangled as `__rustc::__rdl_alloc`.
const RUST_ALLOCATOR_SHIMS: &[&str] = &[
    "__rust_alloc",
    "__rust_alloc_zeroed",
    "__rust_realloc",
    "__rdl_alloc",
    "__rdl_alloc_zeroed",
    "__rdl_realloc",
];

fn is_allocator_wrapper(function: &str) -> bool {
    let rust_shim = function.strip_prefix("__rustc::").unwrap_or(function);
    ALLOCATOR_WRAPPERS.contains(&function)
        || function.starts_with("operator new")
        || RUST_ALLOCATOR_SHIMS.contains(&rust_shim)
}

/// The kernel's allocator entry points and internals the `kmem` and
/// `percpu` tracepoints fire in, and the glue that runs their programs (Linux 6.x names, `_noprof` since 6.10): a
/// kernel stack's first meaningful frame is below them, so that the
/// stacks of a slab cache are told apart by who calls it.
const KERNEL_ALLOCATOR_PREFIXES: &[&str] = &[
    "__kmalloc",
    "kmalloc_",
    "__kvmalloc",
    "kvmalloc",
    "kmem_cache_alloc",
    "__alloc_pages",
    "__alloc_frozen_pages",
    "alloc_pages",
    "alloc_frozen_pages",
    "__folio_alloc",
    "folio_alloc",
    "pcpu_alloc",
    "__alloc_percpu",
    // The raw tracepoints' glue between the allocator and the program
    // (`bpf_trace_run<N>`, and `__bpf_trace_*`, `__traceiter_*` where the
    // tracepoint's static call does not skip them).
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
];

fn is_kernel_allocator(function: &str) -> bool {
    KERNEL_ALLOCATOR_PREFIXES
        .iter()
        .any(|prefix| function.starts_with(prefix))
}

/// What the symbolizers of every traced process share: blazesym, whose
/// caches of parsed files are keyed by file identity, so a library is parsed
/// once however many processes map it.
pub struct SharedSymbols {
    symbolizer: RefCell<Symbolizer>,
    debug_files: Rc<DebugFiles>,
}

impl SharedSymbols {
    pub fn new() -> Rc<Self> {
        let debug_files = DebugFiles::new(debuginfo::cache_dirs());
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .set_process_dispatcher(debug_files.dispatcher())
            .build();
        Rc::new(Self {
            symbolizer: RefCell::new(symbolizer),
            debug_files,
        })
    }
}

/// Names the addresses of one process.
pub struct ProcessSymbolizer {
    pid: u32,
    shared: Rc<SharedSymbols>,
    /// Frames of each address symbolized, leaf first (inlined expanded).
    frames: HashMap<u64, Rc<[Frame]>>,
    mappings: Vec<Mapping>,
    perf_map: PerfMap,
    target_alive: bool,
    /// When the memory map was last read (see [`MAPS_REREAD_PERIOD`]).
    maps_read_at: Instant,
    /// The same on the events' clock (see [`Self::plausible_frames`]).
    maps_read_ns: u64,
    /// Set for the kernel's own stacks (see [`ProcessSymbolizer::kernel`]).
    kernel: Option<KernelModules>,
    /// Addresses outside every known mapping that came while the memory
    /// map could not be re-read yet: named at the next re-read (a library
    /// `dlopen`ed just before them), not left `[unknown]`.
    pending: HashSet<u64>,
}

/// The memory map is re-read for addresses outside every mapped file at
/// most this often. Host-wide on a busy VM, stacks ending in an address no
/// mapping holds (a frame found through a stale frame pointer) arrived by
/// the thousand, and re-reading `/proc/PID/maps` twice for each was most of
/// the tracer's time and allocations (perf and heaptrack).
const MAPS_REREAD_PERIOD: Duration = Duration::from_millis(100);

impl ProcessSymbolizer {
    pub fn new(pid: u32) -> Self {
        Self::sharing(pid, SharedSymbols::new())
    }

    /// A symbolizer for process `pid` that shares `shared` with others.
    pub fn sharing(pid: u32, shared: Rc<SharedSymbols>) -> Self {
        let mut this = Self::empty(pid, shared, None);
        this.refresh_maps();
        this
    }

    /// A symbolizer of the running kernel's addresses, sharing `shared`.
    pub fn kernel(shared: Rc<SharedSymbols>) -> Self {
        Self::empty(0, shared, Some(KernelModules::read()))
    }

    /// A symbolizer of `pid` (of the kernel, with `kernel`) that has named
    /// nothing and read no maps yet.
    fn empty(pid: u32, shared: Rc<SharedSymbols>, kernel: Option<KernelModules>) -> Self {
        Self {
            pid,
            shared,
            frames: HashMap::new(),
            mappings: Vec::new(),
            perf_map: PerfMap::default(),
            target_alive: true,
            maps_read_at: Instant::now(),
            maps_read_ns: 0,
            kernel,
            pending: HashSet::new(),
        }
    }

    /// Re-reads the target's memory maps (libraries loaded since) and its
    /// perf map, naming the JIT frames it names now; call while the target
    /// is alive, so later symbolization does not need it.
    pub fn refresh_maps(&mut self) {
        if self.kernel.is_some() {
            return;
        }
        self.read_maps();
        let pending: Vec<u64> = self.pending.drain().collect();
        if !pending.is_empty() {
            self.symbolize(pending);
        }
        if self.perf_map.refresh(self.pid) {
            let unnamed: Vec<u64> = self
                .frames
                .iter()
                .filter(|(_, frames)| frames.iter().all(|frame| frame.function.is_none()))
                .map(|(&address, _)| address)
                .collect();
            self.name_from_perf_map(&unnamed);
        }
    }

    /// Re-reads the target's memory maps, for us and for blazesym.
    fn read_maps(&mut self) {
        let Some(pid) = NonZeroU32::new(self.pid) else {
            return;
        };
        // A process that has exited (a zombie, until it is reaped) reads as
        // having no maps at all; caching that would replace the last good
        // view, the only one left to symbolize its stacks with.
        // Stamped before the read: an event stamped after it began may have
        // code the read missed.
        let read_ns = crate::clock::monotonic_ns();
        let Some(mappings) = maps::read(self.pid).filter(|mappings| !mappings.is_empty()) else {
            return;
        };
        self.mappings = mappings;
        self.maps_read_at = Instant::now();
        self.maps_read_ns = read_ns;
        // Not its perf map: blazesym would open `/proc/PID/root/tmp/...` by
        // path, following a symlink out of the process's root or waiting on
        // a FIFO forever; `crate::perfmap` reads it safely.
        let cache = Cache::from(cache::Process {
            cache_vmas: true,
            cache_perf_map: false,
            ..cache::Process::new(Pid::Pid(pid))
        });
        if let Err(error) = self.shared.symbolizer.borrow().cache(&cache) {
            log::debug!("caching memory maps of {}: {error}", self.pid);
        }
    }

    /// Drops what the shared symbolizer cached for this process (its memory
    /// map, the files opened through `/proc/PID/map_files`), once the
    /// process is gone and its stacks are symbolized.
    pub fn release(self) {
        let Some(pid) = NonZeroU32::new(self.pid) else {
            return;
        };
        let mut symbolizer = self.shared.symbolizer.borrow_mut();
        let process = Evict::Process(evict::Process::new(Pid::Pid(pid)));
        if let Err(error) = symbolizer.evict(&process) {
            log::debug!("evicting process {pid}: {error}");
        }
        for mapping in &self.mappings {
            if matches!(mapping.backing, Backing::File(_)) {
                let path = format!(
                    "/proc/{pid}/map_files/{:x}-{:x}",
                    mapping.start, mapping.end
                );
                let _ = symbolizer.evict(&Evict::Elf(evict::Elf::new(path)));
            }
        }
    }

    /// The target's file-backed mappings, as last read.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Names `frame.address` as `frame` from now on (a frame the caller
    /// made up, such as `--kernel`'s task frames).
    pub fn name_address(&mut self, frame: Frame) {
        self.frames.insert(frame.address, Rc::from([frame]));
    }

    /// From now on, symbolize from cached state only.
    pub fn target_exited(&mut self) {
        self.target_alive = false;
    }

    /// Addresses whose frames are cached.
    pub fn cached_addresses(&self) -> usize {
        self.frames.len()
    }

    /// Drops the cached frames of every address not in `keep` (those of
    /// stacks evicted from the stack table).
    pub fn retain_addresses(&mut self, keep: &HashSet<u64>) {
        self.frames.retain(|address, _| keep.contains(address));
        self.pending.retain(|address| keep.contains(address));
    }

    /// Symbolizes, in one batch, the addresses of a stack seen for the
    /// first time that were not symbolized before.
    pub fn symbolize_new(&mut self, addresses: &[u64]) {
        self.symbolize_unseen(addresses.iter().copied());
    }

    /// Symbolizes, in one batch, the addresses not symbolized before.
    fn symbolize_unseen(&mut self, addresses: impl IntoIterator<Item = u64>) {
        let mut unseen: HashSet<u64> = addresses
            .into_iter()
            .filter(|address| !self.frames.contains_key(address))
            .collect();
        if !unseen.is_empty() && self.maps_read_at.elapsed() >= MAPS_REREAD_PERIOD {
            unseen.extend(self.pending.drain());
        }
        if !unseen.is_empty() {
            // Not preceded by a look at the maps: a target that exits in
            // between would have its good cached view replaced by its empty
            // one. `symbolize` looks again only for addresses outside every
            // known file (new code mapped since, as after a launched
            // command's exec).
            self.symbolize(unseen.into_iter().collect());
        }
    }

    /// The frames of a stack's `addresses` (leaf first), starting at the
    /// first frame that is not an allocator wrapper: past every address in
    /// a wrapper, with what was inlined into it (Rust's `__rdl_alloc` holds
    /// `std`'s `aligned_malloc`), then past inlined frames named like one.
    pub fn frames(&self, addresses: &[u64]) -> Vec<Frame> {
        let by_address: Vec<Vec<Frame>> = addresses
            .iter()
            .map(|address| {
                self.frames
                    .get(address)
                    .map(|frames| frames.to_vec())
                    .unwrap_or_else(|| vec![self.unnamed_frame(*address)])
            })
            .collect();
        let wrapper = |function: &str| match self.kernel {
            Some(_) => is_kernel_allocator(function),
            None => is_allocator_wrapper(function),
        };
        let in_wrapper = |frames: &Vec<Frame>| {
            frames
                .last()
                .and_then(|real| real.function.as_deref())
                .is_some_and(wrapper)
        };
        let first_address = by_address
            .iter()
            .position(|frames| !in_wrapper(frames))
            .unwrap_or(0);
        let frames: Vec<Frame> = by_address
            .into_iter()
            .skip(first_address)
            .flatten()
            .collect();
        let first_meaningful = frames
            .iter()
            .position(|frame| !frame.function.as_deref().is_some_and(wrapper))
            .unwrap_or(0);
        frames[first_meaningful..].to_vec()
    }

    /// Symbolizes `addresses`, once more after re-reading the target's
    /// memory map and perf map for those outside any mapped file: JIT code
    /// is mapped, and named in the perf map, as the runtime compiles it.
    fn symbolize(&mut self, addresses: Vec<u64>) {
        if self.kernel.is_some() {
            self.symbolize_kernel(addresses);
            return;
        }
        let unnamed = self.symbolize_once(addresses);
        let (unnamed_in_files, outside_files): (Vec<u64>, Vec<u64>) =
            unnamed.into_iter().partition(|&address| {
                maps::find(&self.mappings, address)
                    .is_some_and(|mapping| matches!(mapping.backing, Backing::File(_)))
            });
        if !outside_files.is_empty() && self.target_alive {
            let maps_fresh = self.maps_read_at.elapsed() >= MAPS_REREAD_PERIOD;
            let still_unnamed = if maps_fresh {
                self.read_maps();
                self.symbolize_once(outside_files)
            } else {
                outside_files
            };
            // The perf map is looked at either way (a `stat` when it has not
            // changed): a JIT stack is sent once, and the runtime may have
            // named its code since the map was last read.
            self.perf_map.refresh(self.pid);
            self.name_from_perf_map(&still_unnamed);
            if !maps_fresh {
                // Not named now, nor remembered as unnamed: the next re-read
                // of the maps, or a later stack with the address, tries again.
                for address in &still_unnamed {
                    if self
                        .frames
                        .get(address)
                        .is_some_and(|frames| frames[0].function.is_none())
                    {
                        self.frames.remove(address);
                        self.pending.insert(*address);
                    }
                }
            }
        }
        self.symbolize_in_files(&unnamed_in_files);
    }

    /// Names those of `addresses` outside every mapped file that the perf
    /// map covers, as JIT code.
    fn name_from_perf_map(&mut self, addresses: &[u64]) {
        for &address in addresses {
            let in_file = maps::find(&self.mappings, address)
                .is_some_and(|mapping| matches!(mapping.backing, Backing::File(_)));
            if in_file {
                continue;
            }
            // One byte back, into the call (see `symbolize_once`).
            if let Some(function) = self.perf_map.find(address.saturating_sub(1)) {
                let frame = Frame {
                    address,
                    function: Some(function.to_owned()),
                    module: Some(JIT_MODULE.to_owned()),
                    file: None,
                    line: None,
                    inlined: false,
                    offset: None,
                };
                self.frames.insert(address, Rc::from([frame]));
            }
        }
    }

    /// Symbolizes `addresses` from the files mapped there, by file offset:
    /// what is left when the process is gone (it may exit right after its
    /// last allocation, before the tracer has read its stacks) and with it
    /// `/proc/PID/map_files` and `/proc/PID/root`. A file is opened by its
    /// path in alloctrace's own root only while it is still the very file
    /// the process mapped (see [`MappedFile::reopen_by_name`]); any other is
    /// left unnamed.
    fn symbolize_in_files(&mut self, addresses: &[u64]) {
        let mut by_file: HashMap<(PathBuf, FileId), Vec<(u64, u64)>> = HashMap::new();
        for &address in addresses {
            if let Some(mapping) = maps::find(&self.mappings, address)
                && let Backing::File(path) = &mapping.backing
                && let Some(id) = mapping.file_id
            {
                // One byte back, into the call (see `symbolize_once`).
                let offset = address.saturating_sub(1) - mapping.start + mapping.file_offset;
                by_file
                    .entry((path.clone(), id))
                    .or_default()
                    .push((address, offset));
            }
        }
        let shared = Rc::clone(&self.shared);
        let symbolizer = shared.symbolizer.borrow();
        for ((path, id), addresses) in by_file {
            let file = match MappedFile::reopen_by_name(&path, id) {
                Ok(file) => file,
                Err(error) => {
                    log::debug!("not symbolizing in {}: {error}", path.display());
                    continue;
                }
            };
            let gone = GoneSource::new(&shared.debug_files, &file, &path, &addresses);
            match symbolizer.symbolize(&gone.source, gone.input()) {
                Ok(results) => {
                    self.store(&gone.addresses, results);
                }
                Err(error) => log::debug!("symbolizing in {}: {error}", path.display()),
            }
        }
    }

    /// Symbolizes `addresses` into `self.frames` through the process's
    /// `/proc/PID/map_files` (the exact files mapped, even in another mount
    /// namespace); returns those no symbol covered, all of them once the
    /// process is gone (then [`Self::symbolize_in_files`] names what it
    /// safely can). Never by the paths the process's maps name: in a
    /// container those would be opened in alloctrace's root.
    fn symbolize_once(&mut self, addresses: Vec<u64>) -> Vec<u64> {
        let Some(pid) = NonZeroU32::new(self.pid) else {
            return Vec::new();
        };
        if !self.target_alive {
            return addresses;
        }
        // Return addresses point after the call; the call itself is one byte
        // back, which gives the caller's line rather than the next one.
        let lookups: Vec<u64> = addresses.iter().map(|a| a.saturating_sub(1)).collect();
        // Perf maps are read by `crate::perfmap`, which takes every
        // runtime's format (see there).
        // DWARF comes only through the dispatcher (`crate::debuglink`):
        // with debug symbols on, blazesym would look for a file's debug
        // link and `.dwp` by names the target controls.
        let source = Source::Process(Process {
            map_files: true,
            perf_map: false,
            debug_syms: false,
            ..Process::new(Pid::Pid(pid))
        });
        let shared = Rc::clone(&self.shared);
        let symbolizer = shared.symbolizer.borrow();
        match symbolizer.symbolize(&source, Input::AbsAddr(&lookups)) {
            Ok(results) => self.store(&addresses, results),
            Err(error) => {
                log::debug!("symbolizing {} addresses: {error}", lookups.len());
                addresses
            }
        }
    }

    /// Symbolizes kernel `addresses` into `self.frames`.
    fn symbolize_kernel(&mut self, addresses: Vec<u64>) {
        // Return addresses, one byte back into the call (see
        // `symbolize_once`); the leaf is the tracepoint's own site, for
        // which one byte back is still the same function.
        let lookups: Vec<u64> = addresses.iter().map(|a| a.saturating_sub(1)).collect();
        let source = Source::Kernel(Kernel::default());
        let shared = Rc::clone(&self.shared);
        let symbolizer = shared.symbolizer.borrow();
        match symbolizer.symbolize(&source, Input::AbsAddr(&lookups)) {
            Ok(results) => {
                self.store(&addresses, results);
            }
            Err(error) => log::debug!("symbolizing {} kernel addresses: {error}", lookups.len()),
        }
    }

    /// Keeps the frames of each of `addresses` that `results` names (and an
    /// unnamed frame for the others, until they are); returns the others.
    fn store(&mut self, addresses: &[u64], results: Vec<Symbolized<'_>>) -> Vec<u64> {
        let mut named = Vec::with_capacity(addresses.len());
        let mut unnamed = Vec::new();
        for (address, result) in addresses.iter().zip(results) {
            let frames: Rc<[Frame]> = match result {
                Symbolized::Sym(sym) => {
                    let module = Some(self.module_name(*address, sym.module.as_deref()));
                    // Kernel frames say where in the function: the lookup
                    // was one byte back.
                    let offset = self.kernel.as_ref().map(|_| sym.offset as u64 + 1);
                    let frame = |function: &str,
                                 code: Option<&blazesym::symbolize::CodeInfo>,
                                 inlined| Frame {
                        address: *address,
                        function: Some(function.to_owned()),
                        module: module.clone(),
                        file: code.map(|code| code.to_path().display().to_string()),
                        line: code.and_then(|code| code.line),
                        inlined,
                        offset: offset.filter(|_| !inlined),
                    };
                    // blazesym lists inlined calls outermost first; frames
                    // are leaf first.
                    sym.inlined
                        .iter()
                        .rev()
                        .map(|inlined| frame(&inlined.name, inlined.code_info.as_ref(), true))
                        .chain([frame(&sym.name, sym.code_info.as_deref(), false)])
                        .collect()
                }
                Symbolized::Unknown(_) => {
                    unnamed.push(*address);
                    Rc::from([self.unnamed_frame(*address)])
                }
            };
            named.push((*address, frames));
        }
        self.frames.extend(named);
        unnamed
    }

    /// The module of a symbolized address: the file mapped there as the
    /// target names it (not the debug file its symbols may have come from);
    /// a symbol that comes without either is taken for JIT code.
    fn module_name(&self, address: u64, symbolized_in: Option<&std::ffi::OsStr>) -> String {
        if let Some(modules) = &self.kernel {
            return modules.module_of(address).to_owned();
        }
        match maps::find(&self.mappings, address).map(|mapping| &mapping.backing) {
            Some(Backing::File(path)) => path.display().to_string(),
            _ => symbolized_in.map_or_else(
                || JIT_MODULE.to_owned(),
                |module| module.to_string_lossy().into_owned(),
            ),
        }
    }

    /// A frame for an address no symbol covers: module and offset if mapped.
    fn unnamed_frame(&self, address: u64) -> Frame {
        let module = match &self.kernel {
            Some(modules) => Some(modules.module_of(address).to_owned()),
            None => maps::find(&self.mappings, address).map(|mapping| mapping.describe(address)),
        };
        Frame {
            address,
            function: None,
            module,
            file: None,
            line: None,
            inlined: false,
            offset: None,
        }
    }
}

/// What names a gone process's addresses in one of its files.
struct GoneSource {
    source: Source<'static>,
    /// The addresses it can name, and their offsets in it.
    addresses: Vec<u64>,
    offsets: Offsets,
    /// The debug file `source` reads, held open while it does.
    _debug_file: Option<MappedFile>,
}

/// Offsets to symbolize: in the mapped file, or in its debug file.
enum Offsets {
    File(Vec<u64>),
    Virtual(Vec<u64>),
}

impl GoneSource {
    /// The source naming `binary` (a gone process's file, mapped as
    /// `name`) as [`DebugFiles::for_gone_process`] chooses, for `addresses`
    /// (with their offsets in `binary`).
    fn new(
        debug_files: &DebugFiles,
        binary: &MappedFile,
        name: &Path,
        addresses: &[(u64, u64)],
    ) -> Self {
        let elf = |path: &Path, debug_syms| {
            Source::Elf(Elf {
                debug_syms,
                ..Elf::new(path)
            })
        };
        let file_offsets: Vec<u64> = addresses.iter().map(|&(_, offset)| offset).collect();
        let (path, debug_syms) = match debug_files.for_gone_process(binary, name) {
            DebugInfo::Own => (binary.path(), true),
            DebugInfo::SymbolsOnly => (binary.path(), false),
            DebugInfo::Separate { file, dwarf } => {
                let (addresses, offsets) = addresses
                    .iter()
                    .zip(debuglink::virtual_offsets(binary, &file_offsets))
                    .filter_map(|(&(address, _), offset)| Some((address, offset?)))
                    .unzip();
                return Self {
                    source: elf(file.path(), dwarf),
                    addresses,
                    offsets: Offsets::Virtual(offsets),
                    _debug_file: Some(file),
                };
            }
        };
        Self {
            source: elf(path, debug_syms),
            addresses: addresses.iter().map(|&(address, _)| address).collect(),
            offsets: Offsets::File(file_offsets),
            _debug_file: None,
        }
    }

    fn input(&self) -> Input<&[u64]> {
        match &self.offsets {
            Offsets::File(offsets) => Input::FileOffset(offsets),
            Offsets::Virtual(offsets) => Input::VirtOffset(offsets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_frame(address: u64, function: &str, offset: u64) -> Frame {
        Frame {
            address,
            function: Some(function.to_owned()),
            module: Some("[kernel]".to_owned()),
            file: None,
            line: None,
            inlined: false,
            offset: Some(offset),
        }
    }

    #[test]
    fn kernel_stacks_start_below_the_allocator_and_show_offsets() {
        let mut symbols = ProcessSymbolizer::kernel(SharedSymbols::new());
        symbols.name_address(kernel_frame(1, "kmem_cache_alloc_lru_noprof", 0x397));
        symbols.name_address(kernel_frame(2, "sock_alloc_inode", 0x1e));
        symbols.name_address(kernel_frame(3, "__sys_socket", 0x92));
        let frames = symbols.frames(&[1, 2, 3]);
        let names: Vec<String> = frames.iter().map(Frame::display_name).collect();
        assert_eq!(names, ["sock_alloc_inode+0x1e", "__sys_socket+0x92"]);
        // The label, which folded stacks use, has no offset.
        assert_eq!(frames[0].label(), "sock_alloc_inode");
    }

    #[test]
    fn user_stacks_keep_kernel_named_functions() {
        let mut symbols = ProcessSymbolizer::new(0);
        symbols.name_address(kernel_frame(1, "kmem_cache_alloc_lru_noprof", 0));
        assert_eq!(symbols.frames(&[1]).len(), 1);
    }
}
