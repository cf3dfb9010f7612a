//! The gateway's HTTP server: the accept loop, and [`Gateway::handle`], the hyper service that
//! takes every request through the edge to its answer.
//!
//! The accept loop ([`serve`]) keeps at most `gateway.max_connections` connections open
//! (one more is closed at once), and serves each under the deadlines of [`crate::connection`]:
//! a request head within `gateway.header_read_timeout_ms`, no longer than
//! `gateway.idle_timeout_ms` with no request under way.
//!
//! For each request, in order: request id ([`crate::request_id`]); the gateway-wide cap on
//! requests in flight, which the gateway's own endpoints skip (503, [`crate::admission`]); the
//! request line and headers within `gateway.max_header_bytes` (431); the gateway's own
//! endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`:
//! [`crate::own_routes`]); CORS preflight ([`crate::cors`]); routing (404, 405 with `Allow`);
//! then, for an API route, the call path ([`crate::call`]): authentication, rate limits, body,
//! transcoding, the upstream call and the JSON answer. Every answer carries `X-Request-Id`
//! (and the CORS headers an allowed origin needs), errors the contract's JSON
//! ([`crate::error`]); each is counted in the metrics, and an API request is traced as an HTTP
//! server span.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;
use tonic::Code;
use tracing::{Instrument as _, Span, field::Empty};
use weft_mesh::{
    admin::{AdminServer, plain_answer},
    auth::{JwtVerifier, KeySource},
    config::{GatewayConfig, MeshConfig},
    live::Live,
    propagate::{self, CallContext, REQUEST_ID_HEADER},
    ratelimit::RateLimiter,
    reload,
    telemetry::{self, SPAN_TARGET},
};

use crate::{
    admission::{self, Admitted, warn_unknown_routes},
    call::ApiCalls,
    connection::{Activity, Expiry, Limits, Watched},
    cors,
    endpoint::Endpoint,
    error::ApiError,
    metrics::Metrics,
    own_routes::{OPERATIONS, OwnRoutes, is_own_route},
    request_id::request_id,
    response::HttpResponse,
    route::Match,
    table::RouteTable,
    tls,
    upstream::Upstream,
};

/// Serves the gateway as configured until SIGINT or SIGTERM, then drains.
pub async fn run(config: Arc<MeshConfig>) -> anyhow::Result<()> {
    // The gateway's identity in the mesh: its upstream calls (the JWKS fetch included) present it.
    weft_mesh::server::start_tls(&config, weft_mesh::config::GATEWAY_IDENTITY)?;
    let gateway = Arc::new(Gateway::new(config.clone())?);
    gateway.spawn_upkeep();
    // Metrics and readiness for scrapers and probes, also where the API's port is public.
    let operations = gateway.clone();
    let admin = AdminServer::start_with(
        config.gateway.admin_listen,
        Arc::new(move |req| {
            let gateway = operations.clone();
            Box::pin(async move { gateway.answer_operations(req).await })
        }),
    )
    .await?;
    let addr = config.gateway.listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let tls = tls::acceptor(&config.gateway.tls)?;
    tracing::info!(
        addr = %local,
        admin = %admin.local_addr(),
        tls = tls.is_some(),
        "gateway serving"
    );
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    serve(
        listener,
        gateway,
        tls,
        weft_mesh::server::shutdown_signal(),
        drain,
    )
    .await;
    Ok(())
}

