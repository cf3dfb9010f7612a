//! The mesh-config a test mesh runs with, generated in the shape `mesh-config/README.md`
//! documents: a `[services.<name>]` per process (listen, admin listen, database) and an
//! `[upstreams.<name>]` naming the gRPC services it serves, Weft's policies
//! (`CreateOrder`'s `idempotent_if_field`), and the gateway's listener;
//! then the test's own TOML merged over it, section by section.

use std::{collections::BTreeMap, net::SocketAddr};

use crate::process::free_loopback_addrs;

/// Weft's own services, in start order: their mesh-config name and the gRPC service each
/// serves.
pub const WEFT_SERVICES: [(&str, &str); 3] = [
    ("auth", "weft.auth.v1.AuthService"),
    ("user", "weft.user.v1.UserService"),
    ("order", "weft.order.v1.OrderService"),
];

/// One service of a test mesh, as placed by the kit.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Its mesh-config name (`order`); its binary is `weft-<name>`.
    pub name: String,
    /// Its gRPC listen address.
    pub addr: SocketAddr,
    /// Its database URL; empty for a service that keeps no data.
    pub database_url: String,
    /// The gRPC services its upstream declares (empty: left to the test's TOML).
    pub grpc_services: Vec<String>,
}

/// The generated mesh-config TOML: `services` and their upstreams, the gateway's `listen` when
/// it has one, then `extra` merged over it.
pub fn generate(services: &[Placement], gateway: Option<SocketAddr>, extra: &str) -> String {
    let mut root = toml::Table::new();
    root.insert("environment".into(), "test".into());
    let mut telemetry = toml::Table::new();
    telemetry.insert("log_format".into(), "json".into());
    telemetry.insert("log_filter".into(), "info".into());
    root.insert("telemetry".into(), telemetry.into());
    let mut section = toml::Table::new();
    let mut upstreams = toml::Table::new();
    for service in services {
        let mut own = toml::Table::new();
        own.insert("listen".into(), service.addr.to_string().into());
        if !service.database_url.is_empty() {
            own.insert("database_url".into(), service.database_url.as_str().into());
        }
        section.insert(service.name.clone(), own.into());
        let mut upstream = toml::Table::new();
        upstream.insert("endpoint".into(), format!("http://{}", service.addr).into());
        if !service.grpc_services.is_empty() {
            upstream.insert(
                "grpc_services".into(),
                toml::Value::Array(
                    service
                        .grpc_services
                        .iter()
                        .map(|s| s.as_str().into())
                        .collect(),
                ),
            );
        }
        upstreams.insert(service.name.clone(), upstream.into());
    }
    root.insert("services".into(), section.into());
    root.insert("upstreams".into(), upstreams.into());
    // A test mesh opts out of mTLS explicitly unless it asks for it (`MeshOptions::mtls`, whose
    // TOML from `mtls_toml` turns it on): its helpers' clients are plain tonic channels.
    merge(
        &mut root,
        "[mtls]\nmode = \"off\"\n".parse().expect("valid TOML"),
    );
    let weft = |name: &str| services.iter().any(|s| s.name == name);
    if weft("auth") {
        // As in mesh-config/local.toml: every process fetches the token keys from weft-auth,
        // whether or not its own contract describes weft-auth (weft-echo's does not), and the
        // gateway limits the public routes that cost a database write.
        merge(
            &mut root,
            "[jwt]\nkeys_method = \"weft.auth.v1.AuthService/GetJwks\"\n\
             [[gateway.rate_limit.rules]]\nname = \"credentials\"\n\
             routes = [\"POST /v1/auth/register\", \"POST /v1/auth/login\", \"POST /v1/auth/refresh\", \
             \"POST /v1/auth/logout\"]\n\
             burst = 20\nper_second = 1.0\n"
                .parse()
                .expect("valid TOML"),
        );
    }
    if weft("order") {
        // As in mesh-config/local.toml: an order with an idempotency key may be retried.
        merge(
            &mut root,
            "[upstreams.order.methods.\"weft.order.v1.OrderService/CreateOrder\"]\n\
             idempotent_if_field = \"idempotency_key\"\n"
                .parse()
                .expect("valid TOML"),
        );
    }
    if let Some(addr) = gateway {
        let mut section = toml::Table::new();
        section.insert("listen".into(), addr.to_string().into());
        let mut listen = toml::Table::new();
        listen.insert("gateway".into(), section.into());
        merge(&mut root, listen);
    }
    with_extra(root, extra)
}

/// `root` with the test's own TOML `extra` merged over it, as text.
fn with_extra(mut root: toml::Table, extra: &str) -> String {
    if !extra.trim().is_empty() {
        let extra: toml::Table = extra
            .parse()
            .unwrap_or_else(|e| panic!("MeshOptions::toml is not valid TOML: {e}"));
        merge(&mut root, extra);
    }
    toml::to_string(&root).expect("a TOML table serialises")
}

