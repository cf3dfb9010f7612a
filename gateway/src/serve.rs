//! The gateway's HTTP server: the accept loop, and [`Gateway::handle`], the hyper service that
//! takes every request through the edge to its answer.
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
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tonic::Code;
use tracing::{Instrument as _, Span, field::Empty};
use weft_mesh::{
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
    cors,
    endpoint::Endpoint,
    error::ApiError,
    metrics::Metrics,
    own_routes::{OwnRoutes, is_own_route},
    request_id::request_id,
    response::HttpResponse,
    route::Match,
    table::RouteTable,
    tls,
    upstream::Upstream,
};

/// Serves the gateway as configured until SIGINT or SIGTERM, then drains.
pub async fn run(config: Arc<MeshConfig>) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway::new(config.clone())?);
    gateway.spawn_upkeep();
    let addr = config.gateway.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let tls = tls::acceptor(&config.gateway.tls)?;
    tracing::info!(addr = %local, tls = tls.is_some(), "gateway serving");

    // hyper refuses heads past its buffer with a bare 431; give it room so that the handler sees
    // heads up to 4x the limit and answers the contract's JSON 431 for them.
    let head_room = config.gateway.max_header_bytes.saturating_mul(4);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).max_buf_size(head_room);
    builder
        .http2()
        .max_header_list_size(u32::try_from(head_room).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let shutdown = weft_mesh::server::shutdown_signal();
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
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let service = hyper::service::service_fn(move |req| gateway.clone().handle(req, peer));
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        None => {
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Some(acceptor) => {
                            let stream = match tokio::time::timeout(
                                tls::HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; dropping connections");
    }
    tracing::info!("stopped");
    Ok(())
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
        let limit = self.settings.get().max_header_bytes;
        if head_size(req) > limit {
            return Routed::Refused(ApiError::with_status(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Code::ResourceExhausted,
                format!("request line and headers larger than {limit} bytes"),
            ));
        }
        if is_own_route(req.uri().path()) {
            return Routed::OwnRoute;
        }
        if req.method() == Method::OPTIONS && cors::enabled(&self.settings.get().cors) {
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

    /// Counts an API request in flight, or refuses it (503) past
    /// `gateway.max_concurrent_requests`; the gateway's own endpoints are always admitted.
    fn admit(&self, path: &str) -> Result<Option<Admitted<'_>>, ApiError> {
        if is_own_route(path) {
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
    use std::sync::Arc;

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
}
