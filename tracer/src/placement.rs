//! Probe placement: where in the target's allocator (its libc, a replacement
//! allocator library, or a static executable) each program attaches.
//!
//! A uprobe costs one trap per hit, and what the kernel does at the trap
//! depends on the instruction under it: most instructions must be
//! single-stepped out of line (measured here: 4–9.5 µs per hit for glibc's
//! `free+0`, `test %rdi,%rdi`), while `push`, `jmp` and `call` are emulated
//! (~0.9 µs). So instead of `free+0`, `free` is probed just after its NULL
//! check, on the `push %rbp` at `free+9` in Debian's glibc 2.36 — which also
//! makes `free(NULL)` trap-free.
//!
//! Moving a probe is only safe when proven for the exact libc build, so the
//! prologue is decoded with a real x86-64 disassembler and the moved offset is
//! used only when: the skipped prefix is exactly `test %rdi,%rdi; je <out>`
//! (the argument register is untouched), the offset is an instruction
//! boundary, and no branch in the function lands on it. Otherwise the probe
//! stays at the entry. Allocating functions stay at `+0`: their return probe
//! must trap while `[rsp]` still holds the return address, and their entry
//! program shares that one trap.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, bail};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, Register};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// The kernel program for each traced libc function. Names sharing an
/// address (glibc's `aligned_alloc` is `memalign`) are attached once.
const FUNCTIONS: &[(&str, &str, Returns)] = &[
    ("malloc", "malloc_enter", Returns::Yes),
    ("calloc", "calloc_enter", Returns::Yes),
    ("realloc", "realloc_enter", Returns::Yes),
    ("reallocarray", "reallocarray_enter", Returns::Yes),
    ("posix_memalign", "posix_memalign_enter", Returns::Yes),
    ("aligned_alloc", "memalign_enter", Returns::Yes),
    ("memalign", "memalign_enter", Returns::Yes),
    ("valloc", "valloc_enter", Returns::Yes),
    ("pvalloc", "valloc_enter", Returns::Yes),
    ("free", "free_enter", Returns::No),
];

/// Name of the return program shared by every allocating function.
pub const RETURN_PROGRAM: &str = "alloc_exit";

/// Functions without which tracing is meaningless.
const REQUIRED: &[&str] = &["malloc", "free"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returns {
    Yes,
    No,
}

/// One place to attach an entry program (and maybe the return program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// libc function names at this address.
    pub functions: Vec<&'static str>,
    pub entry_program: &'static str,
    /// File offset of the function's first instruction.
    pub function_offset: u64,
    /// Bytes past the entry where the entry program attaches.
    pub entry_skip: u64,
    pub returns: Returns,
}

impl ProbePoint {
    pub fn entry_offset(&self) -> u64 {
        self.function_offset + self.entry_skip
    }
}

/// Whether the ELF file at `path` defines `malloc` and `free` (in its
/// dynamic or full symbol table), i.e. has an allocator to probe.
pub fn defines_allocator(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(elf) = object::File::parse(&*data) else {
        return false;
    };
    REQUIRED
        .iter()
        .all(|name| matches!(find_function(&elf, name), Ok(Some(_))))
}

/// Where to attach in one allocator object.
#[derive(Clone, Debug)]
pub struct Plan {
    pub points: Vec<ProbePoint>,
    /// Traced function names (aliases included).
    pub function_count: usize,
}

impl Plan {
    pub fn for_object(path: &Path) -> anyhow::Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let elf = object::File::parse(&*data)
            .with_context(|| format!("{} is not an ELF file", path.display()))?;
        if elf.architecture() != object::Architecture::X86_64 {
            bail!("{}: only x86-64 targets are supported", path.display());
        }
        let mut by_address: BTreeMap<u64, ProbePoint> = BTreeMap::new();
        let mut function_count = 0;
        for &(name, program, returns) in FUNCTIONS {
            let Some(function) = find_function(&elf, name)? else {
                if REQUIRED.contains(&name) {
                    bail!("{} has no `{name}` symbol", path.display());
                }
                continue;
            };
            function_count += 1;
            let point = by_address
                .entry(function.address)
                .or_insert_with(|| ProbePoint {
                    functions: Vec::new(),
                    entry_program: program,
                    function_offset: function.file_offset,
                    entry_skip: match returns {
                        Returns::Yes => 0,
                        Returns::No => null_check_skip(function.code, function.address),
                    },
                    returns,
                });
            if point.entry_program != program {
                bail!(
                    "{}: `{name}` shares its address with `{}` but needs another program",
                    path.display(),
                    point.functions[0]
                );
            }
            point.functions.push(name);
        }
        Ok(Self {
            points: by_address.into_values().collect(),
            function_count,
        })
    }
}

