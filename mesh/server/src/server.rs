//! The gRPC server every service runs: one builder, so every service behaves alike.
//!
//! [`serve`] binds the listen address, then serves at once: `grpc.health.v1` (NOT_SERVING for
//! now), server reflection, and the service behind a gate that answers UNAVAILABLE until the
//! service's `init` (migrations, pools, clients) has finished. Health turns SERVING when `init`
//! returns. On SIGINT or SIGTERM health turns NOT_SERVING, the listener stops accepting,
//! in-flight calls get up to `server.drain_timeout_ms` to finish, and the pools are closed.
//!
//! Every call passes the mesh's server stack, outermost first: call context and span
//! ([`crate::propagate`]), metrics ([`crate::metrics`]), load shedding ([`crate::shed`]),
//! deadline enforcement ([`crate::deadline`]), fault injection ([`crate::fault`]), access
//! control ([`crate::auth`]). Next to the gRPC listener, an admin HTTP listener on
//! `services.<name>.admin_listen` serves `/metrics` until the server exits.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use hyper::body::Incoming;
use tonic::{Status, body::Body, server::NamedService, service::Routes};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower_service::Service;

use weft_tls::{MeshTls, PeerIdentity};

use crate::{
    auth::{AuthLayer, JwtVerifier, KeySource},
    callers::{CallerLayer, CallerRules},
    config::{MeshConfig, process_name},
    db::Database,
    deadline::ServerDeadlineLayer,
    fault::FaultLayer,
    propagate::ServerContextLayer,
    shed::{LoadShedLayer, ShedPolicy},
    unary::UnaryRoutes,
};

/// What a service's `init` hands to [`serve`]: the tonic service, its unary methods to serve
/// without tonic's codec and, if it keeps data, the database to observe and close.
pub struct Started<S> {
    /// The generated tonic server wrapping the service's API.
    pub service: S,
    /// The methods served by [`crate::unary`] (the rest go through `service`).
    pub unary: UnaryRoutes,
    /// The service's database, closed after the drain; `None` for a service without data.
    pub database: Option<Database>,
}

