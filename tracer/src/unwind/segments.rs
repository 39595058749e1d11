//! Where a mapping puts an ELF file's addresses: the load bias of an
//! executable mapping, from the file's load segments. Shared by the kernel's
//! tables ([`super::tables`]) and the stack-copy unwinder, which must agree
//! on it to the byte.
//!
//! A file page can hold two segments with different biases: lld (Rust's
//! default linker) starts the code segment in the page where the read-only
//! data segment ends, one page further on in memory than in the file (e.g.
//! `.text` at file offset 0x13ee0, address 0x14ee0). The mapping of the code
//! then begins at file offset 0x13000, which both segments hold; taking the
//! read-only one shifts every table lookup by a page and unwinding stops at
//! the first frame. So the segment whose permissions match the mapping's
//! wins.

use object::{Object as _, ObjectSegment as _, SegmentFlags, elf::PF_X};

use crate::maps::Mapping;

/// A load segment: where file offsets land in the ELF's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub offset: u64,
    pub file_size: u64,
    pub address: u64,
    pub executable: bool,
}

/// The load segments of `elf`.
pub fn load_segments(elf: &object::File<'_>) -> Vec<LoadSegment> {
    elf.segments()
        .map(|segment| {
            let (offset, file_size) = segment.file_range();
            let executable = matches!(
                segment.flags(),
                SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0
            );
            LoadSegment {
                offset,
                file_size,
                address: segment.address(),
                executable,
            }
        })
        .collect()
}

/// What to subtract from a process address in `mapping` to get the file's
/// ELF address: from the load segment holding the mapping's file offset,
/// the one with the mapping's permissions when two share that page.
pub fn load_bias(segments: &[LoadSegment], mapping: &Mapping) -> Option<u64> {
    const PAGE: u64 = 4096;
    let holds = |segment: &&LoadSegment| {
        segment.offset & !(PAGE - 1) <= mapping.file_offset
            && mapping.file_offset < segment.offset + segment.file_size
    };
    let segment = segments
        .iter()
        .filter(holds)
        .find(|segment| segment.executable == mapping.executable)
        .or_else(|| segments.iter().find(holds))?;
    // The mapping puts file offset `file_offset` at `start`, and the
    // segment's `offset` at `address + bias`.
    Some(
        mapping
            .start
            .wrapping_sub(mapping.file_offset)
            .wrapping_add(segment.offset)
            .wrapping_sub(segment.address),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::Backing;

    fn code_mapping(start: u64, file_offset: u64) -> Mapping {
        Mapping {
            start,
            end: start + 0x40000,
            file_offset,
            executable: true,
            backing: Backing::File("/bin/x".into()),
            file_id: None,
        }
    }

    #[test]
    fn bias_places_the_file_where_the_mapping_is() {
        let segments = [LoadSegment {
            offset: 0x1000,
            file_size: 0x5000,
            address: 0x1000,
            executable: true,
        }];
        let mapping = code_mapping(0x7f00_0000_1000, 0x1000);
        assert_eq!(load_bias(&segments, &mapping), Some(0x7f00_0000_0000));
    }

    /// The layout of a Rust binary linked by lld: the code segment starts in
    /// the last file page of the read-only one, a page further on in memory.
    #[test]
    fn code_sharing_a_page_with_read_only_data_takes_the_code_segment_bias() {
        let segments = [
            LoadSegment {
                offset: 0,
                file_size: 0x13ed8,
                address: 0,
                executable: false,
            },
            LoadSegment {
                offset: 0x13ee0,
                file_size: 0x3ee80,
                address: 0x14ee0,
                executable: true,
            },
        ];
        let base = 0x5555_0000_0000;
        let mapping = code_mapping(base + 0x14000, 0x13000);
        assert_eq!(load_bias(&segments, &mapping), Some(base));
    }
}
