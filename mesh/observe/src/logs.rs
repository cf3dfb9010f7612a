//! Log lines: each event as one line on stderr (JSON or human-readable), carrying the request
//! id and the trace context of the call it belongs to, so that a log line leads to its trace.

#[cfg(test)]
use std::sync::Mutex;
use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    io::Write as _,
};

use opentelemetry::{Context, baggage::BaggageExt as _, trace::TraceContextExt as _};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    Layer,
    fmt::{format::Writer, time::FormatTime as _},
    layer::Context as LayerContext,
};

use crate::{
    config::LogFormat,
    propagate::{self, BAGGAGE_REQUEST_ID},
};

/// Writes each event as one line on stderr, with the request's id and the current span's trace
/// context. Spans cost it nothing: it reads the OpenTelemetry context the span layer activates.
pub(crate) struct LogLayer {
    format: LogFormat,
    sink: Sink,
    /// Spans are OpenTelemetry spans: the trace context is the current OpenTelemetry context's
    /// (else the call's, from its task-local context).
    otel: bool,
}

/// Where log lines go.
enum Sink {
    Stderr,
    #[cfg(test)]
    Buffer(std::sync::Arc<Mutex<Vec<u8>>>),
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let context = if self.otel {
            LineContext::current()
        } else {
            LineContext::of_call()
        };
        let _ = LINE.try_with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            self.format_line(event, &context, &mut line);
            match &self.sink {
                Sink::Stderr => {
                    let _ = std::io::stderr().lock().write_all(line.as_bytes());
                }
                #[cfg(test)]
                Sink::Buffer(buffer) => {
                    if let Ok(mut buffer) = buffer.lock() {
                        buffer.extend_from_slice(line.as_bytes());
                    }
                }
            }
            if line.capacity() > 16 * 1024 {
                *line = String::with_capacity(256);
            }
        });
    }
}

/// The trace context of a log line.
struct LineContext {
    request_id: Option<String>,
    /// Trace id and span id.
    ids: Option<(u128, u64)>,
}

impl LineContext {
    /// From the current OpenTelemetry context (the entered span's), else the call's.
    fn current() -> Self {
        let (request_id, ids) = Context::map_current(|cx| {
            let span = cx.span();
            let span = span.span_context();
            let ids = span.is_valid().then(|| {
                (
                    u128::from_be_bytes(span.trace_id().to_bytes()),
                    u64::from_be_bytes(span.span_id().to_bytes()),
                )
            });
            let id = cx
                .baggage()
                .get(BAGGAGE_REQUEST_ID)
                .map(|v| v.as_str().to_owned());
            (id, ids)
        });
        Self {
            request_id: request_id.or_else(propagate::current_request_id),
            ids,
        }
    }

    /// From the task-local context of the call being served.
    fn of_call() -> Self {
        propagate::with_current(|call| Self {
            request_id: Some(call.request_id.clone()),
            ids: call.ids().map(|ids| (ids.trace_id, ids.span_id)),
        })
        .unwrap_or(Self {
            request_id: None,
            ids: None,
        })
    }
}

impl LogLayer {
    /// Lines on stderr in `format`; `otel`: spans are OpenTelemetry spans.
    pub(crate) fn stderr(format: LogFormat, otel: bool) -> Self {
        Self {
            format,
            sink: Sink::Stderr,
            otel,
        }
    }

    fn format_line(&self, event: &Event<'_>, context: &LineContext, line: &mut String) {
        let meta = event.metadata();
        let clock = tracing_subscriber::fmt::time::SystemTime;
        match self.format {
            LogFormat::Json => {
                line.push_str("{\"timestamp\":\"");
                let _ = clock.format_time(&mut Writer::new(&mut *line));
                line.push_str("\",\"level\":\"");
                line.push_str(meta.level().as_str());
                line.push_str("\",\"target\":");
                json_string(line, meta.target());
                event.record(&mut JsonFields { line });
                if let Some(id) = &context.request_id {
                    line.push_str(",\"request_id\":");
                    json_string(line, id);
                }
                if let Some((trace_id, span_id)) = context.ids {
                    let _ = write!(
                        line,
                        ",\"trace_id\":\"{trace_id:032x}\",\"span_id\":\"{span_id:016x}\""
                    );
                }
                line.push_str("}\n");
            }
            LogFormat::Pretty => {
                let _ = clock.format_time(&mut Writer::new(&mut *line));
                let _ = write!(line, " {:>5} {}:", meta.level(), meta.target());
                event.record(&mut TextFields { line });
                if let Some(id) = &context.request_id {
                    let _ = write!(line, " request_id={id}");
                }
                if let Some((trace_id, span_id)) = context.ids {
                    let _ = write!(line, " trace_id={trace_id:032x} span_id={span_id:016x}");
                }
                line.push('\n');
            }
        }
    }
}

