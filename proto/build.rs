//! Compiles `proto/tracemesh/v1/*.proto` with protox (pure Rust, so no system `protoc`
//! is needed anywhere) and generates prost messages and tonic clients/servers.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/tracemesh/v1/trace.proto",
    "proto/tracemesh/v1/alias.proto",
    "proto/tracemesh/v1/mesh.proto",
    "proto/tracemesh/v1/mda.proto",
    "proto/tracemesh/v1/campaign.proto",
    "proto/tracemesh/v1/agent.proto",
    "proto/tracemesh/v1/consumer.proto",
    "proto/tracemesh/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // `file_descriptor_set_path` is ignored by `compile_fds`, so the reflection service's
    // descriptor bytes are written here explicitly.
    std::fs::write(
        out_dir.join("tracemesh_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
