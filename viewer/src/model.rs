//! What the viewer shows, as its JSON API sends it: spans ([`SpanView`]), one request's
//! summary ([`RequestSummary`]) and one trace ([`TraceView`]). `weft trace` reads the same
//! types back.

use serde::{Deserialize, Serialize};

/// The attribute the gateway (and every process after it) stamps the request id with.
pub const REQUEST_ID_ATTRIBUTE: &str = "request_id";

/// One attribute, its value as text (`5`, `true` for other types).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// The key (`http.route`).
    pub key: String,
    /// The value as text, cut to the store's bound on value bytes.
    pub value: String,
}

/// One event of a span (an exception, a log line recorded on the span).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// The event's name.
    pub name: String,
    /// When it happened, nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// Its attributes.
    pub attributes: Vec<Attribute>,
}

/// The outcome a span recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    /// Nothing recorded.
    Unset,
    /// Explicitly successful.
    Ok,
    /// Failed.
    Error,
}

/// One span, as the viewer keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanView {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// `service.name` of the process that sent it (`weft-gateway`).
    pub service: String,
    /// The span's name (`POST /v1/orders`, `UPDATE products`).
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// The attributes, in the order they were sent.
    pub attributes: Vec<Attribute>,
    /// The events.
    pub events: Vec<EventView>,
    /// The recorded outcome.
    pub status: SpanStatus,
    /// The status message, if any.
    pub status_message: String,
    /// Whether attributes, events or values were cut to the store's bounds.
    pub truncated: bool,
}

impl SpanView {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value.as_str())
    }

    /// The span's duration in nanoseconds (0 when its clock went backwards).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    /// Whether the span recorded a failure.
    pub fn is_error(&self) -> bool {
        self.status == SpanStatus::Error
    }
}

/// One request (a trace) in the list: what its root span says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// The trace's id, 32 hex digits.
    pub trace_id: String,
    /// The request id its spans carry, if any.
    pub request_id: Option<String>,
    /// The HTTP method (`POST`), or `gRPC` for a trace that did not come through the gateway.
    pub method: String,
    /// The route (`/v1/orders/{id}`), or the root span's name.
    pub route: String,
    /// The HTTP status (`201`), or `gRPC <code>`; empty while the root span has not arrived.
    pub status: String,
    /// The root span's duration (or the trace's extent while it has none), nanoseconds.
    pub duration_nanos: u64,
    /// When the request started, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// The spans kept.
    pub span_count: usize,
    /// The spans of this trace dropped beyond the per-trace bound.
    pub dropped_spans: u64,
    /// The processes that sent spans, in order of first appearance.
    pub services: Vec<String>,
    /// An HTTP status of 400 or more, a non-OK gRPC status, or any span marked failed.
    pub failed: bool,
    /// Arrival order in the store: larger is newer.
    pub seq: u64,
}

/// One trace: its summary and every span kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceView {
    /// The summary, as in the list.
    pub summary: RequestSummary,
    /// The spans, by start time.
    pub spans: Vec<SpanView>,
    /// "Open in Jaeger", when a Jaeger URL is configured.
    pub jaeger_url: Option<String>,
}

/// The list of recent requests, newest first, and what the store had to drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestList {
    /// The requests that matched, newest first.
    pub requests: Vec<RequestSummary>,
    /// What the store holds and dropped.
    pub stats: StoreStats,
}

/// What the store holds, its bounds, and what it dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Traces kept.
    pub traces: usize,
    /// Spans kept.
    pub spans: usize,
    /// Approximate bytes the kept spans take.
    pub bytes: usize,
    /// The bound on traces.
    pub max_traces: usize,
    /// The bound on bytes.
    pub max_bytes: usize,
    /// Traces dropped (oldest first) to stay within the bounds, since start.
    pub dropped_traces: u64,
    /// Spans dropped beyond a trace's bound on spans, since start.
    pub dropped_spans: u64,
}

/// The summary of a trace's spans (any order).
pub fn summarize(
    trace_id: &str,
    spans: &[SpanView],
    dropped_spans: u64,
    seq: u64,
) -> RequestSummary {
    let root = root_span(spans);
    let request_id = root
        .and_then(|r| r.attr(REQUEST_ID_ATTRIBUTE))
        .or_else(|| spans.iter().find_map(|s| s.attr(REQUEST_ID_ATTRIBUTE)))
        .map(str::to_owned);
    let (method, route, status, http_status, grpc_status) = match root {
        Some(root) => {
            let http_status = root
                .attr("http.response.status_code")
                .and_then(|s| s.parse::<u32>().ok());
            let grpc_status = root
                .attr("rpc.grpc.status_code")
                .and_then(|s| s.parse::<i64>().ok());
            let method = root.attr("http.request.method").map(str::to_owned);
            let route = root
                .attr("http.route")
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    let name = root.name.as_str();
                    // `POST /v1/x` names carry the method; keep the route only.
                    match (&method, name.split_once(' ')) {
                        (Some(m), Some((head, rest))) if head == m => rest.to_owned(),
                        _ => name.to_owned(),
                    }
                });
            let status = match (http_status, grpc_status) {
                (Some(code), _) => code.to_string(),
                (None, Some(code)) => format!("gRPC {code}"),
                _ => String::new(),
            };
            let kind = if root.attr("rpc.system").is_some() {
                "gRPC"
            } else {
                ""
            };
            (
                method.unwrap_or_else(|| kind.into()),
                route,
                status,
                http_status,
                grpc_status,
            )
        }
        None => (
            String::new(),
            spans.first().map(|s| s.name.clone()).unwrap_or_default(),
            String::new(),
            None,
            None,
        ),
    };
    let (start, end) = match root {
        Some(root) => (root.start_unix_nano, root.end_unix_nano),
        None => (
            spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0),
            spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0),
        ),
    };
    let mut services: Vec<String> = Vec::new();
    let mut by_start: Vec<&SpanView> = spans.iter().collect();
    by_start.sort_by_key(|s| s.start_unix_nano);
    for span in by_start {
        if !services.contains(&span.service) {
            services.push(span.service.clone());
        }
    }
    let failed = http_status.is_some_and(|s| s >= 400)
        || (http_status.is_none() && grpc_status.is_some_and(|c| c != 0))
        || spans.iter().any(SpanView::is_error);
    RequestSummary {
        trace_id: trace_id.to_owned(),
        request_id,
        method,
        route,
        status,
        duration_nanos: end.saturating_sub(start),
        start_unix_nano: start,
        span_count: spans.len(),
        dropped_spans,
        services,
        failed,
        seq,
    }
}

/// The trace's root: the earliest span whose parent is not among `spans` (a span without a
/// parent first).
pub fn root_span(spans: &[SpanView]) -> Option<&SpanView> {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let orphan =
        |s: &&SpanView| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str());
    spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .min_by_key(|s| s.start_unix_nano)
        .or_else(|| {
            spans
                .iter()
                .filter(orphan)
                .min_by_key(|s| s.start_unix_nano)
        })
}

/// The HTTP status of a summary, when it is one.
pub fn http_status(summary: &RequestSummary) -> Option<u32> {
    summary.status.parse().ok()
}
