//! Black-box test harness: the real `weft-auth`, `weft-user` and `weft-order` binaries, started
//! together on ephemeral loopback ports with fresh databases, and called with generated clients;
//! optionally with `weft-gateway` in front of them ([`MeshOptions::gateway`]), called over HTTP
//! at [`TestMesh::gateway_url`].
//!
//! ```ignore
//! let mesh = TestMesh::start(Backend::Sqlite).await;
//! let alice = mesh.register("alice@example.com", "correct horse", "Alice").await;
//! let me = mesh.user().get_me(bearer(&alice.access_token, GetMeRequest {})).await?;
//! mesh.stop().await;
//! ```
//!
//! Every mesh lives in its own temporary directory: the mesh-config TOML, the SQLite files (or,
//! on [`Backend::Postgres`], three freshly created databases `weft_t_<random>_{auth,user,order}`,
//! dropped by [`TestMesh::stop`] or on drop) and one log file per service. When a test panics the
//! directory is kept and the tail of each log is printed, so the failure can be read.
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`), or in
//! `WEFT_BIN_DIR`; build them first with `cargo build --bins`.
//!
//! ```ignore
//! let options = MeshOptions { gateway: true, ..MeshOptions::default() };
//! let mesh = TestMesh::start_with(Backend::Sqlite, options).await;
//! // GET {mesh.gateway_url()}/v1/products ...
//! mesh.kill_gateway().await;
//! mesh.restart_gateway().await;
//! ```

use std::{
    collections::HashMap,
    fmt,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sqlx::{Connection as _, Row as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, Command},
};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
/// A `grpc.health.v1` status, as [`TestMesh::health`] reports it.
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use weft_proto::{
    auth::{AuthTokens, LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    order::order_service_client::OrderServiceClient,
    user::user_service_client::UserServiceClient,
};

use crate::{auth::Claims, config::ServiceName};

/// Environment variable holding a PostgreSQL URL (to a database the tests may create databases
/// from, e.g. `postgres://postgres@127.0.0.1:5432/postgres`).
pub const POSTGRES_URL_ENV: &str = "WEFT_TEST_POSTGRES_URL";
/// Environment variable naming the folder of the binaries, when not next to the test executable.
pub const BIN_DIR_ENV: &str = "WEFT_BIN_DIR";
/// The admin email every test mesh is configured with by default.
pub const ADMIN_EMAIL: &str = "admin@weft.test";
/// The password [`TestMesh::admin`] registers the admin with.
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// How long a service may take to report SERVING.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-call deadline of the harness's clients, so a hung service fails a test instead of
/// hanging it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The three services, in start order.
pub const SERVICES: [ServiceName; 3] = [ServiceName::Auth, ServiceName::User, ServiceName::Order];
/// The REST gateway's process name (its binary, and its log file's stem).
pub const GATEWAY: &str = "weft-gateway";

/// Where the services keep their data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file per service in the mesh's temporary directory.
    Sqlite,
    /// Fresh databases on the PostgreSQL server at this URL.
    Postgres(String),
}

impl Backend {
    /// SQLite, plus PostgreSQL when [`POSTGRES_URL_ENV`] is set (see [`Backend::postgres`]).
    pub fn all() -> Vec<Backend> {
        let mut all = vec![Backend::Sqlite];
        all.extend(Backend::postgres());
        all
    }

    /// PostgreSQL at [`POSTGRES_URL_ENV`]. When unset: panics under `CI=true` (CI must run the
    /// suite on both engines), otherwise prints a skip note and returns `None`.
    pub fn postgres() -> Option<Backend> {
        match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Some(Backend::Postgres(url.trim().to_string())),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
                "{POSTGRES_URL_ENV} is not set, but CI=true: CI must run the black-box tests on \
                 PostgreSQL too (e.g. {POSTGRES_URL_ENV}=postgres://postgres@127.0.0.1:5432/postgres)"
            ),
            _ => {
                eprintln!(
                    "note: skipping the PostgreSQL run: set {POSTGRES_URL_ENV} \
                     (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
                );
                None
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Extra settings of a test mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// `auth.admin_emails`; default `[ADMIN_EMAIL]`.
    pub admin_emails: Vec<String>,
    /// TOML merged over the generated mesh-config (section by section), e.g.
    /// `"[jwt]\naccess_ttl_secs = 2\n"`.
    pub toml: String,
    /// Environment variables for every service process (the gateway's too).
    pub env: Vec<(String, String)>,
    /// Also start `weft-gateway` (after the services are SERVING), with `[gateway] listen` on a
    /// free loopback port, and wait until its `/healthz` and `/readyz` answer 200 (only until it
    /// accepts connections when `toml` configures `[gateway.tls]`); default false.
    pub gateway: bool,
    /// Pass the test's own `OTEL_*` variables on to the processes (to export their spans to a
    /// real collector while debugging); default false, they are removed. An in-process
    /// [`Collector`] is given to them with `env: collector.env()` instead.
    pub inherit_otel_env: bool,
    /// Second instances to start, one per entry (after the first instances are SERVING), on
    /// their own ports and the same database; the upstream's `endpoints` list both, so callers
    /// balance over them. Default none.
    pub replicas: Vec<ServiceName>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            admin_emails: vec![ADMIN_EMAIL.to_string()],
            toml: String::new(),
            env: Vec::new(),
            gateway: false,
            inherit_otel_env: false,
            replicas: Vec::new(),
        }
    }
}

