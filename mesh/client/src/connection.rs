//! One lazily connecting HTTP/2 connection to one address: the transport under
//! [`crate::balance`].
//!
//! # Why not `tonic::transport::Channel`
//!
//! A tonic channel hands every call through three tasks before a byte is written: a tower
//! `Buffer` worker, hyper's client dispatcher, then the h2 connection task (and hyper spawns
//! one more task per call to stream the request body). Each hop is a channel send and a task
//! wake-up, and under load the gateway spent more time in that client path than anywhere
//! else. What those tasks buy is done elsewhere in the mesh: readiness and balancing in
//! [`crate::balance`], deadlines in [`crate::deadline`], and reconnecting here. A
//! [`Connection`] drives the `h2` crate from the calling task: the call opens its stream,
//! puts its request into h2's buffers and reads its answer from them. Only the connection
//! task, which owns the socket, remains.
//!
//! # Behaviour
//!
//! - Lazy: nothing connects before the first call. The connect (TCP with `TCP_NODELAY`, then
//!   HTTP/2 with prior knowledge) is bounded by the connect timeout, and the calls made
//!   meanwhile wait for that one attempt: one connect however many calls.
//! - A failed connect fails the calls that waited for it, with a [`ConnectionError`] naming
//!   the address and the cause; the next call tries again. Nothing is retried here: the retry
//!   layer above decides.
//! - A connection found closed before a call is sent on it (the server closed it, or said
//!   GOAWAY) is replaced once, and the call goes on the new one: nothing was sent, so this is
//!   no retry. A connection that breaks under a call fails that call; the next one connects
//!   again.
//! - Streams beyond the server's `MAX_CONCURRENT_STREAMS` wait in h2's queue.
//! - A peer that vanishes behind a silent network (no FIN, no RST) is found out by
//!   [`Keepalive`]: while calls are open on the connection it sends an HTTP/2 PING every
//!   `ping_interval`, and closes the connection when one goes unanswered for `ping_timeout`, so
//!   its calls fail UNAVAILABLE then rather than at their deadlines. No pings while the
//!   connection is idle (servers such as grpc-go's count those as abuse); TCP keepalive probes
//!   find an idle connection's dead peer instead.
//! - A request body is sent as the server's flow-control windows allow; the answer's body
//!   gives window back as it is read. Dropping the response future or the answer's body
//!   resets the stream (`RST_STREAM` `CANCEL`), so the server stops working on the call.
//! - mTLS when the connection has a [`ClientTls`] (mesh-config's `[mtls]` on): the TLS 1.3
//!   handshake follows the TCP connect, within the same connect timeout; the server's
//!   certificate must chain to the mesh CA and carry the expected identity, and the process's
//!   own certificate (as last reloaded) is presented. Without one, plain HTTP/2.
//!
//! A [`ConnectionError`]'s source is a [`tonic::Status`], which tonic finds in an error's
//! chain: a caller sees UNAVAILABLE for a failed or closed connection (as tonic reports its
//! own connect errors), and the code of an HTTP/2 reset as the gRPC spec maps it.
//!
//! ```ignore
//! let connection = Connection::http("127.0.0.1:50051".parse()?, Duration::from_secs(1));
//! let mut health = tonic_health::pb::health_client::HealthClient::new(connection);
//! ```

use std::{
    error::Error as StdError,
    fmt,
    future::{Future, poll_fn},
    io, mem,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use h2::{
    Ping, PingPong, Reason, RecvStream, SendStream,
    client::{self, SendRequest},
};
use http::{
    HeaderName, HeaderValue, Request, Response, Uri,
    header::USER_AGENT,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body::{Body as HttpBody, Frame};
use socket2::{SockRef, TcpKeepalive};
use tokio::{net::TcpStream, sync::OnceCell};
use tonic::{Code, Status, body::Body};
use tower_service::Service;

use weft_core::grpc::GRPC_TIMEOUT_HEADER;
use weft_observe::propagate::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
pub use weft_tls::ClientTls;

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

// HTTP/2 settings: hyper's client defaults, which the tonic channel used.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// Sent on calls that carry no `user-agent` of their own.
const USER_AGENT_VALUE: &str = concat!("weft-mesh/", env!("CARGO_PKG_VERSION"));

// === ConnectionError ===

/// A call a [`Connection`] could not carry; the message names the address and the cause
/// ("cannot connect to 127.0.0.1:50052: connection refused").
#[derive(Debug, thiserror::Error)]
#[error("{}", .status.message())]
pub struct ConnectionError {
    kind: ConnectionErrorKind,
    /// The failure as callers see it (its message is this error's): tonic looks for a
    /// `Status` among an error's sources.
    #[source]
    status: Status,
}

/// What went wrong with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionErrorKind {
    /// No connection could be opened (refused, unreachable, timed out, no HTTP/2); the call
    /// was not sent.
    Connect,
    /// The connection closed or broke under the call (end of stream, GOAWAY, I/O error).
    Closed,
    /// The call's stream was reset (by the server, or locally).
    Reset,
    /// The request could not be sent: its body failed, or it is not valid HTTP/2.
    Request,
}

impl ConnectionError {
    /// What went wrong.
    pub fn kind(&self) -> ConnectionErrorKind {
        self.kind
    }

    /// The gRPC status a caller sees for this failure.
    pub fn status(&self) -> &Status {
        &self.status
    }

    fn new(kind: ConnectionErrorKind, code: Code, message: String) -> Self {
        Self {
            kind,
            status: Status::new(code, message),
        }
    }

    fn connect(addr: &str, cause: &str) -> Self {
        Self::new(
            ConnectionErrorKind::Connect,
            Code::Unavailable,
            format!("cannot connect to {addr}: {cause}"),
        )
    }

    /// An error of h2 on a connection to `addr`.
    fn h2(addr: &str, err: &h2::Error) -> Self {
        if let Some(io) = err.get_io() {
            let message = match io.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => {
                    format!("connection to {addr} closed")
                }
                _ => format!("connection to {addr} closed: {}", io_cause(io)),
            };
            return Self::new(ConnectionErrorKind::Closed, Code::Unavailable, message);
        }
        let reason = err.reason().unwrap_or(Reason::INTERNAL_ERROR);
        if err.is_go_away() {
            let message = match (err.is_remote(), reason) {
                (true, Reason::NO_ERROR) => {
                    format!("connection to {addr} closed: the server sent GOAWAY")
                }
                (true, _) => {
                    format!("connection to {addr} closed: the server sent GOAWAY ({reason})")
                }
                (false, _) => format!("connection to {addr} closed: {reason}"),
            };
            return Self::new(ConnectionErrorKind::Closed, Code::Unavailable, message);
        }
        if err.reason().is_some() {
            let message = if err.is_remote() {
                format!("call to {addr} reset by the server: {reason}")
            } else {
                format!("call to {addr} reset: {reason}")
            };
            return Self::new(ConnectionErrorKind::Reset, reset_code(reason), message);
        }
        Self::new(
            ConnectionErrorKind::Request,
            Code::Internal,
            format!("cannot send the request to {addr}: {err}"),
        )
    }

    /// The request body failed; the code is the one its error carries.
    fn body(addr: &str, err: BoxError) -> Self {
        let status = Status::from_error(err);
        Self::new(
            ConnectionErrorKind::Request,
            status.code(),
            format!("request to {addr} failed: {}", status.message()),
        )
    }
}

