//! Logs and traces, set up once per process by [`init`].
//!
//! - **Logs**: one JSON object per line on stderr (or a readable line with `log_format =
//!   "pretty"`), filtered by `RUST_LOG` or the configured `log_filter`. A line written while
//!   serving a request carries `request_id`, `trace_id` and `span_id`.
//! - **Traces**: `tracing` spans become OpenTelemetry spans (`tracing-opentelemetry`), exported
//!   over OTLP (gRPC, or HTTP/protobuf) in batches by a background thread. Propagation is W3C
//!   TraceContext plus W3C Baggage; the request id rides in the baggage as `request_id` and is
//!   stamped on every span a request causes, in every process.
//!
//! Settings come from `[telemetry]` of mesh-config and the standard `OTEL_*` variables, which
//! win: `OTEL_SDK_DISABLED`, `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT` (and
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (and `_TRACES_`),
//! `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_EXPORT_TIMEOUT`.
//! Without an endpoint (or with a collector that cannot be set up) the process makes no spans
//! at all, which keeps the hot path as cheap as before tracing: each call's context
//! ([`crate::propagate::CallContext`]) then carries a trace id (the caller's, or a new one) and a
//! span id of its own, which its log lines show and its outgoing calls send as `traceparent`.
//!
//! An exporter that cannot reach its collector never slows or fails a request: finished spans go
//! into a bounded queue that is drained by its own thread, and a span that finds the queue full
//! is dropped and counted ([`dropped_spans`]).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::{
    Context, KeyValue,
    baggage::BaggageExt as _,
    trace::{Span as _, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{Sampler, SdkTracerProvider, Span as SdkSpan, SpanData, SpanExporter, SpanProcessor},
};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

pub use crate::trace_mode::{SPAN_TARGET, span, spans_on};
use crate::{
    config::{MeshConfig, OtlpProtocol, TelemetryConfig},
    logs::LogLayer,
    propagate::{self, BAGGAGE_REQUEST_ID},
    trace_mode::{self, Mode},
};

// === counters ===

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Finished spans dropped because the export queue was full, since the process started.
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Finished spans waiting in the export queue now.
pub fn queued_spans() -> u64 {
    QUEUED.load(Ordering::Relaxed)
}

/// Spans handed to the collector successfully, since the process started.
pub fn exported_spans() -> u64 {
    EXPORTED.load(Ordering::Relaxed)
}

/// Spans lost because an export failed (collector unreachable or refusing), since start.
pub fn failed_spans() -> u64 {
    FAILED.load(Ordering::Relaxed)
}

// === settings ===

/// What [`init`] sets up, resolved from mesh-config and the `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `OTEL_SDK_DISABLED=true`: logs only, no spans, no trace ids.
    pub disabled: bool,
    /// `service.name`.
    pub service_name: String,
    /// Where to export, if anywhere: the full URL the exporter is given.
    pub endpoint: Option<String>,
    /// How to export.
    pub protocol: OtlpProtocol,
    /// The sampler named by `OTEL_TRACES_SAMPLER`, or the configured ratio (parent-based).
    pub sampler: SamplerSetting,
    /// Export batching.
    pub batch: BatchSettings,
}

/// The sampler of new traces.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerSetting {
    /// Follow the caller's decision; record this ratio of new traces.
    ParentBasedRatio(f64),
    /// `OTEL_TRACES_SAMPLER` is set: the SDK reads it (and `_ARG`) itself.
    FromEnvironment,
}

/// The export queue and batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// Longest wait before a partial batch is sent (`OTEL_BSP_SCHEDULE_DELAY`, ms; 5000).
    pub schedule_delay: Duration,
    /// Spans the queue holds; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`; 2048).
    pub max_queue: usize,
    /// Spans per export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`; 512).
    pub max_batch: usize,
    /// Time allowed for one export (`OTEL_BSP_EXPORT_TIMEOUT`, ms; 30000).
    pub export_timeout: Duration,
}

impl Settings {
    /// Resolves the settings of process `service` from `config` and the variables of `env`.
    pub fn resolve(
        service: &str,
        config: &TelemetryConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            Some("grpc") => OtlpProtocol::Grpc,
            Some(p) if p.starts_with("http") => OtlpProtocol::HttpProtobuf,
            _ => config.otlp_protocol,
        };
        let base = |url: String| match protocol {
            // A base URL: the HTTP exporter posts to its `/v1/traces`.
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", url.trim_end_matches('/')),
            OtlpProtocol::Grpc => url,
        };
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(base))
            .or_else(|| {
                let configured = config.otlp_endpoint.trim();
                (!configured.is_empty()).then(|| base(configured.to_string()))
            });
        let sampler = match var("OTEL_TRACES_SAMPLER") {
            Some(_) => SamplerSetting::FromEnvironment,
            None => SamplerSetting::ParentBasedRatio(config.sampler_ratio),
        };
        let millis = |name: &str, default: u64| {
            Duration::from_millis(var(name).and_then(|v| v.parse().ok()).unwrap_or(default))
        };
        let count = |name: &str, default: usize| {
            var(name)
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let max_queue = count("OTEL_BSP_MAX_QUEUE_SIZE", 2048);
        Self {
            disabled,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_string()),
            endpoint,
            protocol,
            sampler,
            batch: BatchSettings {
                schedule_delay: millis("OTEL_BSP_SCHEDULE_DELAY", 5_000),
                max_queue,
                max_batch: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).min(max_queue),
                export_timeout: millis("OTEL_BSP_EXPORT_TIMEOUT", 30_000),
            },
        }
    }
}