/// A running mesh of the three real binaries. Kills its children (and drops its PostgreSQL
/// databases) when dropped; [`TestMesh::stop`] does it gracefully.
pub struct TestMesh {
    backend: Backend,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    config_path: PathBuf,
    options: MeshOptions,
    addrs: HashMap<ServiceName, SocketAddr>,
    /// Where each service serves `/metrics` (`services.<name>.admin_listen`).
    admin_addrs: HashMap<ServiceName, SocketAddr>,
    database_urls: HashMap<ServiceName, String>,
    pg_databases: Vec<String>,
    children: Mutex<HashMap<ServiceName, Child>>,
    /// Where the gateway listens, and whether over TLS; `None` without [`MeshOptions::gateway`].
    gateway: Option<(SocketAddr, bool)>,
    gateway_child: Mutex<Option<Child>>,
    channels: Mutex<HashMap<ServiceName, Channel>>,
    /// The replicas of [`MeshOptions::replicas`], in order: service, address, process.
    replicas: Mutex<Vec<(ServiceName, SocketAddr, Option<Child>)>>,
    admin: tokio::sync::Mutex<Option<AuthTokens>>,
    databases_dropped: bool,
}

// === impl TestMesh ===

impl TestMesh {
    /// Starts the mesh on `backend` with default options and waits until every service is
    /// SERVING. Panics with the services' logs when one does not come up.
    pub async fn start(backend: Backend) -> TestMesh {
        Self::start_with(backend, MeshOptions::default()).await
    }

    /// Starts the mesh with `options`.
    pub async fn start_with(backend: Backend, options: MeshOptions) -> TestMesh {
        // Fail early and clearly when the binaries are missing.
        for name in SERVICES {
            binary(name);
        }
        if options.gateway {
            gateway_binary();
        }
        let dir = tempfile::Builder::new()
            .prefix("weft-test-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let path = dir.path().to_path_buf();
        let mut free = free_loopback_addrs(SERVICES.len() + 1);
        let gateway_addr = free.pop().expect("one address per process");
        let addrs: HashMap<ServiceName, SocketAddr> = SERVICES.into_iter().zip(free).collect();
        let gateway_addr = options.gateway.then_some(gateway_addr);

        let mut pg_databases = Vec::new();
        let database_urls: HashMap<ServiceName, String> = match &backend {
            Backend::Sqlite => SERVICES
                .iter()
                .map(|&name| {
                    let file = path.join(format!("{}.db", name.key()));
                    (name, format!("sqlite://{}", file.display()))
                })
                .collect(),
            Backend::Postgres(base) => {
                let prefix = format!(
                    "weft_t_{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                );
                let mut conn = sqlx::PgConnection::connect(base).await.unwrap_or_else(|e| {
                    panic!(
                        "cannot connect to PostgreSQL at {}: {e}",
                        crate::db::redact(base)
                    )
                });
                let mut urls = HashMap::new();
                for name in SERVICES {
                    let db = format!("{prefix}_{}", name.key());
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
                        .execute(&mut conn)
                        .await
                        .unwrap_or_else(|e| panic!("cannot create database {db}: {e}"));
                    urls.insert(name, database_url(base, &db));
                    pg_databases.push(db);
                }
                let _ = conn.close().await;
                urls
            }
        };

        let config_path = path.join("mesh.toml");
        let config = mesh_config(&addrs, gateway_addr, &database_urls, &options);
        let (config, admin_addrs) = with_admin_listeners(config, &addrs, gateway_addr);
        let (config, replica_addrs) = with_replicas(config, &options.replicas);
        let gateway = gateway_addr.map(|addr| (addr, gateway_tls(&config)));
        std::fs::write(&config_path, config).expect("cannot write the mesh config");

        let mesh = TestMesh {
            backend,
            dir: Some(dir),
            path,
            config_path,
            options,
            addrs,
            admin_addrs,
            database_urls,
            pg_databases,
            children: Mutex::new(HashMap::new()),
            gateway,
            gateway_child: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            replicas: Mutex::new(Vec::new()),
            admin: tokio::sync::Mutex::new(None),
            databases_dropped: false,
        };
        for name in SERVICES {
            mesh.spawn(name);
        }
        for name in SERVICES {
            mesh.wait_serving(name).await;
        }
        for (name, addr, admin) in replica_addrs {
            mesh.start_replica(name, addr, admin).await;
        }
        if mesh.gateway.is_some() {
            mesh.spawn_gateway();
            mesh.wait_gateway_ready().await;
        }
        mesh
    }

    /// The backend the mesh runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The mesh's temporary directory (config, SQLite files, logs).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The mesh-config file the services were started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Where `name` listens.
    pub fn addr(&self, name: ServiceName) -> SocketAddr {
        self.addrs[&name]
    }

    /// Where `name` serves its admin endpoint (`/metrics`).
    pub fn admin_addr(&self, name: ServiceName) -> SocketAddr {
        self.admin_addrs[&name]
    }

    /// `http://127.0.0.1:<port>/metrics` of `name`: its Prometheus metrics.
    pub fn metrics_url(&self, name: ServiceName) -> String {
        format!("http://{}/metrics", self.admin_addrs[&name])
    }

    /// The database URL of `name`.
    pub fn database_url(&self, name: ServiceName) -> &str {
        &self.database_urls[&name]
    }

    /// The path of `name`'s log file (stdout and stderr of every run).
    pub fn log_path(&self, name: ServiceName) -> PathBuf {
        self.path.join(format!("{}.log", name.as_str()))
    }

    /// A channel to `name` (reconnects by itself; replaced on [`TestMesh::restart`]).
    pub fn channel(&self, name: ServiceName) -> Channel {
        lock(&self.channels)
            .entry(name)
            .or_insert_with(|| channel_to(self.addrs[&name]))
            .clone()
    }

    /// A client of weft-auth.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel(ServiceName::Auth))
    }

    /// A client of weft-user.
    pub fn user(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel(ServiceName::User))
    }

