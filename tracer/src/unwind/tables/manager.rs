//! Keeps the kernel unwinder's maps in line with the traced processes: each
//! executable file's table, loaded once however many processes map it, and
//! each process's sorted list of executable mappings.
//!
//! [`KernelTables`] does the work and owns the maps; [`TableLoader`] runs it
//! on a thread of its own behind a small API (`load_process`,
//! `refresh_process`, `forget_process`, `stats`), so that the ring-reading
//! thread can ask for a refresh (a stack met code in no listed mapping: a
//! library `dlopen`ed since) without waiting for a table to compile.
//!
//! Memory is bounded by the rows map's size (the cap, set at load time):
//! when a new file's table does not fit, tables no process uses any more are
//! evicted; if it still does not fit, the file falls back to frame pointers,
//! counted, with one warning. The rows and mappings arrays are memory-mapped
//! (`BPF_F_MMAPABLE`), so loading a table is a copy, not a syscall per row.
//! A process's new mapping list is written to free slots before its entry
//! points at it, so the probe never sees a half-written list.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{Array as BpfArray, HashMap as BpfHashMap, Map, MapData};
use memmap2::{MmapMut, MmapOptions};
use object::Object as _;
use serde::Serialize;
use tracer_ebpf::{
    Event, EventKind, INLINE_STACK_PARTIAL,
    dwarf::{MAX_PROCESS_MAPPINGS, ProcessMapping, UnwindRow},
};

use super::compile::{self, CompileError, Fallbacks};
use crate::{
    maps::{self, Backing, Mapping},
    unwind::{
        keeps_frame_pointers,
        segments::{LoadSegment, load_bias, load_segments},
    },
};

/// Which processes get tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Every process (`--unwind dwarf`).
    Always,
    /// Processes whose executable does not keep frame pointers
    /// (`--unwind auto`); the others keep the cheaper frame-pointer walk.
    WithoutFramePointers,
}

/// What the tables cost and where they fell back, for `--verbose` and the
/// report's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// Files whose table is loaded.
    pub files: u64,
    pub rows: u64,
    /// Kernel memory in use by those rows, their bucket indexes and the
    /// processes' mapping lists.
    pub kernel_bytes: u64,
    /// Of which the bucket indexes (see [`compile::BucketIndex`]).
    pub index_bytes: u64,
    /// The rows map's size: the cap.
    pub kernel_cap_bytes: u64,
    /// Userspace bookkeeping (files, processes, free lists), estimated.
    pub user_bytes: u64,
    /// Processes unwound with tables.
    pub processes: u64,
    /// Files without CFI (`.eh_frame`/`.debug_frame`) or not readable as
    /// x86_64 ELF: unwound through frame pointers.
    pub files_without_cfi: u64,
    /// Files that could not be opened (gone, replaced, not permitted).
    pub files_unreadable: u64,
    /// Files that did not fit under the cap.
    pub files_over_cap: u64,
    /// Processes with more executable mappings than the kernel searches:
    /// the extra ones fall back to frame pointers.
    pub processes_truncated: u64,
    /// Rows of the loaded tables that fall back to the frame pointer, by reason.
    pub fallback_rows: Fallbacks,
}

/// A file as the kernel names it, plus what changes when it is replaced in
/// place.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

enum FileTable {
    Loaded {
        /// Where its index and rows are (`start`, `end` and `bias` unset):
        /// one run of the rows map from `first_bucket`, the index first.
        place: ProcessMapping,
        /// Slots of the run: the index's, then the rows'.
        slots: u32,
        segments: Vec<LoadSegment>,
        /// Processes whose list points at the rows.
        users: u32,
        last_used: u64,
    },
    /// No table (counted once in the stats): frame pointers.
    None,
}

struct ProcessState {
    /// Its run of the mappings array.
    run: (u32, u32),
    files: Vec<FileKey>,
    /// What the list was built from, to tell when it changed.
    source: Vec<(u64, u64, Option<FileKey>)>,
}

