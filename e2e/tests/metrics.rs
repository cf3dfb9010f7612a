//! Every process's `/metrics` (the services' on their admin port, the gateway's on its HTTP
//! port) is valid Prometheus text, checked by the strict parser below, and the request counters
//! move with this test's own requests: the gateway's HTTP series and its upstream calls, each
//! service's server series by method and status code, the mesh client's upstream calls, and
//! the process, pool and span-export figures.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};

use common::{
    rest::{Gateway, grpc, shorten},
    *,
};
use serde_json::json;

backends!(request_counters_move);

async fn request_counters_move(backend: Backend) {
    let pool_labels: &[&str] = match backend {
        Backend::Sqlite => &["write", "read"],
        Backend::Postgres(_) => &["main"],
    };
    let mesh = gateway_mesh(backend, "").await;
    let gw = Gateway::of(&mesh);
    let before = scrape_all(&mesh).await;

    let tokens = gw
        .post("/v1/auth/register")
        .json(&json!({
            "email": "metrics@example.com",
            "password": "password-123",
            "displayName": "Metrics"
        }))
        .send()
        .await
        .ok();
    let token = tokens["accessToken"].as_str().expect("an access token");
    gw.get("/v1/products").send().await.ok();
    gw.get("/v1/orders/nope")
        .bearer(token)
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);

    let after = scrape_all(&mesh).await;
    let moved = |process: &str, name: &str, labels: &[(&str, &str)]| {
        after[process].value(name, labels) - before[process].value(name, labels)
    };
    let server = |service: &'static str, method: &'static str, code: &'static str| {
        vec![
            ("rpc_service", service),
            ("rpc_method", method),
            ("rpc_grpc_status_code", code),
        ]
    };
    let client = |upstream: &'static str, method: &'static str, code: &'static str| {
        vec![
            ("upstream", upstream),
            ("rpc_method", method),
            ("code", code),
        ]
    };
    let checks: Vec<(&str, &str, Labels)> = vec![
        // The gateway: its HTTP requests, and the upstream calls they made.
        (
            GATEWAY,
            "http_server_requests_total",
            vec![
                ("http_route", "/v1/auth/register"),
                ("http_request_method", "POST"),
                ("http_response_status_code", "200"),
            ],
        ),
        (
            GATEWAY,
            "http_server_requests_total",
            vec![
                ("http_route", "/v1/orders/{id}"),
                ("http_request_method", "GET"),
                ("http_response_status_code", "404"),
            ],
        ),
        (
            GATEWAY,
            "rpc_client_requests_total",
            client("weft-auth", "weft.auth.v1.AuthService/Register", "0"),
        ),
        (
            GATEWAY,
            "rpc_client_requests_total",
            client("weft-order", "weft.order.v1.OrderService/GetOrder", "5"),
        ),
        (
            GATEWAY,
            "rpc_client_request_duration_seconds_count",
            client("weft-order", "weft.order.v1.OrderService/ListProducts", "0"),
        ),
        // The services: calls served by method and status, and weft-auth's call to weft-user.
        (
            "weft-auth",
            "rpc_server_requests_total",
            server("weft.auth.v1.AuthService", "Register", "0"),
        ),
        (
            "weft-auth",
            "rpc_server_request_duration_seconds_count",
            server("weft.auth.v1.AuthService", "Register", "0"),
        ),
        (
            "weft-auth",
            "rpc_client_requests_total",
            client("weft-user", "weft.user.v1.UserService/CreateUser", "0"),
        ),
        (
            "weft-user",
            "rpc_server_requests_total",
            server("weft.user.v1.UserService", "CreateUser", "0"),
        ),
        (
            "weft-order",
            "rpc_server_requests_total",
            server("weft.order.v1.OrderService", "ListProducts", "0"),
        ),
        (
            "weft-order",
            "rpc_server_requests_total",
            server("weft.order.v1.OrderService", "GetOrder", "5"),
        ),
    ];
    for (process, name, labels) in &checks {
        let delta = moved(process, name, labels);
        assert_eq!(
            delta,
            1.0,
            "{process}: {name}{labels:?} moved by {delta}, not 1; now:\n{}",
            shorten(&after[process].text, 6000)
        );
    }

    for (process, metrics) in &after {
        for (name, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("otel_exporter_dropped_spans_total", "counter"),
            ("otel_exporter_queue_spans", "gauge"),
        ] {
            assert_eq!(
                metrics.types.get(name).map(String::as_str),
                Some(kind),
                "{process}: {name} is missing or not a {kind}"
            );
        }
        assert!(metrics.value("process_resident_memory_bytes", &[]) > 1e6);
        assert!(metrics.value("process_open_fds", &[]) >= 3.0);
        if *process == GATEWAY {
            assert_eq!(
                metrics
                    .types
                    .get("http_server_active_requests")
                    .map(String::as_str),
                Some("gauge")
            );
            continue;
        }
        assert_eq!(
            metrics
                .types
                .get("rpc_server_active_requests")
                .map(String::as_str),
            Some("gauge"),
            "{process}"
        );
        assert_eq!(metrics.value("rpc_server_active_requests", &[]), 0.0);
        for pool in pool_labels {
            let max = metrics.value("db_client_connections_max", &[("pool", pool)]);
            assert!(max >= 1.0, "{process}: pool {pool} has max {max}");
            let open = metrics.value("db_client_connections", &[("pool", pool)]);
            assert!(
                open >= 1.0 && open <= max,
                "{process}: pool {pool}: {open} of {max}"
            );
        }
    }
    mesh.assert_no_panics();
    mesh.stop().await;
}

