//! mTLS inside the mesh (`[mtls]`, `[callers]`): every service refuses a client without a
//! certificate of the mesh CA (none, another CA's, an expired one); `[callers]` decides by
//! the client's identity, whatever token the call carries; a rotated certificate
//! (`weft certs --rotate`) is picked up without a restart and without failing calls in flight.
//! The meshes here run with `MeshOptions::mtls`: a CA and certificates made for each.

#[macro_use]
mod common;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use weft_mesh::{
    config::MtlsConfig,
    mtls::{Identity, MeshTls, issue},
};

const SERVICES: [&str; 3] = ["auth", "user", "order"];

/// The rules of mesh-config/local.toml.
const CALLERS: &str = r#"
[callers]
"weft.user.v1.UserService/CreateUser" = ["auth"]
"weft.user.v1.UserService/GetUser" = ["gateway", "order", "auth"]
"weft.user.v1.UserService/*" = ["gateway"]
"weft.order.v1.OrderService/*" = ["gateway"]
"weft.auth.v1.AuthService/*" = ["gateway"]
"weft.auth.v1.AuthService/Register" = ["gateway", "weft"]
"weft.auth.v1.AuthService/GetJwks" = ["gateway", "auth", "user", "order"]
"#;

async fn mtls_mesh(gateway: bool, toml: &str) -> TestMesh {
    TestMesh::start_with(
        Backend::Sqlite,
        MeshOptions {
            mtls: true,
            gateway,
            toml: toml.to_string(),
            ..Default::default()
        },
    )
    .await
}

/// The mesh's `[mtls]`, with certificates taken from `cert_dir` instead.
fn mtls_of(mesh: &TestMesh, cert_dir: &Path) -> MtlsConfig {
    let certs = mesh.dir().join("certs");
    MtlsConfig {
        ca_file: certs.join("ca.pem").display().to_string(),
        ca_key_file: certs.join("ca.key").display().to_string(),
        cert_dir: cert_dir.display().to_string(),
        ..MtlsConfig::default()
    }
}

/// Writes `pem` as the certificate of `name` in `dir`, and loads it as a client identity.
fn identity_from(mesh: &TestMesh, dir: &Path, name: &str, pem: &issue::Pem) -> MeshTls {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), &pem.cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &pem.key).unwrap();
    MeshTls::load(&mtls_of(mesh, dir), name).expect("the test's certificate loads")
}

/// A gRPC health check of `service`, presenting `identity`.
async fn health_as(
    mesh: &TestMesh,
    service: &str,
    identity: &MeshTls,
) -> Result<(), tonic::Status> {
    let mut client = HealthClient::new(mesh.mtls_connection(service, identity));
    let request = HealthCheckRequest::default();
    match tokio::time::timeout(Duration::from_secs(5), client.check(request)).await {
        Ok(answer) => answer.map(drop),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in 5 s")),
    }
}

