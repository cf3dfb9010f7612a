//! The mesh's declarative configuration: one TOML file per environment, shared by every process.
//!
//! Values come from, lowest priority first: the built-in defaults documented on each field (and
//! in `mesh-config/README.md`), the file named by `--config` or `WEFT_CONFIG`, and environment
//! variables `WEFT_<SECTION>__<KEY>` (path segments joined by a double underscore, e.g.
//! `WEFT_SERVICES__ORDER__DATABASE_URL=postgres://...`). An environment value is read as a TOML
//! value when it parses as one (`5`, `true`, `["a@b.c"]`) and as a string otherwise.
//!
//! Every problem is reported as a [`ConfigError`] naming the source, the key and the reason;
//! unknown keys are errors, so a typo never silently falls back to a default.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// Environment variable that names the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "WEFT_CONFIG";
/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "WEFT_";

/// A configuration that could not be loaded: where, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({source_name}): {}{reason}", key_prefix(.key))]
pub struct ConfigError {
    /// The file path, or the environment variable, the bad value came from.
    pub source_name: String,
    /// The dotted key path (`services.order.listen`), when known.
    pub key: Option<String>,
    /// What was wrong.
    pub reason: String,
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default()
}

/// The whole mesh's configuration. Each process reads the parts it needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Name of the deployment environment (`local`, `compose`, `production`); default `local`.
    pub environment: String,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// Defaults shared by every gRPC server of the mesh.
    pub server: ServerConfig,
    /// Access and service tokens.
    pub jwt: JwtConfig,
    /// The services of the mesh, by name (`[services.<name>]`), in the order the file declares
    /// them: where each listens and keeps its data. The mesh knows no service but these.
    pub services: IndexMap<String, ServiceConfig>,
    /// How each service is reached by its callers (`[upstreams.<name>]`): endpoints, the gRPC
    /// services it serves, and the policies of calls to it.
    pub upstreams: IndexMap<String, UpstreamConfig>,
    /// The REST gateway.
    pub gateway: GatewayConfig,
    /// Faults to inject (`[[faults]]`, see `fault`); default none.
    pub faults: Vec<crate::policy::FaultRule>,
    /// Mutual TLS between the processes of the mesh (`[mtls]`): on by default.
    pub mtls: MtlsConfig,
    /// Which processes may call which methods (`[callers]`): a full method name
    /// (`"weft.user.v1.UserService/CreateUser"`) or a whole service (`"weft.user.v1.UserService/*"`)
    /// to the process names allowed (`["auth"]`). A method's own entry wins over its service's;
    /// a method with neither is open to every identity of the mesh. Enforced only with mTLS on.
    pub callers: BTreeMap<String, Vec<String>>,
    /// Each service's own settings: the top-level table named after the service (`[order]` for
    /// `[services.order]`), read and checked by that service with [`MeshConfig::settings`].
    #[serde(skip)]
    pub settings: BTreeMap<String, toml::Table>,
}

/// The REST gateway's listener, limits and extra APIs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// HTTP listen address (HTTP/1.1 and h2c; TLS when `tls` is set); default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// HTTP listen address of the operations endpoints (`/metrics`, `/readyz`, `/healthz`);
    /// default `127.0.0.1:0` (a free port on loopback).
    pub admin_listen: SocketAddr,
    /// Whether `listen` also answers `/metrics` and `/readyz` (they are always on
    /// `admin_listen`); default true. Off, they are 404 on the API's listener, as in compose.
    pub public_operations: bool,
    /// Largest request body in bytes (larger: 413); default 1048576 (1 MiB).
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) in bytes (larger: 431); default 16384.
    pub max_header_bytes: usize,
    /// Deepest JSON nesting accepted in a body (deeper: 400); default 64.
    pub max_json_depth: usize,
    /// Time allowed for an upstream call, in ms, unless `route_timeouts` says otherwise; default
    /// 5000. A Weft upstream's `timeout_ms` (for the method) caps it.
    pub route_timeout_ms: u64,
    /// Per-method timeouts in ms, keyed by full method name
    /// (`"weft.order.v1.OrderService/CreateOrder"`).
    pub route_timeouts: std::collections::BTreeMap<String, u64>,
    /// HTTP/2 connections kept to each upstream (calls are spread over them); default 2.
    pub upstream_connections: usize,
    /// Cross-origin requests from browsers; off by default.
    pub cors: CorsConfig,
    /// TLS for the listener; off unless both files are set.
    pub tls: TlsConfig,
    /// API requests in flight at the gateway; more are answered 503 with `Retry-After: 1` at
    /// once (its own endpoints, `/healthz`, `/metrics`, ..., are not counted); default 4096.
    pub max_concurrent_requests: usize,
    /// Rate limits per client and route (`[gateway.rate_limit]`); default: the contract's
    /// limit on the credential routes (see [`crate::policy::RateLimitPolicy`]).
    pub rate_limit: crate::policy::RateLimitPolicy,
    /// Time a client has to send a whole request head (request line and headers), in ms: from
    /// the connection's opening for its first request, and from the first byte of each next
    /// one on an HTTP/1.1 connection; past it the connection is closed. Default 10000.
    pub header_read_timeout_ms: u64,
    /// Time a connection may stay open with no request under way, in ms, since its last
    /// request ended; then it is closed (HTTP/2: GOAWAY). Default 60000.
    pub idle_timeout_ms: u64,
    /// Connections open at once; a connection accepted beyond it is closed at once. Read at
    /// start. Default 10000.
    pub max_connections: usize,
    /// Time allowed to read a request's body, in ms, once its head is in; past it: 408.
    /// Default 30000.
    pub body_read_timeout_ms: u64,
}

/// Cross-origin resource sharing at the gateway.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed (`https://app.example.com`), or `["*"]`; empty (default) turns CORS off.
    pub allowed_origins: Vec<String>,
    /// Seconds a browser may cache a preflight answer; default 0 (the browser's default).
    pub max_age_secs: u64,
}

/// TLS certificate and key for the gateway listener.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain file; empty (default) means plain HTTP.
    pub cert_file: String,
    /// PEM private key file (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// Whether the mesh's gRPC traffic runs over mutual TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Every server asks for a client certificate of the mesh CA; every client presents one.
    #[default]
    On,
    /// Plain HTTP/2 between the processes: only for a network trusted as a whole; logged as a
    /// warning at every start.
    Off,
}

