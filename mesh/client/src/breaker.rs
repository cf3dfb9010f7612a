//! Circuit breaking per upstream: Google SRE adaptive client-side throttling.
//!
//! When an upstream is down or overloaded, every call sent to it costs the caller a connection
//! attempt or a wait, and costs the struggling upstream work it will fail anyway. The breaker
//! answers such calls at once, locally, with UNAVAILABLE ("upstream user: circuit open: ...")
//! and a `grpc-retry-pushback-ms: -1` so the retry layer above does not spend its budget on a
//! local refusal.
//!
//! # Why adaptive throttling instead of a fixed-threshold breaker
//!
//! A classic breaker opens after N consecutive failures (or X % in a window), stays open for a
//! fixed time, then half-opens. Its thresholds are hard to pick: too low and a burst of bad
//! luck cuts off a healthy upstream for everyone; too high and a dying upstream keeps taking
//! traffic. It is also all-or-nothing: an upstream that can serve 60 % of its load gets either
//! 100 % (and collapses) or 0 %.
//!
//! The SRE book's "Handling Overload" (ch. 21) throttles in proportion instead. Over a sliding
//! window the client counts `requests` (every call it attempted, including those it rejected
//! itself) and `accepts` (calls the upstream answered with anything but a failure), and rejects
//! a new call locally with probability
//!
//! ```text
//! max(0, (requests - K * accepts) / (requests + 1))
//! ```
//!
//! While the upstream accepts at least 1/K of the calls nothing is rejected. Past that, the
//! rejection rate follows the failure rate: a half-broken upstream still gets about K times
//! what it can serve, and a dead one gets almost nothing. It needs no threshold but K (2 by
//! default: send up to twice what is accepted) and recovers by itself as accepts come back.
//!
//! One gap in the pure formula: with no accepts at all, the few calls that pass are chance. So
//! when the window holds no accept while rejecting ("the upstream looks down"), one call per
//! `probe_interval_ms` is let through whatever the probability (a half-open probe), and the
//! first call accepted after such a dark period clears the window and closes the breaker: calls
//! flow again within a probe interval of the upstream's return, instead of waiting for the old
//! failures to slide out.
//!
//! # Accounting
//!
//! - A call the breaker passes is counted when its answer arrives (headers; the status of a
//!   normal answer comes later in trailers and counts as an accept). Calls in flight are not
//!   counted yet, so a burst of slow calls to a healthy upstream does not look like failures.
//! - Failures: transport errors, trailers-only statuses listed in `failure_codes`
//!   (UNAVAILABLE by default), and calls dropped by the caller before an answer (a deadline
//!   hit above, or the caller gone): the upstream accepted none of them. This is what makes
//!   a black-holed upstream (connections that hang) throttled too.
//! - DEADLINE_EXCEEDED answered *by the upstream* is not a failure by default: it usually says
//!   the caller's budget was short, and rejecting the calls of callers with longer deadlines
//!   would not help them. Add it to `failure_codes` to throttle on it.
//! - Every other status (NOT_FOUND, INVALID_ARGUMENT, ...) is an accept: the upstream is
//!   working and said no.
//! - Below `min_requests` in the window nothing is rejected.
//!
//! # Readiness
//!
//! [`Breaker`] delegates `poll_ready` to its inner service, as tower requires; the services
//! below (the balancer, the channel) must not stay pending while the upstream is down, or calls
//! would wait instead of reaching the breaker's fast refusal.
//!
//! # Metrics and logs
//!
//! `weft_client_breaker_rejected_total{upstream}`, `weft_client_breaker_reject_probability
//! {upstream}` (updated as calls pass), `weft_client_breaker_open{upstream}` (1 while the
//! upstream looks down and calls are rejected). A warning is logged when the upstream turns
//! dark, an info line when it closes again; nothing per call.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use metrics::{Counter, Gauge, Key, KeyName, Label, Metadata, Recorder as _, SharedString};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower_layer::Layer;
use tower_service::Service;

use crate::{grpc, live::Live};

const REJECTED: &str = "weft_client_breaker_rejected_total";
const PROBABILITY: &str = "weft_client_breaker_reject_probability";
const OPEN: &str = "weft_client_breaker_open";

