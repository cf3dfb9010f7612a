//! Retries of idempotent calls, within the call's deadline and an upstream-wide retry budget.
//!
//! A call is retried only when it says it may be: its request carries the [`Retryable`]
//! extension (the client stack inserts it for methods marked idempotent in mesh-config; the
//! gateway for a CreateOrder carrying an idempotency key). Every other call passes straight
//! through, without buffering or allocation. A retryable call's body (unary gRPC: small) is
//! read once and replayed to each attempt.
//!
//! An attempt is retried when it failed in transport (`Err`) or was answered trailers-only
//! with a status in `retry_on` (UNAVAILABLE by default: the call did not run). Between
//! attempts the layer waits an exponential backoff with full jitter (attempt n waits a random
//! time in `[0, min(backoff_max, backoff_base * 2^(n-1))]`), or what the server asked for in
//! `grpc-retry-pushback-ms`; a negative pushback means "do not retry". It never waits past the
//! call's [`Deadline`]: if the wait would end at or after it, the last answer is returned at
//! once, so the caller sees the real failure instead of a DEADLINE_EXCEEDED.
//!
//! # Why a budget, not only `max_attempts`
//!
//! `max_attempts` bounds the cost of one call, not of an outage. When an upstream fails every
//! call, 3 attempts per call triple its load exactly when it can least bear it: a retry storm,
//! worse at every layer that retries. A budget bounds the extra load of the whole client
//! instead, like Linkerd's: over a sliding window (`budget_window_ms`, 10 s) retries may add at
//! most `budget_percent` (20 %) to the calls made, with a floor of `budget_min_per_sec` (10/s)
//! so that a quiet client can still ride out a single lost connection. A lone failed call
//! still gets its retries; a flood of failures gets at most 20 % more traffic. A retry the
//! budget refuses is not made and the last answer is returned.
//!
//! Unlike Linkerd, which adds the floor to the percentage, the allowance here is
//! `max(floor * window, percent * calls)`: retries never add more than `budget_percent` to a
//! busy client's traffic. Every call deposits (retryable or not), every retry withdraws; the
//! budget is shared by all clones of a [`RetryLayer`] (one per upstream) and survives policy
//! reloads.
//!
//! # Reporting
//!
//! Each retry is an event `retrying call` (fields `attempt`, the attempt about to be made;
//! `code`; `backoff_ms`) on the call's client span ([`ClientSpan`]), and counts in
//! `weft_client_retries_total{upstream}`; a retry not made counts in
//! `weft_client_retries_skipped_total{upstream,reason}` with reason `budget`, `deadline` or
//! `pushback`. Reaching `max_attempts` is not counted as skipped.
//!
//! Dropping the response future stops everything: no task is spawned.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use metrics::{Counter, Key, KeyName, Label, Metadata, Recorder as _, SharedString};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

use crate::{breaker::Window, deadline::Deadline, grpc, live::Live, propagate::ClientSpan};

const RETRIES: &str = "weft_client_retries_total";
const SKIPPED: &str = "weft_client_retries_skipped_total";

/// Request extension marking a call as safe to send more than once: only these are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retryable;

pub use crate::policy::RetryPolicy;

// === RetryLayer ===

/// Client layer retrying [`Retryable`] calls to one upstream within a budget.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
    policy: Live<RetryPolicy>,
}

/// The budget and metric handles every clone of a layer shares: one per upstream.
#[derive(Debug)]
struct Shared {
    upstream: String,
    /// Calls ([`CALLS`]) and retries ([`MADE`]) over the budget's window.
    budget: Mutex<Window<2>>,
    retries: Counter,
    skipped_budget: Counter,
    skipped_deadline: Counter,
    skipped_pushback: Counter,
}

/// Counter indices of the budget's window.
const CALLS: usize = 0;
const MADE: usize = 1;