/// Mutual TLS between the processes of the mesh: the CA, where each process's certificate is,
/// and how identities are spelled (`spiffe://<trust_domain>/ns/<namespace>/sa/<name>`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtlsConfig {
    /// `on` (default) or `off` (plain text, an explicit opt-out for a trusted network).
    pub mode: MtlsMode,
    /// The trust domain of the identities; default `weft.local`.
    pub trust_domain: String,
    /// The namespace of the identities; default `default`.
    pub namespace: String,
    /// PEM certificate of the mesh CA; default `certs/ca.pem`.
    pub ca_file: String,
    /// PEM private key of the mesh CA, read only by `weft certs`; default `certs/ca.key`.
    pub ca_key_file: String,
    /// Folder of each process's `<name>.pem` (certificate) and `<name>.key` (private key);
    /// default `certs`.
    pub cert_dir: String,
    /// Time a client has to finish the TLS handshake at a server, in ms; default 10000.
    pub handshake_timeout_ms: u64,
    /// How often the certificate files are checked for changes (then reloaded), in ms;
    /// default 5000.
    pub reload_interval_ms: u64,
    /// A process's certificate expiring within this many seconds is reported (logs, readiness
    /// output); default 604800 (7 days). An expired one makes readiness fail.
    pub expiry_warning_secs: u64,
    /// Lifetime of the certificates `weft certs` issues, in days, 1 to 3650; default 90 (the
    /// CA: 10 years).
    pub cert_validity_days: u64,
}

impl Default for MtlsConfig {
    fn default() -> Self {
        Self {
            mode: MtlsMode::On,
            trust_domain: "weft.local".into(),
            namespace: "default".into(),
            ca_file: "certs/ca.pem".into(),
            ca_key_file: "certs/ca.key".into(),
            cert_dir: "certs".into(),
            handshake_timeout_ms: 10_000,
            reload_interval_ms: 5_000,
            expiry_warning_secs: 7 * 24 * 3600,
            cert_validity_days: 90,
        }
    }
}

impl MtlsConfig {
    /// Whether mTLS is on.
    pub fn is_on(&self) -> bool {
        self.mode == MtlsMode::On
    }

    /// The certificate file of the process `name` (`<cert_dir>/<name>.pem`).
    pub fn cert_file(&self, name: &str) -> PathBuf {
        Path::new(&self.cert_dir).join(format!("{name}.pem"))
    }

    /// The private key file of the process `name` (`<cert_dir>/<name>.key`).
    pub fn key_file(&self, name: &str) -> PathBuf {
        Path::new(&self.cert_dir).join(format!("{name}.key"))
    }

    /// The SPIFFE ID of the process `name`: `spiffe://<trust_domain>/ns/<namespace>/sa/<name>`.
    pub fn spiffe_id(&self, name: &str) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{name}",
            self.trust_domain, self.namespace
        )
    }
}

/// The processes `callers` (a `[callers]` table) allows to call `path`
/// (`/package.Service/Method`): the method's entry, else its service's `/*` entry.
pub fn allowed_callers<'a>(
    callers: &'a BTreeMap<String, Vec<String>>,
    path: &str,
) -> Option<&'a [String]> {
    let method = path.strip_prefix('/').unwrap_or(path);
    if let Some(allowed) = callers.get(method) {
        return Some(allowed);
    }
    let (service, _) = method.split_once('/')?;
    // `service/*` without building that key on every call: it sorts among the keys that start
    // with `service`, which begin at `service` itself.
    callers
        .range::<str, _>((
            std::ops::Bound::Included(service),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(key, _)| key.starts_with(service))
        .find(|(key, _)| key.strip_prefix(service) == Some("/*"))
        .map(|(_, allowed)| allowed.as_slice())
}

/// The name of the gateway's identity in the mesh (`sa/gateway`, a caller in `[callers]`).
pub const GATEWAY_IDENTITY: &str = "gateway";
/// The name of the operator tools' identity (`weft up`'s health checks, `weft admin create`).
pub const OPERATOR_IDENTITY: &str = "weft";

impl MeshConfig {
    /// Every process that has an identity in the mesh: each service, the gateway and the
    /// operator tools (`weft`), the names `weft certs` issues certificates for.
    pub fn identities(&self) -> Vec<String> {
        let mut names: Vec<String> = self.services.keys().cloned().collect();
        names.push(GATEWAY_IDENTITY.into());
        names.push(OPERATOR_IDENTITY.into());
        names
    }

    /// The processes allowed to call `path` (`/package.Service/Method`) by `[callers]`: the
    /// method's entry, else its service's `/*` entry; `None` when neither exists (any identity
    /// of the mesh may call it).
    pub fn allowed_callers(&self, path: &str) -> Option<&[String]> {
        allowed_callers(&self.callers, path)
    }