/// Owns the kernel unwinder's maps; see the module doc.
pub struct KernelTables {
    policy: Policy,
    rows: MappedArray<UnwindRow>,
    mappings: MappedArray<ProcessMapping>,
    /// `tgid -> tracer_ebpf::dwarf::ProcessTable`, as its three fields.
    processes: BpfHashMap<MapData, u32, [u32; 3]>,
    /// The last generation given to a process's list (see
    /// `tracer_ebpf::dwarf::ProcessTable::generation`), published in
    /// `generation_map` after every change to `processes`.
    generation: u32,
    generation_map: BpfArray<MapData, u32>,
    files: HashMap<FileKey, FileTable>,
    live: HashMap<u32, ProcessState>,
    /// Whether each executable keeps frame pointers, by file (`auto`).
    frame_pointers: HashMap<FileKey, bool>,
    stats: TableStats,
    tick: u64,
    warned_cap: bool,
}

impl KernelTables {
    /// Takes over the kernel unwinder's maps (`tracer_ebpf::dwarf`): rows,
    /// mappings, processes and generation.
    pub fn new(maps: [Map; 4], policy: Policy) -> anyhow::Result<Self> {
        let [rows, mappings, processes, generation] = maps;
        let rows = MappedArray::new(rows, "rows")?;
        let mappings = MappedArray::new(mappings, "mappings")?;
        let processes = BpfHashMap::try_from(processes)?;
        let generation_map = BpfArray::try_from(generation)?;
        let stats = TableStats {
            kernel_cap_bytes: rows.capacity as u64 * size_of::<UnwindRow>() as u64,
            ..TableStats::default()
        };
        Ok(Self {
            policy,
            rows,
            mappings,
            processes,
            files: HashMap::new(),
            live: HashMap::new(),
            frame_pointers: HashMap::new(),
            generation: 0,
            generation_map,
            stats,
            tick: 0,
            warned_cap: false,
        })
    }

    /// Gives process `pid` tables for every executable mapping it has now
    /// (if the policy wants it unwound with tables), or brings its list up
    /// to date; `false` when it gets none (frame pointers).
    pub fn load_process(&mut self, pid: u32) -> bool {
        let Some(current) = maps::read(pid) else {
            self.forget_process(pid);
            return false;
        };
        let executable: Vec<Mapping> = current.into_iter().filter(|m| m.executable).collect();
        if !self.live.contains_key(&pid) && !self.wants(pid) {
            return false;
        }
        let source: Vec<_> = executable
            .iter()
            .map(|mapping| (mapping.start, mapping.end, file_key(pid, mapping)))
            .collect();
        if self
            .live
            .get(&pid)
            .is_some_and(|state| state.source == source)
        {
            return true;
        }
        self.tick += 1;
        let mut list = Vec::with_capacity(executable.len());
        let mut files = Vec::new();
        for (mapping, &(_, _, key)) in executable.iter().zip(&source) {
            let mut entry = ProcessMapping {
                start: mapping.start,
                end: mapping.end,
                ..ProcessMapping::default()
            };
            if let Some(key) = key
                && let Some((place, bias)) = self.file_rows(pid, mapping, key)
            {
                entry = ProcessMapping { bias, ..place };
                entry.start = mapping.start;
                entry.end = mapping.end;
                files.push(key);
            }
            list.push(entry);
        }
        if list.len() > MAX_PROCESS_MAPPINGS as usize {
            list.truncate(MAX_PROCESS_MAPPINGS as usize);
            self.stats.processes_truncated += 1;
        }
        let Some(first) = self.mappings.allocate(list.len().max(1) as u32) else {
            log::warn!("alloctrace: unwind mapping slots full; pid {pid} keeps frame pointers");
            return false;
        };
        self.mappings.write(first, &list);
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        let entry = [first, list.len() as u32, self.generation];
        if let Err(error) = self.processes.insert(pid, entry, 0) {
            log::debug!("unwind tables of pid {pid}: {error}");
            self.mappings.free(first, list.len().max(1) as u32);
            return false;
        }
        self.publish_generation();
        for key in &files {
            if let Some(FileTable::Loaded { users, .. }) = self.files.get_mut(key) {
                *users += 1;
            }
        }
        let state = ProcessState {
            run: (first, list.len().max(1) as u32),
            files,
            source,
        };
        if let Some(old) = self.live.insert(pid, state) {
            self.release(old);
        }
        self.update_stats();
        true
    }

