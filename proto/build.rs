//! Compiles the contract with protox (pure Rust, no system `protoc`), writes the encoded
//! descriptor set that processes load their contract from (routes, access, reflection).

use std::{env, fs, path::PathBuf};

const FILES: &[&str] = &[
    "weft/auth/v1/auth.proto",
    "weft/user/v1/user.proto",
    "weft/order/v1/order.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=weft");
    println!("cargo:rerun-if-changed=google");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;

    fs::write(
        out.join("weft_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        // The mesh's own package has its Rust types in weft-mesh-proto.
        .extern_path(".weft.api.v1", "::weft_mesh_proto")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
