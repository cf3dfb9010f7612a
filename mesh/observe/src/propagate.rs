//! Carries a call's context from the inbound request to every outbound call it makes, and
//! traces both.
//!
//! The server layer [`ServerContextLayer`] reads `x-request-id` (or the `request_id` of the W3C
//! `baggage`, or makes one), the caller's `authorization`, and the W3C trace context
//! (`traceparent`/`tracestate`/`baggage`) into a [`CallContext`], opens the call's gRPC server
//! span as a child of the caller's span, and runs the handler inside a task-local scope. The
//! client layer [`PropagateLayer`] opens a gRPC client span for each outgoing call and sends the
//! user's token, the request id (as `x-request-id` and as baggage `request_id`) and the client
//! span's trace context with it, so a service calling another on behalf of a user needs no
//! plumbing of its own. A header the caller set explicitly (a service token, say) is never
//! overwritten.
//!
//! Both spans follow the OpenTelemetry conventions for gRPC (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), read from the response's headers (an error answered
//! "trailers-only") or its trailers. A client span is an error on any code but OK; a server span
//! only on the codes that mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
//! INTERNAL, UNAVAILABLE, DATA_LOSS).

use std::{
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context as TaskContext, Poll, ready},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, header::AUTHORIZATION};
use opentelemetry::{
    baggage::{BaggageExt as _, KeyValueMetadata},
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator as _},
    trace::TraceContextExt as _,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::trace_mode::{self, Mode, SPAN_TARGET};

/// An OpenTelemetry context: the trace a call belongs to, and its baggage.
pub type TraceContext = opentelemetry::Context;

/// Metadata key of the request id.
pub const REQUEST_ID: &str = "x-request-id";
/// [`REQUEST_ID`] as a header name: a lookup or insert by `&str` parses the name every time.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
/// The W3C baggage member that carries the request id.
pub const BAGGAGE_REQUEST_ID: &str = "request_id";

/// The W3C trace context header (`traceparent`), which the mesh sends on every call.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE_HEADER: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE_HEADER: HeaderName = HeaderName::from_static("baggage");

/// W3C TraceContext then W3C Baggage.
static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(w3c_propagator);

fn w3c_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Makes the W3C propagators the process-wide OpenTelemetry ones too (for other libraries).
pub fn install_global_propagator() {
    opentelemetry::global::set_text_map_propagator(w3c_propagator());
}

/// What travels from an inbound call to the calls it causes.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The request id, valid per [`is_valid_request_id`].
    pub request_id: String,
    /// The caller's trace headers.
    pub trace: TraceHeaders,
    /// When the caller stops waiting (from its `grpc-timeout`): the calls this one makes
    /// must be answered before it.
    pub deadline: Option<tokio::time::Instant>,
    /// Whether the process makes no spans (no exporter): then [`CallContext::ids`] are the
    /// call's trace and span ids.
    lite: bool,
    /// Made on first use: a call that neither logs nor calls out never needs them.
    ids: std::sync::OnceLock<TraceIds>,
    // Copied as they came from the inbound call to the calls it causes (the trace context is
    // not: each outgoing call carries its own client span's). Fields, not a list: no
    // allocation to make, clone and drop on every call.
    /// The caller's `authorization`.
    authorization: Option<HeaderValue>,
    /// The request id as an `x-request-id` value.
    request_id_value: Option<HeaderValue>,
}

/// A trace id, a span id and the sampling decision, as a `traceparent` carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace id (never 0).
    pub trace_id: u128,
    /// The span id (never 0).
    pub span_id: u64,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

impl TraceIds {
    /// Ids for a call: the caller's trace continued (or a new one) and a new span id.
    fn for_call(trace: &TraceHeaders) -> Self {
        let (trace_id, span_id, sampled) = trace_mode::lite_ids(trace.parent());
        Self {
            trace_id,
            span_id,
            sampled,
        }
    }

