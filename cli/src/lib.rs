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

pub mod child;
pub mod health;
pub mod output;
pub mod probe;
pub mod up;

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
    /// Check one process's health once and exit 0 (healthy) or 1: `weft health 127.0.0.1:50051`
    /// (gRPC health) or `weft health http://127.0.0.1:8080/readyz` (HTTP 200).
    Health(health::HealthArgs),
}

/// Runs a parsed command line; errors are printed as one readable message, never a panic.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Health(args) => health::run(args),
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