/// Serves the service `name` as `[services.<name>]` configures it, until SIGINT or SIGTERM.
///
/// `init` runs while the server already answers health checks; its error stops the server.
pub async fn serve<S, F>(config: Arc<MeshConfig>, name: &str, init: F) -> anyhow::Result<()>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    F: Future<Output = anyhow::Result<Started<S>>>,
{
    let own = config.service(name)?;
    check_callers(&config, S::NAME)?;
    let tls = start_tls(&config, name)?;
    let addr = own.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // `/metrics` on the admin port, from start to exit (stopped when dropped).
    // `/readyz` on the admin port follows the health service: not serving until `init` is done.
    let serving = Arc::new(AtomicBool::new(false));
    let admin =
        crate::admin::AdminServer::start_service(own.admin_listen, tls.clone(), serving.clone())
            .await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health.set_not_serving::<S>().await;
    let descriptors = reflected_descriptors(config.server.reflection_lists_internal);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(descriptors)
        .build_v1()
        .context("cannot build the reflection service")?;

    let process = process_name(name);
    let verifier = JwtVerifier::new(KeySource::from_config(&config)?, &config.jwt, &process);
    let stack = ServiceBuilder::new()
        .layer(ServerContextLayer)
        .layer(crate::metrics::ServerMetricsLayer::new(&[S::NAME]))
        .layer(LoadShedLayer::new(crate::reload::policy(
            &config,
            |config| ShedPolicy::from(&config.server),
        )))
        .layer(ServerDeadlineLayer::new(Duration::from_millis(
            config.server.default_deadline_ms,
        )))
        .layer(FaultLayer::new(crate::reload::policy(&config, |config| {
            config.faults.clone()
        })))
        .layer(CallerLayer::new(crate::reload::policy(&config, |config| {
            CallerRules::from(config)
        })))
        .layer(AuthLayer::new(verifier));
    let slot = Arc::new(OnceLock::new());
    let stack = stack.layer(DirectLayer {
        gate: Gate { slot: slot.clone() },
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Health, reflection and any other service go through tonic's router, innermost.
    let service = stack.service(Routes::new(health_service).add_service(reflection));
    let stopped = async {
        let _ = stop_rx.await;
    };
    let server: Pin<Box<dyn Future<Output = ()> + Send>> = match &tls {
        Some(tls) => Box::pin(serve_connections(
            crate::listener::incoming(listener, tls.clone())
                .filter_map(|accepted| std::future::ready(accepted.ok()))
                .map(|tls| (Some(tls.peer().clone()), tls)),
            service,
            stopped,
        )),
        None => Box::pin(serve_connections(
            crate::listener::plain(listener).map(|tcp| (None, tcp)),
            service,
            stopped,
        )),
    };
    let mut server = tokio::spawn(server);
    tracing::info!(
        service = %process,
        addr = %local,
        admin = %admin.local_addr(),
        "listening; initialising"
    );

    let started = tokio::select! {
        started = init => started?,
        _ = shutdown_signal() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
        result = &mut server => {
            result?;
            anyhow::bail!("the server stopped during start-up");
        }
    };
    let (unrouted, unknown) = started.unary.compare_with_contract(S::NAME);
    if !unknown.is_empty() {
        anyhow::bail!(
            "unary routes {} are not methods of {} in the contract",
            unknown.join(", "),
            S::NAME
        );
    }
    if !unrouted.is_empty() && !started.unary.paths().is_empty() {
        // Still served, by tonic's codec: correct, only slower.
        tracing::warn!(methods = %unrouted.join(", "), "methods without a unary route");
    }
    let _ = slot.set((started.service, started.unary));
    if let Some(database) = &started.database {
        crate::metrics::registry().observe_pools(&database.pools());
    }
    health.set_serving::<S>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    serving.store(true, Ordering::Release);
    tracing::info!(service = %process, addr = %local, "serving");

    tokio::select! {
        _ = shutdown_signal() => {}
        result = &mut server => {
            result?;
            anyhow::bail!("the server stopped unexpectedly");
        }
    }
    tracing::info!("shutting down: draining in-flight calls");
    serving.store(false, Ordering::Release);
    health.set_not_serving::<S>().await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(());
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    match tokio::time::timeout(drain, &mut server).await {
        Ok(result) => result?,
        Err(_) => {
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                "drain timed out; dropping calls"
            );
            server.abort();
        }
    }
    if let Some(database) = started.database {
        database.close().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves gRPC (HTTP/2 only) on every connection `incoming` yields, each on a task of its own,
/// with the client's mesh identity (mTLS) in every request's extensions; until `stop`
/// resolves. Then the listener closes, every connection is asked to finish (GOAWAY: calls in
/// flight complete, new ones go elsewhere), and this returns once all have.
///
/// hyper's HTTP/2 server directly, not tonic's transport `Server`, whose per-call wrappers
/// (a second `grpc-timeout` timer beside [`ServerDeadlineLayer`]'s, error recovery, body
/// mapping, HTTP/1 detection) the mesh's own stack makes redundant.
async fn serve_connections<IO, S, B>(
    incoming: impl futures::Stream<Item = (Option<PeerIdentity>, IO)>,
    service: S,
    stop: impl Future<Output = ()>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // hyper's defaults otherwise, among them at most 200 concurrent streams per connection
    // (tonic's transport asked for no limit): a client beyond it waits for a stream to end.
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    {
        // Dropped when accepting ends: the listening socket closes at once.
        let mut incoming = std::pin::pin!(incoming);
        let mut stop = std::pin::pin!(stop);
        loop {
            let (peer, io) = tokio::select! {
                () = &mut stop => break,
                next = futures::StreamExt::next(&mut incoming) => match next {
                    Some(accepted) => accepted,
                    None => break,
                },
            };
            let service = service.clone();
            let requests = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut req = req.map(Body::new);
                if let Some(peer) = &peer {
                    req.extensions_mut().insert(peer.clone());
                }
                service.clone().oneshot(req)
            });
            let connection = graceful.watch(http2.serve_connection(TokioIo::new(io), requests));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    }
    graceful.shutdown().await;
}

/// Loads the process `name`'s mTLS certificate (`[mtls]`), makes it the one its mesh clients
/// present, and starts its reload from disk; `None`, with a warning, when mTLS is off. The
/// error names the missing file and says to run `weft certs` or to opt out.
pub fn start_tls(config: &MeshConfig, name: &str) -> anyhow::Result<Option<MeshTls>> {
    if !config.mtls.is_on() {
        tracing::warn!(
            "mTLS is off ([mtls] mode = \"off\"): the mesh's gRPC traffic is plain text and \
             [callers] is not enforced; only for a network trusted as a whole"
        );
        return Ok(None);
    }
    let tls = MeshTls::load(&config.mtls, name)
        .with_context(|| format!("mTLS is on ([mtls]), but {name} has no usable certificate"))?;
    weft_tls::install(tls.clone());
    tls.spawn_reload();
    let sampled = tls.clone();
    crate::metrics::registry().observe_gauge(
        "weft_mesh_certificate_expiry_seconds",
        ("identity", name.to_owned()),
        move || sampled.seconds_to_expiry() as f64,
    );
    tracing::info!(identity = %tls.identity(), serial = %tls.serial(), "mTLS on");
    Ok(Some(tls))
}

/// Checks that each `[callers]` entry for a method of `grpc_service` names a method the
/// contract describes: a misspelt method would otherwise leave the real one unguarded.
fn check_callers(config: &MeshConfig, grpc_service: &str) -> anyhow::Result<()> {
    let contract = crate::contract::current();
    for pattern in config.callers.keys() {
        let Some((service, method)) = pattern.split_once('/') else {
            continue;
        };
        if service == grpc_service
            && method != "*"
            && contract.access(&format!("/{pattern}")).is_none()
        {
            anyhow::bail!(
                "invalid configuration: key `callers.\"{pattern}\"`: {grpc_service} has no \
                 method {method} in its contract"
            );
        }
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

// === Direct ===

/// Innermost server layer: sends the service's own calls straight to it, and only the rest
/// (health, reflection, unknown services) through tonic's router.
///
/// tonic routes every call through an axum router, which matches the path and stores URL
/// parameters that a gRPC call never has: about 4,500 instructions per call in weft-order's
/// benchmark profile. A prefix comparison does the same job for the one service that matters.
#[derive(Clone)]
struct DirectLayer<S> {
    gate: Gate<S>,
}

impl<S: Clone, R> tower::Layer<R> for DirectLayer<S> {
    type Service = Direct<S, R>;
    fn layer(&self, routes: R) -> Self::Service {
        Direct {
            gate: self.gate.clone(),
            routes,
        }
    }
}

/// Service made by [`DirectLayer`].
#[derive(Clone)]
struct Direct<S, R> {
    gate: Gate<S>,
    routes: R,
}

impl<S, R> Service<http::Request<Body>> for Direct<S, R>
where
    Gate<S>: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService,
    R: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        futures::future::Either<<Gate<S> as Service<http::Request<Body>>>::Future, R::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.routes.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if is_path_of(req.uri().path(), <Gate<S> as NamedService>::NAME) {
            futures::future::Either::Left(self.gate.call(req))
        } else {
            futures::future::Either::Right(self.routes.call(req))
        }
    }
}

/// Whether `path` is `/{service}/{method}`.
fn is_path_of(path: &str, service: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.strip_prefix(service))
        .is_some_and(|rest| rest.starts_with('/'))
}

// === Gate ===

/// Forwards to the service (its unary routes first) once it is set; until then answers
/// UNAVAILABLE.
#[derive(Clone)]
struct Gate<S> {
    slot: Arc<OnceLock<(S, UnaryRoutes)>>,
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Generated tonic servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.slot.get() {
            Some((service, unary)) => match unary.get(req.uri().path()) {
                Some(route) => Box::pin(async move { Ok(route.serve(req).await) }),
                None => Box::pin(service.clone().call(req)),
            },
            None => Box::pin(std::future::ready(Ok(
                Status::unavailable("starting up").into_http()
            ))),
        }
    }
}

