//! A small HTTP client for the gateway tests, on hyper's connection API: every [`Call`] opens
//! its own HTTP/1.1 connection unless sent on a kept-alive [`Connection`] (HTTP/1.1 or h2c
//! prior knowledge), and answers are read whole into a [`Reply`] with assertions for the
//! contract's JSON and error shape.

use std::{fmt, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use weft_testkit::TestMesh;

/// Time an exchange may take before the test fails instead of hanging.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway of a test mesh, as an HTTP client sees it.
#[derive(Debug, Clone, Copy)]
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Gateway {
    /// The gateway of `mesh` (started with `MeshOptions::gateway`).
    pub fn of(mesh: &TestMesh) -> Self {
        Self {
            addr: mesh.gateway_addr(),
        }
    }

    /// A request with `method` to `path` (with its query string, raw as sent).
    pub fn call(&self, method: Method, path: &str) -> Call {
        Call {
            addr: self.addr,
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Call {
        self.call(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> Call {
        self.call(Method::POST, path)
    }

    /// `PATCH path`.
    pub fn patch(&self, path: &str) -> Call {
        self.call(Method::PATCH, path)
    }

    /// `PUT path`.
    pub fn put(&self, path: &str) -> Call {
        self.call(Method::PUT, path)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Call {
        self.call(Method::DELETE, path)
    }

    /// A kept-alive HTTP/1.1 connection.
    pub async fn http1(&self) -> Connection {
        Connection::http1(connect(self.addr).await).await
    }

    /// An HTTP/2 connection without TLS, by prior knowledge (h2c).
    pub async fn h2c(&self) -> Connection {
        Connection::h2(connect(self.addr).await).await
    }
}

async fn connect(addr: SocketAddr) -> tokio::net::TcpStream {
    try_connect(addr).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn try_connect(addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    let stream = tokio::time::timeout(HTTP_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to the gateway at {addr} timed out"))?
        .map_err(|e| format!("cannot connect to the gateway at {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One request, built up and then sent.
#[derive(Debug, Clone)]
pub struct Call {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Call {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.push((name, value));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// A JSON body, with `Content-Type: application/json`.
    pub fn json(self, body: &Value) -> Self {
        self.raw_json(body.to_string())
    }

    /// A body sent as is, with `Content-Type: application/json`.
    pub fn raw_json(self, body: impl Into<Bytes>) -> Self {
        self.body("application/json", body)
    }

    /// A body with the given content type (none when empty).
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        if content_type.is_empty() {
            return self;
        }
        self.header("content-type", content_type)
    }

    /// The request as hyper sends it (`Host` added).
    pub fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header(header::HOST, self.addr.to_string())
            .body(Full::new(self.body.clone()))
            .unwrap_or_else(|e| panic!("cannot build {} {}: {e}", self.method, self.path));
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        request
    }

    /// Sends the request on a fresh HTTP/1.1 connection; panics when the exchange fails.
    pub async fn send(self) -> Reply {
        let mut connection = Connection::http1(connect(self.addr).await).await;
        connection.send(&self).await
    }

    /// Sends the request on a fresh connection; the error when the exchange fails (for
    /// requests the server may cut short, or a gateway that may be down).
    pub async fn try_send(self) -> Result<Reply, String> {
        let mut connection = Connection::http1(try_connect(self.addr).await?).await;
        connection.try_send(&self).await
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, shorten(&self.path, 120))
    }
}

/// A connection that carries several requests.
pub enum Connection {
    /// HTTP/1.1 with keep-alive.
    Http1(http1::SendRequest<Full<Bytes>>),
    /// HTTP/2, with the URI scheme its requests carry (`http` for h2c, `https` over TLS).
    Http2(http2::SendRequest<Full<Bytes>>, &'static str),
}

impl Connection {
    /// An HTTP/1.1 connection over `io`.
    pub async fn http1<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Connection::Http1(sender)
    }

    /// An HTTP/2 connection over plain TCP `io`, by prior knowledge (h2c).
    pub async fn h2<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::http2(io, "http").await
    }

    /// An HTTP/2 connection over a TLS stream that negotiated ALPN `h2`.
    pub async fn h2_over_tls<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::http2(io, "https").await
    }

    async fn http2<T>(io: T, scheme: &'static str) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Connection::Http2(sender, scheme)
    }

    /// Sends `call` on this connection; panics when the exchange fails.
    pub async fn send(&mut self, call: &Call) -> Reply {
        self.try_send(call)
            .await
            .unwrap_or_else(|e| panic!("{call}: {e}"))
    }

    /// Sends `call` on this connection.
    pub async fn try_send(&mut self, call: &Call) -> Result<Reply, String> {
        let mut request = call.request();
        let exchange = async {
            let response = match self {
                Connection::Http1(sender) => {
                    sender.ready().await.map_err(|e| e.to_string())?;
                    sender.send_request(request).await
                }
                Connection::Http2(sender, scheme) => {
                    // HTTP/2 carries the scheme and authority in the URI, not in `Host`.
                    request.headers_mut().remove(header::HOST);
                    *request.uri_mut() = format!("{scheme}://{}{}", call.addr, call.path)
                        .parse()
                        .map_err(|e| format!("bad URI: {e}"))?;
                    sender.ready().await.map_err(|e| e.to_string())?;
                    sender.send_request(request).await
                }
            }
            .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("cannot read the body: {e}"))?
                .to_bytes();
            Ok(Reply {
                call: call.to_string(),
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {HTTP_TIMEOUT:?}")))
    }
}

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `METHOD path` of the request, for messages.
    pub call: String,
    /// The status.
    pub status: StatusCode,
    /// The HTTP version it came with.
    pub version: Version,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text, if present (the first, when repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; panics with the body when it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: {} body is not JSON ({e}): {}",
                self.call,
                self.status,
                shorten(&self.text(), 500)
            )
        })
    }

    /// `X-Request-Id`; panics when it is missing or empty.
    #[track_caller]
    pub fn request_id(&self) -> &str {
        match self.header("x-request-id") {
            Some(id) if !id.is_empty() => id,
            _ => panic!(
                "{}: {} has no X-Request-Id: {:?}",
                self.call, self.status, self.headers
            ),
        }
    }

    /// Panics unless the status is `status`, showing the body.
    #[track_caller]
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}: expected {status}, got {}: {}",
            self.call,
            self.status,
            shorten(&self.text(), 800)
        );
        self
    }

    /// The JSON body of a 200 answer, after checking `Content-Type: application/json` and
    /// `X-Request-Id`.
    #[track_caller]
    pub fn ok(&self) -> Value {
        self.expect_status(200);
        self.expect_json_type();
        self.request_id();
        self.json()
    }

    /// Panics unless `Content-Type` is `application/json` (parameters allowed).
    #[track_caller]
    pub fn expect_json_type(&self) -> &Self {
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json")),
            "{}: {} has Content-Type {content_type:?}, not application/json",
            self.call,
            self.status
        );
        self
    }

    /// Checks an error answer: HTTP `status`, the contract's JSON shape
    /// `{"code","message","details","requestId"}` with gRPC `code`, `details` a list,
    /// `requestId` equal to the `X-Request-Id` header, and a message containing each of
    /// `needles` (case-insensitively). Returns the body.
    #[track_caller]
    pub fn error(&self, status: u16, code: i64, needles: &[&str]) -> Value {
        self.expect_status(status);
        self.expect_json_type();
        let id = self.request_id().to_owned();
        let body = self.json();
        let object = body
            .as_object()
            .unwrap_or_else(|| panic!("{}: the error body is not an object: {body}", self.call));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["code", "details", "message", "requestId"],
            "{}: the error body has other keys than the contract's: {body}",
            self.call
        );
        assert_eq!(
            body["code"].as_i64(),
            Some(code),
            "{}: the error body's gRPC code: {body}",
            self.call
        );
        assert!(
            body["details"].is_array(),
            "{}: details must be a list: {body}",
            self.call
        );
        assert_eq!(
            body["requestId"].as_str(),
            Some(id.as_str()),
            "{}: requestId must be the X-Request-Id header",
            self.call
        );
        let message = body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: message must be a string: {body}", self.call));
        assert!(
            !message.is_empty(),
            "{}: the message is empty: {body}",
            self.call
        );
        for needle in needles {
            assert!(
                message.to_lowercase().contains(&needle.to_lowercase()),
                "{}: the {status} message {message:?} does not mention {needle:?}",
                self.call
            );
        }
        body
    }
}

