//! Compiles one ELF file's call frame information into the kernel's table
//! format: a sorted run of [`UnwindRow`]s, each the rule from its `pc` to the
//! next row's.
//!
//! The CFI comes from `.eh_frame`, else `.debug_frame` (the file's own or
//! that of its separate debug file, see [`super::debug_file`]), read with
//! gimli. Every rule the format cannot express becomes a
//! [`kind::FRAME_POINTER`] row, counted by reason in [`Fallbacks`], so the
//! probe falls back to the frame pointer there instead of computing a wrong
//! frame. Corrupt or truncated input is an error or a skipped entry, never
//! a panic.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, Reader, Register,
    RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use object::{Object as _, ObjectSection as _};
use serde::Serialize;
use tracer_ebpf::dwarf::{
    BUCKET_SEARCH_STEPS, MAX_BUCKET_ROWS, MAX_BUCKET_SHIFT, MIN_BUCKET_SHIFT, UnwindRow, kind,
};

/// Why rows of a table fall back to the frame pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Fallbacks {
    /// CFA given by a DWARF expression (PLT stubs, signal trampolines).
    pub cfa_expression: u64,
    /// CFA based on a register other than rsp and rbp (DRAP stack realignment).
    pub cfa_register: u64,
    /// CFA offset negative or past the row's 16 bits.
    pub cfa_offset: u64,
    /// rbp restored by a rule other than "saved at CFA + 8n".
    pub rbp_rule: u64,
    /// Return address not at CFA - 8.
    pub ra_rule: u64,
    /// Entries gimli could not parse (corrupt or truncated CFI): their
    /// ranges have no rows, so frames there fall back to the frame pointer.
    pub corrupt_entries: u64,
}

impl Fallbacks {
    pub fn add(&mut self, other: &Fallbacks) {
        self.cfa_expression += other.cfa_expression;
        self.cfa_register += other.cfa_register;
        self.cfa_offset += other.cfa_offset;
        self.rbp_rule += other.rbp_rule;
        self.ra_rule += other.ra_rule;
        self.corrupt_entries += other.corrupt_entries;
    }
}

/// A file's compiled table.
#[derive(Debug, Default)]
pub struct Table {
    /// Sorted by `pc`, no two consecutive rows with the same rule.
    pub rows: Vec<UnwindRow>,
    /// Where the probe's search over `rows` starts.
    pub index: BucketIndex,
    pub fallbacks: Fallbacks,
}

/// A table's bucket index (the layout is `tracer_ebpf::dwarf::ProcessMapping`'s):
/// the file's code cut into buckets of `1 << shift` bytes from the first
/// row's address, each naming the last row starting at or before it, so the
/// probe searches at most [`MAX_BUCKET_ROWS`] rows in
/// [`BUCKET_SEARCH_STEPS`] steps instead of the whole table.
///
/// The shift is the coarsest whose buckets all span few enough rows: on
/// Debian's libc, 128-byte buckets (42 KiB of index for 28,271 rows, 221
/// KiB); one in 16 bytes always fits (see `MIN_BUCKET_SHIFT`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketIndex {
    /// The first row's `pc`: where bucket 0 starts.
    pub base: u32,
    pub shift: u32,
    /// Per bucket, the offset in the rows of the last row starting at or
    /// before the bucket's first address.
    pub buckets: Vec<u32>,
}

impl BucketIndex {
    /// The index of `rows` (sorted, distinct `pc`s) with the coarsest
    /// buckets spanning at most [`MAX_BUCKET_ROWS`] rows each.
    pub fn new(rows: &[UnwindRow]) -> Self {
        (MIN_BUCKET_SHIFT..=MAX_BUCKET_SHIFT)
            .rev()
            .find_map(|shift| Self::with_shift(rows, shift))
            .unwrap_or_default()
    }

