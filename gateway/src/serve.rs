//! The gateway's HTTP server: edge policies around the transcoder.
//!
//! For each request, in order: request id; built-in endpoints (`/healthz`, `/readyz`,
//! `/metrics`, `/openapi.json`, `/docs`); the gateway-wide cap on requests in flight (503 with
//! `Retry-After: 1` at once past `gateway.max_concurrent_requests`); CORS preflight; routing
//! (404, 405 with `Allow`); authentication of non-public routes (401 with
//! `WWW-Authenticate: Bearer`, before any upstream call); rate limits (429 with `Retry-After`
//! and `RateLimit-*`, keyed by the token's subject or the client IP, see
//! [`weft_mesh::ratelimit`]); body limits and content type (413, 415); transcoding (400); the
//! upstream call; the JSON answer. Every answer carries `X-Request-Id`, and errors the
//! contract's JSON; answers on rate-limited routes carry `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tonic::Code;
use tracing::{Instrument as _, Span, field::Empty};
use weft_mesh::{
    ServiceName,
    auth::{JwtVerifier, Principal, Role, bearer_token},
    config::{GatewayConfig, MeshConfig},
    live::Live,
    propagate::{self, CallContext, REQUEST_ID_HEADER},
    ratelimit::{ANY_ROUTE, Decision, RateLimitPolicy, RateLimiter},
    reload,
    telemetry::{self, SPAN_TARGET},
};
use weft_proto::Access;

use crate::{
    endpoint::{BodyRule, Endpoint},
    error::ApiError,
    metrics::Metrics,
    request_message,
    route::Match,
    table::RouteTable,
    upstream::Upstream,
};

/// Everything a request needs, built once at start.
pub struct Gateway {
    table: RouteTable,
    upstreams: Vec<Upstream>,
    verifier: JwtVerifier,
    /// `[gateway]` as mesh-config says now: limits and CORS follow reloads.
    settings: Live<GatewayConfig>,
    /// Each route's upstream timeout, by [`Endpoint::slot`], as mesh-config says now.
    route_timeouts: Live<Vec<Duration>>,
    openapi: Bytes,
    metrics: Metrics,
    /// Server span names (`POST /v1/orders`), by [`Endpoint::slot`], made once; also the
    /// route names of rate limit rules.
    span_names: Vec<String>,
    /// Buckets of the rate limits (`gateway.rate_limit`, following reloads).
    rate_limiter: RateLimiter,
    /// API requests being answered, against `gateway.max_concurrent_requests`.
    in_flight: AtomicUsize,
}

type HttpResponse = Response<Full<Bytes>>;

const DOCS_HTML: &str = include_str!("../assets/docs.html");

