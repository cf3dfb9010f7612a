//! `weft health <target>`: one health check, as a container's health check runs it (the images
//! have no `grpc_health_probe`, no curl). Exits 0 when healthy, 1 otherwise, with one line
//! saying why on standard error.
//!
//! - `host:port` (or `grpc://host:port`): `grpc.health.v1` Check of the whole server (service
//!   `""`) must answer SERVING;
//! - `http://host:port/path`: `GET /path` must answer 200 (the gateway's `/healthz`, `/readyz`).

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Args;

use crate::probe;

/// Options of `weft health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// `host:port` of a gRPC server (`grpc://` optional), or `http://host:port/path`.
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Time allowed for the whole check, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub timeout_ms: u64,
}

/// What to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `grpc.health.v1` at `host:port`.
    Grpc(String),
    /// `GET path` at `host:port` over plain HTTP/1.1.
    Http {
        /// `host:port`.
        authority: String,
        /// The path (and query), `/` when none was given.
        path: String,
    },
}

impl Target {
    /// Parses a target; `Err` says what is wrong with it.
    pub fn parse(target: &str) -> Result<Self, String> {
        if let Some(rest) = target.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            check_authority(authority)?;
            return Ok(Target::Http {
                authority: authority.to_string(),
                path: path.to_string(),
            });
        }
        if target.contains("://") && !target.starts_with("grpc://") {
            return Err(format!(
                "`{target}`: use host:port (gRPC health) or http://host:port/path"
            ));
        }
        let authority = target.strip_prefix("grpc://").unwrap_or(target);
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        check_authority(authority)?;
        Ok(Target::Grpc(authority.to_string()))
    }
}

fn check_authority(authority: &str) -> Result<(), String> {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("`{authority}` is not host:port")),
    }
}

/// Runs `weft health`.
pub fn run(args: HealthArgs) -> ExitCode {
    let target = match Target::parse(&args.target) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("weft health: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weft health: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let result = runtime.block_on(async {
        tokio::time::timeout(timeout, check(&target, timeout))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("weft health: {}: {why}", args.target);
            ExitCode::FAILURE
        }
    }
}

async fn check(target: &Target, timeout: Duration) -> Result<(), String> {
    match target {
        Target::Grpc(authority) => probe::grpc_serving(resolve(authority).await?, timeout).await,
        Target::Http { authority, path } => {
            let addr = resolve(authority).await?;
            match probe::http_get(addr, path, timeout).await {
                Ok(response) if response.status == 200 => Ok(()),
                Ok(response) => Err(format!(
                    "GET {path}: {} {}",
                    response.status,
                    response.body.trim()
                )),
                Err(e) => Err(format!("GET {path}: {e}")),
            }
        }
    }
}

/// The first address `host:port` resolves to.
async fn resolve(authority: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed() {
        assert_eq!(
            Target::parse("127.0.0.1:50051"),
            Ok(Target::Grpc("127.0.0.1:50051".into()))
        );
        assert_eq!(
            Target::parse("grpc://weft-auth:50051"),
            Ok(Target::Grpc("weft-auth:50051".into()))
        );
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/readyz"),
            Ok(Target::Http {
                authority: "127.0.0.1:8080".into(),
                path: "/readyz".into()
            })
        );
        assert_eq!(
            Target::parse("http://localhost:8080"),
            Ok(Target::Http {
                authority: "localhost:8080".into(),
                path: "/".into()
            })
        );
        assert!(Target::parse("https://x:1/").is_err());
        assert!(Target::parse("no-port").is_err());
        assert!(Target::parse("host:99999").is_err());
        assert!(Target::parse("http://:80/").is_err());
    }

    #[tokio::test]
    async fn an_http_target_is_healthy_only_on_200() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if request.starts_with("GET /healthz ") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown"
                };
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let timeout = Duration::from_secs(2);
        let target = |path: &str| Target::parse(&format!("http://{addr}{path}")).unwrap();
        assert_eq!(check(&target("/healthz"), timeout).await, Ok(()));
        let err = check(&target("/readyz"), timeout).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        // Nothing listens there: a gRPC check fails with a reason.
        let closed = Target::Grpc("127.0.0.1:1".into());
        assert!(check(&closed, timeout).await.is_err());
    }
}
