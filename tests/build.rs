//! Generates the pprof types the tests decode `--pprof` files with, from the
//! same vendored `tracer/proto/profile.proto` the tracer encodes them with
//! (compiled by protox, so no `protoc` is needed).

fn main() {
    println!("cargo::rerun-if-changed=../tracer/proto/profile.proto");
    let descriptors = protox::compile(["profile.proto"], ["../tracer/proto"])
        .unwrap_or_else(|error| panic!("compiling tracer/proto/profile.proto: {error}"));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .expect("generating the pprof types");
}