const GATEWAY: &str = "weft-gateway";

/// `(name, value)` pairs a sample must carry.
type Labels = Vec<(&'static str, &'static str)>;

/// The parsed `/metrics` of the four processes, by process name.
async fn scrape_all(mesh: &TestMesh) -> HashMap<&'static str, Exposition> {
    let mut all = HashMap::new();
    let gateway = Gateway::of(mesh);
    all.insert(GATEWAY, scrape(gateway, "weft-gateway").await);
    for (name, process) in [
        ("auth", "weft-auth"),
        ("user", "weft-user"),
        ("order", "weft-order"),
    ] {
        let admin = Gateway {
            addr: mesh.admin_addr(name),
        };
        all.insert(process, scrape(admin, process).await);
    }
    all
}

async fn scrape(target: Gateway, process: &str) -> Exposition {
    let reply = target.get("/metrics").send().await;
    reply.expect_status(200);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{process}: /metrics Content-Type {content_type:?}"
    );
    let text = reply.text();
    Exposition::parse(&text)
        .unwrap_or_else(|e| panic!("{process}: /metrics is not Prometheus text: {e}\n{text}"))
}

// === a strict parser of the Prometheus text format (version 0.0.4) ===

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: samples, and the `# TYPE` of each family.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

impl Exposition {
    /// Parses `text`, refusing anything the format does not allow: bad names, bad label
    /// syntax or escapes, duplicate series, a `# TYPE` after its samples or twice, a family's
    /// samples split apart, a sample name foreign to its family's type, counters that are
    /// negative or not named `_total`, and histograms whose buckets are not cumulative or
    /// lack `+Inf` equal to `_count`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut exposition = Exposition {
            text: text.to_string(),
            ..Exposition::default()
        };
        let mut finished_families: Vec<String> = Vec::new();
        let mut current_family: Option<String> = None;
        let mut seen_series = std::collections::HashSet::new();
        let mut helps = std::collections::HashSet::new();
        for (number, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", number + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match words.next() {
                    Some("TYPE") => {
                        let name = words
                            .next()
                            .ok_or_else(|| at("TYPE without a name".into()))?;
                        check_metric_name(name).map_err(at)?;
                        let kind = words.next().unwrap_or_default().trim();
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at(format!("unknown type {kind:?}")));
                        }
                        if exposition.types.contains_key(name) {
                            return Err(at(format!("second TYPE for {name}")));
                        }
                        if exposition.samples.iter().any(|s| family_of(&s.name, name)) {
                            return Err(at(format!("TYPE of {name} after its samples")));
                        }
                        exposition.types.insert(name.to_string(), kind.to_string());
                    }
                    Some("HELP") => {
                        let name = words
                            .next()
                            .ok_or_else(|| at("HELP without a name".into()))?;
                        check_metric_name(name).map_err(at)?;
                        if !helps.insert(name.to_string()) {
                            return Err(at(format!("second HELP for {name}")));
                        }
                        check_help(words.next().unwrap_or_default()).map_err(at)?;
                    }
                    _ => {}
                }
                continue;
            }
            let sample = parse_sample(line).map_err(at)?;
            let family = exposition
                .types
                .keys()
                .filter(|f| family_of(&sample.name, f))
                .max_by_key(|f| f.len())
                .cloned()
                .unwrap_or_else(|| sample.name.clone());
            if current_family.as_deref() != Some(family.as_str()) {
                if finished_families.contains(&family) {
                    return Err(at(format!("samples of {family} are not together")));
                }
                if let Some(previous) = current_family.replace(family.clone()) {
                    finished_families.push(previous);
                }
            }
            if let Some(kind) = exposition.types.get(&family) {
                let suffix = &sample.name[family.len()..];
                let allowed: &[&str] = match kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    _ => &[""],
                };
                if !allowed.contains(&suffix) {
                    return Err(at(format!(
                        "{} is not a sample of {kind} {family}",
                        sample.name
                    )));
                }
                if kind == "histogram" && suffix == "_bucket" && !sample.labels.contains_key("le") {
                    return Err(at("a histogram bucket without `le`".into()));
                }
                if kind == "counter" {
                    if !family.ends_with("_total") {
                        return Err(at(format!("counter {family} is not named `_total`")));
                    }
                    if sample.value < 0.0 || sample.value.is_nan() {
                        return Err(at("a negative counter".into()));
                    }
                }
            }
            let series = format!("{}{:?}", sample.name, sample.labels);
            if !seen_series.insert(series) {
                return Err(at("a duplicate series".into()));
            }
            exposition.samples.push(sample);
        }
        exposition.check_histograms()?;
        Ok(exposition)
    }

    /// Buckets cumulative, ending with `+Inf` equal to `_count`, for each label set.
    fn check_histograms(&self) -> Result<(), String> {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for sample in self
                .samples
                .iter()
                .filter(|s| s.name == format!("{family}_bucket"))
            {
                let mut labels = sample.labels.clone();
                let le = labels.remove("le").unwrap_or_default();
                let bound = parse_value(&le).map_err(|e| format!("{family}: le {e}"))?;
                buckets
                    .entry(format!("{labels:?}"))
                    .or_default()
                    .push((bound, sample.value));
            }
            for (labels, mut series) in buckets {
                series.sort_by(|a, b| a.0.total_cmp(&b.0));
                if series.windows(2).any(|w| w[1].1 < w[0].1) {
                    return Err(format!("{family}{labels}: buckets are not cumulative"));
                }
                let last = series.last().copied().unwrap_or((0.0, 0.0));
                if last.0 != f64::INFINITY {
                    return Err(format!("{family}{labels}: no +Inf bucket"));
                }
                let count = self
                    .samples
                    .iter()
                    .find(|s| {
                        s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                    })
                    .map(|s| s.value);
                if count != Some(last.1) {
                    return Err(format!(
                        "{family}{labels}: +Inf bucket {} but _count {count:?}",
                        last.1
                    ));
                }
            }
        }
        Ok(())
    }

    /// The sum of the samples named `name` carrying every label of `labels` (0 when none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// Whether a sample named `sample` belongs to the family `family`.
