//! `weft bench`'s gRPC load: unary calls over HTTP/2 with the `h2` crate, `--streams` calls at
//! once on each of `--connections` connections; the request message is encoded once (or per
//! call, when its JSON holds `{uuid}`) from the descriptor set with prost-reflect, and each
//! call's status is read from its trailers (or from a trailers-only answer's headers).

use std::{sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderValue, Request};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tokio::{net::TcpStream, sync::Mutex};
use weft_mesh::mtls::ClientTls;

use crate::bench_stats::Outcome;

/// What every gRPC call of a run looks like.
#[derive(Debug, Clone)]
pub struct GrpcPlan {
    /// `host:port`.
    pub authority: String,
    /// `/package.Service/Method`.
    pub path: String,
    /// The framed request, when it is the same for every call.
    fixed: Option<Bytes>,
    /// The request's JSON and type, when each call needs a fresh `{uuid}`.
    template: Option<(String, MessageDescriptor)>,
    /// `authorization` and `-H` metadata.
    pub metadata: Vec<(http::HeaderName, HeaderValue)>,
    /// The mesh's mTLS (`--mtls`); `None`: plain-text HTTP/2.
    pub tls: Option<ClientTls>,
}

/// Finds `package.Service/Method` in Weft's descriptor set (plus `extra`, a
/// `FileDescriptorSet`), and checks that `json` fits its request message.
pub fn plan(
    authority: &str,
    method: &str,
    json: &str,
    extra: Option<&[u8]>,
    metadata: Vec<(http::HeaderName, HeaderValue)>,
) -> Result<GrpcPlan, String> {
    let mut pool = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("the embedded descriptor set does not decode: {e}"))?;
    if let Some(bytes) = extra {
        pool.decode_file_descriptor_set(bytes)
            .map_err(|e| format!("--descriptor-set: {e}"))?;
    }
    let (service, name) = method
        .rsplit_once('/')
        .ok_or_else(|| format!("METHOD {method:?}: use package.Service/Method"))?;
    let descriptor = pool
        .get_service_by_name(service)
        .ok_or_else(|| {
            format!("unknown gRPC service {service:?} (not in Weft's protos; add --descriptor-set FILE for others)")
        })?
        .methods()
        .find(|m| m.name() == name)
        .ok_or_else(|| format!("service {service} has no method {name:?}"))?;
    if descriptor.is_client_streaming() || descriptor.is_server_streaming() {
        return Err(format!(
            "{method} is a streaming method: weft bench sends unary calls only"
        ));
    }
    let input = descriptor.input();
    let first = encode(json, &input)?;
    let (fixed, template) = if json.contains("{uuid}") {
        (None, Some((json.to_owned(), input)))
    } else {
        (Some(first), None)
    };
    Ok(GrpcPlan {
        authority: authority.to_owned(),
        path: format!("/{service}/{name}"),
        fixed,
        template,
        metadata,
        tls: None,
    })
}

/// `json` as a framed message of type `input` (`{uuid}` replaced by fresh UUIDs).
fn encode(json: &str, input: &MessageDescriptor) -> Result<Bytes, String> {
    let mut text = json.to_owned();
    while text.contains("{uuid}") {
        text = text.replacen("{uuid}", &uuid::Uuid::new_v4().to_string(), 1);
    }
    let mut de = serde_json::Deserializer::from_str(&text);
    let message = DynamicMessage::deserialize(input.clone(), &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| format!("the request JSON does not fit {}: {e}", input.full_name()))?;
    Ok(frame(&message.encode_to_vec()))
}

/// A gRPC length-prefixed message (not compressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

// === impl GrpcPlan ===

impl GrpcPlan {
    fn body(&self) -> Bytes {
        match (&self.fixed, &self.template) {
            (Some(fixed), _) => fixed.clone(),
            (None, Some((json, input))) => encode(json, input).unwrap_or_default(),
            (None, None) => frame(&[]),
        }
    }
}

/// One HTTP/2 connection, shared by its streams' workers; reopened after it breaks.
pub struct GrpcConnection {
    sender: Mutex<Option<SendRequest<Bytes>>>,
}

// === impl GrpcConnection ===

impl GrpcConnection {
    /// A connection opened on first use.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            sender: Mutex::new(None),
        })
    }

    async fn sender(&self, plan: &GrpcPlan) -> Result<SendRequest<Bytes>, String> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref() {
            return Ok(sender.clone());
        }
        let sender = connect(&plan.authority, plan.tls.as_ref()).await?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn broken(&self) {
        *self.sender.lock().await = None;
    }
}

/// Opens one HTTP/2 connection: over the mesh's mTLS with `tls`, else in plain text (h2c).
pub async fn connect(
    authority: &str,
    tls: Option<&ClientTls>,
) -> Result<SendRequest<Bytes>, String> {
    let stream = TcpStream::connect(authority).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            "connect: connection refused".to_owned()
        } else {
            format!("connect: {e}")
        }
    })?;
    let _ = stream.set_nodelay(true);
    match tls {
        Some(tls) => {
            let stream = tls
                .connect(stream)
                .await
                .map_err(|e| format!("mTLS: {e}"))?;
            handshake(stream).await
        }
        None => handshake(stream).await,
    }
}

