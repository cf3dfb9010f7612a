//! The viewer's errors.

use std::net::SocketAddr;

/// Why the viewer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The page would be reachable from other machines.
    #[error(
        "the trace viewer serves on loopback only, and {0} is not a loopback address: use \
         127.0.0.1:<port> or [::1]:<port>"
    )]
    NotLoopback(SocketAddr),
    /// A port could not be bound.
    #[error(
        "the trace viewer cannot listen on {0}: {1} (is another `weft up`, or a Jaeger UI, using \
         it? `weft up --viewer-listen 127.0.0.1:<port>` picks another port, --no-viewer runs none)"
    )]
    Bind(SocketAddr, std::io::Error),
    /// The OTLP endpoint to forward to is unusable.
    #[error("cannot forward spans to {0}: {1}")]
    Upstream(String, &'static str),
}
