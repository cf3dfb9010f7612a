//! Compiles the contract with protox (pure Rust, no system `protoc`), writes the encoded
//! descriptor set for the gateway and reflection, and a table of each method's declared access.

use std::{env, fmt::Write as _, fs, path::PathBuf};

use prost_reflect::Value;

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
    fs::write(out.join("method_access.rs"), access_table(&compiler)?)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Renders `(grpc path, Access)` pairs for every method of the compiled services.
fn access_table(compiler: &protox::Compiler) -> Result<String, Box<dyn std::error::Error>> {
    let pool = compiler.descriptor_pool();
    let ext = pool
        .get_extension_by_name("weft.api.v1.access")
        .ok_or("weft.api.v1.access option is not defined")?;
    let access_enum = pool
        .get_enum_by_name("weft.api.v1.Access")
        .ok_or("weft.api.v1.Access is not defined")?;
    let mut table = String::from("&[\n");
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            let number = match options.get_extension(&ext).as_ref() {
                Value::EnumNumber(n) => *n,
                _ => 0,
            };
            let name = access_enum
                .get_value(number)
                .ok_or_else(|| format!("{}: unknown access {number}", method.full_name()))?
                .name()
                .to_owned();
            let variant = to_upper_camel(&name);
            writeln!(
                table,
                "    (\"/{}/{}\", Access::{variant}),",
                service.full_name(),
                method.name()
            )?;
        }
    }
    table.push(']');
    Ok(table)
}

fn to_upper_camel(screaming: &str) -> String {
    screaming
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_string() + &chars.as_str().to_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}
