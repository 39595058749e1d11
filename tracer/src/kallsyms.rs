//! Which kernel module an address of the running kernel lies in, from
//! `/proc/kallsyms`: blazesym names kernel addresses but not their module,
//! and a frame in a driver should say which driver.
//!
//! A module's range is taken as its lowest to its highest symbol (the file
//! lists no sizes); an address past a module's last symbol reads as the
//! core kernel's. The file is root's to read in full (others see zeroed
//! addresses, and then nothing is named).

use std::{collections::HashMap, path::Path};

/// The module name of frames in the core kernel.
pub const CORE_KERNEL: &str = "[kernel]";

/// The modules' address ranges, sorted by start.
#[derive(Debug, Default)]
pub struct KernelModules {
    ranges: Vec<(u64, u64, String)>,
}

impl KernelModules {
    /// The running kernel's modules; none when the file cannot be read.
    pub fn read() -> Self {
        Self::read_from(Path::new("/proc/kallsyms"))
    }

    fn read_from(path: &Path) -> Self {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(error) => {
                log::debug!("reading {}: {error}", path.display());
                Self::default()
            }
        }
    }

    /// Parses kallsyms lines, `ADDRESS TYPE NAME [MODULE]`.
    pub fn parse(text: &str) -> Self {
        let mut bounds: HashMap<&str, (u64, u64)> = HashMap::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(address), Some(module)) = (fields.next(), fields.nth(2)) else {
                continue;
            };
            let (Ok(address), Some(module)) = (
                u64::from_str_radix(address, 16),
                module
                    .strip_prefix('[')
                    .and_then(|module| module.strip_suffix(']')),
            ) else {
                continue;
            };
            if address == 0 {
                continue;
            }
            let range = bounds.entry(module).or_insert((address, address));
            range.0 = range.0.min(address);
            range.1 = range.1.max(address);
        }
        let mut ranges: Vec<_> = bounds
            .into_iter()
            .map(|(module, (start, end))| (start, end, format!("[{module}]")))
            .collect();
        ranges.sort();
        Self { ranges }
    }

    /// `[MODULE]` for an address in a module, else [`CORE_KERNEL`].
    pub fn module_of(&self, address: u64) -> &str {
        let index = self
            .ranges
            .partition_point(|(start, _, _)| *start <= address);
        match index.checked_sub(1).map(|index| &self.ranges[index]) {
            Some((_, end, module)) if address <= *end => module,
            _ => CORE_KERNEL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_named_by_the_module_whose_symbols_surround_it() {
        let modules = KernelModules::parse(
            "ffffffff81000000 T _stext\n\
             ffffffffc0200000 t nft_init\t[nf_tables]\n\
             ffffffffc0208000 T nft_exit\t[nf_tables]\n\
             ffffffffc0300000 t e1000_probe\t[e1000]\n\
             0000000000000000 t hidden\t[zeroed]\n",
        );
        assert_eq!(modules.module_of(0xffffffff81001234), CORE_KERNEL);
        assert_eq!(modules.module_of(0xffffffffc0204000), "[nf_tables]");
        assert_eq!(modules.module_of(0xffffffffc0300000), "[e1000]");
        assert_eq!(modules.module_of(0xffffffffc0250000), CORE_KERNEL);
        assert_eq!(modules.module_of(0), CORE_KERNEL);
    }
}