/// The gRPC code of a stream reset (the gRPC over HTTP/2 spec's mapping, as tonic does it).
fn reset_code(reason: Reason) -> Code {
    match reason {
        Reason::REFUSED_STREAM => Code::Unavailable,
        Reason::CANCEL => Code::Cancelled,
        Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

/// An I/O error in a few words: "connection refused", not "Connection refused (os error 111)".
fn io_cause(err: &io::Error) -> String {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | AddrInUse
        | AddrNotAvailable | TimedOut | HostUnreachable | NetworkUnreachable | NetworkDown
        | BrokenPipe | UnexpectedEof | PermissionDenied => err.kind().to_string(),
        _ => err.to_string(),
    }
}

// === Keepalive ===

/// How a connection finds out that its peer is gone when the network says nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// An HTTP/2 PING this often while calls are open on the connection; `None`: no pings.
    /// Default 10 s.
    pub ping_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed (its calls then fail
    /// UNAVAILABLE); default 5 s.
    pub ping_timeout: Duration,
    /// TCP keepalive: idle time before the first probe, and time between probes; `None`: off.
    /// Default 30 s.
    pub tcp: Option<Duration>,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            ping_interval: Some(Duration::from_secs(10)),
            ping_timeout: Duration::from_secs(5),
            tcp: Some(Duration::from_secs(30)),
        }
    }
}

/// Turns on TCP keepalive probes on `tcp`, `time` after it goes quiet and every `time` after.
fn set_tcp_keepalive(tcp: &TcpStream, time: Duration) -> io::Result<()> {
    SockRef::from(tcp).set_tcp_keepalive(&TcpKeepalive::new().with_time(time).with_interval(time))
}

// === Connection ===

/// A lazily connecting HTTP/2 (clear text, prior knowledge) connection to one address, as a
/// tonic transport. Always ready; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    /// `addr` as text, for errors and logs.
    name: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    connect_timeout: Duration,
    keepalive: Keepalive,
    /// mTLS, or none: plain HTTP/2.
    tls: Option<ClientTls>,
    /// What calls use: the connection, the attempt to make it, or nothing tried yet.
    current: Mutex<Arc<Attempt>>,
}

/// One connect attempt, shared by the calls that wait for it; once done, the connection or
/// why there is none.
type Attempt = OnceCell<Result<OpenConnection, Failure>>;

/// An open connection.
#[derive(Clone)]
struct OpenConnection {
    send: SendRequest<Bytes>,
    /// Set when the connection's task ends.
    closed: Arc<AtomicBool>,
    /// Its calls, open and sent.
    calls: Arc<CallCounts>,
}

/// The calls of one connection.
#[derive(Default)]
struct CallCounts {
    /// Calls whose stream is open: the keepalive pings only while there are some.
    open: AtomicUsize,
    /// Calls sent so far.
    sent: AtomicUsize,
    /// Bit `i` set: a call has sent `INDEXED_NAMES[i]` indexable since the last
    /// [`REINDEX_EVERY`]th call.
    indexed: AtomicU8,
}

/// Headers new on every call whose values are no secret (ids, trace context, the time left).
/// The layers mark them sensitive, so that h2 sends them as never-indexed literals: indexed,
/// each new value would push an entry worth keeping out of the HPACK table. But then a name
/// that is not in the table goes out as a literal too, Huffman-coded by this end and decoded,
/// checked and copied by the other on every call. So the first call on a connection that
/// carries them, and every [`REINDEX_EVERY`]th after, sends them indexable: their names (with
/// that call's values) enter both ends' tables, and the calls in between send only their
/// values, the name by its index. Each name goes in with the first call that has it (a health
/// check has none of the ids). Tokens and baggage (which may carry what a client sent)
/// stay never-indexed.
const INDEXED_NAMES: [HeaderName; 3] = [REQUEST_ID_HEADER, TRACEPARENT_HEADER, GRPC_TIMEOUT_HEADER];

/// How often a call sends [`INDEXED_NAMES`] indexable again, in case other headers' entries
/// pushed theirs out of the table (a table of 4 KiB holds about 60 such entries).
const REINDEX_EVERY: usize = 1024;

/// Why a connect attempt failed.
#[derive(Clone)]
struct Failure(Arc<str>);

impl Connection {
    /// A connection to `addr` whose calls carry `scheme` and `authority` (the configured host
    /// name when `addr` was resolved from one); nothing connects before the first call, a
    /// connect may take `connect_timeout`, and `keepalive` watches the peer.
    pub fn new(
        addr: SocketAddr,
        scheme: Scheme,
        authority: Authority,
        connect_timeout: Duration,
        keepalive: Keepalive,
    ) -> Self {
        Self::with_tls(addr, scheme, authority, connect_timeout, keepalive, None)
    }

    /// Like [`Connection::new`], over mTLS when `tls` is set.
    pub fn with_tls(
        addr: SocketAddr,
        scheme: Scheme,
        authority: Authority,
        connect_timeout: Duration,
        keepalive: Keepalive,
        tls: Option<ClientTls>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                name: addr.to_string().into(),
                scheme,
                authority,
                connect_timeout,
                keepalive,
                tls,
                current: Mutex::new(Arc::new(Attempt::new())),
            }),
        }
    }

    /// A connection to `addr` whose calls are `http://addr/...`, with the default keepalive.
    pub fn http(addr: SocketAddr, connect_timeout: Duration) -> Self {
        // A socket address is always a valid authority.
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|_| Authority::from_static("localhost"));
        Self::new(
            addr,
            Scheme::HTTP,
            authority,
            connect_timeout,
            Keepalive::default(),
        )
    }

    /// The address it connects to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.inner.addr)
            .field("authority", &self.inner.authority)
            .finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for Connection
where
    B: HttpBody + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = ConnectionError;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        // A call connects if it must; h2 queues streams beyond the server's limit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture<B> {
        ResponseFuture {
            inner: self.inner.clone(),
            replaced: false,
            state: State::Start(request),
        }
    }
}

// === impl Inner ===

impl Inner {
    /// The attempt a call uses: the open connection, or the attempt under way, or a new one in
    /// place of a closed connection or a failed attempt.
    fn attempt(&self) -> Arc<Attempt> {
        let mut current = lock(&self.current);
        let stale = match current.get() {
            Some(Ok(live)) => live.closed.load(Ordering::Acquire),
            Some(Err(_)) => true,
            None => false,
        };
        if stale {
            *current = Arc::new(Attempt::new());
        }
        current.clone()
    }