pub use crate::policy::BreakerPolicy;

/// The probability with which the SRE formula rejects a call:
/// `max(0, (requests - k * accepts) / (requests + 1))`.
pub fn reject_probability(requests: u64, accepts: u64, k: f64) -> f64 {
    let requests = requests as f64;
    ((requests - k * accepts as f64) / (requests + 1.0)).clamp(0.0, 1.0)
}

/// Whether a call is rejected at probability `p`, given `roll`, uniform in [0, 1).
fn rejects(p: f64, roll: f64) -> bool {
    roll < p
}

// === Window ===

/// Buckets a sliding window is kept in: it slides by a tenth of its length.
const BUCKETS: usize = 10;

/// `N` counters over a sliding window kept in [`BUCKETS`] buckets (the breaker's calls, the
/// retry budget's requests and retries). The window's length is given at each use, so a policy
/// change applies at once and the counts survive it.
#[derive(Debug, Clone)]
pub(crate) struct Window<const N: usize> {
    buckets: [Bucket<N>; BUCKETS],
    current: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket<const N: usize> {
    start: Option<Instant>,
    counts: [u64; N],
}

impl<const N: usize> Bucket<N> {
    const EMPTY: Self = Self {
        start: None,
        counts: [0; N],
    };
}

impl<const N: usize> Window<N> {
    /// An empty window.
    pub(crate) fn new() -> Self {
        Self {
            buckets: [Bucket::EMPTY; BUCKETS],
            current: 0,
        }
    }

    /// Adds `n` to counter `counter` at `now`, in a window of length `span`.
    pub(crate) fn add(&mut self, now: Instant, span: Duration, counter: usize, n: u64) {
        let bucket_len = span / BUCKETS as u32;
        let current = &self.buckets[self.current];
        let stale = match current.start {
            Some(start) => now.saturating_duration_since(start) >= bucket_len,
            None => true,
        };
        if stale {
            // The bucket overwritten started at least BUCKETS bucket lengths ago: out of the
            // window already.
            self.current = (self.current + 1) % BUCKETS;
            self.buckets[self.current] = Bucket {
                start: Some(now),
                counts: [0; N],
            };
        }
        if let Some(count) = self.buckets[self.current].counts.get_mut(counter) {
            *count = count.saturating_add(n);
        }
    }

    /// The counters' sums over the buckets started less than `span` before `now`.
    pub(crate) fn totals(&self, now: Instant, span: Duration) -> [u64; N] {
        let mut totals = [0u64; N];
        for bucket in &self.buckets {
            let Some(start) = bucket.start else { continue };
            if now.saturating_duration_since(start) < span {
                for (total, count) in totals.iter_mut().zip(bucket.counts) {
                    *total = total.saturating_add(count);
                }
            }
        }
        totals
    }

    /// Forgets every count.
    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }
}

// === BreakerLayer ===

/// Client layer throttling the calls to one upstream adaptively (see the module docs).
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    shared: Arc<Shared>,
    policy: Live<BreakerPolicy>,
}

/// The state every clone of a layer and its services shares: one per upstream.
#[derive(Debug)]
struct Shared {
    upstream: String,
    state: Mutex<State>,
    rejected: Counter,
    probability: Gauge,
    open: Gauge,
}

/// Counter indices of the breaker's window.
const REQUESTS: usize = 0;
const ACCEPTS: usize = 1;
const FAILURES: usize = 2;

#[derive(Debug)]
struct State {
    window: Window<3>,
    /// When a call last went through while the upstream looked down.
    last_probe: Option<Instant>,
    /// The upstream looks down and calls are rejected (a dark period).
    open: bool,
    rng: fastrand::Rng,
}

/// What [`State::admit`] decided for a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Admission {
    Pass,
    /// Let through as the probe of a dark period.
    Probe,
    /// Rejected, with the window's failures and answered calls for the message, and whether
    /// the upstream just turned dark.
    Reject {
        failures: u64,
        answered: u64,
        turned_dark: bool,
    },
}

impl BreakerLayer {
    /// A breaker for `upstream` (its name in messages and metrics) following `policy`.
    pub fn new(upstream: &str, policy: Live<BreakerPolicy>) -> Self {
        Self::with_rng(upstream, policy, fastrand::Rng::new())
    }

