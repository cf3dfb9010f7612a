//! Unary gRPC calls with dynamic messages through the mesh's resilient client stack.
//!
//! Each upstream is one [`ResilientChannel`] (see `weft_mesh::client`): the method's deadline,
//! retries of idempotent calls within a budget, adaptive throttling, and power-of-two-choices
//! balancing over the upstream's endpoints with `gateway.upstream_connections` HTTP/2
//! connections each (one connection serialises its frames through one task, and a second
//! measurably raises throughput: see `shared/perf-notes.md`). The gateway adds what only it
//! knows: the route's timeout, and that a call is safe to retry because the request carries
//! the method's `idempotent_if_field` (an idempotency key).

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use http::uri::PathAndQuery;
use tonic::{Status, codegen::Service as _};

use weft_mesh::{
    MeshConfig,
    client::{ClientError, ResilientChannel, UpstreamPolicy},
    deadline::Deadline,
    grpc,
    live::Live,
    propagate::{self, Side},
    retry::Retryable,
};

use crate::{request_message::RequestMessage, table::UpstreamSpec, wire_json::ReplyWriter};

/// Headers copied from the HTTP request onto the gRPC call. The trace context is not copied:
/// the call carries its own client span's (`traceparent`, `tracestate`, `baggage` with the
/// request id), a child of the caller's.
pub const FORWARDED_HEADERS: [&str; 2] = ["authorization", "x-request-id"];

/// An upstream's channel and policy.
pub struct Upstream {
    /// Its name, for errors and metrics.
    pub name: String,
    channel: ResilientChannel,
    policy: Live<UpstreamPolicy>,
}

impl Upstream {
    /// The resilient stack to `spec` with the policies of its `[upstreams.<name>]`, following
    /// reloads (nothing connects until the first call).
    pub fn new(spec: &UpstreamSpec, config: &MeshConfig) -> Result<Self, ClientError> {
        let connections = config.gateway.upstream_connections;
        let initial = config.upstream(&spec.key)?.clone();
        let key = spec.key.clone();
        let (channel, policy) = weft_mesh::client::resilient(
            &spec.name,
            &spec.key,
            config,
            connections,
            move |config| {
                config
                    .upstreams
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| initial.clone())
            },
        )?;
        Ok(Self {
            name: spec.name.clone(),
            channel,
            policy,
        })
    }

    /// The upstream's channel, for calls of its own (health checks).
    pub fn channel(&self) -> ResilientChannel {
        self.channel.clone()
    }

    /// Calls `path` with `message`, traced as a gRPC client span (a child of the current span),
    /// on behalf of the task's request (see `Gateway::handle`); the answer is the JSON `reply`
    /// writes from the upstream's. The call and its retries end by `timeout`.
    pub async fn unary(
        &self,
        path: PathAndQuery,
        message: RequestMessage<'_>,
        reply: Arc<ReplyWriter>,
        headers: &http::HeaderMap,
        timeout: Duration,
    ) -> Result<Vec<u8>, Status> {
        let span = propagate::grpc_span(Side::Client, path.as_str());
        let result = self
            .traced_unary(&span, path, message, reply, headers, timeout)
            .await;
        let code = match &result {
            Ok(_) => 0,
            Err(status) => status.code() as i32,
        };
        propagate::record_grpc_status(&span, Side::Client, code);
        result
    }

    async fn traced_unary(
        &self,
        span: &tracing::Span,
        path: PathAndQuery,
        message: RequestMessage<'_>,
        reply: Arc<ReplyWriter>,
        headers: &http::HeaderMap,
        timeout: Duration,
    ) -> Result<Vec<u8>, Status> {
        // Room for what the stack adds below (trace context, baggage, grpc-timeout, te,
        // content-type, user-agent): growing the map costs a reallocation and a rehash.
        let mut metadata = http::HeaderMap::with_capacity(FORWARDED_HEADERS.len() + 10);
        copy_headers(headers, &mut metadata);
        // The request's context is the task's (see `Gateway::handle`).
        propagate::inject_current(span, &mut propagate::insert_absent(&mut metadata));
        let retry_safe = self.carries_idempotency_field(path.as_str(), &message);
        let mut request = grpc::unary_request(path, message.frame(), metadata);
        let extensions = request.extensions_mut();
        extensions.insert(Deadline(tokio::time::Instant::now() + timeout));
        extensions.insert(propagate::ClientSpan(span.clone()));
        if retry_safe {
            extensions.insert(Retryable);
        }
        let mut channel = self.channel.clone();
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(|e| Status::unavailable(format!("upstream {} unavailable: {e}", self.name)))?;
        let answer = match channel.call(request).await {
            Ok(response) => grpc::unary_reply(response).await,
            Err(error) => Err(Status::from_error(error.into())),
        };
        let bytes = answer.map_err(|status| connect_failure_named(status, &self.name))?;
        reply
            .write(&bytes)
            .map_err(|e| Status::internal(format!("cannot decode upstream response: {e}")))
    }

    /// Whether `message` sets the field that makes calls to `path` safe to retry.
    fn carries_idempotency_field(&self, path: &str, message: &RequestMessage<'_>) -> bool {
        let policy = self.policy.get();
        let Some(field) = policy.rule(path).idempotent_if_field.as_deref() else {
            return false;
        };
        message.has_field_by_name(field)
    }
}

/// A transport failure (no connection) says which upstream was unreachable.
fn connect_failure_named(status: Status, upstream: &str) -> Status {
    if status.code() == tonic::Code::Unavailable && status.metadata().is_empty() {
        Status::unavailable(format!("upstream {upstream} unavailable"))
    } else {
        status
    }
}

/// Copies [`FORWARDED_HEADERS`] onto the call, marked sensitive: HPACK then sends them as
/// never-indexed literals. A token must not enter the compression table (RFC 7541, section
/// 7.1.3), and ids and trace contexts are new on every call, so indexing them only churned the
/// table: each new `x-request-id` was compared with every one still in it, then evicted an
/// entry worth keeping, on both ends of the connection.
fn copy_headers(headers: &http::HeaderMap, metadata: &mut http::HeaderMap) {
    // Names parsed once, not on every call.
    static NAMES: LazyLock<Vec<http::HeaderName>> = LazyLock::new(|| {
        FORWARDED_HEADERS
            .iter()
            .map(|name| http::HeaderName::from_static(name))
            .collect()
    });
    for name in NAMES.iter() {
        if let Some(value) = headers.get(name) {
            let mut value = value.clone();
            value.set_sensitive(true);
            metadata.insert(name.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_are_copied_as_sensitive_and_others_are_not() {
        let mut headers = http::HeaderMap::new();
        for name in FORWARDED_HEADERS {
            headers.insert(name, http::HeaderValue::from_static("v1"));
        }
        headers.insert("cookie", http::HeaderValue::from_static("secret"));
        headers.insert("traceparent", http::HeaderValue::from_static("v1"));
        let mut metadata = http::HeaderMap::new();
        copy_headers(&headers, &mut metadata);
        for name in FORWARDED_HEADERS {
            let value = metadata.get(name).unwrap();
            assert_eq!(value, "v1");
            assert!(value.is_sensitive(), "{name}");
        }
        assert!(metadata.get("cookie").is_none());
        assert!(
            metadata.get("traceparent").is_none(),
            "made per call, not copied"
        );
    }
}
