//! `cargo xtask setup`: install prerequisites idempotently.
//!
//! Every step checks first and prints a single `ok: …` line when nothing needs
//! doing, so a second run takes a couple of seconds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, probe};

/// Debian packages needed to build bpf-linker against LLVM 22 and the tracer,
/// what the integration tests trace: replacement allocators, Node.js and a
/// JDK (whose JIT frames tests/jit.rs names; `javac` builds its Java
/// workload, `jcmd` serves `--jvm-perfmap`), Debian's own `python3`
/// (tests/languages.rs unwinds the distro build), Chromium (tests/html.rs draws
/// the HTML report in it), and what tests/fleet.rs deploys
/// with: podman and runc (the image), prometheus (scraping, `promtool`) and
/// systemd (`systemd-analyze verify` on the unit), and the headless browser
/// tests/html.rs loads the HTML report in; bcc's tools with Debian's kernel
/// headers (tests/production.rs checks that bcc's `memleak` still attaches
/// after alloctrace was killed; the bench compares against it).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "build-essential",
    "libjemalloc2",
    "libgoogle-perftools4",
    "libmimalloc2.0",
    "nodejs",
    "python3",
    "openjdk-17-jdk-headless",
    "podman",
    "runc",
    "prometheus",
    "systemd",
    "chromium",
    "bpfcc-tools",
    "linux-headers-amd64",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn run() -> Result<()> {
    util::require_root()?;
    if !Path::new(BTF).exists() {
        bail!(
            "{BTF} is missing: this kernel has no BTF (needs CONFIG_DEBUG_INFO_BTF=y), which alloctrace requires"
        );
    }
    apt_packages()?;
    bcc_kernel_headers()?;
    bpf_linker()?;
    nightly()?;
    Ok(())
}

fn apt_installed(package: &str) -> bool {
    probe("dpkg-query", ["-W", "-f=${Status}", package])
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        println!("ok: apt packages installed ({})", APT_PACKAGES.join(" "));
        return Ok(());
    }
    println!("installing apt packages: {}", missing.join(" "));
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    Ok(())
}

/// bcc compiles its programs against the running kernel's headers. When
/// the running kernel (a custom build here) has none of its own, points
/// `/lib/modules/RELEASE/{build,source}` at Debian's: memleak's programs only
/// need `pt_regs` and basic types from them. Also mounts tracefs, which bcc's
/// clean-up expects.
fn bcc_kernel_headers() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?;
    let modules = PathBuf::from(format!("/lib/modules/{}", release.trim()));
    if modules.join("build").exists() {
        println!("ok: kernel headers for bcc ({})", modules.display());
    } else {
        let build = newest_headers("-amd64")
            .context("no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64")?;
        let source = newest_headers("-common").unwrap_or_else(|| build.clone());
        println!(
            "linking {}/build and source to {} and {} for bcc",
            modules.display(),
            build.display(),
            source.display()
        );
        std::fs::create_dir_all(&modules)
            .with_context(|| format!("mkdir {}", modules.display()))?;
        for (name, target) in [("build", &build), ("source", &source)] {
            let link = modules.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link)
                .with_context(|| format!("symlink {}", link.display()))?;
        }
    }
    if !Path::new("/sys/kernel/tracing/uprobe_events").exists() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
    Ok(())
}

/// The newest `/usr/src/linux-headers-*SUFFIX` directory.
fn newest_headers(suffix: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("linux-headers-") && name.ends_with(suffix))
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

fn bpf_linker() -> Result<()> {
    if let Some(version) = probe("bpf-linker", ["--version"]) {
        println!("ok: {}", version.trim());
        return Ok(());
    }
    println!("installing bpf-linker (takes a few minutes)");
    // Without LLVM_PREFIX, bpf-linker's build cannot find -lLLVM.
    util::run(util::cargo().env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))?;
    if probe("bpf-linker", ["--version"]).is_none() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails: is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

fn nightly() -> Result<()> {
    let Some(toolchains) = probe("rustup", ["toolchain", "list"]) else {
        bail!(
            "`rustup toolchain list` failed: rustup is required (install it from https://rustup.rs)"
        );
    };
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("ok: nightly toolchain installed");
    } else {
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }

    let components = probe(
        "rustup",
        ["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if components.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("ok: rust-src installed for nightly");
    } else {
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}