    /// A breaker whose random decisions come from `rng` (tests seed it).
    fn with_rng(upstream: &str, policy: Live<BreakerPolicy>, rng: fastrand::Rng) -> Self {
        let recorder = crate::metrics::registry().recorder();
        let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
        let key = |name: &'static str| {
            Key::from_parts(name, vec![Label::new("upstream", upstream.to_owned())])
        };
        recorder.describe_counter(
            KeyName::from(REJECTED),
            None,
            SharedString::from("Calls to an upstream rejected locally by adaptive throttling."),
        );
        recorder.describe_gauge(
            KeyName::from(PROBABILITY),
            None,
            SharedString::from("Probability with which a new call to an upstream is rejected."),
        );
        recorder.describe_gauge(
            KeyName::from(OPEN),
            None,
            SharedString::from("1 while an upstream looks down and its calls are rejected."),
        );
        let shared = Shared {
            upstream: upstream.to_owned(),
            state: Mutex::new(State {
                window: Window::new(),
                last_probe: None,
                open: false,
                rng,
            }),
            rejected: recorder.register_counter(&key(REJECTED), &metadata),
            probability: recorder.register_gauge(&key(PROBABILITY), &metadata),
            open: recorder.register_gauge(&key(OPEN), &metadata),
        };
        shared.probability.set(0.0);
        shared.open.set(0.0);
        Self {
            shared: Arc::new(shared),
            policy,
        }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            layer: self.clone(),
        }
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether a call starting now goes through.
    fn admit(&self, policy: &BreakerPolicy) -> Admission {
        let now = Instant::now();
        let (admission, probability) = self.lock().admit(now, policy);
        self.probability.set(probability);
        if let Admission::Reject {
            failures,
            answered,
            turned_dark,
        } = admission
        {
            self.rejected.increment(1);
            if turned_dark {
                self.open.set(1.0);
                tracing::warn!(
                    upstream = %self.upstream,
                    failures,
                    answered,
                    "upstream looks down: circuit open, rejecting calls"
                );
            }
        }
        admission
    }

    /// Counts the outcome of a call that went through.
    fn finish(&self, policy: &BreakerPolicy, failed: bool) {
        let now = Instant::now();
        let closed = self.lock().finish(now, policy, failed);
        if closed {
            self.open.set(0.0);
            self.probability.set(0.0);
            tracing::info!(
                upstream = %self.upstream,
                "upstream answered again: circuit closed"
            );
        }
    }
}

/// Marks a call the breaker lets through to find out whether a dark upstream is back: the
/// balancer then tries an ejected endpoint rather than refusing it, so the breaker and outlier
/// ejection recover together, within one probe interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe;

// === impl State ===

impl State {
    /// Decides on a call at `now`; returns the decision and the rejection probability.
    fn admit(&mut self, now: Instant, policy: &BreakerPolicy) -> (Admission, f64) {
        let span = policy.window();
        let [requests, accepts, failures] = self.window.totals(now, span);
        let probability = if requests < u64::from(policy.min_requests) {
            0.0
        } else {
            reject_probability(requests, accepts, policy.k)
        };
        // Rejecting with no accept in the window: the upstream looks down.
        let dark = accepts == 0 && probability > 0.0;
        let reject = rejects(probability, self.rng.f64());
        if dark {
            let probe_due = self
                .last_probe
                .is_none_or(|last| now.saturating_duration_since(last) >= policy.probe_interval());
            if !reject || probe_due {
                self.last_probe = Some(now);
                return (Admission::Probe, probability);
            }
        } else if !reject {
            return (Admission::Pass, probability);
        }
        // Rejected calls count as requests at once; passed ones when they are answered.
        self.window.add(now, span, REQUESTS, 1);
        let turned_dark = dark && !self.open;
        self.open |= dark;
        let admission = Admission::Reject {
            failures,
            answered: accepts + failures,
            turned_dark,
        };
        (admission, probability)
    }

