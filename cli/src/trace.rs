//! `weft trace`: one request's waterfall in the terminal, asked of the running `weft up`'s
//! trace viewer: `weft trace <request-id|trace-id>`, `weft trace --last` (the latest request),
//! `weft trace --errors` (the latest failed ones).
//!
//! The tree shows each span's start (from the request's start), its duration, its process and
//! name, and its status (HTTP status, gRPC code, or `error` with the span's message), children
//! indented under their parent, siblings by start time.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use weft_viewer::{
    model::{RequestList, SpanView, TraceView},
    server::{MAX_ID_LEN, valid_id},
};

use crate::probe;

/// Time allowed to one call of the viewer's API.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `weft trace`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "last", "errors"])))]
pub struct TraceArgs {
    /// The request id (the gateway's `X-Request-Id`) or trace id of the request to show.
    pub id: Option<String>,
    /// Show the latest request.
    #[arg(long, conflicts_with_all = ["id", "errors"])]
    pub last: bool,
    /// Show the latest failed requests (HTTP status 400 or more, or a failed span).
    #[arg(long, conflicts_with = "id")]
    pub errors: bool,
    /// How many failed requests `--errors` shows.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub limit: usize,
    /// The trace viewer of the running `weft up`.
    #[arg(
        long,
        value_name = "URL",
        env = "WEFT_VIEWER_URL",
        default_value = "http://127.0.0.1:16686"
    )]
    pub viewer: String,
}

/// Runs `weft trace`, printing the tree(s) on standard output.
pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let viewer = Viewer::new(&args.viewer)?;
    if let Some(id) = &args.id {
        let trace = viewer.trace(id).await?;
        print!("{}", render(&trace));
        println!("{}", viewer.link(&trace));
        return Ok(());
    }
    let path = if args.errors {
        format!("/api/requests?failed=1&limit={}", args.limit.max(1))
    } else {
        "/api/requests?limit=1".to_owned()
    };
    let list: RequestList = viewer.get(&path).await?;
    if list.requests.is_empty() {
        let what = if args.errors {
            "no failed request"
        } else {
            "no request yet"
        };
        bail!(
            "the viewer at {} has {what} among the {} it keeps",
            viewer.base,
            list.stats.traces
        );
    }
    for (n, summary) in list.requests.iter().enumerate() {
        if n > 0 {
            println!();
        }
        let trace = viewer.trace(&summary.trace_id).await?;
        print!("{}", render(&trace));
        println!("{}", viewer.link(&trace));
    }
    Ok(())
}

/// The viewer's API at one address.
struct Viewer {
    base: String,
    addr: SocketAddr,
}

impl Viewer {
    fn new(url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--viewer {url:?} must be an http:// URL"))?;
        let authority = authority.split('/').next().unwrap_or(authority);
        let authority = authority.replace("localhost", "127.0.0.1");
        let addr = authority
            .parse::<SocketAddr>()
            .with_context(|| format!("--viewer {url:?} must be http://<ip>:<port>"))?;
        Ok(Self { base, addr })
    }

    /// The trace of request or trace `id`.
    async fn trace(&self, id: &str) -> anyhow::Result<TraceView> {
        if !valid_id(id) {
            bail!(
                "{id:?} is not a request id or trace id: expected the gateway's X-Request-Id or \
                 a 32-digit trace id (1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.')"
            );
        }
        self.get(&format!("/api/traces/{id}")).await
    }

    /// `GET path` as JSON; the API's own message when it refuses.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = probe::http_get(self.addr, path, API_TIMEOUT)
            .await
            .map_err(|err| {
                anyhow!(
                    "no trace viewer answers at {} ({err}): is `weft up` running? It serves the \
                     viewer; --viewer names another address",
                    self.base
                )
            })?;
        if response.status != 200 {
            let message = serde_json::from_str::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {}", response.status));
            bail!("{message}");
        }
        serde_json::from_str(&response.body)
            .with_context(|| format!("the viewer at {} sent an unreadable answer", self.base))
    }

    fn link(&self, trace: &TraceView) -> String {
        let id = trace
            .summary
            .request_id
            .as_deref()
            .unwrap_or(&trace.summary.trace_id);
        format!("open {}", weft_viewer::request_url(&self.base, id))
    }
}

