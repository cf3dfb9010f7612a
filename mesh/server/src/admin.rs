//! The admin HTTP listener beside a process's API listener, for operations tools rather than
//! clients: the services' `GET /metrics` (the Prometheus text of the process's metrics
//! registry) and `GET /readyz` (started by [`crate::server::serve`]), or what the gateway hands it
//! ([`AdminServer::start_with`]: its metrics and readiness).

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use weft_tls::{Expiry, MeshTls};

use crate::metrics::{CONTENT_TYPE, registry, spawn_upkeep};

/// What an admin listener answers each request with.
pub type AdminHandler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// An admin HTTP listener (HTTP/1.1). Stops when dropped.
pub struct AdminServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// The services' listener on `addr` (port 0: any free port): `GET /metrics` answers the
    /// Prometheus text of `metrics::registry`. Serves until dropped; also runs the registry's
    /// upkeep.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(
            addr,
            Arc::new(|req| Box::pin(async move { metrics_only(req) })),
        )
        .await
    }

    /// A service's listener on `addr`: `GET /metrics`, and `GET /readyz`, which fails (503)
    /// while the service does not serve (`serving`: still initialising, or draining) and when
    /// the process's mTLS certificate `tls` has expired, and names the certificate's expiry.
    /// What a gRPC health check says, for probes that cannot present a client certificate.
    pub async fn start_service(
        addr: SocketAddr,
        tls: Option<MeshTls>,
        serving: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            addr,
            Arc::new(move |req| {
                let answer = match req.uri().path() {
                    "/readyz" => readiness(serving.load(Ordering::Acquire), tls.as_ref()),
                    _ => metrics_only(req),
                };
                Box::pin(async move { answer })
            }),
        )
        .await
    }

    /// A listener on `addr` answering with `handler`; serves until dropped and runs the
    /// metrics registry's upkeep.
    pub async fn start_with(addr: SocketAddr, handler: AdminHandler) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin_listen, /metrics)"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, handler));
        Ok(Self {
            addr,
            task,
            upkeep: spawn_upkeep(),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        self.upkeep.abort();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, handler: AdminHandler) {
    // Connections live in the set, so aborting this task closes them too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let handler = handler.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let answer = handler(req);
                            async move { Ok::<_, Infallible>(answer.await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A plain answer of an admin listener.
pub fn plain_answer(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The certificate's part of readiness: `None` when ready (mTLS off, or the certificate not
/// expired), with a line to report either way.
pub fn certificate_readiness(tls: Option<&MeshTls>) -> (bool, String) {
    let Some(tls) = tls else {
        return (true, "mTLS off\n".into());
    };
    match tls.expiry() {
        Expiry::Fine { secs } => (true, format!("certificate: expires in {secs} s\n")),
        Expiry::Near { secs } => (
            true,
            format!("certificate: expires soon, in {secs} s: run `weft certs --rotate`\n"),
        ),
        Expiry::Expired => (
            false,
            "certificate: expired: run `weft certs --rotate`\n".into(),
        ),
    }
}

fn readiness(serving: bool, tls: Option<&MeshTls>) -> Response<Full<Bytes>> {
    let (certificate_ok, line) = certificate_readiness(tls);
    let ready = serving && certificate_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let state = if serving {
        "serving"
    } else {
        "not serving (starting or draining)"
    };
    let body = format!(
        "{}\n{state}\n{line}",
        if ready { "ready" } else { "not ready" }
    );
    plain_answer(status, "text/plain; charset=utf-8", Bytes::from(body))
}

fn metrics_only<B>(req: Request<B>) -> Response<Full<Bytes>> {
    let answer = plain_answer;
    let text = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => answer(
            StatusCode::OK,
            CONTENT_TYPE,
            Bytes::from(registry().render()),
        ),
        (_, "/metrics") => {
            let mut response = answer(
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                Bytes::from_static(b"method not allowed\n"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            text,
            Bytes::from_static(b"not found: the admin listener serves /metrics\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_serving_state() {
        let starting = readiness(false, None);
        assert_eq!(starting.status(), StatusCode::SERVICE_UNAVAILABLE);
        let serving = readiness(true, None);
        assert_eq!(serving.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn the_admin_listener_serves_metrics() {
        let admin = AdminServer::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = admin.local_addr();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = get("/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(CONTENT_TYPE), "{answer}");
        if cfg!(target_os = "linux") {
            assert!(answer.contains("# TYPE process_cpu_seconds_total counter"));
            assert!(answer.contains("process_resident_memory_bytes "));
        }
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        drop(admin);
        tokio::task::yield_now().await;
    }
}