    /// `00-<trace id>-<span id>-<flags>`.
    fn traceparent(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, slot) in text[3..35].iter_mut().enumerate() {
            *slot = HEX[((self.trace_id >> (124 - 4 * i)) & 0xf) as usize];
        }
        for (i, slot) in text[36..52].iter_mut().enumerate() {
            *slot = HEX[((self.span_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        if self.sampled {
            text[54] = b'1';
        }
        HeaderValue::from_bytes(&text).expect("hex digits and dashes are a valid header value")
    }
}

tokio::task_local! {
    static CURRENT: CallContext;
}

// === impl CallContext ===

impl CallContext {
    /// Reads the context of an inbound request, making a request id when none valid came in.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_headers_in(trace_mode::mode(), headers)
    }

    pub(crate) fn from_headers_in(mode: Mode, headers: &HeaderMap) -> Self {
        let trace = TraceHeaders::of(headers);
        let (request_id, request_id_value) = request_id_of(headers, &trace);
        Self {
            request_id,
            lite: mode == Mode::Lite,
            ids: std::sync::OnceLock::new(),
            trace,
            deadline: crate::grpc::inbound_deadline(headers),
            authorization: headers.get(AUTHORIZATION).cloned(),
            request_id_value,
        }
    }

    /// The context of a request with id `request_id` entering the mesh at an edge (the
    /// gateway), which forwards credentials itself.
    pub fn at_edge(request_id: String, headers: &HeaderMap) -> Self {
        let trace = TraceHeaders::of(headers);
        Self {
            request_id,
            lite: trace_mode::mode() == Mode::Lite,
            ids: std::sync::OnceLock::new(),
            trace,
            deadline: None,
            authorization: None,
            request_id_value: None,
        }
    }

    /// The trace and span ids of this process's part of the call when it makes no spans (no
    /// exporter): what its logs and its outgoing `traceparent` headers use.
    pub fn ids(&self) -> Option<TraceIds> {
        self.lite
            .then(|| *self.ids.get_or_init(|| TraceIds::for_call(&self.trace)))
    }

    /// The context of the call being served by the current task, if any.
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with `self` as the current context.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// Adds this context's `authorization` and `x-request-id` to `headers`, keeping any already
    /// set.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(value) = &self.authorization {
            headers
                .entry(AUTHORIZATION)
                .or_insert_with(|| value.clone());
        }
        if let Some(value) = &self.request_id_value {
            headers
                .entry(REQUEST_ID_HEADER)
                .or_insert_with(|| value.clone());
        }
    }
}

/// Runs `f` on the context of the call being served by the current task, if any.
pub fn with_current<T>(f: impl FnOnce(&CallContext) -> T) -> Option<T> {
    CURRENT.try_with(f).ok()
}

/// The request id of the call being served by the current task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|c| c.request_id.clone()).ok()
}

/// The request's `x-request-id` if acceptable, as text and as a header value.
pub fn incoming_request_id(headers: &HeaderMap) -> Option<(String, HeaderValue)> {
    let value = headers.get(&REQUEST_ID_HEADER)?;
    let id = value.to_str().ok().filter(|id| is_valid_request_id(id))?;
    // The value that came holds the very bytes a new one would: share it instead of copying
    // (and not sensitive, as a new one would not be).
    let mut shared = value.clone();
    shared.set_sensitive(false);
    Some((id.to_owned(), shared))
}

/// Whether an incoming request id is acceptable: 1..128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

// === trace context ===

/// The W3C trace headers of an inbound request, as they came (cheap to keep: shared bytes).
#[derive(Debug, Clone, Default)]
pub struct TraceHeaders {
    traceparent: Option<HeaderValue>,
    tracestate: Option<HeaderValue>,
    baggage: Option<HeaderValue>,
}