    /// Counts an answered (or dropped) call; returns whether the breaker closed.
    fn finish(&mut self, now: Instant, policy: &BreakerPolicy, failed: bool) -> bool {
        let span = policy.window();
        let mut closed = false;
        if !failed && self.open {
            // The first accept after a dark period: the upstream is back; forget the failures.
            self.window.clear();
            self.open = false;
            self.last_probe = None;
            closed = true;
        }
        self.window.add(now, span, REQUESTS, 1);
        self.window
            .add(now, span, if failed { FAILURES } else { ACCEPTS }, 1);
        closed
    }
}

// === impl Breaker ===

/// Service made by [`BreakerLayer`]: rejects calls locally while the upstream fails.
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    layer: BreakerLayer,
}

impl<S, B> Service<Request<B>> for Breaker<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let policy = self.layer.policy.get();
        let shared = &self.layer.shared;
        let admission = shared.admit(&policy);
        if admission == Admission::Probe {
            // The balancer lets a probe through even when every endpoint rests.
            req.extensions_mut().insert(Probe);
        }
        match admission {
            Admission::Pass | Admission::Probe => ResponseFuture {
                kind: Kind::Called {
                    future: self.inner.call(req),
                    pending: Some(Pending {
                        shared: shared.clone(),
                        policy,
                        done: false,
                    }),
                },
            },
            Admission::Reject {
                failures, answered, ..
            } => {
                let status = Status::unavailable(format!(
                    "upstream {}: circuit open: {failures} of the last {answered} calls failed \
                     in {} s; rejected by adaptive throttling",
                    shared.upstream,
                    policy.window().as_secs_f64()
                ));
                let response = grpc::refusal_with_pushback(status, None);
                ResponseFuture {
                    kind: Kind::Rejected {
                        ready: std::future::ready(Ok(response)),
                    },
                }
            }
        }
    }
}

/// A call that went through, counted as a failure if dropped before its answer.
struct Pending {
    shared: Arc<Shared>,
    policy: Arc<BreakerPolicy>,
    done: bool,
}

