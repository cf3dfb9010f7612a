//! Carries a call's context from the inbound request to every outbound call it makes.
//!
//! The server layer [`ServerContextLayer`] reads `x-request-id` (or makes one), the caller's
//! `authorization`, and the W3C `traceparent`/`tracestate`/`baggage` headers into a
//! [`CallContext`], opens the call's span, and runs the handler inside a task-local scope. The
//! client layer [`PropagateLayer`] copies that context onto each outgoing request, so a service
//! calling another on behalf of a user needs no plumbing of its own: the user's token, the
//! request id and the trace context travel with the call. A header the caller set explicitly
//! (a service token, say) is never overwritten.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

/// Metadata key of the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// Headers copied from an inbound call to the calls it causes.
const PROPAGATED: [&str; 5] = [
    REQUEST_ID,
    "authorization",
    "traceparent",
    "tracestate",
    "baggage",
];

/// What travels from an inbound call to the calls it causes.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The request id, valid per [`is_valid_request_id`].
    pub request_id: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

tokio::task_local! {
    static CURRENT: CallContext;
}

// === impl CallContext ===

impl CallContext {
    /// Reads the context of an inbound request, making a request id when none valid came in.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| is_valid_request_id(id))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let mut propagated = Vec::with_capacity(PROPAGATED.len());
        for name in &PROPAGATED[1..] {
            if let Some(value) = headers.get(*name) {
                propagated.push((HeaderName::from_static(name), value.clone()));
            }
        }
        let id_value = HeaderValue::from_str(&request_id).expect("validated request id");
        propagated.push((HeaderName::from_static(REQUEST_ID), id_value));
        Self {
            request_id,
            headers: propagated,
        }
    }

    /// The context of the call being served by the current task, if any.
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with `self` as the current context.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// Adds this context's headers to `headers`, keeping any already set.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Whether an incoming request id is acceptable: 1..128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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

impl<S, B> Service<Request<B>> for ServerContext<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let context = CallContext::from_headers(req.headers());
        let span = tracing::info_span!(
            "grpc.server",
            request_id = %context.request_id,
            rpc.method = %req.uri().path(),
        );
        req.extensions_mut().insert(context.clone());
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(context.scope(fut).instrument(span))
    }
}

// === client side ===

/// Client layer: applies the current [`CallContext`] to each outgoing request.
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

impl<S, B> Service<Request<B>> for Propagate<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // `call` runs in the caller's task, where the inbound call's context is in scope.
        let _ = CURRENT.try_with(|context| context.apply(req.headers_mut()));
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn the_client_layer_copies_context_but_keeps_explicit_headers() {
        let mut inbound = HeaderMap::new();
        inbound.insert(REQUEST_ID, HeaderValue::from_static("req-1"));
        inbound.insert("authorization", HeaderValue::from_static("Bearer user"));
        inbound.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        let context = CallContext::from_headers(&inbound);

        let echo = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.headers().clone())
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
        assert_eq!(sent[REQUEST_ID], "req-1");
        assert_eq!(sent["traceparent"], "00-abc-def-01");
        assert_eq!(sent["authorization"], "Bearer service");
    }
}