/// The HTTP/2 handshake on `io`; the connection is driven by a task of its own.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Bytes>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::handshake(io).await.map_err(|e| {
        // A server that wants mTLS closes a plain-text connection at once.
        format!("HTTP/2 handshake: {e} (if the server speaks the mesh's mTLS, add --mtls SERVICE)")
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One stream's worker.
pub struct GrpcWorker {
    plan: Arc<GrpcPlan>,
    connection: Arc<GrpcConnection>,
}

// === impl GrpcWorker ===

impl GrpcWorker {
    pub fn new(plan: Arc<GrpcPlan>, connection: Arc<GrpcConnection>) -> Self {
        Self { plan, connection }
    }

    /// One unary call.
    pub async fn call(&mut self) -> Outcome {
        let e = match self.try_call().await {
            Ok(outcome) => return outcome,
            Err(CallError::Stream(e)) => e,
            Err(CallError::Connection(e)) => {
                self.connection.broken().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                e
            }
        };
        // A TLS server answers the plain-text preface with an alert record, which reads as an
        // oversized frame.
        if self.plan.tls.is_none() && e.ends_with("FRAME_SIZE_ERROR") {
            return Outcome::Transport(format!(
                "{e} (a TLS server? for the mesh's mTLS add --mtls SERVICE)"
            ));
        }
        Outcome::Transport(e)
    }

    async fn try_call(&mut self) -> Result<Outcome, CallError> {
        let sender = self
            .connection
            .sender(&self.plan)
            .await
            .map_err(CallError::Connection)?;
        let mut sender = sender
            .ready()
            .await
            .map_err(|e| CallError::Connection(h2_error(&e)))?;
        let uri = format!("http://{}{}", self.plan.authority, self.plan.path);
        let mut builder = Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in &self.plan.metadata {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(())
            .map_err(|e| CallError::Stream(format!("bad request: {e}")))?;
        let (response, mut stream) = sender
            .send_request(request, false)
            .map_err(|e| CallError::Connection(h2_error(&e)))?;
        stream
            .send_data(self.plan.body(), true)
            .map_err(|e| CallError::Stream(h2_error(&e)))?;
        let response = response
            .await
            .map_err(|e| CallError::Stream(h2_error(&e)))?;
        let (parts, mut body) = response.into_parts();
        if !parts.status.is_success() {
            return Ok(Outcome::Http(parts.status.as_u16()));
        }
        // A trailers-only answer carries the status in its headers.
        if let Some(code) = grpc_status(&parts.headers) {
            return Ok(status_outcome(code));
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| CallError::Stream(h2_error(&e)))?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|e| CallError::Stream(h2_error(&e)))?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(code) => Ok(status_outcome(code)),
            None => Ok(Outcome::Transport("answer without grpc-status".into())),
        }
    }
}

enum CallError {
    /// The connection is unusable: open a new one.
    Connection(String),
    /// This call failed.
    Stream(String),
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn status_outcome(code: i32) -> Outcome {
    if code == 0 {
        Outcome::Ok
    } else {
        Outcome::Grpc(code)
    }
}

fn h2_error(e: &h2::Error) -> String {
    if let Some(reason) = e.reason() {
        format!("HTTP/2 {reason:?}")
    } else if e.is_io() {
        "connection error".into()
    } else if e.is_go_away() {
        "HTTP/2 GOAWAY".into()
    } else {
        "HTTP/2 error".into()
    }
}

/// One call outside the load, for `--baseline`: the answer's message bytes (unframed).
pub async fn probe(plan: &GrpcPlan) -> Result<Bytes, String> {
    let mut sender = connect(&plan.authority, plan.tls.as_ref())
        .await?
        .ready()
        .await
        .map_err(|e| h2_error(&e))?;
    let mut builder = Request::post(format!("http://{}{}", plan.authority, plan.path))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in &plan.metadata {
        builder = builder.header(name, value);
    }
    let request = builder.body(()).map_err(|e| e.to_string())?;
    let (response, mut stream) = sender
        .send_request(request, false)
        .map_err(|e| h2_error(&e))?;
    stream
        .send_data(plan.body(), true)
        .map_err(|e| h2_error(&e))?;
    let mut body = response.await.map_err(|e| h2_error(&e))?.into_body();
    let mut all = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| h2_error(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    Ok(if all.len() >= 5 {
        all.split_off(5).freeze()
    } else {
        Bytes::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_methods_and_checks_json() {
        let p = plan(
            "h:1",
            "weft.order.v1.OrderService/GetProduct",
            r#"{"id":"x"}"#,
            None,
            vec![],
        )
        .unwrap();
        assert_eq!(p.path, "/weft.order.v1.OrderService/GetProduct");
        // Field 1, length-delimited, "x".
        assert_eq!(&p.body()[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'x']);
        let err = |m: &str, json: &str| plan("h:1", m, json, None, vec![]).unwrap_err();
        assert!(err("weft.order.v1.Nope/GetProduct", "{}").contains("unknown gRPC service"));
        assert!(err("weft.order.v1.OrderService/Nope", "{}").contains("has no method"));
        assert!(err("GetProduct", "{}").contains("package.Service/Method"));
        assert!(
            err("weft.order.v1.OrderService/GetProduct", r#"{"nope":1}"#).contains("does not fit")
        );
        assert!(err("weft.order.v1.OrderService/GetProduct", "{").contains("does not fit"));
    }
}
