//! `weft bench`'s command line: the clap arguments and their checked form.
//!
//! Everything a user can get wrong is found here, before any connection is opened: the target's
//! scheme, durations, headers, the `{id}` source, `--login`'s syntax. Each mistake is a
//! [`UsageError`], which `weft bench` prints as one line and answers with exit code 2.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

/// Arguments of `weft bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to load: `http://HOST:PORT/PATH` (`{id}` in the path is replaced per request, see
    /// --ids-from) or `grpc://HOST:PORT` (then METHOD names the call).
    #[arg(value_name = "URL")]
    pub target: String,
    /// gRPC method, `package.Service/Method` (grpc:// targets only).
    #[arg(value_name = "METHOD")]
    pub grpc_method: Option<String>,
    /// HTTP method (default GET, or POST when --body is given).
    #[arg(short = 'X', long = "method", value_name = "METHOD")]
    pub method: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request body: JSON for REST (`{uuid}` becomes a fresh UUID v4 per request, `{id}` the
    /// request's id), or the gRPC request message as JSON (proto3 JSON mapping).
    #[arg(long, visible_alias = "data", value_name = "JSON")]
    pub body: Option<String>,
    /// Take the ids for `{id}` from this listing on the same host: the `id` fields of the
    /// first JSON array of objects in its answer (e.g. `{"products":[{"id":..},..]}`).
    #[arg(long, value_name = "PATH")]
    pub ids_from: Option<String>,
    /// Ids for `{id}`, comma-separated (instead of --ids-from).
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    pub ids: Vec<String>,
    /// How each request picks its id.
    #[arg(long, value_enum, default_value_t = IdOrder::RoundRobin)]
    pub id_order: IdOrder,
    /// Bearer token sent as `Authorization: Bearer TOKEN` (HTTP header or gRPC metadata).
    #[arg(long, value_name = "TOKEN", conflicts_with = "login")]
    pub token: Option<String>,
    /// Log in first (`POST /v1/auth/login` on the same host) and send the answer's access
    /// token as a bearer token.
    #[arg(long, value_name = "EMAIL:PASSWORD")]
    pub login: Option<String>,
    /// Concurrent connections (one worker each for REST).
    #[arg(short = 'c', long, value_name = "N", default_value_t = 16)]
    pub connections: usize,
    /// Concurrent calls (HTTP/2 streams) per connection, gRPC only.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub streams: usize,
    /// How long to measure, e.g. `10s`, `500ms`, `2m` (default 10s; without limit when only
    /// --requests is given).
    #[arg(short = 'd', long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Stop after this many measured requests.
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,
    /// Load sent first and not counted, e.g. `2s`; its requests still in flight at its end are
    /// answered before the measured run starts.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub warmup: String,
    /// Open loop: send at this fixed rate (requests per second across all connections);
    /// latencies count from each request's intended send time.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Give up on one request after this long (counted as a `timeout` error).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: String,
    /// Extra descriptor set (`protoc --descriptor_set_out`, with imports) for gRPC APIs other
    /// than Weft's own.
    #[arg(long, value_name = "FILE")]
    pub descriptor_set: Option<PathBuf>,
    /// Also load a bare baseline server the same way (`weft-bench-baseline`, or
    /// `weft-bench-grpc-baseline`) and print the target's figures as a share of it.
    #[arg(long)]
    pub baseline: bool,
    /// Folder of the baseline binaries (default: the folder of this `weft` executable).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Print the summary as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
    /// Speak the mesh's mTLS to the process SERVICE (its mesh-config name, e.g. `order`), with
    /// the `[mtls]` files of --config (grpc:// targets only: a mesh runs mTLS unless its
    /// mesh-config opts out).
    #[arg(long, value_name = "SERVICE")]
    pub mtls: Option<String>,
    /// With --mtls, the identity presented, whose certificate and key are in `[mtls]`'s
    /// `cert_dir`: `weft` (the operator tools') or a process's, when `[callers]` lets only
    /// that process call the method (e.g. `gateway` for a service's public methods).
    #[arg(long, value_name = "NAME", default_value = weft_mesh::config::OPERATOR_IDENTITY, requires = "mtls")]
    pub identity: String,
    #[command(flatten)]
    pub mesh: crate::tool::MeshConfigFile,
}

