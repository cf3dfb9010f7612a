//! Test harness for the whole request path: a gateway on loopback in front of a fake gRPC
//! upstream, and a raw HTTP/1.1 client that reads its answers as a client sees them.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use weft_mesh::MeshConfig;

use crate::serve::Gateway;

/// How the fake upstream answers a call, given its path.
pub(crate) type Answer =
    Arc<dyn Fn(String) -> BoxFuture<'static, Response<tonic::body::Body>> + Send + Sync>;

/// A gRPC server on loopback answering every call with `answer(path)`.
pub(crate) async fn fake_upstream(answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(req.uri().path().to_owned()).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A gateway on loopback whose upstreams are all `upstream`, with `env` config overrides.
pub(crate) async fn gateway(upstream: SocketAddr, env: &[(&str, &str)]) -> SocketAddr {
    let endpoint = format!("http://{upstream}");
    crate::test_support::install_weft_contract();
    let mut vars: Vec<(String, String)> = [
        ("AUTH", "weft.auth.v1.AuthService"),
        ("USER", "weft.user.v1.UserService"),
        ("ORDER", "weft.order.v1.OrderService"),
    ]
    .iter()
    .flat_map(|(name, service)| {
        [
            (
                format!("WEFT_UPSTREAMS__{name}__ENDPOINT"),
                endpoint.clone(),
            ),
            (
                format!("WEFT_UPSTREAMS__{name}__GRPC_SERVICES"),
                format!("[\"{service}\"]"),
            ),
        ]
    })
    .collect();
    // The upstreams here are in-process plain-text servers: an explicit opt-out of mTLS.
    vars.push(("WEFT_MTLS__MODE".to_string(), "off".to_string()));
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = MeshConfig::load_from(None, vars).expect("test config is valid");
    let gateway = Arc::new(Gateway::new(Arc::new(config)).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The gateway's own accept loop, with its connection limits; it stops with the test.
    tokio::spawn(crate::serve(
        listener,
        gateway,
        None,
        std::future::pending(),
        Duration::ZERO,
    ));
    addr
}

/// An HTTP answer as a client sees it.
#[derive(Debug)]
pub(crate) struct Answered {
    /// The status code.
    pub(crate) status: u16,
    /// The headers, names in lowercase.
    headers: Vec<(String, String)>,
    /// The body as JSON (`null` when it is not JSON).
    pub(crate) body: serde_json::Value,
}

impl Answered {
    /// The value of header `name` (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request with `headers` (and a JSON body for POST) and reads the answer.
pub(crate) async fn send(
    gateway: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answered {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    let body = if method == "POST" { "{}" } else { "" };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Answered {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}
