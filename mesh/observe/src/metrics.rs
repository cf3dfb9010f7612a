//! Prometheus metrics of every Weft process.
//!
//! One process-wide [`registry`] holds every series; it renders the Prometheus text format on
//! demand ([`Registry::render`]), adding process figures (CPU, memory, file descriptors) and
//! database pool gauges sampled at that moment, so nothing polls between two scrapes.
//!
//! - [`ServerMetricsLayer`] (in every service's server stack) counts calls by method and gRPC
//!   status, times them, and tracks calls in flight:
//!   `rpc_server_requests_total{rpc_service,rpc_method,rpc_grpc_status_code}`,
//!   `rpc_server_request_duration_seconds`, `rpc_server_active_requests`.
//! - [`ClientMetricsLayer`] (in every `client::channel`) counts upstream calls by
//!   outcome: `rpc_client_requests_total{upstream,rpc_method,code}` and
//!   `rpc_client_request_duration_seconds`. The gateway records the same series for its own
//!   upstream calls through [`ClientSeries`].
//! - [`AdminServer`]: the services' `/metrics` endpoint on `services.<name>.admin_listen`.
//! - At each render: `process_*` (CPU seconds, resident and virtual memory, threads, open file
//!   descriptors, start time), `db_client_connections{pool,state}` of the service's pools, and
//!   the span exporter's queue and losses (`otel_exporter_*`).
//!
//! Recording costs no allocation: a series' handles are registered the first time its labels
//! occur (method and status code are looked up in tables built at start, and the handles are
//! kept in fixed slots), and later calls only touch atomics. The status of a call is read where
//! gRPC puts it: in the response headers of a trailers-only answer (errors), otherwise in the
//! trailers at the end of the body, so the series are recorded when the body ends.

use std::{
    collections::HashMap,
    error::Error as StdError,
    fmt::Write as _,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::UpstreamConfig;

/// Latency histogram buckets in seconds (the gateway's too).
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// How often the exporter folds recorded samples into histogram buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// gRPC status codes 0..=16, as label values.
const CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;
const DEADLINE_EXCEEDED: usize = 4;
const UNAVAILABLE: usize = 14;

/// Paths served by every gRPC server of the mesh besides the contract's methods.
const BUILTIN_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

const SERVER: Family = Family {
    requests: "rpc_server_requests_total",
    duration: "rpc_server_request_duration_seconds",
    code_label: "rpc_grpc_status_code",
};
const CLIENT: Family = Family {
    requests: "rpc_client_requests_total",
    duration: "rpc_client_request_duration_seconds",
    code_label: "code",
};
const SERVER_ACTIVE: &str = "rpc_server_active_requests";
const DB_CONNECTIONS: &str = "db_client_connections";
const DB_CONNECTIONS_MAX: &str = "db_client_connections_max";

// === Registry ===

/// The process's metrics: the Prometheus recorder every series is registered with.
pub struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pools: Mutex<Vec<PoolGauges>>,
    /// Gauges sampled at every render: (gauge, the value's source).
    sampled: Mutex<Vec<SampledGauge>>,
}

/// A gauge whose value is read from its source at every render.
type SampledGauge = (Gauge, Box<dyn Fn() -> f64 + Send + Sync>);

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The process-wide registry, created on first use.
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(Registry::new)
}

impl Registry {
    fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let recorder = builder
            .set_buckets(&BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let registry = Self {
            recorder,
            handle,
            pools: Mutex::new(Vec::new()),
            sampled: Mutex::new(Vec::new()),
        };
        registry.describe_own();
        registry
    }

    fn describe_own(&self) {
        let counters = [
            (
                SERVER.requests,
                "gRPC calls served, by method and status code.",
            ),
            (
                CLIENT.requests,
                "gRPC calls made to upstreams, by method and status code.",
            ),
        ];
        for (name, help) in counters {
            self.recorder
                .describe_counter(KeyName::from(name), None, SharedString::from(help));
        }
        let histograms = [
            (
                SERVER.duration,
                "Time to serve a gRPC call, until its status was sent.",
            ),
            (
                CLIENT.duration,
                "Time of a gRPC call to an upstream, until its status arrived.",
            ),
        ];
        for (name, help) in histograms {
            self.recorder.describe_histogram(
                KeyName::from(name),
                Some(metrics::Unit::Seconds),
                SharedString::from(help),
            );
        }
        let gauges = [
            (SERVER_ACTIVE, "gRPC calls being served."),
            (
                DB_CONNECTIONS,
                "Database pool connections, by state (idle or used).",
            ),
            (DB_CONNECTIONS_MAX, "Largest size of the database pool."),
        ];
        for (name, help) in gauges {
            self.recorder
                .describe_gauge(KeyName::from(name), None, SharedString::from(help));
        }
    }

