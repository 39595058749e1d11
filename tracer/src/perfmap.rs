//! A runtime's perf map, `/tmp/perf-PID.map`: one line per JIT-compiled
//! function, `START SIZE NAME`, read as the target's own file.
//!
//! Read here rather than by blazesym because runtimes disagree on the
//! format: Node.js and .NET write bare hex, but HotSpot's
//! `jcmd PID Compiler.perfmap` (JDK 17) writes `0x`-prefixed hex, which
//! blazesym 0.2 refuses, failing the whole batch of addresses it was asked
//! to name. Lines that do not parse are skipped, one at a time.
//!
//! The file belongs to the target, so it is read with care: reached through
//! `/proc/PID/root/tmp/` under the name the process knows itself by (its
//! innermost `NStgid`), never followed through a final symlink, a regular
//! file only, at most [`MAX_BYTES`]. It is re-read only when its size or
//! modification time changed. Plain data: it knows neither aya nor
//! blazesym.

use std::{
    fs::File, io::Read as _, os::unix::fs::OpenOptionsExt as _, path::PathBuf, time::SystemTime,
};

use crate::safe_open;

/// Largest perf map read. A big JVM's map with every stub and method is a
/// few tens of MiB; a target cannot make the tracer read without bound.
pub const MAX_BYTES: u64 = 256 << 20;

/// One process's perf map, as last read.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// Sorted by start address.
    functions: Vec<Function>,
    /// (length, mtime) of the file last read, to skip unchanged re-reads.
    read_as: Option<(u64, SystemTime)>,
    /// The map was refused (and said so, once).
    refused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Function {
    start: u64,
    size: u64,
    name: String,
}

impl PerfMap {
    /// Re-reads process `pid`'s perf map if it changed since the last read;
    /// true when the functions it names changed.
    pub fn refresh(&mut self, pid: u32) -> bool {
        // Trusted as `perf` trusts it, and never reached out of the
        // process's root (see `crate::safe_open::perf_map`).
        match safe_open::perf_map(pid) {
            safe_open::PerfMap::Trusted => {}
            safe_open::PerfMap::Absent => return false,
            safe_open::PerfMap::Refused(why) => {
                if !std::mem::replace(&mut self.refused, true) {
                    eprintln!("alloctrace: warning: ignoring the perf map of pid {pid}: {why}");
                }
                return false;
            }
        }
        let Some(path) = path_of(pid) else {
            return false;
        };
        let Some((text, read_as)) = read_if_changed(&path, self.read_as) else {
            return false;
        };
        self.read_as = Some(read_as);
        let functions = parse(&text);
        let changed = functions != self.functions;
        self.functions = functions;
        changed
    }

    /// The function whose code covers `address`; the latest listed wins
    /// where code was freed and its addresses reused.
    pub fn find(&self, address: u64) -> Option<&str> {
        let after = self.functions.partition_point(|f| f.start <= address);
        self.functions[..after]
            .iter()
            .rev()
            .take_while(|f| address - f.start < MAX_FUNCTION_BYTES)
            .find(|f| address - f.start < f.size.max(1))
            .map(|f| f.name.as_str())
    }
}

/// No JIT function is this large; bounds the backward search in `find`.
const MAX_FUNCTION_BYTES: u64 = 64 << 20;

/// `/proc/PID/root/tmp/perf-NSPID.map`: the file the process wrote in its
/// own mount and PID namespaces.
fn path_of(pid: u32) -> Option<PathBuf> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // Kernels without PID namespaces have no NStgid: the pid is the one.
    let ns_pid = match status
        .lines()
        .find_map(|line| line.strip_prefix("NStgid:"))
        .and_then(|pids| pids.split_whitespace().next_back())
    {
        Some(ns_pid) => ns_pid.parse().ok()?,
        None => pid,
    };
    Some(PathBuf::from(format!(
        "/proc/{pid}/root/tmp/perf-{ns_pid}.map"
    )))
}

/// The file's text if it is a regular file (not reached through a final
/// symlink) whose length or mtime differ from `read_as`.
fn read_if_changed(
    path: &std::path::Path,
    read_as: Option<(u64, SystemTime)>,
) -> Option<(String, (u64, SystemTime))> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let metadata = file.metadata().ok()?;
    if !metadata.is_file() {
        return None;
    }
    let identity = (metadata.len(), metadata.modified().ok()?);
    if read_as == Some(identity) {
        return None;
    }
    let mut bytes = Vec::new();
    (&mut file).take(MAX_BYTES).read_to_end(&mut bytes).ok()?;
    Some((String::from_utf8_lossy(&bytes).into_owned(), identity))
}

/// The functions of a perf map's text, sorted by start; lines that are not
/// `START SIZE NAME` (hex, with or without `0x`) are skipped.
fn parse(text: &str) -> Vec<Function> {
    let mut functions: Vec<Function> = text.lines().filter_map(parse_line).collect();
    // Stable: of two entries at one address, the later listed stays later.
    functions.sort_by_key(|f| f.start);
    functions
}

fn parse_line(line: &str) -> Option<Function> {
    let mut parts = line.trim().splitn(3, char::is_whitespace);
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    (!name.is_empty()).then(|| Function {
        start,
        size,
        name: name.to_owned(),
    })
}

fn hex(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> PerfMap {
        PerfMap {
            functions: parse(text),
            read_as: None,
            refused: false,
        }
    }

    #[test]
    fn hotspot_and_v8_lines_both_parse() {
        let perf_map = map(
            "0x00007fdaa8ecda40 0x00000000000002b8 java.nio.ByteBuffer DirectLeak.leak(int)\n\
             7f6d8c04ff00 100 JS:^leakyJsFunction /w/leak.js:19:25\n",
        );
        assert_eq!(
            perf_map.find(0x7fdaa8ecda40 + 0x10),
            Some("java.nio.ByteBuffer DirectLeak.leak(int)")
        );
        assert_eq!(
            perf_map.find(0x7f6d8c04ff64),
            Some("JS:^leakyJsFunction /w/leak.js:19:25")
        );
    }

    #[test]
    fn addresses_outside_every_function_are_unnamed() {
        let perf_map = map("1000 10 a\n2000 10 b\n");
        assert_eq!(perf_map.find(0xfff), None);
        assert_eq!(perf_map.find(0x1010), None);
        assert_eq!(perf_map.find(0x100f), Some("a"));
        assert_eq!(perf_map.find(0x2000), Some("b"));
    }

    #[test]
    fn bad_lines_are_skipped_not_fatal() {
        let perf_map = map("garbage\n1000 zz x\n\n1000 10\n3000 8 good\n");
        assert_eq!(perf_map.functions.len(), 1);
        assert_eq!(perf_map.find(0x3004), Some("good"));
    }

    #[test]
    fn the_latest_entry_for_reused_code_wins() {
        let perf_map = map("1000 100 old\n1000 100 new\n");
        assert_eq!(perf_map.find(0x1050), Some("new"));
    }

    #[test]
    fn a_function_nested_in_a_larger_one_is_found() {
        // HotSpot lists its code-cache blobs (e.g. the interpreter) as
        // large ranges that other entries may fall inside.
        let perf_map = map("1000 1000 Interpreter\n1800 10 stub\n");
        assert_eq!(perf_map.find(0x1804), Some("stub"));
        assert_eq!(perf_map.find(0x1900), Some("Interpreter"));
    }
}
