//! The API call path: a request routed to one of the API's endpoints, from its checks to its
//! JSON answer.
//!
//! In order: authentication of non-public routes (401 with `WWW-Authenticate: Bearer`, 403
//! for a route of another role; before any upstream call); the rate limits (429, see
//! [`crate::admission`]); the body, within `gateway.max_body_bytes`, read within
//! `gateway.body_read_timeout_ms` and only as JSON (413, 408, 415); the request message (400, see [`crate::request_message`]); the call to the route's
//! upstream under the route's timeout (see [`crate::upstream`]), whose reply comes back as
//! JSON or whose error as the contract's error.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tonic::Code;
use weft_mesh::contract::Access;
use weft_mesh::{
    auth::{AuthError, JwtVerifier, Principal, VerifyError},
    config::GatewayConfig,
    live::Live,
    ratelimit::RateLimiter,
};

use crate::{
    admission::{rate_limited, with_headers},
    endpoint::{BodyRule, Endpoint},
    error::ApiError,
    metrics::Metrics,
    request_message,
    response::{HttpResponse, json_response},
    upstream::Upstream,
};

/// What the API call path needs, built once at start.
pub(crate) struct ApiCalls {
    /// The upstreams, indexed by [`Endpoint::upstream`].
    upstreams: Vec<Upstream>,
    verifier: JwtVerifier,
    /// `[gateway]` as mesh-config says now: body and JSON limits follow reloads.
    settings: Live<GatewayConfig>,
    /// Each route's upstream timeout, by [`Endpoint::slot`], as mesh-config says now.
    route_timeouts: Live<Vec<Duration>>,
    /// Buckets of the rate limits (`gateway.rate_limit`, following reloads).
    rate_limiter: RateLimiter,
}

impl ApiCalls {
    /// The call path over these upstreams, token verifier, settings and rate limits.
    pub(crate) fn new(
        upstreams: Vec<Upstream>,
        verifier: JwtVerifier,
        settings: Live<GatewayConfig>,
        route_timeouts: Live<Vec<Duration>>,
        rate_limiter: RateLimiter,
    ) -> Self {
        Self {
            upstreams,
            verifier,
            settings,
            route_timeouts,
            rate_limiter,
        }
    }

    /// The upstreams, indexed by [`Endpoint::upstream`].
    pub(crate) fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The rate limiter's periodic upkeep (see [`RateLimiter::upkeep`]).
    pub(crate) fn upkeep(&self) {
        self.rate_limiter.upkeep();
    }

    /// The upstream timeout of `endpoint`'s route, as mesh-config says now.
    fn route_timeout(&self, endpoint: &Endpoint) -> Duration {
        self.route_timeouts
            .get()
            .get(endpoint.slot)
            .copied()
            .unwrap_or(endpoint.timeout)
    }

    /// Answers a request routed to `endpoint`, named `route` in the rate limit rules:
    /// authenticates, applies the rate limits, then forwards; answers after the rate limit
    /// check carry its `RateLimit-*` headers, errors included.
    pub(crate) async fn call(
        &self,
        endpoint: &Endpoint,
        route: &str,
        bindings: Vec<(&[String], String)>,
        req: Request<Incoming>,
        peer: SocketAddr,
        metrics: &Metrics,
    ) -> Result<HttpResponse, ApiError> {
        let principal = self.authenticate(endpoint, req.headers()).await?;
        let decision = self.rate_limiter.check(
            route,
            peer.ip(),
            req.headers(),
            principal.as_ref().map(|p| p.subject.as_str()),
        );
        if decision.is_denied() {
            return Err(rate_limited(route, &decision));
        }
        let result = self.forward(endpoint, bindings, req, metrics).await;
        with_headers(result, decision.headers())
    }

    /// Reads, transcodes and forwards the request to its upstream; answers its reply.
    async fn forward(
        &self,
        endpoint: &Endpoint,
        bindings: Vec<(&[String], String)>,
        req: Request<Incoming>,
        metrics: &Metrics,
    ) -> Result<HttpResponse, ApiError> {
        let (parts, body) = req.into_parts();
        let body = match endpoint.body {
            BodyRule::None => Bytes::new(),
            _ => {
                let timeout = self.settings.get().body_read_timeout();
                tokio::time::timeout(timeout, self.read_body(&parts.headers, body))
                    .await
                    .map_err(|_| {
                        // A client that dribbles its body (or never sends it) would hold the
                        // request's slot and its connection for as long as it likes.
                        ApiError::with_status(
                            StatusCode::REQUEST_TIMEOUT,
                            Code::DeadlineExceeded,
                            format!(
                                "request body not received within {} ms",
                                timeout.as_millis()
                            ),
                        )
                    })??
            }
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
        metrics.record_upstream(endpoint, code, call_started.elapsed());
        let reply = reply.map_err(|status| ApiError::from_status(&status))?;
        Ok(json_response(StatusCode::OK, Bytes::from(reply)))
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
        match self.verifier.authorize(endpoint.access, headers).await {
            Ok(principal) => Ok(Some(principal)),
            Err(err) => {
                // The status is the services' own answer; HTTP adds the challenge (RFC 6750).
                let challenge = match &err {
                    AuthError::MissingToken => Some("Bearer"),
                    AuthError::Invalid(VerifyError::KeysUnavailable) => None,
                    AuthError::Invalid(_) => Some("Bearer error=\"invalid_token\""),
                    AuthError::Forbidden(_) | AuthError::OutsideContract(_) => None,
                };
                let status = tonic::Status::from(err);
                let error = ApiError::new(status.code(), status.message().to_owned());
                Err(match challenge {
                    Some(challenge) => error.header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(challenge),
                    ),
                    None => error,
                })
            }
        }
    }

    /// The request's body, refused when larger than `gateway.max_body_bytes` (413) or not
    /// JSON (415).
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

/// Whether the request's `Content-Type` is JSON (`application/json` or `application/*+json`).
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::Status;

    use crate::test_gateway::{fake_upstream, gateway, send};

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
}