    /// The recorder, to register further series with (the gateway's).
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }

    /// Samples the named connection pools at every render, as
    /// `db_client_connections{pool,state}` and `db_client_connections_max{pool}` (a service's
    /// database registers its pools here: see `Database::pools`).
    pub fn observe_pools(&self, observed: &[(&'static str, &sqlx::AnyPool)]) {
        let mut pools = lock(&self.pools);
        for (name, pool) in observed {
            // A pool of the same name observed before (a server started again) is replaced.
            pools.retain(|p| p.name != *name);
            pools.push(PoolGauges::new(&self.recorder, name, (*pool).clone()));
        }
    }

    /// Samples `source` at every render as the gauge `name{label="value"}` (the seconds to
    /// the expiry of the process's mTLS certificate, `weft_mesh_certificate_expiry_seconds`).
    pub fn observe_gauge(
        &self,
        name: &'static str,
        label: (&'static str, String),
        source: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let key = Key::from_parts(name, vec![Label::new(label.0, label.1)]);
        let gauge = self.recorder.register_gauge(&key, &metadata());
        lock(&self.sampled).push((gauge, Box::new(source)));
    }

    /// Folds recorded samples into the histograms' buckets. The exporter keeps raw samples
    /// until then, so without a periodic upkeep memory grows with every call between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition of every series, the process's figures and the pools.
    pub fn render(&self) -> String {
        for pool in lock(&self.pools).iter() {
            pool.sample();
        }
        for (gauge, source) in lock(&self.sampled).iter() {
            gauge.set(source());
        }
        let mut text = self.handle.render();
        process::render(&mut text);
        render_span_export(&mut text);
        text
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

/// Runs the registry's upkeep every [`UPKEEP_INTERVAL`] for as long as the runtime lives.
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            registry().upkeep();
        }
    })
}

// === database pools ===

struct PoolGauges {
    name: &'static str,
    pool: sqlx::AnyPool,
    idle: Gauge,
    used: Gauge,
    max: Gauge,
}

impl PoolGauges {
    fn new(recorder: &PrometheusRecorder, name: &'static str, pool: sqlx::AnyPool) -> Self {
        let gauge = |metric: &'static str, state: Option<&'static str>| {
            let mut labels = vec![Label::from_static_parts("pool", name)];
            labels.extend(state.map(|s| Label::from_static_parts("state", s)));
            recorder.register_gauge(&Key::from_parts(metric, labels), &metadata())
        };
        Self {
            idle: gauge(DB_CONNECTIONS, Some("idle")),
            used: gauge(DB_CONNECTIONS, Some("used")),
            max: gauge(DB_CONNECTIONS_MAX, None),
            name,
            pool,
        }
    }

    fn sample(&self) {
        let size = self.pool.size() as usize;
        let idle = self.pool.num_idle().min(size);
        self.idle.set(idle as f64);
        self.used.set((size - idle) as f64);
        self.max
            .set(self.pool.options().get_max_connections() as f64);
    }
}

// === series ===

/// Names of a family of call series.
#[derive(Clone, Copy)]
struct Family {
    requests: &'static str,
    duration: &'static str,
    code_label: &'static str,
}

/// The counters and histograms of one method, one per status code, registered on first use.
struct MethodSeries {
    family: Family,
    labels: Vec<Label>,
    requests: [OnceLock<Counter>; 17],
    durations: [OnceLock<Histogram>; 17],
}

impl MethodSeries {
    fn new(family: Family, labels: Vec<Label>) -> Self {
        Self {
            family,
            labels,
            requests: Default::default(),
            durations: Default::default(),
        }
    }