/// gRPC status codes, as the error bodies carry them.
pub mod grpc {
    /// CANCELLED.
    pub const CANCELLED: i64 = 1;
    /// UNKNOWN.
    pub const UNKNOWN: i64 = 2;
    /// INVALID_ARGUMENT.
    pub const INVALID_ARGUMENT: i64 = 3;
    /// DEADLINE_EXCEEDED.
    pub const DEADLINE_EXCEEDED: i64 = 4;
    /// NOT_FOUND.
    pub const NOT_FOUND: i64 = 5;
    /// ALREADY_EXISTS.
    pub const ALREADY_EXISTS: i64 = 6;
    /// PERMISSION_DENIED.
    pub const PERMISSION_DENIED: i64 = 7;
    /// RESOURCE_EXHAUSTED.
    pub const RESOURCE_EXHAUSTED: i64 = 8;
    /// FAILED_PRECONDITION.
    pub const FAILED_PRECONDITION: i64 = 9;
    /// UNIMPLEMENTED.
    pub const UNIMPLEMENTED: i64 = 12;
    /// UNAVAILABLE.
    pub const UNAVAILABLE: i64 = 14;
    /// UNAUTHENTICATED.
    pub const UNAUTHENTICATED: i64 = 16;
}

/// At most `max` characters of `text`, marked when cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// Percent-encodes a value for a query string or path segment (unreserved characters kept).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Contract violations found by checks that let the test go on, reported together at the end
/// (so that one known gateway bug does not hide the next).
#[derive(Debug, Default)]
pub struct Findings(Vec<String>);

