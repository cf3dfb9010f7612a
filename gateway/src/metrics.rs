//! The gateway's Prometheus metrics: request counts by route, method and status, latency,
//! requests in flight, and the outcome of each upstream call.
//!
//! The series live in the process-wide [`weft_mesh::metrics::registry`], so `/metrics` also
//! shows the process's CPU and memory and the mesh client's own calls (JWKS fetches). Handles
//! are registered once per route at start (upstream series on their first use), so recording a
//! request costs a few atomic operations and no allocation or label hashing on the request path.

use std::time::Duration;

use http::{Method, StatusCode};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Recorder, SharedString};
use metrics_exporter_prometheus::PrometheusRecorder;
use weft_mesh::metrics::{ClientSeries, Registry};

use crate::{endpoint::Endpoint, table::RouteTable};

/// Statuses the gateway answers with; each gets a pre-registered counter per route.
const STATUSES: [u16; 18] = [
    200, 204, 400, 401, 403, 404, 405, 409, 413, 415, 429, 431, 499, 500, 501, 503, 504, 502,
];
const REQUESTS: &str = "http_server_requests_total";
const DURATION: &str = "http_server_request_duration_seconds";
const ACTIVE: &str = "http_server_active_requests";

/// Pre-registered metric handles.
pub struct Metrics {
    registry: &'static Registry,
    /// Per route, indexed by [`Endpoint::slot`].
    routes: Vec<RouteMetrics>,
    unmatched: RouteMetrics,
    /// Upstream calls per route, indexed by [`Endpoint::slot`].
    upstream_calls: Vec<Option<ClientSeries>>,
    active: Gauge,
}

struct RouteMetrics {
    by_status: Vec<(u16, Counter)>,
    other_status: Counter,
    latency: Histogram,
}

impl Metrics {
    /// Registers the handles of every route in `table`.
    pub fn new(table: &RouteTable) -> anyhow::Result<Self> {
        let registry = weft_mesh::metrics::registry();
        let recorder = registry.recorder();
        describe(recorder);
        let routes = table
            .router
            .routes()
            .map(|route| {
                RouteMetrics::register(recorder, route.template().as_str(), route.method().as_str())
            })
            .collect();
        let unmatched = RouteMetrics::register(recorder, "unmatched", "any");
        let mut upstream_calls: Vec<Option<ClientSeries>> = Vec::new();
        for route in table.router.routes() {
            let endpoint = route.value();
            let upstream = table
                .upstreams
                .get(endpoint.upstream)
                .map_or("unknown", |u| u.name.as_str());
            if upstream_calls.len() <= endpoint.slot {
                upstream_calls.resize_with(endpoint.slot + 1, || None);
            }
            upstream_calls[endpoint.slot] =
                Some(ClientSeries::new(upstream, endpoint.grpc_path.path()));
        }
        let active = recorder.register_gauge(&Key::from_static_name(ACTIVE), &metadata());
        Ok(Self {
            registry,
            routes,
            unmatched,
            upstream_calls,
            active,
        })
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.active.increment(1.0);
        InFlight(&self.active)
    }

    /// Records one upstream call made for `endpoint`: its gRPC status and duration, as
    /// `rpc_client_requests_total{upstream,rpc_method,code}` and
    /// `rpc_client_request_duration_seconds`.
    pub fn record_upstream(&self, endpoint: &Endpoint, code: tonic::Code, elapsed: Duration) {
        if let Some(Some(series)) = self.upstream_calls.get(endpoint.slot) {
            series.record(code, elapsed);
        }
    }

    /// Records one answered request.
    pub fn record(
        &self,
        endpoint: Option<&Endpoint>,
        _method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let route = endpoint
            .and_then(|e| self.routes.get(e.slot))
            .unwrap_or(&self.unmatched);
        let code = status.as_u16();
        match route.by_status.iter().find(|(s, _)| *s == code) {
            Some((_, counter)) => counter.increment(1),
            None => route.other_status.increment(1),
        }
        route.latency.record(elapsed.as_secs_f64());
    }

    /// Folds recorded samples into the histograms' buckets. The exporter keeps raw samples until
    /// then, so without a periodic upkeep memory grows with every request between two scrapes.
    pub fn upkeep(&self) {
        self.registry.upkeep();
    }

    /// The Prometheus text exposition of every metric, with the process's figures.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

/// A request in flight, counted in `http_server_active_requests` until dropped.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn metadata() -> metrics::Metadata<'static> {
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None)
}

/// The `# HELP` lines of the gateway's series.
fn describe(recorder: &PrometheusRecorder) {
    recorder.describe_counter(
        KeyName::from(REQUESTS),
        None,
        SharedString::from("HTTP requests answered, by route, method and status code."),
    );
    recorder.describe_histogram(
        KeyName::from(DURATION),
        Some(metrics::Unit::Seconds),
        SharedString::from("Time to answer an HTTP request."),
    );
    recorder.describe_gauge(
        KeyName::from(ACTIVE),
        None,
        SharedString::from("HTTP requests being answered."),
    );
}

impl RouteMetrics {
    fn register(recorder: &PrometheusRecorder, template: &str, method: &str) -> Self {
        let metadata = metadata();
        let labels = |status: Option<String>| {
            let mut labels = vec![
                Label::new("http_route", template.to_owned()),
                Label::new("http_request_method", method.to_owned()),
            ];
            if let Some(status) = status {
                labels.push(Label::new("http_response_status_code", status));
            }
            labels
        };
        let counter = |status: String| {
            recorder.register_counter(&Key::from_parts(REQUESTS, labels(Some(status))), &metadata)
        };
        Self {
            by_status: STATUSES
                .iter()
                .map(|s| (*s, counter(s.to_string())))
                .collect(),
            other_status: counter("other".into()),
            latency: recorder
                .register_histogram(&Key::from_parts(DURATION, labels(None)), &metadata),
        }
    }
}
