//! `weft bench`: a load generator for a mesh's REST gateway or its gRPC services.
//!
//! This module ties the others together: it checks the command line ([`bench_args`]),
//! prepares the requests (ids from a listing, a login, the gRPC request message:
//! [`bench_http`], [`bench_grpc`]), runs the warm-up and the measured phase
//! ([`bench_load`]) with a live progress line ([`bench_progress`]), optionally does the
//! same against a bare baseline server ([`bench_baseline`]), and prints the figures
//! ([`bench_stats`]). Ctrl-C ends the run early with the figures so far.
//!
//! [`bench_args`]: crate::bench_args
//! [`bench_http`]: crate::bench_http
//! [`bench_grpc`]: crate::bench_grpc
//! [`bench_load`]: crate::bench_load
//! [`bench_progress`]: crate::bench_progress
//! [`bench_baseline`]: crate::bench_baseline
//! [`bench_stats`]: crate::bench_stats

use std::{fmt::Write as _, path::Path, process::ExitCode, sync::Arc};

use http::{HeaderName, HeaderValue, header};
use tokio::{net::TcpStream, sync::watch};
use weft_mesh::{
    MeshConfig,
    mtls::{ClientTls, MeshTls},
};

use crate::{
    bench_args::{self, BenchArgs, Checked, LoadSpec, Target, UsageError},
    bench_baseline,
    bench_grpc::{self, GrpcConnection, GrpcPlan, GrpcWorker},
    bench_http::{self, HttpPlan, HttpWorker},
    bench_load::{self, Phase, PhaseResult, Worker},
    bench_progress::{Counters, Progress},
    bench_stats::{self, Summary},
};

/// Why `weft bench` could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A mistake in the command line (exit code 2).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The target (or the baseline) could not be prepared (exit code 1).
    #[error("{0}")]
    Failed(String),
}

/// The figures of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target as given.
    pub target: String,
    pub spec: LoadSpec,
    pub summary: Summary,
    /// The baseline's figures (`--baseline`).
    pub baseline: Option<Summary>,
}

// === impl Report ===

impl Report {
    /// The readable summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "weft bench {} ({})", self.target, describe(&self.spec));
        out.push_str(&self.summary.render());
        if let Some(baseline) = &self.baseline {
            let _ = writeln!(out, "baseline (bare server, same load)");
            out.push_str(&baseline.render());
            let ratio = bench_stats::ratio(&self.summary, baseline);
            let _ = writeln!(
                out,
                "target / baseline: req/s {:.1} %, p99 {:.2}x",
                ratio.rps_percent, ratio.p99_factor
            );
        }
        out
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = self.summary.to_json();
        json["target"] = self.target.clone().into();
        json["connections"] = self.spec.connections.into();
        json["streams"] = self.spec.streams.into();
        json["rate"] = self.spec.rate.into();
        if let Some(baseline) = &self.baseline {
            let ratio = bench_stats::ratio(&self.summary, baseline);
            json["baseline"] = baseline.to_json();
            json["ratio"] = serde_json::json!({
                "rps_percent": ratio.rps_percent,
                "p99_factor": ratio.p99_factor,
            });
        }
        json
    }
}

fn describe(spec: &LoadSpec) -> String {
    let mut parts = vec![format!("{} connections", spec.connections)];
    if spec.streams > 1 {
        parts.push(format!("{} streams each", spec.streams));
    }
    match spec.rate {
        Some(rate) => parts.push(format!("open loop at {rate} req/s")),
        None => parts.push("closed loop".to_owned()),
    }
    if let Some(d) = spec.duration {
        parts.push(format!("{:.1} s", d.as_secs_f64()));
    }
    if let Some(n) = spec.requests {
        parts.push(format!("{n} requests"));
    }
    if !spec.warmup.is_zero() {
        parts.push(format!("{:.1} s warm-up", spec.warmup.as_secs_f64()));
    }
    parts.join(", ")
}

