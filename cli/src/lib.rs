//! `weft`: the mesh's command-line tool.
//!
//! `weft up` runs the whole mesh on one machine: weft-auth, weft-user, weft-order and
//! weft-gateway as child processes sharing one mesh-config, each started once the previous one
//! is healthy, their logs interleaved behind a `[weft-order]`-style prefix. A child that exits
//! on its own is reported with its exit status and last log lines while the others keep
//! running (`--restart` restarts it); Ctrl-C or SIGTERM stops them all gracefully.
//!
//! - [`up`]: the supervisor;
//! - [`child`]: one child process, its output and its exit;
//! - [`probe`]: gRPC and HTTP health checks;
//! - [`health`]: `weft health <target>`, one check for a container's health check;
//! - [`output`]: prefixed, optionally coloured lines.
//!
//! `weft up` also runs the local trace viewer (the `weft-viewer` crate): its children export
//! their spans to it, and it serves a web page of recent requests on loopback;
//! [`trace`] is `weft trace`, the same waterfall in the terminal.
//!
//! `weft admin` and `weft keys` are an operator's tools, wrapping the services' own command
//! lines:
//!
//! - [`admin`]: `weft admin grant` (a role, in weft-user's database) and `weft admin create`
//!   (register an account, then grant it admin);
//! - [`keys`]: `weft keys rotate` (weft-auth's signing key);
//! - [`tool`]: finds and runs those service binaries.
//!
//! `weft bench` is a load generator for a mesh's REST gateway or gRPC services:
//!
//! - [`bench`](mod@bench): the command, from checked arguments to the printed figures;
//! - [`bench_args`]: its command line and usage errors;
//! - [`bench_http`], [`bench_grpc`]: REST (HTTP/1.1) and gRPC (HTTP/2) requests;
//! - [`bench_load`]: the closed- and open-loop driver;
//! - [`bench_progress`]: the live progress line;
//! - [`bench_stats`]: latency histograms, error counts, the summary;
//! - [`bench_baseline`]: `--baseline`'s bare servers.

pub mod admin;
pub mod bench;
pub mod bench_args;
pub mod bench_baseline;
pub mod bench_grpc;
pub mod bench_http;
pub mod bench_load;
pub mod bench_progress;
pub mod bench_stats;
pub mod certs;
pub mod child;
pub mod health;
pub mod keys;
pub mod output;
pub mod probe;
pub mod tool;
pub mod trace;
pub mod up;
pub mod up_viewer;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use up::UpArgs;

/// Command line of `weft`.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Weft's command-line tool")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `weft`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start weft-auth, weft-user, weft-order and weft-gateway locally and watch over them until
    /// Ctrl-C.
    Up(UpArgs),
    /// Print one request's spans as a tree, from the trace viewer of the running `weft up`:
    /// `weft trace <request-id|trace-id>`, `weft trace --last`, `weft trace --errors`.
    Trace(trace::TraceArgs),
    /// Check one process's health once and exit 0 (healthy) or 1: `weft health 127.0.0.1:50051`
    /// (gRPC health) or `weft health http://127.0.0.1:8080/readyz` (HTTP 200).
    Health(health::HealthArgs),
    /// Load a REST endpoint or a gRPC method and print throughput, latency percentiles and
    /// errors: `weft bench http://127.0.0.1:8080/v1/products/{id} --ids-from /v1/products`
    /// or `weft bench grpc://127.0.0.1:50053 weft.order.v1.OrderService/GetProduct --body
    /// '{"id":"..."}'`.
    Bench(Box<bench_args::BenchArgs>),
    /// Make administrators: `weft admin create --email me@example.com` registers an account and
    /// makes it an administrator; `weft admin grant --email ...` promotes a registered one.
    Admin(admin::AdminArgs),
    /// Manage weft-auth's token signing keys: `weft keys rotate`.
    Keys(keys::KeysArgs),
    /// Create the mesh's CA and one mTLS certificate per process (`[mtls]` says where):
    /// `weft certs`, `weft certs --rotate` (new certificates, same CA), `--force` (new CA).
    Certs(certs::CertsArgs),
}

/// Runs a parsed command line; errors are printed as one readable message, never a panic.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Health(args) => health::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::Admin(args) => report("weft admin", admin::run(args)),
        Command::Keys(args) => report("weft keys", keys::run(args)),
        Command::Certs(args) => report("weft certs", certs::run(args)),
        Command::Trace(args) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => report("weft trace", runtime.block_on(trace::run(args))),
            Err(err) => {
                eprintln!("weft trace: cannot start the runtime: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Up(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("weft up: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let output = output::Output::detect();
            match runtime.block_on(up::run(args, output)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("weft up: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The exit code of an operator command, its error printed as one line.
fn report(command: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{command}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