impl TraceHeaders {
    /// The trace headers of `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        Self {
            traceparent: headers.get(&TRACEPARENT_HEADER).cloned(),
            tracestate: headers.get(&TRACESTATE_HEADER).cloned(),
            baggage: headers.get(&BAGGAGE_HEADER).cloned(),
        }
    }

    /// As an OpenTelemetry context (empty when no valid `traceparent` or `baggage` came).
    pub fn to_context(&self) -> TraceContext {
        PROPAGATOR.extract_with_context(&TraceContext::new(), &TraceHeadersExtractor(self))
    }

    /// The caller's trace id, span id and sampled flag, from a valid `traceparent`.
    pub fn parent(&self) -> Option<(u128, u64, bool)> {
        parse_traceparent(self.traceparent.as_ref()?.to_str().ok()?)
    }

    /// The `request_id` member of the baggage, if any.
    fn baggage_request_id(&self) -> Option<&str> {
        let baggage = self.baggage.as_ref()?.to_str().ok()?;
        baggage.split(',').find_map(|member| {
            let (key, value) = member.split_once('=')?;
            (key.trim() == BAGGAGE_REQUEST_ID)
                .then(|| value.split(';').next().unwrap_or_default().trim())
        })
    }

    /// The baggage to send on: the caller's members, with `request_id` set to `id`.
    fn baggage_with(&self, id: &str) -> Option<HeaderValue> {
        let mut value = String::with_capacity(
            self.baggage.as_ref().map_or(0, |b| b.len() + 1)
                + BAGGAGE_REQUEST_ID.len()
                + 1
                + id.len(),
        );
        if let Some(members) = self.baggage.as_ref().and_then(|b| b.to_str().ok()) {
            for member in members.split(',').filter(|m| !m.trim().is_empty()) {
                let key = member.split('=').next().unwrap_or_default().trim();
                if key != BAGGAGE_REQUEST_ID {
                    value.push_str(member.trim());
                    value.push(',');
                }
            }
        }
        value.push_str(BAGGAGE_REQUEST_ID);
        value.push('=');
        value.push_str(id);
        HeaderValue::try_from(value).ok()
    }
}

/// `00-<trace id>-<span id>-<flags>` -> (trace id, span id, sampled), if valid (lower-case hex,
/// ids not all zeros, version not `ff`; a future version may append fields).
fn parse_traceparent(value: &str) -> Option<(u128, u64, bool)> {
    let value = value.trim().as_bytes();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_value(&value[..2])?;
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    let trace_id = hex_value(&value[3..35]).filter(|t| *t != 0)?;
    let span_id = hex_value(&value[36..52]).filter(|s| *s != 0)? as u64;
    let flags = hex_value(&value[53..55])?;
    Some((trace_id, span_id, flags & 1 == 1))
}

/// Lower-case hex digits (at most 32) as a number.
fn hex_value(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some((value << 4) | u128::from(nibble))
    })
}

/// The trace context and baggage of an inbound request (empty when it came without).
pub fn extract(headers: &HeaderMap) -> TraceContext {
    PROPAGATOR.extract_with_context(&TraceContext::new(), &HeaderExtractor(headers))
}

/// The request id of an inbound request: its `x-request-id`, else its baggage's `request_id`,
/// if valid; else a new one. With it as a header value.
fn request_id_of(headers: &HeaderMap, trace: &TraceHeaders) -> (String, Option<HeaderValue>) {
    if let Some((id, value)) = incoming_request_id(headers) {
        return (id, Some(value));
    }
    let id = match trace
        .baggage_request_id()
        .filter(|id| is_valid_request_id(id))
    {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::new_v4()
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_owned(),
    };
    let value = HeaderValue::from_str(&id).ok();
    (id, value)
}

/// `cx` with `request_id` as its baggage's `request_id`.
pub fn with_request_id(cx: TraceContext, request_id: &str) -> TraceContext {
    if cx.baggage().get(BAGGAGE_REQUEST_ID).map(|v| v.as_str()) == Some(request_id) {
        return cx;
    }
    let entries: Vec<KeyValueMetadata> = cx
        .baggage()
        .iter()
        .filter(|(key, _)| key.as_str() != BAGGAGE_REQUEST_ID)
        .map(|(key, (value, metadata))| {
            KeyValueMetadata::new(key.clone(), value.clone(), metadata.clone())
        })
        .chain(std::iter::once(KeyValueMetadata::new(
            BAGGAGE_REQUEST_ID,
            request_id.to_owned(),
            "",
        )))
        .collect();
    cx.with_baggage(entries)
}

/// Makes the caller of `call` the parent of `span` (which must not have started yet), and the
/// call's request id the id of everything under it.
pub fn start(span: &Span, call: &CallContext) {
    if trace_mode::mode() == Mode::Otel {
        let _ = span.set_parent(with_request_id(call.trace.to_context(), &call.request_id));
    }
}