    /// Replaces `attempt` (failed, or its connection unusable) unless a call already did.
    fn discard(&self, attempt: &Arc<Attempt>) {
        let mut current = lock(&self.current);
        if Arc::ptr_eq(&current, attempt) {
            *current = Arc::new(Attempt::new());
        }
    }

    /// Opens the connection and spawns its task.
    async fn open(&self) -> Result<OpenConnection, Failure> {
        let connect = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(|e| io_cause(&e))?;
            // Calls are small and latency matters: no Nagle delay.
            tcp.set_nodelay(true)
                .map_err(|e| format!("cannot set TCP_NODELAY: {}", io_cause(&e)))?;
            if let Some(time) = self.keepalive.tcp {
                set_tcp_keepalive(&tcp, time)
                    .map_err(|e| format!("cannot set TCP keepalive: {}", io_cause(&e)))?;
            }
            let io = match &self.tls {
                None => Io::Plain(tcp),
                Some(tls) => Io::Tls(Box::new(tls.connect(tcp).await.map_err(|e| e.to_string())?)),
            };
            builder()
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|e| format!("HTTP/2 handshake failed: {e}"))
        };
        let (send, mut connection) = match tokio::time::timeout(self.connect_timeout, connect).await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(cause)) => {
                tracing::debug!(addr = %self.name, cause, "cannot connect");
                return Err(Failure(cause.into()));
            }
            Err(_) => {
                let cause = format!("timed out after {} ms", self.connect_timeout.as_millis());
                tracing::debug!(addr = %self.name, cause, "cannot connect");
                return Err(Failure(cause.into()));
            }
        };
        tracing::debug!(addr = %self.name, "connected");
        let closed = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(CallCounts::default());
        let pinger = match (self.keepalive.ping_interval, connection.ping_pong()) {
            (Some(interval), Some(ping_pong)) => Some(Pinger {
                ping_pong,
                interval,
                timeout: self.keepalive.ping_timeout,
                calls: calls.clone(),
            }),
            _ => None,
        };
        tokio::spawn(drive(connection, pinger, closed.clone(), self.name.clone()));
        Ok(OpenConnection {
            send,
            closed,
            calls,
        })
    }
}

fn builder() -> client::Builder {
    let mut builder = client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .enable_push(false);
    builder
}

/// The connection's task: reads and writes the socket until the connection ends, or until
/// the pinger finds the peer gone; then the connection is dropped, which fails the calls on it.
async fn drive(
    mut connection: client::Connection<Io, Bytes>,
    pinger: Option<Pinger>,
    closed: Arc<AtomicBool>,
    name: Arc<str>,
) {
    let result = match pinger {
        None => connection.await,
        Some(pinger) => {
            let timeout = pinger.timeout;
            tokio::select! {
                result = &mut connection => result,
                () = pinger.watch() => {
                    // Marked closed before the drop fails the calls, so that none of them is
                    // sent on it again.
                    closed.store(true, Ordering::Release);
                    tracing::warn!(
                        addr = %name,
                        "no answer to an HTTP/2 PING within {} ms: closing the connection",
                        timeout.as_millis(),
                    );
                    drop(connection);
                    return;
                }
            }
        }
    };
    closed.store(true, Ordering::Release);
    match result {
        Ok(()) => tracing::debug!(addr = %name, "connection closed"),
        Err(err) => tracing::debug!(addr = %name, error = %err, "connection closed"),
    }
}

/// The socket under a connection: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<weft_tls::ClientStream>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }
}

/// Sends the keepalive PINGs of one connection.
struct Pinger {
    ping_pong: PingPong,
    interval: Duration,
    timeout: Duration,
    calls: Arc<CallCounts>,
}

impl Pinger {
    /// PINGs every `interval` while calls are open; returns when a PING goes unanswered for
    /// `timeout`. Never returns while the connection answers (or is closing on its own).
    async fn watch(mut self) {
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.calls.open.load(Ordering::Acquire) == 0 {
                continue;
            }
            match tokio::time::timeout(self.timeout, self.ping_pong.ping(Ping::opaque())).await {
                Ok(Ok(_pong)) => {}
                // The connection is ending anyway: its own result says how.
                Ok(Err(_)) => std::future::pending::<()>().await,
                Err(_) => return,
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === ResponseFuture ===

/// The answer to one call on a [`Connection`]. Dropping it before the answer resets the
/// call's stream.
pub struct ResponseFuture<B> {
    inner: Arc<Inner>,
    /// Whether a closed connection was already replaced for this call (at most once).
    replaced: bool,
    state: State<B>,
}

enum State<B> {
    /// To send on the current connection, once there is one.
    Start(Request<B>),
    /// Waiting for the connect attempt.
    Connecting {
        attempt: Arc<Attempt>,
        connect: BoxFuture<Result<OpenConnection, Failure>>,
        request: Request<B>,
    },
    /// On a connection (`fresh`: opened for this call), until it may open a stream.
    Ready {
        attempt: Arc<Attempt>,
        send: SendRequest<Bytes>,
        calls: Arc<CallCounts>,
        fresh: bool,
        request: Request<B>,
    },
    /// Sent: the rest of the body goes out while the answer's headers are awaited.
    Sent {
        response: client::ResponseFuture,
        body: Option<SendBody<B>>,
        open: OpenCall,
    },
    Done,
}

impl<B> Future for ResponseFuture<B>
where
    B: HttpBody + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match mem::replace(&mut this.state, State::Done) {
                State::Start(request) => {
                    let attempt = this.inner.attempt();
                    this.state = match attempt.get() {
                        Some(Ok(live)) => State::Ready {
                            send: live.send.clone(),
                            calls: live.calls.clone(),
                            fresh: false,
                            attempt,
                            request,
                        },
                        _ => {
                            let connect: BoxFuture<_> = Box::pin({
                                let inner = this.inner.clone();
                                let attempt = attempt.clone();
                                async move { attempt.get_or_init(|| inner.open()).await.clone() }
                            });
                            State::Connecting {
                                attempt,
                                connect,
                                request,
                            }
                        }
                    };
                }
                State::Connecting {
                    attempt,
                    mut connect,
                    request,
                } => match connect.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Connecting {
                            attempt,
                            connect,
                            request,
                        };
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(live)) => {
                        this.state = State::Ready {
                            send: live.send,
                            calls: live.calls,
                            fresh: true,
                            attempt,
                            request,
                        };
                    }
                    Poll::Ready(Err(Failure(cause))) => {
                        this.inner.discard(&attempt);
                        let err = ConnectionError::connect(&this.inner.name, &cause);
                        return Poll::Ready(Err(err));
                    }
                },
                State::Ready {
                    attempt,
                    mut send,
                    calls,
                    fresh,
                    request,
                } => match send.poll_ready(cx) {
                    Poll::Pending => {
                        this.state = State::Ready {
                            attempt,
                            send,
                            calls,
                            fresh,
                            request,
                        };
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(err)) => {
                        // The connection takes no new streams (closed, GOAWAY, stream ids
                        // used up). Nothing was sent: a connection the call found that way
                        // is replaced, once; one opened for it fails it.
                        this.inner.discard(&attempt);
                        if fresh || this.replaced {
                            return Poll::Ready(Err(ConnectionError::h2(&this.inner.name, &err)));
                        }
                        this.replaced = true;
                        this.state = State::Start(request);
                    }
                    Poll::Ready(Ok(())) => {
                        match send_request(&this.inner, &mut send, request, &calls) {
                            Ok(sent) => this.state = sent,
                            Err(err) => return Poll::Ready(Err(err)),
                        }
                    }
                },
                State::Sent {
                    response,
                    body,
                    open,
                } => {
                    return this.poll_sent(cx, response, body, open);
                }
                State::Done => {
                    return Poll::Ready(Err(ConnectionError::new(
                        ConnectionErrorKind::Request,
                        Code::Internal,
                        "connection: response polled after it completed".into(),
                    )));
                }
            }
        }
    }
}