    /// Process `pid` is gone (or no longer traced): its list is dropped, and
    /// its files' tables become evictable once no process uses them.
    pub fn forget_process(&mut self, pid: u32) {
        if self.processes.remove(&pid).is_ok() {
            self.generation = self.generation.checked_add(1).unwrap_or(1);
            self.publish_generation();
        }
        if let Some(old) = self.live.remove(&pid) {
            self.release(old);
        }
        self.update_stats();
    }

    /// Tells the probes that `processes` changed: each CPU's copy of the
    /// last process's entry is looked up again (before a process's old list
    /// is freed: a walk that began before still reads it, as it would
    /// without the copy).
    fn publish_generation(&mut self) {
        if let Err(error) = self.generation_map.set(0, self.generation, 0) {
            log::debug!("unwind generation: {error}");
        }
    }

    pub fn is_loaded(&self, pid: u32) -> bool {
        self.live.contains_key(&pid)
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    fn release(&mut self, old: ProcessState) {
        self.mappings.free(old.run.0, old.run.1);
        for key in old.files {
            if let Some(FileTable::Loaded { users, .. }) = self.files.get_mut(&key) {
                *users = users.saturating_sub(1);
            }
        }
    }

    /// Whether the policy gives `pid` tables.
    fn wants(&mut self, pid: u32) -> bool {
        match self.policy {
            Policy::Always => true,
            Policy::WithoutFramePointers => {
                let exe = format!("/proc/{pid}/exe");
                let Ok(metadata) = std::fs::metadata(&exe) else {
                    return false;
                };
                let key = FileKey::of(&metadata);
                let keeps = *self
                    .frame_pointers
                    .entry(key)
                    .or_insert_with(|| keeps_frame_pointers(exe.as_ref()));
                !keeps
            }
        }
    }

    /// Where the table of the file behind `mapping` is (loading it if
    /// needed) and the mapping's bias; `None` if the file has no table.
    fn file_rows(
        &mut self,
        pid: u32,
        mapping: &Mapping,
        key: FileKey,
    ) -> Option<(ProcessMapping, u64)> {
        if !self.files.contains_key(&key) {
            let table = self.load_file(pid, mapping, key);
            self.files.insert(key, table);
        }
        let tick = self.tick;
        match self.files.get_mut(&key)? {
            FileTable::Loaded {
                place,
                segments,
                last_used,
                ..
            } => {
                *last_used = tick;
                let bias = load_bias(segments, mapping)?;
                Some((*place, bias))
            }
            FileTable::None => None,
        }
    }

    fn load_file(&mut self, pid: u32, mapping: &Mapping, key: FileKey) -> FileTable {
        let name = mapping.name();
        let file = match open_mapped(pid, mapping) {
            Ok(file) => file,
            Err(error) => {
                log::debug!("unwind table of {name}: {error:#}");
                self.stats.files_unreadable += 1;
                return FileTable::None;
            }
        };
        // The file must still be the one the process maps.
        if file.metadata().map(|m| FileKey::of(&m)).ok() != Some(key) {
            self.stats.files_unreadable += 1;
            return FileTable::None;
        }
        // SAFETY: mapped read-only and only read while compiling; a file
        // truncated meanwhile would fault, which is why only files the
        // process maps (so cannot be truncated under it without faulting it
        // too) are read.
        let Ok(data) = (unsafe { memmap2::Mmap::map(&file) }) else {
            self.stats.files_unreadable += 1;
            return FileTable::None;
        };
        let debug = separate_debug(&data);
        let table = match compile::compile(&data, debug.as_deref()) {
            Ok(table) => table,
            Err(error) => {
                log::debug!("unwind table of {name}: {error}");
                match error {
                    CompileError::NoCfi | CompileError::NotElf(_) => {
                        self.stats.files_without_cfi += 1
                    }
                    CompileError::AddressTooHigh => self.stats.files_without_cfi += 1,
                }
                return FileTable::None;
            }
        };
        if table.rows.is_empty() {
            self.stats.files_without_cfi += 1;
            return FileTable::None;
        }
        let count = table.rows.len() as u32;
        let index_slots = table.index.slots() as u32;
        let slots = index_slots + count;
        let Some(first_slot) = self.allocate_rows(slots) else {
            self.stats.files_over_cap += 1;
            if !std::mem::replace(&mut self.warned_cap, true) {
                log::warn!(
                    "alloctrace: unwind tables reached their cap ({} MiB, --unwind-table-memory); \
                     further files fall back to frame pointers",
                    self.stats.kernel_cap_bytes >> 20
                );
            }
            return FileTable::None;
        };
        let index = &table.index;
        let place = ProcessMapping {
            first_row: first_slot + index_slots,
            row_count: count,
            first_bucket: first_slot,
            bucket_count: index.buckets.len() as u32,
            index_base: index.base,
            bucket_shift: index.shift,
            ..ProcessMapping::default()
        };
        self.rows.write_as(first_slot, &index.to_slots());
        self.rows.write(place.first_row, &table.rows);
        self.stats.fallback_rows.add(&table.fallbacks);
        log::debug!(
            "unwind table of {name}: {count} rows, {} buckets of {} bytes",
            index.buckets.len(),
            1u32 << index.shift
        );
        FileTable::Loaded {
            place,
            slots,
            segments: object::File::parse(&*data)
                .map(|elf| load_segments(&elf))
                .unwrap_or_default(),
            users: 0,
            last_used: self.tick,
        }
    }

    /// Rows for a new table, evicting tables no process uses (least
    /// recently used first) until they fit. Tables of the list being built
    /// have no users yet but are not evictable: the list points at them.
    fn allocate_rows(&mut self, count: u32) -> Option<u32> {
        loop {
            if let Some(first) = self.rows.allocate(count) {
                return Some(first);
            }
            let tick = self.tick;
            let victim = self
                .files
                .iter()
                .filter_map(|(key, table)| match table {
                    FileTable::Loaded {
                        users: 0,
                        last_used,
                        ..
                    } if *last_used < tick => Some((*last_used, *key)),
                    _ => None,
                })
                .min()?
                .1;
            if let Some(FileTable::Loaded { place, slots, .. }) = self.files.remove(&victim) {
                self.rows.free(place.first_bucket, slots);
            }
        }
    }

    fn update_stats(&mut self) {
        let (mut files, mut rows, mut slots) = (0, 0, 0);
        for table in self.files.values() {
            if let FileTable::Loaded {
                place, slots: run, ..
            } = table
            {
                files += 1;
                rows += u64::from(place.row_count);
                slots += u64::from(*run);
            }
        }
        let mapping_slots: u64 = self.live.values().map(|p| u64::from(p.run.1)).sum();
        let slot_bytes = size_of::<UnwindRow>() as u64;
        self.stats.files = files;
        self.stats.rows = rows;
        self.stats.index_bytes = (slots - rows) * slot_bytes;
        self.stats.processes = self.live.len() as u64;
        self.stats.kernel_bytes = slots * slot_bytes
            + mapping_slots * size_of::<ProcessMapping>() as u64
            + self.live.len() as u64 * 16;
        self.stats.user_bytes = (self.files.len() * (size_of::<FileKey>() + 96)
            + self
                .live
                .values()
                .map(|p| 64 + p.source.len() * 40)
                .sum::<usize>()
            + self.frame_pointers.len() * 48) as u64;
    }
}

impl TableStats {
    /// Logs the tables' memory and fallbacks (`--verbose`).
    pub fn log(&self) {
        let fallbacks = &self.fallback_rows;
        log::debug!(
            "unwind tables: {} files, {} rows, {} KiB kernel memory (of which {} KiB of row \
             index; cap {} MiB) + {} KiB userspace, {} processes; files without CFI {}, unreadable {}, over the cap {}; \
             frame-pointer rows: CFA expression {}, CFA register {}, CFA offset {}, rbp rule {}, \
             return address rule {}, corrupt entries {}",
            self.files,
            self.rows,
            self.kernel_bytes >> 10,
            self.index_bytes >> 10,
            self.kernel_cap_bytes >> 20,
            self.user_bytes >> 10,
            self.processes,
            self.files_without_cfi,
            self.files_unreadable,
            self.files_over_cap,
            fallbacks.cfa_expression,
            fallbacks.cfa_register,
            fallbacks.cfa_offset,
            fallbacks.rbp_rule,
            fallbacks.ra_rule,
            fallbacks.corrupt_entries,
        );
    }
}

impl FileKey {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        }
    }
}