    /// The index with `1 << shift`-byte buckets, if none spans more than
    /// [`MAX_BUCKET_ROWS`] rows.
    fn with_shift(rows: &[UnwindRow], shift: u32) -> Option<Self> {
        let (first, last) = (rows.first()?.pc, rows.last()?.pc);
        let count = ((last - first) >> shift) as usize + 1;
        let mut buckets = Vec::with_capacity(count);
        // `at` is the last row starting at or before the current bucket,
        // `next` the first row starting after it.
        let (mut at, mut next) = (0, 0);
        for bucket in 0..count as u64 {
            let start = u64::from(first) + (bucket << shift);
            let end = start + (1 << shift);
            while at + 1 < rows.len() && u64::from(rows[at + 1].pc) <= start {
                at += 1;
            }
            next = next.max(at + 1);
            while next < rows.len() && u64::from(rows[next].pc) < end {
                next += 1;
            }
            if next - at > MAX_BUCKET_ROWS as usize {
                return None;
            }
            buckets.push(at as u32);
        }
        Some(Self {
            base: first,
            shift,
            buckets,
        })
    }

    /// Slots of the rows map the index takes: two buckets per 8-byte slot.
    pub fn slots(&self) -> usize {
        self.buckets.len().div_ceil(2)
    }

    /// The index as the kernel reads it, a slot's even bucket in its low half.
    pub fn to_slots(&self) -> Vec<[u32; 2]> {
        self.buckets
            .chunks(2)
            .map(|pair| [pair[0], pair.get(1).copied().unwrap_or(0)])
            .collect()
    }

    /// The row covering ELF address `address`, found as the probe finds it
    /// (a bucket, then [`BUCKET_SEARCH_STEPS`] halvings over at most
    /// [`MAX_BUCKET_ROWS`] rows).
    pub fn find(&self, rows: &[UnwindRow], address: u32) -> Option<usize> {
        let offset = address.checked_sub(self.base)?;
        let bucket = ((offset >> self.shift) as usize).min(self.buckets.len().checked_sub(1)?);
        let mut base = self.buckets[bucket] as usize;
        let mut size = (MAX_BUCKET_ROWS as usize).min(rows.len() - base);
        for _ in 0..BUCKET_SEARCH_STEPS {
            let half = size / 2;
            if rows[base + half].pc <= address {
                base += half;
            }
            size -= half;
        }
        (rows[base].pc <= address).then_some(base)
    }
}

/// Why a file has no table at all (every frame in it falls back to the
/// frame pointer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("not an ELF file this unwinder reads: {0}")]
    NotElf(String),
    #[error("no .eh_frame or .debug_frame")]
    NoCfi,
    #[error("code above 4 GiB (table rows hold 32-bit addresses)")]
    AddressTooHigh,
}

/// Compiles `elf` (the bytes of an ELF file) into its table, taking the CFI
/// from `debug` (a separate debug file's bytes) when `elf` has neither
/// `.eh_frame` nor `.debug_frame`.
pub fn compile(elf: &[u8], debug: Option<&[u8]>) -> Result<Table, CompileError> {
    let file = object::File::parse(elf).map_err(|error| CompileError::NotElf(error.to_string()))?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(CompileError::NotElf(format!("{:?}", file.architecture())));
    }
    let mut fdes = Vec::new();
    let mut fallbacks = Fallbacks::default();
    if let Some((address, data)) = section(&file, ".eh_frame") {
        let mut eh_frame = EhFrame::new(data, LittleEndian);
        eh_frame.set_address_size(8);
        let mut bases = BaseAddresses::default().set_eh_frame(address);
        if let Some((text, _)) = section(&file, ".text") {
            bases = bases.set_text(text);
        }
        if let Some((got, _)) = section(&file, ".got") {
            bases = bases.set_got(got);
        }
        collect(&eh_frame, &bases, &mut fdes, &mut fallbacks);
    } else {
        let debug_file = debug.and_then(|bytes| object::File::parse(bytes).ok());
        let data = section(&file, ".debug_frame")
            .or_else(|| debug_file.as_ref().and_then(|f| section(f, ".debug_frame")))
            .map(|(_, data)| data)
            .ok_or(CompileError::NoCfi)?;
        let mut debug_frame = DebugFrame::new(data, LittleEndian);
        debug_frame.set_address_size(8);
        collect(
            &debug_frame,
            &BaseAddresses::default(),
            &mut fdes,
            &mut fallbacks,
        );
    }
    let rows = flatten(fdes)?;
    let index = BucketIndex::new(&rows);
    Ok(Table {
        rows,
        index,
        fallbacks,
    })
}

