//! Token verification on every process, against the token issuer's published keys.
//!
//! [`JwtVerifier`] checks Ed25519 access and service tokens offline with keys fetched from the
//! contract's method that returns `weft.api.v1.Jwks` (see [`crate::contract`]), over the
//! upstream that serves it: cached, refreshed when a token names an unknown `kid` (a rotation),
//! and at most once per `jwt.jwks_min_refresh_interval_ms`, so a flood of forged `kid`s cannot
//! turn into a flood of fetches. [`AuthLayer`] runs it before any handler: it reads the method's
//! declared access (`weft.api.v1.access` in the proto), refuses what the caller may not do, and
//! puts the verified [`Principal`] into the request's extensions for the handler's owner checks.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::Request;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;
use weft_mesh_proto::Jwks;

use crate::{
    client::{ClientError, MeshChannel},
    config::{JwtConfig, MeshConfig},
    contract::{self, Access},
};

/// The claims of every Weft token, access and service alike.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience: `jwt.audience` for access tokens, the callee's name for service tokens.
    pub aud: String,
    /// Subject: a user id, or `service:<name>`.
    pub sub: String,
    /// `user`, `admin` or `service`.
    pub role: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
}

/// What a caller is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An ordinary signed-in user.
    User,
    /// An administrator.
    Admin,
    /// Another service of the mesh.
    Service,
}

impl Role {
    /// The `role` claim's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    fn parse(claim: &str) -> Option<Role> {
        match claim {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// The verified caller of a request, found in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject: a user id, or `service:<name>`.
    pub subject: String,
    /// The caller's role.
    pub role: Role,
}

impl Principal {
    /// The principal of a request that passed [`AuthLayer`]; UNAUTHENTICATED when there is none.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| Status::unauthenticated("this method needs a bearer token"))
    }

    /// Whether the caller is an administrator.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may act on resources owned by `owner`: the owner or an admin.
    pub fn may_access(&self, owner: &str) -> bool {
        self.is_admin() || self.subject == owner
    }
}

/// Why a token was refused. The messages are safe to return to callers.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a well-formed JWT, or signed with another algorithm.
    #[error("malformed token or unsupported algorithm")]
    Malformed,
    /// No `kid`, or a `kid` the auth service does not publish.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// Signature, issuer, audience or lifetime check failed.
    #[error("token rejected: {0}")]
    Rejected(&'static str),
    /// The keys could not be fetched.
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

/// Why a call was refused before its handler: the one answer of the gateway and the services.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` header.
    #[error("missing bearer token")]
    MissingToken,
    /// The token did not verify.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// A valid token whose role may not call the method.
    #[error("{}", match .0 {
        Access::Admin => "this method is for administrators",
        _ => "this method is internal to the mesh",
    })]
    Forbidden(Access),
    /// A method the process's contract does not describe, so no access is declared for it.
    #[error("`{0}` is not in this process's contract")]
    OutsideContract(String),
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Invalid(VerifyError::KeysUnavailable) => {
                Status::unavailable("cannot verify tokens: signing keys unavailable")
            }
            AuthError::Forbidden(_) => Status::permission_denied(err.to_string()),
            AuthError::OutsideContract(_) => Status::unimplemented(err.to_string()),
            err => Status::unauthenticated(err.to_string()),
        }
    }
}

/// The gRPC path of the method serving the token keys (`jwt.keys_method`, or the contract's
/// method returning `weft.api.v1.Jwks`), and the name of the upstream that serves it; `None`
/// when there is no such method or no upstream serves it.
pub fn key_method(config: &MeshConfig) -> Option<(String, &str)> {
    let path = if config.jwt.keys_method.is_empty() {
        contract::current().jwks_path()?.to_owned()
    } else {
        format!("/{}", config.jwt.keys_method)
    };
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let (upstream, _) = config.upstream_serving(service)?;
    Some((path, upstream))
}

/// Where a verifier fetches its keys: a channel and the method's gRPC path.
#[derive(Clone)]
pub struct KeySource {
    channel: MeshChannel,
    path: http::uri::PathAndQuery,
}

impl KeySource {
    /// Keys from the method at `path` (`/package.Service/Method`) over `channel`.
    pub fn new(channel: MeshChannel, path: &str) -> Result<Self, http::uri::InvalidUri> {
        Ok(Self {
            channel,
            path: path.parse()?,
        })
    }

    /// The contract's key method ([`contract::Contract::jwks_path`]) over a channel to the
    /// upstream that serves it; `None` when the contract or the config has none.
    pub fn from_config(config: &MeshConfig) -> Result<Option<Self>, ClientError> {
        let Some((path, upstream)) = key_method(config) else {
            return Ok(None);
        };
        let channel = crate::client::channel(config, upstream)?;
        Ok(Self::new(channel, &path).ok())
    }

