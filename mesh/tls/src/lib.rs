//! The mesh's mutual TLS (see `mesh-config/README.md`, `[mtls]`).
//!
//! - [`identity`]: who a certificate speaks for, `spiffe://<trust_domain>/ns/<namespace>/sa/<name>`.
//! - [`issue`]: the local CA and the certificates `weft certs` writes (rcgen, ECDSA P-256).
//! - [`tls`]: the process's own certificate, loaded from disk and reloaded when the files
//!   change; the rustls server config (client certificates of the mesh CA required) and client
//!   configs (the server's certificate must be the expected identity's).
//!
//! ```ignore
//! let tls = weft_tls::MeshTls::load(&config.mtls, "order")?; // certs/order.pem + .key
//! weft_tls::install(tls.clone());
//! tls.spawn_reload();
//! ```
#![warn(missing_docs)]

pub mod identity;
pub mod issue;
pub mod tls;

pub use identity::{Identity, PeerIdentity};
pub use tls::{ClientTls, Expiry, MeshTls, TlsError, current, install};

/// A server-side TLS stream over TCP, as [`MeshTls::accept`] returns it.
pub type ServerStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
/// A client-side TLS stream over TCP, as [`ClientTls::connect`] returns it.
pub type ClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
