//! `weft-gateway`: the mesh's REST front door.
//!
//! The gateway turns REST+JSON into gRPC calls with no per-route code: its routes are built at
//! start from the `google.api.http` rules of `weft_proto::FILE_DESCRIPTOR_SET` (and of any
//! further descriptor sets named in mesh-config), requests are transcoded with the canonical
//! proto3 JSON mapping, and answers and errors come back as JSON.
//!
//! - [`route`]: path templates and the route matcher;
//! - [`endpoint`]: one REST binding of a gRPC method, as the table made it;
//! - [`table`]: the route table built from descriptors;
//! - [`request_message`]: path variables, query parameters and JSON body -> the request message;
//! - [`message_json`]: a decoded message -> its JSON (the reference writer);
//! - [`wire_json`]: the JSON answer written straight from the reply's bytes;
//! - [`upstream`]: unary gRPC calls with dynamic messages;
//! - [`serve`]: the HTTP server and its edge policies;
//! - [`error`]: the JSON error shape and gRPC -> HTTP status mapping;
//! - [`openapi`], [`metrics`]: the documents and counters the gateway serves.

pub mod endpoint;
pub mod error;
pub mod message_json;
pub mod metrics;
pub mod openapi;
pub mod request_message;
pub mod route;
pub mod serve;
pub mod table;
#[cfg(test)]
mod test_messages;
pub mod tls;
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
