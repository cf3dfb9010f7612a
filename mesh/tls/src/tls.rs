//! The process's own certificate and the rustls configs built from it, reloaded from disk.
//!
//! [`MeshTls::load`] reads the mesh CA (`mtls.ca_file`) and the process's certificate and key
//! (`<cert_dir>/<name>.pem`, `.key`), and builds a server config that requires a client
//! certificate chaining to the CA, and client configs that present the process's certificate
//! and accept only a server certificate of the CA for the identity they expect. TLS 1.3 only,
//! ALPN `h2`, ring.
//!
//! [`MeshTls::spawn_reload`] polls the files' modification times every
//! `mtls.reload_interval_ms` (on a blocking thread) and swaps in the new configs when they
//! change and load; new handshakes use them, open connections keep theirs. A file that does not
//! load is logged and the previous certificate stays. [`MeshTls::seconds_to_expiry`] feeds the
//! gauge `weft_mesh_certificate_expiry_seconds` (registered by the server stack);
//! [`MeshTls::expiry`] says whether it is near (logs, readiness) or past (readiness fails).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::net::TcpStream;
use tokio_rustls::{
    TlsAcceptor, TlsConnector,
    client::TlsStream as ClientStream,
    rustls::{
        self, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
        server::{ParsedCertificate, WebPkiClientVerifier},
    },
    server::TlsStream as ServerStream,
};
use weft_core::config::MtlsConfig;

use crate::identity::{Identity, PeerIdentity};

/// A certificate, key or CA that cannot be used, or a handshake that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or unreadable.
    #[error(
        "cannot read {path}: {reason} (run `weft certs` to create the mesh's certificates, or \
         opt out of mTLS with `[mtls] mode = \"off\"`)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificates or key.
    #[error("cannot use the certificate: {0}")]
    Config(String),
    /// The certificate is not the process's own identity.
    #[error("{path} is the certificate of {found}, not of {expected}")]
    WrongIdentity {
        /// The file.
        path: PathBuf,
        /// The identity found.
        found: String,
        /// The identity expected.
        expected: String,
    },
    /// The handshake failed or took too long.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

/// How close the process's certificate is to its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// More than `mtls.expiry_warning_secs` left.
    Fine {
        /// Seconds left.
        secs: i64,
    },
    /// Expiring within `mtls.expiry_warning_secs`.
    Near {
        /// Seconds left.
        secs: i64,
    },
    /// Expired: handshakes with it fail.
    Expired,
}

/// The process's mTLS material; cheap to clone (clones share it, and reloads).
#[derive(Clone)]
pub struct MeshTls {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    mtls: MtlsConfig,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
}

/// One load of the files.
struct Loaded {
    server: Arc<ServerConfig>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Expiry of the certificate, seconds since the epoch.
    not_after: i64,
    /// Serial number of the certificate, hex.
    serial: String,
    stamps: Stamps,
}

/// The modification times and sizes of the three files, to see a change.
type Stamps = [Option<(SystemTime, u64)>; 3];