impl Pending {
    fn finish(&mut self, failed: bool) {
        if !std::mem::replace(&mut self.done, true) {
            self.shared.finish(&self.policy, failed);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Dropped before an answer: the upstream accepted nothing.
        self.finish(true);
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Breaker`].
    pub struct ResponseFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        Rejected {
            #[pin]
            ready: std::future::Ready<Result<Response<Body>, E>>,
        },
        Called {
            #[pin]
            future: F,
            pending: Option<Pending>,
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
            KindProj::Rejected { ready } => ready.poll(cx),
            KindProj::Called { future, pending } => {
                let result = ready!(future.poll(cx));
                if let Some(mut pending) = pending.take() {
                    let failed = match &result {
                        Err(_) => true,
                        Ok(response) => grpc::status_code(response.headers())
                            .is_some_and(|code| pending.policy.is_failure(code)),
                    };
                    pending.finish(failed);
                }
                Poll::Ready(result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use futures::FutureExt as _;
    use tonic::Code;
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

    fn gauge(name: &str, upstream: &str) -> f64 {
        metric(&format!("{name}{{upstream=\"{upstream}\"}} "))
    }

    /// A breaker with a seeded random source, so that runs repeat.
    fn breaker_layer(upstream: &str, policy: BreakerPolicy) -> BreakerLayer {
        BreakerLayer::with_rng(upstream, Live::new(policy), fastrand::Rng::with_seed(7))
    }

    /// An inner service answering every call with `answer()`, and its call count.
    fn counting<F>(
        answer: F,
    ) -> (
        impl Service<
            Request<()>,
            Response = Response<Body>,
            Error = io::Error,
            Future = impl Send + 'static,
        > + Clone,
        Arc<AtomicUsize>,
    )
    where
        F: Fn() -> Result<Response<Body>, io::Error> + Clone,
    {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service = tower::service_fn(move |_req: Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer())
        });
        (service, calls)
    }

    fn answer(code: Code) -> Result<Response<Body>, io::Error> {
        Ok(grpc::refusal(Status::new(code, "from the upstream")))
    }

    /// Makes `n` calls; returns the responses (errors as `None`).
    async fn call_n<S>(service: &S, n: usize) -> Vec<Option<Response<Body>>>
    where
        S: Service<Request<()>, Response = Response<Body>> + Clone,
    {
        let mut responses = Vec::new();
        for _ in 0..n {
            responses.push(service.clone().oneshot(Request::new(())).await.ok());
        }
        responses
    }

    #[tokio::test(start_paused = true)]
    async fn no_rejections_while_healthy() {
        // Every third call fails: the upstream accepts more than 1/K of the calls.
        let count = Arc::new(AtomicUsize::new(0));
        let (inner, calls) = counting(move || {
            if count.fetch_add(1, Ordering::SeqCst).is_multiple_of(3) {
                answer(Code::Unavailable)
            } else {
                Ok(Response::new(Body::empty()))
            }
        });
        let service = breaker_layer("breaker-healthy", BreakerPolicy::default()).layer(inner);
        call_n(&service, 500).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            500,
            "every call reached the upstream"
        );
        assert_eq!(gauge(PROBABILITY, "breaker-healthy"), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_upstream_is_throttled_once_the_window_fills() {
        let upstream = "breaker-down";
        let (inner, calls) = counting(|| answer(Code::Unavailable));
        let policy = BreakerPolicy::default();
        let service = breaker_layer(upstream, policy.clone()).layer(inner);
        let rejected_before = metric(&format!("{REJECTED}{{upstream=\"{upstream}\"}}"));

        call_n(&service, policy.min_requests as usize).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            policy.min_requests as usize,
            "below min_requests, every call goes through"
        );
        call_n(&service, 190).await;
        let reached = calls.load(Ordering::SeqCst);
        assert!(
            reached < 40,
            "{reached} of 200 calls reached a dead upstream"
        );
        let rejected = metric(&format!("{REJECTED}{{upstream=\"{upstream}\"}}")) - rejected_before;
        assert_eq!(rejected as usize, 200 - reached, "rejections are counted");
        assert_eq!(gauge(OPEN, upstream), 1.0, "the breaker shows open");
        assert!(gauge(PROBABILITY, upstream) > 0.9);

        // A rejection is answered on the first poll, without the upstream.
        let response = loop {
            let before = calls.load(Ordering::SeqCst);
            let response = service
                .clone()
                .oneshot(Request::new(()))
                .now_or_never()
                .expect("answered at once")
                .unwrap();
            if calls.load(Ordering::SeqCst) == before {
                break response;
            }
        };
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with("upstream breaker-down: circuit open: "),
            "{}",
            status.message()
        );
        assert!(
            status
                .message()
                .contains("calls failed in 10 s; rejected by adaptive throttling"),
            "{}",
            status.message()
        );
        assert_eq!(
            grpc::retry_pushback(response.headers()),
            Some(None),
            "a local rejection asks not to be retried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transport_errors_count_as_failures() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let inner = tower::service_fn(move |_req: Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<Response<Body>, _>(io::Error::other("refused")))
        });
        let service = breaker_layer("breaker-refused", BreakerPolicy::default()).layer(inner);
        call_n(&service, 200).await;
        let reached = calls.load(Ordering::SeqCst);
        assert!(
            reached < 40,
            "{reached} of 200 calls reached a refusing upstream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_counts_as_accept() {
        let (inner, calls) = counting(|| answer(Code::NotFound));
        let service = breaker_layer("breaker-not-found", BreakerPolicy::default()).layer(inner);
        call_n(&service, 200).await;
        assert_eq!(calls.load(Ordering::SeqCst), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_exceeded_counts_as_failure_only_when_listed() {
        let (inner, calls) = counting(|| answer(Code::DeadlineExceeded));
        let service = breaker_layer("breaker-deadline", BreakerPolicy::default()).layer(inner);
        call_n(&service, 100).await;
        assert_eq!(calls.load(Ordering::SeqCst), 100, "an accept by default");

        let (inner, calls) = counting(|| answer(Code::DeadlineExceeded));
        let policy = BreakerPolicy {
            failure_codes: vec!["UNAVAILABLE".into(), "DEADLINE_EXCEEDED".into()],
            ..BreakerPolicy::default()
        };
        let service = breaker_layer("breaker-deadline-listed", policy).layer(inner);
        call_n(&service, 100).await;
        assert!(calls.load(Ordering::SeqCst) < 40);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_dropped_before_an_answer_count_as_failures() {
        // A black hole: the upstream never answers; callers give up.
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let inner = tower::service_fn(move |_req: Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<Response<Body>, io::Error>>()
        });
        let service = breaker_layer("breaker-black-hole", BreakerPolicy::default()).layer(inner);
        let mut rejected = 0;
        for _ in 0..100 {
            if let Some(response) = service.clone().oneshot(Request::new(())).now_or_never() {
                assert_eq!(
                    grpc::status_code(response.unwrap().headers()),
                    Some(Code::Unavailable)
                );
                rejected += 1;
            }
        }
        assert!(rejected > 60, "only {rejected} of 100 calls rejected");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_gets_through_after_the_upstream_returns_and_closes_the_breaker() {
        let upstream = "breaker-recovers";
        let down = Arc::new(AtomicBool::new(true));
        let is_down = down.clone();
        let (inner, calls) = counting(move || {
            if is_down.load(Ordering::SeqCst) {
                answer(Code::Unavailable)
            } else {
                Ok(Response::new(Body::empty()))
            }
        });
        let policy = BreakerPolicy::default();
        let service = breaker_layer(upstream, policy.clone()).layer(inner);
        call_n(&service, 200).await;
        assert_eq!(gauge(OPEN, upstream), 1.0);

        // The upstream returns; within one probe interval a call reaches it.
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(policy.probe_interval()).await;
        let before = calls.load(Ordering::SeqCst);
        let response = call_n(&service, 1).await.remove(0).unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before + 1,
            "the probe went through"
        );
        assert_eq!(grpc::status_code(response.headers()), None, "and succeeded");

        // Closed: every call reaches the upstream again.
        let responses = call_n(&service, 100).await;
        assert_eq!(calls.load(Ordering::SeqCst), before + 101);
        assert!(responses.iter().all(|r| {
            r.as_ref()
                .is_some_and(|r| grpc::status_code(r.headers()).is_none())
        }));
        assert_eq!(gauge(OPEN, upstream), 0.0);
        assert_eq!(gauge(PROBABILITY, upstream), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_is_let_through_once_per_interval_while_down() {
        let (inner, calls) = counting(|| answer(Code::Unavailable));
        // K = 1 and many calls: the formula alone lets almost nothing through.
        let policy = BreakerPolicy {
            k: 1.0,
            ..BreakerPolicy::default()
        };
        let service = breaker_layer("breaker-probes", policy.clone()).layer(inner);
        call_n(&service, 2_000).await;
        for _ in 0..5 {
            tokio::time::sleep(policy.probe_interval()).await;
            let before = calls.load(Ordering::SeqCst);
            call_n(&service, 1).await;
            assert_eq!(
                calls.load(Ordering::SeqCst),
                before + 1,
                "a probe each interval"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_slide_out_of_the_window() {
        let (inner, calls) = counting(|| answer(Code::Unavailable));
        // Probes out of the way: only the window lets calls through.
        let policy = BreakerPolicy {
            probe_interval_ms: 3_600_000,
            ..BreakerPolicy::default()
        };
        let service = breaker_layer("breaker-slides", policy.clone()).layer(inner);
        call_n(&service, 200).await;
        let reached = calls.load(Ordering::SeqCst);
        assert!(reached < 40);

        // Most of a window later the failures still count.
        tokio::time::sleep(policy.window() * 8 / 10).await;
        call_n(&service, 10).await;
        assert!(
            calls.load(Ordering::SeqCst) - reached < 10,
            "still throttled"
        );

        // A window after the last calls, the window is empty: calls go through again.
        tokio::time::sleep(policy.window()).await;
        let before = calls.load(Ordering::SeqCst);
        call_n(&service, policy.min_requests as usize).await;
        assert_eq!(
            calls.load(Ordering::SeqCst) - before,
            policy.min_requests as usize
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_change_applies_to_the_next_call_and_keeps_the_counts() {
        let (inner, calls) = counting(|| answer(Code::Unavailable));
        let policy = Live::new(BreakerPolicy::default());
        let layer = BreakerLayer::with_rng(
            "breaker-reload",
            policy.clone(),
            fastrand::Rng::with_seed(3),
        );
        let service = layer.layer(inner);
        call_n(&service, 50).await;
        let reached = calls.load(Ordering::SeqCst);
        assert!(reached < 30);

        policy.set(BreakerPolicy {
            min_requests: 1_000,
            ..BreakerPolicy::default()
        });
        call_n(&service, 10).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            reached + 10,
            "below the new minimum"
        );
        policy.set(BreakerPolicy::default());
        call_n(&service, 10).await;
        assert!(
            calls.load(Ordering::SeqCst) < reached + 15,
            "the failures were kept across the changes"
        );
    }

    #[test]
    fn the_probability_follows_the_sre_formula() {
        assert_eq!(reject_probability(0, 0, 2.0), 0.0);
        assert_eq!(
            reject_probability(100, 50, 2.0),
            0.0,
            "half accepted, K = 2"
        );
        assert_eq!(reject_probability(100, 80, 2.0), 0.0);
        assert!((reject_probability(100, 40, 2.0) - 20.0 / 101.0).abs() < 1e-12);
        assert!((reject_probability(100, 0, 2.0) - 100.0 / 101.0).abs() < 1e-12);
        assert!((reject_probability(100, 60, 1.0) - 40.0 / 101.0).abs() < 1e-12);
        assert!(rejects(0.5, 0.49) && !rejects(0.5, 0.5) && !rejects(0.0, 0.0));
    }

    #[test]
    fn the_state_applies_the_formula_past_min_requests() {
        let policy = BreakerPolicy::default();
        let now = Instant::now();
        let mut state = State {
            window: Window::new(),
            last_probe: None,
            open: false,
            rng: fastrand::Rng::with_seed(1),
        };
        // 9 calls answered, 2 accepted: below min_requests.
        for failed in [false, false, true, true, true, true, true, true, true] {
            state.finish(now, &policy, failed);
        }
        assert_eq!(state.admit(now, &policy), (Admission::Pass, 0.0));
        // 20 calls, 5 accepted: (20 - 2 * 5) / 21.
        for failed in [
            false, false, false, true, true, true, true, true, true, true, true,
        ] {
            state.finish(now, &policy, failed);
        }
        let (_, probability) = state.admit(now, &policy);
        assert!((probability - 10.0 / 21.0).abs() < 1e-12, "{probability}");
    }

    #[test]
    fn the_window_slides_by_buckets() {
        let span = Duration::from_secs(10);
        let start = Instant::now();
        let mut window = Window::<2>::new();
        // One event a second for 30 s.
        for s in 0..30 {
            window.add(start + Duration::from_secs(s), span, 0, 1);
        }
        window.add(start + Duration::from_secs(29), span, 1, 5);
        let now = start + Duration::from_secs(29);
        assert_eq!(window.totals(now, span), [10, 5], "the last 10 s");
        assert_eq!(window.totals(now + Duration::from_secs(5), span), [5, 5]);
        assert_eq!(window.totals(now + span, span), [0, 0]);
        window.clear();
        assert_eq!(window.totals(now, span), [0, 0]);
    }

    #[test]
    fn policies_parse_with_defaults_and_bad_values_name_their_key() {
        let policy: BreakerPolicy = toml::from_str("k = 3\nfailure_codes = []").unwrap();
        assert_eq!(
            policy,
            BreakerPolicy {
                k: 3.0,
                failure_codes: vec![],
                ..BreakerPolicy::default()
            }
        );
        assert!(BreakerPolicy::default().validate().is_ok());
        assert!(toml::from_str::<BreakerPolicy>("threshold = 3").is_err());
        let key = |policy: BreakerPolicy| policy.validate().unwrap_err().0;
        assert_eq!(
            key(BreakerPolicy {
                k: 0.5,
                ..BreakerPolicy::default()
            }),
            "k"
        );
        assert_eq!(
            key(BreakerPolicy {
                window_ms: 0,
                ..BreakerPolicy::default()
            }),
            "window_ms"
        );
        assert_eq!(
            key(BreakerPolicy {
                failure_codes: vec!["OK".into()],
                ..BreakerPolicy::default()
            }),
            "failure_codes[0]"
        );
    }
}