/// The waterfall of `trace` as an indented tree: a heading line, then one line per span.
pub fn render(trace: &TraceView) -> String {
    let summary = &trace.summary;
    let mut out = format!(
        "{} {} -> {}{} in {} · request {} · trace {} · {} spans\n",
        summary.method,
        summary.route,
        if summary.status.is_empty() {
            "?"
        } else {
            &summary.status
        },
        if summary.failed { " (failed)" } else { "" },
        millis(summary.duration_nanos),
        summary.request_id.as_deref().unwrap_or("-"),
        summary.trace_id,
        summary.span_count,
    );
    if summary.dropped_spans > 0 {
        out.push_str(&format!(
            "({} more spans were dropped: the viewer keeps a bounded number per request)\n",
            summary.dropped_spans
        ));
    }
    let start = trace
        .spans
        .iter()
        .map(|s| s.start_unix_nano)
        .min()
        .unwrap_or(0);
    for (span, depth) in tree(&trace.spans) {
        let status = span_status(span);
        out.push_str(&format!(
            "{:>10} {:>10}  {}{}  {}{}\n",
            format!("+{}", millis(span.start_unix_nano.saturating_sub(start))),
            millis(span.duration_nanos()),
            "  ".repeat(depth),
            span.service,
            span.name,
            if status.is_empty() {
                String::new()
            } else {
                format!("  [{status}]")
            }
        ));
    }
    out
}

/// The spans in tree order with their depth: each after its parent, siblings by start time; a
/// span whose parent is missing is a root.
fn tree(spans: &[SpanView]) -> Vec<(&SpanView, usize)> {
    let mut children: HashMap<&str, Vec<&SpanView>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        let has_parent = !span.parent_span_id.is_empty()
            && spans.iter().any(|p| p.span_id == span.parent_span_id);
        if has_parent {
            children.entry(&span.parent_span_id).or_default().push(span);
        } else {
            roots.push(span);
        }
    }
    roots.sort_by_key(|s| s.start_unix_nano);
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_unix_nano);
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut seen = std::collections::HashSet::new();
    // Depth-first without recursion, from the roots, then from any span left (a cycle of
    // parents in malformed input): every span is shown once.
    let mut rest: Vec<&SpanView> = spans.iter().collect();
    rest.sort_by_key(|s| s.start_unix_nano);
    for start in roots.into_iter().chain(rest) {
        let mut stack = vec![(start, 0)];
        while let Some((span, depth)) = stack.pop() {
            if !seen.insert(span.span_id.as_str()) {
                continue;
            }
            out.push((span, depth));
            if let Some(list) = children.get(span.span_id.as_str()) {
                stack.extend(list.iter().rev().map(|c| (*c, depth + 1)));
            }
        }
    }
    out
}

/// A span's status for the tree: the HTTP status, the gRPC code's name, and `error` (with the
/// span's message) when it failed.
fn span_status(span: &SpanView) -> String {
    let mut parts = Vec::new();
    if let Some(code) = span.attr("http.response.status_code") {
        parts.push(code.to_owned());
    } else if let Some(code) = span.attr("rpc.grpc.status_code") {
        parts.push(grpc_code_name(code));
    }
    if span.is_error() {
        parts.push(if span.status_message.is_empty() {
            "error".to_owned()
        } else {
            format!("error: {}", span.status_message)
        });
    }
    parts.join(", ")
}

fn grpc_code_name(code: &str) -> String {
    match code.parse::<i32>() {
        Ok(n @ 0..=16) => weft_mesh::grpc::code_name(tonic::Code::from_i32(n)).to_owned(),
        _ => format!("gRPC {code}"),
    }
}

