//! Compiles `proto/weft/api/v1` (the options and messages every service contract may use) with
//! protox: message types only, no client or server.

use std::error::Error;

const FILES: &[&str] = &["weft/api/v1/annotations.proto", "weft/api/v1/keys.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=../../proto/weft/api");
    let mut compiler = protox::Compiler::new(["../../proto"])?;
    compiler.open_files(FILES)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