impl Gateway {
    /// Builds the route table, upstream channels and documents from `config`.
    pub fn new(config: Arc<MeshConfig>) -> anyhow::Result<Self> {
        let table = RouteTable::build(&config)?;
        let upstreams = table
            .upstreams
            .iter()
            .map(|spec| Upstream::new(spec, &config))
            .collect::<Result<Vec<_>, _>>()?;
        // The key fetches share the auth routes' channel: one balancer (and breaker) per
        // upstream.
        let auth = table
            .upstreams
            .iter()
            .position(|spec| spec.service == Some(ServiceName::Auth))
            .map(|i| upstreams[i].channel())
            .ok_or_else(|| anyhow::anyhow!("the route table has no weft-auth upstream"))?;
        let verifier = JwtVerifier::new(
            weft_mesh::client::with_context(auth, &config.upstreams.auth),
            &config.jwt,
            "weft-gateway",
        );
        let openapi = Bytes::from(crate::openapi::document(&table).to_string());
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
                method.clone_from(&endpoint.full_method);
            }
        }
        let route_timeouts = reload::policy(&config, move |config| {
            methods
                .iter()
                .map(|method| config.gateway.route_timeout(method))
                .collect()
        });
        warn_unknown_routes(&rate_limits.get(), &span_names);
        Ok(Self {
            span_names,
            table,
            upstreams,
            verifier,
            settings,
            route_timeouts,
            openapi,
            metrics,
            rate_limiter: RateLimiter::new(rate_limits),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The upstream timeout of `endpoint`'s route, as mesh-config says now.
    fn route_timeout(&self, endpoint: &Endpoint) -> Duration {
        self.route_timeouts
            .get()
            .get(endpoint.slot)
            .copied()
            .unwrap_or(endpoint.timeout)
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
                        gateway.rate_limiter.upkeep();
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
            self.cors_headers(&origin, &mut response);
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
            Routed::Builtin => match self.builtin(&req).await {
                Some(response) => (None, response),
                None => (
                    None,
                    Err(ApiError::new(Code::Internal, "built-in route lost")),
                ),
            },
            Routed::Preflight => (None, Ok(self.preflight(&req))),
            Routed::Refused(error) => {
                let span = self.server_span(&req, None);
                let result = Err(error);
                record_http_status(&span, &result);
                (None, result)
            }
            Routed::Endpoint(endpoint, bindings) => {
                let span = self.server_span(&req, Some(&endpoint));
                let result = self
                    .call(&endpoint, bindings, req, peer)
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
        if is_builtin(req.uri().path()) {
            return Routed::Builtin;
        }
        if req.method() == Method::OPTIONS && self.cors_enabled() {
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
        if is_builtin(path) {
            return Ok(None);
        }
        let limit = self.settings.get().max_concurrent_requests;
        Admitted::take(&self.in_flight, limit)
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    Code::Unavailable,
                    format!("overloaded: {limit} requests already in flight at the gateway"),
                )
                .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            })
    }

    /// Authenticates, applies the rate limits, then forwards; answers after the rate limit
    /// check carry its `RateLimit-*` headers, errors included.
    async fn call(
        &self,
        endpoint: &Endpoint,
        bindings: Vec<(&[String], String)>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<HttpResponse, ApiError> {
        let principal = self.authenticate(endpoint, req.headers()).await?;
        let route = self
            .span_names
            .get(endpoint.slot)
            .map_or("", String::as_str);
        let decision = self.rate_limiter.check(
            route,
            peer.ip(),
            req.headers(),
            principal.as_ref().map(|p| p.subject.as_str()),
        );
        if decision.is_denied() {
            return Err(rate_limited(route, &decision));
        }
        let result = self.forward(endpoint, bindings, req).await;
        with_headers(result, decision.headers())
    }

    /// Reads, transcodes and forwards the request to its upstream; answers its reply.
    async fn forward(
        &self,
        endpoint: &Endpoint,
        bindings: Vec<(&[String], String)>,
        req: Request<Incoming>,
    ) -> Result<HttpResponse, ApiError> {
        let (parts, body) = req.into_parts();
        let body = match endpoint.body {
            BodyRule::None => Bytes::new(),
            _ => self.read_body(&parts.headers, body).await?,
        };
        let message = request_message::build_request(
            endpoint,
            bindings,
            parts.uri.query(),
            &body,
            self.settings.get().max_json_depth,
        )
        .map_err(|e| ApiError::new(Code::InvalidArgument, e.to_string()))?;
        let upstream = &self.upstreams[endpoint.upstream];
        let call_started = Instant::now();
        let reply = upstream
            .unary(
                endpoint.grpc_path.clone(),
                message,
                endpoint.reply.clone(),
                &parts.headers,
                self.route_timeout(endpoint),
            )
            .await;
        let code = reply
            .as_ref()
            .map_or_else(|status| status.code(), |_| Code::Ok);
        self.metrics
            .record_upstream(endpoint, code, call_started.elapsed());
        let reply = reply.map_err(|status| ApiError::from_status(&status))?;
        let mut response = Response::new(Full::new(Bytes::from(reply)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    /// Checks the bearer token of a non-public route before anything reaches an upstream;
    /// its principal, None on a public route (whose token, if any, is not verified here).
    async fn authenticate(
        &self,
        endpoint: &Endpoint,
        headers: &http::HeaderMap,
    ) -> Result<Option<Principal>, ApiError> {
        if endpoint.access == Access::Public {
            return Ok(None);
        }
        let unauthorized = |message: String, challenge: &'static str| {
            ApiError::new(Code::Unauthenticated, message).header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            )
        };
        let token = bearer_token(headers)
            .ok_or_else(|| unauthorized("this route needs a bearer token".into(), "Bearer"))?;
        let principal = self.verifier.verify(token).await.map_err(|e| match e {
            weft_mesh::auth::VerifyError::KeysUnavailable => ApiError::new(
                Code::Unavailable,
                "cannot verify tokens: signing keys unavailable",
            ),
            e => unauthorized(e.to_string(), "Bearer error=\"invalid_token\""),
        })?;
        let allowed = match endpoint.access {
            Access::Admin => principal.role == Role::Admin,
            Access::Service => principal.role == Role::Service,
            _ => true,
        };
        if allowed {
            Ok(Some(principal))
        } else {
            Err(ApiError::new(
                Code::PermissionDenied,
                "this route is for administrators",
            ))
        }
    }

    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, ApiError> {
        let limit = self.settings.get().max_body_bytes;
        let too_large = || {
            ApiError::with_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
                format!("request body larger than {limit} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A client answered before it has sent its body often reports a write error instead of
        // our 413; so an oversized body is read and thrown away, up to a bound, before answering.
        let drain_cap = limit.saturating_mul(DRAIN_FACTOR) as u64;
        if declared.is_some_and(|len| len > limit as u64) {
            if declared.is_some_and(|len| len <= drain_cap) {
                discard(body, drain_cap).await;
            }
            return Err(too_large());
        }
        let mut body = body;
        let mut bytes = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    Code::InvalidArgument,
                    format!("cannot read request body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > limit {
                    discard(body, drain_cap).await;
                    return Err(too_large());
                }
                bytes.extend_from_slice(&data);
            }
        }
        let bytes = bytes.freeze();
        if !bytes.iter().all(u8::is_ascii_whitespace) && !is_json(headers) {
            return Err(ApiError::with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
                "request body must be JSON (Content-Type: application/json)",
            ));
        }
        Ok(bytes)
    }

    async fn builtin(&self, req: &Request<Incoming>) -> Option<Result<HttpResponse, ApiError>> {
        /// The docs page's vendored assets (see assets/README.md), served under `/docs/`.
        const DOCS_ASSETS: [(&str, &str, &[u8]); DOCS_ASSET_PATHS.len()] = [
            (
                "/docs/swagger-ui-bundle.js",
                "text/javascript; charset=utf-8",
                include_bytes!("../assets/swagger-ui-bundle.js"),
            ),
            (
                "/docs/swagger-ui.css",
                "text/css; charset=utf-8",
                include_bytes!("../assets/swagger-ui.css"),
            ),
            (
                "/docs/docs.js",
                "text/javascript; charset=utf-8",
                include_bytes!("../assets/docs.js"),
            ),
            (
                "/docs/swagger-ui-bundle.js.LICENSE.txt",
                "text/plain; charset=utf-8",
                include_bytes!("../assets/swagger-ui-bundle.js.LICENSE.txt"),
            ),
        ];
        let path = req.uri().path();
        if !is_builtin(path) {
            return None;
        }
        let asset = DOCS_ASSETS.iter().find(|(asset, _, _)| *asset == path);
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Some(Err(ApiError::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!("{path} answers GET only"),
            )
            .header(header::ALLOW, HeaderValue::from_static("GET, HEAD"))));
        }
        if let Some((_, content_type, bytes)) = asset {
            let mut response = Response::new(Full::new(Bytes::from_static(bytes)));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            return Some(Ok(response));
        }
        Some(Ok(match path {
            "/healthz" => json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
            "/readyz" => self.readiness().await,
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/openapi.json" => json_response(StatusCode::OK, self.openapi.clone()),
            "/docs/" => {
                // The page's URLs are relative to `/docs`; relative so it works behind a prefix.
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("../docs"));
                response
            }
            _ => {
                let mut response =
                    Response::new(Full::new(Bytes::from_static(DOCS_HTML.as_bytes())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                response
            }
        }))
    }

    /// 200 when every upstream's gRPC health answers SERVING, 503 otherwise, with each state.
    async fn readiness(&self) -> HttpResponse {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let checks = self.upstreams.iter().map(|upstream| async move {
            let mut client = HealthClient::new(upstream.channel());
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            request.set_timeout(std::time::Duration::from_secs(1));
            let state = match tokio::time::timeout(
                std::time::Duration::from_secs(1),
                client.check(request),
            )
            .await
            {
                Ok(Ok(reply)) => match reply.into_inner().status {
                    1 => "SERVING",
                    _ => "NOT_SERVING",
                },
                // A server without the health service is up as far as we can tell.
                Ok(Err(status)) if status.code() == Code::Unimplemented => "SERVING",
                Ok(Err(_)) | Err(_) => "UNREACHABLE",
            };
            (upstream.name.clone(), state)
        });
        let states = futures::future::join_all(checks).await;
        let ready = states.iter().all(|(_, state)| *state == "SERVING");
        let body = serde_json::json!({
            "status": if ready { "ready" } else { "not ready" },
            "upstreams": states.into_iter().map(|(name, state)| (name, serde_json::Value::from(state))).collect::<serde_json::Map<_, _>>(),
        });
        json_response(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            Bytes::from(body.to_string()),
        )
    }

    fn cors_enabled(&self) -> bool {
        !self.settings.get().cors.allowed_origins.is_empty()
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.settings
            .get()
            .cors
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.as_bytes() == origin.as_bytes())
    }

    fn cors_headers(&self, origin: &HeaderValue, response: &mut HttpResponse) {
        if !self.cors_enabled() || !self.origin_allowed(origin) {
            return;
        }
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "x-request-id, retry-after, www-authenticate, ratelimit-limit, \
                 ratelimit-remaining, ratelimit-reset",
            ),
        );
    }

    fn preflight(&self, req: &Request<Incoming>) -> HttpResponse {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return response;
        };
        if !self.origin_allowed(origin) {
            return response;
        }
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, x-request-id, traceparent, tracestate, baggage",
            ),
        );
        let max_age = self.settings.get().cors.max_age_secs;
        if max_age > 0 {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age));
        }
        response
    }
}

