//! [`TestMesh`]: the real binaries of a mesh, started together on free loopback ports with
//! fresh databases, stopped, killed and restarted by the test, with clients to each.
//!
//! Every mesh lives in its own temporary directory: the mesh-config TOML, the SQLite files (or,
//! on [`Backend::Postgres`], one fresh database per service), the signing key the kit gave
//! weft-auth, and one log file per process. When a test panics the directory is kept and the
//! tail of each log is printed, so the failure can be read.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};
use tonic::{Status, transport::Channel};
/// A `grpc.health.v1` status, as [`TestMesh::health`] reports it.
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use weft_proto::{
    auth::{AuthTokens, LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    order::order_service_client::OrderServiceClient,
    user::user_service_client::UserServiceClient,
};

use crate::{
    config::{self, Placement, Replica, WEFT_SERVICES},
    database::{Backend, TestDatabase},
    process::{
        START_TIMEOUT, binary, channel_to, clean_env, free_loopback_addrs, http_get_status, lock,
        run_to_end, terminate_child,
    },
    tokens::{Claims, SigningKey},
};

/// The email of the administrator [`TestMesh::admin`] registers and promotes.
pub const ADMIN_EMAIL: &str = "admin@weft.test";
/// The password [`TestMesh::admin`] registers the admin with.
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// The REST gateway's process name (its binary, and its log file's stem).
pub const GATEWAY: &str = "weft-gateway";

/// A service beyond Weft's three, started with them: `weft-<name>` on its own port, declared
/// as `[services.<name>]` and `[upstreams.<name>]` (endpoint only: what it serves is the test's
/// TOML to say, e.g. `grpc_services` and `descriptor_set`).
#[derive(Debug, Clone)]
pub struct ExtraService {
    /// Its mesh-config name; its binary is `weft-<name>`.
    pub name: String,
    /// Whether it gets a fresh database (`database_url`) like Weft's services.
    pub database: bool,
}

/// Extra settings of a test mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshOptions {
    /// TOML merged over the generated mesh-config (section by section), e.g.
    /// `"[jwt]\naccess_ttl_secs = 2\n"`.
    pub toml: String,
    /// Environment variables for every process (the gateway's too).
    pub env: Vec<(String, String)>,
    /// Also start `weft-gateway` (after the services are SERVING), with `[gateway] listen` and
    /// `admin_listen` on free loopback ports, and wait until its admin listener's `/healthz` and
    /// `/readyz` answer 200 and its API listener accepts connections; default false.
    pub gateway: bool,
    /// Pass the test's own `OTEL_*` variables on to the processes (to export their spans to a
    /// real collector while debugging); default false, they are removed. An in-process
    /// [`crate::Collector`] is given to them with `env: collector.env()` instead.
    pub inherit_otel_env: bool,
    /// Second instances to start, one per entry (after the first instances are SERVING), on
    /// their own ports and the same database; the upstream's `endpoints` list both, so callers
    /// balance over them. Default none.
    pub replicas: Vec<String>,
    /// Services started after Weft's three; default none.
    pub extra_services: Vec<ExtraService>,
    /// Run the mesh over mTLS: a CA and a certificate per process (and for `weft`, the
    /// kit's own health checks) made in the mesh's folder, `[mtls]` on and reloading every
    /// 200 ms. Default false: the generated config opts out (`[mtls] mode = "off"`).
    pub mtls: bool,
}

/// A running mesh of the real binaries. Kills its children (and drops its PostgreSQL
/// databases) when dropped; [`TestMesh::stop`] does it gracefully.
pub struct TestMesh {
    backend: Backend,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    config_path: PathBuf,
    options: MeshOptions,
    /// Every service, in start order.
    services: Vec<Placement>,
    /// Where each service serves `/metrics` (`services.<name>.admin_listen`).
    admin_addrs: BTreeMap<String, SocketAddr>,
    databases: Vec<TestDatabase>,
    signing_key: Option<SigningKey>,
    children: Mutex<HashMap<String, Child>>,
    /// Where the gateway listens, and whether over TLS; `None` without [`MeshOptions::gateway`].
    gateway: Option<(SocketAddr, bool)>,
    gateway_child: Mutex<Option<Child>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// The replicas of [`MeshOptions::replicas`], in order, with their processes.
    replicas: Mutex<Vec<(Replica, Option<Child>)>>,
    admin: tokio::sync::Mutex<Option<AuthTokens>>,
}