fn family_of(sample: &str, family: &str) -> bool {
    sample == family
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| sample.strip_suffix(suffix) == Some(family))
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

/// HELP text may escape only `\\` and `\n`.
fn check_help(text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            return Err("a bad escape in HELP".into());
        }
    }
    Ok(())
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("bad value {text:?}")),
    }
}

/// `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| "a sample without a value".to_string())?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("a label without `=`")?;
            let label = rest[..eq].trim();
            check_label_name(label)?;
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("a label value without quotes")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("a bad escape in a label value".into()),
                    },
                    Some((_, '\n')) | None => return Err("an unterminated label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            rest = &rest[end + 1..];
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by `,`".into());
            }
        }
    }
    if !rest.starts_with(' ') {
        return Err("no space before the value".into());
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\n\\\\\"} 3\n\n\
                # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n\
                g 1.5e3 1700000000000\n";
    let parsed = Exposition::parse(good).unwrap();
    assert_eq!(parsed.value("a_total", &[("y", "q\"\n\\")]), 3.0);
    assert_eq!(parsed.value("g", &[]), 1500.0);
    for bad in [
        "1bad 1\n",
        "a{x=\"1\"} \n",
        "a{x=1} 1\n",
        "a{x=\"1\" y=\"2\"} 1\n",
        "a{x=\"\\q\"} 1\n",
        "a 1\na 2\n",
        "a 1\n# TYPE a gauge\n",
        "# TYPE a gauge\n# TYPE a gauge\n",
        "# TYPE a_total counter\na_total -1\n",
        "# TYPE a counter\na 1\n",
        "a 1\nb 1\na{x=\"1\"} 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
        "# TYPE h histogram\nh 1\n",
        "a one\n",
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted {bad:?}");
    }
}