/// Time an idle connection told to close gets to do so before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Least time between two warnings about connections refused at `gateway.max_connections`.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` and serves `gateway` on them until `shutdown` resolves;
/// then stops accepting and lets the open connections finish for up to `drain`.
///
/// At most `gateway.max_connections` connections are open at once (read here, at start): one
/// accepted beyond it is closed at once, so a flood of connections costs a file descriptor for
/// an instant rather than a queue without bound. Each connection has the deadlines of
/// [`crate::connection`], with the limits `[gateway]` says when it is accepted.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let settings = gateway.settings.get();
    // hyper refuses heads past its buffer with a bare 431; give it room so that the handler sees
    // heads up to 4x the limit and answers the contract's JSON 431 for them.
    let head_room = settings.max_header_bytes.saturating_mul(4);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).max_buf_size(head_room);
    builder
        .http2()
        .max_header_list_size(u32::try_from(head_room).unwrap_or(u32::MAX));
    let max_connections = settings.max_connections;
    let permits = Arc::new(Semaphore::new(max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut last_refusal_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    drop(stream);
                    if last_refusal_warning.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_INTERVAL) {
                        last_refusal_warning = Some(Instant::now());
                        tracing::warn!(
                            %peer,
                            max_connections,
                            "connection refused: gateway.max_connections are open"
                        );
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let limits = gateway.connection_limits();
                let connection = ClientConnection {
                    builder: builder.clone(),
                    gateway: gateway.clone(),
                    peer,
                    activity: Activity::new(),
                    limits,
                    stopping: stopping.clone(),
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    // The connection counts against the cap until its task ends.
                    let _permit = permit;
                    match tls {
                        None => connection.serve(stream).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => connection.serve(stream).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                }
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    let _ = stop.send(true);
    // Every connection's task holds a permit until it ends: all permits back, all drained.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; dropping connections");
    }
    tracing::info!("stopped");
}

/// Resolves once the gateway shuts down (or the accept loop is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: dropped here, not held by the caller.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// One accepted client connection, and what serving it needs.
struct ClientConnection {
    builder: auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    limits: Limits,
    /// Turns true when the gateway shuts down.
    stopping: watch::Receiver<bool>,
}

impl ClientConnection {
    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client leaves, a deadline of
    /// [`crate::connection`] passes, or the gateway shuts down.
    async fn serve<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            builder,
            gateway,
            peer,
            activity,
            limits,
            mut stopping,
        } = self;
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let request = activity.request(req.version());
                let gateway = gateway.clone();
                async move {
                    let answer = gateway.handle(req, peer).await;
                    drop(request);
                    answer
                }
            })
        };
        let io = TokioIo::new(Watched::new(io, activity.clone()));
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            expiry = activity.expired(limits) => match expiry {
                Expiry::Head => {
                    // Mid-head there is nothing to answer on: the connection is dropped.
                    tracing::debug!(
                        %peer,
                        timeout_ms = limits.header_read_timeout.as_millis(),
                        "no complete request head in time: closing the connection"
                    );
                    return;
                }
                Expiry::Idle => {
                    tracing::debug!(
                        %peer,
                        timeout_ms = limits.idle_timeout.as_millis(),
                        "connection idle: closing it"
                    );
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            },
            () = stopped(&mut stopping) => {
                // Requests under way finish (within the drain); a connection that stalls
                // meanwhile still meets its deadlines.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => result,
                    _ = activity.expired(limits) => return,
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Everything a request needs, built once at start.
pub struct Gateway {
    table: RouteTable,
    /// `[gateway]` as mesh-config says now: limits and CORS follow reloads.
    settings: Live<GatewayConfig>,
    /// The API call path: token verifier, rate limits, upstreams.
    api: ApiCalls,
    /// The gateway's own endpoints.
    own_routes: OwnRoutes,
    metrics: Metrics,
    /// Server span names (`POST /v1/orders`), by [`Endpoint::slot`], made once; also the
    /// route names of rate limit rules.
    span_names: Vec<String>,
    /// API requests being answered, against `gateway.max_concurrent_requests`.
    in_flight: AtomicUsize,
}

/// Where the gateway fetches token keys: the key method (`weft_mesh::auth::key_method`), over
/// the channel of the routed upstream that serves it; `None` when no upstream serves it.
fn key_source(
    table: &RouteTable,
    upstreams: &[Upstream],
    config: &MeshConfig,
) -> anyhow::Result<Option<KeySource>> {
    let Some((path, key)) = weft_mesh::auth::key_method(config) else {
        return Ok(None);
    };
    let Some(index) = table.upstreams.iter().position(|spec| spec.key == key) else {
        return Ok(None);
    };
    let channel =
        weft_mesh::client::with_context(upstreams[index].channel(), key, config.upstream(key)?);
    Ok(Some(KeySource::new(channel, &path)?))
}

impl Gateway {
    /// Builds the route table, upstream channels and documents from `config`.
    pub fn new(config: Arc<MeshConfig>) -> anyhow::Result<Self> {
        let table = RouteTable::build(&config)?;
        let upstreams = table
            .upstreams
            .iter()
            .map(|spec| Upstream::new(spec, &config))
            .collect::<Result<Vec<_>, _>>()?;
        // The key fetches share the channel of the routes of the upstream serving them: one
        // balancer (and breaker) per upstream.
        let key_source = key_source(&table, &upstreams, &config)?;
        let verifier = JwtVerifier::new(key_source, &config.jwt, "weft-gateway");
        let own_routes = OwnRoutes::new(&table);
        let metrics = Metrics::new(&table)?;
        let mut span_names = vec![String::new(); table.router.len()];
        for route in table.router.routes() {
            let endpoint = route.value();
            if let Some(name) = span_names.get_mut(endpoint.slot) {
                *name = format!("{} {}", endpoint.http_method.as_str(), endpoint.template);
            }
        }
        tracing::info!(routes = table.router.len(), "route table built");
        let rate_limits = reload::policy(&config, |config| config.gateway.rate_limit.clone());
        let settings = reload::policy(&config, |config| config.gateway.clone());
        let mut methods = vec![String::new(); table.router.len()];
        for route in table.router.routes() {
            let endpoint = route.value();
            if let Some(method) = methods.get_mut(endpoint.slot) {
                *method = endpoint.grpc_path.as_str()[1..].to_owned();
            }
        }
        let route_timeouts = reload::policy(&config, move |config| {
            methods
                .iter()
                .map(|method| config.gateway.route_timeout(method))
                .collect()
        });
        warn_unknown_routes(&rate_limits.get(), &span_names);
        let api = ApiCalls::new(
            upstreams,
            verifier,
            settings.clone(),
            route_timeouts,
            RateLimiter::new(rate_limits),
        );
        Ok(Self {
            span_names,
            table,
            settings,
            api,
            own_routes,
            metrics,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Runs the metrics and rate limit upkeep every few seconds for as long as the gateway
    /// lives.
    pub fn spawn_upkeep(self: &Arc<Self>) {
        let gateway = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(std::time::Duration::from_secs(5));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match gateway.upgrade() {
                    Some(gateway) => {
                        gateway.metrics.upkeep();
                        gateway.api.upkeep();
                    }
                    None => break,
                }
            }
        });
    }

    /// Answers one HTTP request. Never fails: every problem becomes an error response.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<HttpResponse, Infallible> {
        let started = Instant::now();
        let _in_flight = self.metrics.start();
        let (request_id, id_value) = request_id(req.headers());
        let context = CallContext::at_edge(request_id, req.headers());
        req.headers_mut()
            .insert(REQUEST_ID_HEADER, id_value.clone());
        let origin = req.headers().get(header::ORIGIN).cloned();
        let method = req.method().clone();

        // The request's context is the task's while it is served: for its logs and its spans.
        let (endpoint, result) = match self.admit(req.uri().path()) {
            Ok(_admitted) => context.scope(self.dispatch(req, peer)).await,
            Err(error) => (None, Err(error)),
        };
        let request_id = id_value.to_str().unwrap_or_default();
        let mut response = result.unwrap_or_else(|e| e.into_response(request_id));
        response.headers_mut().insert(REQUEST_ID_HEADER, id_value);
        if let Some(origin) = origin {
            cors::add_headers(&self.settings.get().cors, &origin, &mut response);
        }
        self.metrics.record(
            endpoint.as_deref(),
            &method,
            response.status(),
            started.elapsed(),
        );
        Ok(response)
    }

    /// Routes the request and answers it; an API request (routed or refused) is traced as an
    /// HTTP server span, the gateway's own endpoints and CORS preflights are not.
    async fn dispatch(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Option<Arc<Endpoint>>, Result<HttpResponse, ApiError>) {
        match self.route(&req) {
            Routed::OwnRoute => match self
                .own_routes
                .answer(&req, &self.metrics, self.api.upstreams())
                .await
            {
                Some(response) => (None, response),
                None => (
                    None,
                    Err(ApiError::new(Code::Internal, "built-in route lost")),
                ),
            },
            Routed::Preflight => (
                None,
                Ok(cors::preflight(&self.settings.get().cors, req.headers())),
            ),
            Routed::Refused(error) => {
                let span = self.server_span(&req, None);
                let result = Err(error);
                record_http_status(&span, &result);
                (None, result)
            }
            Routed::Endpoint(endpoint, bindings) => {
                let span = self.server_span(&req, Some(&endpoint));
                let route = self
                    .span_names
                    .get(endpoint.slot)
                    .map_or("", String::as_str);
                let result = self
                    .api
                    .call(&endpoint, route, bindings, req, peer, &self.metrics)
                    .instrument(span.clone())
                    .await;
                record_http_status(&span, &result);
                (Some(endpoint), result)
            }
        }
    }

    /// Where a request goes; no I/O, so the span can be named after the route before it starts.
    fn route(&self, req: &Request<Incoming>) -> Routed<'_> {
        let settings = self.settings.get();
        let limit = settings.max_header_bytes;
        if head_size(req) > limit {
            return Routed::Refused(ApiError::with_status(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Code::ResourceExhausted,
                format!("request line and headers larger than {limit} bytes"),
            ));
        }
        if is_own_route(req.uri().path(), settings.public_operations) {
            return Routed::OwnRoute;
        }
        if req.method() == Method::OPTIONS && cors::enabled(&settings.cors) {
            return Routed::Preflight;
        }
        let path = req.uri().path();
        match self.table.router.match_path(req.method().as_str(), path) {
            Ok(Match::Found {
                value, bindings, ..
            }) => Routed::Endpoint(value.clone(), bindings),
            Ok(Match::MethodNotAllowed { allowed }) => {
                let allow = allowed
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let error = ApiError::with_status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Code::Unimplemented,
                    format!(
                        "method {} is not allowed on {path}; allowed: {allow}",
                        req.method()
                    ),
                );
                Routed::Refused(match HeaderValue::from_str(&allow) {
                    Ok(value) => error.header(header::ALLOW, value),
                    Err(_) => error,
                })
            }
            Ok(Match::NotFound) => Routed::Refused(ApiError::with_status(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                format!("no route for {} {path}", req.method()),
            )),
            Err(e) => Routed::Refused(ApiError::new(Code::InvalidArgument, e.to_string())),
        }
    }

    /// The HTTP server span of a request: `{method} {route}` (just `{method}` when no route
    /// matched), continuing the caller's `traceparent`, with the request id in its baggage.
    /// None when spans are not exported.
    fn server_span(&self, req: &Request<Incoming>, endpoint: Option<&Endpoint>) -> Span {
        if !telemetry::spans_on() {
            return Span::none();
        }
        let name = match endpoint.and_then(|e| self.span_names.get(e.slot)) {
            Some(name) => name.as_str(),
            None => req.method().as_str(),
        };
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "http.server",
            otel.name = name,
            otel.kind = "server",
            http.request.method = req.method().as_str(),
            http.route = endpoint.map(|e| e.template.as_str()),
            url.path = req.uri().path(),
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        propagate::with_current(|call| propagate::start(&span, call));
        span
    }

    /// The deadlines of a connection accepted now, as `[gateway]` says.
    fn connection_limits(&self) -> Limits {
        let settings = self.settings.get();
        Limits {
            header_read_timeout: settings.header_read_timeout(),
            idle_timeout: settings.idle_timeout(),
        }
    }

    /// The admin listener's answer: `/metrics`, `/readyz` and `/healthz` whatever
    /// `gateway.public_operations` says, 404 for any other path.
    pub async fn answer_operations(&self, req: Request<Incoming>) -> HttpResponse {
        if !OPERATIONS.contains(&req.uri().path()) {
            return plain_answer(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                Bytes::from_static(
                    b"not found: the gateway's admin listener serves /metrics, /readyz, /healthz\n",
                ),
            );
        }
        let (id, _) = request_id(req.headers());
        match self
            .own_routes
            .answer(&req, &self.metrics, self.api.upstreams())
            .await
        {
            Some(Ok(response)) => response,
            Some(Err(error)) => error.into_response(&id),
            None => ApiError::new(Code::Internal, "built-in route lost").into_response(&id),
        }
    }

    /// Counts an API request in flight, or refuses it (503) past
    /// `gateway.max_concurrent_requests`; the gateway's own endpoints are always admitted.
    fn admit(&self, path: &str) -> Result<Option<Admitted<'_>>, ApiError> {
        if is_own_route(path, self.settings.get().public_operations) {
            return Ok(None);
        }
        let limit = self.settings.get().max_concurrent_requests;
        admission::admit(&self.in_flight, limit).map(Some)
    }
}