impl<B> ResponseFuture<B>
where
    B: HttpBody + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Sends what flow control allows of the body, and returns the answer once its headers are
    /// in; a body not finished by then is finished by a task of its own.
    fn poll_sent(
        &mut self,
        cx: &mut Context<'_>,
        mut response: client::ResponseFuture,
        mut body: Option<SendBody<B>>,
        open: OpenCall,
    ) -> Poll<Result<Response<Body>, ConnectionError>> {
        if let Some(sending) = body.as_mut() {
            match sending.poll_send(cx) {
                Poll::Ready(Ok(())) => body = None,
                Poll::Ready(Err(SendError::Body(err))) => {
                    return Poll::Ready(Err(ConnectionError::body(&self.inner.name, err)));
                }
                // The stream failed: its answer says how.
                Poll::Ready(Err(SendError::Stream)) => body = None,
                Poll::Pending => {}
            }
        }
        match Pin::new(&mut response).poll(cx) {
            Poll::Pending => {
                self.state = State::Sent {
                    response,
                    body,
                    open,
                };
                Poll::Pending
            }
            Poll::Ready(Ok(answer)) => {
                if let Some(sending) = body {
                    // A streaming call: the answer began before the request ended.
                    tokio::spawn(sending.finish());
                }
                let name = self.inner.name.clone();
                Poll::Ready(Ok(
                    answer.map(|recv| Body::new(RecvBody::new(recv, name, open)))
                ))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(ConnectionError::h2(&self.inner.name, &err))),
        }
    }
}

/// Opens the call's stream and sends its headers (with END_STREAM when there is no body),
/// counting it among the connection's open calls.
fn send_request<B: HttpBody>(
    inner: &Inner,
    send: &mut SendRequest<Bytes>,
    request: Request<B>,
    calls: &Arc<CallCounts>,
) -> Result<State<B>, ConnectionError> {
    let (mut parts, body) = request.into_parts();
    // tonic gives the path; h2 needs the scheme and authority too.
    let mut uri = mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(inner.scheme.clone());
    uri.authority = Some(inner.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).map_err(|e| {
        ConnectionError::new(
            ConnectionErrorKind::Request,
            Code::Internal,
            format!("cannot send the request to {}: {e}", inner.name),
        )
    })?;
    if !parts.headers.contains_key(USER_AGENT) {
        parts
            .headers
            .insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    }
    let_names_into_table(&mut parts.headers, calls);
    let end = body.is_end_stream();
    let (response, stream) = send
        .send_request(Request::from_parts(parts, ()), end)
        .map_err(|e| ConnectionError::h2(&inner.name, &e))?;
    let body = (!end).then(|| SendBody {
        body,
        stream,
        data: Bytes::new(),
        next: None,
    });
    Ok(State::Sent {
        response,
        body,
        open: OpenCall::new(calls.clone()),
    })
}

/// Lets the [`INDEXED_NAMES`] of a call into HPACK's table where none of its connection's
/// calls has since the last [`REINDEX_EVERY`]th (see there).
fn let_names_into_table(headers: &mut http::HeaderMap, calls: &CallCounts) {
    if calls
        .sent
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(REINDEX_EVERY)
    {
        calls.indexed.store(0, Ordering::Relaxed);
    }
    let indexed = calls.indexed.load(Ordering::Relaxed);
    for (bit, name) in INDEXED_NAMES.iter().enumerate() {
        let bit = 1 << bit;
        if indexed & bit != 0 {
            continue;
        }
        if let Some(value) = headers.get_mut(name)
            && calls.indexed.fetch_or(bit, Ordering::Relaxed) & bit == 0
        {
            value.set_sensitive(false);
        }
    }
}

/// A call counted among its connection's open calls until it is dropped: with the call's
/// future when no answer came, else with the answer's body.
struct OpenCall(Arc<CallCounts>);