    fn record(&self, code: usize, elapsed: Duration) {
        let code = if code < CODES.len() { code } else { UNKNOWN };
        let recorder = &registry().recorder;
        let key = |name: &'static str| {
            let mut labels = self.labels.clone();
            labels.push(Label::from_static_parts(
                self.family.code_label,
                CODES[code],
            ));
            Key::from_parts(name, labels)
        };
        self.requests[code]
            .get_or_init(|| recorder.register_counter(&key(self.family.requests), &metadata()))
            .increment(1);
        self.durations[code]
            .get_or_init(|| recorder.register_histogram(&key(self.family.duration), &metadata()))
            .record(elapsed.as_secs_f64());
    }
}

/// The series of the methods a server serves or a client calls, looked up by gRPC path.
struct MethodTable {
    /// Looked up on every call: foldhash, not SipHash (the keys are the process's own paths,
    /// fixed at start, so a caller's path cannot flood the table).
    index: HashMap<&'static str, usize, foldhash::fast::FixedState>,
    series: Vec<MethodSeries>,
    /// For paths outside the table (the last entry of `series`).
    unknown: usize,
    /// Calls in flight (servers only).
    active: Option<Gauge>,
}

impl MethodTable {
    fn build(
        paths: impl IntoIterator<Item = &'static str>,
        series: impl Fn(&'static str) -> MethodSeries,
        unknown: MethodSeries,
        active: Option<Gauge>,
    ) -> Self {
        let mut index = HashMap::default();
        let mut all = Vec::new();
        for path in paths {
            if !index.contains_key(path) {
                index.insert(path, all.len());
                all.push(series(path));
            }
        }
        let unknown_index = all.len();
        all.push(unknown);
        Self {
            index,
            series: all,
            unknown: unknown_index,
            active,
        }
    }

    fn lookup(&self, path: &str) -> usize {
        self.index.get(path).copied().unwrap_or(self.unknown)
    }
}

/// `/weft.user.v1.UserService/GetMe` -> (`weft.user.v1.UserService`, `GetMe`).
fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or(("", path))
}

/// The contract's paths of the gRPC services in `services`.
fn paths_of<'a>(services: &'a [&str]) -> impl Iterator<Item = &'static str> + 'a {
    crate::contract::current()
        .paths()
        .filter(move |path| services.contains(&split_path(path).0))
}

/// The status code a response's headers or trailers carry, if any.
fn grpc_status(headers: &HeaderMap) -> Option<usize> {
    // An out-of-range code is UNKNOWN (tonic's `Code::from_i32`), a slot of the table.
    crate::grpc::status_code(headers).map(|code| code as usize)
}

/// The status code a caller sees for a failed call, as tonic derives it from the error chain;
/// a transport timeout counts as DEADLINE_EXCEEDED (tonic reports it as CANCELLED).
fn error_code(err: &(dyn StdError + 'static)) -> usize {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(status) = err.downcast_ref::<tonic::Status>() {
            return status.code() as usize;
        }
        if err.is::<tonic::TimeoutExpired>() {
            return DEADLINE_EXCEEDED;
        }
        if err.is::<tonic::ConnectError>() {
            return UNAVAILABLE;
        }
        current = err.source();
    }
    UNKNOWN
}

// === recording one call ===

/// A call being measured; records its series once, when it ends (or is dropped: cancelled).
struct Pending {
    table: Arc<MethodTable>,
    method: usize,
    started: Instant,
    done: bool,
}