/// Writes the trace headers of a call made under `span`, on behalf of `call`, with `set`:
/// `traceparent` naming `span` (or, without spans, this process's part of `call`) as the
/// callee's parent, the caller's `tracestate`, and the caller's `baggage` with `request_id`.
/// With tracing off, the caller's trace headers pass through unchanged.
pub fn inject_outgoing(
    span: &Span,
    call: Option<&CallContext>,
    set: &mut dyn FnMut(HeaderName, HeaderValue),
) {
    inject_outgoing_in(trace_mode::mode(), span, call, set);
}

fn inject_outgoing_in(
    mode: Mode,
    span: &Span,
    call: Option<&CallContext>,
    set: &mut dyn FnMut(HeaderName, HeaderValue),
) {
    let request_id = call.map(|c| c.request_id.as_str());
    let default = TraceHeaders::default();
    let inbound = call.map_or(&default, |c| &c.trace);
    match mode {
        Mode::Otel => {
            let cx = span.context();
            if cx.span().span_context().is_valid() {
                let cx = match request_id {
                    Some(id) => with_request_id(cx, id),
                    None => cx,
                };
                inject_with(&cx, set);
                return;
            }
        }
        Mode::Lite => {
            if let Some(ids) = call.and_then(CallContext::ids) {
                set(TRACEPARENT_HEADER, sensitive(ids.traceparent()));
                pass_on(inbound, request_id, false, set);
                return;
            }
        }
        Mode::Off => {}
    }
    pass_on(inbound, request_id, true, set);
}

/// [`inject_outgoing`] on behalf of the call being served by the current task, if any.
pub fn inject_current(span: &Span, set: &mut dyn FnMut(HeaderName, HeaderValue)) {
    if with_current(|call| inject_outgoing(span, Some(call), set)).is_none() {
        inject_outgoing(span, None, set);
    }
}

/// Sends the caller's trace headers on (its `traceparent` too when `with_parent`), the baggage
/// with `request_id`.
fn pass_on(
    inbound: &TraceHeaders,
    request_id: Option<&str>,
    with_parent: bool,
    set: &mut dyn FnMut(HeaderName, HeaderValue),
) {
    if with_parent && let Some(value) = &inbound.traceparent {
        set(TRACEPARENT_HEADER, sensitive(value.clone()));
    }
    if let Some(value) = &inbound.tracestate {
        set(TRACESTATE_HEADER, sensitive(value.clone()));
    }
    let baggage = match request_id {
        Some(id) => inbound.baggage_with(id),
        None => inbound.baggage.clone(),
    };
    if let Some(value) = baggage {
        set(BAGGAGE_HEADER, sensitive(value));
    }
}

/// New on every call: never worth a place in the HPACK table.
fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// Writes `cx` as `traceparent`, `tracestate` and `baggage` headers with `set`.
pub fn inject_with(cx: &TraceContext, set: impl FnMut(HeaderName, HeaderValue)) {
    PROPAGATOR.inject_context(cx, &mut FnInjector(set));
}

/// Writes `cx` into `headers`, keeping any trace header already set.
pub fn inject(cx: &TraceContext, headers: &mut HeaderMap) {
    inject_with(cx, insert_absent(headers));
}

/// Inserts a header into `headers` unless one of that name is there (set by the caller).
pub fn insert_absent(headers: &mut HeaderMap) -> impl FnMut(HeaderName, HeaderValue) + '_ {
    move |name, value| {
        headers.entry(name).or_insert(value);
    }
}

struct TraceHeadersExtractor<'a>(&'a TraceHeaders);

impl Extractor for TraceHeadersExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => &self.0.traceparent,
            "tracestate" => &self.0.tracestate,
            "baggage" => &self.0.baggage,
            _ => return None,
        };
        value.as_ref().and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate", "baggage"]
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct FnInjector<F>(F);

impl<F: FnMut(HeaderName, HeaderValue)> Injector for FnInjector<F> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "traceparent" => TRACEPARENT_HEADER,
            "tracestate" => TRACESTATE_HEADER,
            "baggage" => BAGGAGE_HEADER,
            other => match HeaderName::from_bytes(other.as_bytes()) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            (self.0)(name, sensitive(value));
        }
    }
}

