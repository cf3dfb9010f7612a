//! The gateway's Prometheus metrics: request counts by route, method and status, and latency.
//!
//! Handles are registered once per route at start, so recording a request costs a few atomic
//! operations and no allocation or label hashing on the request path.

use std::{sync::Arc, time::Duration};

use http::{Method, StatusCode};
use metrics::{Counter, Histogram, Key, Label, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::table::{Endpoint, RouteTable};

/// Statuses the gateway answers with; each gets a pre-registered counter per route.
const STATUSES: [u16; 18] = [
    200, 204, 400, 401, 403, 404, 405, 409, 413, 415, 429, 431, 499, 500, 501, 503, 504, 502,
];
/// Latency buckets in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Pre-registered metric handles.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Per route, indexed by [`Endpoint::slot`].
    routes: Vec<RouteMetrics>,
    unmatched: RouteMetrics,
}

struct RouteMetrics {
    by_status: Vec<(u16, Counter)>,
    other_status: Counter,
    latency: Histogram,
}

impl Metrics {
    /// Registers the handles of every route in `table`.
    pub fn new(table: &RouteTable) -> anyhow::Result<Self> {
        let recorder = Arc::new(
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)?
                .build_recorder(),
        );
        let handle = recorder.handle();
        let routes = table
            .router
            .routes()
            .map(|route| {
                RouteMetrics::register(
                    &recorder,
                    route.template().as_str(),
                    route.method().as_str(),
                )
            })
            .collect();
        let unmatched = RouteMetrics::register(&recorder, "unmatched", "any");
        Ok(Self {
            recorder,
            handle,
            routes,
            unmatched,
        })
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
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let _ = &self.recorder;
        self.handle.render()
    }
}

impl RouteMetrics {
    fn register(recorder: &PrometheusRecorder, template: &str, method: &str) -> Self {
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
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
            recorder.register_counter(
                &Key::from_parts("http_server_requests_total", labels(Some(status))),
                &metadata,
            )
        };
        Self {
            by_status: STATUSES
                .iter()
                .map(|s| (*s, counter(s.to_string())))
                .collect(),
            other_status: counter("other".into()),
            latency: recorder.register_histogram(
                &Key::from_parts("http_server_request_duration_seconds", labels(None)),
                &metadata,
            ),
        }
    }
}
