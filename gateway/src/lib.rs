//! `weft-gateway`: the mesh's REST front door.
//!
//! The gateway turns REST+JSON into gRPC calls with no per-route code: its routes are built at
//! start from the `google.api.http` rules of `weft_proto::FILE_DESCRIPTOR_SET` (and of any
//! further descriptor sets named in mesh-config), requests are transcoded with the canonical
//! proto3 JSON mapping, and answers and errors come back as JSON.
//!
//! - [`route`]: path templates and the route matcher;
//! - [`table`]: the route table built from descriptors;
//! - [`transcode`]: JSON and path/query values <-> protobuf;
//! - [`upstream`]: unary gRPC calls with dynamic messages;
//! - [`wire_json`]: the JSON answer written straight from the reply's bytes;
//! - [`serve`]: the HTTP server and its edge policies;
//! - [`error`]: the JSON error shape and gRPC -> HTTP status mapping;
//! - [`openapi`], [`metrics`]: the documents and counters the gateway serves.

pub mod error;
pub mod metrics;
pub mod openapi;
pub mod route;
pub mod serve;
pub mod table;
pub mod tls;
pub mod transcode;
pub mod upstream;
pub mod wire_json;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use weft_mesh::MeshConfig;

pub use serve::Gateway;

/// What the gateway's unit tests share: Weft's contract and a config that routes it.
#[cfg(test)]
pub(crate) mod test_support {
    use weft_mesh::{
        MeshConfig,
        config::UpstreamConfig,
        contract::{self, Contract},
    };

    use crate::table::RouteTable;

    /// Weft's three services as upstreams, all at `endpoint`.
    pub fn weft_config(endpoint: &str) -> MeshConfig {
        let mut config = MeshConfig::default();
        for (name, service) in [
            ("auth", "weft.auth.v1.AuthService"),
            ("user", "weft.user.v1.UserService"),
            ("order", "weft.order.v1.OrderService"),
        ] {
            let mut upstream = UpstreamConfig::with_endpoint(endpoint.to_owned());
            upstream.grpc_services = vec![service.to_owned()];
            config.upstreams.insert(name.to_owned(), upstream);
        }
        config
    }

    /// Installs Weft's contract as the process's (for the code that reads
    /// [`contract::current`]); the same for every test of the process.
    pub fn install_weft_contract() -> &'static Contract {
        let config = weft_config("http://127.0.0.1:1");
        contract::install(
            Contract::load(&[weft_proto::FILE_DESCRIPTOR_SET], &config)
                .expect("Weft's contract loads"),
        );
        contract::current()
    }

    /// The route table of Weft's own services.
    pub fn weft_table() -> RouteTable {
        let contract = install_weft_contract();
        RouteTable::build_with(&weft_config("http://127.0.0.1:1"), contract)
            .expect("Weft's own rules are valid")
    }
}

/// Serves the gateway as configured until SIGINT or SIGTERM, then drains.
pub async fn run(config: Arc<MeshConfig>) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway::new(config.clone())?);
    gateway.spawn_upkeep();
    let addr = config.gateway.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let tls = tls::acceptor(&config.gateway.tls)?;
    tracing::info!(addr = %local, tls = tls.is_some(), "gateway serving");

    // hyper refuses heads past its buffer with a bare 431; give it room so that the handler sees
    // heads up to 4x the limit and answers the contract's JSON 431 for them.
    let head_room = config.gateway.max_header_bytes.saturating_mul(4);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).max_buf_size(head_room);
    builder
        .http2()
        .max_header_list_size(u32::try_from(head_room).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let shutdown = weft_mesh::server::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let service = hyper::service::service_fn(move |req| gateway.clone().handle(req, peer));
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        None => {
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Some(acceptor) => {
                            let stream = match tokio::time::timeout(
                                tls::HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; dropping connections");
    }
    tracing::info!("stopped");
    Ok(())
}