    fn validate_mtls(&self) -> Result<(), (String, String)> {
        let mtls = &self.mtls;
        let err = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        let label = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        if !label(&mtls.trust_domain) {
            return err(
                "mtls.trust_domain",
                "must be lower-case letters, digits, `-` and `.` (e.g. weft.local)",
            );
        }
        if !label(&mtls.namespace) || mtls.namespace.contains('.') {
            return err(
                "mtls.namespace",
                "must be lower-case letters, digits and `-` (e.g. default)",
            );
        }
        for (key, value) in [
            ("mtls.ca_file", &mtls.ca_file),
            ("mtls.ca_key_file", &mtls.ca_key_file),
            ("mtls.cert_dir", &mtls.cert_dir),
        ] {
            if value.is_empty() {
                return err(key, "must not be empty");
            }
        }
        for (key, value) in [
            ("mtls.handshake_timeout_ms", mtls.handshake_timeout_ms),
            ("mtls.reload_interval_ms", mtls.reload_interval_ms),
            ("mtls.cert_validity_days", mtls.cert_validity_days),
        ] {
            if value == 0 {
                return err(key, "must be at least 1");
            }
        }
        if mtls.cert_validity_days > 3650 {
            return err("mtls.cert_validity_days", "must be at most 3650 (10 years)");
        }
        let known = self.identities();
        for (pattern, callers) in &self.callers {
            let key = format!("callers.\"{pattern}\"");
            let whole_service = pattern
                .strip_suffix("/*")
                .is_some_and(|service| service.contains('.') && !service.contains('/'));
            if !whole_service && !is_full_method(pattern) {
                return err(
                    &key,
                    "name a method in full (`package.Service/Method`) or a whole service \
                     (`package.Service/*`)",
                );
            }
            if let Some(unknown) = callers.iter().find(|c| !known.contains(c)) {
                return err(
                    &key,
                    &format!(
                        "`{unknown}` is not a process of the mesh (one of: {})",
                        known.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Access of a method that declares none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAccess {
    /// No token needed.
    Public,
    /// A valid access token needed.
    #[default]
    Authenticated,
}

/// Logging and tracing settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `json` (default) for one JSON object per line, or `pretty` for humans.
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter used when `RUST_LOG` is unset; default `info`.
    pub log_filter: String,
    /// OTLP collector to export spans to, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318` (HTTP); empty (default): no export, trace ids only in the logs.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` wins.
    pub otlp_endpoint: String,
    /// `grpc` (default) or `http/protobuf`; `OTEL_EXPORTER_OTLP_PROTOCOL` wins.
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces recorded, 0.0 to 1.0 (a caller's decision is followed); default 1.0.
    /// `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` win.
    pub sampler_ratio: f64,
}

/// How spans travel to the OTLP collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Settings every gRPC server of the mesh shares.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// How long in-flight calls may run after SIGINT/SIGTERM before they are dropped; default 10000.
    pub drain_timeout_ms: u64,
    /// Largest gRPC message accepted or sent, in bytes; default 4194304 (4 MiB).
    pub max_message_bytes: usize,
    /// Calls in flight per process; more are refused at once with UNAVAILABLE; default 1024.
    pub max_concurrent_requests: usize,
    /// Calls in flight per method, keyed by full gRPC method name
    /// (`"weft.user.v1.UserService/GetMe" = 64`); more are refused at once with
    /// RESOURCE_EXHAUSTED (429 at the gateway). Each at least 1; default none (only
    /// `max_concurrent_requests` applies).
    pub method_concurrency: std::collections::BTreeMap<String, usize>,
    /// Tokio worker threads; 1 (default) runs a single-threaded runtime, the fastest on few cores.
    pub worker_threads: usize,
    /// Deadline of a call that arrives without `grpc-timeout`, in ms; default 30000.
    pub default_deadline_ms: u64,
    /// Whether server reflection lists the methods only the mesh's services may call
    /// (`SERVICE` access); default false, so the public port does not advertise them.
    pub reflection_lists_internal: bool,
}

/// Access and service token settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// `iss` of every token; default `weft`.
    pub issuer: String,
    /// `aud` of access tokens; default `weft`.
    pub audience: String,
    /// Lifetime of access tokens in seconds; default 300 (5 minutes): logout revokes the
    /// refresh token, and a stolen access token stays usable at most this long.
    pub access_ttl_secs: u64,
    /// Lifetime of each refresh token in seconds (sliding: each refresh issues a new one);
    /// default 2592000 (30 days).
    pub refresh_ttl_secs: u64,
    /// Absolute lifetime of a refresh token family, from its sign-in, in seconds: past it no
    /// refresh succeeds and the user signs in again; default 2592000 (30 days).
    pub refresh_family_max_secs: u64,
    /// Lifetime of service tokens in seconds; default 60.
    pub service_token_ttl_secs: u64,
    /// Least time between two JWKS fetches caused by unknown `kid`s, in ms; default 5000.
    pub jwks_min_refresh_interval_ms: u64,
    /// The method that serves the token signing keys (`package.Service/Method`, returning
    /// `weft.api.v1.Jwks`), called on the upstream that serves its service; default empty: the
    /// one method of the process's contract that returns `weft.api.v1.Jwks`. A process whose
    /// contract does not describe the issuer (a service of another team) needs it set.
    pub keys_method: String,
    /// Clock skew tolerated on `exp`, in seconds; default 30.
    pub leeway_secs: u64,
}

/// Where one service listens and keeps its data.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// gRPC listen address (required).
    pub listen: SocketAddr,
    /// HTTP listen address of the admin endpoint (`/metrics`); default `127.0.0.1:0` (a free
    /// port). Must differ from `listen`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// `sqlite://path` (created if missing) or `postgres://...`; default empty: the service
    /// keeps no data (a service that needs a database refuses to start without one).
    #[serde(default)]
    pub database_url: String,
    /// Connections in the pool (PostgreSQL, or SQLite readers); default 8.
    #[serde(default = "default_db_connections")]
    pub database_max_connections: u32,
    /// PostgreSQL ends a session whose transaction its client has left idle this long, in ms,
    /// releasing the transaction's row locks: a replica that vanishes mid-order (host down,
    /// network cut) then holds the stock rows others wait for no longer than this; default
    /// 2000 (the services' transactions take milliseconds); 0: never.
    #[serde(default = "default_idle_transaction_timeout_ms")]
    pub database_idle_transaction_timeout_ms: u64,
}

/// How one upstream is reached, and the policies of calls to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port`; ignored when `endpoints` is set. One of the two is required.
    #[serde(default)]
    pub endpoint: String,
    /// Several endpoints of the same upstream, balanced (power of two choices over peak-EWMA
    /// latency); a host name stands for every address it resolves to. Default empty: `endpoint`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The gRPC services it serves, by full name (`weft.order.v1.OrderService`): the gateway
    /// routes their methods here, and calls to them use this upstream's policies. Default
    /// empty: every service of `descriptor_set`.
    #[serde(default)]
    pub grpc_services: Vec<String>,
    /// A `FileDescriptorSet` file (`protoc --include_imports -o`, `buf build -o`) describing its
    /// services, for an API the processes were not built with; default none: the contract
    /// built into the binaries.
    #[serde(default)]
    pub descriptor_set: Option<PathBuf>,
    /// Access of its methods that declare none (no `weft.api.v1.access` option): `public` or
    /// `authenticated` (default).
    #[serde(default)]
    pub default_access: DefaultAccess,
    /// How often host names in the endpoints are resolved again, in ms; default 5000.
    #[serde(default = "default_resolve_interval_ms")]
    pub resolve_interval_ms: u64,
    /// Time allowed to open a connection, in ms; default 1000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time between HTTP/2 PINGs on a connection while calls are open on it, in ms; 0: no
    /// pings. Default 10000.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    /// Time a PING may go unanswered, in ms, before its connection is closed and the calls on
    /// it fail with UNAVAILABLE; default 5000.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// TCP keepalive of its connections, in ms: idle time before the first probe, and time
    /// between probes; 0: off. Default 30000.
    #[serde(default = "default_tcp_keepalive_ms")]
    pub tcp_keepalive_ms: u64,
    /// Time allowed for one call (all its attempts), in ms, unless `methods` says otherwise;
    /// default 5000. Never more than what is left of the inbound call's deadline.
    #[serde(default = "default_call_timeout_ms")]
    pub timeout_ms: u64,
    /// Time kept back from an inbound call's remaining deadline when passing it on, in ms, so
    /// the answer still reaches the caller in time; default 5.
    #[serde(default = "default_deadline_margin_ms")]
    pub deadline_margin_ms: u64,
    /// Per-method policies, keyed by full method name (`"weft.user.v1.UserService/GetUser"`).
    #[serde(default)]
    pub methods: std::collections::BTreeMap<String, MethodConfig>,
    /// Retries of idempotent calls, within a budget (see `retry`).
    #[serde(default)]
    pub retry: crate::policy::RetryPolicy,
    /// Adaptive throttling when the upstream fails (see `breaker`).
    #[serde(default)]
    pub breaker: crate::policy::BreakerPolicy,
    /// Ejection of failing endpoints (see `balance`).
    #[serde(default)]
    pub outlier: crate::policy::OutlierPolicy,
}

/// The policy of one method of an upstream; unset keys take the upstream's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    /// Time allowed for one call, in ms; default: the upstream's `timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// Whether a failed call may be retried; default: from the method's
    /// `idempotency_level` in the proto (`NO_SIDE_EFFECTS` or `IDEMPOTENT`: yes).
    pub idempotent: Option<bool>,
    /// A request field that makes the call safe to retry when it is set (the gateway checks it,
    /// e.g. `idempotency_key` of CreateOrder); default none.
    pub idempotent_if_field: Option<String>,
}

// === defaults ===

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            environment: "local".into(),
            telemetry: TelemetryConfig::default(),
            server: ServerConfig::default(),
            jwt: JwtConfig::default(),
            services: IndexMap::new(),
            upstreams: IndexMap::new(),
            gateway: GatewayConfig::default(),
            faults: Vec::new(),
            mtls: MtlsConfig::default(),
            callers: BTreeMap::new(),
            settings: BTreeMap::new(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_operations: true,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_json_depth: 64,
            route_timeout_ms: 5_000,
            route_timeouts: Default::default(),
            upstream_connections: 2,
            cors: CorsConfig::default(),
            tls: TlsConfig::default(),
            max_concurrent_requests: 4096,
            rate_limit: Default::default(),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            body_read_timeout_ms: 30_000,
        }
    }
}