/// The identity of the file behind an executable mapping, read through
/// `map_files` (the exact file mapped, in any mount namespace); `None` for
/// anonymous and special mappings.
fn file_key(pid: u32, mapping: &Mapping) -> Option<FileKey> {
    let Backing::File(_) = mapping.backing else {
        return None;
    };
    let path = map_file(pid, mapping);
    std::fs::metadata(path).ok().map(|m| FileKey::of(&m))
}

fn map_file(pid: u32, mapping: &Mapping) -> String {
    format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    )
}

/// The mapped file itself. Only through `map_files`: a path the process
/// names could be swapped for another file (or a FIFO) by the process.
fn open_mapped(pid: u32, mapping: &Mapping) -> anyhow::Result<File> {
    let file = File::open(map_file(pid, mapping))
        .with_context(|| format!("opening {}", mapping.name()))?;
    if !file.metadata()?.is_file() {
        return Err(anyhow!("{} is not a regular file", mapping.name()));
    }
    Ok(file)
}

/// The separate debug file's bytes, for a file with no CFI of its own.
fn separate_debug(data: &[u8]) -> Option<memmap2::Mmap> {
    let elf = object::File::parse(data).ok()?;
    if elf.section_by_name(".eh_frame").is_some() || elf.section_by_name(".debug_frame").is_some() {
        return None;
    }
    let path = crate::debuginfo::debug_file_by_build_id(elf.build_id().ok()??)?;
    let file = File::open(path).ok()?;
    // SAFETY: a root-owned debug file, read-only, only read while compiling.
    unsafe { memmap2::Mmap::map(&file) }.ok()
}

