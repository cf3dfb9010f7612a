//! weft-gateway over TLS (`[gateway.tls] cert_file/key_file`, PEM): a self-signed certificate
//! made for the test with rcgen, a rustls client that trusts only it, HTTP/2 and HTTP/1.1
//! chosen by ALPN, and plain HTTP refused on the TLS port without harming the gateway.

#[macro_use]
mod common;

use std::{sync::Arc, time::Duration};

use common::{
    rest::{Connection, Gateway, Reply, grpc, raw_exchange},
    *,
};
use serde_json::json;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName},
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_with_alpn() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen makes a self-signed certificate");
    let cert_file = dir.path().join("gateway.crt.pem");
    let key_file = dir.path().join("gateway.key.pem");
    std::fs::write(&cert_file, certified.cert.pem()).expect("cannot write the certificate");
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("cannot write the key");
    let toml = format!(
        "[gateway.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let mesh = gateway_mesh(Backend::Sqlite, &toml).await;
    let gw = Gateway::of(&mesh);
    assert!(
        mesh.gateway_url().starts_with("https://"),
        "{}",
        mesh.gateway_url()
    );
    let cert = certified.cert.der().clone();

    // HTTP/2 by ALPN: wait until ready (the harness only saw the port open), then call.
    let mut h2 = tls_connection(&gw, &cert, &[b"h2", b"http/1.1"], Some(b"h2")).await;
    let mut ready = h2.send(&gw.get("/readyz")).await;
    for _ in 0..100 {
        if ready.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = h2.send(&gw.get("/readyz")).await;
    }
    assert_eq!(ready.ok()["status"], "ready");
    let products = h2.send(&gw.get("/v1/products")).await;
    assert_eq!(products.version, http::Version::HTTP_2);
    assert_eq!(products.ok()["products"], json!([]));
    h2.send(&gw.get("/v1/me"))
        .await
        .error(401, grpc::UNAUTHENTICATED, &[]);
    let tokens = h2
        .send(&gw.post("/v1/auth/register").json(&json!({
            "email": "tls@example.com",
            "password": "password-123",
            "displayName": "TLS"
        })))
        .await
        .ok();
    let token = tokens["accessToken"].as_str().unwrap().to_string();
    let me = h2.send(&gw.get("/v1/me").bearer(&token)).await.ok();
    assert_eq!(me["email"], "tls@example.com");

    // HTTP/1.1 by ALPN, kept alive.
    let mut h1 = tls_connection(&gw, &cert, &[b"http/1.1"], Some(b"http/1.1")).await;
    for _ in 0..3 {
        let reply: Reply = h1.send(&gw.get("/v1/me").bearer(&token)).await;
        assert_eq!(reply.version, http::Version::HTTP_11);
        reply.ok();
    }
    // No ALPN at all: HTTP/1.1.
    let mut plain_alpn = tls_connection(&gw, &cert, &[], None).await;
    plain_alpn.send(&gw.get("/healthz")).await.ok();

    // A client that does not trust the certificate cannot connect.
    let untrusted = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("another certificate");
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let refused = connector(untrusted.cert.der(), &[b"h2"])
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await;
    assert!(refused.is_err(), "a certificate the client does not trust");

    // Plain HTTP on the TLS port gets no HTTP answer, and the gateway serves on.
    let raw = raw_exchange(
        gw.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(raw.status, 200, "plain HTTP on the TLS port: {raw:?}");
    assert!(mesh.gateway_running());
    let mut again = tls_connection(&gw, &cert, &[b"h2"], Some(b"h2")).await;
    again.send(&gw.get("/healthz")).await.ok();

    mesh.assert_no_panics();
    mesh.stop().await;
}

fn connector(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).expect("a valid certificate");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to the gateway offering `alpn`, checked to have negotiated `expected`.
async fn tls_connection(
    gw: &Gateway,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
    expected: Option<&[u8]>,
) -> Connection {
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("cannot connect to the gateway");
    let tls = connector(cert, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .expect("TLS handshake with the gateway");
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(
        negotiated.as_deref(),
        expected,
        "ALPN: offered {:?}",
        alpn.iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>()
    );
    match negotiated.as_deref() {
        Some(b"h2") => Connection::h2_over_tls(tls).await,
        _ => Connection::http1(tls).await,
    }
}