    async fn fetch(&self) -> Result<Jwks, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("key source not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<(), Jwks>::default();
        let reply = grpc
            .unary(tonic::Request::new(()), self.path.clone(), codec)
            .await?;
        Ok(reply.into_inner())
    }
}

/// Verifies Weft tokens with the auth service's public keys.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    /// `None`: no process of the mesh publishes keys, so no token verifies.
    source: Option<KeySource>,
    validation: Validation,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Single flight for JWKS fetches; an async mutex because the fetch is awaited under it.
    refresh: tokio::sync::Mutex<FetchBackoff>,
}

/// When the next JWKS fetch may start: at most one per `min_interval` after a success, so
/// a flood of forged `kid`s cannot become a flood of fetches; after failures, sooner at first
/// (the issuer may just be starting) but backing off up to `min_interval`, so an issuer that is
/// down is not asked again by every request that arrives meanwhile.
#[derive(Debug)]
struct FetchBackoff {
    min_interval: Duration,
    last_attempt: Option<Instant>,
    failures: u32,
}

impl FetchBackoff {
    /// The first retry after a failure; each further failure doubles it, up to `min_interval`.
    const FIRST_RETRY: Duration = Duration::from_millis(100);

    fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_attempt: None,
            failures: 0,
        }
    }

    /// `Ok(true)`: fetch now; `Ok(false)`: fetched recently, use the keys held;
    /// `Err`: the last fetch failed and its back-off has not run out.
    fn may_fetch(&self, now: Instant) -> Result<bool, VerifyError> {
        let Some(last) = self.last_attempt else {
            return Ok(true);
        };
        let wait = match self.failures {
            0 => self.min_interval,
            n => Self::FIRST_RETRY
                .saturating_mul(1 << (n - 1).min(16))
                .min(self.min_interval),
        };
        match (now.saturating_duration_since(last) >= wait, self.failures) {
            (true, _) => Ok(true),
            (false, 0) => Ok(false),
            (false, _) => Err(VerifyError::KeysUnavailable),
        }
    }

    fn record(&mut self, now: Instant, succeeded: bool) {
        self.last_attempt = Some(now);
        self.failures = if succeeded {
            0
        } else {
            self.failures.saturating_add(1)
        };
    }
}

// === impl JwtVerifier ===

impl JwtVerifier {
    /// A verifier that fetches keys from `source` and accepts tokens whose `aud` is the mesh's
    /// audience or `service` (the service tokens addressed to this service).
    pub fn new(source: Option<KeySource>, config: &JwtConfig, service: &str) -> Self {
        crate::jwt_crypto::install();
        if source.is_none() {
            tracing::warn!(
                "no upstream serves the contract's key method (returning weft.api.v1.Jwks): \
                 tokens cannot be verified"
            );
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[config.audience.as_str(), service]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = config.leeway_secs;
        Self {
            inner: Arc::new(VerifierInner {
                source,
                validation,
                keys: RwLock::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(FetchBackoff::new(Duration::from_millis(
                    config.jwks_min_refresh_interval_ms,
                ))),
            }),
        }
    }

    /// Verifies `token` and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::Malformed);
        }
        let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
        let key = match self.cached_key(&kid) {
            Some(key) => key,
            None => {
                self.refresh_keys().await?;
                self.cached_key(&kid).ok_or(VerifyError::UnknownKey)?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.inner.validation)
            .map_err(|e| VerifyError::Rejected(reject_reason(&e)))?;
        let role = Role::parse(&data.claims.role).ok_or(VerifyError::Rejected("unknown role"))?;
        Ok(Principal {
            subject: data.claims.sub,
            role,
        })
    }

    fn cached_key(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.get(kid).cloned()
    }

    async fn refresh_keys(&self) -> Result<(), VerifyError> {
        let mut backoff = self.inner.refresh.lock().await;
        if !backoff.may_fetch(Instant::now())? {
            // Fetched recently (perhaps by the caller we waited behind): use what we have.
            return Ok(());
        }
        let source = self
            .inner
            .source
            .as_ref()
            .ok_or(VerifyError::KeysUnavailable)?;
        let fetched = source.fetch().await;
        backoff.record(Instant::now(), fetched.is_ok());
        let jwks = fetched.map_err(|status| {
            tracing::warn!(code = ?status.code(), message = status.message(), "JWKS fetch failed");
            VerifyError::KeysUnavailable
        })?;
        let keys = decoding_keys(&jwks);
        tracing::debug!(keys = keys.len(), "JWKS refreshed");
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }
}

