//! Load shedding: caps on calls in flight, per process and per method.
//!
//! Past `server.max_concurrent_requests` calls in flight, a call is answered UNAVAILABLE at
//! once instead of queueing: a queue hides overload until every caller's deadline has passed,
//! while a fast refusal lets the caller retry elsewhere or back off. A method named in
//! `server.method_concurrency` has its own, smaller cap (answered RESOURCE_EXHAUSTED), so one
//! slow method (a report, a search) cannot take every slot from the cheap ones.
//!
//! Both refusals ask the caller to wait a second before retrying (`grpc-retry-pushback-ms`),
//! which the gateway turns into `Retry-After: 1`. Health checks and reflection are never shed:
//! an overloaded server is still alive, and a probe failing under load would get it restarted
//! when it most needs to keep its warm state.
//!
//! The caps are counters, not semaphores, so a reload changes them at once: raising a cap
//! admits more calls on the next request; lowering it refuses new calls until enough running
//! ones finish (none is interrupted). A call releases its slot when it completes or when it is
//! dropped (the caller went away).
//!
//! ```ignore
//! let shed = LoadShedLayer::new(Live::new(ShedPolicy::from(&config.server)));
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::Request;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::{config::ServerConfig, grpc, live::Live};

/// How long a shed caller is asked to wait before retrying.
pub const PUSHBACK: Duration = Duration::from_secs(1);

/// The caps on calls in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShedPolicy {
    /// Calls in flight per process; more are refused with UNAVAILABLE.
    pub max_concurrent_requests: usize,
    /// Calls in flight per method (`weft.user.v1.UserService/GetMe`); more are refused with
    /// RESOURCE_EXHAUSTED.
    pub method_concurrency: BTreeMap<String, usize>,
}

impl From<&ServerConfig> for ShedPolicy {
    fn from(config: &ServerConfig) -> Self {
        Self {
            max_concurrent_requests: config.max_concurrent_requests,
            method_concurrency: config.method_concurrency.clone(),
        }
    }
}

// === LoadShedLayer ===

/// Server layer refusing calls beyond the caps of a live [`ShedPolicy`].
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

/// Counters shared by every clone of the layer and its services.
#[derive(Debug)]
struct Shared {
    policy: Live<ShedPolicy>,
    in_flight: Arc<AtomicUsize>,
    /// Calls in flight per capped method, created when a capped method is first called.
    by_method: RwLock<HashMap<String, Arc<AtomicUsize>>>,
}

impl LoadShedLayer {
    /// Sheds calls beyond the caps that `policy` holds at each call.
    pub fn new(policy: Live<ShedPolicy>) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy,
                in_flight: Arc::new(AtomicUsize::new(0)),
                by_method: RwLock::new(HashMap::new()),
            }),
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Takes a slot for a call of `path`, or says why not.
    fn admit(&self, path: &str) -> Result<Permit, Status> {
        let policy = self.policy.get();
        let process =
            Slot::take(&self.in_flight, policy.max_concurrent_requests).ok_or_else(|| {
                Status::unavailable(format!(
                    "overloaded: {} calls already in flight",
                    policy.max_concurrent_requests
                ))
            })?;
        let method = path.strip_prefix('/').unwrap_or(path);
        let Some(&limit) = policy.method_concurrency.get(method) else {
            return Ok(Permit {
                _process: process,
                _method: None,
            });
        };
        let counter = self.method_counter(method);
        match Slot::take(&counter, limit) {
            Some(slot) => Ok(Permit {
                _process: process,
                _method: Some(slot),
            }),
            None => Err(Status::resource_exhausted(format!(
                "overloaded: {limit} calls of {method} already in flight"
            ))),
        }
    }

    /// The in-flight counter of a capped method.
    fn method_counter(&self, method: &str) -> Arc<AtomicUsize> {
        if let Some(counter) = self
            .by_method
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(method)
        {
            return counter.clone();
        }
        self.by_method
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(method.to_owned())
            .or_default()
            .clone()
    }
}

/// A call's slots, given back when it is dropped.
struct Permit {
    _process: Slot,
    _method: Option<Slot>,
}

