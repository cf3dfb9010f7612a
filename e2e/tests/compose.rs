//! The deployments agree with the mesh-configs they run (loaded with `MeshConfig::load_from`,
//! as the processes load them).
//!
//! Compose: docker-compose.yml, deploy/ and mesh-config/compose.toml describe one stack: every
//! service name, port, config path, upstream endpoint, database and scrape target in the compose
//! file, the Prometheus config and the PostgreSQL init script agrees with the mesh-config the
//! containers run. No Docker engine is needed: the YAML is read with PyYAML
//! (`scripts/yaml-to-json.sh`), and `docker-compose config -q` validates the file where
//! docker-compose is installed (in CI it must be).
//!
//! Kubernetes: deploy/kubernetes's production overlay, rendered with `kubectl kustomize`, and
//! its weft.toml name the same ports, headless Services, Secrets, probes and policies
//! (`scripts/check-kubernetes.sh` validates the manifests themselves).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use weft_mesh::{MeshConfig, config::process_name};
use weft_testkit::config::WEFT_SERVICES;

const GATEWAY: &str = "weft-gateway";

/// Weft's services, by process name (`weft-auth`), the compose services' names.
fn processes() -> Vec<String> {
    WEFT_SERVICES
        .iter()
        .map(|(name, _)| process_name(name))
        .collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the repository")
        .to_path_buf()
}