/// Runs `weft bench` from the command line: prints the figures, exits 0; 2 on a usage error,
/// 1 when the target cannot be prepared.
pub fn run(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weft bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = stop_tx.send(true);
                // Keep the sender: the workers see `true`, not a closed channel.
                std::future::pending::<()>().await;
            }
        });
        bench(&args, false, stop_rx).await
    });
    // Do not wait for connections still open to the target.
    runtime.shutdown_background();
    match result {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render());
            }
            ExitCode::SUCCESS
        }
        Err(BenchError::Usage(e)) => {
            eprintln!("weft bench: {e}");
            ExitCode::from(2)
        }
        Err(BenchError::Failed(e)) => {
            eprintln!("weft bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a whole benchmark (warm-up, measure, baseline) until done or `stop` turns true.
/// `quiet`: no progress line.
pub async fn bench(
    args: &BenchArgs,
    quiet: bool,
    stop: watch::Receiver<bool>,
) -> Result<Report, BenchError> {
    let checked = bench_args::check(args)?;
    let prepared = prepare(args, &checked).await?;
    let summary = measure(&prepared, &checked.spec, "target", quiet, &stop).await;
    let baseline = if args.baseline && !summary.interrupted {
        Some(run_baseline(args, &prepared, &checked.spec, quiet, &stop).await?)
    } else {
        None
    };
    Ok(Report {
        target: args.target.clone(),
        spec: checked.spec,
        summary,
        baseline,
    })
}

/// The requests of a run, ready to go.
enum Prepared {
    Http(Arc<HttpPlan>),
    Grpc(Arc<GrpcPlan>),
}

// === impl Prepared ===

impl Prepared {
    fn authority(&self) -> &str {
        match self {
            Self::Http(plan) => &plan.authority,
            Self::Grpc(plan) => &plan.authority,
        }
    }

    /// The same requests to another server.
    fn aimed_at(&self, authority: &str) -> Self {
        match self {
            Self::Http(plan) => {
                let mut plan = HttpPlan::clone(plan);
                plan.authority = authority.to_owned();
                Self::Http(Arc::new(plan))
            }
            Self::Grpc(plan) => {
                let mut plan = GrpcPlan::clone(plan);
                plan.authority = authority.to_owned();
                // The bare baseline speaks plain text.
                plan.tls = None;
                Self::Grpc(Arc::new(plan))
            }
        }
    }

    fn workers(&self, spec: &LoadSpec) -> Vec<Worker> {
        match self {
            Self::Http(plan) => (0..spec.connections)
                .map(|_| Worker::Http(HttpWorker::new(plan.clone())))
                .collect(),
            Self::Grpc(plan) => (0..spec.connections)
                .flat_map(|_| {
                    let connection = GrpcConnection::new();
                    (0..spec.streams).map(move |_| connection.clone())
                })
                .map(|connection| Worker::Grpc(GrpcWorker::new(plan.clone(), connection)))
                .collect(),
        }
    }
}

async fn prepare(args: &BenchArgs, checked: &Checked) -> Result<Prepared, BenchError> {
    let mut headers = Vec::new();
    for (name, value) in &checked.headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| UsageError::Header(format!("{name}: {value}")))?;
        headers.push((name.clone(), value));
    }
    let authority = match &checked.target {
        Target::Http { authority, .. } | Target::Grpc { authority, .. } => authority.clone(),
    };
    let extra =
        match (&checked.target, &args.descriptor_set) {
            (Target::Grpc { .. }, Some(file)) => Some(std::fs::read(file).map_err(|e| {
                UsageError::Grpc(format!("--descriptor-set {}: {e}", file.display()))
            })?),
            _ => None,
        };
    let json = args.body.as_deref().unwrap_or("{}");
    // The method and the request message are usage errors: check them before connecting.
    if let Target::Grpc { method, .. } = &checked.target {
        bench_grpc::plan(&authority, method, json, extra.as_deref(), Vec::new())
            .map_err(UsageError::Grpc)?;
    }
    let tls = match &args.mtls {
        Some(service) => Some(mesh_tls(&args.mesh.config, service, &args.identity)?),
        None => None,
    };
    if let Err(e) = TcpStream::connect(&authority).await {
        return Err(BenchError::Failed(format!(
            "cannot connect to {authority}: {e}"
        )));
    }
    let token = match (&args.token, &checked.login) {
        (Some(token), _) => Some(token.clone()),
        (None, Some((email, password))) => Some(
            bench_http::login(&authority, email, password)
                .await
                .map_err(BenchError::Failed)?,
        ),
        (None, None) => None,
    };
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| UsageError::Header("--token: not a valid header value".into()))?;
        headers.push((header::AUTHORIZATION, value));
    }
    match &checked.target {
        Target::Http { authority, path } => {
            let ids = if !args.ids.is_empty() {
                args.ids.clone()
            } else if let Some(listing) = &args.ids_from {
                bench_http::ids_from(authority, listing, &headers)
                    .await
                    .map_err(BenchError::Failed)?
            } else {
                Vec::new()
            };
            let first = ids
                .first()
                .map_or(path.clone(), |id| path.replace("{id}", id));
            if first.parse::<http::uri::PathAndQuery>().is_err() || !first.starts_with('/') {
                return Err(UsageError::Scheme(format!("http://{authority}{first}")).into());
            }
            Ok(Prepared::Http(Arc::new(HttpPlan {
                authority: authority.clone(),
                method: checked.method.clone(),
                path: path.clone(),
                body: args.body.clone(),
                headers,
                ids,
                id_order: args.id_order,
            })))
        }
        Target::Grpc { authority, method } => {
            let mut plan = bench_grpc::plan(authority, method, json, extra.as_deref(), headers)
                .map_err(UsageError::Grpc)?;
            plan.tls = tls;
            Ok(Prepared::Grpc(Arc::new(plan)))
        }
    }
}