    /// A client of weft-order.
    pub fn order(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.channel(ServiceName::Order))
    }

    /// Registers a user and returns their tokens; panics when registration fails.
    pub async fn register(&self, email: &str, password: &str, display_name: &str) -> AuthTokens {
        self.auth()
            .register(RegisterRequest {
                email: email.to_string(),
                password: password.to_string(),
                display_name: display_name.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("Register({email}) failed: {:?} {}", s.code(), s.message()))
            .into_inner()
    }

    /// Registers a new user with a random email (`user-<random>@weft.test`).
    pub async fn new_user(&self) -> AuthTokens {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        self.register(
            &format!("user-{tag}@weft.test"),
            "password-123",
            &format!("User {tag}"),
        )
        .await
    }

    /// Signs in the first configured admin email, registering it on first use.
    pub async fn admin(&self) -> AuthTokens {
        let mut cached = self.admin.lock().await;
        if let Some(tokens) = cached.as_ref() {
            return tokens.clone();
        }
        let email = self
            .options
            .admin_emails
            .first()
            .expect("this mesh was started without admin emails")
            .clone();
        let mut auth = self.auth();
        let tokens = match auth
            .register(RegisterRequest {
                email: email.clone(),
                password: ADMIN_PASSWORD.into(),
                display_name: "Admin".into(),
            })
            .await
        {
            Ok(tokens) => tokens.into_inner(),
            Err(status) if status.code() == tonic::Code::AlreadyExists => auth
                .login(LoginRequest {
                    email,
                    password: ADMIN_PASSWORD.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("admin Login failed: {s:?}"))
                .into_inner(),
            Err(status) => panic!("admin Register failed: {status:?}"),
        };
        *cached = Some(tokens.clone());
        tokens
    }

    /// The health of `service` (`""` for the whole server) as reported by `name`.
    pub async fn health(&self, name: ServiceName, service: &str) -> Result<ServingStatus, Status> {
        let mut client = HealthClient::new(self.channel(name));
        let response = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?
            .into_inner();
        Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
    }

    /// Kills `name` with SIGKILL and reaps it.
    pub async fn kill(&self, name: ServiceName) {
        let child = lock(&self.children).remove(&name);
        if let Some(mut child) = child {
            child.kill().await.expect("cannot kill the child");
        }
    }

    /// Sends SIGTERM to `name` and waits for it to exit (bounded by [`STOP_TIMEOUT`], after
    /// which it is killed and the test panics). Returns its exit status.
    pub async fn terminate(&self, name: ServiceName) -> ExitStatus {
        let child = lock(&self.children).remove(&name);
        let mut child = child.unwrap_or_else(|| panic!("{name} is not running"));
        terminate_child(name, &mut child).await
    }

    /// Whether `name`'s process is running (not exited, not killed by the harness).
    pub fn is_running(&self, name: ServiceName) -> bool {
        let mut children = lock(&self.children);
        match children.get_mut(&name) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Restarts `name` with the same config, ports and database: terminates it gracefully if it
    /// is still running, starts it again, and waits until it is SERVING.
    pub async fn restart(&self, name: ServiceName) {
        let child = lock(&self.children).remove(&name);
        if let Some(mut child) = child
            && matches!(child.try_wait(), Ok(None))
        {
            terminate_child(name, &mut child).await;
        }
        // A fresh channel: the old one may hold a broken connection.
        lock(&self.channels).insert(name, channel_to(self.addrs[&name]));
        self.spawn(name);
        self.wait_serving(name).await;
    }

    /// Merges `toml` over the mesh-config file (section by section, as [`MeshOptions::toml`]),
    /// as an operator editing it would: the running processes reload it.
    pub fn update_config(&self, toml: &str) {
        let mut root: toml::Table = std::fs::read_to_string(&self.config_path)
            .expect("cannot read the mesh config")
            .parse()
            .expect("the mesh config is TOML");
        let extra: toml::Table = toml
            .parse()
            .unwrap_or_else(|e| panic!("update_config: not valid TOML: {e}"));
        merge(&mut root, extra);
        self.write_config(&toml::to_string(&root).expect("a TOML table serialises"));
    }

    /// Replaces the mesh-config file with `text` at once (written aside, then renamed).
    pub fn write_config(&self, text: &str) {
        let aside = self.config_path.with_extension("toml.new");
        std::fs::write(&aside, text).expect("cannot write the mesh config");
        std::fs::rename(&aside, &self.config_path).expect("cannot replace the mesh config");
    }

    /// The address of replica `index` of [`MeshOptions::replicas`].
    pub fn replica_addr(&self, index: usize) -> SocketAddr {
        lock(&self.replicas)[index].1
    }

    /// Kills replica `index` of [`MeshOptions::replicas`] with SIGKILL.
    pub async fn kill_replica(&self, index: usize) {
        let child = lock(&self.replicas)[index].2.take();
        if let Some(mut child) = child {
            child.kill().await.expect("cannot kill the replica");
        }
    }

    /// Everything replica `index` wrote to stdout and stderr.
    pub fn replica_logs(&self, index: usize) -> String {
        std::fs::read_to_string(self.path.join(format!("replica-{index}.log"))).unwrap_or_default()
    }

    async fn start_replica(&self, name: ServiceName, addr: SocketAddr, admin: SocketAddr) {
        let index = lock(&self.replicas).len();
        let section = name.key().to_uppercase();
        let env = [
            (
                format!("WEFT_SERVICES__{section}__LISTEN"),
                addr.to_string(),
            ),
            (
                format!("WEFT_SERVICES__{section}__ADMIN_LISTEN"),
                admin.to_string(),
            ),
        ];
        let log = self.path.join(format!("replica-{index}.log"));
        let child = self.spawn_process_with(&binary(name), &log, &env);
        lock(&self.replicas).push((name, addr, Some(child)));
        let started = Instant::now();
        let mut health = HealthClient::new(channel_to(addr));
        loop {
            let status = health
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if matches!(status, Ok(code) if code == ServingStatus::Serving as i32) {
                return;
            }
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "replica {index} of {name} did not report SERVING within {START_TIMEOUT:?}; its log:\n{}",
                    self.replica_logs(index)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything `name` wrote to stdout and stderr, over all its runs.
    pub fn logs(&self, name: ServiceName) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Panics when any service's (or the gateway's) log contains a panic.
    pub fn assert_no_panics(&self) {
        let logs = SERVICES
            .iter()
            .map(|&name| (name.as_str(), self.logs(name)))
            .chain(self.gateway.map(|_| (GATEWAY, self.gateway_logs())));
        for (name, logs) in logs {
            if let Some(at) = logs.find("panicked at") {
                let start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
                let excerpt: String = logs[start..]
                    .lines()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("{name} panicked:\n{excerpt}");
            }
        }
    }

    /// The current signing key of weft-auth, read from its database: `(kid, PKCS#8 DER)`.
    pub async fn signing_key(&self) -> (String, Vec<u8>) {
        let url = &self.database_urls[&ServiceName::Auth];
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open the auth database: {e}"));
        let row = sqlx::query(
            "SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL \
             ORDER BY created_at DESC, kid DESC LIMIT 1",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot read signing_keys: {e}"))
        .expect("weft-auth has no current signing key");
        let _ = conn.close().await;
        let kid: String = row.try_get("kid").expect("signing_keys.kid");
        let private: String = row
            .try_get("private_key")
            .expect("signing_keys.private_key");
        let der = base64::engine::general_purpose::STANDARD
            .decode(private.trim())
            .expect("signing_keys.private_key is not standard base64");
        (kid, der)
    }

    /// Signs `claims` with weft-auth's real current key (EdDSA, with its `kid`), so tests can
    /// make tokens the services must refuse (expired, wrong `aud`) or accept (unknown subject).
    pub async fn sign_token(&self, claims: &Claims) -> String {
        let (kid, der) = self.signing_key().await;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&der))
            .expect("cannot sign the token")
    }

    /// Rotates weft-auth's signing key with `weft-auth --config <mesh config> rotate-key` (the
    /// running service picks it up within `auth.key_reload_interval_ms`) and returns the new
    /// key id.
    pub async fn rotate_signing_key(&self) -> String {
        let mut command = Command::new(binary(ServiceName::Auth));
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("rotate-key")
            .current_dir(&self.path)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        clean_env(&mut command, false);
        let output = tokio::time::timeout(START_TIMEOUT, command.output())
            .await
            .expect("weft-auth rotate-key did not finish")
            .expect("cannot run weft-auth rotate-key");
        assert!(
            output.status.success(),
            "weft-auth rotate-key failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let kid = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(!kid.is_empty(), "weft-auth rotate-key printed no key id");
        kid
    }

    /// Claims of a valid access token for `subject` with `role` (`user`, `admin`, `service`),
    /// issued now, expiring in 5 minutes, for the default issuer and audience.
    pub fn claims(&self, subject: &str, role: &str) -> Claims {
        let now = unix_now();
        Claims {
            iss: "weft-auth".into(),
            aud: "weft".into(),
            sub: subject.to_string(),
            role: role.to_string(),
            iat: now,
            exp: now + 300,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Where the gateway listens; panics when the mesh was started without it.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway
            .expect("this mesh was started without the gateway (MeshOptions::gateway)")
            .0
    }

    /// The gateway's base URL, `http://127.0.0.1:<port>` (`https://` when `[gateway.tls]` is
    /// configured), without a trailing slash; panics when the mesh was started without it.
    pub fn gateway_url(&self) -> String {
        let (addr, tls) = self
            .gateway
            .expect("this mesh was started without the gateway (MeshOptions::gateway)");
        format!("{}://{addr}", if tls { "https" } else { "http" })
    }

    /// The path of the gateway's log file (stdout and stderr of every run).
    pub fn gateway_log_path(&self) -> PathBuf {
        self.path.join(format!("{GATEWAY}.log"))
    }

    /// Everything the gateway wrote to stdout and stderr, over all its runs.
    pub fn gateway_logs(&self) -> String {
        std::fs::read_to_string(self.gateway_log_path()).unwrap_or_default()
    }

    /// Whether the gateway's process is running (not exited, not killed by the harness).
    pub fn gateway_running(&self) -> bool {
        match lock(&self.gateway_child).as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the gateway with SIGKILL and reaps it.
    pub async fn kill_gateway(&self) {
        let child = lock(&self.gateway_child).take();
        if let Some(mut child) = child {
            child.kill().await.expect("cannot kill the gateway");
        }
    }

    /// Sends SIGTERM to the gateway and waits for it to exit (bounded by [`STOP_TIMEOUT`]).
    pub async fn terminate_gateway(&self) -> ExitStatus {
        let child = lock(&self.gateway_child).take();
        let mut child = child.unwrap_or_else(|| panic!("{GATEWAY} is not running"));
        terminate_child(GATEWAY, &mut child).await
    }

    /// Restarts the gateway with the same config and port: terminates it gracefully if it is
    /// still running, starts it again, and waits until it is ready.
    pub async fn restart_gateway(&self) {
        self.gateway_addr();
        let child = lock(&self.gateway_child).take();
        if let Some(mut child) = child
            && matches!(child.try_wait(), Ok(None))
        {
            terminate_child(GATEWAY, &mut child).await;
        }
        self.spawn_gateway();
        self.wait_gateway_ready().await;
    }

    /// Stops every service (and the gateway, first) with SIGTERM, waiting for each to exit, and
    /// drops the PostgreSQL databases.
    pub async fn stop(mut self) {
        let gateway = lock(&self.gateway_child).take();
        if let Some(mut child) = gateway {
            terminate_child(GATEWAY, &mut child).await;
        }
        let children: Vec<(ServiceName, Child)> = lock(&self.children).drain().collect();
        for (name, mut child) in children {
            terminate_child(name, &mut child).await;
        }
        lock(&self.channels).clear();
        if let Backend::Postgres(base) = &self.backend {
            drop_databases(base, &self.pg_databases).await;
        }
        self.databases_dropped = true;
    }

    fn spawn(&self, name: ServiceName) {
        let child = self.spawn_process(&binary(name), &self.log_path(name));
        lock(&self.children).insert(name, child);
    }

    fn spawn_gateway(&self) {
        let child = self.spawn_process(&gateway_binary(), &self.gateway_log_path());
        *lock(&self.gateway_child) = Some(child);
    }

    /// Starts `binary --config <mesh config>` in the mesh's folder, appending to `log_path`.
    fn spawn_process(&self, binary: &Path, log_path: &Path) -> Child {
        self.spawn_process_with(binary, log_path, &[])
    }

    /// [`Self::spawn_process`] with extra environment variables.
    fn spawn_process_with(
        &self,
        binary: &Path,
        log_path: &Path,
        env: &[(String, String)],
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let stderr = log.try_clone().expect("cannot clone the log file handle");
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .kill_on_drop(true);
        clean_env(&mut command, self.options.inherit_otel_env);
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
    }

    /// Waits until the gateway answers 200 on `/healthz` and `/readyz` (over TLS: until it
    /// accepts connections, as the harness has no TLS client).
    async fn wait_gateway_ready(&self) {
        let (addr, tls) = self.gateway.expect("the gateway is configured");
        let started = Instant::now();
        loop {
            if let Some(child) = lock(&self.gateway_child).as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{GATEWAY} exited during start-up with {status}; its log:\n{}",
                    self.gateway_logs()
                );
            }
            let last = if tls {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => return,
                    Err(e) => format!("cannot connect: {e}"),
                }
            } else {
                match (
                    http_get_status(addr, "/healthz").await,
                    http_get_status(addr, "/readyz").await,
                ) {
                    (Ok(200), Ok(200)) => return,
                    (healthz, readyz) => format!("/healthz: {healthz:?}, /readyz: {readyz:?}"),
                }
            };
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "{GATEWAY} was not ready within {START_TIMEOUT:?} (last: {last}); its log:\n{}",
                    self.gateway_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_serving(&self, name: ServiceName) {
        let started = Instant::now();
        loop {
            {
                let mut children = lock(&self.children);
                let child = children
                    .get_mut(&name)
                    .unwrap_or_else(|| panic!("{name} is not running"));
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited during start-up with {status}; its log:\n{}",
                        self.logs(name)
                    );
                }
            }
            let last =
                match tokio::time::timeout(Duration::from_secs(2), self.health(name, "")).await {
                    Ok(Ok(ServingStatus::Serving)) => return,
                    Ok(Ok(status)) => format!("{status:?}"),
                    Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                    Err(_) => "health check timed out".into(),
                };
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "{name} did not report SERVING within {START_TIMEOUT:?} (last: {last}); its log:\n{}",
                    self.logs(name)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        let mut children: Vec<Child> = lock(&self.children)
            .drain()
            .map(|(_, child)| child)
            .collect();
        children.extend(lock(&self.gateway_child).take());
        children.extend(lock(&self.replicas).iter_mut().filter_map(|r| r.2.take()));
        for mut child in children {
            let _ = child.start_kill();
            // Reap it so no zombie outlives the test; SIGKILL makes this quick.
            for _ in 0..100 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- test mesh in {} ({}) ---",
                self.path.display(),
                self.backend
            );
            let logs = SERVICES
                .iter()
                .map(|&name| (name.as_str(), self.logs(name)))
                .chain(self.gateway.map(|_| (GATEWAY, self.gateway_logs())));
            for (name, logs) in logs {
                let lines: Vec<&str> = logs.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("--- last lines of {name} ---\n{}", tail.join("\n"));
            }
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("--- kept {} for inspection ---", kept.display());
            }
        }
        if !self.databases_dropped
            && let Backend::Postgres(base) = &self.backend
        {
            let base = base.clone();
            let databases = std::mem::take(&mut self.pg_databases);
            // Drop runs inside the test's runtime, which must not be blocked on: use a thread.
            let _ = std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(drop_databases(&base, &databases));
                }
            })
            .join();
        }
    }
}