/// The YAML files, as JSON.
fn yaml(files: &[&str]) -> Vec<Value> {
    let output = Command::new(root().join("scripts/yaml-to-json.sh"))
        .args(files)
        .current_dir(root())
        .output()
        .expect("cannot run scripts/yaml-to-json.sh");
    assert!(
        output.status.success(),
        "scripts/yaml-to-json.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("yaml-to-json.sh prints JSON")
}

fn config() -> MeshConfig {
    let path = root().join("mesh-config/compose.toml");
    MeshConfig::load_from(Some(&path), std::iter::empty())
        .unwrap_or_else(|e| panic!("mesh-config/compose.toml does not load: {e}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The container ports of a service's `ports` (`"8080:8080"`, `"127.0.0.1:1:2"`, `"2"`).
fn container_ports(service: &Value) -> Vec<u16> {
    strings(&service["ports"])
        .iter()
        .filter_map(|mapping| {
            let container = mapping.rsplit(':').next()?;
            container.split('/').next()?.parse().ok()
        })
        .collect()
}

/// `(host path, container path)` of a service's bind mounts, host paths resolved from the root.
fn mounts(service: &Value) -> Vec<(PathBuf, String)> {
    strings(&service["volumes"])
        .iter()
        .filter_map(|volume| {
            let mut parts = volume.split(':');
            let host = parts.next()?;
            let container = parts.next()?;
            (host.starts_with("./") || host.starts_with('/'))
                .then(|| (root().join(host), container.to_string()))
        })
        .collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `(host, port)` of `http://host:port`.
fn host_port(uri: &str) -> (String, u16) {
    let uri: http::Uri = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
    let authority = uri
        .authority()
        .unwrap_or_else(|| panic!("{uri}: no authority"));
    let port = authority
        .port_u16()
        .unwrap_or_else(|| panic!("{uri}: no port"));
    (authority.host().to_string(), port)
}

fn assert_reachable_listen(what: &str, addr: SocketAddr) {
    assert!(
        addr.ip().is_unspecified(),
        "{what} = {addr}: in a container it must listen on 0.0.0.0 to be reachable"
    );
}

#[test]
fn docker_compose_agrees_with_mesh_config_compose_toml() {
    let config = config();
    assert_eq!(config.environment, "compose");
    let documents = yaml(&["docker-compose.yml", "deploy/prometheus.yml"]);
    let (compose, prometheus) = (&documents[0], &documents[1]);
    let services = compose["services"]
        .as_object()
        .expect("docker-compose.yml has services");

    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let processes = processes();
    let expected: BTreeSet<&str> = processes
        .iter()
        .map(String::as_str)
        .chain([GATEWAY, "jaeger", "postgres", "prometheus"])
        .collect();
    assert_eq!(names, expected, "the compose services");

    // --- every Weft process: the image, its binary, and mesh-config/compose.toml ---
    let compose_toml = root().join("mesh-config/compose.toml");
    for name in processes.iter().map(String::as_str).chain([GATEWAY]) {
        let service = &services[name];
        let build = &service["build"];
        let context = root().join(build["context"].as_str().unwrap_or("."));
        assert!(same_file(&context, &root()), "{name}: build context");
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
        let dockerfile_text = std::fs::read_to_string(&dockerfile)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", dockerfile.display()));
        assert_eq!(
            strings(&service["command"]),
            [name],
            "{name} runs its own binary"
        );
        assert!(
            dockerfile_text.contains(name),
            "{name}: the Dockerfile does not build it"
        );
        let config_path = service["environment"]["WEFT_CONFIG"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no WEFT_CONFIG"));
        assert!(
            mounts(service)
                .iter()
                .any(|(host, container)| container == config_path
                    && same_file(host, &compose_toml)),
            "{name}: WEFT_CONFIG={config_path} is not mesh-config/compose.toml mounted there"
        );
        assert!(
            dockerfile_text.contains("COPY mesh-config/*.toml /etc/weft/")
                && config_path == "/etc/weft/compose.toml",
            "{name}: the image carries the config where WEFT_CONFIG points"
        );
    }

    // --- the services: ports, health checks, databases, start order ---
    let init_sql = std::fs::read_to_string(root().join("deploy/postgres/init.sql"))
        .expect("deploy/postgres/init.sql");
    let mut scrape_expected = BTreeSet::new();
    for (key, _) in WEFT_SERVICES {
        let name = process_name(key);
        let service_config = config
            .service(key)
            .expect("compose.toml declares the service");
        let service = &services[name.as_str()];
        let port = service_config.listen.port();
        let admin_port = service_config.admin_listen.port();
        assert_reachable_listen(&format!("services.{key}.listen"), service_config.listen);
        assert_reachable_listen(
            &format!("services.{key}.admin_listen"),
            service_config.admin_listen,
        );
        assert!(
            container_ports(service).contains(&port),
            "{name}: ports {:?} do not publish {port}",
            service["ports"]
        );
        assert!(
            strings(&service["expose"]).contains(&admin_port.to_string()),
            "{name}: the admin port {admin_port} is not exposed"
        );
        assert_eq!(
            strings(&service["healthcheck"]["test"]),
            ["CMD", "weft", "health", &format!("127.0.0.1:{port}")],
            "{name}: health check"
        );
        assert_eq!(
            service["depends_on"]["postgres"]["condition"], "service_healthy",
            "{name} waits for PostgreSQL"
        );

        let upstream = &config
            .upstream(key)
            .expect("compose.toml declares the upstream")
            .endpoint;
        assert_eq!(
            host_port(upstream),
            (name.as_str().to_string(), port),
            "upstreams.{key}.endpoint must be the compose service and its port"
        );

        let url = &service_config.database_url;
        let rest = url
            .strip_prefix("postgres://")
            .unwrap_or_else(|| panic!("services.{key}.database_url is not PostgreSQL: {url}"));
        let (credentials, location) = rest.split_once('@').expect("user:password@host");
        let (user, password) = credentials.split_once(':').expect("user:password");
        let (host, database) = location.split_once('/').expect("host:port/database");
        assert_eq!(host, "postgres:5432", "services.{key}.database_url host");
        assert_eq!(database, format!("weft_{key}"));
        assert_eq!(user, format!("weft_{key}"));
        assert!(
            init_sql.contains(&format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'")),
            "init.sql does not create the role {user} with compose.toml's password"
        );
        assert!(
            init_sql.contains(&format!("CREATE DATABASE {database} OWNER {user};")),
            "init.sql does not create {database} owned by {user}"
        );
        assert!(init_sql.contains(&format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC;")));
        scrape_expected.insert(format!("{}:{admin_port}", name.as_str()));
    }

    // --- the gateway ---
    let gateway = &services[GATEWAY];
    let gateway_port = config.gateway.listen.port();
    assert_reachable_listen("gateway.listen", config.gateway.listen);
    assert!(container_ports(gateway).contains(&gateway_port));
    // Readiness and metrics stay off the published port: probes and Prometheus use the admin one.
    assert!(
        !config.gateway.public_operations,
        "compose.toml must keep /readyz and /metrics off the public port"
    );
    let gateway_admin = config.gateway.admin_listen.port();
    assert_reachable_listen("gateway.admin_listen", config.gateway.admin_listen);
    assert!(!container_ports(gateway).contains(&gateway_admin));
    assert_eq!(
        strings(&gateway["healthcheck"]["test"]),
        [
            "CMD",
            "weft",
            "health",
            &format!("http://127.0.0.1:{gateway_admin}/readyz")
        ]
    );
    for name in &processes {
        assert_eq!(
            gateway["depends_on"][name.as_str()]["condition"],
            "service_healthy",
            "the gateway waits for {name}"
        );
    }
    scrape_expected.insert(format!("{GATEWAY}:{gateway_admin}"));

    // --- PostgreSQL runs the init script ---
    let postgres = &services["postgres"];
    assert!(
        mounts(postgres).iter().any(|(host, container)| {
            same_file(host, &root().join("deploy/postgres/init.sql"))
                && container.starts_with("/docker-entrypoint-initdb.d/")
        }),
        "postgres does not run deploy/postgres/init.sql"
    );
    assert!(!postgres["healthcheck"]["test"].is_null());

    // --- Jaeger receives OTLP where telemetry.otlp_endpoint sends it ---
    let (otlp_host, otlp_port) = host_port(&config.telemetry.otlp_endpoint);
    assert_eq!(otlp_host, "jaeger");
    let jaeger = &services["jaeger"];
    for port in [otlp_port, 4318, 16686] {
        assert!(
            container_ports(jaeger).contains(&port),
            "jaeger does not publish {port}"
        );
    }
    assert!(
        strings(&jaeger["command"])
            .iter()
            .any(|arg| arg.ends_with(&format!("grpc.endpoint=0.0.0.0:{otlp_port}"))),
        "jaeger's OTLP gRPC receiver must listen on 0.0.0.0:{otlp_port}"
    );

    // --- Prometheus scrapes every /metrics ---
    let prometheus_service = &services["prometheus"];
    assert!(
        mounts(prometheus_service).iter().any(|(host, container)| {
            same_file(host, &root().join("deploy/prometheus.yml"))
                && container == "/etc/prometheus/prometheus.yml"
        }),
        "prometheus does not read deploy/prometheus.yml"
    );
    let mut targets = BTreeSet::new();
    for job in prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
    {
        let path = job["metrics_path"].as_str().unwrap_or("/metrics");
        assert_eq!(path, "/metrics", "{}", job["job_name"]);
        for static_config in job["static_configs"].as_array().into_iter().flatten() {
            targets.extend(strings(&static_config["targets"]));
        }
    }
    targets.remove("localhost:9090");
    assert_eq!(targets, scrape_expected, "Prometheus scrape targets");

    // --- only the API is published beyond the host's loopback ---
    for (name, service) in services {
        for mapping in strings(&service["ports"]) {
            let public = name == GATEWAY && mapping == format!("{gateway_port}:{gateway_port}");
            assert!(
                public || mapping.starts_with("127.0.0.1:"),
                "{name} publishes `{mapping}` on every interface: bind it to 127.0.0.1"
            );
        }
    }
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let found = Command::new("docker-compose").arg("version").output();
    if found.is_err() {
        let message = "docker-compose is not installed (apt-get install docker-compose)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}, but CI=true: CI must validate docker-compose.yml");
        }
        eprintln!("note: skipping `docker-compose config`: {message}");
        return;
    }
    let output = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(root())
        .output()
        .expect("cannot run docker-compose");
    assert!(
        output.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_image_builds_every_binary_and_runs_as_a_user() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let words: Vec<&str> = dockerfile
        .split(|c: char| c.is_whitespace() || c == '"')
        .collect();
    let packages: BTreeSet<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    for binary in processes()
        .iter()
        .map(String::as_str)
        .chain([GATEWAY, "weft"])
    {
        assert!(
            packages.contains(binary),
            "the Dockerfile does not build {binary}: {packages:?}"
        );
    }
    assert!(dockerfile.contains("--locked"));
    let runtime = dockerfile
        .rsplit("\nFROM ")
        .next()
        .expect("a runtime stage");
    assert!(
        runtime
            .lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "the runtime stage runs as a non-root user"
    );
}

/// The image's cached dependency layer builds the workspace from its manifests alone: a member
/// whose manifest it does not copy would stop `docker build` (no Docker engine here to find out).
#[test]
fn the_image_copies_every_workspace_members_manifest() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    for member in members.iter().filter_map(|m| m.as_str()) {
        let copied = dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/"))
            || dockerfile.contains(&format!("COPY {member} {member}"));
        assert!(
            copied,
            "deploy/Dockerfile does not copy {member}/Cargo.toml"
        );
    }
}

// === deploy/kubernetes ===

/// `deploy/kubernetes/overlays/production` as `kubectl kustomize` renders it, as JSON documents;
/// `None` (with a note) where kubectl is not installed, which CI does not accept.
fn kustomize_production() -> Option<Vec<Value>> {
    let output = match Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes/overlays/production"])
        .current_dir(root())
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "kubectl is needed in CI to render deploy/kubernetes: {e}"
            );
            eprintln!("note: skipping the Kubernetes manifests: kubectl not found ({e})");
            return None;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = tempfile::tempdir().expect("a temporary folder");
    let rendered = dir.path().join("production.yaml");
    std::fs::write(&rendered, &output.stdout).expect("writing the rendered manifests");
    let documents = yaml(&[rendered.to_str().expect("a UTF-8 path")]);
    Some(documents[0].as_array().expect("several documents").clone())
}

/// The rendered resource of `kind` named `name`.
fn resource<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// The container port named `name` of a Deployment's first container.
fn named_port(deployment: &Value, name: &str) -> u16 {
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    ports
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| {
            panic!(
                "{}: no container port {name}",
                deployment["metadata"]["name"]
            )
        })
}

#[test]
fn kubernetes_manifests_agree_with_their_mesh_config() {
    let path = root().join("deploy/kubernetes/base/weft.toml");
    let config = MeshConfig::load_from(Some(&path), std::iter::empty())
        .unwrap_or_else(|e| panic!("deploy/kubernetes/base/weft.toml does not load: {e}"));
    let Some(documents) = kustomize_production() else {
        return;
    };
    for (name, service) in &config.services {
        let process = process_name(name);
        let deployment = resource(&documents, "Deployment", &process);
        assert_eq!(
            named_port(deployment, "grpc"),
            service.listen.port(),
            "{process}"
        );
        assert_eq!(
            named_port(deployment, "admin"),
            service.admin_listen.port(),
            "{process}"
        );
        let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        let database = format!("WEFT_SERVICES__{}__DATABASE_URL", name.to_uppercase());
        assert!(
            env.contains(&database),
            "{process} gets {database} from a Secret"
        );
        // Headless: callers resolve the name to every replica and balance over them.
        let svc = resource(&documents, "Service", &process);
        assert_eq!(
            svc["spec"]["clusterIP"], "None",
            "{process}'s Service is headless"
        );
        let upstream = config.upstream(name).expect("an upstream per service");
        let endpoints = upstream.endpoint_list();
        assert_eq!(
            endpoints,
            [format!("http://{process}:{}", service.listen.port())],
            "upstreams.{name} names the headless Service"
        );
        resource(&documents, "NetworkPolicy", &process);
        resource(&documents, "PodDisruptionBudget", &process);
    }
    let gateway = resource(&documents, "Deployment", GATEWAY);
    assert_eq!(named_port(gateway, "http"), config.gateway.listen.port());
    assert_eq!(
        named_port(gateway, "admin"),
        config.gateway.admin_listen.port()
    );
    assert!(
        !config.gateway.public_operations,
        "/readyz and /metrics stay off the port the Ingress exposes"
    );
    let readiness = &gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(readiness["httpGet"]["path"], "/readyz");
    assert_eq!(readiness["httpGet"]["port"], "admin");
    let ingress = resource(&documents, "Ingress", GATEWAY);
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
        "http"
    );

    // Production runs mTLS: each process, with the environment its Deployment sets, loads a
    // config whose certificate files are the items its Secret mounts.
    let names = config
        .services
        .keys()
        .map(String::as_str)
        .chain(["gateway"]);
    for name in names.collect::<Vec<_>>() {
        let deployment = resource(&documents, "Deployment", &process_name(name));
        let pod = &deployment["spec"]["template"]["spec"];
        let env: Vec<(String, String)> = pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let loaded = MeshConfig::load_from(Some(&path), env)
            .unwrap_or_else(|e| panic!("{name}'s production config does not load: {e}"));
        assert_eq!(loaded.mtls.mode, weft_mesh::config::MtlsMode::On, "{name}");
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "mtls")
            .unwrap_or_else(|| panic!("{name} mounts no certificate"));
        assert_eq!(mount["mountPath"], loaded.mtls.cert_dir.as_str(), "{name}");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "mtls")
            .unwrap();
        assert_eq!(volume["secret"]["secretName"], format!("weft-mtls-{name}"));
        let items: Vec<String> = volume["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                format!(
                    "{}/{}",
                    loaded.mtls.cert_dir,
                    item["path"].as_str().unwrap()
                )
            })
            .collect();
        for file in [
            loaded.mtls.ca_file.clone(),
            format!("{}/{name}.pem", loaded.mtls.cert_dir),
            format!("{}/{name}.key", loaded.mtls.cert_dir),
        ] {
            assert!(
                items.contains(&file),
                "{name}: {file} is not mounted ({items:?})"
            );
        }
    }
}