fn section<'data>(file: &object::File<'data>, name: &str) -> Option<(u64, &'data [u8])> {
    let section = file.section_by_name(name)?;
    let data = section.data().ok().filter(|data| !data.is_empty())?;
    Some((section.address(), data))
}

/// One FDE's rows: `(start, end, rows)` with the rows' `pc` as `u64` until
/// the table is known to fit in 32 bits.
type FdeRows = (u64, u64, Vec<(u64, UnwindRow)>);

/// Evaluates every FDE of `section` into rows, counting what cannot be
/// expressed or parsed.
fn collect<R: Reader, S: UnwindSection<R>>(
    section: &S,
    bases: &BaseAddresses,
    fdes: &mut Vec<FdeRows>,
    fallbacks: &mut Fallbacks,
) {
    let mut context = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            // A broken length field loses the rest of the section: nothing
            // after it can be found.
            Err(_) => {
                fallbacks.corrupt_entries += 1;
                break;
            }
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            fallbacks.corrupt_entries += 1;
            continue;
        };
        if fde.len() == 0 {
            continue;
        }
        let Ok(mut table) = fde.rows(section, bases, &mut context) else {
            fallbacks.corrupt_entries += 1;
            continue;
        };
        let mut rows = Vec::new();
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    let rule = rule(
                        row.cfa(),
                        row.register(X86_64::RBP),
                        row.register(X86_64::RA),
                    );
                    let rule = rule.unwrap_or_else(|reason| {
                        reason.count(fallbacks);
                        UnwindRow {
                            kind: kind::FRAME_POINTER,
                            ..UnwindRow::default()
                        }
                    });
                    rows.push((row.start_address(), rule));
                }
                Ok(None) => break,
                Err(_) => {
                    // Rows already evaluated are right; the rest of the
                    // function falls back.
                    fallbacks.corrupt_entries += 1;
                    break;
                }
            }
        }
        fdes.push((fde.initial_address(), fde.end_address(), rows));
    }
}

/// Why a row cannot be expressed.
enum Unexpressible {
    CfaExpression,
    CfaRegister,
    CfaOffset,
    RbpRule,
    RaRule,
}

impl Unexpressible {
    fn count(self, fallbacks: &mut Fallbacks) {
        let counter = match self {
            Self::CfaExpression => &mut fallbacks.cfa_expression,
            Self::CfaRegister => &mut fallbacks.cfa_register,
            Self::CfaOffset => &mut fallbacks.cfa_offset,
            Self::RbpRule => &mut fallbacks.rbp_rule,
            Self::RaRule => &mut fallbacks.ra_rule,
        };
        *counter += 1;
    }
}