/// `--mtls SERVICE`: the certificate of `identity` from the mesh-config's `[mtls]`, expecting
/// SERVICE's identity from the server.
fn mesh_tls(file: &Path, service: &str, identity: &str) -> Result<ClientTls, BenchError> {
    let config = MeshConfig::load(Some(file))
        .map_err(|e| BenchError::Failed(format!("--mtls: {}: {e}", file.display())))?;
    if !config.mtls.is_on() {
        return Err(UsageError::Grpc(format!(
            "--mtls: {} turns mTLS off ([mtls] mode = \"off\"): leave --mtls out",
            file.display()
        ))
        .into());
    }
    let names = config.identities();
    for name in [service, identity] {
        if !names.iter().any(|n| n == name) {
            return Err(UsageError::Grpc(format!(
                "--mtls: {name:?} is not an identity of {} (it has {})",
                file.display(),
                names.join(", ")
            ))
            .into());
        }
    }
    let own = MeshTls::load(&config.mtls, identity).map_err(|e| {
        BenchError::Failed(format!(
            "--mtls: no certificate for {identity}: {e} (`weft certs --config {}` makes them)",
            file.display()
        ))
    })?;
    Ok(ClientTls {
        server: service.to_owned(),
        own: Some(own),
    })
}

/// Runs one phase with its progress line, labelled `label`.
async fn run_shown(
    workers: Vec<Worker>,
    phase: Phase,
    label: &str,
    quiet: bool,
    stop: &watch::Receiver<bool>,
) -> PhaseResult {
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(label, counters.clone(), quiet);
    let result = bench_load::run_phase(workers, phase, counters, stop.clone()).await;
    progress.finish();
    result
}

/// Warm-up then measure against `prepared`'s server.
async fn measure(
    prepared: &Prepared,
    spec: &LoadSpec,
    label: &str,
    quiet: bool,
    stop: &watch::Receiver<bool>,
) -> Summary {
    let mut workers = prepared.workers(spec);
    let phase = |duration, requests, finish_in_flight| Phase {
        duration,
        requests,
        rate: spec.rate,
        timeout: spec.timeout,
        finish_in_flight,
    };
    if !spec.warmup.is_zero() {
        let warm_up = format!("{label} warm-up");
        let warm = run_shown(
            workers,
            phase(Some(spec.warmup), None, true),
            &warm_up,
            quiet,
            stop,
        )
        .await;
        workers = warm.workers;
    }
    let cpu_before = bench_stats::process_cpu_time();
    let result = run_shown(
        workers,
        phase(spec.duration, spec.requests, false),
        label,
        quiet,
        stop,
    )
    .await;
    let cpu_after = bench_stats::process_cpu_time();
    let interrupted = *stop.borrow();
    let mut summary = result.recorder.summary(result.elapsed, interrupted);
    summary.client_cpu = cpu_after
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    summary
}

/// Starts the baseline server matching the target, answering with the target's own answer,
/// and measures it with the same load.
async fn run_baseline(
    args: &BenchArgs,
    prepared: &Prepared,
    spec: &LoadSpec,
    quiet: bool,
    stop: &watch::Receiver<bool>,
) -> Result<Summary, BenchError> {
    let dir = crate::tool::BinDir {
        bin_dir: args.bin_dir.clone(),
    }
    .dir()
    .map_err(|e| BenchError::Failed(format!("{e:#}")))?;
    let (name, body) = match prepared {
        Prepared::Http(plan) => {
            let request = plan.request(0);
            let path = request.uri().to_string();
            let body = if plan.method == http::Method::GET {
                let headers: Vec<(HeaderName, HeaderValue)> = plan.headers.clone();
                bench_http::fetch(
                    prepared.authority(),
                    http::Method::GET,
                    &path,
                    &headers,
                    None,
                )
                .await
                .map(|(_, body)| body.to_vec())
                .unwrap_or_default()
            } else {
                Vec::new()
            };
            ("weft-bench-baseline", body)
        }
        Prepared::Grpc(plan) => (
            "weft-bench-grpc-baseline",
            bench_grpc::probe(plan)
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default(),
        ),
    };
    let server = bench_baseline::start(&dir, name, &body)
        .await
        .map_err(BenchError::Failed)?;
    let aimed = prepared.aimed_at(&server.authority);
    Ok(measure(&aimed, spec, "baseline", quiet, stop).await)
}
