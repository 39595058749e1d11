//! One code module for the unwinder: the unwind tables (`.eh_frame` with its
//! `.eh_frame_hdr` index, else `.debug_frame`) of the ELF file behind an
//! executable mapping, and where that mapping puts the file's addresses.

use std::{fs::File, path::Path, sync::Arc};

use anyhow::{Context as _, anyhow};
use framehop::{ExplicitModuleSectionInfo, Module};
use object::{Object as _, ObjectSection as _};

use super::segments::{load_bias, load_segments};
use crate::{
    maps::{Backing, Mapping},
    safe_open,
};

/// Section bytes shared between the unwinder and its rule cache.
pub type SectionBytes = Arc<[u8]>;

/// Builds the unwinder's module for an executable file mapping of `pid`.
pub fn load(pid: u32, mapping: &Mapping) -> anyhow::Result<Module<SectionBytes>> {
    let Backing::File(path) = &mapping.backing else {
        return Err(anyhow!("not a file mapping"));
    };
    let file = open_mapped_file(pid, mapping, path)?;
    // SAFETY: the file is mapped read-only and only read while parsing here;
    // the section bytes the module keeps are copied out.
    let data = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    let elf = object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    let bias = load_bias(&load_segments(&elf), mapping).ok_or_else(|| {
        anyhow!(
            "{}: no segment maps offset {:#x}",
            path.display(),
            mapping.file_offset
        )
    })?;
    let section = |name: &str| {
        let section = elf.section_by_name(name)?;
        let range = section.address()..section.address() + section.size();
        let bytes = section.data().ok().filter(|bytes| !bytes.is_empty())?;
        Some((range, SectionBytes::from(bytes)))
    };
    let (eh_frame_svma, eh_frame) = section(".eh_frame").unzip();
    let (eh_frame_hdr_svma, eh_frame_hdr) = section(".eh_frame_hdr").unzip();
    let info = ExplicitModuleSectionInfo {
        // ELF addresses in unwind tables are relative to 0, and `bias` maps
        // them into the process.
        base_svma: 0,
        text_svma: elf
            .section_by_name(".text")
            .map(|text| text.address()..text.address() + text.size()),
        got_svma: elf
            .section_by_name(".got")
            .map(|got| got.address()..got.address() + got.size()),
        eh_frame_svma,
        eh_frame,
        eh_frame_hdr_svma,
        eh_frame_hdr,
        debug_frame: section(".debug_frame").map(|(_, bytes)| bytes),
        ..Default::default()
    };
    Ok(Module::new(
        path.display().to_string(),
        mapping.start..mapping.end,
        bias,
        info,
    ))
}

/// The file exactly as mapped (`map_files` reaches it in any mount
/// namespace, even deleted), else by its path inside the target's root
/// (never through a symlink out of it).
fn open_mapped_file(pid: u32, mapping: &Mapping, path: &Path) -> anyhow::Result<File> {
    let map_file = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    File::open(map_file)
        .or_else(|_| safe_open::open_in_root(pid, path))
        .with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own code mapping resolves to a module whose range
    /// covers a function of this file.
    #[test]
    fn loads_this_process_code() {
        let pid = std::process::id();
        let maps = crate::maps::read(pid).expect("own maps");
        let here = loads_this_process_code as fn() as usize as u64;
        let mapping = crate::maps::find(&maps, here).expect("own code mapping");
        let module = load(pid, mapping).expect("module");
        assert!(module.avma_range().contains(&here));
        // The bias is what /proc reports: start - offset for a typical PIE
        // whose segments keep virtual address == file offset.
        assert!(module.base_avma() <= here);
    }
}