/// Where a request goes.
enum Routed<'a> {
    /// One of the gateway's own endpoints (`/healthz`, `/metrics`, the documents).
    OwnRoute,
    /// A CORS preflight.
    Preflight,
    /// An API route, with its path variables.
    Endpoint(Arc<Endpoint>, Vec<(&'a [String], String)>),
    /// Refused before routing finished (431, 404, 405, a malformed path).
    Refused(ApiError),
}

/// Records the answer's status on the request's span; a 5xx is an error of the server span.
fn record_http_status(span: &Span, result: &Result<HttpResponse, ApiError>) {
    let status = match result {
        Ok(response) => response.status(),
        Err(error) => error.status,
    };
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// Bytes of the request line and headers, as HTTP/1.1 would carry them.
fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use futures::future::join_all;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };
    use tonic::Status;

    use crate::test_gateway::{fake_upstream, gateway, send};

    /// A gateway whose upstream answers every call NOT_FOUND (no call is expected to reach it).
    async fn refusing_gateway() -> std::net::SocketAddr {
        let upstream = fake_upstream(Arc::new(|_path| {
            Box::pin(async { weft_mesh::grpc::refusal(Status::not_found("no such order")) })
        }))
        .await;
        gateway(upstream, &[]).await
    }

    #[tokio::test]
    async fn a_path_ending_in_a_declared_verb_is_only_the_verb_routes() {
        let gateway = refusing_gateway().await;
        // `GET /v1/orders/{id}` would take `o1:cancel` for an id; the path is CancelOrder's.
        for method in ["GET", "DELETE", "OPTIONS"] {
            let answer = send(gateway, method, "/v1/orders/o1:cancel", &[]).await;
            assert_eq!(answer.status, 405, "{method}: {answer:?}");
            assert_eq!(answer.header("allow"), Some("POST"), "{method}: {answer:?}");
            assert_eq!(answer.body["code"], 12, "UNIMPLEMENTED");
        }
        // A suffix that is no route's verb is data: GetOrder's route (which wants a token).
        let answer = send(gateway, "GET", "/v1/orders/o1:uncancel", &[]).await;
        assert_eq!(answer.status, 401, "{answer:?}");
        let answer = send(gateway, "PUT", "/v1/orders/o1:uncancel", &[]).await;
        assert_eq!(answer.header("allow"), Some("GET"), "{answer:?}");
    }

    // --- slow and idle clients ---

    /// Bound of every wait in these tests: they stop by themselves.
    const WAIT: Duration = Duration::from_secs(20);

    /// A gateway with these `[gateway]` connection settings, in front of an upstream that
    /// answers every call NOT_FOUND after `delay`.
    async fn gateway_with(settings: &[(&str, &str)], delay: Duration) -> std::net::SocketAddr {
        let upstream = fake_upstream(Arc::new(move |_path| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                weft_mesh::grpc::refusal(Status::not_found("no such product"))
            })
        }))
        .await;
        gateway(upstream, settings).await
    }

    /// Sends `GET path` on a keep-alive connection and reads the answer's status; None when
    /// the connection is closed instead.
    async fn get(stream: &mut TcpStream, path: &str) -> Option<u16> {
        let request = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        read_answer(stream).await
    }

    /// Reads one answer (head, then a `content-length` body); None when the connection closes.
    async fn read_answer(stream: &mut TcpStream) -> Option<u16> {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .split("\r\n")
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        while raw.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
        head.get(9..12)?.parse().ok()
    }

    /// How long after `since` the server closed `stream` (reading until it does, sending
    /// nothing); None if it did not within [`WAIT`].
    async fn closed_after(stream: &mut TcpStream, since: Instant) -> Option<Duration> {
        let mut sink = [0u8; 1024];
        tokio::time::timeout(WAIT, async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return since.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
    }

    /// Raises the soft limit on open files to `needed` if it is lower (within the hard limit).
    fn ensure_open_files(needed: u64) {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some_and(|current| current < needed) {
            let raised = limit.maximum.map_or(needed, |max| max.min(needed));
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(raised),
                    maximum: limit.maximum,
                },
            )
            .expect("raise the soft limit on open files");
            assert!(
                raised >= needed,
                "this test needs {needed} open files; the hard limit is {raised}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_and_slow_header_clients_leave_a_normal_client_fast_and_slow_ones_are_cut_off() {
        const IDLE: usize = 2000;
        const SLOW: usize = 200;
        const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
        // Both ends of every connection are in this process, and then some.
        ensure_open_files(2 * (IDLE + SLOW) as u64 + 1000);
        let gateway = gateway_with(
            &[
                ("WEFT_GATEWAY__HEADER_READ_TIMEOUT_MS", "2000"),
                ("WEFT_GATEWAY__IDLE_TIMEOUT_MS", "60000"),
                ("WEFT_GATEWAY__MAX_CONNECTIONS", "5000"),
            ],
            Duration::ZERO,
        )
        .await;
        tokio::time::timeout(Duration::from_secs(90), async {
            // 2,000 keep-alive connections, each served once, then idle.
            let mut idle = Vec::with_capacity(IDLE);
            for _ in 0..IDLE / 200 {
                let batch = join_all((0..200).map(|_| async {
                    let mut stream = TcpStream::connect(gateway).await.unwrap();
                    assert_eq!(get(&mut stream, "/healthz").await, Some(200));
                    stream
                }))
                .await;
                idle.extend(batch);
            }

            // 200 clients sending their head one byte a second: it would take them a minute.
            let mut slow = Vec::with_capacity(SLOW);
            for _ in 0..SLOW {
                let stream = TcpStream::connect(gateway).await.unwrap();
                let opened = Instant::now();
                let (mut read, mut write) = stream.into_split();
                let dribble = tokio::spawn(async move {
                    let head = b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                    for byte in head {
                        if write.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
                slow.push(tokio::spawn(async move {
                    let mut sink = [0u8; 1024];
                    let closed = tokio::time::timeout(WAIT, async {
                        loop {
                            match read.read(&mut sink).await {
                                Ok(0) | Err(_) => return opened.elapsed(),
                                Ok(_) => {}
                            }
                        }
                    })
                    .await
                    .ok();
                    dribble.abort();
                    closed
                }));
            }

            // A normal client meanwhile: a new connection and one request at a time.
            let mut latencies = Vec::new();
            for _ in 0..200 {
                let started = Instant::now();
                let mut stream = TcpStream::connect(gateway).await.unwrap();
                assert_eq!(get(&mut stream, "/healthz").await, Some(200));
                latencies.push(started.elapsed());
            }
            latencies.sort();
            let p99 = latencies[latencies.len() * 99 / 100 - 1];
            assert!(
                p99 < Duration::from_millis(50),
                "a normal client's p99 is {p99:?} next to {IDLE} idle and {SLOW} slow clients"
            );

            // The server closes every slow connection soon after the header timeout.
            for closed in join_all(slow).await {
                let closed = closed
                    .unwrap()
                    .expect("the gateway closes a connection whose head is not in");
                assert!(
                    closed >= HEADER_TIMEOUT - Duration::from_millis(100)
                        && closed <= HEADER_TIMEOUT + Duration::from_secs(3),
                    "a slow connection closed after {closed:?}, its header timeout is {HEADER_TIMEOUT:?}"
                );
            }

            // The idle keep-alive connections were not cut by the header timeout: each still
            // serves (its idle timeout is a minute).
            for batch in idle.chunks_mut(200) {
                let answers = join_all(batch.iter_mut().map(|s| get(s, "/healthz"))).await;
                assert!(answers.iter().all(|a| *a == Some(200)), "{answers:?}");
            }
        })
        .await
        .expect("the test stops by itself");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_at_the_header_timeout_and_an_idle_one_at_the_idle_timeout()
     {
        let gateway = gateway_with(
            &[
                ("WEFT_GATEWAY__HEADER_READ_TIMEOUT_MS", "1000"),
                ("WEFT_GATEWAY__IDLE_TIMEOUT_MS", "2000"),
            ],
            Duration::from_millis(3000),
        )
        .await;
        let (silent, idle, busy) = tokio::join!(
            async {
                // Connects and sends nothing.
                let mut stream = TcpStream::connect(gateway).await.unwrap();
                closed_after(&mut stream, Instant::now()).await
            },
            async {
                // Served once, then sends nothing.
                let mut stream = TcpStream::connect(gateway).await.unwrap();
                assert_eq!(get(&mut stream, "/healthz").await, Some(200));
                closed_after(&mut stream, Instant::now()).await
            },
            async {
                // A request whose upstream takes longer than the idle timeout is answered.
                let mut stream = TcpStream::connect(gateway).await.unwrap();
                get(&mut stream, "/v1/products/p1").await
            },
        );
        let silent = silent.expect("the gateway closes a connection that sends nothing");
        assert!(
            silent >= Duration::from_millis(900) && silent <= Duration::from_secs(4),
            "closed after {silent:?}, header timeout 1 s"
        );
        let idle = idle.expect("the gateway closes an idle keep-alive connection");
        assert!(
            idle >= Duration::from_millis(1900) && idle <= Duration::from_secs(5),
            "closed after {idle:?}, idle timeout 2 s"
        );
        assert_eq!(busy, Some(404), "the slow call's answer arrives");
    }

    #[tokio::test]
    async fn a_body_not_sent_in_time_is_answered_408() {
        let gateway = gateway_with(
            &[("WEFT_GATEWAY__BODY_READ_TIMEOUT_MS", "1000")],
            Duration::ZERO,
        )
        .await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        // 100 bytes announced, one sent.
        stream
            .write_all(
                b"POST /v1/auth/login HTTP/1.1\r\nhost: gateway\r\n\
                  content-type: application/json\r\ncontent-length: 100\r\n\r\n{",
            )
            .await
            .unwrap();
        let started = Instant::now();
        let status = tokio::time::timeout(WAIT, read_answer(&mut stream))
            .await
            .expect("an answer");
        assert_eq!(status, Some(408));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took <= Duration::from_secs(4),
            "answered after {took:?}, body read timeout 1 s"
        );
    }

    #[tokio::test]
    async fn a_connection_beyond_max_connections_is_closed_while_the_first_ones_are_served() {
        let gateway = gateway_with(&[("WEFT_GATEWAY__MAX_CONNECTIONS", "3")], Duration::ZERO).await;
        let mut open = Vec::new();
        for _ in 0..3 {
            let mut stream = TcpStream::connect(gateway).await.unwrap();
            assert_eq!(get(&mut stream, "/healthz").await, Some(200));
            open.push(stream);
        }
        let mut fourth = TcpStream::connect(gateway).await.unwrap();
        let answer = tokio::time::timeout(WAIT, get(&mut fourth, "/healthz"))
            .await
            .expect("the fourth connection is closed, not kept waiting");
        assert_eq!(answer, None, "the fourth connection is closed unserved");
        for stream in &mut open {
            assert_eq!(
                get(stream, "/healthz").await,
                Some(200),
                "the first three serve"
            );
        }

        // One leaves: its place is free again.
        drop(open.pop());
        let served = tokio::time::timeout(WAIT, async {
            loop {
                let mut stream = TcpStream::connect(gateway).await.unwrap();
                if get(&mut stream, "/healthz").await == Some(200) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(served.is_ok(), "a new connection is served once one closed");
    }
}
