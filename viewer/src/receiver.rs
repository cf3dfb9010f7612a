//! The OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService`): decodes
//! what the processes export into [`SpanView`]s, bounded per span by [`SpanLimits`], hands them
//! to the [`Hub`], and passes the request on to the [`Forwarder`] when there is one.

use std::net::SocketAddr;

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::span::SpanKind,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::{
    error::ViewerError,
    forward::Forwarder,
    hub::Hub,
    model::{Attribute, EventView, SpanStatus, SpanView},
    store::SpanLimits,
};

/// The receiver's gRPC service.
#[derive(Debug, Clone)]
pub struct Receiver {
    hub: Hub,
    limits: SpanLimits,
    forward: Option<Forwarder>,
}

// === impl Receiver ===

impl Receiver {
    /// A receiver feeding `hub`, forwarding to `forward` when given.
    pub fn new(hub: Hub, forward: Option<Forwarder>) -> Self {
        let limits = hub.limits().span;
        Self {
            hub,
            limits,
            forward,
        }
    }

    /// Keeps the spans of one export request (and forwards it).
    pub fn accept(&self, request: ExportTraceServiceRequest) {
        self.hub.ingest(decode(&request, &self.limits));
        if let Some(forward) = &self.forward {
            forward.send(request);
        }
    }

    /// Serves the receiver on a free loopback port; returns its address (the value for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is `http://<addr>`). Stops with the runtime.
    pub async fn serve(self) -> Result<SocketAddr, ViewerError> {
        let wanted = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(wanted)
            .await
            .map_err(|e| ViewerError::Bind(wanted, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ViewerError::Bind(wanted, e))?;
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(async move {
            if let Err(err) = server.await {
                tracing::warn!(%err, "the OTLP receiver stopped");
            }
        });
        Ok(addr)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.accept(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The spans of `request`, each bounded by `limits`.
pub fn decode(request: &ExportTraceServiceRequest, limits: &SpanLimits) -> Vec<SpanView> {
    let mut spans = Vec::new();
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| cut(value_text(kv.value.as_ref()), limits.max_value_bytes).0)
            .unwrap_or_else(|| "unknown".into());
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                let mut truncated = false;
                let (attributes, cut_attributes) = bounded_attributes(&span.attributes, limits);
                truncated |= cut_attributes;
                truncated |= span.events.len() > limits.max_events;
                let events = span
                    .events
                    .iter()
                    .take(limits.max_events)
                    .map(|event| {
                        let (attributes, cut_attributes) =
                            bounded_attributes(&event.attributes, limits);
                        let (name, cut_name) = cut(event.name.clone(), limits.max_value_bytes);
                        truncated |= cut_attributes || cut_name;
                        EventView {
                            name,
                            time_unix_nano: event.time_unix_nano,
                            attributes,
                        }
                    })
                    .collect();
                let (name, cut_name) = cut(span.name.clone(), limits.max_value_bytes);
                let (status, message) = match &span.status {
                    Some(s) if s.code == 2 => (SpanStatus::Error, s.message.clone()),
                    Some(s) if s.code == 1 => (SpanStatus::Ok, s.message.clone()),
                    _ => (SpanStatus::Unset, String::new()),
                };
                let (status_message, cut_message) = cut(message, limits.max_value_bytes);
                spans.push(SpanView {
                    trace_id: hex(&span.trace_id, 16),
                    span_id: hex(&span.span_id, 8),
                    parent_span_id: hex(&span.parent_span_id, 8),
                    service: service.clone(),
                    name,
                    kind: kind_name(span.kind).into(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes,
                    events,
                    status,
                    status_message,
                    truncated: truncated || cut_name || cut_message,
                });
            }
        }
    }
    spans
}

/// At most `limits.max_attributes` attributes, values cut; whether anything was cut.
fn bounded_attributes(attributes: &[KeyValue], limits: &SpanLimits) -> (Vec<Attribute>, bool) {
    let mut truncated = attributes.len() > limits.max_attributes;
    let kept = attributes
        .iter()
        .take(limits.max_attributes)
        .map(|kv| {
            let (key, cut_key) = cut(kv.key.clone(), limits.max_value_bytes);
            let (value, cut_value) = cut(value_text(kv.value.as_ref()), limits.max_value_bytes);
            truncated |= cut_key || cut_value;
            Attribute { key, value }
        })
        .collect();
    (kept, truncated)
}

/// `text` cut to at most `max` bytes on a char boundary, and whether it was.
fn cut(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.shrink_to_fit();
    (text, true)
}

/// An attribute value as text: strings as they are, other values as their JSON-like text.
fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(|v| value_text(Some(v))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::BytesValue(bytes)) => format!("<{} bytes>", bytes.len()),
        Some(Value::KvlistValue(list)) => format!("<{} key-values>", list.values.len()),
        Some(_) | None => String::new(),
    }
}

/// Lower-case hex of an id of `len` bytes; empty when the id is absent or malformed.
fn hex(bytes: &[u8], len: usize) -> String {
    if bytes.len() != len || bytes.iter().all(|b| *b == 0) {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        Ok(SpanKind::Unspecified) | Err(_) => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::AnyValue,
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status as OtlpStatus},
    };

    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_and_bounds_a_span() {
        let limits = SpanLimits {
            max_value_bytes: 8,
            max_attributes: 2,
            max_events: 1,
        };
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![],
            name: "a very long name".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 10,
            end_time_unix_nano: 30,
            attributes: vec![
                kv("n", Value::IntValue(5)),
                kv("long", Value::StringValue("é".repeat(10))),
                kv("third", Value::BoolValue(true)),
            ],
            events: vec![Default::default(), Default::default()],
            status: Some(OtlpStatus {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue("weft-x".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let spans = decode(&request, &limits);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.service, "weft-x");
        assert_eq!(span.trace_id, "01".repeat(16));
        assert_eq!(span.span_id, "02".repeat(8));
        assert_eq!(span.parent_span_id, "");
        assert_eq!(span.name, "a very l");
        assert_eq!(span.kind, "server");
        assert_eq!(span.duration_nanos(), 20);
        assert_eq!(span.attributes.len(), 2);
        assert_eq!(span.attr("n"), Some("5"));
        // Cut on a char boundary: four two-byte chars.
        assert_eq!(span.attr("long"), Some("éééé"));
        assert_eq!(span.events.len(), 1);
        assert!(span.is_error());
        assert_eq!(span.status_message, "boom");
        assert!(span.truncated);
    }
}
