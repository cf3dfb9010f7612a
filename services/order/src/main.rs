//! The `weft-order` process: products, stock and orders, served over gRPC.

use clap::Parser;
use weft_mesh::ServiceName;

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
    weft_mesh::launch(
        ServiceName::Order,
        args.common.config,
        |config| async move {
            weft_mesh::server::serve(config.clone(), ServiceName::Order, weft_order::init(config))
                .await
        },
    )
}
