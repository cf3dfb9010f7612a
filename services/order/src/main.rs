//! The `weft-order` process: products, stock and orders, served over gRPC; or its database
//! migrated, and exit.

use clap::{Parser, Subcommand};
use weft_mesh::CommonArgs;

/// Command line of `weft-order`.
#[derive(Debug, Parser)]
#[command(
    name = "weft-order",
    version,
    about = "Weft's product and order service"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Applies this service's database migrations and exits (a deployment's migration Job).
    Migrate {
        // Also accepted after the subcommand: `weft-order migrate --config mesh.toml`.
        #[command(flatten)]
        common: CommonArgs,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config_path = match &args.command {
        Some(Command::Migrate { common }) => common.config.clone().or(args.common.config),
        None => args.common.config,
    };
    let contract = [weft_proto::FILE_DESCRIPTOR_SET];
    weft_mesh::launch("weft-order", &contract, config_path, |config| async move {
        match args.command {
            Some(Command::Migrate { .. }) => {
                weft_mesh::migrate(&config, weft_order::NAME, &weft_order::MIGRATOR).await
            }
            None => {
                weft_mesh::server::serve(config.clone(), weft_order::NAME, weft_order::init(config))
                    .await
            }
        }
    })
}
