//! Unary gRPC calls with dynamic messages over pooled HTTP/2 connections.
//!
//! Each upstream keeps `gateway.upstream_connections` lazily connected channels and spreads
//! calls over them round-robin: one HTTP/2 connection serialises its frames through one task,
//! and a second connection measurably raises throughput (see `shared/perf-notes.md`).

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
};

use weft_mesh::propagate::{self, Side};

use crate::table::UpstreamSpec;

/// Headers copied from the HTTP request onto the gRPC call. The trace context is not copied:
/// the call carries its own client span's (`traceparent`, `tracestate`, `baggage` with the
/// request id), a child of the caller's.
pub const FORWARDED_HEADERS: [&str; 2] = ["authorization", "x-request-id"];

/// An upstream's channels.
pub struct Upstream {
    /// Its name, for errors and metrics.
    pub name: String,
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Upstream {
    /// Lazily connecting channels to `spec` (nothing connects until the first call).
    pub fn new(
        spec: &UpstreamSpec,
        connections: usize,
    ) -> Result<Self, weft_mesh::client::ClientError> {
        let channels = (0..connections)
            .map(|_| weft_mesh::client::raw_channel(&spec.endpoint, spec.connect_timeout))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: spec.name.clone(),
            channels,
            next: AtomicUsize::new(0),
        })
    }

    /// The next channel, round-robin.
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    /// Calls `path` with `message`, traced as a gRPC client span (a child of the current span),
    /// on behalf of the task's request (see `Gateway::handle`); the answer is decoded as
    /// `output`.
    pub async fn unary(
        &self,
        path: PathAndQuery,
        message: DynamicMessage,
        output: MessageDescriptor,
        headers: &http::HeaderMap,
        timeout: Duration,
    ) -> Result<DynamicMessage, Status> {
        let span = propagate::grpc_span(Side::Client, path.as_str());
        let result = self
            .traced_unary(&span, path, message, output, headers, timeout)
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
        message: DynamicMessage,
        output: MessageDescriptor,
        headers: &http::HeaderMap,
        timeout: Duration,
    ) -> Result<DynamicMessage, Status> {
        let mut metadata = http::HeaderMap::with_capacity(FORWARDED_HEADERS.len() + 3);
        copy_headers(headers, &mut metadata);
        // The request's context is the task's (see `Gateway::handle`).
        propagate::inject_current(span, &mut propagate::insert_absent(&mut metadata));
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = MetadataMap::from_headers(metadata);
        request.set_timeout(timeout);
        let mut grpc = tonic::client::Grpc::new(self.channel());
        let call = async {
            grpc.ready().await.map_err(|e| {
                Status::unavailable(format!("upstream {} unavailable: {e}", self.name))
            })?;
            grpc.unary(request, path, DynamicCodec { output }).await
        };
        let started = std::time::Instant::now();
        let deadline_exceeded = || {
            Status::deadline_exceeded(format!(
                "upstream {} did not answer within {} ms",
                self.name,
                timeout.as_millis()
            ))
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // The channel enforces the `grpc-timeout` it sends too, and reports its own expiry as
            // CANCELLED "Timeout expired"; to the client that is the route's deadline passing.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled
                    && status.message() == "Timeout expired"
                    && started.elapsed() >= timeout =>
            {
                Err(deadline_exceeded())
            }
            Ok(Err(status)) => Err(connect_failure_named(status, &self.name)),
            Err(_) => Err(deadline_exceeded()),
        }
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

// === DynamicCodec ===

/// Encodes dynamic requests and decodes responses of a known type.
struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder {
            output: self.output.clone(),
        }
    }
}

struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode request: {e}")))
    }
}

struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.output.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode upstream response: {e}")))
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