impl GatewayConfig {
    /// The timeout of calls to the method with this full name.
    pub fn route_timeout(&self, full_method: &str) -> Duration {
        Duration::from_millis(
            self.route_timeouts
                .get(full_method)
                .copied()
                .unwrap_or(self.route_timeout_ms),
        )
    }

    /// [`GatewayConfig::header_read_timeout_ms`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// [`GatewayConfig::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// [`GatewayConfig::body_read_timeout_ms`] as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            otlp_protocol: OtlpProtocol::Grpc,
            sampler_ratio: 1.0,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            method_concurrency: Default::default(),
            worker_threads: 1,
            default_deadline_ms: 30_000,
            reflection_lists_internal: false,
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: "weft".into(),
            audience: "weft".into(),
            access_ttl_secs: 300,
            refresh_ttl_secs: 30 * 24 * 3600,
            refresh_family_max_secs: 30 * 24 * 3600,
            service_token_ttl_secs: 60,
            jwks_min_refresh_interval_ms: 5_000,
            keys_method: String::new(),
            leeway_secs: 30,
        }
    }
}

impl UpstreamConfig {
    /// An upstream at `endpoint` with the default policies.
    pub fn with_endpoint(endpoint: String) -> Self {
        Self {
            endpoint,
            endpoints: Vec::new(),
            grpc_services: Vec::new(),
            descriptor_set: None,
            default_access: DefaultAccess::default(),
            resolve_interval_ms: default_resolve_interval_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            keepalive_interval_ms: default_keepalive_interval_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            tcp_keepalive_ms: default_tcp_keepalive_ms(),
            timeout_ms: default_call_timeout_ms(),
            deadline_margin_ms: default_deadline_margin_ms(),
            methods: Default::default(),
            retry: Default::default(),
            breaker: Default::default(),
            outlier: Default::default(),
        }
    }

    /// The endpoints to balance over: `endpoints`, or else `endpoint`.
    pub fn endpoint_list(&self) -> Vec<String> {
        if self.endpoints.is_empty() {
            vec![self.endpoint.clone()]
        } else {
            self.endpoints.clone()
        }
    }

    /// Time allowed to open a connection.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The HTTP/2 PING interval of its connections; `None` when pings are off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }

    /// The TCP keepalive time of its connections; `None` when off.
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        (self.tcp_keepalive_ms > 0).then(|| Duration::from_millis(self.tcp_keepalive_ms))
    }

    /// Time allowed for one call.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