impl OpenCall {
    fn new(calls: Arc<CallCounts>) -> Self {
        calls.open.fetch_add(1, Ordering::AcqRel);
        Self(calls)
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

// === SendBody ===

/// A request body on its way out.
struct SendBody<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// Taken from the body, not yet sent.
    data: Bytes,
    /// A frame taken from the body while looking for its end.
    next: Option<Frame<Bytes>>,
}

/// Why a body stopped being sent.
enum SendError {
    /// The body failed (the stream was reset).
    Body(BoxError),
    /// The stream was reset or its connection lost.
    Stream,
}

impl<B> SendBody<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    /// Sends the body as the flow-control windows allow; ready once the stream is ended.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        loop {
            if self.data.is_empty() {
                let frame = match self.next.take() {
                    Some(frame) => Some(Ok(frame)),
                    None => match self.poll_body(cx) {
                        Poll::Ready(frame) => frame,
                        Poll::Pending => return self.pending(cx),
                    },
                };
                match frame {
                    None => {
                        self.stream
                            .send_data(Bytes::new(), true)
                            .map_err(|_| SendError::Stream)?;
                        return Poll::Ready(Ok(()));
                    }
                    Some(Err(err)) => return Poll::Ready(Err(self.fail(err))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => self.data = data,
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                self.stream
                                    .send_trailers(trailers)
                                    .map_err(|_| SendError::Stream)?;
                                return Poll::Ready(Ok(()));
                            }
                            // A kind of frame HTTP/2 has no use for: skipped.
                        }
                    },
                }
                continue;
            }
            // The body's last data goes to h2 whole, whatever the windows: it is in memory
            // already, so h2 holding it costs nothing, and h2 then writes it with the headers.
            // Waiting for capacity instead meant a write of the headers alone, a wake-up of
            // this call once the connection task assigned capacity, a poll of every layer above
            // it, and a second write for the data.
            if self.next.is_none() && self.at_end(cx)? {
                let data = mem::take(&mut self.data);
                self.stream
                    .send_data(data, true)
                    .map_err(|_| SendError::Stream)?;
                return Poll::Ready(Ok(()));
            }
            // More to come: as much as both windows allow, so that a streaming body is only
            // read as fast as the peer takes it.
            self.stream.reserve_capacity(self.data.len());
            if self.stream.capacity() == 0 {
                match ready!(self.stream.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Poll::Ready(Err(SendError::Stream)),
                }
            }
            let capacity = self.stream.capacity().min(self.data.len());
            let piece = self.data.split_to(capacity);
            self.stream
                .send_data(piece, false)
                .map_err(|_| SendError::Stream)?;
        }
    }

    /// Whether the body has ended, looking at its next frame when it does not say so: a
    /// unary call's one message then carries END_STREAM, and no empty frame follows.
    fn at_end(&mut self, cx: &mut Context<'_>) -> Result<bool, SendError> {
        if self.body.is_end_stream() {
            return Ok(true);
        }
        match self.poll_body(cx) {
            Poll::Ready(None) => Ok(true),
            Poll::Ready(Some(Ok(frame))) => {
                self.next = Some(frame);
                Ok(false)
            }
            Poll::Ready(Some(Err(err))) => Err(self.fail(err)),
            Poll::Pending => Ok(false),
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx).map(|frame| {
            frame.map(|frame| {
                frame
                    .map(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                    .map_err(Into::into)
            })
        })
    }

    /// Waiting for the body: pending, unless the server reset the stream meanwhile.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        match self.stream.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(Err(SendError::Stream)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The body failed: the server is told the call is off.
    fn fail(&mut self, err: BoxError) -> SendError {
        self.stream.send_reset(Reason::CANCEL);
        SendError::Body(err)
    }

    /// Sends the rest of the body (a streaming call's, after its answer began).
    async fn finish(mut self) {
        let _ = poll_fn(|cx| self.poll_send(cx)).await;
    }
}

// === RecvBody ===

/// An answer's body: its data, giving window back as it is read, then its trailers (where
/// gRPC puts the status), as tonic's decoder expects.
struct RecvBody {
    recv: RecvStream,
    name: Arc<str>,
    /// The call stays open until its answer's body is dropped.
    _open: OpenCall,
    /// All data was read: the trailers are next.
    data_done: bool,
    done: bool,
}

impl RecvBody {
    fn new(recv: RecvStream, name: Arc<str>, open: OpenCall) -> Self {
        Self {
            recv,
            name,
            _open: open,
            data_done: false,
            done: false,
        }
    }