// === init ===

/// The process's telemetry; [`Telemetry::shutdown`] exports the spans still queued.
#[must_use = "call shutdown() before the runtime stops, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter. Must run on the runtime that was current
    /// at [`init`] (the exporter's connections live there); bounded to a few seconds.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flush = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        });
        match tokio::time::timeout(Duration::from_secs(6), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::debug!(error = %e, "span exporter shutdown"),
            Ok(Err(_)) | Err(_) => tracing::warn!("span exporter did not stop in time"),
        }
    }
}

/// Installs the global subscriber (logs, and spans to OpenTelemetry) of process `service` and
/// the W3C propagators. Call it inside the runtime the process serves on (`Runtime::enter`): the
/// exporter's connections are made there. Later calls leave the first subscriber in place.
pub fn init(service: &str, config: &MeshConfig) -> Telemetry {
    let settings = Settings::resolve(service, &config.telemetry, |name| std::env::var(name).ok());
    let log = |otel| LogLayer::stderr(config.telemetry.log_format, otel);
    if settings.disabled {
        let filter = log_filter(&config.telemetry, false);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(log(false))
            .try_init();
        return Telemetry { provider: None };
    }
    propagate::install_global_propagator();
    let (provider, problem) = tracer_provider(&settings, &config.environment);
    let Some(provider) = provider else {
        // Nothing to export to: trace ids without the cost of spans.
        set_lite_sampler(&settings.sampler);
        let filter = log_filter(&config.telemetry, false);
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(log(false))
            .try_init()
            .is_ok();
        if installed {
            trace_mode::set_mode(Mode::Lite);
            if let Some(problem) = problem {
                tracing::warn!(error = %problem, "cannot export spans; trace ids are logged only");
            }
        }
        return Telemetry { provider: None };
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("weft-mesh"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_target(false)
        .with_location(false)
        .with_level(false);
    let installed = tracing_subscriber::registry()
        .with(log_filter(&config.telemetry, true))
        .with(otel)
        .with(log(true))
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry { provider: None };
    }
    trace_mode::set_mode(Mode::Otel);
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::debug!(
        service = %settings.service_name,
        endpoint = settings.endpoint.as_deref().unwrap_or(""),
        "telemetry initialised"
    );
    Telemetry {
        provider: Some(provider),
    }
}

/// The configured log filter, with the mesh's spans always on when `spans` (exported).
fn log_filter(config: &TelemetryConfig, spans: bool) -> EnvFilter {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| config.log_filter.clone());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    if !spans || directives.contains(SPAN_TARGET) {
        return filter;
    }
    match format!("{SPAN_TARGET}=info").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// The tracer provider exporting as `settings` say, or why there is none.
fn tracer_provider(
    settings: &Settings,
    environment: &str,
) -> (Option<SdkTracerProvider>, Option<String>) {
    let Some(endpoint) = &settings.endpoint else {
        return (None, None);
    };
    let exporter = match exporter(endpoint, settings.protocol) {
        Ok(exporter) => exporter,
        Err(e) => return (None, Some(e)),
    };
    let resource = Resource::builder()
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new(
                "service.instance.id",
                uuid::Uuid::new_v4().hyphenated().to_string(),
            ),
            KeyValue::new("deployment.environment", environment.to_string()),
            KeyValue::new("deployment.environment.name", environment.to_string()),
        ])
        .with_service_name(settings.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let SamplerSetting::ParentBasedRatio(ratio) = settings.sampler {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    let processor = QueueProcessor::start(exporter, settings.batch.clone());
    (Some(builder.with_span_processor(processor).build()), None)
}

fn exporter(
    endpoint: &str,
    protocol: OtlpProtocol,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build(),
    };
    built.map_err(|e| format!("{endpoint}: {e}"))
}

// === the export queue ===