impl Findings {
    /// Runs `check`; a panic in it is recorded under `what` instead of ending the test.
    pub fn check<R>(&mut self, what: &str, check: impl FnOnce() -> R) -> Option<R> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            Ok(value) => Some(value),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                self.0.push(format!("{what}: {message}"));
                None
            }
        }
    }

    /// Records a violation found without a panic.
    pub fn push(&mut self, finding: String) {
        self.0.push(finding);
    }

    /// Panics with every recorded violation, if any.
    #[track_caller]
    pub fn assert_none(self) {
        if !self.0.is_empty() {
            panic!(
                "{} contract violation(s):\n- {}",
                self.0.len(),
                self.0.join("\n- ")
            );
        }
    }
}

/// An answer to raw bytes sent on a socket: what a client that is not hyper would read.
#[derive(Debug, Clone)]
pub struct RawReply {
    /// The status code, 0 when no answer could be read.
    pub status: u16,
    /// The head (status line and headers) as text, lower-cased header names kept as sent.
    pub head: String,
    /// The body bytes as text (lossy), as sent (no de-chunking).
    pub body: String,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

impl RawReply {
    /// A header's value (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Writes `request` on a fresh connection (write errors ignored: the server may answer and
/// close before reading everything), then reads until the server closes the connection.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawReply {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = connect(addr).await;
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let _ = writer.write_all(request).await;
        let _ = writer.flush().await;
    };
    let read = async {
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let error = loop {
            match reader.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.to_string()),
            }
        };
        (answer, error)
    };
    let exchange = async {
        let ((), (answer, error)) = tokio::join!(write, read);
        (answer, error)
    };
    let (answer, error) = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            (
                Vec::new(),
                Some(format!("no answer within {HTTP_TIMEOUT:?}")),
            )
        });
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    RawReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
        error,
    }
}

/// 401 UNAUTHENTICATED with a `WWW-Authenticate: Bearer` challenge.
#[track_caller]
pub fn unauthenticated(reply: &Reply) {
    reply.error(401, grpc::UNAUTHENTICATED, &[]);
    let challenge = reply.header("www-authenticate").unwrap_or_else(|| {
        panic!("{}: a 401 without WWW-Authenticate", reply.call);
    });
    assert!(
        challenge.starts_with("Bearer"),
        "{}: WWW-Authenticate is {challenge:?}",
        reply.call
    );
}
