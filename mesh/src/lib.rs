//! `weft-mesh`: the plumbing every Weft process shares, so that services hold only their logic.
//!
//! What a sidecar proxy would do in another mesh lives here as tower layers and builders:
//!
//! - [`config`]: the typed mesh-config, from TOML and `WEFT_*` variables, validated at start:
//!   the services of the mesh are data there, by name;
//! - [`contract`]: what the process's descriptor sets say of each method (access, retry
//!   safety, the token key method);
//! - [`server`]: the gRPC server with health, reflection, graceful drain and the server stack;
//!   [`unary`]: its path for unary calls without tonic's streaming codec;
//! - [`client`]: lazily connecting channels to upstreams with the client stack;
//! - [`propagate`]: request id, credentials and trace context from inbound to outbound calls;
//! - [`auth`]: JWT verification against the auth service's JWKS, and access control;
//! - [`client`] stack's resilience: [`deadline`], [`retry`] (budgets), [`breaker`] (adaptive
//!   throttling), [`balance`] (P2C peak-EWMA, outlier ejection), and on the server [`shed`]
//!   (concurrency limits), [`fault`] (fault injection); at the edge [`ratelimit`];
//! - [`live`], [`reload`]: policies that follow mesh-config edits without a restart;
//! - [`grpc`]: the few wire-protocol facts the layers share;
//! - [`db`]: sqlx pools on SQLite or PostgreSQL, with migrations; [`sqlite_writer`]: group
//!   commit on a SQLite file, one writer thread committing the transactions waiting together;
//! - [`page`], [`validate`], [`clock`]: the API conventions every service follows;
//! - [`telemetry`]: logs and traces;
//! - [`metrics`]: Prometheus metrics, and the services' admin listener serving them;
//!
//! A service's `main` is a few lines:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     let args = <weft_mesh::CommonArgs as clap::Parser>::parse();
//!     let contract = [weft_proto::FILE_DESCRIPTOR_SET];
//!     weft_mesh::launch("weft-order", &contract, args.config, |config| async move {
//!         weft_mesh::server::serve(config.clone(), "order", init(config)).await
//!     })
//! }
//! ```

/// Every process linking the mesh allocates with mimalloc (see `bench/README.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The layers, crate by crate from the bottom (see ARCHITECTURE.md); their modules keep the
// paths services and the gateway know them by (`weft_mesh::client`, `weft_mesh::config`, ...).
pub use weft_client::{balance, breaker, client, connection, deadline, retry};
pub use weft_core::{config, contract, grpc, live, policy, reload};
pub use weft_observe::{metrics, propagate, telemetry, trace_mode};
pub use weft_server::{
    admin, auth, callers, db, fault, jwt_crypto, listener, ratelimit, server, shed, sqlite_writer,
    unary,
};
/// mTLS: identities, the CA and certificates, reloading rustls configs (`weft-tls`).
pub use weft_tls as mtls;

pub mod clock;
pub mod page;
pub mod validate;

use std::{future::Future, path::PathBuf, process::ExitCode, sync::Arc};

pub use config::MeshConfig;

/// Command-line options every Weft process accepts (flatten into a service's own parser, or
/// parse alone).
#[derive(Debug, Clone, clap::Parser)]
pub struct CommonArgs {
    /// The mesh-config TOML file (default: built-in local defaults).
    #[arg(long, env = config::CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Runs a process of the mesh: loads and validates the config and the contract (the encoded
/// descriptor sets `contract` the binary was built with, plus those mesh-config names), sets up
/// telemetry, builds the runtime and runs `run` on it. Errors are printed as one readable
/// message, never a panic.
pub fn launch<F, Fut>(
    name: impl AsRef<str>,
    contract: &[&[u8]],
    config_path: Option<PathBuf>,
    run: F,
) -> ExitCode
where
    F: FnOnce(Arc<MeshConfig>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = name.as_ref();
    let config = match MeshConfig::load(config_path.as_deref()) {
        Ok(config) => Arc::new(config),
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(2);
        }
    };
    match contract::Contract::load(contract, &config) {
        Ok(contract) => contract::install(contract),
        Err(err) => {
            eprintln!("{name}: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    }
    let runtime = match build_runtime(config.server.worker_threads) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The span exporter's connections belong to this runtime: set it up inside, and flush it
    // before the runtime stops.
    let telemetry = {
        let _runtime = runtime.enter();
        // Policies follow later edits of the file (and SIGHUP).
        reload::install(MeshConfig::file(config_path.as_deref()), config.clone());
        telemetry::init(name, &config)
    };
    let result = runtime.block_on(async {
        let result = run(config).await;
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} failed");
            eprintln!("{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `migrate` subcommand of a service that keeps data: applies its migrations to the
/// configured database, says so, and returns (a deployment's migration Job runs it).
pub async fn migrate(
    config: &MeshConfig,
    name: &str,
    migrator: &db::Migrator,
) -> anyhow::Result<()> {
    let count = db::Database::migrate_service(config, name, migrator).await?;
    let plural = if count == 1 { "" } else { "s" };
    println!(
        "{}: database up to date ({count} migration{plural})",
        config::process_name(name)
    );
    Ok(())
}

/// A single-threaded runtime for 1 worker (the fastest on few cores: no cross-thread wake-ups),
/// a multi-threaded one otherwise.
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}