/// The table row for one CFI row (without its `pc`).
fn rule<T: gimli::ReaderOffset>(
    cfa: &CfaRule<T>,
    rbp: Option<RegisterRule<T>>,
    ra: Option<RegisterRule<T>>,
) -> Result<UnwindRow, Unexpressible> {
    match ra {
        Some(RegisterRule::Undefined) => {
            return Ok(UnwindRow {
                kind: kind::OUTERMOST,
                ..UnwindRow::default()
            });
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Err(Unexpressible::RaRule),
    }
    let (register, offset) = match *cfa {
        CfaRule::RegisterAndOffset { register, offset } => (register, offset),
        CfaRule::Expression(_) => return Err(Unexpressible::CfaExpression),
    };
    let kind = cfa_kind(register).ok_or(Unexpressible::CfaRegister)?;
    let cfa_offset = u16::try_from(offset).map_err(|_| Unexpressible::CfaOffset)?;
    let rbp_slot = match rbp {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => 0,
        Some(RegisterRule::Offset(offset)) if offset % 8 == 0 && offset != 0 => {
            i8::try_from(offset / 8).map_err(|_| Unexpressible::RbpRule)?
        }
        Some(_) => return Err(Unexpressible::RbpRule),
    };
    Ok(UnwindRow {
        pc: 0,
        cfa_offset,
        kind,
        rbp_slot,
    })
}

fn cfa_kind(register: Register) -> Option<u8> {
    match register {
        X86_64::RSP => Some(kind::CFA_RSP),
        X86_64::RBP => Some(kind::CFA_RBP),
        _ => None,
    }
}

/// Sorts the FDEs' rows into one table: a [`kind::FRAME_POINTER`] row where
/// one FDE ends and the next does not start at once (code without CFI),
/// later FDEs winning where two overlap, consecutive equal rules merged.
fn flatten(mut fdes: Vec<FdeRows>) -> Result<Vec<UnwindRow>, CompileError> {
    fdes.sort_by_key(|(start, _, _)| *start);
    let gap = UnwindRow {
        kind: kind::FRAME_POINTER,
        ..UnwindRow::default()
    };
    let mut rows: Vec<(u64, UnwindRow)> = Vec::new();
    for (index, (_, end, fde_rows)) in fdes.iter().enumerate() {
        for &(pc, row) in fde_rows {
            // Overlapping FDEs (rare, from odd linkers): the later rule wins.
            while rows.last().is_some_and(|(last, _)| *last >= pc) {
                rows.pop();
            }
            rows.push((pc, row));
        }
        let next_start = fdes.get(index + 1).map(|(start, _, _)| *start);
        if next_start != Some(*end) && !fde_rows.is_empty() {
            rows.push((*end, gap));
        }
    }
    let mut table: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for (pc, row) in rows {
        let pc = u32::try_from(pc).map_err(|_| CompileError::AddressTooHigh)?;
        if table.last().is_some_and(|last| same_rule(last, &row)) {
            continue;
        }
        table.push(UnwindRow { pc, ..row });
    }
    Ok(table)
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    (a.kind, a.cfa_offset, a.rbp_slot) == (b.kind, b.cfa_offset, b.rbp_slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row covering ELF address `pc`, as the probe finds it.
    fn lookup(rows: &[UnwindRow], pc: u64) -> Option<&UnwindRow> {
        let after = rows.partition_point(|row| u64::from(row.pc) <= pc);
        after.checked_sub(1).map(|index| &rows[index])
    }

    fn libc() -> Vec<u8> {
        let maps = crate::maps::read(std::process::id()).expect("own maps");
        let path = maps
            .iter()
            .find_map(|mapping| match &mapping.backing {
                crate::maps::Backing::File(path) if path.to_string_lossy().contains("/libc.so") => {
                    Some(path.clone())
                }
                _ => None,
            })
            .expect("the test binary maps libc");
        std::fs::read(path).expect("read libc")
    }

    fn symbol_address(elf: &[u8], name: &str) -> u64 {
        use object::ObjectSymbol as _;
        let file = object::File::parse(elf).unwrap();
        file.dynamic_symbols()
            .chain(file.symbols())
            .find(|symbol| symbol.name() == Ok(name))
            .map(|symbol| symbol.address())
            .unwrap_or_else(|| panic!("{name} not found"))
    }

    #[test]
    fn compiles_libc_into_sorted_merged_rows() {
        let table = compile(&libc(), None).expect("libc has .eh_frame");
        assert!(table.rows.len() > 1000, "{} rows", table.rows.len());
        assert!(table.rows.windows(2).all(|pair| pair[0].pc < pair[1].pc));
        assert!(
            table
                .rows
                .windows(2)
                .all(|pair| !same_rule(&pair[0], &pair[1]))
        );
        // A function's first instruction: the CFA is rsp + 8 (only the
        // return address is on the stack) and rbp is untouched.
        let malloc = symbol_address(&libc(), "malloc");
        let row = lookup(&table.rows, malloc).expect("malloc is covered");
        assert_eq!(
            (row.kind, row.cfa_offset, row.rbp_slot),
            (kind::CFA_RSP, 8, 0)
        );
        // glibc's PLT stubs use a CFA expression.
        assert!(table.fallbacks.cfa_expression > 0);
    }

    /// The index finds, for every address of libc's and this binary's
    /// code, the very row a search of the whole table finds, in its few
    /// fixed steps, with buckets as coarse as they can be.
    #[test]
    fn bucket_index_finds_every_row_a_full_search_finds() {
        for elf in [libc(), std::fs::read("/proc/self/exe").unwrap()] {
            let table = compile(&elf, None).unwrap();
            let (rows, index) = (&table.rows, &table.index);
            assert!(index.shift > MIN_BUCKET_SHIFT, "shift {}", index.shift);
            assert!(
                BucketIndex::with_shift(rows, index.shift + 1).is_none(),
                "a coarser index fits"
            );
            let (first, last) = (rows[0].pc, rows.last().unwrap().pc);
            for address in first.saturating_sub(64)..last + 4096 {
                let expected = lookup(rows, u64::from(address)).map(|row| row.pc);
                let found = index.find(rows, address).map(|at| rows[at].pc);
                assert_eq!(found, expected, "address {address:#x}");
            }
        }
    }

    #[test]
    fn the_densest_table_gets_32_byte_buckets() {
        // A row at every byte, the densest table there is: a 32-byte
        // bucket spans the row at its start and the 31 after it, so 32
        // bytes are the coarsest buckets that fit.
        let rows: Vec<UnwindRow> = (0..1000u32)
            .map(|pc| UnwindRow {
                pc: 0x1000 + pc,
                cfa_offset: (8 + pc % 2) as u16,
                ..UnwindRow::default()
            })
            .collect();
        let index = BucketIndex::new(&rows);
        assert_eq!(index.shift, BUCKET_SEARCH_STEPS);
        for address in 0x1000..0x1000 + 1100 {
            assert_eq!(
                index.find(&rows, address),
                Some((address - 0x1000).min(999) as usize)
            );
        }
    }

    #[test]
    fn compiles_this_test_binary() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let table = compile(&exe, None).expect("rust binaries have .eh_frame");
        let here = symbol_address(&exe, "main");
        assert!(lookup(&table.rows, here).is_some());
    }

    #[test]
    fn outermost_frame_stops_the_walk() {
        // `_start`'s CFI marks the return address undefined (glibc's
        // crt1.o), so a PIE executable's table has an outermost row.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let table = compile(&exe, None).unwrap();
        assert!(table.rows.iter().any(|row| row.kind == kind::OUTERMOST));
    }

    #[test]
    fn rejects_files_without_cfi_or_elf() {
        assert!(matches!(
            compile(b"not an elf", None),
            Err(CompileError::NotElf(_))
        ));
        // An ELF header alone: parses as ELF, has no sections.
        let elf = libc();
        assert!(compile(&elf[..64], None).is_err());
    }

    /// Cutting and scribbling over .eh_frame loses rows and counts corrupt
    /// entries, but never panics.
    #[test]
    fn survives_corrupt_and_truncated_cfi() {
        let elf = libc();
        let file = object::File::parse(&*elf).unwrap();
        let eh_frame = file.section_by_name(".eh_frame").unwrap();
        let (offset, size) = eh_frame.file_range().unwrap();
        let (offset, size) = (offset as usize, size as usize);
        drop(file);
        let whole = compile(&elf, None).unwrap().rows.len();
        // Zero the second half of .eh_frame: a zero length ends the section.
        let mut truncated = elf.clone();
        truncated[offset + size / 2..offset + size].fill(0);
        let table = compile(&truncated, None).unwrap();
        assert!(table.rows.len() < whole);
        // Garbage everywhere, with a fixed seed: never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..20 {
            let mut scribbled = elf.clone();
            for _ in 0..(50 * (round + 1)) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = offset + (seed as usize % size);
                scribbled[at] = (seed >> 32) as u8;
            }
            let _ = compile(&scribbled, None);
        }
    }
}
