//! Compiles the test-only `acme.echo.v1` API (e2e/proto) with protox: tonic server and client
//! code for the in-process echo server, and the encoded descriptor set the gateway is given as
//! an extra API in mesh-config. `google/api/*.proto` come from the workspace's proto/ folder.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../proto/google");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto", "../proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(["acme/echo/v1/echo.proto"])?;
    fs::write(
        out.join("echo_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