impl RetryLayer {
    /// A retry layer for `upstream` (its name in messages and metrics) following `policy`.
    pub fn new(upstream: &str, policy: Live<RetryPolicy>) -> Self {
        let recorder = crate::metrics::registry().recorder();
        let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
        let upstream_label = Label::new("upstream", upstream.to_owned());
        let skipped = |reason: &'static str| {
            let labels = vec![
                upstream_label.clone(),
                Label::from_static_parts("reason", reason),
            ];
            recorder.register_counter(&Key::from_parts(SKIPPED, labels), &metadata)
        };
        recorder.describe_counter(
            KeyName::from(RETRIES),
            None,
            SharedString::from("Retries of calls to an upstream."),
        );
        recorder.describe_counter(
            KeyName::from(SKIPPED),
            None,
            SharedString::from(
                "Retries not made, by reason: budget spent, deadline too near, server pushback.",
            ),
        );
        let shared = Shared {
            upstream: upstream.to_owned(),
            budget: Mutex::new(Window::new()),
            retries: recorder.register_counter(
                &Key::from_parts(RETRIES, vec![upstream_label.clone()]),
                &metadata,
            ),
            skipped_budget: skipped("budget"),
            skipped_deadline: skipped("deadline"),
            skipped_pushback: skipped("pushback"),
        };
        Self {
            shared: Arc::new(shared),
            policy,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Window<2>> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call in the budget.
    fn deposit(&self, policy: &RetryPolicy) {
        self.lock()
            .add(Instant::now(), policy.budget_window(), CALLS, 1);
    }

    /// Takes one retry from the budget, if any is left.
    fn withdraw(&self, policy: &RetryPolicy) -> bool {
        let now = Instant::now();
        let span = policy.budget_window();
        let mut window = self.lock();
        let [calls, made] = window.totals(now, span);
        if made < retry_allowance(policy, calls, span) {
            window.add(now, span, MADE, 1);
            true
        } else {
            false
        }
    }
}

/// Retries allowed over a window of length `span` holding `calls` calls:
/// `max(budget_min_per_sec * span, budget_percent % of calls)`.
fn retry_allowance(policy: &RetryPolicy, calls: u64, span: Duration) -> u64 {
    let floor = f64::from(policy.budget_min_per_sec) * span.as_secs_f64();
    let share = policy.budget_percent / 100.0 * calls as f64;
    // Saturating float-to-int conversion: no overflow.
    floor.max(share).floor() as u64
}

// === impl Retry ===

/// Service made by [`RetryLayer`]. Not generic over the request body: a retried call's body is
/// rebuilt as a [`tonic::body::Body`]; the inner service is cloned for each retried call.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let policy = self.layer.policy.get();
        self.layer.shared.deposit(&policy);
        if policy.max_attempts <= 1 || req.extensions().get::<Retryable>().is_none() {
            return ResponseFuture {
                kind: Kind::Passthrough {
                    future: self.inner.call(req),
                },
            };
        }
        // The ready service makes the first attempt; this one waits for the next call's
        // `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.layer.shared.clone();
        ResponseFuture {
            kind: Kind::Retrying {
                future: Box::pin(retry(inner, req, policy, shared)),
            },
        }
    }
}