// === impl TestMesh ===

impl TestMesh {
    /// Starts the mesh on `backend` with default options and waits until every service is
    /// SERVING. Panics with the services' logs when one does not come up.
    pub async fn start(backend: Backend) -> TestMesh {
        Self::start_with(backend, MeshOptions::default()).await
    }

    /// Starts the mesh with `options`.
    ///
    /// Ports are picked free just before the processes bind them, but another test's process
    /// can still take one in between (its own listener, or a connection's ephemeral port).
    /// When a process then exits because its address is in use, the mesh is started again from
    /// scratch on other ports, up to [`START_ATTEMPTS`] times.
    pub async fn start_with(backend: Backend, options: MeshOptions) -> TestMesh {
        let mut attempt = 1;
        loop {
            match Self::try_start(backend.clone(), options.clone()).await {
                Ok(mesh) => return mesh,
                Err(PortTaken(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("testkit: {why}\ntestkit: starting the mesh again on other ports");
                    attempt += 1;
                }
                Err(PortTaken(why)) => panic!("{why} (attempt {attempt} of {START_ATTEMPTS})"),
            }
        }
    }

    /// One attempt of [`TestMesh::start_with`]; panics on anything but a port taken meanwhile.
    async fn try_start(backend: Backend, options: MeshOptions) -> Result<TestMesh, PortTaken> {
        let mut planned: Vec<(String, Vec<String>, bool)> = WEFT_SERVICES
            .iter()
            .map(|&(name, grpc)| (name.to_string(), vec![grpc.to_string()], true))
            .collect();
        planned.extend(
            options
                .extra_services
                .iter()
                .map(|extra| (extra.name.clone(), Vec::new(), extra.database)),
        );
        // Fail early and clearly when a binary is missing.
        for (name, _, _) in &planned {
            binary(&weft_mesh::config::process_name(name));
        }
        if options.gateway {
            binary(GATEWAY);
        }
        let dir = tempfile::Builder::new()
            .prefix("weft-test-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let path = dir.path().to_path_buf();
        let config_path = path.join("mesh.toml");

        // The slow steps first (databases, the signing key): ports are picked only just before
        // the processes bind them, so that no other test's process takes one meanwhile.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut services = Vec::new();
        let mut databases = Vec::new();
        for (name, grpc_services, keeps_data) in planned {
            let database_url = if keeps_data {
                let database = TestDatabase::in_dir(&backend, &path, &name).await;
                let url = database.url().to_string();
                databases.push(database);
                url
            } else {
                String::new()
            };
            services.push(Placement {
                name,
                addr: unbound,
                database_url,
                grpc_services,
            });
        }
        let extra = if options.mtls {
            config::mtls_toml(&path.join("certs"), &options.toml)
        } else {
            options.toml.clone()
        };
        let signing_key = if services.iter().any(|s| s.name == "auth") {
            let config = config::generate(&services, None, &extra);
            std::fs::write(&config_path, config).expect("cannot write the mesh config");
            Some(import_signing_key(&path, &config_path).await)
        } else {
            None
        };

        let mut free = free_loopback_addrs(services.len() + 1);
        let gateway_addr = free.pop().expect("one address per process");
        let gateway_addr = options.gateway.then_some(gateway_addr);
        for (service, addr) in services.iter_mut().zip(free) {
            service.addr = addr;
        }
        let config = config::generate(&services, gateway_addr, &extra);
        let taken: Vec<SocketAddr> = services
            .iter()
            .map(|s| s.addr)
            .chain(gateway_addr)
            .collect();
        let (config, admin_addrs) = config::with_admin_listeners(config, &taken);
        let (config, replicas) = config::with_replicas(config, &options.replicas);
        let gateway = gateway_addr.map(|addr| (addr, config::gateway_tls(&config)));
        std::fs::write(&config_path, config).expect("cannot write the mesh config");
        if options.mtls {
            let config = weft_mesh::MeshConfig::load_from(Some(&config_path), [])
                .expect("the generated config is valid");
            config::issue_certificates(&config.mtls, &config.identities());
        }

        let mesh = TestMesh {
            backend,
            dir: Some(dir),
            path,
            config_path,
            options,
            services,
            admin_addrs,
            databases,
            signing_key,
            children: Mutex::new(HashMap::new()),
            gateway,
            gateway_child: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            replicas: Mutex::new(Vec::new()),
            admin: tokio::sync::Mutex::new(None),
        };
        let names: Vec<String> = mesh.services.iter().map(|s| s.name.clone()).collect();
        for name in &names {
            mesh.spawn(name);
        }
        for name in &names {
            mesh.wait_serving(name).await?;
        }
        for replica in replicas {
            mesh.start_replica(replica).await;
        }
        if mesh.gateway.is_some() {
            mesh.spawn_gateway();
            mesh.wait_gateway_ready().await?;
        }
        Ok(mesh)
    }

    /// The backend the mesh runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The mesh's temporary directory (config, SQLite files, logs).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The mesh-config file the processes were started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The names of the services the mesh runs, in start order (`auth`, `user`, `order`, ...).
    pub fn service_names(&self) -> Vec<&str> {
        self.services.iter().map(|s| s.name.as_str()).collect()
    }

    fn placement(&self, name: &str) -> &Placement {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("this mesh runs no service {name:?}"))
    }

    /// Where `name` listens.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.placement(name).addr
    }