impl Pending {
    fn start(table: &Arc<MethodTable>, path: &str) -> Self {
        if let Some(active) = &table.active {
            active.increment(1.0);
        }
        Self {
            method: table.lookup(path),
            table: table.clone(),
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(active) = &self.table.active {
            active.decrement(1.0);
        }
        if let Some(series) = self.table.series.get(self.method) {
            series.record(code, self.started.elapsed());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Dropped before a status: the caller went away, or the call was abandoned.
        self.finish(CANCELLED);
    }
}

pin_project_lite::pin_project! {
    /// Future of a measured call: passes the response on with a [`MeteredBody`].
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: StdError + 'static,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut pending = this.pending.take();
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only answer (an error status) carries its status in the headers.
                if let (Some(code), Some(call)) = (grpc_status(response.headers()), &mut pending) {
                    call.finish(code);
                    pending = None;
                }
                Ok(response.map(|inner| MeteredBody { inner, pending }))
            }
            Err(err) => {
                if let Some(call) = &mut pending {
                    call.finish(error_code(&err));
                }
                Err(err)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status from the trailers that end it.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body,
    B::Error: StdError + 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.pending {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(grpc_status(trailers).unwrap_or(UNKNOWN));
                    }
                }
                Some(Err(err)) => call.finish(error_code(err)),
                // The end without trailers: no status, which gRPC calls UNKNOWN.
                None => call.finish(UNKNOWN),
            }
            if call.done {
                *this.pending = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === server layer ===

/// Server layer recording `rpc_server_*` series for every call.
#[derive(Clone)]
pub struct ServerMetricsLayer {
    table: Arc<MethodTable>,
}

impl ServerMetricsLayer {
    /// Registers the in-flight gauge and prepares the table of the methods of the gRPC services
    /// `grpc_services` (`weft.order.v1.OrderService`) and the built-in ones.
    pub fn new(grpc_services: &[&str]) -> Self {
        let paths = paths_of(grpc_services).chain(BUILTIN_METHODS);
        let recorder = &registry().recorder;
        let series = |path: &'static str| {
            let (service, method) = split_path(path);
            MethodSeries::new(
                SERVER,
                vec![
                    Label::new("rpc_service", service.to_owned()),
                    Label::new("rpc_method", method.to_owned()),
                ],
            )
        };
        let unknown = MethodSeries::new(
            SERVER,
            vec![
                Label::from_static_parts("rpc_service", "unknown"),
                Label::from_static_parts("rpc_method", "unknown"),
            ],
        );
        let active = recorder.register_gauge(&Key::from_static_name(SERVER_ACTIVE), &metadata());
        Self {
            table: Arc::new(MethodTable::build(paths, series, unknown, Some(active))),
        }
    }
}

impl<S> Layer<S> for ServerMetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            table: self.table.clone(),
        }
    }
}

/// Service made by [`ServerMetricsLayer`] and [`ClientMetricsLayer`].
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    table: Arc<MethodTable>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Metered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metered<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: StdError + 'static,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let pending = Pending::start(&self.table, req.uri().path());
        MeteredFuture {
            inner: self.inner.call(req),
            pending: Some(pending),
        }
    }
}

// === client layer ===

/// Client layer recording `rpc_client_*` series for every call to one upstream endpoint.
#[derive(Clone)]
pub struct ClientMetricsLayer {
    table: Arc<MethodTable>,
}

impl ClientMetricsLayer {
    /// Prepares the series of calls to the upstream `name`. The methods of its gRPC services
    /// are labelled with its process name (`upstream="weft-user"`), other paths (health) with
    /// its first endpoint's `host:port`.
    pub fn new(name: &str, upstream: &UpstreamConfig) -> Self {
        let endpoint = upstream.endpoint_list().remove(0);
        let authority = endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| endpoint.clone());
        let label = crate::config::process_name(name);
        let services: Vec<&str> = upstream.grpc_services.iter().map(String::as_str).collect();
        let own: Vec<&'static str> = paths_of(&services).collect();
        let paths = own
            .iter()
            .copied()
            .chain(BUILTIN_METHODS[..2].iter().copied());
        let series = |path: &'static str| {
            let upstream = if own.contains(&path) {
                label.clone()
            } else {
                authority.clone()
            };
            client_series(upstream, path)
        };
        let unknown = MethodSeries::new(
            CLIENT,
            vec![
                Label::new("upstream", authority.clone()),
                Label::from_static_parts("rpc_method", "unknown"),
            ],
        );
        Self {
            table: Arc::new(MethodTable::build(paths, series, unknown, None)),
        }
    }
}

impl<S> Layer<S> for ClientMetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            table: self.table.clone(),
        }
    }
}

fn client_series(upstream: String, path: &str) -> MethodSeries {
    let method = path.strip_prefix('/').unwrap_or(path).to_owned();
    MethodSeries::new(
        CLIENT,
        vec![
            Label::new("upstream", upstream),
            Label::new("rpc_method", method),
        ],
    )
}

/// The `rpc_client_*` series of one upstream method, for a caller that makes its calls
/// without a [`ClientMetricsLayer`] (the gateway).
pub struct ClientSeries(MethodSeries);

