//! TLS for the gateway listener (rustls, ring), on when `gateway.tls` names a certificate.
//!
//! ALPN offers `h2` and `http/1.1`, so browsers and gRPC-web-less HTTP/2 clients negotiate
//! HTTP/2 while plain HTTP/1.1 clients keep working; without TLS the listener serves HTTP/1.1
//! and h2c (prior knowledge) on the same port.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use weft_mesh::config::TlsConfig;

/// Time a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for `config`, or `None` when TLS is off.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    if config.cert_file.is_empty() {
        return Ok(None);
    }
    let certs = CertificateDer::pem_file_iter(&config.cert_file)
        .with_context(|| format!("gateway.tls.cert_file: cannot read {}", config.cert_file))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("gateway.tls.cert_file: {} is not PEM", config.cert_file))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "gateway.tls.cert_file: {} holds no certificate",
        config.cert_file
    );
    let key = PrivateKeyDer::from_pem_file(&config.key_file).with_context(|| {
        format!(
            "gateway.tls.key_file: no private key in {}",
            config.key_file
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("gateway.tls: no usable TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("gateway.tls: the key does not match the certificate")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}