/// Turns a JWK Set into decoding keys, skipping entries that are not Ed25519 signing keys.
pub fn decoding_keys(jwks: &Jwks) -> HashMap<String, DecodingKey> {
    use base64::Engine as _;
    jwks.keys
        .iter()
        .filter(|k| k.kty == "OKP" && k.crv == "Ed25519" && k.alg == "EdDSA")
        // The verifier slices 32 bytes: anything else must not reach it.
        .filter(|k| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&k.x)
                .is_ok_and(|x| x.len() == 32)
        })
        .filter_map(|k| Some((k.kid.clone(), DecodingKey::from_ed_components(&k.x).ok()?)))
        .collect()
}

fn reject_reason(err: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::MissingRequiredClaim(_) => "missing claim",
        _ => "invalid",
    }
}

// === AuthLayer ===

/// Server layer enforcing each method's declared access before its handler runs.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: JwtVerifier,
}

impl AuthLayer {
    /// A layer that verifies with `verifier`.
    pub fn new(verifier: JwtVerifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// Service made by [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: JwtVerifier,
}

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let access = match contract::current().access(path) {
            Some(access) => access,
            // Health and reflection are outside the contract and open to probes.
            None if crate::grpc::is_infrastructure(path) => Access::Public,
            // A method nobody declared an access for is refused, not served to anyone: a
            // service whose descriptors did not reach the contract fails closed.
            None => {
                let refused = Status::from(AuthError::OutsideContract(path.to_owned()));
                let refused = refused.into_http();
                return Box::pin(async move { Ok(refused) });
            }
        };
        if access == Access::Public {
            return Box::pin(self.inner.call(req));
        }
        // The readied service goes with the request; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            match verifier.authorize(access, req.headers()).await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(err) => Ok(Status::from(err).into_http()),
            }
        })
    }
}

impl JwtVerifier {
    /// The caller of a method declared `access`, from the request's bearer token: the one
    /// check of the gateway and every service (PUBLIC methods are not checked at all).
    pub async fn authorize(
        &self,
        access: Access,
        headers: &http::HeaderMap,
    ) -> Result<Principal, AuthError> {
        let token = bearer_token(headers).ok_or(AuthError::MissingToken)?;
        let principal = self.verify(token).await?;
        let allowed = match access {
            Access::Admin => principal.role == Role::Admin,
            Access::Service => principal.role == Role::Service,
            _ => true,
        };
        if !allowed {
            return Err(AuthError::Forbidden(access));
        }
        Ok(principal)
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn jwks_entries_of_the_wrong_shape_are_skipped() {
        use weft_mesh_proto::Jwk;
        let good = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
            kid: "k1".into(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
        };
        let short = Jwk {
            x: "AAAA".into(),
            kid: "k2".into(),
            ..good.clone()
        };
        let rsa = Jwk {
            kty: "RSA".into(),
            kid: "k3".into(),
            ..good.clone()
        };
        let keys = decoding_keys(&Jwks {
            keys: vec![good, short, rsa],
        });
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["k1"]);
    }

    #[test]
    fn a_failed_key_fetch_backs_off_and_a_success_waits_the_full_interval() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut backoff = FetchBackoff::new(Duration::from_millis(5000));
        assert!(matches!(backoff.may_fetch(at(0)), Ok(true)));
        backoff.record(at(0), false);
        // Callers arriving during the back-off are told at once that the keys are unavailable,
        // without a fetch of their own.
        assert!(matches!(
            backoff.may_fetch(at(50)),
            Err(VerifyError::KeysUnavailable)
        ));
        assert!(matches!(backoff.may_fetch(at(100)), Ok(true)));
        backoff.record(at(100), false);
        assert!(
            backoff.may_fetch(at(250)).is_err(),
            "the second retry waits 200 ms"
        );
        assert!(matches!(backoff.may_fetch(at(300)), Ok(true)));
        for n in 0..20 {
            backoff.record(at(300 + n), false);
        }
        assert!(
            backoff.may_fetch(at(319 + 4999)).is_err(),
            "capped at the interval"
        );
        assert!(matches!(backoff.may_fetch(at(319 + 5000)), Ok(true)));
        backoff.record(at(6000), true);
        assert!(matches!(backoff.may_fetch(at(6100)), Ok(false)));
        assert!(matches!(backoff.may_fetch(at(11000)), Ok(true)));
    }

    #[tokio::test]
    async fn a_method_outside_the_contract_is_refused_and_health_stays_open() {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let verifier = JwtVerifier::new(None, &JwtConfig::default(), "weft-test");
        let mut service = AuthLayer::new(verifier).layer(inner);
        let call = |path: &str| Request::builder().uri(path).body(()).unwrap();

        // A method no contract describes, as a service whose descriptors were left out.
        let refused = service.call(call("/weft.nowhere.v1.Elsewhere/Call")).await;
        let status = Status::from_header_map(refused.unwrap().headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("not in this process's contract"));

        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let answer = service.call(call(open)).await.unwrap();
            assert!(
                Status::from_header_map(answer.headers()).is_none(),
                "{open}"
            );
        }
    }
}