/// A memory-mapped `BPF_F_MMAPABLE` array map with a first-fit allocator of
/// its slots.
struct MappedArray<T> {
    memory: MmapMut,
    capacity: u32,
    /// Free runs `(start, len)`, sorted, never adjacent.
    free: Vec<(u32, u32)>,
    _map: Map,
    _type: std::marker::PhantomData<T>,
}

impl<T: Copy> MappedArray<T> {
    fn new(map: Map, what: &str) -> anyhow::Result<Self> {
        let Map::Array(data) = &map else {
            return Err(anyhow!("the unwind {what} map is not an array"));
        };
        let info = data.info().context("reading the unwind map's info")?;
        let capacity = info.max_entries();
        let bytes = (capacity as usize * size_of::<T>()).next_multiple_of(4096);
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: the map is an mmapable array of `capacity` values of `T`
        // (the kernel refuses a mapping past its end); only this type
        // writes through the mapping, and the kernel reads plain data.
        let memory = unsafe { MmapOptions::new().len(bytes).map_mut(fd) }
            .with_context(|| format!("mapping the unwind {what} map"))?;
        Ok(Self {
            memory,
            capacity,
            free: vec![(0, capacity)],
            _map: map,
            _type: std::marker::PhantomData,
        })
    }

    fn allocate(&mut self, len: u32) -> Option<u32> {
        allocate_run(&mut self.free, len)
    }

    fn free(&mut self, start: u32, len: u32) {
        free_run(&mut self.free, start, len);
    }

    fn write(&mut self, first: u32, values: &[T]) {
        self.write_as(first, values);
    }

    /// Writes `values` of another plain type of `T`'s size (the bucket
    /// index's pairs into the rows map) into slots from `first`.
    fn write_as<U: Copy>(&mut self, first: u32, values: &[U]) {
        const { assert!(size_of::<U>() == size_of::<T>()) };
        let start = first as usize * size_of::<T>();
        let end = start + std::mem::size_of_val(values);
        let destination = &mut self.memory[start..end];
        // SAFETY: `U` is plain `#[repr(C)]` data (or an array of integers),
        // copied byte for byte into slots allocated for it.
        let source =
            unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), end - start) };
        destination.copy_from_slice(source);
    }
}

/// First fit in `free` (sorted runs `(start, len)`).
fn allocate_run(free: &mut Vec<(u32, u32)>, len: u32) -> Option<u32> {
    let index = free.iter().position(|&(_, run)| run >= len)?;
    let (start, run) = free[index];
    if run == len {
        free.remove(index);
    } else {
        free[index] = (start + len, run - len);
    }
    Some(start)
}

