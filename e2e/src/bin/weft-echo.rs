//! `weft-echo`: the test-only `acme.echo.v1.EchoService` served as a service of the mesh, with
//! the same few lines as Weft's own services' `main`: its contract is its descriptor set, its
//! listener, admin port, access rules, metrics and tracing come from the mesh.
//! Like any service it knows only its own contract: the services of the other upstreams in
//! the shared mesh-config are not its business.

use std::process::ExitCode;

use clap::Parser;
use weft_e2e::{ECHO_DESCRIPTOR_SET, Echo, echo::echo_service_server::EchoServiceServer};
use weft_mesh::{CommonArgs, server::Started};

/// Its name in mesh-config (`[services.echo]`).
const NAME: &str = "echo";

/// Serves acme.echo.v1.EchoService: answers with what it received.
#[derive(Debug, Parser)]
#[command(name = "weft-echo", about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let contract = [ECHO_DESCRIPTOR_SET];
    weft_mesh::launch(
        "weft-echo",
        &contract,
        args.common.config,
        |config| async move {
            // No data: nothing to migrate, observe or close.
            let init = async {
                Ok(Started {
                    service: EchoServiceServer::new(Echo),
                    // Served by tonic's codec alone: a service need not list its methods.
                    unary: Default::default(),
                    database: None,
                })
            };
            weft_mesh::server::serve(config.clone(), NAME, init).await
        },
    )
}
