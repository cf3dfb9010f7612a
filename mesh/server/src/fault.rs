//! Fault injection: chaos drills and resilience tests without touching a service's code.
//!
//! Like Istio's `fault` policy, a `[[faults]]` entry of mesh-config makes a share of the calls
//! of a method slow or failed; unlike a client-side proxy's, the fault is injected by the
//! server that serves the method, so what is exercised is the whole path: the caller's
//! deadline cancelling work in the callee, retries, the breaker, the gateway's answers. Three
//! kinds, combinable:
//!
//! - `delay_ms`: the call waits before it runs (and is cancelled like any call if its
//!   caller's deadline passes meanwhile);
//! - `abort`: the call is answered with that gRPC code and never runs;
//! - `abort` with `abort_after_call = true`: the call runs (its effects are kept), then its
//!   answer is replaced by the error: a lost response, the case idempotency keys exist for.
//!
//! Off by default: with no `[[faults]]` the layer costs one read of an empty list per call.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::{grpc, live::Live};

pub use crate::policy::FaultRule;

// === FaultLayer ===

/// Server layer injecting the configured faults.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    rules: Live<Vec<FaultRule>>,
}

impl FaultLayer {
    /// Injects the faults of `rules` (the first rule matching a call applies).
    pub fn new(rules: Live<Vec<FaultRule>>) -> Self {
        Self { rules }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Fault {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// Service made by [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    rules: Live<Vec<FaultRule>>,
}

// === impl Fault ===

impl<S, B> Service<Request<B>> for Fault<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let rules = self.rules.get();
        let path = req.uri().path();
        let rule = match rules.iter().find(|rule| rule.matches(path)) {
            Some(rule) if fastrand::f64() * 100.0 < rule.percent => rule.clone(),
            _ => return Box::pin(self.inner.call(req)),
        };
        let path = path.to_owned();
        // The inner service was made ready for this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if rule.delay_ms > 0 {
                tracing::info!(
                    delay_ms = rule.delay_ms,
                    "fault injected: delaying the call"
                );
                tokio::time::sleep(Duration::from_millis(rule.delay_ms)).await;
            }
            let Some(status) = rule.abort_status(&path) else {
                return inner.call(req).await;
            };
            if rule.abort_after_call {
                let response = inner.call(req).await?;
                drop(response);
                tracing::info!(code = ?status.code(), "fault injected: the call ran, its answer is lost");
            } else {
                tracing::info!(code = ?status.code(), "fault injected: the call is aborted");
            }
            Ok(grpc::refusal(status))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tonic::Code;
    use tower::ServiceExt;

    fn counting() -> (
        Arc<AtomicUsize>,
        impl Service<
            Request<()>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
            Future = impl Future + Send + 'static,
        > + Clone
        + Send
        + 'static,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let service = tower::service_fn(move |_req: Request<()>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) }
        });
        (calls, service)
    }

    fn call_to(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    fn rule(method: &str) -> FaultRule {
        FaultRule {
            method: method.into(),
            ..FaultRule::default()
        }
    }

    #[tokio::test]
    async fn an_abort_answers_the_code_and_the_call_never_runs() {
        let (calls, inner) = counting();
        let rules = Live::new(vec![FaultRule {
            abort: "UNAVAILABLE".into(),
            ..rule("weft.user.v1.UserService/GetMe")
        }]);
        let service = FaultLayer::new(rules).layer(inner);
        let response = service
            .clone()
            .oneshot(call_to("/weft.user.v1.UserService/GetMe"))
            .await
            .unwrap();
        assert_eq!(
            grpc::status_code(response.headers()),
            Some(Code::Unavailable)
        );
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        let other = service
            .oneshot(call_to("/weft.user.v1.UserService/GetUser"))
            .await
            .unwrap();
        assert_eq!(
            grpc::status_code(other.headers()),
            None,
            "other methods untouched"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_abort_after_the_call_keeps_its_effect_and_loses_its_answer() {
        let (calls, inner) = counting();
        let rules = Live::new(vec![FaultRule {
            abort: "UNAVAILABLE".into(),
            abort_after_call: true,
            ..rule("weft.order.v1.OrderService/*")
        }]);
        let response = FaultLayer::new(rules)
            .layer(inner)
            .oneshot(call_to("/weft.order.v1.OrderService/CreateOrder"))
            .await
            .unwrap();
        assert_eq!(
            grpc::status_code(response.headers()),
            Some(Code::Unavailable)
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1, "the call ran");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_call_then_runs_it_and_a_reload_turns_it_off() {
        let (calls, inner) = counting();
        let rules = Live::new(vec![FaultRule {
            delay_ms: 2000,
            ..rule("*")
        }]);
        let service = FaultLayer::new(rules.clone()).layer(inner);
        let started = tokio::time::Instant::now();
        service.clone().oneshot(call_to("/a.B/C")).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        rules.set(Vec::new());
        let started = tokio::time::Instant::now();
        service.oneshot(call_to("/a.B/C")).await.unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no fault after the reload"
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_key_named() {
        let never = FaultRule {
            percent: 0.0,
            abort: "INTERNAL".into(),
            ..rule("*")
        };
        assert!(never.validate().is_ok());
        let cases = [
            (
                FaultRule {
                    percent: 101.0,
                    ..never.clone()
                },
                "percent",
            ),
            (
                FaultRule {
                    abort: "BOOM".into(),
                    ..never.clone()
                },
                "abort",
            ),
            (
                FaultRule {
                    abort: "OK".into(),
                    ..never.clone()
                },
                "abort",
            ),
            (rule("*"), "delay_ms"),
            (
                FaultRule {
                    method: "GetMe".into(),
                    ..never.clone()
                },
                "method",
            ),
            (
                FaultRule {
                    abort: String::new(),
                    delay_ms: 5,
                    abort_after_call: true,
                    ..never
                },
                "abort_after_call",
            ),
        ];
        for (bad, key) in cases {
            assert_eq!(bad.validate().unwrap_err().0, key, "{bad:?}");
        }
    }
}
