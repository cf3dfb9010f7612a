//! `weft-gateway`: serves the mesh's REST API.

use clap::Parser;
use weft_mesh::CommonArgs;

fn main() -> std::process::ExitCode {
    let args = CommonArgs::parse();
    weft_mesh::launch("weft-gateway", args.config, weft_gateway::run)
}
