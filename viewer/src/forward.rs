//! Forwarding of what the receiver gets to the OTLP endpoint configured for the mesh (Jaeger,
//! a collector), so that running the viewer takes nothing away from it.
//!
//! Requests wait in a bounded queue drained by one task; when the endpoint is slow or down the
//! queue fills and further requests are dropped and counted, never slowing the receiver.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use prost::Message as _;
use tokio::sync::mpsc;

use crate::error::ViewerError;

/// Export requests that may wait for the upstream.
const QUEUE: usize = 256;
/// Time one forwarded export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans are forwarded, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// OTLP/gRPC at this URL (`http://jaeger:4317`).
    Grpc(String),
    /// OTLP/HTTP with protobuf bodies, POSTed to this full URL (`http://jaeger:4318/v1/traces`).
    HttpProtobuf(String),
}

impl Upstream {
    /// The URL spans go to.
    pub fn url(&self) -> &str {
        match self {
            Upstream::Grpc(url) | Upstream::HttpProtobuf(url) => url,
        }
    }
}

/// Counts of what the forwarder did.
#[derive(Debug, Default)]
pub struct ForwardCounts {
    /// Export requests delivered.
    pub sent: AtomicU64,
    /// Export requests lost: queue full, endpoint down or refusing.
    pub lost: AtomicU64,
}

/// A handle on the forwarding task; dropping it stops the task once the queue is drained.
#[derive(Debug, Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<ExportTraceServiceRequest>,
    counts: Arc<ForwardCounts>,
}

// === impl Forwarder ===

impl Forwarder {
    /// Starts forwarding to `upstream` (on the current runtime). Plain `http://` only: the
    /// viewer has no TLS client.
    pub fn start(upstream: Upstream) -> Result<Self, ViewerError> {
        let url = upstream.url().to_owned();
        let uri: http::Uri = url
            .parse()
            .map_err(|_| ViewerError::Upstream(url.clone(), "not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ViewerError::Upstream(
                url,
                "only plain http:// endpoints can be forwarded to",
            ));
        }
        let (queue, mut requests) = mpsc::channel::<ExportTraceServiceRequest>(QUEUE);
        let counts = Arc::new(ForwardCounts::default());
        let task_counts = counts.clone();
        let mut grpc = match &upstream {
            Upstream::Grpc(url) => Some(TraceServiceClient::new(
                tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|_| ViewerError::Upstream(url.clone(), "not a URL"))?
                    .timeout(EXPORT_TIMEOUT)
                    .connect_lazy(),
            )),
            Upstream::HttpProtobuf(_) => None,
        };
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let delivered = match &mut grpc {
                    Some(client) => client.export(request).await.is_ok(),
                    None => post(&uri, request.encode_to_vec()).await,
                };
                let counter = if delivered {
                    &task_counts.sent
                } else {
                    &task_counts.lost
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Self { queue, counts })
    }

    /// Queues `request` for the upstream; drops and counts it when the queue is full.
    pub fn send(&self, request: ExportTraceServiceRequest) {
        if self.queue.try_send(request).is_err() {
            self.counts.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What was forwarded and lost so far.
    pub fn counts(&self) -> &ForwardCounts {
        &self.counts
    }
}

/// POSTs one protobuf body to `uri` over a fresh HTTP/1.1 connection; whether it got a 2xx.
async fn post(uri: &http::Uri, body: Vec<u8>) -> bool {
    let attempt = async {
        let host = uri.host()?;
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        let authority = uri.authority()?.as_str().to_owned();
        let request = http::Request::post(uri.path())
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status().is_success())
    };
    matches!(
        tokio::time::timeout(EXPORT_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}