    fn fail(&mut self, err: h2::Error) -> Option<Result<Frame<Bytes>, ConnectionError>> {
        self.done = true;
        // RST_STREAM NO_ERROR: the server needs no more of the request, and the answer ends
        // here (RFC 9113, section 8.1), as hyper reads it.
        if err.is_reset() && err.reason() == Some(Reason::NO_ERROR) {
            return None;
        }
        Some(Err(ConnectionError::h2(&self.name, &err)))
    }
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = ConnectionError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ConnectionError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(this.fail(err)),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => {
                this.done = true;
                Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers))))
            }
            Err(err) => Poll::Ready(this.fail(err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

#[cfg(test)]
impl Connection {
    /// Whether the connection is open and takes new streams (None: not connected).
    fn is_usable(&self) -> Option<bool> {
        let attempt = lock(&self.inner.current).clone();
        let live = attempt.get()?.as_ref().ok()?.clone();
        if live.closed.load(Ordering::Acquire) {
            return Some(false);
        }
        let mut send = live.send;
        let waker = futures::task::noop_waker();
        Some(matches!(
            send.poll_ready(&mut Context::from_waker(&waker)),
            Poll::Ready(Ok(()))
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures::{StreamExt as _, future::join_all};
    use h2::server::SendResponse;
    use http::HeaderMap;
    use http_body_util::{BodyExt as _, StreamBody};
    use tokio::{
        net::TcpListener,
        sync::{mpsc, oneshot},
    };
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic_health::{
        ServingStatus,
        pb::{
            HealthCheckRequest, health_check_response::ServingStatus as Answer,
            health_client::HealthClient,
        },
        server::HealthReporter,
    };
    use tower::ServiceExt as _;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);
    /// Bound of every wait in these tests.
    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn each_per_call_name_enters_the_hpack_table_once_per_reindex_period() {
        let calls = CallCounts::default();
        let call = |with_ids: bool| {
            let mut headers = HeaderMap::new();
            let mut timeout = HeaderValue::from_static("4999m");
            timeout.set_sensitive(true);
            headers.insert(GRPC_TIMEOUT_HEADER, timeout);
            if with_ids {
                for name in ["x-request-id", "traceparent", "baggage"] {
                    let mut value = HeaderValue::from_static("new-on-every-call");
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
            }
            let_names_into_table(&mut headers, &calls);
            let indexable = |name: &str| headers.get(name).is_some_and(|v| !v.is_sensitive());
            ["x-request-id", "traceparent", "grpc-timeout", "baggage"].map(indexable)
        };
        // A health check has no ids: only its grpc-timeout goes in; the ids go in with the
        // first call that has them; baggage never does.
        assert_eq!(call(false), [false, false, true, false]);
        assert_eq!(call(true), [true, true, false, false]);
        for _ in 2..REINDEX_EVERY {
            assert_eq!(call(true), [false; 4]);
        }
        assert_eq!(call(true), [true, true, true, false], "the next period");
        assert_eq!(call(true), [false; 4]);
    }

    async fn within<F: Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(WAIT, future)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
    }

    // --- a tonic health server on its own runtime ---

    /// A tonic health server on a thread and runtime of its own: stopping it drops its
    /// connections at once, as the death of its process would.
    struct Server {
        addr: SocketAddr,
        reporter: HealthReporter,
        accepted: Arc<AtomicUsize>,
        kill: Option<oneshot::Sender<()>>,
        drain: Option<oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn start(addr: SocketAddr) -> Self {
            let listener = std::net::TcpListener::bind(addr).expect("the test port is free");
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let (reporter, service) = tonic_health::server::health_reporter();
            let accepted = Arc::new(AtomicUsize::new(0));
            let (kill, killed) = oneshot::channel::<()>();
            let (drain, drained) = oneshot::channel::<()>();
            let thread = std::thread::spawn({
                let accepted = accepted.clone();
                move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).unwrap();
                        let incoming = TcpListenerStream::new(listener).inspect(move |_| {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        });
                        let serve = tonic::transport::Server::builder()
                            .add_service(service)
                            .serve_with_incoming_shutdown(incoming, async {
                                let _ = drained.await;
                            });
                        tokio::select! {
                            biased;
                            _ = killed => {}
                            _ = serve => {}
                        }
                    });
                    // Dropping the runtime drops the connections' tasks: their sockets close.
                }
            });
            Self {
                addr,
                reporter,
                accepted,
                kill: Some(kill),
                drain: Some(drain),
                thread: Some(thread),
            }
        }

        fn any_port() -> Self {
            Self::start("127.0.0.1:0".parse().unwrap())
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        /// Stops at once: connections drop without GOAWAY.
        async fn kill(mut self) {
            if let Some(kill) = self.kill.take() {
                let _ = kill.send(());
            }
            self.join().await;
        }

        /// Stops gracefully: GOAWAY, then the connections close once idle.
        async fn drain(mut self) {
            if let Some(drain) = self.drain.take() {
                let _ = drain.send(());
            }
            self.join().await;
        }

        async fn join(&mut self) {
            if let Some(thread) = self.thread.take() {
                within(
                    "the server stops",
                    tokio::task::spawn_blocking(move || thread.join()),
                )
                .await
                .unwrap()
                .unwrap();
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(kill) = self.kill.take() {
                let _ = kill.send(());
            }
        }
    }

    /// A port nobody listens on (free a moment ago).
    fn free_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    async fn check(connection: &Connection, service: &str) -> Result<Answer, Status> {
        let mut client = HealthClient::new(connection.clone());
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let answer = within("a health check", client.check(request)).await?;
        Ok(answer.into_inner().status())
    }

    /// Waits until the client saw its connection close.
    async fn until_closed(connection: &Connection) {
        within("the client sees the connection close", async {
            while connection.is_usable() == Some(true) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn unary_calls_go_over_one_connection_made_at_the_first_call() {
        let server = Server::any_port();
        let connection = Connection::http(server.addr, TIMEOUT);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            server.accepted(),
            0,
            "nothing connects before the first call"
        );
        for _ in 0..3 {
            assert_eq!(check(&connection, "").await.unwrap(), Answer::Serving);
        }
        assert_eq!(server.accepted(), 1, "one connection for all calls");
        let unknown = check(&connection, "nope").await.unwrap_err();
        assert_eq!(
            (unknown.code(), unknown.message()),
            (Code::NotFound, "service not registered"),
            "the server's status comes through the trailers"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_calls_share_one_connect_and_one_connection() {
        let server = Server::any_port();
        let connection = Connection::http(server.addr, TIMEOUT);
        let calls = (0..300).map(|_| check(&connection, ""));
        let answers = join_all(calls).await;
        for answer in answers {
            assert_eq!(answer.unwrap(), Answer::Serving);
        }
        assert_eq!(server.accepted(), 1, "one connect for 300 concurrent calls");
    }

    #[tokio::test]
    async fn a_server_that_is_down_fails_calls_fast_and_a_later_call_connects() {
        let addr = free_port();
        let connection = Connection::http(addr, TIMEOUT);

        let started = Instant::now();
        let err = connection
            .clone()
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < TIMEOUT,
            "a refused connect fails at once"
        );
        assert_eq!(err.kind(), ConnectionErrorKind::Connect);
        assert_eq!(
            err.to_string(),
            format!("cannot connect to {addr}: connection refused")
        );
        // What a tonic client sees.
        let status = check(&connection, "").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            format!("cannot connect to {addr}: connection refused")
        );

        let server = Server::start(addr);
        assert_eq!(
            check(&connection, "").await.unwrap(),
            Answer::Serving,
            "the failed attempt does not stick"
        );
        assert_eq!(server.accepted(), 1);
    }

    // Linux drops the SYNs to a listener whose accept queue is full: connects to it hang.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_connect_that_hangs_ends_at_the_connect_timeout() {
        // A listener that never accepts, its queue filled up.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut hogs = Vec::new();
        for _ in 0..512 {
            match tokio::time::timeout(Duration::from_millis(20), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => hogs.push(stream),
                _ => break,
            }
        }
        let connection = Connection::http(addr, Duration::from_millis(200));
        let started = Instant::now();
        let err = within(
            "a hanging connect",
            connection.clone().oneshot(Request::new(Body::empty())),
        )
        .await
        .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(190) && elapsed < TIMEOUT,
            "ends at the timeout: {elapsed:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("cannot connect to {addr}: timed out after 200 ms")
        );
        drop(listener);
    }

    #[tokio::test]
    async fn a_killed_and_restarted_server_is_reached_by_the_next_call() {
        let server = Server::any_port();
        let addr = server.addr;
        let connection = Connection::http(addr, TIMEOUT);
        assert_eq!(check(&connection, "").await.unwrap(), Answer::Serving);
        server.kill().await;
        until_closed(&connection).await;

        let status = check(&connection, "").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            status.message(),
            format!("cannot connect to {addr}: connection refused")
        );

        let server = Server::start(addr);
        assert_eq!(check(&connection, "").await.unwrap(), Answer::Serving);
        assert_eq!(server.accepted(), 1);
    }

    #[tokio::test]
    async fn a_drained_server_is_left_and_its_successor_reached_by_the_next_call() {
        let server = Server::any_port();
        let addr = server.addr;
        let connection = Connection::http(addr, TIMEOUT);
        assert_eq!(check(&connection, "").await.unwrap(), Answer::Serving);
        server.drain().await;
        until_closed(&connection).await;
        let server = Server::start(addr);
        assert_eq!(
            check(&connection, "").await.unwrap(),
            Answer::Serving,
            "no call fails on the connection the old server closed"
        );
        assert_eq!(server.accepted(), 1);
    }

    #[tokio::test]
    async fn a_megabyte_request_is_sent_as_flow_control_allows() {
        let server = Server::any_port();
        // The server's windows (1 MiB by default) are smaller than the message.
        let name = "x".repeat(1024 * 1024);
        server
            .reporter
            .set_service_status(&name, ServingStatus::Serving)
            .await;
        let connection = Connection::http(server.addr, TIMEOUT);
        assert_eq!(check(&connection, &name).await.unwrap(), Answer::Serving);
        assert_eq!(check(&connection, "").await.unwrap(), Answer::Serving);
    }

    // --- a bare h2 server, to see the frames ---

    type Accepted = (Request<RecvStream>, SendResponse<Bytes>);

    /// An h2 server handing over every request it gets, and counting its connections.
    async fn h2_server() -> (
        SocketAddr,
        mpsc::UnboundedReceiver<Accepted>,
        Arc<AtomicUsize>,
    ) {
        h2_server_leaving_after(0).await
    }

    /// [`h2_server`], each connection saying GOAWAY after `calls` calls (0: never).
    async fn h2_server_leaving_after(
        calls: usize,
    ) -> (
        SocketAddr,
        mpsc::UnboundedReceiver<Accepted>,
        Arc<AtomicUsize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn({
            let accepted = accepted.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let Ok(mut connection) = h2::server::handshake(socket).await else {
                            return;
                        };
                        let mut served = 0;
                        while let Some(Ok(call)) = connection.accept().await {
                            if tx.send(call).is_err() {
                                return;
                            }
                            served += 1;
                            if served == calls {
                                connection.graceful_shutdown();
                            }
                        }
                    });
                }
            }
        });
        (addr, rx, accepted)
    }

    fn grpc_request(body: Body) -> Request<Body> {
        let mut request = Request::new(body);
        *request.uri_mut() = Uri::from_static("/pkg.Service/Method");
        request
    }

    fn ok_trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers
    }

    fn answer_headers() -> Response<()> {
        Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    }

    /// What the server received: the data, then the trailers.
    async fn read_all(mut body: RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        (data, body.trailers().await.unwrap())
    }

    async fn reset_reason(respond: &mut SendResponse<Bytes>) -> Reason {
        within("the stream is reset", poll_fn(|cx| respond.poll_reset(cx)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn calls_carry_the_configured_authority_and_their_body_ends_with_its_message() {
        let (addr, mut calls, _) = h2_server().await;
        let authority: Authority = format!("localhost:{}", addr.port()).parse().unwrap();
        let connection =
            Connection::new(addr, Scheme::HTTP, authority, TIMEOUT, Keepalive::default());
        let call = tokio::spawn(connection.oneshot(grpc_request(Body::new(
            http_body_util::Full::new(Bytes::from_static(b"message")),
        ))));
        let (request, mut respond) = within("the call", calls.recv()).await.unwrap();
        assert_eq!(
            request.uri().to_string(),
            format!("http://localhost:{}/pkg.Service/Method", addr.port()),
            ":scheme and :authority are the configured ones, the address is the resolved one"
        );
        assert!(request.headers().contains_key(USER_AGENT));
        let mut body = request.into_body();
        let data = within("the data", body.data()).await.unwrap().unwrap();
        assert_eq!(&data[..], b"message");
        assert!(
            body.is_end_stream(),
            "the message's frame carries END_STREAM"
        );

        let mut stream = respond.send_response(answer_headers(), false).unwrap();
        stream
            .send_data(Bytes::from_static(b"answer"), false)
            .unwrap();
        stream.send_trailers(ok_trailers()).unwrap();
        let answer = within("the answer", call).await.unwrap().unwrap();
        let collected = within("the body", answer.into_body().collect())
            .await
            .unwrap();
        assert_eq!(
            collected.trailers().and_then(|t| t.get("grpc-status")),
            Some(&HeaderValue::from_static("0"))
        );
        assert_eq!(&collected.to_bytes()[..], b"answer");
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_unary_call_sends_its_message_at_once_and_is_woken_only_by_its_answer() {
        let (addr, mut calls, _) = h2_server().await;
        let connection = Connection::http(addr, TIMEOUT);
        // A first call opens the connection, so that the next one sends at its first poll.
        let first = tokio::spawn(connection.clone().oneshot(grpc_request(Body::empty())));
        let (_, mut respond) = within("the first call", calls.recv()).await.unwrap();
        respond.send_response(answer_headers(), true).unwrap();
        within("the first answer", first).await.unwrap().unwrap();

        let message = Bytes::from_static(b"message");
        let mut call = connection
            .clone()
            .call(grpc_request(Body::new(http_body_util::Full::new(message))));
        let wakes = Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut call).poll(&mut cx).is_pending());

        // Polled once: the server gets the headers and the whole message, and the call is
        // not woken before its answer (waiting for send capacity would wake it first).
        let (request, mut respond) = within("the call", calls.recv()).await.unwrap();
        let (data, _) = within("the message", read_all(request.into_body())).await;
        assert_eq!(&data[..], b"message");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        respond.send_response(answer_headers(), true).unwrap();
        within("the wake-up", async {
            while wakes.0.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let answer = Pin::new(&mut call).poll(&mut cx);
        assert!(matches!(answer, Poll::Ready(Ok(_))), "the answer is in");
    }

    #[tokio::test]
    async fn a_large_answer_is_read_as_its_window_is_given_back() {
        let (addr, mut calls, _) = h2_server().await;
        let connection = Connection::http(addr, TIMEOUT);
        let call = tokio::spawn(connection.oneshot(grpc_request(Body::empty())));
        let (_request, mut respond) = within("the call", calls.recv()).await.unwrap();
        // 12 MiB: more than both of the client's windows (2 and 5 MiB), so the answer only
        // gets through if reading it gives the window back.
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let mut stream = respond.send_response(answer_headers(), false).unwrap();
        tokio::spawn(async move {
            for _ in 0..192 {
                stream.reserve_capacity(chunk.len());
                while stream.capacity() < chunk.len() {
                    if poll_fn(|cx| stream.poll_capacity(cx)).await.is_none() {
                        return;
                    }
                }
                stream.send_data(chunk.clone(), false).unwrap();
            }
            stream.send_trailers(ok_trailers()).unwrap();
        });
        let answer = within("the answer", call).await.unwrap().unwrap();
        let collected = within("the whole body", answer.into_body().collect())
            .await
            .unwrap();
        assert!(
            collected.trailers().is_some(),
            "the trailers follow the data"
        );
        assert_eq!(collected.to_bytes().len(), 12 * 1024 * 1024);
    }

    #[tokio::test]
    async fn dropping_the_response_future_resets_the_stream() {
        let (addr, mut calls, _) = h2_server().await;
        let connection = Connection::http(addr, TIMEOUT);
        let call = tokio::spawn(connection.clone().oneshot(grpc_request(Body::empty())));
        let (_request, mut respond) = within("the call", calls.recv()).await.unwrap();
        call.abort();
        assert_eq!(reset_reason(&mut respond).await, Reason::CANCEL);
    }

    #[tokio::test]
    async fn dropping_the_answer_body_resets_the_stream() {
        let (addr, mut calls, _) = h2_server().await;
        let connection = Connection::http(addr, TIMEOUT);
        let call = tokio::spawn(connection.clone().oneshot(grpc_request(Body::empty())));
        let (_request, mut respond) = within("the call", calls.recv()).await.unwrap();
        let mut stream = respond.send_response(answer_headers(), false).unwrap();
        stream
            .send_data(Bytes::from_static(b"part"), false)
            .unwrap();
        let answer = within("the answer", call).await.unwrap().unwrap();
        drop(answer);
        assert_eq!(
            within("the stream is reset", poll_fn(|cx| stream.poll_reset(cx)))
                .await
                .unwrap(),
            Reason::CANCEL
        );
    }

    #[tokio::test]
    async fn a_streaming_body_and_its_trailers_go_out_after_the_answer_began() {
        let (addr, mut calls, _) = h2_server().await;
        let connection = Connection::http(addr, TIMEOUT);
        let (frames, rx) = mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let body = Body::new(StreamBody::new(ReceiverStream::new(rx)));
        let call = tokio::spawn(connection.oneshot(grpc_request(body)));

        // The server answers before the request has any data.
        let (request, mut respond) = within("the call", calls.recv()).await.unwrap();
        let mut stream = respond.send_response(answer_headers(), false).unwrap();
        let answer = within("the answer", call).await.unwrap().unwrap();

        frames
            .send(Ok(Frame::data(Bytes::from_static(b"ping"))))
            .await
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sent", HeaderValue::from_static("1"));
        frames.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(frames);
        let (data, trailers) = within("the request body", read_all(request.into_body())).await;
        assert_eq!(
            trailers.as_ref().and_then(|t| t.get("x-sent")),
            Some(&HeaderValue::from_static("1"))
        );
        assert_eq!(data, b"ping");

        stream
            .send_data(Bytes::from_static(b"pong"), false)
            .unwrap();
        stream.send_trailers(ok_trailers()).unwrap();
        let collected = within("the answer body", answer.into_body().collect())
            .await
            .unwrap();
        assert_eq!(&collected.to_bytes()[..], b"pong");
    }

    #[tokio::test]
    async fn a_failing_request_body_cancels_the_call_with_its_status() {
        let (addr, mut calls, _) = h2_server().await;
        let connection = Connection::http(addr, TIMEOUT);
        let (frames, rx) = mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let body = Body::new(StreamBody::new(ReceiverStream::new(rx)));
        let call = tokio::spawn(connection.oneshot(grpc_request(body)));
        let (_request, mut respond) = within("the call", calls.recv()).await.unwrap();
        frames
            .send(Err(Status::invalid_argument("cannot encode")))
            .await
            .unwrap();
        let err = within("the failure", call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ConnectionErrorKind::Request);
        assert_eq!(err.status().code(), Code::InvalidArgument);
        assert_eq!(
            err.to_string(),
            format!("request to {addr} failed: cannot encode")
        );
        assert_eq!(reset_reason(&mut respond).await, Reason::CANCEL);
    }

    #[tokio::test]
    async fn a_refused_stream_is_a_reset_error_that_tonic_reads_as_unavailable() {
        let (addr, mut calls, _) = h2_server().await;
        let connection = Connection::http(addr, TIMEOUT);
        let call = tokio::spawn(connection.oneshot(grpc_request(Body::empty())));
        let (_request, mut respond) = within("the call", calls.recv()).await.unwrap();
        respond.send_reset(Reason::REFUSED_STREAM);
        let err = within("the failure", call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ConnectionErrorKind::Reset);
        let status = Status::from_error(Box::new(err));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            format!(
                "call to {addr} reset by the server: refused stream before processing any application logic"
            )
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_leaves_is_replaced_before_a_call_is_sent_on_it() {
        // The server says GOAWAY after its first call, which it keeps open: the connection
        // stays up for that call, but takes no new ones.
        let (addr, mut calls, accepted) = h2_server_leaving_after(1).await;
        let connection = Connection::http(addr, TIMEOUT);
        let first = tokio::spawn(connection.clone().oneshot(grpc_request(Body::empty())));
        let (_request, mut first_respond) = within("the first call", calls.recv()).await.unwrap();
        within("the client hears GOAWAY", async {
            while connection.is_usable() != Some(false) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;

        let second = tokio::spawn(connection.clone().oneshot(grpc_request(Body::empty())));
        let (_request, mut respond) = within("the second call", calls.recv()).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "on a new connection");
        let mut stream = respond.send_response(answer_headers(), false).unwrap();
        stream.send_trailers(ok_trailers()).unwrap();
        within("the second answer", second).await.unwrap().unwrap();

        // The call under way ends on the old connection.
        let mut stream = first_respond
            .send_response(answer_headers(), false)
            .unwrap();
        stream.send_trailers(ok_trailers()).unwrap();
        let answer = within("the first answer", first).await.unwrap().unwrap();
        let collected = within("its body", answer.into_body().collect())
            .await
            .unwrap();
        assert!(collected.trailers().is_some());
    }

    // --- keepalive ---

    /// Pings every 100 ms while calls are open, a peer silent for 300 ms is gone.
    const QUICK_PINGS: Keepalive = Keepalive {
        ping_interval: Some(Duration::from_millis(100)),
        ping_timeout: Duration::from_millis(300),
        tcp: None,
    };

    /// An h2 server whose connections take one call, then stop reading and writing with the
    /// socket left open: a peer gone behind a network that drops everything silently. Counts
    /// its connections.
    async fn h2_server_going_silent() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn({
            let accepted = accepted.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let Ok(mut connection) = h2::server::handshake(socket).await else {
                            return;
                        };
                        let call = connection.accept().await;
                        // Held, never polled again: no PING is answered, no frame read.
                        let _held = (connection, call);
                        std::future::pending::<()>().await;
                    });
                }
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_peer_gone_silent_fails_the_calls_on_it_at_the_ping_timeout_not_their_deadline() {
        let (addr, accepted) = h2_server_going_silent().await;
        let authority: Authority = addr.to_string().parse().unwrap();
        let connection = Connection::new(addr, Scheme::HTTP, authority, TIMEOUT, QUICK_PINGS);
        let started = Instant::now();
        // The call has no deadline of its own: without pings it would wait forever.
        let err = within(
            "the call on the silent connection fails",
            connection.clone().oneshot(grpc_request(Body::empty())),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ConnectionErrorKind::Closed, "{err}");
        assert_eq!(err.status().code(), Code::Unavailable);
        assert_eq!(err.to_string(), format!("connection to {addr} closed"));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "not before a PING went unanswered for ping_timeout: {:?}",
            started.elapsed()
        );
        // The next call gets a new connection.
        let next = tokio::spawn(connection.oneshot(grpc_request(Body::empty())));
        within("a second connection", async {
            while accepted.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        next.abort();
    }

    #[tokio::test]
    async fn a_slow_call_on_a_peer_that_answers_pings_is_left_alone() {
        let (addr, mut calls, accepted) = h2_server().await;
        let authority: Authority = addr.to_string().parse().unwrap();
        let connection = Connection::new(addr, Scheme::HTTP, authority, TIMEOUT, QUICK_PINGS);
        let call = tokio::spawn(connection.oneshot(grpc_request(Body::empty())));
        let (_request, mut respond) = within("the call", calls.recv()).await.unwrap();
        // Many ping intervals and timeouts go by before the answer.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut stream = respond.send_response(answer_headers(), false).unwrap();
        stream.send_trailers(ok_trailers()).unwrap();
        let answer = within("the answer", call).await.unwrap().unwrap();
        let collected = within("its body", answer.into_body().collect())
            .await
            .unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection throughout"
        );
    }

    #[tokio::test]
    async fn tcp_keepalive_probes_start_after_the_configured_quiet_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        set_tcp_keepalive(&tcp, Duration::from_secs(7)).unwrap();
        let socket = SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
    }
}
