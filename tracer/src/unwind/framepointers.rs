//! Does an executable keep frame pointers? `--unwind auto` asks this of the
//! target's main executable to choose between the kernel's frame-pointer
//! walk (cheap) and a stack copy unwound with DWARF CFI (works without them).
//!
//! The answer comes from the code itself: the prologues of the file's
//! functions are decoded, and a function keeps a frame pointer when it opens
//! with `push %rbp; mov %rsp,%rbp` (after an optional `endbr64`). Compilers
//! apply the choice to a whole build, so a sample of functions settles it.
//! Two kinds of function say nothing about that choice and are left out:
//! the C runtime's start-up code linked into every program (`_start`,
//! `frame_dummy`...: reserved `_` names and a few others), and functions
//! that call nothing (leaves and tail calls: `return malloc(n)` compiles to
//! a jump), which need no frame even in a frame-pointer build. Without that,
//! a small program built with frame pointers looked like one without.

use std::path::Path;

use anyhow::Context as _;
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Register};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

/// Functions examined at most (in symbol table order).
const SAMPLE: usize = 4000;

/// Functions of one file and how many set up a frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Survey {
    pub functions: usize,
    pub with_frame_pointer: usize,
}

impl Survey {
    /// Frame-pointer walks through this file's code are trustworthy when
    /// most of its functions keep one. A file with no function symbols at
    /// all (stripped) is assumed not to: DWARF works either way.
    pub fn keeps_frame_pointers(&self) -> bool {
        self.functions > 0 && self.with_frame_pointer * 2 > self.functions
    }
}

/// Surveys the function prologues of the ELF file at `path`.
pub fn survey(path: &Path) -> anyhow::Result<Survey> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf = object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    let symbols: Vec<_> = if elf.symbol_table().is_some() {
        elf.symbols().collect()
    } else {
        elf.dynamic_symbols().collect()
    };
    let mut survey = Survey {
        functions: 0,
        with_frame_pointer: 0,
    };
    for symbol in symbols
        .iter()
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.size() >= 8)
        .filter(|symbol| !symbol.name().is_ok_and(is_runtime_support))
        .take(SAMPLE)
    {
        let Some(code) = symbol
            .section_index()
            .and_then(|index| elf.section_by_index(index).ok())
            .and_then(|section| {
                let data = section.data().ok()?;
                let start =
                    usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
                let end = start.checked_add(usize::try_from(symbol.size()).ok()?)?;
                data.get(start..end.min(data.len()))
            })
        else {
            continue;
        };
        if !makes_calls(code) {
            continue;
        }
        survey.functions += 1;
        if opens_frame(code) {
            survey.with_frame_pointer += 1;
        }
    }
    Ok(survey)
}

/// C runtime start-up and tear-down code every program links in.
fn is_runtime_support(name: &str) -> bool {
    name.starts_with('_')
        || matches!(
            name,
            "deregister_tm_clones" | "register_tm_clones" | "frame_dummy"
        )
}

/// Whether the function's code contains a call.
fn makes_calls(code: &[u8]) -> bool {
    let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
    decoder
        .iter()
        .any(|instruction| instruction.flow_control() == FlowControl::Call)
}

/// `[endbr64;] push %rbp; mov %rsp,%rbp`.
fn opens_frame(code: &[u8]) -> bool {
    let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
    let mut instruction = decoder.decode();
    if instruction.code() == Code::Endbr64 {
        instruction = decoder.decode();
    }
    if !(instruction.code() == Code::Push_r64 && instruction.op0_register() == Register::RBP) {
        return false;
    }
    let mov = decoder.decode();
    matches!(mov.code(), Code::Mov_rm64_r64 | Code::Mov_r64_rm64)
        && mov.op0_register() == Register::RBP
        && mov.op1_register() == Register::RSP
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_frame_pointer_prologues() {
        // push %rbp; mov %rsp,%rbp
        assert!(opens_frame(&[0x55, 0x48, 0x89, 0xe5, 0x90]));
        // endbr64; push %rbp; mov %rsp,%rbp
        assert!(opens_frame(&[
            0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5
        ]));
        // push %rbp; push %rbx (rbp used as a general register)
        assert!(!opens_frame(&[0x55, 0x53, 0x48, 0x89, 0xfd]));
        // sub $0x18,%rsp
        assert!(!opens_frame(&[0x48, 0x83, 0xec, 0x18]));
    }

    #[test]
    fn stripped_files_are_not_trusted() {
        let survey = Survey {
            functions: 0,
            with_frame_pointer: 0,
        };
        assert!(!survey.keeps_frame_pointers());
    }
}
