//! Support for the production-safety tests: a private copy of libc (so a
//! probe a faulty tracer leaks stays on a temporary file, never on the
//! host's libc), a busy target, the kernel log, and what is really in a
//! target's code.

use std::{
    fs,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{WORKLOAD_CFLAGS, Workload, compile_c, temp_dir};

/// `spinner`: calls malloc and free as fast as it can until stdin closes.
pub fn spinner_bin() -> PathBuf {
    compile_c("spinner.c", "spinner", WORKLOAD_CFLAGS)
}

/// `selfcheck`: exits 0 when its code is exactly its files' bytes.
pub fn selfcheck_bin() -> PathBuf {
    compile_c("selfcheck.c", "selfcheck", WORKLOAD_CFLAGS)
}

/// `forker PROGRAM COUNT`: forks and at once execs PROGRAM, COUNT times.
pub fn forker_bin() -> PathBuf {
    compile_c("forker.c", "forker", WORKLOAD_CFLAGS)
}

/// `jitter`: allocates from code it generates at run time.
pub fn jitter_bin() -> PathBuf {
    compile_c("jitter.c", "jitter", WORKLOAD_CFLAGS)
}

/// A directory holding `bin` and the libraries `ldd` lists for it, at the
/// same paths: a root file system for `chroot` whose libc is another file
/// than the host's. Returns `bin`'s path inside it.
pub fn chroot_with(bin: &Path, root: &Path) -> PathBuf {
    let output = Command::new("ldd").arg(bin).output().expect("run ldd");
    assert!(output.status.success());
    let listing = String::from_utf8_lossy(&output.stdout);
    let libraries = listing.lines().filter_map(|line| {
        let path = line.split("=>").last()?.trim().split(" (").next()?.trim();
        path.starts_with('/').then(|| PathBuf::from(path))
    });
    let name = bin.file_name().expect("a file name");
    for source in libraries.chain([bin.to_path_buf()]) {
        let target = if source == bin {
            root.join(name)
        } else {
            root.join(source.strip_prefix("/").unwrap())
        };
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(&source, &target)
            .unwrap_or_else(|e| panic!("copy {} into the chroot: {e}", source.display()));
    }
    Path::new("/").join(name)
}

/// The libc this test binary maps.
pub fn system_libc() -> PathBuf {
    let maps = fs::read_to_string("/proc/self/maps").expect("own maps");
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libc.so.6"))
        .map(PathBuf::from)
        .expect("this test maps libc.so.6")
}

/// A copy of libc in a temporary directory, for programs started with
/// [`PrivateLibc::env`] in front of them.
pub struct PrivateLibc {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl PrivateLibc {
    pub fn new() -> Self {
        let dir = temp_dir();
        let path = dir.path().join("libc.so.6");
        fs::copy(system_libc(), &path).expect("copy libc");
        Self { dir, path }
    }

    /// `env LD_LIBRARY_PATH=DIR`: prefix of a command that uses this libc.
    pub fn env(&self) -> [String; 2] {
        [
            "/usr/bin/env".to_owned(),
            format!("LD_LIBRARY_PATH={}", self.dir.path().display()),
        ]
    }

    /// Starts `program ARGS` (a ready/go workload) with this libc; `env`
    /// execs it in place, so the pid is the program's.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Workload {
        let [env, library_path] = self.env();
        let mut all = vec![library_path.as_str(), program.to_str().unwrap()];
        all.extend_from_slice(args);
        Workload::spawn_bin(Path::new(&env), &all)
    }
}

impl Default for PrivateLibc {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes of `file`'s executable mappings in `pid` that differ from the
/// file: each is a breakpoint someone left there.
pub fn code_bytes_changed(pid: u32, file: &Path) -> usize {
    changed_code(pid, file).len()
}

/// Writes `file`'s bytes back over every byte of its executable mappings
/// in `pid` that differs (as a tool that "cleans" breakpoints would);
/// returns how many.
pub fn restore_code(pid: u32, file: &Path) -> usize {
    let mem = fs::File::options()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("target mem");
    let changed = changed_code(pid, file);
    for &(address, original) in &changed {
        mem.write_all_at(&[original], address)
            .expect("write target code");
    }
    changed.len()
}

/// (address, byte in the file) of each byte of `file`'s executable
/// mappings in `pid` that differs from the file.
fn changed_code(pid: u32, file: &Path) -> Vec<(u64, u8)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("target maps");
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("target mem");
    let disk = fs::read(file).expect("mapped file");
    let mut changed = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || Path::new(fields[5]) != file {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let offset = u64::from_str_radix(fields[2], 16).unwrap() as usize;
        let mut memory = vec![0u8; (end - start) as usize];
        mem.read_exact_at(&mut memory, start)
            .expect("read target code");
        let on_disk = &disk[offset..(offset + memory.len()).min(disk.len())];
        for (index, (&memory, &disk)) in memory.iter().zip(on_disk).enumerate() {
            if memory != disk {
                changed.push((start + index as u64, disk));
            }
        }
    }
    changed
}

/// The kernel log's lines (`dmesg`).
pub fn kernel_log() -> Vec<String> {
    let output = Command::new("dmesg").output().expect("run dmesg");
    assert!(output.status.success(), "dmesg failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Lines of the kernel log saying a task of one of `pids` leaked a uprobe
/// (`uprobe: COMM:PID failed to unregister, leaking uprobe`).
pub fn leaked_uprobes(log: &[String], pids: &[u32]) -> Vec<String> {
    log.iter()
        .filter(|line| line.contains("leaking uprobe"))
        .filter(|line| {
            pids.iter()
                .any(|pid| line.contains(&format!(":{pid} failed to unregister")))
        })
        .cloned()
        .collect()
}

/// bcc's `memleak` (installed by `cargo xtask setup`), attached to the
/// allocator functions of `libc` for `pid` for one one-second interval: the
/// tool a leaked uprobe used to lock out (`cannot attach uprobe, Invalid
/// argument`; the kernel says `ref_ctr_offset mismatch`). Its output, or why
/// it did not attach.
pub fn bcc_memleak_attaches(libc: &Path, pid: u32) -> Result<String, String> {
    let output = Command::new("memleak-bpfcc")
        .arg("-O")
        .arg(libc)
        .args(["-p", &pid.to_string(), "1", "1"])
        .output()
        .map_err(|error| format!("cannot run memleak-bpfcc: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // memleak prints its interval's heading only once every probe is on.
    if output.status.success() && stdout.contains("stacks with outstanding allocations") {
        Ok(stdout)
    } else {
        Err(format!("{}\n{stdout}\n{stderr}", output.status))
    }
}

/// The children of `pid` (by the parent pids in `/proc`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_name = &stat[stat.rfind(')')? + 2..];
                    after_name.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A small deterministic generator for "random" moments; the seed is
/// printed so a failing run can be replayed.
pub struct Moments(u64);

impl Moments {
    pub fn seeded() -> Self {
        let seed = std::env::var("ALLOCTRACE_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("moments seed {seed} (replay with ALLOCTRACE_TEST_SEED={seed})");
        Self(seed | 1)
    }

    /// A number below `bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}