/// One unit of an in-flight counter.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Counts one more call unless `limit` are already in flight.
    fn take(counter: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(counter.clone());
        (before < limit).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// === LoadShed ===

/// Service made by [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

// === impl LoadShed ===

impl<S, B> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if grpc::is_infrastructure(path) {
            return Box::pin(self.inner.call(req));
        }
        match self.shared.admit(path) {
            Ok(permit) => {
                let call = self.inner.call(req);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(status) => Box::pin(std::future::ready(Ok(grpc::refusal_with_pushback(
                status,
                Some(PUSHBACK),
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;
    use tonic::Code;
    use tower::ServiceExt;

    const GET_ME: &str = "/weft.user.v1.UserService/GetMe";
    const LIST: &str = "/weft.user.v1.UserService/ListUsers";

    /// An inner service that holds each call until the test adds a permit to `gate`.
    fn held(
        gate: Arc<Semaphore>,
    ) -> impl Service<
        Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = impl Future + Send + 'static,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("never closed").forget();
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        })
    }

    fn policy(max: usize, methods: &[(&str, usize)]) -> Live<ShedPolicy> {
        Live::new(ShedPolicy {
            max_concurrent_requests: max,
            method_concurrency: methods
                .iter()
                .map(|(m, n)| (m.trim_start_matches('/').to_owned(), *n))
                .collect(),
        })
    }

    fn request(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    /// Starts a call that stays in flight, and lets it reach the inner service.
    async fn start<S>(
        service: &S,
        path: &str,
    ) -> tokio::task::JoinHandle<Result<S::Response, S::Error>>
    where
        S: Service<Request<()>> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: Send,
        S::Error: Send,
    {
        let handle = tokio::spawn(service.clone().oneshot(request(path)));
        tokio::task::yield_now().await;
        handle
    }

    fn assert_refused(response: &http::Response<tonic::body::Body>, code: Code, what: &str) {
        assert_eq!(grpc::status_code(response.headers()), Some(code), "{what}");
        assert_eq!(
            grpc::retry_pushback(response.headers()),
            Some(Some(PUSHBACK)),
            "{what}: the caller is asked to wait a second"
        );
    }

    fn message(response: &http::Response<tonic::body::Body>) -> String {
        Status::from_header_map(response.headers())
            .map(|s| s.message().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn method_caps_are_read_from_mesh_config_and_checked() {
        use crate::config::MeshConfig;
        let env = |value: &str| {
            MeshConfig::load_from(
                None,
                [(
                    "WEFT_SERVER__METHOD_CONCURRENCY".to_owned(),
                    value.to_owned(),
                )],
            )
        };
        let config = env("{ \"weft.user.v1.UserService/GetMe\" = 8 }").unwrap();
        let policy = ShedPolicy::from(&config.server);
        assert_eq!(policy.max_concurrent_requests, 1024);
        assert_eq!(
            policy.method_concurrency["weft.user.v1.UserService/GetMe"],
            8
        );
        let err = env("{ \"weft.user.v1.UserService/GetMe\" = 0 }").unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("server.method_concurrency.\"weft.user.v1.UserService/GetMe\"")
        );
        let err = env("{ GetMe = 3 }").unwrap_err();
        assert!(err.reason.contains("package.Service/Method"), "{err}");
        assert!(MeshConfig::default().server.method_concurrency.is_empty());
    }

    #[tokio::test]
    async fn k_calls_beyond_the_limit_are_refused_at_once_and_the_rest_complete() {
        let (n, k) = (3, 2);
        let gate = Arc::new(Semaphore::new(0));
        let service = LoadShedLayer::new(policy(n, &[])).layer(held(gate.clone()));
        let mut running = Vec::new();
        for _ in 0..n {
            running.push(start(&service, GET_ME).await);
        }
        for _ in 0..k {
            // Refused without waiting for any running call.
            let refused = tokio::time::timeout(
                Duration::from_millis(100),
                service.clone().oneshot(request(GET_ME)),
            )
            .await
            .expect("a shed call is answered at once")
            .unwrap();
            assert_refused(&refused, Code::Unavailable, "a call beyond the process cap");
            assert_eq!(message(&refused), "overloaded: 3 calls already in flight");
        }
        gate.add_permits(n);
        for call in running {
            let response = call.await.unwrap().unwrap();
            assert_eq!(
                grpc::status_code(response.headers()),
                None,
                "admitted calls complete"
            );
        }
    }

    #[tokio::test]
    async fn a_method_cap_is_independent_of_other_methods() {
        let gate = Arc::new(Semaphore::new(0));
        let service = LoadShedLayer::new(policy(10, &[(GET_ME, 1)])).layer(held(gate.clone()));
        let first = start(&service, GET_ME).await;
        let refused = service.clone().oneshot(request(GET_ME)).await.unwrap();
        assert_refused(
            &refused,
            Code::ResourceExhausted,
            "a second GetMe beyond its cap of 1",
        );
        assert_eq!(
            message(&refused),
            "overloaded: 1 calls of weft.user.v1.UserService/GetMe already in flight"
        );
        // Another method still has the process's slots.
        let others = [start(&service, LIST).await, start(&service, LIST).await];
        assert!(
            others.iter().all(|call| !call.is_finished()),
            "ListUsers is admitted"
        );
        gate.add_permits(3);
        first.await.unwrap().unwrap();
        for call in others {
            assert_eq!(
                grpc::status_code(call.await.unwrap().unwrap().headers()),
                None
            );
        }
    }

    #[tokio::test]
    async fn health_checks_and_reflection_are_never_shed() {
        let gate = Arc::new(Semaphore::new(0));
        let service = LoadShedLayer::new(policy(1, &[])).layer(held(gate.clone()));
        let _busy = start(&service, GET_ME).await;
        let health = start(&service, "/grpc.health.v1.Health/Check").await;
        let reflection = start(
            &service,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        )
        .await;
        assert!(
            !health.is_finished() && !reflection.is_finished(),
            "both reach the service"
        );
        gate.add_permits(3);
        assert_eq!(
            grpc::status_code(health.await.unwrap().unwrap().headers()),
            None
        );
        assert_eq!(
            grpc::status_code(reflection.await.unwrap().unwrap().headers()),
            None
        );
    }

    #[tokio::test]
    async fn slots_come_back_when_a_call_completes_and_when_it_is_dropped() {
        let gate = Arc::new(Semaphore::new(0));
        let service = LoadShedLayer::new(policy(1, &[(GET_ME, 1)])).layer(held(gate.clone()));

        // Completed: the slot is free again.
        let first = start(&service, GET_ME).await;
        gate.add_permits(1);
        first.await.unwrap().unwrap();
        let second = start(&service, GET_ME).await;
        assert!(!second.is_finished(), "admitted after the first completed");

        // Dropped by its caller (a client that went away): the slot is free again too.
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        // Dropped after the layer admitted it, before it was ever polled.
        let mut caller = service.clone();
        let pending = caller.ready().await.unwrap().call(request(GET_ME));
        drop(pending);
        let third = start(&service, GET_ME).await;
        assert!(
            !third.is_finished(),
            "admitted after the second was dropped"
        );
        gate.add_permits(1);
        assert_eq!(
            grpc::status_code(third.await.unwrap().unwrap().headers()),
            None
        );
    }

    #[tokio::test]
    async fn raising_the_cap_by_a_reload_admits_more_calls() {
        let gate = Arc::new(Semaphore::new(0));
        let live = policy(1, &[]);
        let service = LoadShedLayer::new(live.clone()).layer(held(gate.clone()));
        let first = start(&service, GET_ME).await;
        let refused = service.clone().oneshot(request(GET_ME)).await.unwrap();
        assert_refused(&refused, Code::Unavailable, "beyond the cap of 1");

        live.set(ShedPolicy {
            max_concurrent_requests: 2,
            method_concurrency: BTreeMap::from([(GET_ME[1..].to_owned(), 5)]),
        });
        let second = start(&service, GET_ME).await;
        assert!(!second.is_finished(), "admitted under the new cap of 2");
        let refused = service.clone().oneshot(request(GET_ME)).await.unwrap();
        assert_eq!(message(&refused), "overloaded: 2 calls already in flight");

        // Lowering it refuses new calls but interrupts none.
        live.set(ShedPolicy {
            max_concurrent_requests: 2,
            method_concurrency: BTreeMap::from([(GET_ME[1..].to_owned(), 1)]),
        });
        let refused = service.clone().oneshot(request(LIST)).await.unwrap();
        assert_refused(&refused, Code::Unavailable, "the process cap is still 2");
        gate.add_permits(2);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
    }
}