/// An API request counted in flight until dropped.
struct Admitted<'a>(&'a AtomicUsize);

impl<'a> Admitted<'a> {
    /// Counts one more request unless `limit` are already in flight.
    fn take(in_flight: &'a AtomicUsize, limit: usize) -> Option<Self> {
        let before = in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(in_flight);
        (before < limit).then_some(admitted)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The 429 of a request `decision` refused on `route`.
fn rate_limited(route: &str, decision: &Decision) -> ApiError {
    let message = decision
        .message(route)
        .unwrap_or_else(|| format!("rate limit exceeded for {route}"));
    let mut error = ApiError::new(Code::ResourceExhausted, message);
    error.headers.extend(decision.headers());
    error
}

/// Adds `headers` to the answer, success or error.
fn with_headers(
    result: Result<HttpResponse, ApiError>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(mut response) => {
            response.headers_mut().extend(headers);
            Ok(response)
        }
        Err(mut error) => {
            error.headers.extend(headers);
            Err(error)
        }
    }
}

/// Warns about rate limit rules naming routes the gateway does not have (a typo would
/// otherwise silently limit nothing).
fn warn_unknown_routes(policy: &RateLimitPolicy, route_names: &[String]) {
    for rule in &policy.rules {
        for route in &rule.routes {
            if route != ANY_ROUTE && !route_names.iter().any(|name| name == route) {
                tracing::warn!(
                    rule = rule.name,
                    route,
                    "rate limit rule names no route of the gateway; it limits nothing there"
                );
            }
        }
    }
}

/// Where a request goes.
enum Routed<'a> {
    /// A built-in endpoint (`/healthz`, `/metrics`, the documents).
    Builtin,
    /// A CORS preflight.
    Preflight,
    /// An API route, with its path variables.
    Endpoint(Arc<Endpoint>, Vec<(&'a [String], String)>),
    /// Refused before routing finished (431, 404, 405, a malformed path).
    Refused(ApiError),
}

/// Paths of the docs page's assets (the bytes are in [`Gateway::builtin`]).
const DOCS_ASSET_PATHS: [&str; 4] = [
    "/docs/swagger-ui-bundle.js",
    "/docs/swagger-ui.css",
    "/docs/docs.js",
    "/docs/swagger-ui-bundle.js.LICENSE.txt",
];

/// Whether `path` is one of the gateway's own endpoints.
fn is_builtin(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/docs" | "/docs/"
    ) || DOCS_ASSET_PATHS.contains(&path)
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

/// An oversized body is drained (read and dropped) up to this many times the body limit.
const DRAIN_FACTOR: usize = 8;

/// Reads and drops the rest of `body`, up to `cap` bytes, so the connection can carry our answer.
async fn discard(mut body: Incoming, cap: u64) {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > cap {
                break;
            }
        }
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

/// The incoming request id if acceptable, else a new one; as text and as a header value.
fn request_id(headers: &http::HeaderMap) -> (String, HeaderValue) {
    if let Some(incoming) = propagate::incoming_request_id(headers) {
        return incoming;
    }
    let id = new_request_id();
    let value = HeaderValue::from_str(&id).expect("request ids are header-safe");
    (id, value)
}

/// A new request id: 32 hex digits, a per-thread random prefix (drawn once from the OS) and a
/// counter scrambled by a bijection, so ids never repeat within a thread and collide across
/// threads and processes only if 64 random bits do. Ids correlate logs and are no secret;
/// `Uuid::new_v4` cost a `getrandom` system call on every request without a client id.
fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new({
            let seed = uuid::Uuid::new_v4().as_u128();
            ((seed >> 64) as u64, seed as u64)
        });
    }
    let (prefix, count) = STATE.with(|state| {
        let (prefix, count) = state.get();
        state.set((prefix, count.wrapping_add(1)));
        (prefix, count)
    });
    // splitmix64's finaliser: a bijection on u64, so distinct counts give distinct ids.
    let mut z = count.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let value = (u128::from(prefix) << 64) | u128::from(z);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for shift in (0..32).rev() {
        id.push(char::from(HEX[((value >> (shift * 4)) & 0xf) as usize]));
    }
    id
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|media| {
            let media = media.trim().to_ascii_lowercase();
            media == "application/json"
                || (media.starts_with("application/") && media.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn json_response(status: StatusCode, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };
    use tonic::Status;

    type Answer =
        Arc<dyn Fn(String) -> BoxFuture<'static, Response<tonic::body::Body>> + Send + Sync>;

    /// A gRPC server on loopback answering every call with `answer(path)`.
    async fn fake_upstream(answer: Answer) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let answer = answer.clone();
                        async move { Ok::<_, Infallible>(answer(req.uri().path().to_owned()).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    /// A gateway on loopback whose upstreams are all `upstream`, with `env` config overrides.
    async fn gateway(upstream: SocketAddr, env: &[(&str, &str)]) -> SocketAddr {
        let endpoint = format!("http://{upstream}");
        let mut vars: Vec<(String, String)> = ["AUTH", "USER", "ORDER"]
            .iter()
            .map(|name| {
                (
                    format!("WEFT_UPSTREAMS__{name}__ENDPOINT"),
                    endpoint.clone(),
                )
            })
            .collect();
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = MeshConfig::load_from(None, vars).expect("test config is valid");
        let gateway = Arc::new(Gateway::new(Arc::new(config)).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let gateway = gateway.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| gateway.clone().handle(req, peer));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    /// An HTTP answer as a client sees it.
    #[derive(Debug)]
    struct Answered {
        status: u16,
        headers: Vec<(String, String)>,
        body: serde_json::Value,
    }

    impl Answered {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends one HTTP/1.1 request with `headers` (and a JSON body for POST) and reads the answer.
    async fn send(
        gateway: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answered {
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        let body = if method == "POST" { "{}" } else { "" };
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers = lines
            .filter_map(|line| line.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        Answered {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        }
    }

    #[tokio::test]
    async fn a_burst_on_login_gets_429_with_retry_after_while_another_client_is_unaffected() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let upstream = fake_upstream(Arc::new(move |_path| {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {
                weft_mesh::grpc::refusal(Status::unauthenticated("wrong email or password"))
            })
        }))
        .await;
        // Behind a trusted proxy (the test's loopback), X-Forwarded-For names the client.
        let gateway = gateway(
            upstream,
            &[
                (
                    "WEFT_GATEWAY__RATE_LIMIT__TRUSTED_PROXIES",
                    "[\"127.0.0.1\", \"::1\"]",
                ),
                (
                    "WEFT_GATEWAY__RATE_LIMIT__RULES",
                    "[{ name = \"credentials\", routes = [\"POST /v1/auth/login\", \
                     \"POST /v1/auth/register\"], burst = 2, per_second = 0.01 }]",
                ),
            ],
        )
        .await;
        let stuffer = [("x-forwarded-for", "198.51.100.1")];
        for remaining in ["1", "0"] {
            let answer = send(gateway, "POST", "/v1/auth/login", &stuffer).await;
            assert_eq!(answer.status, 401, "{answer:?}");
            assert_eq!(answer.header("ratelimit-limit"), Some("2"), "{answer:?}");
            assert_eq!(
                answer.header("ratelimit-remaining"),
                Some(remaining),
                "{answer:?}"
            );
        }
        let refused = send(gateway, "POST", "/v1/auth/register", &stuffer).await;
        assert_eq!(
            refused.status, 429,
            "the third credential request is over the burst"
        );
        assert_eq!(refused.header("retry-after"), Some("100"), "{refused:?}");
        assert_eq!(refused.header("ratelimit-limit"), Some("2"));
        assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
        assert_eq!(refused.header("ratelimit-reset"), Some("100"));
        assert!(refused.header("x-request-id").is_some());
        assert_eq!(refused.body["code"], 8, "RESOURCE_EXHAUSTED");
        assert_eq!(
            refused.body["message"],
            "rate limit exceeded for POST /v1/auth/register: try again in 100 s"
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "a refused request reaches no upstream"
        );

        let other = send(
            gateway,
            "POST",
            "/v1/auth/login",
            &[("x-forwarded-for", "198.51.100.2")],
        )
        .await;
        assert_eq!(
            other.status, 401,
            "another client has its own bucket: {other:?}"
        );
        // A route no rule names carries no RateLimit headers.
        let products = send(gateway, "GET", "/v1/products", &stuffer).await;
        assert_ne!(products.status, 429);
        assert!(products.header("ratelimit-limit").is_none(), "{products:?}");
    }

    #[tokio::test]
    async fn upstream_overload_answers_carry_its_pushback_as_retry_after() {
        let upstream = fake_upstream(Arc::new(|path: String| {
            Box::pin(async move {
                if path.ends_with("/Login") {
                    weft_mesh::grpc::refusal_with_pushback(
                        Status::unavailable("overloaded: 1024 calls already in flight"),
                        Some(std::time::Duration::from_millis(2500)),
                    )
                } else {
                    weft_mesh::grpc::refusal_with_pushback(
                        Status::resource_exhausted(
                            "overloaded: 4 calls of weft.order.v1.OrderService/ListProducts already in flight",
                        ),
                        Some(std::time::Duration::from_secs(1)),
                    )
                }
            })
        }))
        .await;
        let gateway = gateway(upstream, &[("WEFT_GATEWAY__RATE_LIMIT__RULES", "[]")]).await;
        let shed = send(gateway, "POST", "/v1/auth/login", &[]).await;
        assert_eq!(shed.status, 503, "{shed:?}");
        assert_eq!(shed.header("retry-after"), Some("3"), "2500 ms rounded up");
        assert_eq!(shed.body["code"], 14);
        assert_eq!(
            shed.body["message"],
            "overloaded: 1024 calls already in flight"
        );
        let limited = send(gateway, "GET", "/v1/products", &[]).await;
        assert_eq!(limited.status, 429, "{limited:?}");
        assert_eq!(limited.header("retry-after"), Some("1"));
        assert_eq!(limited.body["code"], 8);
    }

    #[tokio::test]
    async fn requests_beyond_the_gateway_cap_get_503_at_once_and_probes_still_answer() {
        let arrived = Arc::new(tokio::sync::Notify::new());
        let notify = arrived.clone();
        let upstream = fake_upstream(Arc::new(move |_path| {
            let notify = notify.clone();
            Box::pin(async move {
                notify.notify_one();
                // Never answers: the gateway gives up at the route timeout and resets the call.
                std::future::pending::<Response<tonic::body::Body>>().await
            })
        }))
        .await;
        let gateway = gateway(
            upstream,
            &[
                ("WEFT_GATEWAY__MAX_CONCURRENT_REQUESTS", "1"),
                ("WEFT_GATEWAY__ROUTE_TIMEOUT_MS", "300"),
            ],
        )
        .await;
        let slow = tokio::spawn(send(gateway, "GET", "/v1/products", &[]));
        arrived.notified().await;

        let started = Instant::now();
        let refused = send(gateway, "GET", "/v1/products/p1", &[]).await;
        assert!(
            started.elapsed() < std::time::Duration::from_millis(250),
            "refused at once"
        );
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(
            refused.body["message"],
            "overloaded: 1 requests already in flight at the gateway"
        );
        assert_eq!(
            send(gateway, "GET", "/healthz", &[]).await.status,
            200,
            "probes are not counted"
        );

        // Admitted: it ends at its route timeout (how the timeout is reported is not this test's).
        let slow = slow.await.unwrap();
        assert_ne!(
            slow.status, 503,
            "the admitted request was served: {slow:?}"
        );
        let after = send(gateway, "GET", "/v1/products/p1", &[]).await;
        assert_ne!(
            after.status, 503,
            "admitted again once the slot is free: {after:?}"
        );
    }

    #[test]
    fn admission_counts_up_to_the_limit_and_gives_slots_back_on_drop() {
        let in_flight = AtomicUsize::new(0);
        let first = Admitted::take(&in_flight, 2).expect("1 of 2");
        let second = Admitted::take(&in_flight, 2).expect("2 of 2");
        assert!(Admitted::take(&in_flight, 2).is_none(), "3 of 2 is refused");
        assert_eq!(
            in_flight.load(Ordering::Relaxed),
            2,
            "a refusal gives its count back"
        );
        drop(first);
        let _third = Admitted::take(&in_flight, 2).expect("a slot came back");
        drop(second);
        assert_eq!(in_flight.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn new_request_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && propagate::is_valid_request_id(id))
        );
        assert!(
            ids.iter()
                .all(|id| id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        );
        // Another thread draws another prefix.
        let other = std::thread::spawn(new_request_id).join().unwrap();
        let mine = new_request_id();
        assert_ne!(other[..16], mine[..16]);
    }

    #[test]
    fn a_valid_client_request_id_is_kept() {
        let mut headers = http::HeaderMap::new();
        let mut sensitive = HeaderValue::from_static("abc-123");
        sensitive.set_sensitive(true);
        headers.insert(REQUEST_ID_HEADER, sensitive);
        let (id, value) = request_id(&headers);
        assert_eq!(
            (id.as_str(), &value),
            ("abc-123", &HeaderValue::from_static("abc-123"))
        );
        assert!(
            !value.is_sensitive(),
            "as a value made from the id would be"
        );
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("bad id!"));
        let (id, value) = request_id(&headers);
        assert_eq!(id.len(), 32);
        assert_eq!(value, id.as_str());
    }
}