/// Sends finished spans to an exporter in batches from its own thread, through a bounded queue:
/// a full queue drops the span (counted) instead of waiting. The exporter's futures run on the
/// runtime that was current when the processor started, which owns its connections.
#[derive(Debug)]
struct QueueProcessor {
    queue: SyncSender<Message>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

enum Message {
    Span(Box<SpanData>),
    Resource(Resource),
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

impl QueueProcessor {
    fn start<E: SpanExporter + 'static>(exporter: E, settings: BatchSettings) -> Self {
        let (queue, received) = mpsc::sync_channel(settings.max_queue);
        let runtime = tokio::runtime::Handle::try_current().ok();
        let worker = std::thread::Builder::new()
            .name("weft-span-export".into())
            .spawn(move || export_loop(exporter, received, settings, runtime))
            .ok();
        Self {
            queue,
            worker: Mutex::new(worker),
        }
    }

    /// Sends a control message and waits for the worker's answer, both within `timeout` (a
    /// stuck exporter must not hold up a shutdown).
    fn control(
        &self,
        make: impl FnOnce(mpsc::Sender<()>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let (done, wait) = mpsc::channel();
        let mut message = make(done);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                    message = again;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, span: &mut SdkSpan, cx: &Context) {
        // Every span a request causes carries its id, whatever made the span.
        if let Some(id) = cx.baggage().get(BAGGAGE_REQUEST_ID) {
            span.set_attribute(KeyValue::new("request_id", id.clone()));
        }
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {
                QUEUED.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Message::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.control(Message::Shutdown, timeout);
        if result.is_ok()
            && let Some(worker) = self.worker.lock().ok().and_then(|mut w| w.take())
        {
            let _ = worker.join();
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.queue.send(Message::Resource(resource.clone()));
    }
}

fn export_loop<E: SpanExporter>(
    mut exporter: E,
    received: mpsc::Receiver<Message>,
    settings: BatchSettings,
    runtime: Option<tokio::runtime::Handle>,
) {
    let runtime = match runtime {
        Some(handle) => Executor::Shared(handle),
        // No runtime at start (tests): the worker runs the exports on one of its own.
        None => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => Executor::Owned(runtime),
            Err(_) => return,
        },
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.max_batch);
    let mut next = Instant::now() + settings.schedule_delay;
    let export = |exporter: &E, batch: &mut Vec<SpanData>| {
        while !batch.is_empty() {
            let take = batch.len().min(settings.max_batch);
            let spans: Vec<SpanData> = batch.drain(..take).collect();
            let count = spans.len() as u64;
            let ok = run_export(exporter, spans, settings.export_timeout, &runtime);
            if ok {
                EXPORTED.fetch_add(count, Ordering::Relaxed);
            } else {
                FAILED.fetch_add(count, Ordering::Relaxed);
            }
        }
    };
    let drain = |batch: &mut Vec<SpanData>| {
        while let Ok(message) = received.try_recv() {
            if let Message::Span(span) = message {
                QUEUED.fetch_sub(1, Ordering::Relaxed);
                batch.push(*span);
            }
        }
    };
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match received.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                QUEUED.fetch_sub(1, Ordering::Relaxed);
                batch.push(*span);
                if batch.len() >= settings.max_batch {
                    export(&exporter, &mut batch);
                    next = Instant::now() + settings.schedule_delay;
                }
            }
            Ok(Message::Resource(resource)) => exporter.set_resource(&resource),
            Ok(Message::Flush(done)) => {
                drain(&mut batch);
                export(&exporter, &mut batch);
                let _ = done.send(());
            }
            Ok(Message::Shutdown(done)) => {
                drain(&mut batch);
                export(&exporter, &mut batch);
                let _ = exporter.shutdown_with_timeout(settings.export_timeout);
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&exporter, &mut batch);
                next = Instant::now() + settings.schedule_delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&exporter, &mut batch);
                return;
            }
        }
    }
}

/// Where the exporter's futures run.
enum Executor {
    /// The process's runtime, driven by its own thread(s); this thread only waits.
    Shared(tokio::runtime::Handle),
    /// A runtime of the worker's own.
    Owned(tokio::runtime::Runtime),
}

/// Runs one export to completion, bounded by `timeout`. A panic in the exporter (say, the
/// process's runtime is going away) counts as a failure.
fn run_export<E: SpanExporter>(
    exporter: &E,
    spans: Vec<SpanData>,
    timeout: Duration,
    runtime: &Executor,
) -> bool {
    let export = async {
        matches!(
            tokio::time::timeout(timeout, exporter.export(spans)).await,
            Ok(Ok(()))
        )
    };
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match runtime {
        Executor::Shared(handle) => handle.block_on(export),
        Executor::Owned(runtime) => runtime.block_on(export),
    }));
    attempt.unwrap_or(false)
}

// === lite sampling ===