    /// Where `name` serves its admin endpoint (`/metrics`).
    pub fn admin_addr(&self, name: &str) -> SocketAddr {
        self.admin_addrs[name]
    }

    /// `http://127.0.0.1:<port>/metrics` of `name`: its Prometheus metrics.
    pub fn metrics_url(&self, name: &str) -> String {
        format!("http://{}/metrics", self.admin_addr(name))
    }

    /// The database URL of `name`.
    pub fn database_url(&self, name: &str) -> &str {
        &self.placement(name).database_url
    }

    /// The path of `name`'s log file (stdout and stderr of every run).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.path
            .join(format!("{}.log", weft_mesh::config::process_name(name)))
    }

    /// A channel to `name` (reconnects by itself; replaced on [`TestMesh::restart`]).
    pub fn channel(&self, name: &str) -> Channel {
        let addr = self.addr(name);
        lock(&self.channels)
            .entry(name.to_string())
            .or_insert_with(|| channel_to(addr))
            .clone()
    }

    /// A client of weft-auth.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel("auth"))
    }

    /// A client of weft-user.
    pub fn user(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel("user"))
    }

    /// A client of weft-order.
    pub fn order(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.channel("order"))
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

    /// Signs in [`ADMIN_EMAIL`] as an administrator: registers it on first use and grants it
    /// the role as an operator does ([`TestMesh::grant_role`]), then signs in again so that the
    /// token carries the role.
    pub async fn admin(&self) -> AuthTokens {
        let mut cached = self.admin.lock().await;
        if let Some(tokens) = cached.as_ref() {
            return tokens.clone();
        }
        let registered = self
            .auth()
            .register(RegisterRequest {
                email: ADMIN_EMAIL.into(),
                password: ADMIN_PASSWORD.into(),
                display_name: "Admin".into(),
            })
            .await;
        match registered {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => panic!("admin Register failed: {status:?}"),
        }
        self.grant_role(ADMIN_EMAIL, "admin").await;
        let tokens = self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        *cached = Some(tokens.clone());
        tokens
    }

    /// Signs `email` in; panics when Login fails.
    pub async fn login(&self, email: &str, password: &str) -> AuthTokens {
        self.auth()
            .login(LoginRequest {
                email: email.to_string(),
                password: password.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("Login({email}) failed: {:?} {}", s.code(), s.message()))
            .into_inner()
    }

    /// Gives the registered account `email` the role `role` (`admin`, `user`) with
    /// `weft-user --config <mesh config> grant-role`, the operator's way; its next sign-in
    /// carries it. Panics when the command fails.
    pub async fn grant_role(&self, email: &str, role: &str) {
        run_to_end(
            &binary("weft-user"),
            &self.config_path,
            &self.path,
            &["grant-role", "--email", email, "--role", role],
        )
        .await;
    }

    /// Runs the `weft` command line with `args`, then `--config <mesh config> --bin-dir <the
    /// binaries' folder>` (so `args` name a subcommand that takes both, like `admin grant`),
    /// in the mesh's folder with `stdin` as its standard input, and returns how it ended.
    pub async fn run_weft(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use tokio::io::AsyncWriteExt as _;
        let weft = binary("weft");
        let bin_dir = weft.parent().expect("a binary has a folder").to_path_buf();
        let mut command = Command::new(&weft);
        command
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--bin-dir")
            .arg(bin_dir)
            .current_dir(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        clean_env(&mut command, false);
        let mut child = command.spawn().expect("cannot start weft");
        let mut input = child.stdin.take().expect("piped stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("cannot write weft's stdin");
        drop(input);
        tokio::time::timeout(START_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("weft {} did not finish in time", args.join(" ")))
            .expect("cannot run weft")
    }

    /// The health of `service` (`""` for the whole server) as reported by `name`.
    pub async fn health(&self, name: &str, service: &str) -> Result<ServingStatus, Status> {
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let response = if self.options.mtls {
            let identity = self.identity(weft_mesh::config::OPERATOR_IDENTITY);
            HealthClient::new(self.mtls_connection(name, &identity))
                .check(request)
                .await?
        } else {
            HealthClient::new(self.channel(name)).check(request).await?
        };
        let response = response.into_inner();
        Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
    }

    /// The mTLS material of the process `name` in a mesh started with [`MeshOptions::mtls`]
    /// (its certificate as the files hold it now), to call the mesh as that process does.
    pub fn identity(&self, name: &str) -> weft_mesh::mtls::MeshTls {
        let config = weft_mesh::MeshConfig::load_from(Some(&self.config_path), [])
            .expect("the mesh's config is valid");
        weft_mesh::mtls::MeshTls::load(&config.mtls, name)
            .unwrap_or_else(|e| panic!("no certificate for {name}: {e}"))
    }

    /// A lazily connecting mTLS connection to the service `name`, presenting `identity`'s
    /// certificate and expecting `name`'s (a tonic transport: `UserServiceClient::new(..)`).
    pub fn mtls_connection(
        &self,
        name: &str,
        identity: &weft_mesh::mtls::MeshTls,
    ) -> weft_mesh::connection::Connection {
        let addr = self.addr(name);
        weft_mesh::connection::Connection::with_tls(
            addr,
            http::uri::Scheme::HTTP,
            addr.to_string()
                .parse()
                .expect("an address is an authority"),
            Duration::from_secs(5),
            weft_mesh::connection::Keepalive::default(),
            Some(weft_mesh::mtls::ClientTls {
                server: name.to_owned(),
                own: Some(identity.clone()),
            }),
        )
    }

    /// Kills `name` with SIGKILL and reaps it.
    pub async fn kill(&self, name: &str) {
        let child = lock(&self.children).remove(name);
        if let Some(mut child) = child {
            child.kill().await.expect("cannot kill the child");
        }
    }

    /// Sends SIGTERM to `name` and waits for it to exit (bounded by
    /// [`crate::process::STOP_TIMEOUT`], after which it is killed and the test panics).
    /// Returns its exit status.
    pub async fn terminate(&self, name: &str) -> ExitStatus {
        let child = lock(&self.children).remove(name);
        let mut child = child.unwrap_or_else(|| panic!("{name} is not running"));
        terminate_child(name, &mut child).await
    }

    /// The process id of `name`'s running process (to read its `/proc/<pid>/status`, say);
    /// panics when it is not running.
    pub fn pid(&self, name: &str) -> u32 {
        lock(&self.children)
            .get(name)
            .and_then(Child::id)
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    /// Whether `name`'s process is running (not exited, not killed by the kit).
    pub fn is_running(&self, name: &str) -> bool {
        let mut children = lock(&self.children);
        match children.get_mut(name) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Restarts `name` with the same config, ports and database: terminates it gracefully if it
    /// is still running, starts it again, and waits until it is SERVING.
    pub async fn restart(&self, name: &str) {
        let child = lock(&self.children).remove(name);
        if let Some(mut child) = child
            && matches!(child.try_wait(), Ok(None))
        {
            terminate_child(name, &mut child).await;
        }
        // A fresh channel: the old one may hold a broken connection.
        lock(&self.channels).insert(name.to_string(), channel_to(self.addr(name)));
        self.spawn(name);
        if let Err(PortTaken(why)) = self.wait_serving(name).await {
            panic!("{why}");
        }
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
        config::merge(&mut root, extra);
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
        lock(&self.replicas)[index].0.addr
    }

    /// Kills replica `index` of [`MeshOptions::replicas`] with SIGKILL.
    pub async fn kill_replica(&self, index: usize) {
        let child = lock(&self.replicas)[index].1.take();
        if let Some(mut child) = child {
            child.kill().await.expect("cannot kill the replica");
        }
    }

    /// Everything replica `index` wrote to stdout and stderr.
    pub fn replica_logs(&self, index: usize) -> String {
        std::fs::read_to_string(self.path.join(format!("replica-{index}.log"))).unwrap_or_default()
    }

    async fn start_replica(&self, replica: Replica) {
        let index = lock(&self.replicas).len();
        let section = replica.name.to_uppercase().replace('-', "_");
        let env = [
            (
                format!("WEFT_SERVICES__{section}__LISTEN"),
                replica.addr.to_string(),
            ),
            (
                format!("WEFT_SERVICES__{section}__ADMIN_LISTEN"),
                replica.admin.to_string(),
            ),
        ];
        let log = self.path.join(format!("replica-{index}.log"));
        let child = self.spawn_process_with(
            &binary(&weft_mesh::config::process_name(&replica.name)),
            &log,
            &env,
        );
        let (name, addr) = (replica.name.clone(), replica.addr);
        lock(&self.replicas).push((replica, Some(child)));
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
    pub fn logs(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Every process's logs: `(process name, logs)`, the gateway's last.
    fn all_logs(&self) -> Vec<(String, String)> {
        self.services
            .iter()
            .map(|s| (weft_mesh::config::process_name(&s.name), self.logs(&s.name)))
            .chain(
                self.gateway
                    .map(|_| (GATEWAY.to_string(), self.gateway_logs())),
            )
            .collect()
    }

    /// Panics when any process's log contains a panic.
    pub fn assert_no_panics(&self) {
        for (name, logs) in self.all_logs() {
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

    /// The signing key the kit made and gave weft-auth before it first started
    /// (`weft-auth import-key`): weft-auth signs with it until a rotation, and its public half
    /// is in the JWKS.
    pub fn signing_key(&self) -> &SigningKey {
        self.signing_key
            .as_ref()
            .expect("this mesh runs no weft-auth")
    }

    /// Signs `claims` with [`TestMesh::signing_key`], so tests can make tokens the services must
    /// refuse (expired, wrong `aud`) or accept (unknown subject).
    pub fn sign_token(&self, claims: &Claims) -> String {
        self.signing_key().sign(claims)
    }

    /// Claims of a valid access token for `subject` with `role` (`user`, `admin`, `service`),
    /// issued now, expiring in 5 minutes, for the default issuer and audience.
    pub fn claims(&self, subject: &str, role: &str) -> Claims {
        crate::tokens::claims(subject, role)
    }

    /// Rotates weft-auth's signing key with `weft-auth --config <mesh config> rotate-key` (the
    /// running service picks it up within `auth.key_reload_interval_ms`) and returns the new
    /// key id.
    pub async fn rotate_signing_key(&self) -> String {
        let out = run_to_end(
            &binary("weft-auth"),
            &self.config_path,
            &self.path,
            &["rotate-key"],
        )
        .await;
        let kid = out.trim().to_string();
        assert!(!kid.is_empty(), "weft-auth rotate-key printed no key id");
        kid
    }

    /// Where the gateway listens; panics when the mesh was started without it.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway
            .expect("this mesh was started without the gateway (MeshOptions::gateway)")
            .0
    }

    /// Where the gateway's admin listener (`/metrics`, `/readyz`, `/healthz`) listens; panics
    /// when the mesh was started without the gateway.
    pub fn gateway_admin_addr(&self) -> SocketAddr {
        *self
            .admin_addrs
            .get(config::GATEWAY_ADMIN)
            .expect("this mesh was started without the gateway (MeshOptions::gateway)")
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

    /// Whether the gateway's process is running (not exited, not killed by the kit).
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

    /// Sends SIGTERM to the gateway and waits for it to exit.
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
        if let Err(PortTaken(why)) = self.wait_gateway_ready().await {
            panic!("{why}");
        }
    }

    /// Stops every service (and the gateway, first) with SIGTERM, waiting for each to exit, and
    /// drops the PostgreSQL databases.
    pub async fn stop(mut self) {
        let gateway = lock(&self.gateway_child).take();
        if let Some(mut child) = gateway {
            terminate_child(GATEWAY, &mut child).await;
        }
        let children: Vec<(String, Child)> = lock(&self.children).drain().collect();
        for (name, mut child) in children {
            terminate_child(name, &mut child).await;
        }
        lock(&self.channels).clear();
        for database in std::mem::take(&mut self.databases) {
            database.remove().await;
        }
    }

    fn spawn(&self, name: &str) {
        let process = weft_mesh::config::process_name(name);
        let child = self.spawn_process_with(&binary(&process), &self.log_path(name), &[]);
        lock(&self.children).insert(name.to_string(), child);
    }

    fn spawn_gateway(&self) {
        let child = self.spawn_process_with(&binary(GATEWAY), &self.gateway_log_path(), &[]);
        *lock(&self.gateway_child) = Some(child);
    }

    /// Starts `binary --config <mesh config>` in the mesh's folder, appending to `log_path`,
    /// with extra environment variables.
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

    /// Waits until the gateway's admin listener answers 200 on `/healthz` and `/readyz`, and
    /// its API listener accepts connections.
    async fn wait_gateway_ready(&self) -> Result<(), PortTaken> {
        let (addr, _) = self.gateway.expect("the gateway is configured");
        let admin = self.gateway_admin_addr();
        let started = Instant::now();
        loop {
            if let Some(child) = lock(&self.gateway_child).as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(PortTaken::or_panic(
                    format!("{GATEWAY} exited during start-up with {status}"),
                    self.gateway_logs(),
                ));
            }
            let last = match (
                http_get_status(admin, "/healthz").await,
                http_get_status(admin, "/readyz").await,
            ) {
                (Ok(200), Ok(200)) => match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => return Ok(()),
                    Err(e) => format!("API listener: cannot connect: {e}"),
                },
                (healthz, readyz) => format!("/healthz: {healthz:?}, /readyz: {readyz:?}"),
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

    async fn wait_serving(&self, name: &str) -> Result<(), PortTaken> {
        let started = Instant::now();
        loop {
            {
                let mut children = lock(&self.children);
                let child = children
                    .get_mut(name)
                    .unwrap_or_else(|| panic!("{name} is not running"));
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(PortTaken::or_panic(
                        format!("{name} exited during start-up with {status}"),
                        self.logs(name),
                    ));
                }
            }
            let last =
                match tokio::time::timeout(Duration::from_secs(2), self.health(name, "")).await {
                    Ok(Ok(ServingStatus::Serving)) => return Ok(()),
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

/// Times [`TestMesh::start_with`] starts the mesh when a port it picked was taken meanwhile.
const START_ATTEMPTS: u32 = 3;

/// A process of the mesh exited at start-up because an address it was given was in use.
#[derive(Debug)]
struct PortTaken(String);

// === impl PortTaken ===

impl PortTaken {
    /// The failure `what` of a process whose log is `log`: a [`PortTaken`] when the log says
    /// an address was in use, else a panic with the log.
    fn or_panic(what: String, log: String) -> Self {
        if log.contains("Address already in use") {
            PortTaken(format!("{what}: an address it was given was in use"))
        } else {
            panic!("{what}; its log:\n{log}")
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
        children.extend(lock(&self.replicas).iter_mut().filter_map(|r| r.1.take()));
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
            for (name, logs) in self.all_logs() {
                let lines: Vec<&str> = logs.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("--- last lines of {name} ---\n{}", tail.join("\n"));
            }
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("--- kept {} for inspection ---", kept.display());
            }
        }
        // The databases go with `self.databases` (PostgreSQL ones are dropped on a thread).
    }
}

/// Makes a key and installs it with `weft-auth import-key --pem <file>` before weft-auth
/// first starts, so that it is the key weft-auth signs with.
async fn import_signing_key(dir: &Path, config_path: &Path) -> SigningKey {
    let mut key = SigningKey::generate();
    let file = dir.join("signing-key.pem");
    key.write_pem(&file);
    let file = file.to_string_lossy().into_owned();
    let out = run_to_end(
        &binary("weft-auth"),
        config_path,
        dir,
        &["import-key", "--pem", &file],
    )
    .await;
    key.kid = out.trim().to_string();
    assert!(
        !key.kid.is_empty(),
        "weft-auth import-key printed no key id"
    );
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_in_use_at_start_up_is_a_port_taken() {
        let log = "{\"level\":\"ERROR\",\"error\":\"cannot listen on 127.0.0.1:42467 \
                   (admin_listen, /metrics): Address already in use (os error 98)\"}";
        let PortTaken(why) = PortTaken::or_panic("order exited".into(), log.into());
        assert_eq!(why, "order exited: an address it was given was in use");
    }

    #[test]
    #[should_panic(expected = "order exited; its log:\nbad config")]
    fn any_other_exit_at_start_up_panics_with_the_log() {
        PortTaken::or_panic("order exited".into(), "bad config".into());
    }
}
