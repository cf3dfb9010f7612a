//! An in-process OTLP/gRPC collector (`opentelemetry.proto.collector.trace.v1.TraceService`)
//! that keeps every span the processes export, so a test can assert on the spans that arrived:
//! give the processes [`Collector::env`] (`MeshOptions { env: collector.env(), .. }`), make the
//! requests, then [`Collector::wait_for`] the trace.

use std::{
    fmt,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use tonic::{Request, Status};

use crate::process::{free_loopback_addrs, lock};

/// A span as an OTLP collector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The span's name (`POST /v1/orders`, `weft.user.v1.UserService/CreateUser`).
    pub name: String,
    /// The span kind: [`SPAN_KIND_SERVER`], [`SPAN_KIND_CLIENT`], internal (1), ...
    pub kind: i32,
    /// The attributes: strings as they are, other values as their JSON text (`5`, `true`).
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

/// [`CollectedSpan::kind`] of a server span.
pub const SPAN_KIND_SERVER: i32 = 2;
/// [`CollectedSpan::kind`] of a client span.
pub const SPAN_KIND_CLIENT: i32 = 3;

impl CollectedSpan {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Whether the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.status == 2
    }
}

impl fmt::Display for CollectedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} kind={} span={} parent={} status={} {:?}",
            self.service,
            self.name,
            self.kind,
            self.span_id,
            self.parent_span_id,
            self.status,
            self.attributes
        )
    }
}

/// An in-process OTLP/gRPC collector (`opentelemetry.proto.collector.trace.v1.TraceService`)
/// that keeps every span it receives, for black-box tests of the processes' traces.
///
/// ```ignore
/// let collector = Collector::start().await;
/// let options = MeshOptions { env: collector.env(), gateway: true, ..MeshOptions::default() };
/// // ... requests ...
/// let spans = collector.wait_for("the register trace", |spans| ...).await;
/// ```
pub struct Collector {
    addr: SocketAddr,
    spans: std::sync::Arc<Mutex<Vec<CollectedSpan>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How long [`Collector::wait_for`] waits.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(20);

impl Collector {
    /// Starts the collector on a free loopback port.
    pub async fn start() -> Collector {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the collector's port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let spans = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Receiver {
            spans: spans.clone(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Collector {
            addr,
            spans,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The variables that point a process at this collector, with a short batch delay (100 ms)
    /// so spans arrive soon after the request.
    pub fn env(&self) -> Vec<(String, String)> {
        otel_env(&self.endpoint())
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        lock(&self.spans).clone()
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<CollectedSpan> {
        lock(&self.spans)
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Waits (up to [`COLLECT_TIMEOUT`]) until `done` holds for the spans received, and returns
    /// them; panics naming `what`, with every span received, when it never does.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[CollectedSpan]) -> bool,
    ) -> Vec<CollectedSpan> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if started.elapsed() > COLLECT_TIMEOUT {
                let listing: Vec<String> = spans.iter().map(ToString::to_string).collect();
                panic!(
                    "the collector did not receive {what} within {COLLECT_TIMEOUT:?}; it has {} spans:\n{}",
                    spans.len(),
                    listing.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The variables that point a process's span exporter at `endpoint` (OTLP/gRPC), with a short
/// batch delay (100 ms). For a collector that is down, pass a closed port's endpoint.
pub fn otel_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.to_string()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

/// An endpoint nothing listens on (a port bound, then released).
pub fn closed_endpoint() -> String {
    let addr = free_loopback_addrs(1)[0];
    format!("http://{addr}")
}

struct Receiver {
    spans: std::sync::Arc<Mutex<Vec<CollectedSpan>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Receiver
{
    async fn export(
        &self,
        request: Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        Status,
    > {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| any_value_text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(CollectedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
                            .collect(),
                        status: span.status.map_or(0, |s| s.code),
                    });
                }
            }
        }
        lock(&self.spans).extend(received);
        Ok(tonic::Response::new(Default::default()))
    }
}

fn any_value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A tracer provider exporting each span at once (the simple processor) over OTLP/gRPC to
/// `endpoint`, as the process `service` (no `service.name` when empty). Its exports block: end
/// spans on a blocking thread (`tokio::task::spawn_blocking`), not on the runtime's.
pub fn test_tracer_provider(
    endpoint: &str,
    service: &str,
) -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .expect("an OTLP exporter");
    let mut builder =
        opentelemetry_sdk::trace::SdkTracerProvider::builder().with_simple_exporter(exporter);
    if !service.is_empty() {
        builder = builder.with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(service.to_owned())
                .build(),
        );
    }
    builder.build()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_collector_keeps_what_an_exporter_sends() {
        use opentelemetry::trace::{
            Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _,
        };
        let collector = Collector::start().await;
        let provider = test_tracer_provider(&collector.endpoint(), "weft-test");
        let tracer = provider.tracer("test");
        // The simple processor blocks on the export: run it off the runtime's thread.
        let trace_id = tokio::task::spawn_blocking(move || {
            let root = tracer.start("root");
            let trace_id = root.span_context().trace_id().to_string();
            let cx = opentelemetry::Context::current_with_span(root);
            let mut child = tracer.start_with_context("child", &cx);
            child.set_attribute(opentelemetry::KeyValue::new("n", 5));
            child.end();
            cx.span().end();
            trace_id
        })
        .await
        .unwrap();
        let spans = collector
            .wait_for("two spans", |spans| spans.len() >= 2)
            .await;
        let root = spans.iter().find(|s| s.name == "root").unwrap();
        let child = spans.iter().find(|s| s.name == "child").unwrap();
        assert_eq!(root.service, "weft-test");
        assert_eq!(root.trace_id, trace_id);
        assert_eq!(child.parent_span_id, root.span_id);
        assert_eq!(root.parent_span_id, "");
        assert_eq!(child.attr("n"), Some("5"));
    }
}
