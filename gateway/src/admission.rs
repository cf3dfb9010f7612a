//! Admission of API requests: the gateway-wide cap on requests in flight, and the answers of
//! the rate limits.
//!
//! Past `gateway.max_concurrent_requests` an API request is refused at once (503 with
//! `Retry-After: 1`) rather than queued behind the others; the gateway's own endpoints are
//! never counted, so probes answer under overload. The rate limits are
//! [`weft_mesh::ratelimit`]'s, keyed by the token's subject or the client IP; a refused request
//! gets a 429 with `Retry-After` and `RateLimit-*`, and every other answer on a limited route
//! carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, errors included.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderValue, header};
use tonic::Code;
use weft_mesh::ratelimit::{ANY_ROUTE, Decision, RateLimitPolicy};

use crate::{error::ApiError, response::HttpResponse};

/// An API request counted in flight until dropped.
pub(crate) struct Admitted<'a>(&'a AtomicUsize);

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

/// Counts an API request in `in_flight`, or refuses it (503) when `limit` are already there.
pub(crate) fn admit(in_flight: &AtomicUsize, limit: usize) -> Result<Admitted<'_>, ApiError> {
    Admitted::take(in_flight, limit).ok_or_else(|| {
        ApiError::new(
            Code::Unavailable,
            format!("overloaded: {limit} requests already in flight at the gateway"),
        )
        .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    })
}

/// The 429 of a request `decision` refused on `route`.
pub(crate) fn rate_limited(route: &str, decision: &Decision) -> ApiError {
    let message = decision
        .message(route)
        .unwrap_or_else(|| format!("rate limit exceeded for {route}"));
    let mut error = ApiError::new(Code::ResourceExhausted, message);
    error.headers.extend(decision.headers());
    error
}

/// Adds `headers` to the answer, success or error.
pub(crate) fn with_headers(
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
pub(crate) fn warn_unknown_routes(policy: &RateLimitPolicy, route_names: &[String]) {
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

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use http::Response;
    use tonic::Status;

    use super::*;
    use crate::test_gateway::{fake_upstream, gateway, send};

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
    fn the_shipped_configs_rate_limit_every_public_route_that_writes() {
        let table = crate::test_support::weft_table();
        let writes: Vec<String> = table
            .router
            .routes()
            .map(|route| route.value())
            .filter(|endpoint| {
                endpoint.access == weft_mesh::contract::Access::Public
                    && endpoint.http_method.as_str() != "GET"
            })
            .map(|endpoint| format!("{} {}", endpoint.http_method.as_str(), endpoint.template))
            .collect();
        assert!(
            writes.contains(&"POST /v1/auth/logout".to_owned()),
            "{writes:?}"
        );
        assert!(
            writes.contains(&"POST /v1/auth/refresh".to_owned()),
            "{writes:?}"
        );
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-config");
        for file in ["local.toml", "compose.toml"] {
            let config = weft_mesh::MeshConfig::load_from(Some(&root.join(file)), [])
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            let limited: Vec<&String> = config
                .gateway
                .rate_limit
                .rules
                .iter()
                .flat_map(|rule| &rule.routes)
                .collect();
            for route in &writes {
                assert!(
                    limited.contains(&route),
                    "{file}: the public route {route} costs a database write and no rate limit \
                     names it"
                );
            }
        }
    }
}