struct Function<'data> {
    address: u64,
    file_offset: u64,
    code: &'data [u8],
}

/// The exported function `name`, with its machine code.
fn find_function<'data>(
    elf: &object::File<'data>,
    name: &str,
) -> anyhow::Result<Option<Function<'data>>> {
    let Some(symbol) = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|symbol| symbol.is_definition() && symbol.name() == Ok(name))
    else {
        return Ok(None);
    };
    let section = symbol
        .section_index()
        .and_then(|index| elf.section_by_index(index).ok())
        .with_context(|| format!("`{name}` is not in a section"))?;
    let (section_offset, _) = section
        .file_range()
        .with_context(|| format!("`{name}`'s section has no file data"))?;
    let address = symbol.address();
    let data = section.data()?;
    // A damaged (or hostile) file may put a symbol outside its section.
    let start = address
        .checked_sub(section.address())
        .filter(|&start| start < data.len() as u64)
        .with_context(|| format!("`{name}` lies outside its section"))?;
    let end = start
        .saturating_add(symbol.size().max(1))
        .min(data.len() as u64);
    Ok(Some(Function {
        address,
        file_offset: section_offset
            .checked_add(start)
            .with_context(|| format!("`{name}`'s file offset overflows"))?,
        code: &data[start as usize..end as usize],
    }))
}

/// Bytes to skip at the start of `free`-like code: the length of a leading
/// `test %rdi,%rdi; je <elsewhere>` when that is provably safe, else 0.
fn null_check_skip(code: &[u8], address: u64) -> u64 {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instructions = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return 0;
        }
        instructions.push(instruction);
    }
    let [test, branch, landing, ..] = instructions.as_slice() else {
        return 0;
    };
    let tests_first_argument = test.mnemonic() == Mnemonic::Test
        && test.op0_register() == Register::RDI
        && test.op1_register() == Register::RDI;
    let skips_on_null = branch.mnemonic() == Mnemonic::Je
        && branch.flow_control() == FlowControl::ConditionalBranch
        && !(address..=landing.ip()).contains(&branch.near_branch_target());
    let landing_is_only_reached_by_falling_through = instructions.iter().all(|instruction| {
        !matches!(
            instruction.flow_control(),
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call
        ) || instruction.near_branch_target() != landing.ip()
    });
    if tests_first_argument && skips_on_null && landing_is_only_reached_by_falling_through {
        landing.ip() - address
    } else {
        0
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1000;

    #[test]
    fn skips_glibc_2_36_free_null_check() {
        // test %rdi,%rdi; je +0xbf; push %rbp; lea -0x10(%rdi),%rsi; push %rbx
        let code = [
            0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77, 0xf0,
            0x53,
        ];
        assert_eq!(null_check_skip(&code, BASE), 9);
    }

    #[test]
    fn stays_at_entry_when_the_prologue_is_not_a_null_check() {
        // push %r12; push %rbp; push %rbx (malloc's prologue)
        assert_eq!(null_check_skip(&[0x41, 0x54, 0x55, 0x53], BASE), 0);
        // test %rsi,%rsi; je +5; push %rbp; ...: wrong register
        let code = [
            0x48, 0x85, 0xf6, 0x74, 0x05, 0x55, 0x53, 0x90, 0x90, 0x90, 0xc3,
        ];
        assert_eq!(null_check_skip(&code, BASE), 0);
    }

    #[test]
    fn stays_at_entry_when_a_branch_lands_on_the_moved_offset() {
        // test %rdi,%rdi; je +5 (out); push %rbp; jmp back to the push; ...
        let code = [
            0x48, 0x85, 0xff, 0x74, 0x05, 0x55, 0xeb, 0xfd, 0x90, 0x90, 0xc3,
        ];
        assert_eq!(null_check_skip(&code, BASE), 0);
    }

    #[test]
    fn plans_every_allocator_function_of_this_machines_libc() {
        let libc = crate::target::Target::resolve(std::process::id(), None)
            .expect("resolve self")
            .allocator;
        assert!(defines_allocator(&libc.host_path));
        let plan = Plan::for_object(&libc.host_path).expect("plan");
        let free = plan
            .points
            .iter()
            .find(|point| point.functions.contains(&"free"))
            .expect("free planned");
        assert_eq!(free.returns, Returns::No);
        let malloc = plan
            .points
            .iter()
            .find(|point| point.functions.contains(&"malloc"))
            .expect("malloc planned");
        assert_eq!(malloc.entry_skip, 0);
        // Every name resolves once, and aliases share one point.
        let names: usize = plan.points.iter().map(|point| point.functions.len()).sum();
        assert_eq!(names, plan.function_count);
        assert!(plan.function_count >= 8, "{plan:?}");
    }
}