// === spans ===

/// Which end of a call a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller: any code but OK is an error.
    Client,
    /// The callee: only server-fault codes are errors.
    Server,
}

/// `/package.Service/Method` -> `("package.Service", "Method")`.
pub fn rpc_names(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// A gRPC span for a call to `path` (`/package.Service/Method`), named `package.Service/Method`;
/// a child of the current span.
pub fn grpc_span(side: Side, path: &str) -> Span {
    if !trace_mode::spans_on() {
        return Span::none();
    }
    let (service, method) = rpc_names(path);
    let name = path.strip_prefix('/').unwrap_or(path);
    match side {
        Side::Client => tracing::info_span!(
            target: SPAN_TARGET,
            "grpc.client",
            otel.name = name,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        ),
        Side::Server => tracing::info_span!(
            target: SPAN_TARGET,
            "grpc.server",
            otel.name = name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        ),
    }
}

/// Records a call's gRPC status code on its span, and an error status where the conventions
/// call the code an error for that side.
pub fn record_grpc_status(span: &Span, side: Side, code: i32) {
    span.record("rpc.grpc.status_code", i64::from(code));
    let error = match side {
        Side::Client => code != 0,
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    };
    if error {
        span.record("otel.status_code", "error");
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    crate::grpc::status_code(headers).map(|code| code as i32)
}

/// Wraps a response so its span records the gRPC status (from the headers now, or from the
/// trailers when they come) and ends when the body does.
fn traced_response<B>(
    response: http::Response<B>,
    span: Span,
    side: Side,
) -> http::Response<TracedBody<B>> {
    let recorded = match grpc_status(response.headers()) {
        Some(code) => {
            record_grpc_status(&span, side, code);
            true
        }
        None => false,
    };
    response.map(|inner| TracedBody {
        inner,
        span: Some(span),
        side,
        recorded,
    })
}

pin_project! {
    /// A gRPC response body that holds its call's span until the trailers (or the end) pass.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
        side: Side,
        recorded: bool,
    }
}

impl<B: http_body::Body> http_body::Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let (Some(span), false) = (this.span.as_ref(), *this.recorded)
                        && let Some(code) = grpc_status(trailers)
                    {
                        record_grpc_status(span, *this.side, code);
                        *this.recorded = true;
                    }
                    *this.span = None;
                }
            }
            Some(Err(_)) => {
                if let (Some(span), false) = (this.span.take(), *this.recorded) {
                    // The stream broke: what tonic reports as UNKNOWN (client) or a server fault.
                    record_grpc_status(&span, *this.side, 2);
                }
            }
            None => *this.span = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// === server side ===

/// Server layer: opens the call's span and scopes its [`CallContext`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerContextLayer;

/// Service made by [`ServerContextLayer`].
#[derive(Debug, Clone)]
pub struct ServerContext<S> {
    inner: S,
}

impl<S> Layer<S> for ServerContextLayer {
    type Service = ServerContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerContext { inner }
    }
}

impl<S, B, ResBody> Service<Request<B>> for ServerContext<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: 'static,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let context = CallContext::from_headers(req.headers());
        if !trace_mode::spans_on() || crate::grpc::is_infrastructure(req.uri().path()) {
            req.extensions_mut().insert(context.clone());
            let fut = context.scope(self.inner.call(req));
            return Box::pin(async move {
                let response = fut.await?;
                Ok(response.map(|inner| TracedBody {
                    inner,
                    span: None,
                    side: Side::Server,
                    recorded: true,
                }))
            });
        }
        let span = grpc_span(Side::Server, req.uri().path());
        start(&span, &context);
        req.extensions_mut().insert(context.clone());
        let fut = span.in_scope(|| self.inner.call(req));
        let fut = context.scope(fut).instrument(span.clone());
        Box::pin(async move {
            let response = fut.await?;
            Ok(traced_response(response, span, Side::Server))
        })
    }
}

// === client side ===

/// The client span of an outgoing call, in its request's extensions: layers below the
/// propagation layer record their events on it (`span.in_scope(|| tracing::info!(...))`).
#[derive(Debug, Clone)]
pub struct ClientSpan(pub Span);