/// `extra` with `[mtls]` turned on under `dir` (the CA and certificates `issue_certificates`
/// writes there), reloaded every 200 ms; the test's own `[mtls]` keys win.
pub fn mtls_toml(dir: &std::path::Path, extra: &str) -> String {
    let root: toml::Table = format!(
        "[mtls]\nmode = \"on\"\nca_file = {:?}\nca_key_file = {:?}\ncert_dir = {:?}\n\
         reload_interval_ms = 200\n",
        dir.join("ca.pem").display().to_string(),
        dir.join("ca.key").display().to_string(),
        dir.display().to_string(),
    )
    .parse()
    .expect("valid TOML");
    with_extra(root, extra)
}

/// Writes a new CA and a certificate for each of `names` where `mtls` says (what `weft certs`
/// does, without the command).
pub fn issue_certificates(mtls: &weft_mesh::config::MtlsConfig, names: &[String]) {
    use weft_mesh::mtls::{Identity, issue};
    let ca = issue::new_ca(&mtls.trust_domain, issue::CA_VALIDITY).expect("a CA is made");
    std::fs::create_dir_all(&mtls.cert_dir).expect("cannot create the certificate folder");
    std::fs::write(&mtls.ca_file, &ca.cert).expect("cannot write the CA");
    std::fs::write(&mtls.ca_key_file, &ca.key).expect("cannot write the CA key");
    for name in names {
        let leaf = issue::leaf(
            &ca,
            &Identity::of(mtls, name),
            std::time::Duration::from_secs(24 * 3600),
        )
        .expect("a certificate is made");
        std::fs::write(mtls.cert_file(name), leaf.cert).expect("cannot write a certificate");
        std::fs::write(mtls.key_file(name), leaf.key).expect("cannot write a key");
    }
}

/// The key of the gateway's admin address in [`with_admin_listeners`]' map.
pub const GATEWAY_ADMIN: &str = "[gateway]";

/// Gives each service of a generated mesh-config, and its gateway if it has one, a free
/// loopback `admin_listen` (unless the test's TOML set one), away from the other processes'
/// ports; returns the config and the admin addresses it ends up with, the gateway's under
/// [`GATEWAY_ADMIN`].
pub fn with_admin_listeners(
    config: String,
    taken: &[SocketAddr],
) -> (String, BTreeMap<String, SocketAddr>) {
    let mut root: toml::Table = config.parse().expect("the generated config is TOML");
    let mut tables: Vec<(String, &mut toml::Table)> = Vec::new();
    for (key, value) in root.iter_mut() {
        let Some(table) = value.as_table_mut() else {
            continue;
        };
        match key.as_str() {
            "services" => tables.extend(table.iter_mut().map(|(name, service)| {
                let service = service
                    .as_table_mut()
                    .expect("`services.<name>` is a table");
                (name.clone(), service)
            })),
            "gateway" => tables.push((GATEWAY_ADMIN.to_string(), table)),
            _ => {}
        }
    }
    let mut free = free_loopback_addrs(tables.len() + taken.len())
        .into_iter()
        .filter(|addr| !taken.contains(addr));
    let mut admin = BTreeMap::new();
    for (name, table) in tables {
        let value = table.entry("admin_listen").or_insert_with(|| {
            let addr = free.next().expect("enough free loopback ports");
            addr.to_string().into()
        });
        let addr = value
            .as_str()
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("{name}: admin_listen is not host:port"));
        admin.insert(name, addr);
    }
    let text = toml::to_string(&root).expect("a TOML table serialises");
    (text, admin)
}

/// A second instance of a service: its name, listen and admin addresses.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The service it is an instance of.
    pub name: String,
    /// Its gRPC listen address.
    pub addr: SocketAddr,
    /// Its admin (`/metrics`) address.
    pub admin: SocketAddr,
}

/// Places a second instance of each of `names` on free ports, and lists every instance of a
/// replicated service in its upstream's `endpoints`.
pub fn with_replicas(config: String, names: &[String]) -> (String, Vec<Replica>) {
    if names.is_empty() {
        return (config, Vec::new());
    }
    let mut root: toml::Table = config.parse().expect("the generated config is TOML");
    let mut free = free_loopback_addrs(2 * names.len()).into_iter();
    let mut placed = Vec::new();
    for name in names {
        let (addr, admin) = (
            free.next().expect("enough free loopback ports"),
            free.next().expect("enough free loopback ports"),
        );
        let upstream = root
            .get_mut("upstreams")
            .and_then(|upstreams| upstreams.get_mut(name))
            .and_then(|upstream| upstream.as_table_mut())
            .unwrap_or_else(|| panic!("a replica of {name}, which the mesh does not run"));
        let first = upstream["endpoint"].clone();
        let endpoints = upstream
            .entry("endpoints")
            .or_insert_with(|| toml::Value::Array(vec![first]));
        if let Some(list) = endpoints.as_array_mut() {
            list.push(format!("http://{addr}").into());
        }
        placed.push(Replica {
            name: name.clone(),
            addr,
            admin,
        });
    }
    (
        toml::to_string(&root).expect("a TOML table serialises"),
        placed,
    )
}