/// Accepts any server certificate: the client below is refused for its own lack of one.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether a TLS client presenting no certificate gets an HTTP/2 answer from `addr`: it
/// sends the connection preface and a SETTINGS frame, and reads.
async fn answers_without_certificate(addr: std::net::SocketAddr) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(mut tls) = connector
        .connect(ServerName::try_from("user").unwrap(), tcp)
        .await
    else {
        return false;
    };
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    if tls.write_all(preface).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_refuses_clients_without_a_certificate_of_the_mesh_ca() {
    let mesh = mtls_mesh(false, "").await;
    let certs = mesh.dir().join("certs");
    let ca = issue::Pem {
        cert: std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        key: std::fs::read_to_string(certs.join("ca.key")).unwrap(),
    };
    let mtls = mtls_of(&mesh, &certs);
    let gateway = Identity::of(&mtls, "gateway");
    // A certificate of the mesh CA: answered.
    let good = MeshTls::load(&mtls, "gateway").unwrap();
    // The same identity from another CA.
    let other_ca = issue::new_ca("weft.local", Duration::from_secs(3600)).unwrap();
    let foreign = identity_from(
        &mesh,
        &mesh.dir().join("foreign"),
        "gateway",
        &issue::leaf(&other_ca, &gateway, Duration::from_secs(3600)).unwrap(),
    );
    // The mesh CA's, expired an hour ago.
    let now = time::OffsetDateTime::now_utc();
    let expired = identity_from(
        &mesh,
        &mesh.dir().join("expired"),
        "gateway",
        &issue::leaf_between(
            &ca,
            &gateway,
            now - time::Duration::days(2),
            now - time::Duration::hours(1),
        )
        .unwrap(),
    );
    assert_eq!(expired.expiry(), weft_mesh::mtls::Expiry::Expired);

    for service in SERVICES {
        health_as(&mesh, service, &good)
            .await
            .unwrap_or_else(|s| panic!("{service} refused the mesh's own certificate: {s:?}"));
        for (what, identity) in [("another CA's", &foreign), ("an expired", &expired)] {
            let refused = health_as(&mesh, service, identity)
                .await
                .expect_err(&format!(
                    "{service} answered a client with {what} certificate"
                ));
            assert_eq!(
                refused.code(),
                Code::Unavailable,
                "{service}, {what}: {refused:?}"
            );
        }
        assert!(
            !answers_without_certificate(mesh.addr(service)).await,
            "{service} answered a TLS client without a certificate"
        );
        // Plain text (the testkit's tonic channel): no answer either.
        let plain = tokio::time::timeout(
            Duration::from_secs(5),
            HealthClient::new(mesh.channel(service)).check(HealthCheckRequest::default()),
        )
        .await;
        assert!(
            !matches!(plain, Ok(Ok(_))),
            "{service} answered a plain-text client"
        );
    }
    mesh.assert_no_panics();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_decide_by_identity_whatever_the_token() {
    let mesh = mtls_mesh(true, CALLERS).await;
    // The whole mesh works over mTLS: sign-up through the gateway (gateway -> auth -> user,
    // the JWKS fetches included), then a profile read.
    let gw = common::rest::Gateway::of(&mesh);
    let tokens = gw
        .post("/v1/auth/register")
        .json(&json!({
            "email": "mtls@example.com",
            "password": "password-123",
            "displayName": "mTLS"
        }))
        .send()
        .await
        .ok();
    let token = tokens["accessToken"].as_str().unwrap().to_string();
    let me = gw.get("/v1/me").bearer(&token).send().await.ok();
    assert_eq!(me["email"], "mtls@example.com");
    let user_id = me["id"].as_str().unwrap().to_string();

    // A valid service token of weft-auth, for weft-user.
    let now = unix_now();
    let service_token = mesh.sign_token(&Claims {
        iss: ISSUER.into(),
        aud: "weft-user".into(),
        sub: "service:weft-auth".into(),
        role: "service".into(),
        iat: now,
        exp: now + 60,
        jti: tag(),
    });
    let create = |key: &str| {
        bearer(
            &service_token,
            CreateUserRequest {
                email: format!("{key}@example.com"),
                display_name: "Direct".into(),
                role: Role::User as i32,
                creation_key: key.into(),
            },
        )
    };
    use weft_proto::user::user_service_client::UserServiceClient;
    let as_gateway = mesh.identity("gateway");
    let mut user_as_gateway = UserServiceClient::new(mesh.mtls_connection("user", &as_gateway));
    // The gateway's identity may not create profiles, whatever token it carries.
    err(
        user_as_gateway.create_user(create("g1")).await,
        Code::PermissionDenied,
        &["`gateway` may not call weft.user.v1.UserService/CreateUser"],
    );
    // Its allowed methods work.
    let got = ok(user_as_gateway
        .get_user(bearer(
            &token,
            GetUserRequest {
                id: user_id.clone(),
            },
        ))
        .await);
    assert_eq!(got.email, "mtls@example.com");
    ok(user_as_gateway
        .get_me(bearer(&token, GetMeRequest {}))
        .await);
    // weft-order's identity may read a profile, but not list them (UserService/* is the
    // gateway's).
    let as_order = mesh.identity("order");
    let mut user_as_order = UserServiceClient::new(mesh.mtls_connection("user", &as_order));
    ok(user_as_order
        .get_user(bearer(&token, GetUserRequest { id: user_id }))
        .await);
    err(
        user_as_order.get_me(bearer(&token, GetMeRequest {})).await,
        Code::PermissionDenied,
        &["`order` may not call"],
    );
    // weft-auth's identity, with the same token, may create one.
    let as_auth = mesh.identity("auth");
    let mut user_as_auth = UserServiceClient::new(mesh.mtls_connection("user", &as_auth));
    ok(user_as_auth.create_user(create("a1")).await);
    // Health stays open to every identity of the mesh.
    health_as(&mesh, "order", &as_order).await.unwrap();
    mesh.assert_no_panics();
    mesh.stop().await;
}

/// The certificate `server` presents to a new connection from `identity`.
async fn served_certificate(mesh: &TestMesh, server: &str, identity: &MeshTls) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(mesh.addr(server))
        .await
        .unwrap();
    let tls = identity.connect(tcp, server).await.expect("handshake");
    let (_, connection) = tls.get_ref();
    connection.peer_certificates().unwrap()[0].to_vec()
}