impl ClientSeries {
    /// Series labelled `upstream` and the method at gRPC `path` (`/package.Service/Method`).
    pub fn new(upstream: &str, path: &str) -> Self {
        Self(client_series(upstream.to_owned(), path))
    }

    /// Records one call that ended with `code` after `elapsed`.
    pub fn record(&self, code: tonic::Code, elapsed: Duration) {
        self.0.record(code as usize, elapsed);
    }
}

// === span export ===

/// The span exporter's queue and losses ([`crate::telemetry`]'s counters).
fn render_span_export(out: &mut String) {
    use crate::telemetry;
    let families: [(&str, &str, &str, u64); 4] = [
        (
            "otel_exporter_queue_spans",
            "gauge",
            "Finished spans waiting in the export queue.",
            telemetry::queued_spans(),
        ),
        (
            "otel_exporter_dropped_spans_total",
            "counter",
            "Finished spans dropped because the export queue was full.",
            telemetry::dropped_spans(),
        ),
        (
            "otel_exporter_exported_spans_total",
            "counter",
            "Spans handed to the OTLP collector.",
            telemetry::exported_spans(),
        ),
        (
            "otel_exporter_failed_spans_total",
            "counter",
            "Spans lost because an export failed (collector unreachable or refusing).",
            telemetry::failed_spans(),
        ),
    ];
    for (name, kind, help, value) in families {
        process::family(out, name, kind, help, value as f64);
    }
}

// === process figures ===

/// The process's CPU, memory, threads and file descriptors from `/proc` (Linux; elsewhere
/// nothing), in the names of Prometheus's own process collector.
mod process {
    use super::*;

    /// `/proc/<pid>/stat` counts CPU time in clock ticks of `USER_HZ`, 100 on every Linux ABI.
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn render(out: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(parse_stat);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(stat) = &stat {
            let cpu = (stat.utime + stat.stime) as f64 / TICKS_PER_SECOND;
            family(
                out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                cpu,
            );
        }
        let kib = |key: &str| status_value(&status, key).map(|kib| kib * 1024);
        if let Some(rss) = kib("VmRSS:") {
            family(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss as f64,
            );
        }
        if let Some(vsz) = kib("VmSize:") {
            family(
                out,
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                vsz as f64,
            );
        }
        if let Some(threads) = status_value(&status, "Threads:") {
            family(
                out,
                "process_threads",
                "gauge",
                "Number of OS threads in the process.",
                threads as f64,
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            family(
                out,
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                fds.count() as f64,
            );
        }
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| status_value(&text, "btime"));
        if let (Some(stat), Some(boot_time)) = (&stat, boot_time) {
            family(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot_time as f64 + stat.start_ticks as f64 / TICKS_PER_SECOND,
            );
        }
    }