/// How requests pick their id among the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdOrder {
    /// The ids in turn.
    RoundRobin,
    /// A random id for each request.
    Random,
}

/// A mistake in the command line; `weft bench` exits 2 on it.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(
        "unsupported URL {0:?}: use http://HOST:PORT/PATH or grpc://HOST:PORT (https is not supported; for the mesh's mTLS add --mtls SERVICE to a grpc:// URL)"
    )]
    Scheme(String),
    #[error("URL {0:?} has no host")]
    NoHost(String),
    #[error("bad duration {value:?} for {option}: use e.g. 10s, 500ms, 2m")]
    Duration { option: &'static str, value: String },
    #[error("bad header {0:?}: use \"Name: value\"")]
    Header(String),
    #[error("bad HTTP method {0:?}")]
    Method(String),
    #[error("the path has {{id}} but no ids: add --ids-from /listing/path or --ids a,b,c")]
    NoIdSource,
    #[error("--login wants EMAIL:PASSWORD")]
    Login,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("--rate must be a positive number of requests per second")]
    Rate,
    #[error("a grpc:// target needs a METHOD, e.g. weft.order.v1.OrderService/GetProduct")]
    NoGrpcMethod,
    #[error("METHOD {0:?} is for grpc:// targets only")]
    MethodForHttp(String),
    #[error("{0} works with http:// targets only")]
    HttpOnly(&'static str),
    #[error("{0} works with grpc:// targets only")]
    GrpcOnly(&'static str),
    #[error("{0}")]
    Grpc(String),
}

/// The load's shape, common to REST and gRPC.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Concurrent workers: connections (× streams for gRPC).
    pub connections: usize,
    /// gRPC streams per connection (1 for REST).
    pub streams: usize,
    /// How long to measure; `None`: until `requests` are done.
    pub duration: Option<Duration>,
    /// Measured requests to stop after.
    pub requests: Option<u64>,
    /// Uncounted load first.
    pub warmup: Duration,
    /// Fixed arrival rate (requests per second), open loop.
    pub rate: Option<f64>,
    /// Per-request time limit.
    pub timeout: Duration,
}

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://authority/path-template`.
    Http { authority: String, path: String },
    /// `grpc://authority` and `package.Service/Method`.
    Grpc { authority: String, method: String },
}

/// The checked command line.
#[derive(Debug, Clone)]
pub struct Checked {
    pub target: Target,
    pub spec: LoadSpec,
    /// HTTP method (REST).
    pub method: http::Method,
    /// Extra headers, checked.
    pub headers: Vec<(http::HeaderName, String)>,
    /// `--login` split into email and password.
    pub login: Option<(String, String)>,
}

