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
//!
//! It also generates the pprof types (`report/pprof.rs` includes them) from
//! the published `proto/profile.proto`, with protox, a protobuf compiler in
//! Rust, so building needs no `protoc` on the machine.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    generate_pprof_types()?;
    build_ebpf()
}

fn generate_pprof_types() -> anyhow::Result<()> {
    println!("cargo::rerun-if-changed=proto/profile.proto");
    let descriptors = protox::compile(["profile.proto"], ["proto"])
        .map_err(|error| anyhow!("compiling proto/profile.proto: {error}"))?;
    prost_build::Config::new()
        .compile_fds(descriptors)
        .context("generating the pprof types")
}

fn build_ebpf() -> anyhow::Result<()> {
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
