//! Deadlines: every call has one, and every call it causes inherits what is left of it.
//!
//! A caller that stops waiting should stop the work it caused, all the way down: otherwise an
//! overloaded mesh spends its capacity on answers nobody reads. gRPC carries the remaining
//! budget in the `grpc-timeout` header; the mesh turns it back into an instant at every hop.
//!
//! - [`ServerDeadlineLayer`] (server stack): a call arrives with `grpc-timeout`, or gets
//!   `server.default_deadline_ms`; a call whose deadline has already passed is not started, and
//!   one that runs past it is abandoned (its handler future dropped) and answered
//!   DEADLINE_EXCEEDED. A call whose caller went away (the HTTP/2 stream reset, as a caller's
//!   own deadline or a disconnected client causes) is logged as cancelled, so its span and log
//!   show it did not complete.
//! - [`DeadlineLayer`] (client stack): enforces the [`Deadline`] that the client's method
//!   policy put on the request (the callee method's timeout, capped by what is left of the
//!   inbound call's deadline minus a margin): a call with no time left is not sent, the rest is
//!   sent as `grpc-timeout`, and the answer is awaited no longer than that.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower_layer::Layer;
use tower_service::Service;

use crate::{grpc, propagate::CallContext};
// The wire format of `grpc-timeout` is a gRPC fact the propagation layer needs too.
pub use crate::grpc::{
    GRPC_TIMEOUT, GRPC_TIMEOUT_HEADER, encode_timeout, inbound_deadline, parse_timeout,
};

/// How much before a call's deadline the server gives up on it (see [`ServerDeadline`]).
const SERVER_LEAD: Duration = Duration::from_millis(1);

/// The instant by which a call must be answered, carried in the request's extensions by the
/// client stack: layers below the deadline layer (retries) must not start work after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// The deadline of the call the current task serves, if it has one.
pub fn current() -> Option<Instant> {
    crate::propagate::with_current(|context| context.deadline).flatten()
}

// === ServerDeadlineLayer ===

/// Server layer: enforces each call's deadline and logs calls their caller cancelled.
#[derive(Debug, Clone, Copy)]
pub struct ServerDeadlineLayer {
    default_budget: Duration,
}

impl ServerDeadlineLayer {
    /// Calls that bring no `grpc-timeout` get `default_budget`.
    pub fn new(default_budget: Duration) -> Self {
        Self { default_budget }
    }
}

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline {
            inner,
            default_budget: self.default_budget,
        }
    }
}

/// Service made by [`ServerDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct ServerDeadline<S> {
    inner: S,
    default_budget: Duration,
}

// === impl ServerDeadline ===

impl<S, B> Service<Request<B>> for ServerDeadline<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let now = Instant::now();
        // A hair early: a server with its own transport timer on the same `grpc-timeout`
        // (tonic's, which served the mesh until session 7) would answer CANCELLED "Timeout
        // expired" instead of DEADLINE_EXCEEDED, and the caller's timer fires at the deadline.
        let deadline = req
            .extensions()
            .get::<CallContext>()
            .and_then(|context| context.deadline)
            .or_else(|| inbound_deadline(req.headers()))
            .map(|deadline| deadline.checked_sub(SERVER_LEAD).unwrap_or(now))
            .unwrap_or_else(|| now + self.default_budget);
        if deadline <= now {
            return Box::pin(std::future::ready(Ok(grpc::refusal(
                Status::deadline_exceeded("the caller's deadline passed before the call started"),
            ))));
        }
        let budget = deadline - now;
        let call = self.inner.call(req);
        Box::pin(async move {
            let mut guard = CancelGuard { done: false };
            let result = tokio::time::timeout_at(deadline, call).await;
            guard.done = true;
            match result {
                Ok(response) => response,
                Err(_) => {
                    tracing::info!(
                        budget_ms = budget.as_millis() as u64,
                        "call cancelled before it completed: its deadline passed"
                    );
                    Ok(grpc::refusal(Status::deadline_exceeded(format!(
                        "deadline of {} ms exceeded",
                        budget.as_millis()
                    ))))
                }
            }
        })
    }
}

/// Logs a call dropped before it finished: its caller reset the stream (gave up or went away).
struct CancelGuard {
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(
                grpc.cancelled = true,
                "call cancelled before it completed: the caller went away"
            );
        }
    }
}

// === DeadlineLayer ===

/// Client layer: enforces the request's [`Deadline`] extension for upstream `name`.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    upstream: std::sync::Arc<str>,
}

impl DeadlineLayer {
    /// Enforces deadlines of calls to the upstream `upstream` (named in refusals).
    pub fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.into(),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            upstream: self.upstream.clone(),
        }
    }
}

/// Service made by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    upstream: std::sync::Arc<str>,
}

// === impl DeadlineService ===

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(&Deadline(deadline)) = req.extensions().get::<Deadline>() else {
            return Box::pin(self.inner.call(req));
        };
        let now = Instant::now();
        if deadline <= now {
            let status = Status::deadline_exceeded(format!(
                "no time left to call upstream {}: the deadline passed",
                self.upstream
            ));
            return Box::pin(std::future::ready(Ok(grpc::refusal(status))));
        }
        let budget = deadline - now;
        // Sensitive: the value changes from call to call, and each new one in the HPACK table
        // would push out an entry worth keeping (see `connection::INDEXED_NAMES`).
        let mut timeout = encode_timeout(budget);
        timeout.set_sensitive(true);
        req.headers_mut().insert(GRPC_TIMEOUT_HEADER, timeout);
        let call = self.inner.call(req);
        let upstream = self.upstream.clone();
        Box::pin(async move {
            let late = || {
                grpc::refusal(Status::deadline_exceeded(format!(
                    "upstream {upstream} did not answer within {} ms",
                    budget.as_millis()
                )))
            };
            match tokio::time::timeout_at(deadline, call).await {
                // A server whose transport timer on our `grpc-timeout` fired first says so as
                // CANCELLED "Timeout expired": to the caller, the deadline passed.
                Ok(Ok(response)) if is_transport_timeout(&response) => Ok(late()),
                Ok(response) => response,
                Err(_) => Ok(late()),
            }
        })
    }
}

