//! `weft bench` against tiny in-test servers: a hyper HTTP/1.1 server that counts requests
//! (and sleeps, stalls or fails as a test asks) and a tonic gRPC health server that counts
//! calls. Nothing here asserts timing beyond what the load itself sets (a server's known
//! delay, a fixed arrival rate).

use std::{
    convert::Infallible,
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncReadExt, net::TcpListener, sync::watch};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_server::{Health, HealthServer},
};
use weft::{Cli, Command, bench::Report};

/// What the test server does with its `n`-th request (1-based): answer this status after
/// this delay.
type Behaviour = fn(u64) -> (u16, Duration);

/// Starts an HTTP/1.1 server; returns its address and its request count.
async fn http_server(behaviour: Behaviour) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let seen = seen.clone();
            let service = service_fn(move |_req: Request<Incoming>| {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let (status, delay) = behaviour(n);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut response = Response::new(Full::new(Bytes::from_static(
                        br#"{"products":[{"id":"p1"},{"id":"p2"}]}"#,
                    )));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, count)
}

fn ok(_: u64) -> (u16, Duration) {
    (200, Duration::ZERO)
}

/// Runs `weft bench ARGS` in-process (no progress line, no Ctrl-C).
async fn bench(args: &[&str]) -> Report {
    let cli = Cli::try_parse_from(["weft", "bench"].iter().chain(args)).unwrap();
    let Command::Bench(args) = cli.command else {
        panic!("not a bench command line")
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    weft::bench::bench(&args, true, stop_rx).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_exactly_the_requests_the_server_saw() {
    let (addr, count) = http_server(ok).await;
    let url = format!("http://{addr}/v1/products/{{id}}");
    let report = bench(&[&url, "--ids-from", "/v1/products", "-n", "500", "-c", "8"]).await;
    // The listing's GET is one request more than the load's.
    assert_eq!(count.load(Ordering::SeqCst), 501);
    assert_eq!(report.summary.requests, 500);
    assert_eq!(report.summary.errors, 0, "{report:?}");
    if cfg!(target_os = "linux") {
        // The CPU this process spent (the in-test server's too) is shown per request.
        let cpu = report.summary.client_cpu_us();
        assert!(cpu.is_some_and(|us| us > 0.0), "{report:?}");
        assert!(report.render().contains("us CPU per request"));
        assert!(report.to_json()["client_core_share"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_match_a_known_server_delay() {
    // 200 ms, so that the few ms a busy machine (a build beside the tests) adds to scheduling
    // stay well inside the 10 % asked for.
    fn slow(_: u64) -> (u16, Duration) {
        (200, Duration::from_millis(200))
    }
    let (addr, _) = http_server(slow).await;
    let url = format!("http://{addr}/");
    // The warm-up opens the connections: no connect time in the measured requests.
    let s = bench(&[&url, "-n", "48", "-c", "8", "--warmup", "300ms"])
        .await
        .summary;
    assert_eq!(s.requests, 48);
    for (name, value) in [("p50", s.p50_ms), ("p90", s.p90_ms)] {
        assert!(
            (200.0..=220.0).contains(&value),
            "{name} {value} ms is not within 10 % of 200 ms: {s:?}"
        );
    }
    // p99 of 48 requests is their slowest, which a busy machine's scheduling may delay.
    assert!((200.0..=400.0).contains(&s.p99_ms), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_holds_the_arrival_rate() {
    let (addr, count) = http_server(ok).await;
    let url = format!("http://{addr}/");
    let s = bench(&[&url, "--rate", "200", "-d", "2s", "-c", "4"])
        .await
        .summary;
    assert!(
        (395..=400).contains(&s.requests),
        "200/s for 2 s sent {} requests",
        s.requests
    );
    assert!((395..=400).contains(&count.load(Ordering::SeqCst)));
    assert!((s.rps - 200.0).abs() < 5.0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_latencies_count_from_intended_send_times() {
    // One connection; the 20th request stalls 300 ms, and the ~30 requests due meanwhile wait
    // for the connection. Measured from their send times they would all look fast.
    fn stall_once(n: u64) -> (u16, Duration) {
        (200, Duration::from_millis(if n == 20 { 300 } else { 0 }))
    }
    let (addr, _) = http_server(stall_once).await;
    let url = format!("http://{addr}/");
    let s = bench(&[&url, "--rate", "100", "-d", "2s", "-c", "1"])
        .await
        .summary;
    assert!(s.max_ms >= 290.0, "the stalled request: {s:?}");
    // About 15 % of the requests were due during the stall (waits 0-300 ms): p90 shows them.
    assert!(s.p90_ms >= 50.0, "requests due during the stall: {s:?}");
    assert!(s.p50_ms < 50.0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_status() {
    fn every_third_fails(n: u64) -> (u16, Duration) {
        (if n.is_multiple_of(3) { 503 } else { 200 }, Duration::ZERO)
    }
    let (addr, _) = http_server(every_third_fails).await;
    let url = format!("http://{addr}/");
    let report = bench(&[&url, "-n", "300", "-c", "4", "--json"]).await;
    assert_eq!(report.summary.errors, 100, "{report:?}");
    assert_eq!(report.summary.errors_by_kind["HTTP 503"], 100);
    let json = report.to_json();
    assert_eq!(json["errors_by_kind"]["HTTP 503"], 100);
    assert_eq!(json["requests"], 300);
    assert!(report.render().contains("HTTP 503: 100"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_prints_the_partial_summary() {
    fn slowish(_: u64) -> (u16, Duration) {
        (200, Duration::from_millis(5))
    }
    let (addr, count) = http_server(slowish).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["bench", &format!("http://{addr}/"), "-d", "60s", "-c", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until the load runs, then interrupt.
    for _ in 0..100 {
        if count.load(Ordering::SeqCst) > 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-s", "INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("weft bench did not stop on SIGINT")
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("interrupted: partial figures"), "{out}");
    assert!(out.contains("req/s") && out.contains("p99"), "{out}");
}

#[test]
fn bad_arguments_get_a_clear_message_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["https://127.0.0.1:1/"], "unsupported URL"),
        (&["ftp://x/"], "unsupported URL"),
        (&["http://127.0.0.1:1/v1/products/{id}"], "no ids"),
        (&["http://127.0.0.1:1/", "-d", "ten"], "bad duration"),
        (&["http://127.0.0.1:1/", "--warmup", "1x"], "bad duration"),
        (
            &["http://127.0.0.1:1/", "-H", "no colon here"],
            "bad header",
        ),
        (&["http://127.0.0.1:1/", "-c", "0"], "at least 1"),
        (
            &["http://127.0.0.1:1/", "--login", "nopassword"],
            "EMAIL:PASSWORD",
        ),
        (&["http://127.0.0.1:1/", "--rate", "0"], "--rate"),
        (&["grpc://127.0.0.1:1"], "needs a METHOD"),
        (&["http://127.0.0.1:1/", "a.B/C"], "grpc:// targets only"),
        (&["http://127.0.0.1:1/", "--nope"], "unexpected argument"),
        (&[], "required"),
    ];
    assert_usage_errors(cases);
}

/// The calls a health service began, and those it answered: a call whose stream the client
/// reset is dropped before its answer.
#[derive(Default)]
struct Calls {
    began: AtomicU64,
    answered: AtomicU64,
}

/// A health service that counts its calls, answers NOT_FOUND for the service "missing", and
/// takes 100 ms to answer for the service "slow".
struct CountingHealth(Arc<Calls>);

#[tonic::async_trait]
impl Health for CountingHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.0.began.fetch_add(1, Ordering::SeqCst);
        let service = &request.get_ref().service;
        if service == "slow" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.0.answered.fetch_add(1, Ordering::SeqCst);
        if service == "missing" {
            return Err(tonic::Status::not_found("no such service"));
        }
        Ok(tonic::Response::new(HealthCheckResponse { status: 1 }))
    }

    type WatchStream = tonic::codegen::BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

async fn grpc_server() -> (SocketAddr, Arc<Calls>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Calls::default());
    let service = HealthServer::new(CountingHealth(calls.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, calls)
}

/// grpc.health.v1 is not in Weft's protos: its descriptor set, written to a file of this test's
/// own for `--descriptor-set`.
fn health_descriptor_set(test: &str) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("weft-bench-{test}-{}.fds", std::process::id()));
    std::fs::write(&file, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    file
}

/// Runs `weft bench` on the health server at `addr`'s `Check` with `args`.
async fn bench_health(addr: SocketAddr, fds: &std::path::Path, args: &[&str]) -> Report {
    let url = format!("grpc://{addr}");
    let mut all = vec![
        url.as_str(),
        "grpc.health.v1.Health/Check",
        "--descriptor-set",
        fds.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    bench(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_counted_and_statuses_read_from_trailers() {
    let (addr, calls) = grpc_server().await;
    let fds = health_descriptor_set("statuses");
    let report = bench_health(addr, &fds, &["-n", "300", "-c", "2", "--streams", "4"]).await;
    assert_eq!(report.summary.requests, 300);
    assert_eq!(report.summary.errors, 0, "{report:?}");
    assert_eq!(calls.began.load(Ordering::SeqCst), 300);

    let missing = r#"{"service":"missing"}"#;
    let report = bench_health(addr, &fds, &["--body", missing, "-n", "20"]).await;
    assert_eq!(
        report.summary.errors_by_kind["gRPC NOT_FOUND"], 20,
        "{report:?}"
    );
    let _ = std::fs::remove_file(&fds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_up_lets_its_calls_in_flight_finish() {
    let (addr, calls) = grpc_server().await;
    let fds = health_descriptor_set("warm-up");
    // 8 calls of 100 ms in flight at all times: the warm-up's end (250 ms) falls while some are.
    // Dropped, their streams would be reset, and the server would drop them unanswered.
    let slow = r#"{"service":"slow"}"#;
    let args = [
        "--body",
        slow,
        "-n",
        "16",
        "-c",
        "2",
        "--streams",
        "4",
        "--warmup",
        "250ms",
    ];
    let report = bench_health(addr, &fds, &args).await;
    assert_eq!(report.summary.requests, 16);
    assert_eq!(report.summary.errors, 0, "{report:?}");
    let began = calls.began.load(Ordering::SeqCst);
    assert!(began > 16, "the warm-up made calls too ({began} in all)");
    assert_eq!(
        calls.answered.load(Ordering::SeqCst),
        began,
        "every call the server began was answered: none was cancelled"
    );
    let _ = std::fs::remove_file(&fds);
}

#[test]
fn grpc_usage_errors_exit_2() {
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/../mesh-config/local.toml");
    let cases: &[(&[&str], &str)] = &[
        (
            &["grpc://127.0.0.1:1", "weft.order.v1.Nope/GetProduct"],
            "unknown gRPC service",
        ),
        (
            &["grpc://127.0.0.1:1", "weft.order.v1.OrderService/Nope"],
            "has no method",
        ),
        (
            &[
                "grpc://127.0.0.1:1",
                "weft.order.v1.OrderService/GetProduct",
                "--body",
                r#"{"nope":1}"#,
            ],
            "does not fit",
        ),
        (
            &[
                "grpc://127.0.0.1:1",
                "weft.order.v1.OrderService/GetProduct",
                "--descriptor-set",
                "/nonexistent.fds",
            ],
            "--descriptor-set",
        ),
        (
            &[
                "grpc://127.0.0.1:1",
                "weft.order.v1.OrderService/GetProduct",
                "--mtls",
                "nosuch",
                "--config",
                local,
            ],
            "\"nosuch\" is not an identity",
        ),
        (
            &["http://127.0.0.1:1/v1/products", "--mtls", "order"],
            "--mtls works with grpc:// targets only",
        ),
        (
            &[
                "grpc://127.0.0.1:1",
                "weft.order.v1.OrderService/GetProduct",
                "--identity",
                "gateway",
            ],
            "--mtls",
        ),
    ];
    assert_usage_errors(cases);
}

/// Runs `weft bench` with each case's arguments: exit code 2, a message naming the problem on
/// stderr, no panic.
fn assert_usage_errors(cases: &[(&[&str], &str)]) {
    for (args, message) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("bench")
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A mesh-config whose `[mtls]` files are in `dir`, with the CA and every certificate made
/// there (`weft certs`).
fn mtls_config(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("mesh.toml");
    let certs = dir.join("certs");
    std::fs::write(
        &file,
        format!(
            "[mtls]\nmode = \"on\"\nca_file = \"{0}/ca.pem\"\nca_key_file = \"{0}/ca.key\"\n\
             cert_dir = \"{0}\"\n\n\
             [services.order]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\n\
             [services.user]\nlisten = \"127.0.0.1:3\"\nadmin_listen = \"127.0.0.1:4\"\n",
            certs.display()
        ),
    )
    .unwrap();
    let cli = Cli::try_parse_from(["weft", "certs", "--config", file.to_str().unwrap()]).unwrap();
    let Command::Certs(args) = cli.command else {
        panic!("not a certs command line")
    };
    weft::certs::run(args).expect("weft certs makes the CA and the certificates");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_the_mesh_mtls_with_an_identity() {
    let dir = std::env::temp_dir().join(format!("weft-bench-mtls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = mtls_config(&dir);
    let config = weft_mesh::MeshConfig::load(Some(&file)).unwrap();
    // A health server that presents the order service's certificate and asks for a client's.
    let tls = weft_mesh::mtls::MeshTls::load(&config.mtls, "order").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Calls::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(CountingHealth(calls.clone())))
            .serve_with_incoming(weft_mesh::listener::incoming(listener, tls)),
    );
    let fds = dir.join("health.fds");
    std::fs::write(&fds, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    let url = format!("grpc://{addr}");
    let common = [
        url.as_str(),
        "grpc.health.v1.Health/Check",
        "--descriptor-set",
        fds.to_str().unwrap(),
        "--config",
        file.to_str().unwrap(),
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        common
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };

    let report = bench(&with(&[
        "--mtls",
        "order",
        "--identity",
        "gateway",
        "-n",
        "100",
    ]))
    .await;
    assert_eq!(report.summary.requests, 100);
    assert_eq!(report.summary.errors, 0, "{report:?}");
    assert_eq!(calls.began.load(Ordering::SeqCst), 100);

    // In plain text the server answers nothing, and the error says what to add.
    let report = bench(&with(&["-n", "5"])).await;
    assert_eq!(report.summary.errors, 5, "{report:?}");
    assert!(
        report
            .summary
            .errors_by_kind
            .keys()
            .all(|kind| kind.contains("--mtls SERVICE")),
        "{report:?}"
    );
    // Expecting another service's certificate: the handshake fails, nothing reaches the server.
    let report = bench(&with(&["--mtls", "user", "-n", "5"])).await;
    assert_eq!(report.summary.errors, 5, "{report:?}");
    assert_eq!(calls.began.load(Ordering::SeqCst), 100);
    let _ = std::fs::remove_dir_all(&dir);
}
