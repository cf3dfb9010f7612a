//! `weft-gateway`: serves the mesh's REST API.

use clap::Parser;
use weft_mesh::CommonArgs;

fn main() -> std::process::ExitCode {
    let args = CommonArgs::parse();
    // The gateway routes what mesh-config's upstreams serve of this contract (and of their own
    // descriptor sets); it has no code of its own for any service.
    let contract = [weft_proto::FILE_DESCRIPTOR_SET];
    weft_mesh::launch("weft-gateway", &contract, args.config, weft_gateway::run)
}