/// Whether a mesh-config turns TLS on at the gateway.
pub fn gateway_tls(config: &str) -> bool {
    config
        .parse::<toml::Table>()
        .ok()
        .and_then(|root| {
            let cert = root.get("gateway")?.get("tls")?.get("cert_file")?;
            Some(cert.as_str().is_some_and(|c| !c.is_empty()))
        })
        .unwrap_or(false)
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_mesh::MeshConfig;

    use super::*;

    fn weft(addrs: &[SocketAddr]) -> Vec<Placement> {
        WEFT_SERVICES
            .iter()
            .zip(addrs)
            .map(|(&(name, grpc), &addr)| Placement {
                name: name.into(),
                addr,
                database_url: format!("sqlite://{name}.db"),
                grpc_services: vec![grpc.into()],
            })
            .collect()
    }

    #[test]
    fn the_generated_config_declares_the_services_and_loads() {
        let addrs = free_loopback_addrs(3);
        let extra = "[jwt]\naccess_ttl_secs = 2\n[auth]\nkey_reload_interval_ms = 100\n";
        let text = generate(&weft(&addrs), None, extra);
        let config = MeshConfig::load_from_str(&text).unwrap();
        assert_eq!(config.jwt.access_ttl_secs, 2);
        assert_eq!(config.service("order").unwrap().listen, addrs[2]);
        let (name, user) = config.upstream_serving("weft.user.v1.UserService").unwrap();
        assert_eq!(name, "user");
        assert_eq!(user.endpoint, format!("http://{}", addrs[1]));
        let create =
            &config.upstream("order").unwrap().methods["weft.order.v1.OrderService/CreateOrder"];
        assert_eq!(
            create.idempotent_if_field.as_deref(),
            Some("idempotency_key")
        );
        let auth = &config.settings["auth"];
        assert_eq!(auth["key_reload_interval_ms"].as_integer(), Some(100));
        assert!(
            !text.contains("[gateway]"),
            "no gateway section unless asked"
        );
    }

    #[test]
    fn admin_listeners_are_free_distinct_ports_unless_the_test_sets_them() {
        let addrs = free_loopback_addrs(3);
        let extra = "[services.user]\nadmin_listen = \"127.0.0.1:0\"\n";
        let text = generate(&weft(&addrs), None, extra);
        let (text, admin) = with_admin_listeners(text, &addrs);
        let config = MeshConfig::load_from_str(&text).unwrap();
        assert_eq!(
            config.service("user").unwrap().admin_listen.port(),
            0,
            "the test's TOML wins"
        );
        for name in ["auth", "order"] {
            let addr = config.service(name).unwrap().admin_listen;
            assert_eq!(admin[name], addr);
            assert_ne!(addr.port(), 0);
            assert!(!addrs.contains(&addr), "away from the gRPC ports");
        }
        assert_ne!(admin["auth"], admin["order"]);
    }

    #[test]
    fn the_gateway_listens_where_the_kit_probes_and_tls_is_detected() {
        let mut free = free_loopback_addrs(4);
        let gateway = free.pop().unwrap();
        let text = generate(
            &weft(&free),
            Some(gateway),
            "[gateway]\nmax_json_depth = 8\n",
        );
        let config = MeshConfig::load_from_str(&text).unwrap();
        assert_eq!(config.gateway.listen, gateway);
        assert_eq!(config.gateway.max_json_depth, 8);
        assert!(!gateway_tls(&text));

        let extra = "[gateway.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let text = generate(&weft(&free), Some(gateway), extra);
        assert!(gateway_tls(&text));
        let config = MeshConfig::load_from_str(&text).unwrap();
        assert_eq!(
            config.gateway.listen, gateway,
            "TLS keeps the listen address"
        );
    }

    #[test]
    fn a_replica_is_balanced_over_with_the_first_instance() {
        let addrs = free_loopback_addrs(3);
        let text = generate(&weft(&addrs), None, "");
        let (text, replicas) = with_replicas(text, &["user".to_string()]);
        let config = MeshConfig::load_from_str(&text).unwrap();
        assert_eq!(
            config.upstream("user").unwrap().endpoint_list(),
            [
                format!("http://{}", addrs[1]),
                format!("http://{}", replicas[0].addr)
            ]
        );
    }
}