fn certificate_file(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_without_a_restart_or_a_failed_call() {
    let mesh = mtls_mesh(false, "").await;
    let user_cert = mesh.dir().join("certs").join("user.pem");
    let client = mesh.identity("gateway");
    client.spawn_reload();
    let before = served_certificate(&mesh, "user", &client).await;
    assert_eq!(before, certificate_file(&user_cert));

    // A stream of calls on one connection, and a Watch stream held open, across the rotation.
    let connection = mesh.mtls_connection("user", &client);
    let mut watch = HealthClient::new(connection.clone())
        .watch(HealthCheckRequest::default())
        .await
        .expect("Watch opens")
        .into_inner();
    watch
        .message()
        .await
        .expect("a first status")
        .expect("a status");
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let caller = tokio::spawn({
        let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
        let mut health = HealthClient::new(connection);
        async move {
            while !stop.load(Ordering::Relaxed) {
                match health.check(HealthCheckRequest::default()).await {
                    Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        eprintln!("a call failed during the rotation: {status:?}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let weft = weft_testkit::binary("weft");
    let out = tokio::process::Command::new(&weft)
        .args(["certs", "--rotate", "--config"])
        .arg(mesh.config_path())
        .current_dir(mesh.dir())
        .output()
        .await
        .expect("weft certs runs");
    assert!(
        out.status.success(),
        "weft certs --rotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = certificate_file(&user_cert);
    assert_ne!(
        rotated, before,
        "weft certs --rotate wrote no new certificate"
    );

    // New connections get the new certificate within a few reload intervals (200 ms).
    let started = Instant::now();
    loop {
        if served_certificate(&mesh, "user", &client).await == rotated {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "weft-user still presents its old certificate 10 s after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "calls failed across the rotation"
    );
    assert!(calls.load(Ordering::Relaxed) > 20, "too few calls made");
    // The Watch stream opened before the rotation is still open (no error, no end).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.message())
            .await
            .is_err(),
        "the Watch stream opened before the rotation ended"
    );
    // The processes were not restarted, and said they reloaded.
    assert!(mesh.is_running("user"));
    assert!(
        mesh.logs("user").contains("mTLS certificate reloaded"),
        "{}",
        mesh.logs("user")
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_certificate_a_service_refuses_to_start_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.toml");
    let certs = dir.path().join("certs");
    std::fs::write(
        &config,
        format!(
            "[services.order]\nlisten = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}\"\n\
             [mtls]\nca_file = {:?}\ncert_dir = {:?}\n",
            dir.path().join("order.db").display(),
            certs.join("ca.pem").display().to_string(),
            certs.display().to_string(),
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(weft_testkit::binary("weft-order"))
            .arg("--config")
            .arg(&config)
            .output(),
    )
    .await
    .expect("weft-order exits")
    .expect("weft-order runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a certificate");
    for needle in ["ca.pem", "weft certs", "mode = \"off\""] {
        assert!(
            stderr.contains(needle),
            "the error does not say {needle}: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_text_opt_out_is_logged_at_every_start() {
    // The testkit's meshes opt out unless asked (`[mtls] mode = "off"`).
    let mesh = TestMesh::start(Backend::Sqlite).await;
    for service in SERVICES {
        assert!(
            mesh.logs(service).contains("mTLS is off"),
            "{service} did not warn: {}",
            mesh.logs(service)
        );
    }
    mesh.restart("user").await;
    assert_eq!(
        mesh.logs("user").matches("mTLS is off").count(),
        2,
        "{}",
        mesh.logs("user")
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_rule_for_a_method_the_contract_lacks_stops_the_service() {
    let mesh = TestMesh::start_with(
        Backend::Sqlite,
        MeshOptions {
            toml: "[callers]\n\"weft.user.v1.UserService/CreateUsr\" = [\"auth\"]\n".into(),
            ..Default::default()
        },
    );
    let started = tokio::time::timeout(Duration::from_secs(60), mesh);
    // The kit panics when a service exits during start-up, naming its log.
    let panic = match tokio::spawn(started).await {
        Ok(_) => panic!("the mesh started with a misspelt [callers] method"),
        Err(panic) => panic,
    };
    let message = panic
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        message.contains("has no method CreateUsr"),
        "the error does not name the method: {message}"
    );
}