/// Checks the arguments that need no network.
pub fn check(args: &BenchArgs) -> Result<Checked, UsageError> {
    let target = parse_target(&args.target, args.grpc_method.as_deref())?;
    if args.connections == 0 {
        return Err(UsageError::Zero("--connections"));
    }
    if args.streams == 0 {
        return Err(UsageError::Zero("--streams"));
    }
    if args.requests == Some(0) {
        return Err(UsageError::Zero("--requests"));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(UsageError::Rate);
    }
    let duration = match (&args.duration, args.requests) {
        (Some(d), _) => Some(parse_duration(d).ok_or_else(|| UsageError::Duration {
            option: "--duration",
            value: d.clone(),
        })?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    if duration == Some(Duration::ZERO) {
        return Err(UsageError::Duration {
            option: "--duration",
            value: args.duration.clone().unwrap_or_default(),
        });
    }
    let warmup = parse_duration(&args.warmup).ok_or_else(|| UsageError::Duration {
        option: "--warmup",
        value: args.warmup.clone(),
    })?;
    let timeout = parse_duration(&args.timeout)
        .filter(|t| !t.is_zero())
        .ok_or_else(|| UsageError::Duration {
            option: "--timeout",
            value: args.timeout.clone(),
        })?;
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let method = match &args.method {
        Some(m) => http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| UsageError::Method(m.clone()))?,
        None if args.body.is_some() => http::Method::POST,
        None => http::Method::GET,
    };
    let login = match &args.login {
        Some(l) => match l.split_once(':') {
            Some((email, password)) if !email.is_empty() && !password.is_empty() => {
                Some((email.to_owned(), password.to_owned()))
            }
            _ => return Err(UsageError::Login),
        },
        None => None,
    };
    match &target {
        Target::Http { path, .. } => {
            if path.contains("{id}") && args.ids_from.is_none() && args.ids.is_empty() {
                return Err(UsageError::NoIdSource);
            }
            if args.mtls.is_some() {
                return Err(UsageError::GrpcOnly("--mtls"));
            }
        }
        Target::Grpc { .. } => {
            if args.ids_from.is_some() {
                return Err(UsageError::HttpOnly("--ids-from"));
            }
            if login.is_some() {
                return Err(UsageError::HttpOnly("--login"));
            }
            if args.method.is_some() {
                return Err(UsageError::HttpOnly("-X/--method"));
            }
        }
    }
    let streams = match target {
        Target::Http { .. } => 1,
        Target::Grpc { .. } => args.streams,
    };
    Ok(Checked {
        target,
        spec: LoadSpec {
            connections: args.connections,
            streams,
            duration,
            requests: args.requests,
            warmup,
            rate: args.rate,
            timeout,
        },
        method,
        headers,
        login,
    })
}

/// `http://host:port/path` or `grpc://host:port` (+ METHOD).
pub fn parse_target(url: &str, grpc_method: Option<&str>) -> Result<Target, UsageError> {
    if let Some(rest) = url.strip_prefix("http://") {
        if let Some(m) = grpc_method {
            return Err(UsageError::MethodForHttp(m.to_owned()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(UsageError::NoHost(url.to_owned()));
        }
        Ok(Target::Http {
            authority: with_port(authority, 80),
            path: path.to_owned(),
        })
    } else if let Some(rest) = url.strip_prefix("grpc://") {
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(UsageError::NoHost(url.to_owned()));
        }
        let method = grpc_method.ok_or(UsageError::NoGrpcMethod)?;
        Ok(Target::Grpc {
            authority: with_port(authority, 80),
            method: method.trim_start_matches('/').to_owned(),
        })
    } else {
        Err(UsageError::Scheme(url.to_owned()))
    }
}

/// `host` -> `host:port`; `host:port` and `[v6]:port` unchanged.
fn with_port(authority: &str, port: u16) -> String {
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{port}")
    }
}

/// `10s`, `500ms`, `2m`, `1.5s`, `0`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    let secs = value * scale;
    (0.0..1e9)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

/// `Name: value`.
pub fn parse_header(text: &str) -> Result<(http::HeaderName, String), UsageError> {
    let bad = || UsageError::Header(text.to_owned());
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = value.trim();
    http::HeaderValue::from_str(value).map_err(|_| bad())?;
    Ok((name, value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "s", "ten", "-1s", "1d", "NaNs", "1e300s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("http://127.0.0.1:8080/v1/products/{id}", None).unwrap(),
            Target::Http {
                authority: "127.0.0.1:8080".into(),
                path: "/v1/products/{id}".into()
            }
        );
        assert_eq!(
            parse_target("http://localhost", None).unwrap(),
            Target::Http {
                authority: "localhost:80".into(),
                path: "/".into()
            }
        );
        assert_eq!(
            parse_target("grpc://127.0.0.1:50053", Some("a.B/C")).unwrap(),
            Target::Grpc {
                authority: "127.0.0.1:50053".into(),
                method: "a.B/C".into()
            }
        );
        assert!(matches!(
            parse_target("https://x/", None),
            Err(UsageError::Scheme(_))
        ));
        assert!(matches!(
            parse_target("grpc://x:1", None),
            Err(UsageError::NoGrpcMethod)
        ));
        assert!(matches!(
            parse_target("http:///x", None),
            Err(UsageError::NoHost(_))
        ));
    }

    #[test]
    fn headers() {
        let (name, value) = parse_header("X-Test:  yes ").unwrap();
        assert_eq!(name.as_str(), "x-test");
        assert_eq!(value, "yes");
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
