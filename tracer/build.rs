//! Builds the kernel programs in `tracer-ebpf` and leaves the object in
//! `OUT_DIR`, where `probes.rs` embeds it with `include_bytes_aligned!`.
//!
//! Why cargo-in-cargo: the eBPF crate must be compiled for
//! `bpfel-unknown-none` with a nightly toolchain (`-Z build-std=core`) and
//! linked by `bpf-linker`, while this crate is an ordinary host binary built
//! with stable. Cargo cannot yet express "this dependency is a binary for
//! another target" (artifact dependencies are unstable), so aya-build runs a
//! nested `cargo +nightly build` for it. `cargo xtask setup` installs the
//! nightly `rust-src` and `bpf-linker` this needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading workspace metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tracer-ebpf's manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