/// Client layer: traces each outgoing call and sends the current [`CallContext`] with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateLayer;

/// Service made by [`PropagateLayer`].
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: S,
}

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Propagate { inner }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Propagate<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let span = grpc_span(Side::Client, req.uri().path());
        // Layers below record their events (retries, say) on the call's span.
        req.extensions_mut().insert(ClientSpan(span.clone()));
        // `call` runs in the caller's task, where the inbound call's context is in scope.
        let headers = req.headers_mut();
        with_current(|context| context.apply(headers));
        inject_current(&span, &mut insert_absent(headers));
        ResponseFuture {
            inner: self.inner.call(req),
            span: Some(span),
        }
    }
}

pin_project! {
    /// The response of a traced outgoing call.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<TracedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let span = this.span.take().unwrap_or_else(Span::none);
        Poll::Ready(match result {
            Ok(response) => Ok(traced_response(response, span, Side::Client)),
            Err(e) => {
                // No answer at all (no connection): what tonic reports as UNAVAILABLE.
                record_grpc_status(&span, Side::Client, 14);
                Err(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn request_ids_are_validated() {
        assert!(is_valid_request_id("abc-123_x.y:z"));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id("has space"));
        assert!(!is_valid_request_id(&"a".repeat(129)));
    }

    #[test]
    fn a_bad_incoming_id_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("bad id!"));
        let context = CallContext::from_headers(&headers);
        assert_eq!(context.request_id.len(), 32);
    }

    #[test]
    fn the_request_id_may_come_in_the_baggage() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "baggage",
            HeaderValue::from_static("tenant=a,request_id=from-bag"),
        );
        let context = CallContext::from_headers(&headers);
        assert_eq!(context.request_id, "from-bag");
        // The header wins over the baggage.
        headers.insert(REQUEST_ID, HeaderValue::from_static("from-header"));
        let context = CallContext::from_headers(&headers);
        assert_eq!(context.request_id, "from-header");
        let cx = with_request_id(context.trace.to_context(), &context.request_id);
        assert_eq!(
            cx.baggage().get(BAGGAGE_REQUEST_ID).unwrap().as_str(),
            "from-header"
        );
        assert_eq!(cx.baggage().get("tenant").unwrap().as_str(), "a");
    }

    #[test]
    fn the_request_id_is_sent_on_as_a_plain_header_whichever_way_it_came() {
        let sent = |inbound: &HeaderMap| {
            let context = CallContext::from_headers_in(Mode::Off, inbound);
            let mut outgoing = HeaderMap::new();
            context.apply(&mut outgoing);
            (context.request_id, outgoing)
        };
        let mut inbound = HeaderMap::new();
        let mut value = HeaderValue::from_static("req-9");
        value.set_sensitive(true);
        inbound.insert(REQUEST_ID_HEADER, value);
        inbound.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let (id, outgoing) = sent(&inbound);
        assert_eq!(id, "req-9");
        assert_eq!(outgoing[REQUEST_ID], "req-9");
        assert!(!outgoing[REQUEST_ID].is_sensitive());
        assert_eq!(outgoing["authorization"], "Bearer t");
        let names: Vec<_> = outgoing.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["authorization", REQUEST_ID]);

        let mut inbound = HeaderMap::new();
        inbound.insert(
            BAGGAGE_HEADER,
            HeaderValue::from_static("request_id=from-bag"),
        );
        let (id, outgoing) = sent(&inbound);
        assert_eq!((id.as_str(), outgoing.len()), ("from-bag", 1));
        assert_eq!(outgoing[REQUEST_ID], "from-bag");

        let (id, outgoing) = sent(&HeaderMap::new());
        assert!(id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(outgoing[REQUEST_ID], id.as_str());
        assert!(
            CallContext::at_edge(id, &HeaderMap::new())
                .request_id_value
                .is_none()
        );
    }

    #[test]
    fn traceparents_are_parsed_strictly() {
        assert_eq!(
            parse_traceparent(TRACEPARENT),
            Some((
                0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
                0xb7ad_6b71_6920_3331,
                true
            ))
        );
        assert_eq!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
                .map(|p| p.2),
            Some(false)
        );
        for bad in [
            "",
            "00-abc-def-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn baggage_is_passed_on_with_the_request_id() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "baggage",
            HeaderValue::from_static("tenant=a, request_id=old;p=1,x=y"),
        );
        let trace = TraceHeaders::of(&headers);
        assert_eq!(trace.baggage_request_id(), Some("old"));
        assert_eq!(
            trace.baggage_with("new").unwrap(),
            "tenant=a,x=y,request_id=new"
        );
        assert_eq!(
            TraceHeaders::default().baggage_with("id").unwrap(),
            "request_id=id"
        );
    }

    #[test]
    fn without_spans_a_call_sends_its_own_ids_as_the_parent() {
        let mut inbound = HeaderMap::new();
        inbound.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
        inbound.insert("tracestate", HeaderValue::from_static("vendor=1"));
        inbound.insert(REQUEST_ID, HeaderValue::from_static("req-2"));
        let call = CallContext::from_headers_in(Mode::Lite, &inbound);
        let ids = call.ids().unwrap();
        assert_eq!(call.ids(), Some(ids), "made once");
        assert_eq!(ids.trace_id, 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c);
        assert_ne!(ids.span_id, 0xb7ad_6b71_6920_3331, "a span id of its own");
        let mut sent = HeaderMap::new();
        inject_outgoing_in(
            Mode::Lite,
            &Span::none(),
            Some(&call),
            &mut insert_absent(&mut sent),
        );
        assert_eq!(
            sent["traceparent"],
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{:016x}-01",
                ids.span_id
            )
        );
        assert_eq!(sent["tracestate"], "vendor=1");
        let again = TraceIds {
            trace_id: 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            span_id: 0xb7ad_6b71_6920_3331,
            sampled: true,
        };
        assert_eq!(again.traceparent(), TRACEPARENT);
        assert_eq!(
            parse_traceparent(again.traceparent().to_str().unwrap()),
            Some((again.trace_id, again.span_id, true))
        );
        assert_eq!(sent["baggage"], "request_id=req-2");
        // A new trace when none came in.
        let fresh = CallContext::from_headers_in(Mode::Lite, &HeaderMap::new());
        assert_ne!(fresh.ids().unwrap().trace_id, ids.trace_id);
        assert_eq!(
            CallContext::from_headers_in(Mode::Off, &inbound).ids(),
            None
        );
    }

    #[test]
    fn rpc_names_split_the_path() {
        assert_eq!(
            rpc_names("/weft.auth.v1.AuthService/Register"),
            ("weft.auth.v1.AuthService", "Register")
        );
        assert_eq!(rpc_names("odd"), ("odd", ""));
    }

    #[tokio::test]
    async fn the_client_layer_sends_context_but_keeps_explicit_headers() {
        let mut inbound = HeaderMap::new();
        inbound.insert(REQUEST_ID, HeaderValue::from_static("req-1"));
        inbound.insert("authorization", HeaderValue::from_static("Bearer user"));
        inbound.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
        let context = CallContext::from_headers(&inbound);

        let echo = tower::service_fn(|req: Request<()>| async move {
            let mut response = http::Response::new(());
            *response.headers_mut() = req.headers().clone();
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut client = PropagateLayer.layer(echo);
        let sent = context
            .scope(async move {
                let mut req = Request::new(());
                req.headers_mut()
                    .insert("authorization", HeaderValue::from_static("Bearer service"));
                client.call(req).await.unwrap()
            })
            .await;
        let sent = sent.headers();
        assert_eq!(sent[REQUEST_ID], "req-1");
        // No span layer here: the caller's trace context passes through.
        assert_eq!(sent["traceparent"], TRACEPARENT);
        assert_eq!(sent["baggage"], "request_id=req-1");
        assert_eq!(sent["authorization"], "Bearer service");
    }

    #[test]
    fn statuses_are_errors_per_side() {
        let span = Span::none();
        // Only the classification matters here; recording on a disabled span is a no-op.
        record_grpc_status(&span, Side::Client, 5);
        record_grpc_status(&span, Side::Server, 5);
        assert_eq!(grpc_status(&HeaderMap::new()), None);
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(5));
    }
}
