//! Health checks of the children: `grpc.health.v1` for the services, `GET /healthz` and
//! `GET /readyz` for the gateway (a minimal HTTP/1.1 client over a TCP stream, enough for
//! loopback checks and tests).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Largest HTTP response [`http_get`] reads.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// An HTTP response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, decoded from chunks if it came chunked, as (lossy) UTF-8.
    pub body: String,
}

/// The address to connect to for a listen address: `0.0.0.0`/`[::]` become loopback.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// Asks the gRPC server at `addr` for the health of the whole server (service `""`).
/// `Err` says why it is not SERVING yet.
pub async fn grpc_serving(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {}", root_cause(&e)))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|status| format!("health check failed: {}", status.message()))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("health is {}", other.as_str_name())),
    }
}

/// Like [`grpc_serving`], over mTLS when this process has installed its certificate (the
/// server's must then be `service`'s).
pub async fn grpc_serving_as(
    addr: SocketAddr,
    timeout: Duration,
    service: &str,
) -> Result<(), String> {
    if weft_mesh::mtls::current().is_none() {
        return grpc_serving(addr, timeout).await;
    }
    let authority = addr
        .to_string()
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let connection = weft_mesh::connection::Connection::with_tls(
        addr,
        http::uri::Scheme::HTTP,
        authority,
        timeout,
        weft_mesh::connection::Keepalive::default(),
        Some(weft_mesh::mtls::ClientTls::to(service)),
    );
    let mut client = HealthClient::new(connection);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    let answer = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
        .map_err(|status| format!("health check failed: {}", status.message()))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("health is {}", other.as_str_name())),
    }
}

/// Checks the gateway at `addr`: `/healthz` (the process is up), then `/readyz` (every
/// upstream is SERVING). `Err` says which is not 200 yet and why.
pub async fn gateway_ready(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    for path in ["/healthz", "/readyz"] {
        match http_get(addr, path, timeout).await {
            Ok(response) if response.status == 200 => {}
            Ok(response) => {
                return Err(format!(
                    "GET {path}: {} {}",
                    response.status,
                    response.body.trim()
                ));
            }
            Err(e) => return Err(format!("GET {path}: {e}")),
        }
    }
    Ok(())
}

/// Whether something accepts TCP connections at `addr` (for a TLS gateway, which the plain
/// HTTP client cannot speak to).
pub async fn tcp_open(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
    }
}

/// `GET path` on the plain-HTTP server at `addr`, with one connection per call.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES as u64)
            .read_to_end(&mut raw)
            .await?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("the response has no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("the response has no status line"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| invalid("bad chunked body"))?
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The data of a `Transfer-Encoding: chunked` body (extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// The innermost error message (tonic's transport errors wrap the useful one).
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_response() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(raw).unwrap(),
            HttpResponse {
                status: 503,
                body: "{}".into()
            }
        );
    }

    #[test]
    fn parses_a_chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4\r\n{\"a\"\r\na;ext=1\r\n:1}       \r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "{\"a\":1}       ");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"hello").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(connect_addr(any).to_string(), "127.0.0.1:8080");
        let any6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(connect_addr(any6).to_string(), "[::1]:8080");
        let fixed: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert_eq!(connect_addr(fixed), fixed);
    }
}