/// `authorization: Bearer <token>` on a request.
pub fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {token}"))
        .expect("a token must be a valid header value");
    request.metadata_mut().insert("authorization", value);
    request
}

/// The path of a service binary; panics when it is missing.
pub fn binary(name: ServiceName) -> PathBuf {
    binary_named(name.as_str())
}

/// The path of the `weft-gateway` binary; panics when it is missing.
pub fn gateway_binary() -> PathBuf {
    binary_named(GATEWAY)
}

fn binary_named(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("cannot find the test executable");
            let mut dir = exe
                .parent()
                .expect("the test executable has no folder")
                .to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --bins` first (or set {BIN_DIR_ENV})",
            path.display()
        );
    }
    path
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keeps the test's own environment from reconfiguring a service process (its `OTEL_*`
/// variables pass when `keep_otel`).
fn clean_env(command: &mut Command, keep_otel: bool) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with(crate::config::ENV_PREFIX)
            || (key.starts_with("OTEL_") && !keep_otel)
            || key == "RUST_LOG"
        {
            command.env_remove(key.as_ref());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn channel_to(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Three free loopback ports: bound together (so they differ), then released for the services.
#[cfg(test)]
fn free_addrs() -> HashMap<ServiceName, SocketAddr> {
    SERVICES
        .into_iter()
        .zip(free_loopback_addrs(SERVICES.len()))
        .collect()
}

/// `n` free loopback ports: bound together (so they differ), then released for the processes.
fn free_loopback_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound listener has an address"))
        .collect()
}

/// The status code of `GET path` over plain HTTP/1.1 (bounded by 2 s).
async fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let status_line = answer.lines().next().unwrap_or_default();
        status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Gives each service of a generated mesh-config a free loopback `admin_listen` (unless the
/// options set one), away from the other processes' ports; returns the config and the admin
/// addresses it ends up with.
fn with_admin_listeners(
    config: String,
    addrs: &HashMap<ServiceName, SocketAddr>,
    gateway: Option<SocketAddr>,
) -> (String, HashMap<ServiceName, SocketAddr>) {
    let taken: Vec<SocketAddr> = addrs.values().copied().chain(gateway).collect();
    let mut free = free_loopback_addrs(SERVICES.len() + taken.len())
        .into_iter()
        .filter(|addr| !taken.contains(addr));
    let mut root: toml::Table = config.parse().expect("the generated config is TOML");
    let services = root
        .entry("services")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .expect("`services` is a table");
    let mut admin = HashMap::new();
    for name in SERVICES {
        let service = services
            .entry(name.key())
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .expect("`services.<name>` is a table");
        let value = service.entry("admin_listen").or_insert_with(|| {
            let addr = free.next().expect("enough free loopback ports");
            addr.to_string().into()
        });
        let addr = value
            .as_str()
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("services.{}.admin_listen is not host:port", name.key()));
        admin.insert(name, addr);
    }
    let text = toml::to_string(&root).expect("a TOML table serialises");
    (text, admin)
}

/// Whether a generated mesh-config turns TLS on at the gateway.
fn gateway_tls(config: &str) -> bool {
    config
        .parse::<toml::Table>()
        .ok()
        .and_then(|root| {
            let cert = root.get("gateway")?.get("tls")?.get("cert_file")?;
            Some(cert.as_str().is_some_and(|c| !c.is_empty()))
        })
        .unwrap_or(false)
}

/// The mesh-config TOML of a test mesh.
/// Adds a listen and an admin address for each replica, and lists every instance of a
/// replicated service in its upstream's `endpoints`.
fn with_replicas(
    config: String,
    replicas: &[ServiceName],
) -> (String, Vec<(ServiceName, SocketAddr, SocketAddr)>) {
    if replicas.is_empty() {
        return (config, Vec::new());
    }
    let mut root: toml::Table = config.parse().expect("the generated config is TOML");
    let mut free = free_loopback_addrs(2 * replicas.len()).into_iter();
    let mut placed = Vec::new();
    for &name in replicas {
        let (addr, admin) = (
            free.next().expect("enough free loopback ports"),
            free.next().expect("enough free loopback ports"),
        );
        let upstream = root
            .get_mut("upstreams")
            .and_then(|upstreams| upstreams.get_mut(name.key()))
            .and_then(|upstream| upstream.as_table_mut())
            .expect("the generated config has every upstream");
        let first = upstream["endpoint"].clone();
        let endpoints = upstream
            .entry("endpoints")
            .or_insert_with(|| toml::Value::Array(vec![first]));
        if let Some(list) = endpoints.as_array_mut() {
            list.push(format!("http://{addr}").into());
        }
        placed.push((name, addr, admin));
    }
    (
        toml::to_string(&root).expect("a TOML table serialises"),
        placed,
    )
}

fn mesh_config(
    addrs: &HashMap<ServiceName, SocketAddr>,
    gateway: Option<SocketAddr>,
    database_urls: &HashMap<ServiceName, String>,
    options: &MeshOptions,
) -> String {
    let mut root = toml::Table::new();
    root.insert("environment".into(), "test".into());
    let mut telemetry = toml::Table::new();
    telemetry.insert("log_format".into(), "json".into());
    telemetry.insert("log_filter".into(), "info".into());
    root.insert("telemetry".into(), telemetry.into());
    let mut auth = toml::Table::new();
    auth.insert(
        "admin_emails".into(),
        toml::Value::Array(
            options
                .admin_emails
                .iter()
                .map(|e| e.as_str().into())
                .collect(),
        ),
    );
    root.insert("auth".into(), auth.into());
    let mut services = toml::Table::new();
    let mut upstreams = toml::Table::new();
    for name in SERVICES {
        let mut service = toml::Table::new();
        service.insert("listen".into(), addrs[&name].to_string().into());
        service.insert("database_url".into(), database_urls[&name].as_str().into());
        services.insert(name.key().into(), service.into());
        let mut upstream = toml::Table::new();
        upstream.insert("endpoint".into(), format!("http://{}", addrs[&name]).into());
        upstreams.insert(name.key().into(), upstream.into());
    }
    root.insert("services".into(), services.into());
    root.insert("upstreams".into(), upstreams.into());
    if let Some(addr) = gateway {
        let mut section = toml::Table::new();
        section.insert("listen".into(), addr.to_string().into());
        root.insert("gateway".into(), section.into());
    }
    if !options.toml.trim().is_empty() {
        let extra: toml::Table = options
            .toml
            .parse()
            .unwrap_or_else(|e| panic!("MeshOptions::toml is not valid TOML: {e}"));
        merge(&mut root, extra);
    }
    toml::to_string(&root).expect("a TOML table serialises")
}

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

/// `base` (a PostgreSQL URL) pointing at database `db` instead, query string kept.
fn database_url(base: &str, db: &str) -> String {
    let (main, query) = match base.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (base, None),
    };
    let authority = main.find("://").map_or(0, |i| i + 3);
    let path = main[authority..]
        .find('/')
        .map_or(main.len(), |i| authority + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{db}{query}", &main[..path])
}

async fn terminate_child(name: impl fmt::Display, child: &mut Child) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("cannot wait for {name}: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("{name} did not exit within {STOP_TIMEOUT:?} of SIGTERM");
        }
    }
}

async fn drop_databases(base: &str, databases: &[String]) {
    if databases.is_empty() {
        return;
    }
    let Ok(mut conn) = sqlx::PgConnection::connect(base).await else {
        eprintln!("warning: cannot connect to PostgreSQL to drop the test databases {databases:?}");
        return;
    };
    for db in databases {
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        {
            eprintln!("warning: cannot drop the test database {db}: {e}");
        }
    }
    let _ = conn.close().await;
}

// === OTLP collector ===

/// A span as an OTLP collector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The span's name (`POST /v1/orders`, `weft.user.v1.UserService/CreateUser`).
    pub name: String,
    /// The span kind: [`SPAN_KIND_SERVER`], [`SPAN_KIND_CLIENT`], internal (1), ...
    pub kind: i32,
    /// The attributes: strings as they are, other values as their JSON text (`5`, `true`).
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

/// [`CollectedSpan::kind`] of a server span.
pub const SPAN_KIND_SERVER: i32 = 2;
/// [`CollectedSpan::kind`] of a client span.
pub const SPAN_KIND_CLIENT: i32 = 3;

impl CollectedSpan {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Whether the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.status == 2
    }
}

impl fmt::Display for CollectedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} kind={} span={} parent={} status={} {:?}",
            self.service,
            self.name,
            self.kind,
            self.span_id,
            self.parent_span_id,
            self.status,
            self.attributes
        )
    }
}

/// An in-process OTLP/gRPC collector (`opentelemetry.proto.collector.trace.v1.TraceService`)
/// that keeps every span it receives, for black-box tests of the processes' traces.
///
/// ```ignore
/// let collector = Collector::start().await;
/// let options = MeshOptions { env: collector.env(), gateway: true, ..MeshOptions::default() };
/// // ... requests ...
/// let spans = collector.wait_for("the register trace", |spans| ...).await;
/// ```
pub struct Collector {
    addr: SocketAddr,
    spans: std::sync::Arc<Mutex<Vec<CollectedSpan>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How long [`Collector::wait_for`] waits.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(20);

impl Collector {
    /// Starts the collector on a free loopback port.
    pub async fn start() -> Collector {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the collector's port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let spans = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Receiver {
            spans: spans.clone(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Collector {
            addr,
            spans,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The variables that point a process at this collector, with a short batch delay (100 ms)
    /// so spans arrive soon after the request.
    pub fn env(&self) -> Vec<(String, String)> {
        otel_env(&self.endpoint())
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        lock(&self.spans).clone()
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<CollectedSpan> {
        lock(&self.spans)
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Waits (up to [`COLLECT_TIMEOUT`]) until `done` holds for the spans received, and returns
    /// them; panics naming `what`, with every span received, when it never does.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[CollectedSpan]) -> bool,
    ) -> Vec<CollectedSpan> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if started.elapsed() > COLLECT_TIMEOUT {
                let listing: Vec<String> = spans.iter().map(ToString::to_string).collect();
                panic!(
                    "the collector did not receive {what} within {COLLECT_TIMEOUT:?}; it has {} spans:\n{}",
                    spans.len(),
                    listing.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The variables that point a process's span exporter at `endpoint` (OTLP/gRPC), with a short
/// batch delay (100 ms). For a collector that is down, pass a closed port's endpoint.
pub fn otel_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.to_string()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

/// An endpoint nothing listens on (a port bound, then released).
pub fn closed_endpoint() -> String {
    let addr = free_loopback_addrs(1)[0];
    format!("http://{addr}")
}

struct Receiver {
    spans: std::sync::Arc<Mutex<Vec<CollectedSpan>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Receiver
{
    async fn export(
        &self,
        request: Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        Status,
    > {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| any_value_text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(CollectedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
                            .collect(),
                        status: span.status.map_or(0, |s| s.code),
                    });
                }
            }
        }
        lock(&self.spans).extend(received);
        Ok(tonic::Response::new(Default::default()))
    }
}

fn any_value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_collector_keeps_what_an_exporter_sends() {
        use opentelemetry::trace::{
            Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _,
        };
        use opentelemetry_otlp::WithExportConfig as _;
        let collector = Collector::start().await;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(collector.endpoint())
            .build()
            .unwrap();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name("weft-test")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("test");
        // The simple processor blocks on the export: run it off the runtime's thread.
        let trace_id = tokio::task::spawn_blocking(move || {
            let root = tracer.start("root");
            let trace_id = root.span_context().trace_id().to_string();
            let cx = opentelemetry::Context::current_with_span(root);
            let mut child = tracer.start_with_context("child", &cx);
            child.set_attribute(opentelemetry::KeyValue::new("n", 5));
            child.end();
            cx.span().end();
            trace_id
        })
        .await
        .unwrap();
        let spans = collector
            .wait_for("two spans", |spans| spans.len() >= 2)
            .await;
        let root = spans.iter().find(|s| s.name == "root").unwrap();
        let child = spans.iter().find(|s| s.name == "child").unwrap();
        assert_eq!(root.service, "weft-test");
        assert_eq!(root.trace_id, trace_id);
        assert_eq!(child.parent_span_id, root.span_id);
        assert_eq!(root.parent_span_id, "");
        assert_eq!(child.attr("n"), Some("5"));
    }

    #[test]
    fn database_urls_swap_the_path_only() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn options_merge_over_the_generated_config() {
        let addrs = free_addrs();
        let urls = SERVICES
            .iter()
            .map(|&n| (n, format!("sqlite://{}.db", n.key())))
            .collect();
        let options = MeshOptions {
            toml: "[jwt]\naccess_ttl_secs = 2\n[auth]\nkey_reload_interval_ms = 100\n".into(),
            ..MeshOptions::default()
        };
        let text = mesh_config(&addrs, None, &urls, &options);
        let config: crate::MeshConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.jwt.access_ttl_secs, 2);
        assert_eq!(config.auth.key_reload_interval_ms, 100);
        assert_eq!(config.auth.admin_emails, [ADMIN_EMAIL]);
        assert_eq!(config.services.order.listen, addrs[&ServiceName::Order]);
        assert_eq!(
            config.upstreams.user.endpoint,
            format!("http://{}", addrs[&ServiceName::User])
        );
        assert!(
            !text.contains("[gateway]"),
            "no gateway section unless asked"
        );
    }

    #[test]
    fn admin_listeners_are_free_distinct_ports_unless_the_options_set_them() {
        let addrs = free_addrs();
        let urls = SERVICES
            .iter()
            .map(|&n| (n, format!("sqlite://{}.db", n.key())))
            .collect();
        let options = MeshOptions {
            toml: "[services.user]\nadmin_listen = \"127.0.0.1:0\"\n".into(),
            ..MeshOptions::default()
        };
        let text = mesh_config(&addrs, None, &urls, &options);
        let (text, admin) = with_admin_listeners(text, &addrs, None);
        let config: crate::MeshConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            config.services.user.admin_listen.port(),
            0,
            "the options win"
        );
        for name in [ServiceName::Auth, ServiceName::Order] {
            let addr = config.service(name).admin_listen;
            assert_eq!(admin[&name], addr);
            assert_ne!(addr.port(), 0);
            assert!(
                !addrs.values().any(|a| *a == addr),
                "away from the gRPC ports"
            );
        }
        assert_ne!(admin[&ServiceName::Auth], admin[&ServiceName::Order]);
    }

    #[test]
    fn the_gateway_listens_where_the_harness_probes_and_tls_is_detected() {
        let mut free = free_loopback_addrs(4);
        let gateway = free.pop().unwrap();
        let addrs: HashMap<_, _> = SERVICES.into_iter().zip(free).collect();
        assert!(!addrs.values().any(|a| *a == gateway), "ports differ");
        let urls = SERVICES
            .iter()
            .map(|&n| (n, format!("sqlite://{}.db", n.key())))
            .collect();
        let options = MeshOptions {
            gateway: true,
            toml: "[gateway]\nmax_json_depth = 8\n".into(),
            ..MeshOptions::default()
        };
        let text = mesh_config(&addrs, Some(gateway), &urls, &options);
        let config: crate::MeshConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.gateway.listen, gateway);
        assert_eq!(config.gateway.max_json_depth, 8);
        assert!(!gateway_tls(&text));

        let options = MeshOptions {
            gateway: true,
            toml: "[gateway.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n".into(),
            ..MeshOptions::default()
        };
        let text = mesh_config(&addrs, Some(gateway), &urls, &options);
        assert!(gateway_tls(&text));
        let config: crate::MeshConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            config.gateway.listen, gateway,
            "TLS keeps the listen address"
        );
    }
}
