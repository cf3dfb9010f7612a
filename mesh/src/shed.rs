//! Load shedding: a process-wide cap on calls in flight.
//!
//! Past `server.max_concurrent_requests`, a call is answered UNAVAILABLE at once instead of
//! queueing: a queue hides overload until every caller's deadline has passed, while a fast
//! refusal lets the caller retry elsewhere or back off.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use tokio::sync::Semaphore;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

/// Server layer refusing calls beyond a concurrency limit.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl LoadShedLayer {
    /// Admits at most `limit` calls at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service made by [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

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
        match self.layer.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let response = fut.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                let status = Status::unavailable(format!(
                    "overloaded: {} calls already in flight",
                    self.layer.limit
                ));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn sheds_calls_beyond_the_limit_and_admits_them_again_after() {
        // The inner service holds each call until released.
        let gate = Arc::new(tokio::sync::Notify::new());
        let inner_gate = gate.clone();
        let inner = tower::service_fn(move |_req: Request<()>| {
            let gate = inner_gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let service = LoadShedLayer::new(1).layer(inner);

        let first = tokio::spawn(service.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        let refused = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            refused.headers()["grpc-status"],
            "14",
            "second call is shed"
        );

        gate.notify_one();
        first.await.unwrap().unwrap();
        let admitted = tokio::spawn(service.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        gate.notify_one();
        let response = admitted.await.unwrap().unwrap();
        assert!(
            response.headers().get("grpc-status").is_none(),
            "admitted once freed"
        );
    }
}