fn set_lite_sampler(sampler: &SamplerSetting) {
    let ratio = match sampler {
        SamplerSetting::ParentBasedRatio(ratio) => *ratio,
        SamplerSetting::FromEnvironment => {
            let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
            let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG")
                .ok()
                .and_then(|a| a.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            match name.trim() {
                "always_off" | "parentbased_always_off" => 0.0,
                "traceidratio" | "parentbased_traceidratio" => arg,
                _ => 1.0,
            }
        }
    };
    trace_mode::set_lite_ratio(ratio);
}

#[cfg(test)]
mod tests {
    use crate::trace_mode::{lite_sampled, new_trace_id};
    use std::collections::HashMap;

    use super::*;

    fn resolve(config: &TelemetryConfig, env: &[(&str, &str)]) -> Settings {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve("weft-user", config, |name| env.get(name).cloned())
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        let settings = resolve(&TelemetryConfig::default(), &[]);
        assert_eq!(settings.endpoint, None);
        assert_eq!(settings.service_name, "weft-user");
        assert_eq!(settings.sampler, SamplerSetting::ParentBasedRatio(1.0));
        assert!(!settings.disabled);
        assert_eq!(settings.batch.max_queue, 2048);
        assert_eq!(settings.batch.schedule_delay, Duration::from_secs(5));
    }

    #[test]
    fn otel_variables_win_over_the_config() {
        let config = TelemetryConfig {
            otlp_endpoint: "http://config:4317".into(),
            sampler_ratio: 0.5,
            ..TelemetryConfig::default()
        };
        let settings = resolve(&config, &[]);
        assert_eq!(settings.endpoint.as_deref(), Some("http://config:4317"));
        assert_eq!(settings.sampler, SamplerSetting::ParentBasedRatio(0.5));

        let settings = resolve(
            &config,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "renamed"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
            ],
        );
        assert_eq!(
            settings.endpoint.as_deref(),
            Some("http://env:4318/v1/traces")
        );
        assert_eq!(settings.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(settings.service_name, "renamed");
        assert_eq!(settings.sampler, SamplerSetting::FromEnvironment);
        assert_eq!(settings.batch.schedule_delay, Duration::from_millis(100));
        assert_eq!(
            (settings.batch.max_queue, settings.batch.max_batch),
            (10, 10)
        );

        let settings = resolve(
            &config,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces/exact"),
                ("OTEL_SDK_DISABLED", "TRUE"),
            ],
        );
        assert_eq!(settings.endpoint.as_deref(), Some("http://traces/exact"));
        assert!(settings.disabled);
    }

    #[test]
    fn lite_sampling_follows_the_ratio() {
        assert!(lite_sampled(new_trace_id()), "1.0 by default");
        let ids: std::collections::HashSet<u128> = (0..1000).map(|_| new_trace_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn no_internal_span_outside_a_request() {
        assert!(span("x").is_none());
    }

    /// The OTLP/HTTP exporter, driven by the export queue on the process's runtime, posts
    /// protobuf batches to `/v1/traces`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_are_posted_over_http_protobuf() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the body it announces.
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                      content-length: 0\r\n\r\n",
                )
                .await
                .unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let settings = Settings::resolve(
            "weft-http",
            &TelemetryConfig {
                otlp_endpoint: format!("http://{addr}"),
                otlp_protocol: OtlpProtocol::HttpProtobuf,
                ..TelemetryConfig::default()
            },
            |_| None,
        );
        let (provider, problem) = tracer_provider(&settings, "test");
        assert_eq!(problem, None);
        let provider = provider.unwrap();
        let tracer = provider.tracer("test");
        opentelemetry::trace::Tracer::start(&tracer, "over-http").end();
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap();
        assert!(flushed.is_ok(), "{flushed:?}");
        let request = tokio::time::timeout(Duration::from_secs(10), received)
            .await
            .unwrap()
            .unwrap();
        assert!(request.starts_with("POST /v1/traces HTTP/1.1"), "{request}");
        assert!(
            request.to_lowercase().contains("application/x-protobuf"),
            "{request}"
        );
        assert!(request.contains("over-http") && request.contains("weft-http"));
    }

    /// An exporter that never answers in time.
    #[derive(Debug)]
    struct Stuck;

    impl SpanExporter for Stuck {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::future::pending().await
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let processor = QueueProcessor::start(
            Stuck,
            BatchSettings {
                schedule_delay: Duration::from_millis(1),
                max_queue: 4,
                max_batch: 1,
                export_timeout: Duration::from_secs(60),
            },
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        let before = dropped_spans();
        let started = Instant::now();
        for _ in 0..100 {
            opentelemetry::trace::Tracer::start(&tracer, "x").end();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "ending spans never waits"
        );
        assert!(
            dropped_spans() - before >= 90,
            "{}",
            dropped_spans() - before
        );
        // The stuck export does not hold up the shutdown beyond its timeout.
        let started = Instant::now();
        let _ = provider.shutdown_with_timeout(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