impl MeshTls {
    /// Loads the CA and the certificate of the process `name` as `mtls` places them. Blocking
    /// file IO: call it at start, or on a blocking thread.
    pub fn load(mtls: &MtlsConfig, name: &str) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_file = PathBuf::from(&mtls.ca_file);
        let cert_file = mtls.cert_file(name);
        let key_file = mtls.key_file(name);
        let identity = Identity::of(mtls, name);
        let loaded = load_files(&identity, &provider, [&ca_file, &cert_file, &key_file])?;
        let tls = Self {
            inner: Arc::new(Inner {
                identity,
                mtls: mtls.clone(),
                ca_file,
                cert_file,
                key_file,
                provider,
                current: RwLock::new(Arc::new(loaded)),
            }),
        };
        tls.report();
        Ok(tls)
    }

    /// The process's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The serial number of the certificate in use, hex.
    pub fn serial(&self) -> String {
        self.loaded().serial.clone()
    }

    /// How close the certificate in use is to its expiry.
    pub fn expiry(&self) -> Expiry {
        let secs = self.seconds_to_expiry();
        if secs <= 0 {
            Expiry::Expired
        } else if secs < self.inner.mtls.expiry_warning_secs as i64 {
            Expiry::Near { secs }
        } else {
            Expiry::Fine { secs }
        }
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Completes the server side of a handshake on `tcp` within `mtls.handshake_timeout_ms`,
    /// and returns the stream with the client's verified identity.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(ServerStream<TcpStream>, PeerIdentity), TlsError> {
        let acceptor = TlsAcceptor::from(self.loaded().server.clone());
        let timeout = Duration::from_millis(self.inner.mtls.handshake_timeout_ms);
        let stream = tokio::time::timeout(timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| {
                TlsError::Handshake(format!("timed out after {} ms", timeout.as_millis()))
            })?
            .map_err(|e| TlsError::Handshake(e.to_string()))?;
        let peer = {
            let (_, connection) = stream.get_ref();
            let cert = connection
                .peer_certificates()
                .and_then(|certs| certs.first())
                .ok_or_else(|| TlsError::Handshake("no client certificate".into()))?;
            Identity::of_certificate(cert).map_err(|e| TlsError::Handshake(e.to_string()))?
        };
        let own = &self.inner.identity;
        if peer.trust_domain != own.trust_domain || peer.namespace != own.namespace {
            return Err(TlsError::Handshake(format!(
                "the client is {peer}, outside spiffe://{}/ns/{}",
                own.trust_domain, own.namespace
            )));
        }
        Ok((stream, PeerIdentity(peer)))
    }

    /// Completes the client side of a handshake on `tcp` with the process `server` (its
    /// mesh-config name), whose certificate must carry that identity.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        server: &str,
    ) -> Result<ClientStream<TcpStream>, TlsError> {
        let expected = Identity {
            name: server.to_owned(),
            ..self.inner.identity.clone()
        };
        let config = self.client_config(expected)?;
        let name = ServerName::try_from(server.to_owned())
            .unwrap_or_else(|_| ServerName::try_from("mesh.invalid").expect("a valid DNS name"));
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| TlsError::Handshake(e.to_string()))
    }

    /// A client config presenting this process's certificate and accepting only `expected`'s.
    pub fn client_config(&self, expected: Identity) -> Result<ClientConfig, TlsError> {
        let loaded = self.loaded();
        let provider = self.inner.provider.clone();
        let verifier = IdentityVerifier {
            roots: loaded.roots.clone(),
            expected,
            provider: provider.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(loaded.chain.clone(), loaded.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Reloads the files now if they changed since the last load. Blocking file IO.
    /// Returns whether a new certificate is in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let inner = &self.inner;
        let files = [&inner.ca_file, &inner.cert_file, &inner.key_file];
        if stamps(files) == self.loaded().stamps {
            return Ok(false);
        }
        let loaded = load_files(&inner.identity, &inner.provider, files)?;
        let serial = loaded.serial.clone();
        *inner.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        tracing::info!(identity = %inner.identity, serial, "mTLS certificate reloaded");
        self.report();
        Ok(true)
    }

    /// Polls the files every `mtls.reload_interval_ms` and reloads them when they change (see
    /// the module docs); updates the expiry gauge. Runs until the runtime stops.
    pub fn spawn_reload(&self) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        let interval = Duration::from_millis(self.inner.mtls.reload_interval_ms);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let mut state = std::mem::discriminant(&tls.expiry());
            loop {
                ticker.tick().await;
                // Crossing into "near" or "expired" is logged once, when it happens.
                let now = std::mem::discriminant(&tls.expiry());
                if now != state {
                    state = now;
                    tls.report();
                }
                let worker = tls.clone();
                match tokio::task::spawn_blocking(move || worker.reload_if_changed()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => tracing::warn!(
                        error = %err,
                        "the changed mTLS certificate files do not load; keeping the current certificate"
                    ),
                    Err(_) => {}
                }
            }
        })
    }

    /// Logs the certificate's expiry when near or past.
    fn report(&self) {
        let identity = &self.inner.identity;
        match self.expiry() {
            Expiry::Fine { .. } => {}
            Expiry::Near { secs } => tracing::warn!(
                %identity,
                expires_in_secs = secs,
                "the mTLS certificate expires soon: run `weft certs --rotate`"
            ),
            Expiry::Expired => tracing::error!(
                %identity,
                "the mTLS certificate has expired: handshakes fail until `weft certs --rotate`"
            ),
        }
    }

    /// Seconds until the certificate in use expires (negative once expired).
    pub fn seconds_to_expiry(&self) -> i64 {
        self.loaded().not_after - now_secs()
    }
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.inner.identity.to_string())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn stamps(files: [&PathBuf; 3]) -> Stamps {
    files.map(|file| {
        std::fs::metadata(file)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("not PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn load_files(
    identity: &Identity,
    provider: &Arc<CryptoProvider>,
    [ca_file, cert_file, key_file]: [&PathBuf; 3],
) -> Result<Loaded, TlsError> {
    let stamps = stamps([ca_file, cert_file, key_file]);
    let mut roots = RootCertStore::empty();
    for ca in certs(ca_file)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            path: ca_file.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let chain = certs(cert_file)?;
    let key_pem = read(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key_file.clone(),
        reason: format!("no private key: {e}"),
    })?;
    let found = Identity::of_certificate(&chain[0]).map_err(|e| TlsError::Pem {
        path: cert_file.clone(),
        reason: e.to_string(),
    })?;
    if &found != identity {
        return Err(TlsError::WrongIdentity {
            path: cert_file.clone(),
            found: found.to_string(),
            expected: identity.to_string(),
        });
    }
    let (not_after, serial) = match x509_parser::parse_x509_certificate(&chain[0]) {
        Ok((_, cert)) => (
            cert.validity().not_after.timestamp(),
            cert.raw_serial_as_string().replace(':', ""),
        ),
        Err(e) => {
            return Err(TlsError::Pem {
                path: cert_file.clone(),
                reason: e.to_string(),
            });
        }
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::Config(format!("{}: {e}", key_file.display())))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        roots,
        chain,
        key,
        not_after,
        serial,
        stamps,
    })
}