    /// Writes one single-sample metric family.
    pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    }

    /// The figures of `/proc/self/stat` used here.
    #[derive(Debug, PartialEq)]
    pub(super) struct Stat {
        pub utime: u64,
        pub stime: u64,
        pub start_ticks: u64,
    }

    /// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
    /// so fields are counted from the last `)`: field 3 (state) is the first after it.
    pub(super) fn parse_stat(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
        })
    }

    /// The first number after `key` on its line (`VmRSS:    1234 kB` -> 1234).
    pub(super) fn status_value(text: &str, key: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::HeaderValue;
    use tower::ServiceExt as _;

    /// The value of the series whose line starts with `prefix` (0 when absent).
    fn value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/weft.user.v1.UserService/GetMe"),
            ("weft.user.v1.UserService", "GetMe")
        );
    }

    #[test]
    fn status_codes_are_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(5));
        headers.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(grpc_status(&headers), Some(UNKNOWN));
    }

    #[test]
    fn errors_map_to_the_codes_callers_see() {
        let status = tonic::Status::not_found("x");
        assert_eq!(error_code(&status), 5);
        assert_eq!(error_code(&tonic::TimeoutExpired(())), DEADLINE_EXCEEDED);
        let io = std::io::Error::other("boom");
        assert_eq!(error_code(&io), UNKNOWN);
    }

    #[test]
    fn proc_stat_is_parsed_past_odd_command_names() {
        let line = "42 (we ird) name)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    12345 1000 200 18446744073709551615";
        assert_eq!(
            process::parse_stat(line),
            Some(process::Stat {
                utime: 250,
                stime: 50,
                start_ticks: 12345
            })
        );
        assert_eq!(process::parse_stat("garbage"), None);
        assert_eq!(
            process::status_value("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048)
        );
    }

    #[tokio::test]
    async fn server_calls_are_counted_by_method_and_status() {
        // The layers know no method: these tests need a real contract.
        let weft = crate::contract::Contract::load(
            &[weft_proto::FILE_DESCRIPTOR_SET],
            &Default::default(),
        );
        crate::contract::install(weft.expect("Weft's contract loads"));
        let layer = ServerMetricsLayer::new(&["weft.order.v1.OrderService"]);
        // OK in the trailers of a body; NOT_FOUND in the headers (trailers-only).
        let service = layer.layer(tower::service_fn(|req: Request<()>| async move {
            if req.uri().path().ends_with("GetProduct") {
                Ok::<_, Infallible>(tonic::Status::not_found("no").into_http())
            } else {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let body = http_body_util::StreamBody::new(futures::stream::iter([
                    Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"x"))),
                    Ok(Frame::trailers(trailers)),
                ]));
                Ok(Response::new(tonic::body::Body::new(body)))
            }
        }));
        let ok = r#"rpc_server_requests_total{rpc_service="weft.order.v1.OrderService",rpc_method="ListProducts",rpc_grpc_status_code="0"}"#;
        let not_found = r#"rpc_server_requests_total{rpc_service="weft.order.v1.OrderService",rpc_method="GetProduct",rpc_grpc_status_code="5"}"#;
        let before = registry().render();
        let call = |path: &'static str| {
            service
                .clone()
                .oneshot(Request::builder().uri(path).body(()).unwrap())
        };
        let response = call("/weft.order.v1.OrderService/ListProducts")
            .await
            .unwrap();
        let during = registry().render();
        assert_eq!(value(&during, ok), value(&before, ok), "not before the end");
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        let _ = call("/weft.order.v1.OrderService/GetProduct")
            .await
            .unwrap();
        let after = registry().render();
        assert_eq!(value(&after, ok), value(&before, ok) + 1.0, "{after}");
        assert_eq!(value(&after, not_found), value(&before, not_found) + 1.0);
        assert!(after.contains("# TYPE rpc_server_request_duration_seconds histogram"));
        assert!(after.contains("rpc_server_active_requests"));
    }

    #[tokio::test]
    async fn a_dropped_response_counts_as_cancelled_and_errors_by_their_code() {
        // The layers know no method: these tests need a real contract.
        let weft = crate::contract::Contract::load(
            &[weft_proto::FILE_DESCRIPTOR_SET],
            &Default::default(),
        );
        crate::contract::install(weft.expect("Weft's contract loads"));
        let mut upstream =
            crate::config::UpstreamConfig::with_endpoint("http://127.0.0.1:1".into());
        upstream.grpc_services = vec!["weft.user.v1.UserService".into()];
        let layer = ClientMetricsLayer::new("user", &upstream);
        let service = layer.layer(tower::service_fn(|req: Request<()>| async move {
            if req.uri().path().ends_with("GetMe") {
                Err(tonic::Status::unavailable("down"))
            } else {
                let body = http_body_util::StreamBody::new(futures::stream::pending::<
                    Result<Frame<Bytes>, tonic::Status>,
                >());
                Ok(Response::new(tonic::body::Body::new(body)))
            }
        }));
        let cancelled = r#"rpc_client_requests_total{upstream="weft-user",rpc_method="weft.user.v1.UserService/GetUser",code="1"}"#;
        let unavailable = r#"rpc_client_requests_total{upstream="weft-user",rpc_method="weft.user.v1.UserService/GetMe",code="14"}"#;
        let before = registry().render();
        let call = |path: &'static str| {
            service
                .clone()
                .oneshot(Request::builder().uri(path).body(()).unwrap())
        };
        drop(call("/weft.user.v1.UserService/GetUser").await.unwrap());
        assert!(call("/weft.user.v1.UserService/GetMe").await.is_err());
        let after = registry().render();
        assert_eq!(value(&after, cancelled), value(&before, cancelled) + 1.0);
        assert_eq!(
            value(&after, unavailable),
            value(&before, unavailable) + 1.0
        );
    }
}