/// Returns a run to `free`, merged with its neighbours.
fn free_run(free: &mut Vec<(u32, u32)>, start: u32, len: u32) {
    let index = free.partition_point(|&(s, _)| s < start);
    free.insert(index, (start, len));
    if index + 1 < free.len() && start + len == free[index + 1].0 {
        free[index].1 += free.remove(index + 1).1;
    }
    if index > 0 && free[index - 1].0 + free[index - 1].1 == start {
        free[index - 1].1 += free.remove(index).1;
    }
}

enum Request {
    /// Load, and say whether the process got tables, if asked.
    Load(u32, Option<mpsc::SyncSender<bool>>),
    /// Load when nothing else waits (processes found running at the start).
    Background(u32),
    Refresh(u32),
    Forget(u32),
}

/// The table thread's state.
struct Worker {
    tables: KernelTables,
    /// When each process's list was last rebuilt on request.
    refreshed: HashMap<u32, Instant>,
    /// Background loads not done yet, oldest first.
    background: VecDeque<u32>,
    /// When the first of the background loads pending was asked for.
    background_since: Option<Instant>,
}

impl Worker {
    /// The next request to handle: any sent one before a background load,
    /// so that a process just seen is not stuck behind a host's worth of
    /// tables. `None` once every handle is gone.
    fn next(&mut self, receiver: &mpsc::Receiver<Request>) -> Option<Request> {
        loop {
            let request = if self.background.is_empty() {
                receiver.recv().ok()?
            } else {
                match receiver.try_recv() {
                    Ok(request) => request,
                    Err(mpsc::TryRecvError::Empty) => {
                        return self
                            .background
                            .pop_front()
                            .map(|pid| Request::Load(pid, None));
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return None,
                }
            };
            match request {
                Request::Background(pid) => self.queue_background(pid),
                request => return Some(request),
            }
        }
    }

    fn queue_background(&mut self, pid: u32) {
        self.background_since.get_or_insert_with(Instant::now);
        self.background.push_back(pid);
    }

    /// `--verbose`: once the background loads are done, how long they took
    /// and what the tables hold then.
    fn log_background_done(&mut self) {
        if self.background.is_empty()
            && let Some(since) = self.background_since.take()
        {
            log::debug!(
                "unwind tables of the processes found running: done in the background after {:.1}s",
                since.elapsed().as_secs_f64()
            );
            self.tables.stats().log();
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Load(pid, done) => {
                let loaded = self.tables.load_process(pid);
                if let Some(done) = done {
                    let _ = done.send(loaded);
                }
            }
            Request::Background(pid) => self.queue_background(pid),
            Request::Refresh(pid) => {
                let now = Instant::now();
                let recent = self
                    .refreshed
                    .get(&pid)
                    .is_some_and(|at| now - *at < REFRESH_PERIOD);
                if !recent && self.tables.is_loaded(pid) {
                    self.refreshed.insert(pid, now);
                    self.tables.load_process(pid);
                }
            }
            Request::Forget(pid) => {
                self.refreshed.remove(&pid);
                self.tables.forget_process(pid);
            }
        }
    }
}

/// [`KernelTables`] on a thread of its own; cheap to clone, `Send`.
#[derive(Clone)]
pub struct TableLoader {
    requests: mpsc::Sender<Request>,
    stats: Arc<Mutex<TableStats>>,
    /// Processes this handle has asked tables for (see [`TableLoader::observe`]).
    seen: HashSet<u32>,
}

/// A process's list is rebuilt at most this often on request: a stack
/// through code in no listed mapping is re-sent on every allocation until
/// the list covers it.
const REFRESH_PERIOD: Duration = Duration::from_millis(20);

impl TableLoader {
    /// Starts the loader over the kernel unwinder's maps (see
    /// [`KernelTables::new`]).
    pub fn spawn(maps: [Map; 4], policy: Policy) -> anyhow::Result<Self> {
        let tables = KernelTables::new(maps, policy)?;
        let (requests, receiver) = mpsc::channel();
        let stats = Arc::new(Mutex::new(tables.stats()));
        let shared = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("unwind-tables".into())
            .spawn(move || {
                let mut worker = Worker {
                    tables,
                    refreshed: HashMap::new(),
                    background: VecDeque::new(),
                    background_since: None,
                };
                while let Some(request) = worker.next(&receiver) {
                    worker.handle(request);
                    worker.log_background_done();
                    *shared.lock().unwrap_or_else(|e| e.into_inner()) = worker.tables.stats();
                }
            })
            .context("starting the unwind table thread")?;
        Ok(Self {
            requests,
            stats,
            seen: HashSet::new(),
        })
    }