// === IdentityVerifier ===

/// Accepts a server certificate that chains to the mesh CA and carries the expected identity
/// (the URI SAN; host names play no part in the mesh).
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found = Identity::of_certificate(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if found != self.expected {
            return Err(rustls::Error::General(format!(
                "the server is {found}, not {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === the process's material ===

static CURRENT: RwLock<Option<MeshTls>> = RwLock::new(None);

/// Makes `tls` the material this process's mesh clients use.
pub fn install(tls: MeshTls) {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(tls);
}

/// The material [`install`]ed, if any.
pub fn current() -> Option<MeshTls> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What a mesh client connection needs to speak mTLS to the process `server`: the material
/// to present, found at each connect (so that reloads apply).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The mesh-config name of the server's process, whose identity its certificate must carry.
    pub server: String,
    /// The material to present; `None` (the mesh's processes): the one [`install`]ed.
    pub own: Option<MeshTls>,
}

impl ClientTls {
    /// To `server`, presenting the process's [`install`]ed material.
    pub fn to(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            own: None,
        }
    }

    /// Completes the client side of a handshake on `tcp`; fails when there is no material to
    /// present (mTLS on, but no certificate: never a fallback to clear text).
    pub async fn connect(&self, tcp: TcpStream) -> Result<ClientStream<TcpStream>, TlsError> {
        let tls = self.own.clone().or_else(current).ok_or_else(|| {
            TlsError::Handshake("mTLS is on, but this process has loaded no certificate".into())
        })?;
        tls.connect(tcp, &self.server).await
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.server == other.server
            && match (&self.own, &other.own) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(&a.inner, &b.inner),
                _ => false,
            }
    }
}