/// The contract's descriptors as server reflection shows them: without the methods only
/// other services of the mesh may call (`SERVICE` access, e.g. `CreateUser`) unless
/// `include_internal`, so the public port does not advertise the mesh's internals.
fn reflected_descriptors(include_internal: bool) -> prost_types::FileDescriptorSet {
    let contract = crate::contract::current();
    let mut files: Vec<_> = contract.pool().file_descriptor_protos().cloned().collect();
    if !include_internal {
        for file in &mut files {
            let package = file.package().to_owned();
            for service in &mut file.service {
                let prefix = match package.as_str() {
                    "" => format!("/{}/", service.name()),
                    package => format!("/{package}.{}/", service.name()),
                };
                service.method.retain(|method| {
                    let path = format!("{prefix}{}", method.name());
                    contract.access(&path) != Some(crate::contract::Access::Service)
                });
            }
        }
    }
    prost_types::FileDescriptorSet { file: files }
}

#[cfg(test)]
mod tests {
    use super::{is_path_of, reflected_descriptors};

    #[test]
    fn reflection_leaves_out_internal_methods_unless_asked() {
        let weft = crate::contract::Contract::load(
            &[weft_proto::FILE_DESCRIPTOR_SET],
            &Default::default(),
        );
        crate::contract::install(weft.expect("Weft's contract loads"));
        let methods_of = |set: prost_types::FileDescriptorSet| -> Vec<String> {
            set.file
                .iter()
                .flat_map(|file| &file.service)
                .filter(|service| service.name() == "UserService")
                .flat_map(|service| service.method.iter().map(|m| m.name().to_owned()))
                .collect()
        };
        let public = methods_of(reflected_descriptors(false));
        assert!(public.contains(&"GetMe".to_owned()), "{public:?}");
        assert!(!public.contains(&"CreateUser".to_owned()), "{public:?}");
        let all = methods_of(reflected_descriptors(true));
        assert!(all.contains(&"CreateUser".to_owned()), "{all:?}");
    }

    #[test]
    fn only_the_services_own_methods_take_the_direct_route() {
        let service = "weft.order.v1.OrderService";
        assert!(is_path_of(
            "/weft.order.v1.OrderService/GetProduct",
            service
        ));
        assert!(!is_path_of(
            "/weft.order.v1.OrderServiceX/GetProduct",
            service
        ));
        assert!(!is_path_of("/grpc.health.v1.Health/Check", service));
        assert!(!is_path_of(
            "weft.order.v1.OrderService/GetProduct",
            service
        ));
        assert!(!is_path_of("/weft.order.v1.OrderService", service));
    }
}