    /// Keeps the tables in step with the event stream, in its order: a
    /// process's first event loads its tables (host-wide mode: processes
    /// started after tracing began), an exec loads the new image's, an exit
    /// drops them, and a stack walked through unlisted code (see
    /// `tracer_ebpf::INLINE_STACK_PARTIAL`) re-reads the process's mappings.
    pub fn observe(&mut self, event: &Event) {
        let pid = event.pid;
        match event.kind() {
            Some(EventKind::Exec) => {
                self.forget_process(pid);
                self.seen.insert(pid);
                self.load_process_later(pid);
            }
            Some(EventKind::ProcessExit) => {
                self.seen.remove(&pid);
                self.forget_process(pid);
            }
            Some(EventKind::Fork) | None => {}
            Some(_) => {
                if self.seen.insert(pid) {
                    self.load_process_later(pid);
                } else if event.stack_id == INLINE_STACK_PARTIAL {
                    self.refresh_process(pid);
                }
            }
        }
    }

    /// Loads `pid`'s tables now (see [`KernelTables::load_process`]).
    pub fn load_process(&mut self, pid: u32) -> bool {
        self.load_process_within(pid, Duration::MAX)
    }

    /// Loads `pid`'s tables, waiting at most `limit` for them: past it they
    /// are loaded all the same, without this caller (a libLLVM of 1.4
    /// million rows takes seconds to compile, more on a busy machine).
    /// Whether they were loaded in time.
    pub fn load_process_within(&mut self, pid: u32, limit: Duration) -> bool {
        self.seen.insert(pid);
        let (done, wait) = mpsc::sync_channel(1);
        if self.requests.send(Request::Load(pid, Some(done))).is_err() {
            return false;
        }
        match Instant::now().checked_add(limit) {
            Some(deadline) => wait
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or(false),
            None => wait.recv().unwrap_or(false),
        }
    }

    /// Loads `pid`'s tables soon, without waiting (a process just seen, or
    /// a new image after `execve`).
    pub fn load_process_later(&self, pid: u32) {
        let _ = self.requests.send(Request::Load(pid, None));
    }

    /// Loads `pid`'s tables when no other request waits.
    pub fn load_process_in_background(&mut self, pid: u32) {
        self.seen.insert(pid);
        let _ = self.requests.send(Request::Background(pid));
    }

    /// Asks for `pid`'s list to be brought up to date, without waiting.
    pub fn refresh_process(&self, pid: u32) {
        let _ = self.requests.send(Request::Refresh(pid));
    }

    pub fn forget_process(&self, pid: u32) {
        let _ = self.requests.send(Request::Forget(pid));
    }

    pub fn stats(&self) -> TableStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_reuses_and_merges_freed_runs() {
        let mut free = vec![(0u32, 100u32)];
        let mut array = FreeList(&mut free);
        let a = array.allocate(10).unwrap();
        let b = array.allocate(20).unwrap();
        let c = array.allocate(70).unwrap();
        assert_eq!((a, b, c), (0, 10, 30));
        assert_eq!(array.allocate(1), None);
        array.free(b, 20);
        array.free(a, 10);
        assert_eq!(array.0, &[(0, 30)]);
        array.free(c, 70);
        assert_eq!(array.0, &[(0, 100)]);
    }

    /// The allocator of [`MappedArray`] without a kernel map.
    struct FreeList<'a>(&'a mut Vec<(u32, u32)>);

    impl FreeList<'_> {
        fn allocate(&mut self, len: u32) -> Option<u32> {
            allocate_run(self.0, len)
        }
        fn free(&mut self, start: u32, len: u32) {
            free_run(self.0, start, len)
        }
    }
}