fn default_db_connections() -> u32 {
    8
}
fn default_idle_transaction_timeout_ms() -> u64 {
    2000
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_call_timeout_ms() -> u64 {
    5_000
}
fn default_resolve_interval_ms() -> u64 {
    5_000
}
fn default_deadline_margin_ms() -> u64 {
    5
}
fn default_keepalive_interval_ms() -> u64 {
    10_000
}
fn default_keepalive_timeout_ms() -> u64 {
    5_000
}
fn default_tcp_keepalive_ms() -> u64 {
    30_000
}

// === loading ===

impl MeshConfig {
    /// Loads the file at `path` (or at `$WEFT_CONFIG`, or none: defaults), then applies
    /// `WEFT_*` environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(Self::file(path).as_deref(), std::env::vars())
    }

    /// The file [`MeshConfig::load`] reads: `path`, or `$WEFT_CONFIG`, or none.
    pub fn file(path: Option<&Path>) -> Option<PathBuf> {
        let from_env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        path.map(Path::to_path_buf).or(from_env)
    }

    /// Like [`MeshConfig::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file_name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into());
        let file = path.map(read_table).transpose()?;
        Self::load_table(file_name, file, env)
    }

    /// A config from TOML text alone (no file, no environment), as a file would give it.
    pub fn load_from_str(text: &str) -> Result<Self, ConfigError> {
        let table = text.parse::<toml::Table>().map_err(|e| ConfigError {
            source_name: "mesh-config text".into(),
            key: None,
            reason: format!("not valid TOML: {}", e.to_string().trim_end()),
        })?;
        Self::load_table("mesh-config text".into(), Some(table), [])
    }

    fn load_table(
        file_name: String,
        file: Option<toml::Table>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Start from the defaults so that a file or variable may set one key of a section.
        let mut table = toml::Table::try_from(MeshConfig::default()).map_err(|e| ConfigError {
            source_name: "built-in defaults".into(),
            key: None,
            reason: e.to_string(),
        })?;
        if let Some(file) = file {
            merge(&mut table, file);
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let services = declared_services(&table, &env);
        let mut env_keys = Vec::new();
        for (name, raw) in env {
            if let Some(key) = env_key(&name, &services) {
                insert_path(&mut table, &key, parse_env_value(&raw)).map_err(|reason| {
                    ConfigError {
                        source_name: format!("environment variable {name}"),
                        key: Some(key.join(".")),
                        reason,
                    }
                })?;
                env_keys.push((key.join("."), name));
            }
        }
        // Top-level tables named after a service are its settings, read by the service itself.
        // (A service named like a section of the mesh's own is refused by `validate`.)
        let settings: BTreeMap<String, toml::Table> = services
            .iter()
            .filter(|name| !SECTIONS.contains(&name.as_str()))
            .filter_map(|name| match table.remove(name) {
                Some(toml::Value::Table(settings)) => Some(Ok((name.clone(), settings))),
                Some(_) => Some(Err(ConfigError {
                    source_name: file_name.clone(),
                    key: Some(name.clone()),
                    reason: "must be a table of the service's settings".into(),
                })),
                None => None,
            })
            .collect::<Result<_, _>>()?;
        let mut config: MeshConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|err| {
                let key = err.path().to_string();
                // Blame the environment variable when the bad key came from one.
                let source_name = env_keys
                    .iter()
                    .find(|(k, _)| key.starts_with(k.as_str()))
                    .map(|(_, var)| format!("environment variable {var}"))
                    .unwrap_or_else(|| file_name.clone());
                ConfigError {
                    source_name,
                    key: (key != ".").then_some(key),
                    reason: err.into_inner().to_string(),
                }
            })?;
        config.settings = settings;
        config.validate().map_err(|(key, reason)| ConfigError {
            source_name: file_name,
            key: Some(key),
            reason,
        })?;
        Ok(config)
    }

    /// The listen address and database of the service `name` (`[services.<name>]`).
    pub fn service(&self, name: &str) -> Result<&ServiceConfig, ConfigError> {
        self.services.get(name).ok_or_else(|| ConfigError {
            source_name: "mesh-config".into(),
            key: Some(format!("services.{name}")),
            reason: format!("no service `{name}` is declared: add a [services.{name}] table"),
        })
    }

    /// How the service `name` is reached (`[upstreams.<name>]`).
    pub fn upstream(&self, name: &str) -> Result<&UpstreamConfig, ConfigError> {
        self.upstreams.get(name).ok_or_else(|| ConfigError {
            source_name: "mesh-config".into(),
            key: Some(format!("upstreams.{name}")),
            reason: format!("no upstream `{name}` is declared: add an [upstreams.{name}] table"),
        })
    }

    /// The upstream serving the gRPC service `grpc_service` (`weft.user.v1.UserService`): its
    /// name and config, from the `grpc_services` lists.
    pub fn upstream_serving(&self, grpc_service: &str) -> Option<(&str, &UpstreamConfig)> {
        self.upstreams
            .iter()
            .find(|(_, upstream)| upstream.grpc_services.iter().any(|s| s == grpc_service))
            .map(|(name, upstream)| (name.as_str(), upstream))
    }

    /// The settings of the service `name`: its top-level `[<name>]` table, read into the
    /// service's own type (`T`'s defaults for keys left out; unknown keys are errors).
    pub fn settings<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        let Some(table) = self.settings.get(name) else {
            return Ok(T::default());
        };
        serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|err| {
            let path = err.path().to_string();
            ConfigError {
                source_name: "mesh-config".into(),
                key: Some(if path == "." {
                    name.to_string()
                } else {
                    format!("{name}.{path}")
                }),
                reason: err.into_inner().to_string(),
            }
        })
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if self.server.max_concurrent_requests == 0 {
            return err("server.max_concurrent_requests", "must be at least 1");
        }
        for (method, limit) in &self.server.method_concurrency {
            let key = format!("server.method_concurrency.\"{method}\"");
            if !is_full_method(method) {
                return err(&key, "must be a full method name: package.Service/Method");
            }
            if *limit == 0 {
                return err(&key, "must be at least 1");
            }
        }
        if self.server.max_message_bytes < 1024 {
            return err("server.max_message_bytes", "must be at least 1024");
        }
        if self.server.worker_threads == 0 {
            return err("server.worker_threads", "must be at least 1");
        }
        if self.server.default_deadline_ms == 0 {
            return err("server.default_deadline_ms", "must be at least 1");
        }
        for (i, rule) in self.faults.iter().enumerate() {
            rule.validate()
                .map_err(|(key, reason)| (format!("faults[{i}].{key}"), reason))?;
        }
        if self.jwt.access_ttl_secs == 0 || self.jwt.refresh_ttl_secs == 0 {
            return err(
                "jwt.access_ttl_secs",
                "token lifetimes must be at least 1 second",
            );
        }
        if self.jwt.refresh_family_max_secs == 0 {
            return err("jwt.refresh_family_max_secs", "must be at least 1 second");
        }
        let telemetry = &self.telemetry;
        if !(0.0..=1.0).contains(&telemetry.sampler_ratio) {
            return err("telemetry.sampler_ratio", "must be between 0.0 and 1.0");
        }
        if !telemetry.otlp_endpoint.is_empty()
            && (telemetry.otlp_endpoint.parse::<http::Uri>().is_err()
                || !(telemetry.otlp_endpoint.starts_with("http://")
                    || telemetry.otlp_endpoint.starts_with("https://")))
        {
            return err(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URI",
            );
        }
        if self.jwt.issuer.is_empty() {
            return err("jwt.issuer", "must not be empty");
        }
        if !self.jwt.keys_method.is_empty() && !is_full_method(&self.jwt.keys_method) {
            return err(
                "jwt.keys_method",
                "must be a full method name: package.Service/Method",
            );
        }
        if self.jwt.audience.is_empty() {
            return err("jwt.audience", "must not be empty");
        }
        self.validate_gateway()?;
        self.validate_mtls()?;
        for (key, service) in &self.services {
            if !is_service_name(key) {
                return err(
                    &format!("services.{key}"),
                    "a service name is lower-case letters, digits and `-`, starting with a letter",
                );
            }
            if SECTIONS.contains(&key.as_str()) {
                return err(
                    &format!("services.{key}"),
                    "is the name of a mesh-config section; choose another service name",
                );
            }
            if !(service.database_url.is_empty()
                || service.database_url.starts_with("sqlite:")
                || service.database_url.starts_with("postgres://")
                || service.database_url.starts_with("postgresql://"))
            {
                return err(
                    &format!("services.{key}.database_url"),
                    "must start with sqlite:, postgres:// or postgresql://",
                );
            }
            if service.admin_listen == service.listen && service.listen.port() != 0 {
                return err(
                    &format!("services.{key}.admin_listen"),
                    &format!("must differ from services.{key}.listen"),
                );
            }
            if service.database_max_connections == 0 {
                return err(
                    &format!("services.{key}.database_max_connections"),
                    "must be at least 1",
                );
            }
        }
        for (key, upstream) in &self.upstreams {
            if !is_service_name(key) {
                return err(
                    &format!("upstreams.{key}"),
                    "an upstream name is lower-case letters, digits and `-`, starting with a letter",
                );
            }
            upstream
                .validate()
                .map_err(|(sub, reason)| (format!("upstreams.{key}.{sub}"), reason))?;
            if !self.mtls.is_on()
                && let Some(https) = upstream
                    .endpoint_list()
                    .into_iter()
                    .find(|e| e.starts_with("https://"))
            {
                return err(
                    &format!("upstreams.{key}"),
                    &format!(
                        "`{https}` asks for TLS, but mtls.mode is \"off\": use http://, or \
                         turn mTLS on"
                    ),
                );
            }
            for service in &upstream.grpc_services {
                if let Some((other, _)) = self.upstream_serving(service)
                    && other != key
                {
                    return err(
                        &format!("upstreams.{key}.grpc_services"),
                        &format!("`{service}` is already served by upstreams.{other}"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Checks that `endpoint` is an `http://` or `https://` URI. Both mean the same to the mesh:
/// its connections run over mTLS unless `[mtls] mode = "off"`, which refuses `https://` (see
/// [`MeshConfig::validate`]) rather than dial in clear text an endpoint that promises TLS.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        || endpoint.parse::<http::Uri>().is_err()
    {
        return Err(format!("`{endpoint}` is not an http:// or https:// URI"));
    }
    Ok(())
}

impl UpstreamConfig {
    /// Checks the upstream's keys; the error names the key relative to the upstream's table.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, reason: &str| Err((key, reason.to_string()));
        if self.endpoints.is_empty() {
            check_endpoint(&self.endpoint).map_err(|reason| ("endpoint".to_string(), reason))?;
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            check_endpoint(endpoint).map_err(|reason| (format!("endpoints[{i}]"), reason))?;
        }
        for (key, value) in [
            ("timeout_ms", self.timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("resolve_interval_ms", self.resolve_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
        ] {
            if value == 0 {
                return err(key.into(), "must be at least 1 ms");
            }
        }
        let nested = |table: &str, result: Result<(), (String, String)>| {
            result.map_err(|(key, reason)| (format!("{table}.{key}"), reason))
        };
        nested("retry", self.retry.validate())?;
        nested("breaker", self.breaker.validate())?;
        nested("outlier", self.outlier.validate())?;
        if let Some(service) = self
            .grpc_services
            .iter()
            .find(|s| s.is_empty() || s.contains('/') || !s.contains('.'))
        {
            return err(
                "grpc_services".into(),
                &format!("`{service}` is not a full service name (`package.Service`)"),
            );
        }
        for (method, policy) in &self.methods {
            if !is_full_method(method) {
                return err(
                    format!("methods.\"{method}\""),
                    "name a method in full: `package.Service/Method`",
                );
            }
            if policy.timeout_ms == Some(0) {
                return err(
                    format!("methods.\"{method}\".timeout_ms"),
                    "must be at least 1 ms",
                );
            }
            if policy.idempotent_if_field.as_deref() == Some("") {
                return err(
                    format!("methods.\"{method}\".idempotent_if_field"),
                    "must name a field",
                );
            }
        }
        Ok(())
    }
}

impl MeshConfig {
    fn validate_gateway(&self) -> Result<(), (String, String)> {
        let gateway = &self.gateway;
        let err = |key: &str, reason: &str| Err((format!("gateway.{key}"), reason.to_string()));
        if gateway.max_body_bytes == 0 {
            return err("max_body_bytes", "must be at least 1");
        }
        if gateway.admin_listen == gateway.listen && gateway.listen.port() != 0 {
            return err("admin_listen", "must differ from gateway.listen");
        }
        if gateway.max_header_bytes < 8192 {
            return err("max_header_bytes", "must be at least 8192");
        }
        if gateway.max_json_depth == 0 || gateway.max_json_depth > 128 {
            return err("max_json_depth", "must be between 1 and 128");
        }
        if gateway.route_timeout_ms == 0 {
            return err("route_timeout_ms", "must be at least 1");
        }
        for (method, ms) in &gateway.route_timeouts {
            let key = format!("route_timeouts.\"{method}\"");
            if !is_full_method(method) {
                return err(&key, "must be a full method name: package.Service/Method");
            }
            if *ms == 0 {
                return err(&key, "must be at least 1");
            }
        }
        if gateway.upstream_connections == 0 || gateway.upstream_connections > 64 {
            return err("upstream_connections", "must be between 1 and 64");
        }
        if gateway.max_concurrent_requests == 0 {
            return err("max_concurrent_requests", "must be at least 1");
        }
        for (key, ms) in [
            ("header_read_timeout_ms", gateway.header_read_timeout_ms),
            ("idle_timeout_ms", gateway.idle_timeout_ms),
            ("body_read_timeout_ms", gateway.body_read_timeout_ms),
        ] {
            if ms == 0 {
                return err(key, "must be at least 1 ms");
            }
        }
        if gateway.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        gateway
            .rate_limit
            .validate()
            .map_err(|(key, reason)| (format!("gateway.rate_limit.{key}"), reason))?;
        if gateway.tls.cert_file.is_empty() != gateway.tls.key_file.is_empty() {
            return err("tls", "set both cert_file and key_file, or neither");
        }
        Ok(())
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let source_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: source_name.clone(),
        key: None,
        reason: format!("cannot read the file: {e}"),
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError {
        source_name,
        key: None,
        reason: format!("not valid TOML: {}", e.to_string().trim_end()),
    })
}

/// The mesh's own top-level keys; every other top-level table is a service's settings.
const SECTIONS: &[&str] = &[
    "environment",
    "telemetry",
    "server",
    "jwt",
    "services",
    "upstreams",
    "gateway",
    "faults",
    "mtls",
    "callers",
];

/// `WEFT_SERVICES__ORDER__LISTEN` -> `["services", "order", "listen"]`, for the mesh's sections
/// and the settings of the `services` declared, so unrelated `WEFT_*` variables (`WEFT_CONFIG`,
/// `WEFT_TEST_*`) are left alone.
fn env_key(name: &str, services: &[String]) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let key: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    let section = key[0].as_str();
    (SECTIONS.contains(&section) || services.iter().any(|s| s == section)).then_some(key)
}

/// The names of the services a mesh-config table and its variables declare.
fn declared_services(table: &toml::Table, env: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = table
        .get("services")
        .and_then(toml::Value::as_table)
        .map(|services| services.keys().cloned().collect())
        .unwrap_or_default();
    let prefix = format!("{ENV_PREFIX}SERVICES__");
    for (var, _) in env {
        if let Some(name) = var
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split("__").next())
        {
            names.push(name.to_ascii_lowercase());
        }
    }
    names
}

/// The name the service declared as `[services.<name>]` goes by in logs, traces, metrics and
/// service tokens: `weft-<name>` (`weft-order`).
pub fn process_name(name: &str) -> String {
    format!("weft-{name}")
}

/// A service or upstream name: `order`, `echo-2`.
fn is_service_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The one spelling of a method in mesh-config: `package.Service/Method`.
pub fn is_full_method(name: &str) -> bool {
    name.split_once('/').is_some_and(|(service, method)| {
        service.contains('.')
            && !service.starts_with('.')
            && !method.is_empty()
            && !method.contains(['/', '.'])
    })
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Overlays `over` onto `base`, section by section.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn insert_path(table: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = key.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<MeshConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("weft-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.toml");
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = MeshConfig::load_from(Some(&path), env);
        std::fs::remove_dir_all(dir).unwrap();
        result
    }

    /// Two services declared the way mesh-config/local.toml does.
    const TWO_SERVICES: &str = "\
        [services.order]\nlisten = \"127.0.0.1:50053\"\ndatabase_url = \"sqlite://x.db\"\n\
        [services.user]\nlisten = \"127.0.0.1:50052\"\n\
        [upstreams.user]\nendpoint = \"http://127.0.0.1:50052\"\n\
        grpc_services = [\"weft.user.v1.UserService\"]\n";

    #[test]
    fn the_defaults_are_valid_and_declare_no_service() {
        let config = MeshConfig::load_from(None, []).unwrap();
        assert!(config.services.is_empty() && config.upstreams.is_empty());
        assert_eq!(config.server.max_concurrent_requests, 1024);
        let err = config.service("order").unwrap_err();
        assert!(err.to_string().contains("[services.order]"), "{err}");
    }

    #[test]
    fn services_and_upstreams_are_declared_by_name() {
        let config = load_text(TWO_SERVICES, &[]).unwrap();
        assert_eq!(config.service("order").unwrap().listen.port(), 50053);
        assert_eq!(config.service("user").unwrap().database_url, "");
        assert_eq!(config.service("user").unwrap().admin_listen.port(), 0);
        let (name, user) = config.upstream_serving("weft.user.v1.UserService").unwrap();
        assert_eq!(
            (name, user.endpoint.as_str()),
            ("user", "http://127.0.0.1:50052")
        );
        assert!(
            config
                .upstream_serving("weft.order.v1.OrderService")
                .is_none()
        );
        // A service declared by a variable alone.
        let config = load_text("", &[("WEFT_SERVICES__ECHO__LISTEN", "127.0.0.1:7000")]).unwrap();
        assert_eq!(config.service("echo").unwrap().listen.port(), 7000);
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct OrderSettings {
        seed_demo_products: bool,
    }

    #[test]
    fn a_services_settings_are_its_own_table_from_file_and_env() {
        let text = format!("{TWO_SERVICES}[order]\nseed_demo_products = true\n");
        let config = load_text(&text, &[]).unwrap();
        let settings: OrderSettings = config.settings("order").unwrap();
        assert!(settings.seed_demo_products);
        let config =
            load_text(TWO_SERVICES, &[("WEFT_ORDER__SEED_DEMO_PRODUCTS", "true")]).unwrap();
        assert!(
            config
                .settings::<OrderSettings>("order")
                .unwrap()
                .seed_demo_products
        );
        // Left out: the service's defaults.
        let config = load_text(TWO_SERVICES, &[]).unwrap();
        assert_eq!(
            config.settings::<OrderSettings>("user").unwrap(),
            OrderSettings::default()
        );
        // A typo is named with its service.
        let text = format!("{TWO_SERVICES}[order]\nseed_demo_product = true\n");
        let err = load_text(&text, &[])
            .unwrap()
            .settings::<OrderSettings>("order")
            .unwrap_err();
        assert!(err.to_string().contains("seed_demo_product"), "{err}");
        // A table named after no service is an unknown key.
        let err = load_text("[inventory]\nx = 1\n", &[]).unwrap_err();
        assert!(err.to_string().contains("inventory"), "{err}");
    }

    #[test]
    fn file_values_override_defaults_and_env_overrides_file() {
        let config = load_text(
            TWO_SERVICES,
            &[
                ("WEFT_SERVICES__ORDER__LISTEN", "127.0.0.1:7001"),
                ("WEFT_TEST_POSTGRES_URL", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.service("order").unwrap().listen.port(), 7001);
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let err = load_text("[server]\nmax_concurrent_requests = \"many\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.max_concurrent_requests"));
        assert!(
            err.to_string().contains("server.max_concurrent_requests"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let err = load_text("[server]\nmax_conccurent_requests = 5\n", &[]).unwrap_err();
        assert!(err.to_string().contains("max_conccurent_requests"), "{err}");
    }

    #[test]
    fn a_bad_env_value_blames_the_variable() {
        let err = load_text(
            TWO_SERVICES,
            &[("WEFT_SERVICES__USER__LISTEN", "not-an-address")],
        )
        .unwrap_err();
        assert!(
            err.source_name.contains("WEFT_SERVICES__USER__LISTEN"),
            "{err}"
        );
        assert_eq!(err.key.as_deref(), Some("services.user.listen"));
    }

    #[test]
    fn invalid_toml_says_where() {
        let err = load_text("[server\n", &[]).unwrap_err();
        assert!(err.reason.contains("not valid TOML"), "{err}");
    }

    #[test]
    fn the_telemetry_section_is_read_and_checked() {
        let config = load_text(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n\
             otlp_protocol = \"http/protobuf\"\nsampler_ratio = 0.25\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.telemetry.sampler_ratio, 0.25);
        let defaults = MeshConfig::load_from(None, []).unwrap();
        assert_eq!(defaults.telemetry.otlp_endpoint, "");
        assert_eq!(defaults.telemetry.otlp_protocol, OtlpProtocol::Grpc);
        let err = load_text("[telemetry]\nsampler_ratio = 1.5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("telemetry.sampler_ratio"));
        let err = load_text("[telemetry]\notlp_endpoint = \"localhost:4317\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("telemetry.otlp_endpoint"));
        let err = load_text("[telemetry]\notlp_protocol = \"http/json\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("telemetry.otlp_protocol"));
    }

    #[test]
    fn the_admin_listener_must_not_share_the_grpc_port() {
        let err = load_text(
            "[services.order]\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("services.order.admin_listen"));
    }

    #[test]
    fn method_names_have_one_spelling() {
        assert!(is_full_method("weft.user.v1.UserService/GetMe"));
        for wrong in [
            "GetMe",
            "weft.user.v1.UserService.GetMe",
            "/weft.user.v1.UserService/GetMe",
        ] {
            assert!(!is_full_method(wrong), "{wrong}");
        }
        let err = load_text("[upstreams.user]\nendpoint = \"http://x:1\"\n[upstreams.user.methods.GetMe]\ntimeout_ms = 5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("upstreams.user.methods.\"GetMe\""));
        let err = load_text("[gateway.route_timeouts]\n\"a.B.C\" = 5\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("gateway.route_timeouts.\"a.B.C\""));
    }

    #[test]
    fn a_grpc_service_is_served_by_one_upstream_and_names_are_checked() {
        let err = load_text(
            "[upstreams.a]\nendpoint = \"http://x:1\"\ngrpc_services = [\"p.S\"]\n\
             [upstreams.b]\nendpoint = \"http://x:2\"\ngrpc_services = [\"p.S\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("already served"), "{err}");
        let err = load_text("[services.gateway]\nlisten = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("services.gateway"));
        let err = load_text("[services.Order]\nlisten = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("services.Order"));
    }

    #[test]
    fn semantic_checks_name_the_key() {
        let err = load_text("[upstreams.user]\nendpoint = \"ftp://x\"\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("upstreams.user.endpoint"));
    }

    #[test]
    fn an_https_upstream_means_tls_and_is_refused_when_mtls_is_off() {
        // mTLS on (the default): https:// is what the mesh dials anyway.
        assert!(load_text("[upstreams.user]\nendpoint = \"https://user:443\"\n", &[]).is_ok());
        let off = "[mtls]\nmode = \"off\"\n";
        let err = load_text(
            &format!("{off}[upstreams.user]\nendpoints = [\"http://a:1\", \"https://b:1\"]\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("upstreams.user"));
        assert!(err.to_string().contains("mtls.mode is \"off\""), "{err}");
        assert!(
            load_text(
                &format!("{off}[upstreams.user]\nendpoint = \"http://user:80\"\n"),
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn a_service_entry_is_found_among_services_whose_names_it_starts() {
        let callers: BTreeMap<String, Vec<String>> = [
            ("pkg.Svc-x/*", "a"),
            ("pkg.Svc.v2/Get", "b"),
            ("pkg.Svc/*", "c"),
            ("pkg.Svc/Get", "d"),
            ("pkg.SvcOther/*", "e"),
        ]
        .into_iter()
        .map(|(key, name)| (key.to_string(), vec![name.to_string()]))
        .collect();
        let allowed = |path| allowed_callers(&callers, path).map(|names| names[0].as_str());
        assert_eq!(allowed("/pkg.Svc/Get"), Some("d"));
        assert_eq!(allowed("/pkg.Svc/Put"), Some("c"));
        assert_eq!(allowed("/pkg.Svc-x/Put"), Some("a"));
        assert_eq!(allowed("/pkg.Svc.v2/Put"), None);
        assert_eq!(allowed("/pkg.SvcOther/Put"), Some("e"));
        assert_eq!(allowed("/pkg.Sv/Put"), None);
        assert_eq!(allowed("/pkg.SvcNone/Put"), None);
    }

    #[test]
    fn callers_name_methods_or_services_and_processes_of_the_mesh() {
        let config = load_text(
            &format!(
                "{TWO_SERVICES}[callers]\n\"weft.user.v1.UserService/*\" = [\"gateway\"]\n\
                 \"weft.user.v1.UserService/CreateUser\" = [\"order\"]\n"
            ),
            &[],
        )
        .unwrap();
        let callers = |path| config.allowed_callers(path).map(<[String]>::to_vec);
        assert_eq!(
            callers("/weft.user.v1.UserService/CreateUser"),
            Some(vec!["order".to_string()])
        );
        assert_eq!(
            callers("/weft.user.v1.UserService/GetUser"),
            Some(vec!["gateway".to_string()])
        );
        assert_eq!(callers("/weft.order.v1.OrderService/GetProduct"), None);
        let err = load_text(
            &format!(
                "{TWO_SERVICES}[callers]\n\"weft.user.v1.UserService/GetUser\" = [\"billing\"]\n"
            ),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("callers.\"weft.user.v1.UserService/GetUser\"")
        );
        assert!(
            err.to_string().contains("`billing` is not a process"),
            "{err}"
        );
        let err = load_text("[callers]\n\"UserService\" = [\"gateway\"]\n", &[]).unwrap_err();
        assert!(err.to_string().contains("name a method in full"), "{err}");
        let err = load_text("[mtls]\ncert_validity_days = 100000\n", &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("mtls.cert_validity_days"));
    }

    #[test]
    fn slow_and_idle_clients_have_limits_by_default_and_none_may_be_zero() {
        let config = MeshConfig::load_from(None, []).unwrap();
        let gateway = &config.gateway;
        assert_eq!(
            (
                gateway.header_read_timeout(),
                gateway.idle_timeout(),
                gateway.max_connections,
                gateway.body_read_timeout(),
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(60),
                10_000,
                Duration::from_secs(30),
            )
        );
        for key in [
            "header_read_timeout_ms",
            "idle_timeout_ms",
            "max_connections",
            "body_read_timeout_ms",
        ] {
            let err = load_text(&format!("[gateway]\n{key} = 0\n"), &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(format!("gateway.{key}").as_str()));
            assert!(err.reason.starts_with("must be at least 1"), "{err}");
        }
    }

    #[test]
    fn upstream_connections_keep_alive_by_default_and_each_check_can_be_turned_off() {
        let config = load_text(TWO_SERVICES, &[]).unwrap();
        let user = config.upstream("user").unwrap();
        assert_eq!(
            (
                user.keepalive_interval(),
                user.keepalive_timeout_ms,
                user.tcp_keepalive()
            ),
            (
                Some(Duration::from_secs(10)),
                5_000,
                Some(Duration::from_secs(30))
            )
        );
        let off = load_text(
            TWO_SERVICES,
            &[
                ("WEFT_UPSTREAMS__USER__KEEPALIVE_INTERVAL_MS", "0"),
                ("WEFT_UPSTREAMS__USER__TCP_KEEPALIVE_MS", "0"),
            ],
        )
        .unwrap();
        let user = off.upstream("user").unwrap();
        assert_eq!(
            (user.keepalive_interval(), user.tcp_keepalive()),
            (None, None)
        );
        let err = load_text(
            TWO_SERVICES,
            &[("WEFT_UPSTREAMS__USER__KEEPALIVE_TIMEOUT_MS", "0")],
        )
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("upstreams.user.keepalive_timeout_ms")
        );
    }
}
