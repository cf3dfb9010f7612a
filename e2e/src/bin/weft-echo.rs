//! `weft-echo`: the test-only `acme.echo.v1.EchoService` served as a service of the mesh, with
//! the same few lines as Weft's own services' `main`: its contract is its descriptor set, its
//! listener, admin port, access rules, metrics and tracing come from the mesh.
//!
//! It is also given Weft's descriptor set: every process checks at start that it has a
//! descriptor for each `grpc_services` entry of every upstream in mesh-config
//! (`weft_mesh::contract::Contract::load`), so a process sharing the mesh-config of Weft's
//! services must know their contracts, built in or through `descriptor_set` files.

use std::process::ExitCode;

use clap::Parser;
use weft_e2e::{ECHO_DESCRIPTOR_SET, Echo, echo::echo_service_server::EchoServiceServer};
use weft_mesh::{CommonArgs, db::Database, server::Started};

/// Its name in mesh-config (`[services.echo]`).
const NAME: &str = "echo";

/// Serves acme.echo.v1.EchoService: answers with what it received.
#[derive(Debug, Parser)]
#[command(name = "weft-echo", about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// No tables: the echo server keeps no data.
static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

fn main() -> ExitCode {
    let args = Args::parse();
    let contract = [ECHO_DESCRIPTOR_SET, weft_proto::FILE_DESCRIPTOR_SET];
    weft_mesh::launch(
        "weft-echo",
        &contract,
        args.common.config,
        |config| async move {
            let init = async {
                // `server::Started` hands the server a database to observe and close, so even a
                // service that keeps no data opens the one mesh-config gives it.
                let database = Database::open_service(&config, NAME, &NO_MIGRATIONS).await?;
                Ok(Started {
                    service: EchoServiceServer::new(Echo),
                    database,
                })
            };
            weft_mesh::server::serve(config.clone(), NAME, init).await
        },
    )
}