/// Event fields as JSON members (`,"name":value`).
struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        json_string(self.line, field.name());
        self.line.push(':');
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            json_string(self.line, &value.to_string());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_string(self.line, value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.line.push('"');
        let _ = write!(JsonEscape(self.line), "{value}");
        self.line.push('"');
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.line.push('"');
        let _ = write!(JsonEscape(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// Event fields as text: the message, then ` name=value` pairs.
struct TextFields<'a> {
    line: &'a mut String,
}

impl tracing::field::Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.line, " {value}");
        } else {
            let _ = write!(self.line, " {}={value:?}", field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.line, " {value:?}");
        } else {
            let _ = write!(self.line, " {}={value:?}", field.name());
        }
    }
}

/// Appends `value` as a JSON string literal.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    let _ = JsonEscape(out).write_str(value);
    out.push('"');
}

/// Writes text into a JSON string literal, escaped.
struct JsonEscape<'a>(&'a mut String);

impl fmt::Write for JsonEscape<'_> {
    fn write_str(&mut self, value: &str) -> fmt::Result {
        for c in value.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::trace_mode::{Mode, SPAN_TARGET};

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn log_lines_carry_the_request_and_trace_ids() {
        let buffer = std::sync::Arc::new(Mutex::new(Vec::new()));
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(LogLayer {
                format: LogFormat::Json,
                sink: Sink::Buffer(buffer.clone()),
                otel: true,
            });
        let (trace_id, child_id) = tracing::subscriber::with_default(subscriber, || {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let request = tracing::info_span!(target: SPAN_TARGET, "request");
            let _ = request.set_parent(propagate::with_request_id(Context::new(), "req-7"));
            let ids = request.in_scope(|| {
                let child = tracing::info_span!(target: SPAN_TARGET, "child");
                child.in_scope(|| tracing::info!(answer = 42, note = "a \"quote\"", "inside"));
                let cx = child.context();
                let child = cx.span();
                let child = child.span_context();
                (child.trace_id().to_string(), child.span_id().to_string())
            });
            tracing::warn!("outside");
            ids
        });
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let inside = &lines[0];
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["level"], "INFO");
        assert_eq!(inside["answer"], 42);
        assert_eq!(inside["note"], "a \"quote\"");
        assert_eq!(inside["request_id"], "req-7");
        assert_eq!(inside["trace_id"], trace_id.as_str());
        assert_eq!(inside["span_id"], child_id.as_str());
        assert_eq!(trace_id.len(), 32);
        let outside = &lines[1];
        assert_eq!(outside["level"], "WARN");
        assert!(outside.get("request_id").is_none() && outside.get("trace_id").is_none());
    }

    #[tokio::test]
    async fn without_an_exporter_logs_carry_the_calls_ids() {
        let buffer = std::sync::Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(LogLayer {
            format: LogFormat::Json,
            sink: Sink::Buffer(buffer.clone()),
            otel: false,
        });
        let _default = tracing::subscriber::set_default(subscriber);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        headers.insert(
            propagate::REQUEST_ID,
            http::HeaderValue::from_static("req-8"),
        );
        let call = propagate::CallContext::from_headers_in(Mode::Lite, &headers);
        let ids = call.ids().unwrap();
        call.scope(async { tracing::info!("inside") }).await;
        tracing::info!("outside");
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["request_id"], "req-8");
        assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[0]["span_id"], format!("{:016x}", ids.span_id));
        assert!(lines[1].get("request_id").is_none() && lines[1].get("trace_id").is_none());
    }
}
