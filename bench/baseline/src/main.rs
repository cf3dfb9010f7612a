//! `weft-bench-baseline`: the benchmark's yardstick, a bare hyper 1 server that answers every
//! GET with one fixed JSON product.
//!
//! It does what the weft path does at the HTTP edge (HTTP/1.1 keep-alive on a current_thread
//! runtime, `Content-Type: application/json`) and nothing else: no routing, no upstream, no
//! database. `bench/run.sh` compares `GET /v1/products/{id}` through the gateway against it.
//!
//! Usage: `weft-bench-baseline [ADDR] [BODY_FILE]` (default `127.0.0.1:8090`, and a built-in
//! product shaped like the gateway's answer). `run.sh` passes the gateway's own answer as
//! BODY_FILE so that both servers send bodies of the same size.

use std::{convert::Infallible, net::SocketAddr, process::ExitCode};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A product as the gateway renders one (every field present, int64 as strings).
const PRODUCT: &str = r#"{"id":"4f1c2b7e9a8d4e0f8b6a5c3d2e1f0a9b","name":"Benchmark widget","description":"A product created by bench/run.sh","unitPriceCents":"1999","currency":"USD","stock":"1000000","createTime":"2025-01-01T00:00:00.000001Z","updateTime":"2025-01-01T00:00:00.000001Z"}"#;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = match args.next().as_deref().unwrap_or("127.0.0.1:8090").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("weft-bench-baseline: bad address: {e}");
            return ExitCode::from(2);
        }
    };
    let body = match args.next() {
        Some(file) => match std::fs::read(&file) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                eprintln!("weft-bench-baseline: cannot read {file}: {e}");
                return ExitCode::from(2);
            }
        },
        None => Bytes::from_static(PRODUCT.as_bytes()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weft-bench-baseline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr, body)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr, body: Bytes) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "weft-bench-baseline listening on {}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("weft-bench-baseline: accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let service = service_fn(move |req| answer(req, body.clone()));
        tokio::spawn(async move {
            // Keep-alive is hyper's default for HTTP/1.1.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(body));
    if req.method() != Method::GET && req.method() != Method::HEAD {
        *response.body_mut() = Full::new(Bytes::new());
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return Ok(response);
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
