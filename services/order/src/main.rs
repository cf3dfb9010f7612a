//! The `weft-order` process: products, stock and orders, served over gRPC.

use clap::Parser;

/// Command line of `weft-order`.
#[derive(Debug, Parser)]
#[command(
    name = "weft-order",
    version,
    about = "Weft's product and order service"
)]
struct Args {
    #[command(flatten)]
    common: weft_mesh::CommonArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let contract = [weft_proto::FILE_DESCRIPTOR_SET];
    weft_mesh::launch(
        "weft-order",
        &contract,
        args.common.config,
        |config| async move {
            weft_mesh::server::serve(config.clone(), weft_order::NAME, weft_order::init(config))
                .await
        },
    )
}