/// Nanoseconds as milliseconds with two decimals: `12.35ms`.
fn millis(nanos: u64) -> String {
    format!("{:.2}ms", nanos as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use weft_viewer::model::{Attribute, SpanStatus, summarize};

    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn span(
        id: &str,
        parent: &str,
        service: &str,
        name: &str,
        start_us: u64,
        end_us: u64,
        attributes: &[(&str, &str)],
    ) -> SpanView {
        SpanView {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            service: service.into(),
            name: name.into(),
            kind: "server".into(),
            start_unix_nano: T0 + start_us * 1_000,
            end_unix_nano: T0 + end_us * 1_000,
            attributes: attributes
                .iter()
                .map(|(k, v)| Attribute {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .chain([Attribute {
                    key: "request_id".into(),
                    value: "0af7651916cd43dd8448eb211c80319c".into(),
                }])
                .collect(),
            events: vec![],
            status: SpanStatus::Unset,
            status_message: String::new(),
            truncated: false,
        }
    }

    /// An order placed through the gateway, its spans in the order they arrived (children
    /// first, as processes export them when they end).
    fn order_trace() -> TraceView {
        let mut failed_lookup = span(
            "0000000000000007",
            "0000000000000003",
            "weft-order",
            "SELECT products",
            600,
            700,
            &[("db.system", "sqlite")],
        );
        failed_lookup.status = SpanStatus::Error;
        failed_lookup.status_message = "database is locked".into();
        let spans = vec![
            span(
                "0000000000000005",
                "0000000000000004",
                "weft-user",
                "weft.user.v1.UserService/GetUser",
                1_100,
                1_900,
                &[("rpc.grpc.status_code", "0")],
            ),
            span(
                "0000000000000006",
                "0000000000000005",
                "weft-user",
                "SELECT users",
                1_200,
                1_300,
                &[("db.system", "sqlite")],
            ),
            failed_lookup,
            span(
                "0000000000000008",
                "0000000000000003",
                "weft-order",
                "UPDATE products",
                2_000,
                2_500,
                &[("db.system", "sqlite")],
            ),
            span(
                "0000000000000004",
                "0000000000000003",
                "weft-order",
                "weft.user.v1.UserService/GetUser",
                1_000,
                2_000,
                &[("rpc.grpc.status_code", "0")],
            ),
            span(
                "0000000000000003",
                "0000000000000002",
                "weft-order",
                "weft.order.v1.OrderService/CreateOrder",
                500,
                3_000,
                &[("rpc.grpc.status_code", "0")],
            ),
            span(
                "0000000000000002",
                "0000000000000001",
                "weft-gateway",
                "weft.order.v1.OrderService/CreateOrder",
                300,
                3_200,
                &[("rpc.grpc.status_code", "0")],
            ),
            span(
                "0000000000000001",
                "",
                "weft-gateway",
                "POST /v1/orders",
                0,
                3_456,
                &[
                    ("http.request.method", "POST"),
                    ("http.route", "/v1/orders"),
                    ("http.response.status_code", "201"),
                ],
            ),
        ];
        let mut sorted = spans.clone();
        sorted.sort_by_key(|s| s.start_unix_nano);
        TraceView {
            summary: summarize("4bf92f3577b34da6a3ce929d0e0e4736", &spans, 0, 1),
            spans: sorted,
            jaeger_url: None,
        }
    }

    #[test]
    fn a_known_trace_prints_as_this_tree() {
        let expected = "\
POST /v1/orders -> 201 (failed) in 3.46ms · request 0af7651916cd43dd8448eb211c80319c · trace 4bf92f3577b34da6a3ce929d0e0e4736 · 8 spans
   +0.00ms     3.46ms  weft-gateway  POST /v1/orders  [201]
   +0.30ms     2.90ms    weft-gateway  weft.order.v1.OrderService/CreateOrder  [OK]
   +0.50ms     2.50ms      weft-order  weft.order.v1.OrderService/CreateOrder  [OK]
   +0.60ms     0.10ms        weft-order  SELECT products  [error: database is locked]
   +1.00ms     1.00ms        weft-order  weft.user.v1.UserService/GetUser  [OK]
   +1.10ms     0.80ms          weft-user  weft.user.v1.UserService/GetUser  [OK]
   +1.20ms     0.10ms            weft-user  SELECT users
   +2.00ms     0.50ms        weft-order  UPDATE products
";
        assert_eq!(render(&order_trace()), expected);
    }

    #[test]
    fn a_span_whose_parent_is_missing_is_a_root_and_a_cycle_ends() {
        let mut a = span("000000000000000a", "000000000000000b", "x", "a", 0, 1, &[]);
        let mut b = span("000000000000000b", "000000000000000a", "x", "b", 1, 2, &[]);
        let orphan = span("000000000000000c", "00000000000000ff", "x", "c", 2, 3, &[]);
        a.kind = "client".into();
        b.kind = "client".into();
        let spans = vec![a, b, orphan];
        let order: Vec<(&str, usize)> = tree(&spans)
            .into_iter()
            .map(|(s, d)| (s.name.as_str(), d))
            .collect();
        // The orphan is a root; a and b are each other's parent, and still each shown once.
        assert_eq!(order, [("c", 0), ("a", 0), ("b", 1)]);
    }

    #[tokio::test]
    async fn a_bad_id_or_no_viewer_gets_a_clear_message() {
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let viewer = Viewer::new(&format!("http://{closed}")).unwrap();
        let err = viewer.trace("not an id!").await.unwrap_err().to_string();
        assert!(
            err.contains("\"not an id!\" is not a request id or trace id"),
            "{err}"
        );
        let err = viewer
            .trace("0af7651916cd43dd8448eb211c80319c")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no trace viewer answers at"), "{err}");
        assert!(err.contains("is `weft up` running?"), "{err}");
        let err = Viewer::new("https://example.com")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("must be an http:// URL"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_id_gets_the_viewer_s_message() {
        let hub = weft_viewer::hub::Hub::new(Default::default(), None);
        let addr = weft_viewer::server::serve(hub, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let viewer = Viewer::new(&format!("http://{addr}")).unwrap();
        let err = viewer
            .trace("0af7651916cd43dd8448eb211c80319c")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "no request or trace 0af7651916cd43dd8448eb211c80319c among the 0 kept"
            ),
            "{err}"
        );
    }
}