/// Sends `req` with `inner` (already ready) and retries it as `policy` says.
async fn retry<S>(
    mut inner: S,
    req: Request<Body>,
    policy: Arc<RetryPolicy>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(status) => {
            return Ok(grpc::refusal(Status::internal(format!(
                "upstream {}: cannot read the request body to send it: {}",
                shared.upstream,
                status.message()
            ))));
        }
    };
    let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
    let span = parts.extensions.get::<ClientSpan>().map(|s| s.0.clone());
    let attempt_request =
        || Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())));

    let mut result = inner.call(attempt_request()).await;
    let mut attempt: u32 = 1;
    loop {
        let code = match &result {
            Err(_) => "transport error",
            Ok(response) => match grpc::status_code(response.headers()) {
                Some(code) if policy.retries_on(code) => grpc::code_name(code),
                _ => return result,
            },
        };
        if attempt >= policy.max_attempts {
            return result;
        }
        let pushback = match &result {
            Ok(response) => grpc::retry_pushback(response.headers()),
            Err(_) => None,
        };
        let wait = match pushback {
            Some(None) => {
                shared.skipped_pushback.increment(1);
                return result;
            }
            Some(Some(wait)) => wait,
            None => policy.backoff(attempt),
        };
        if let Some(deadline) = deadline {
            let too_late = Instant::now()
                .checked_add(wait)
                .is_none_or(|end| end >= deadline);
            if too_late {
                shared.skipped_deadline.increment(1);
                return result;
            }
        }
        if !shared.withdraw(&policy) {
            shared.skipped_budget.increment(1);
            return result;
        }
        attempt += 1;
        shared.retries.increment(1);
        if let Some(span) = &span {
            let backoff_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            span.in_scope(|| tracing::info!(attempt, code, backoff_ms, "retrying call"));
        }
        drop(result);
        tokio::time::sleep(wait).await;
        result = match inner.ready().await {
            Ok(ready) => ready.call(attempt_request()).await,
            Err(err) => Err(err),
        };
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Retry`].
    pub struct ResponseFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

/// A boxed retrying call.
type Retrying<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        Passthrough {
            #[pin]
            future: F,
        },
        Retrying {
            future: Retrying<E>,
        },
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future.poll(cx),
            KindProj::Retrying { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        fmt::Write as _,
        io,
        sync::atomic::{AtomicUsize, Ordering},
    };
    use tonic::Code;

    use http_body::Frame;
    use tower::ServiceExt as _;

    use super::*;

    /// The value of the series whose line starts with `prefix` (0 when absent).
    fn metric(prefix: &str) -> f64 {
        crate::metrics::registry()
            .render()
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn skipped(upstream: &str, reason: &str) -> f64 {
        metric(&format!(
            "{SKIPPED}{{upstream=\"{upstream}\",reason=\"{reason}\"}}"
        ))
    }

    fn request(retryable: bool) -> Request<Body> {
        let mut req = Request::builder()
            .uri("/weft.user.v1.UserService/GetMe")
            .body(Body::empty())
            .unwrap();
        if retryable {
            req.extensions_mut().insert(Retryable);
        }
        req
    }

    fn unavailable(message: impl Into<String>) -> Result<Response<Body>, io::Error> {
        Ok(grpc::refusal(Status::unavailable(message)))
    }

    fn code_and_message(response: &Response<Body>) -> (Option<Code>, String) {
        let message = Status::from_header_map(response.headers())
            .map(|s| s.message().to_string())
            .unwrap_or_default();
        (grpc::status_code(response.headers()), message)
    }

    /// An inner service answering attempt `n` (from 1) with `answer(n)`, and its call count.
    fn counting<F>(
        answer: F,
    ) -> (
        impl Service<
            Request<Body>,
            Response = Response<Body>,
            Error = io::Error,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + 'static,
        Arc<AtomicUsize>,
    )
    where
        F: Fn(usize) -> Result<Response<Body>, io::Error> + Clone + Send + Sync + 'static,
    {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service = tower::service_fn(move |_req: Request<Body>| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(answer(n))
        });
        (service, calls)
    }

    fn retry_layer(upstream: &str, policy: RetryPolicy) -> RetryLayer {
        RetryLayer::new(upstream, Live::new(policy))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_unavailable_up_to_max_attempts_then_returns_the_last_answer() {
        let (inner, calls) = counting(|n| unavailable(format!("attempt {n} failed")));
        let service = retry_layer("retry-max", RetryPolicy::default()).layer(inner);
        let response = service.oneshot(request(true)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "3 attempts in all");
        assert_eq!(
            code_and_message(&response),
            (Some(Code::Unavailable), "attempt 3 failed".to_string()),
            "the caller sees the last attempt's answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_succeeds_answers_the_call() {
        // A transport error, then UNAVAILABLE, then a normal answer.
        let (inner, calls) = counting(|n| match n {
            1 => Err(io::Error::other("connection refused")),
            2 => unavailable("restarting"),
            _ => Ok(Response::new(Body::empty())),
        });
        let service = retry_layer("retry-success", RetryPolicy::default()).layer(inner);
        let response = service.oneshot(request(true)).await.unwrap();
        assert_eq!(grpc::status_code(response.headers()), None, "answered");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_a_request_without_retryable() {
        let (inner, calls) = counting(|_| unavailable("down"));
        let service = retry_layer("retry-unmarked", RetryPolicy::default()).layer(inner);
        let response = service.clone().oneshot(request(false)).await.unwrap();
        assert_eq!(
            grpc::status_code(response.headers()),
            Some(Code::Unavailable)
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a non-idempotent call is sent once"
        );

        let (inner, calls) = counting(|_| Err(io::Error::other("reset")));
        let service = retry_layer("retry-unmarked", RetryPolicy::default()).layer(inner);
        assert!(service.oneshot(request(false)).await.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "not even on a transport error"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_not_found() {
        let (inner, calls) = counting(|_| Ok(grpc::refusal(Status::not_found("no such user"))));
        let service = retry_layer("retry-not-found", RetryPolicy::default()).layer(inner);
        let response = service.oneshot(request(true)).await.unwrap();
        assert_eq!(grpc::status_code(response.headers()), Some(Code::NotFound));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn replays_the_same_body_parts_and_extensions_each_attempt() {
        #[derive(Debug, Clone, PartialEq)]
        struct Marker(u32);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let inner = tower::service_fn(move |req: Request<Body>| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let mut log = log.lock().unwrap();
                log.push((
                    parts.method.clone(),
                    parts.uri.path().to_string(),
                    parts.headers.get("idempotency-key").cloned(),
                    parts.extensions.get::<Marker>().cloned(),
                    bytes,
                ));
                if log.len() < 3 {
                    Ok::<_, Infallible>(grpc::refusal(Status::unavailable("down")))
                } else {
                    Ok(Response::new(Body::empty()))
                }
            }
        });
        let service = retry_layer("retry-body", RetryPolicy::default()).layer(inner);
        let payload = Bytes::from_static(b"\0\0\0\0\x05order");
        let mut req = Request::builder()
            .method("POST")
            .uri("/weft.order.v1.OrderService/CreateOrder")
            .header("idempotency-key", "k-1")
            .body(Body::new(Full::new(payload.clone())))
            .unwrap();
        req.extensions_mut().insert(Retryable);
        req.extensions_mut().insert(Marker(7));
        let response = service.oneshot(req).await.unwrap();
        assert_eq!(grpc::status_code(response.headers()), None);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (method, path, key, marker, body) in seen.iter() {
            assert_eq!(method, "POST");
            assert_eq!(path, "/weft.order.v1.OrderService/CreateOrder");
            assert_eq!(key.as_ref().map(|k| k.as_bytes()), Some(&b"k-1"[..]));
            assert_eq!(
                marker,
                &Some(Marker(7)),
                "extensions travel with every attempt"
            );
            assert_eq!(body, &payload, "every attempt sends the whole body");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_fails_to_read_is_refused_as_internal() {
        let (inner, calls) = counting(|_| Ok(Response::new(Body::empty())));
        let service = retry_layer("retry-bad-body", RetryPolicy::default()).layer(inner);
        let frames = futures::stream::iter([Err::<Frame<Bytes>, _>(Status::internal("boom"))]);
        let mut req = Request::new(Body::new(http_body_util::StreamBody::new(frames)));
        req.extensions_mut().insert(Retryable);
        let response = service.oneshot(req).await.unwrap();
        let (code, message) = code_and_message(&response);
        assert_eq!(code, Some(Code::Internal));
        assert!(message.contains("upstream retry-bad-body"), "{message}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing sent");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_retries_over_its_window() {
        let upstream = "retry-budget";
        let policy = RetryPolicy {
            budget_min_per_sec: 1,
            ..RetryPolicy::default()
        };
        let window_secs = policy.budget_window().as_secs();
        let bound = |requests: u64| {
            (u64::from(policy.budget_min_per_sec) * window_secs)
                .max(requests * policy.budget_percent as u64 / 100)
        };
        // The upstream fails every call; requests follow each other within one window.
        let (inner, calls) = counting(|_| unavailable("down"));
        let service = retry_layer(upstream, policy.clone()).layer(inner);
        let skipped_before = skipped(upstream, "budget");
        let started = Instant::now();
        let send = async |n: u64| {
            for _ in 0..n {
                service.clone().oneshot(request(true)).await.unwrap();
            }
        };

        // 20 requests: the floor (10 in 10 s) dominates.
        send(20).await;
        let retries = calls.load(Ordering::SeqCst) as u64 - 20;
        assert!(retries <= bound(20), "{retries} retries for 20 requests");
        assert!(retries >= 9, "the floor allows retries: only {retries}");

        // 100 requests: 20 % of them dominates.
        send(80).await;
        let retries = calls.load(Ordering::SeqCst) as u64 - 100;
        assert!(retries <= bound(100), "{retries} retries for 100 requests");
        assert!(
            retries >= 18,
            "20 % of 100 requests may retry: only {retries}"
        );
        assert!(
            started.elapsed() < policy.budget_window(),
            "the test ran within one window"
        );
        let refused = skipped(upstream, "budget") - skipped_before;
        assert!(
            refused >= 70.0,
            "retries refused by the budget are counted: {refused}"
        );

        // A window later, the budget is back.
        tokio::time::sleep(policy.budget_window()).await;
        let before = calls.load(Ordering::SeqCst);
        send(1).await;
        assert_eq!(calls.load(Ordering::SeqCst) - before, 3, "retried again");
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_calls_fill_the_budget_too() {
        let policy = RetryPolicy {
            budget_min_per_sec: 0,
            budget_percent: 10.0,
            ..RetryPolicy::default()
        };
        let (inner, calls) = counting(|_| unavailable("down"));
        let service = retry_layer("retry-deposits", policy).layer(inner);
        service.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no budget yet: no retry");
        for _ in 0..20 {
            service.clone().oneshot(request(false)).await.unwrap();
        }
        service.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1 + 20 + 3,
            "22 calls in the window allow 2 retries (10 %), all taken by the last call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_minus_one_stops_retries() {
        let upstream = "retry-pushback-stop";
        let (inner, calls) = counting(|_| {
            Ok(grpc::refusal_with_pushback(
                Status::unavailable("overloaded"),
                None,
            ))
        });
        let service = retry_layer(upstream, RetryPolicy::default()).layer(inner);
        let before = skipped(upstream, "pushback");
        service.oneshot(request(true)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(skipped(upstream, "pushback") - before, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushback_replaces_the_backoff() {
        let (inner, calls) = counting(|n| match n {
            1 => Ok(grpc::refusal_with_pushback(
                Status::unavailable("busy"),
                Some(Duration::from_millis(700)),
            )),
            _ => Ok(Response::new(Body::empty())),
        });
        let service = retry_layer("retry-pushback-wait", RetryPolicy::default()).layer(inner);
        let started = Instant::now();
        service.oneshot(request(true)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_millis(750),
            "waited {waited:?}, not the 700 ms asked (beyond backoff_max)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_beyond_the_deadline_returns_at_once() {
        let upstream = "retry-deadline";
        let before = skipped(upstream, "deadline");

        // The server asks for 100 ms; 50 ms are left.
        let (inner, calls) = counting(|_| {
            Ok(grpc::refusal_with_pushback(
                Status::unavailable("busy"),
                Some(Duration::from_millis(100)),
            ))
        });
        let service = retry_layer(upstream, RetryPolicy::default()).layer(inner);
        let started = Instant::now();
        let mut req = request(true);
        req.extensions_mut()
            .insert(Deadline(started + Duration::from_millis(50)));
        let response = service.oneshot(req).await.unwrap();
        assert_eq!(
            grpc::status_code(response.headers()),
            Some(Code::Unavailable)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");

        // Any backoff ends at or after a deadline that is now.
        let (inner, calls) = counting(|_| unavailable("down"));
        let service = retry_layer(upstream, RetryPolicy::default()).layer(inner);
        let mut req = request(true);
        req.extensions_mut().insert(Deadline(Instant::now()));
        service.oneshot(req).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
        assert_eq!(skipped(upstream, "deadline") - before, 2.0);

        // With time left, the retries are made within it.
        let (inner, calls) = counting(|_| unavailable("down"));
        let service = retry_layer(upstream, RetryPolicy::default()).layer(inner);
        let mut req = request(true);
        req.extensions_mut()
            .insert(Deadline(Instant::now() + Duration::from_secs(1)));
        service.oneshot(req).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(
            started.elapsed() <= Duration::from_millis(75),
            "backoffs of 25 + 50 ms at most"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_change_applies_to_the_next_call() {
        let (inner, calls) = counting(|_| unavailable("down"));
        let policy = Live::new(RetryPolicy::default());
        let service = RetryLayer::new("retry-reload", policy.clone()).layer(inner);
        service.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        policy.set(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        });
        service.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "no retries any more");

        policy.set(RetryPolicy {
            retry_on: vec!["NOT_FOUND".into()],
            ..RetryPolicy::default()
        });
        service.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "UNAVAILABLE no longer retried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_call_stops_its_retries() {
        // The server asks for a second's wait before a retry.
        let (inner, calls) = counting(|_| {
            Ok(grpc::refusal_with_pushback(
                Status::unavailable("busy"),
                Some(Duration::from_secs(1)),
            ))
        });
        let service = retry_layer("retry-drop", RetryPolicy::default()).layer(inner);
        let call = service.oneshot(request(true));
        // Give up after the first attempt, during the wait.
        let timed_out = tokio::time::timeout(Duration::from_millis(500), call).await;
        assert!(timed_out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "nothing ran after the drop"
        );
    }

    /// Records events as `span: field=value ...`.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<String>>>);

    impl<S> tracing_subscriber::Layer<S> for Events
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    let _ = write!(self.0, " {}={:?}", field.name(), value);
                }
            }
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            let span = ctx.event_span(event).map(|span| span.name()).unwrap_or("-");
            self.0.lock().unwrap().push(format!("{span}:{}", fields.0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_retry_is_an_event_on_the_client_span() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let events = Events::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
        let (inner, _) = counting(|n| match n {
            1 => Err(io::Error::other("refused")),
            2 => unavailable("down"),
            _ => Ok(Response::new(Body::empty())),
        });
        let service = retry_layer("retry-events", RetryPolicy::default()).layer(inner);
        let mut req = request(true);
        req.extensions_mut()
            .insert(ClientSpan(tracing::info_span!("grpc client call")));
        service.oneshot(req).await.unwrap();
        let events = events.0.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "{events:?}");
        for (event, (attempt, code)) in events
            .iter()
            .zip([(2, "transport error"), (3, "UNAVAILABLE")])
        {
            assert!(
                event.starts_with("grpc client call: message=retrying call")
                    && event.contains(&format!("attempt={attempt} "))
                    && event.contains(&format!("code=\"{code}\""))
                    && event.contains("backoff_ms="),
                "{event}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_full_jitter() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<u64> = (1..=6)
            .map(|n| policy.backoff_ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 250, 250]);
        assert_eq!(
            policy.backoff_ceiling(200),
            policy.backoff_max(),
            "no overflow"
        );
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(2)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(50)));
        assert!(
            waits.iter().any(|w| *w < Duration::from_millis(25)),
            "full jitter spreads waits down to 0"
        );
    }

    #[test]
    fn policies_parse_with_defaults_and_bad_values_name_their_key() {
        let policy: RetryPolicy = toml::from_str("max_attempts = 2").unwrap();
        assert_eq!(
            policy,
            RetryPolicy {
                max_attempts: 2,
                ..RetryPolicy::default()
            }
        );
        assert!(RetryPolicy::default().validate().is_ok());
        assert!(toml::from_str::<RetryPolicy>("max_retries = 2").is_err());

        let bad = |policy: RetryPolicy| policy.validate().unwrap_err();
        let (key, _) = bad(RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        });
        assert_eq!(key, "max_attempts");
        let (key, _) = bad(RetryPolicy {
            backoff_max_ms: 10,
            ..RetryPolicy::default()
        });
        assert_eq!(key, "backoff_max_ms");
        let (key, _) = bad(RetryPolicy {
            budget_percent: f64::NAN,
            ..RetryPolicy::default()
        });
        assert_eq!(key, "budget_percent");
        let (key, reason) = bad(RetryPolicy {
            retry_on: vec!["UNAVAILABLE".into(), "UNAVAILBLE".into()],
            ..RetryPolicy::default()
        });
        assert_eq!(key, "retry_on[1]");
        assert!(reason.contains("UNAVAILABLE, DATA_LOSS"), "{reason}");
    }
}