/// Whether `response` is tonic's answer to an expired `grpc-timeout`.
fn is_transport_timeout(response: &Response<Body>) -> bool {
    grpc::status_code(response.headers()) == Some(tonic::Code::Cancelled)
        && response
            .headers()
            .get(&grpc::GRPC_MESSAGE)
            .is_some_and(|message| {
                matches!(
                    message.as_bytes(),
                    b"Timeout%20expired" | b"Timeout expired"
                )
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tonic::Code;
    use tower::ServiceExt;

    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<()>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Future + Send + 'static,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        })
    }

    #[test]
    fn grpc_timeouts_parse_and_encode_without_promising_more_than_there_is() {
        let parse = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("100n"), Some(Duration::from_nanos(100)));
        for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S"] {
            assert_eq!(
                parse_timeout(&HeaderValue::from_str(bad).unwrap()),
                None,
                "{bad}"
            );
        }
        assert_eq!(encode_timeout(Duration::from_micros(99_999)), "99999u");
        assert_eq!(encode_timeout(Duration::from_micros(1_234_567)), "1234m");
        let round_trip = parse_timeout(&encode_timeout(Duration::from_millis(1500))).unwrap();
        assert_eq!(round_trip, Duration::from_millis(1500));
    }

    #[test]
    fn grpc_timeouts_encode_at_most_8_digits_and_switch_units_at_the_edges() {
        let micros = Duration::from_micros;
        for (budget, text) in [
            (Duration::ZERO, "0u"),
            (Duration::from_nanos(999), "0u"),
            (micros(1), "1u"),
            (micros(99_999), "99999u"),
            (micros(100_000), "100m"),
            (micros(100_999), "100m"),
            (micros(99_999_999_999), "99999999m"),
            (micros(100_000_000_000), "100000S"),
            (micros(99_999_999_999_999), "99999999S"),
            (micros(100_000_000_000_000), "99999999S"),
            (Duration::MAX, "99999999S"),
        ] {
            let value = encode_timeout(budget);
            assert_eq!(value, text, "{budget:?}");
            assert!(
                parse_timeout(&value).is_some_and(|back| back <= budget),
                "{text}"
            );
        }
        // The same text as the `format!` it replaced, across every digit count of each unit.
        let formatted = |budget: Duration| {
            let micros = budget.as_micros().min(u64::MAX as u128) as u64;
            if micros < 100_000 {
                format!("{micros}u")
            } else if micros / 1000 <= 99_999_999 {
                format!("{}m", micros / 1000)
            } else {
                format!("{}S", (micros / 1_000_000).min(99_999_999))
            }
        };
        let mut value = 1u64;
        while value < u64::MAX / 10 {
            for budget in [value - 1, value, value + 7, value * 3 + 1] {
                let budget = micros(budget);
                assert_eq!(encode_timeout(budget), formatted(budget).as_str());
            }
            value *= 10;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_call_past_its_deadline_is_answered_deadline_exceeded_in_time() {
        let service = DeadlineLayer::new("user").layer(slow(Duration::from_secs(2)));
        let mut req = Request::new(());
        let started = Instant::now();
        req.extensions_mut()
            .insert(Deadline(started + Duration::from_millis(200)));
        let response = service.oneshot(req).await.unwrap();
        assert_eq!(
            grpc::status_code(response.headers()),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_call_with_no_time_left_is_not_sent() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = tower::service_fn(move |_req: Request<()>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) }
        });
        let service = DeadlineLayer::new("user").layer(inner);
        let mut req = Request::new(());
        req.extensions_mut().insert(Deadline(Instant::now()));
        let response = service.oneshot(req).await.unwrap();
        assert_eq!(
            grpc::status_code(response.headers()),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_remaining_budget_is_sent_as_grpc_timeout() {
        let inner = tower::service_fn(|req: Request<()>| async move {
            let budget = parse_timeout(&req.headers()[GRPC_TIMEOUT]).unwrap();
            assert!(budget <= Duration::from_millis(300) && budget > Duration::from_millis(290));
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        });
        let service = DeadlineLayer::new("user").layer(inner);
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(Deadline(Instant::now() + Duration::from_millis(300)));
        service.oneshot(req).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_call_runs_no_longer_than_its_grpc_timeout() {
        let service =
            ServerDeadlineLayer::new(Duration::from_secs(30)).layer(slow(Duration::from_secs(2)));
        let mut req = Request::new(());
        req.headers_mut()
            .insert(GRPC_TIMEOUT, HeaderValue::from_static("100m"));
        let started = Instant::now();
        let response = service.clone().oneshot(req).await.unwrap();
        assert_eq!(
            grpc::status_code(response.headers()),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100) - SERVER_LEAD,
            "a hair before the caller's deadline"
        );

        // Without a grpc-timeout, the server's default applies.
        let response = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(grpc::status_code(response.headers()), None, "completed");
    }
}
