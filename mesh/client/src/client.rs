//! Channels to upstream services, with the mesh's client stack.
//!
//! An upstream is named in `[upstreams.<name>]` of mesh-config. Its channel connects lazily
//! (a service starts even when its upstreams are down) and passes every call through the
//! client stack, outermost first:
//!
//! 1. [`crate::propagate`]: the call's span; request id, credentials and trace context sent on;
//! 2. [`crate::metrics`]: calls counted by method and outcome;
//! 3. [`CallPolicyLayer`]: the method's policy: its deadline (the method's timeout, capped by
//!    what is left of the inbound call's deadline minus a margin) and whether it may be
//!    retried (idempotent methods);
//! 4. [`crate::deadline`]: no call sent without time left, `grpc-timeout` sent, answer awaited
//!    no longer;
//! 5. [`crate::retry`]: retries of idempotent calls within a retry budget;
//! 6. [`crate::breaker`]: adaptive throttling when the upstream fails;
//! 7. [`crate::balance`]: power of two choices over the upstream's endpoints, outlier ejection,
//!    each endpoint an HTTP/2 [`crate::connection`].
//!
//! Every policy follows mesh-config reloads ([`crate::reload`]). Generated tonic clients take
//! a [`MeshChannel`] directly:
//! `UserServiceClient::new(weft_mesh::client::channel(&config, "user")?)`.

use std::{
    collections::HashMap,
    task::{Context, Poll},
    time::Duration,
};

use http::Request;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    balance::{Balance, BalanceError, BalancePolicy},
    breaker::{Breaker, BreakerLayer},
    config::{ConfigError, MeshConfig, UpstreamConfig},
    connection::ClientTls,
    connection::Keepalive,
    deadline::{self, Deadline, DeadlineLayer, DeadlineService},
    live::Live,
    metrics::{ClientMetricsLayer, Metered},
    propagate::{Propagate, PropagateLayer},
    retry::{Retry, RetryLayer, Retryable},
};

// === UpstreamPolicy ===

/// The per-method rules of calls to one upstream, compiled from its `[upstreams.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamPolicy {
    default: MethodRule,
    margin: Duration,
    /// By full path (`/package.Service/Method`) and by method name (`Method`).
    methods: HashMap<String, MethodRule>,
}

/// What applies to the calls of one method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRule {
    /// Time allowed for the call, all attempts included.
    pub timeout: Duration,
    /// Whether the call may be retried (`None`: as the proto says).
    idempotent: Option<bool>,
    /// The request field that makes the call safe to retry when set.
    pub idempotent_if_field: Option<String>,
}

impl MethodRule {
    /// Whether calls of this rule's method, at `path`, may be retried whatever their fields.
    fn is_idempotent(&self, path: &str) -> bool {
        self.idempotent
            .unwrap_or_else(|| crate::contract::current().is_idempotent(path))
    }
}

// === impl UpstreamPolicy ===

impl UpstreamPolicy {
    /// The policy of `config`.
    pub fn from_config(config: &UpstreamConfig) -> Self {
        let timeout = Duration::from_millis(config.timeout_ms);
        let default = MethodRule {
            timeout,
            idempotent: None,
            idempotent_if_field: None,
        };
        let methods = config
            .methods
            .iter()
            .map(|(name, method)| {
                // Config names a method `package.Service/Method`; calls carry its path.
                let key = format!("/{name}");
                let rule = MethodRule {
                    timeout: method
                        .timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(timeout),
                    idempotent: method.idempotent,
                    idempotent_if_field: method.idempotent_if_field.clone(),
                };
                (key, rule)
            })
            .collect();
        Self {
            default,
            margin: Duration::from_millis(config.deadline_margin_ms),
            methods,
        }
    }

    /// The rule of the method at gRPC `path` (`/package.Service/Method`).
    pub fn rule(&self, path: &str) -> &MethodRule {
        self.methods.get(path).unwrap_or(&self.default)
    }

    /// Whether calls to `path` may be retried whatever their fields.
    pub fn is_idempotent(&self, path: &str) -> bool {
        self.rule(path).is_idempotent(path)
    }

    /// The deadline of a call to `path` starting `now`: the method's timeout, capped by the
    /// inbound call's deadline (less the margin) and by any deadline the caller set.
    pub fn deadline(&self, path: &str, now: Instant, caller: Option<Instant>) -> Instant {
        self.deadline_of(self.rule(path), now, caller)
    }

    fn deadline_of(&self, rule: &MethodRule, now: Instant, caller: Option<Instant>) -> Instant {
        let own = now + rule.timeout;
        let inherited = deadline::current().map(|inbound| {
            inbound
                .checked_sub(self.margin)
                .unwrap_or(now)
                .max(now.min(inbound))
        });
        [Some(own), inherited, caller]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(own)
    }
}

// === CallPolicyLayer ===

/// Client layer: gives each call its method's [`Deadline`] and, for idempotent methods, the
/// [`Retryable`] mark.
#[derive(Debug, Clone)]
pub struct CallPolicyLayer {
    policy: Live<UpstreamPolicy>,
}

impl CallPolicyLayer {
    /// Applies `policy` to every call.
    pub fn new(policy: Live<UpstreamPolicy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for CallPolicyLayer {
    type Service = CallPolicy<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallPolicy {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Service made by [`CallPolicyLayer`].
#[derive(Debug, Clone)]
pub struct CallPolicy<S> {
    inner: S,
    policy: Live<UpstreamPolicy>,
}

impl<S, B> Service<Request<B>> for CallPolicy<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let policy = self.policy.get();
        let path = req.uri().path();
        let rule = policy.rule(path);
        let caller = req.extensions().get::<Deadline>().map(|d| d.0);
        let deadline = policy.deadline_of(rule, Instant::now(), caller);
        let idempotent = rule.is_idempotent(path);
        req.extensions_mut().insert(Deadline(deadline));
        if idempotent {
            req.extensions_mut().insert(Retryable);
        }
        self.inner.call(req)
    }
}

/// The resilient part of the client stack (layers 3 to 7): what the gateway calls through,
/// as it traces and counts its calls itself.
pub type ResilientChannel = CallPolicy<DeadlineService<Retry<Breaker<Balance>>>>;

/// A channel to an upstream with the mesh's whole client stack.
pub type MeshChannel = Propagate<Metered<ResilientChannel>>;

/// An upstream that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// mesh-config declares no such upstream.
    #[error(transparent)]
    Undeclared(#[from] ConfigError),
    /// No upstream lists the gRPC service in its `grpc_services`.
    #[error(
        "no upstream serves {0}: list it in the `grpc_services` of its [upstreams.<name>] table"
    )]
    NotServed(String),
    /// Its endpoints cannot be balanced over.
    #[error("upstream {upstream}: {source}")]
    Balance {
        /// The upstream's name.
        upstream: String,
        /// Why.
        #[source]
        source: BalanceError,
    },
}

/// A lazily connecting channel to the upstream `name`, as `[upstreams.<name>]` describes it
/// (and as reloads of mesh-config change it; one removed by a reload keeps its last policies).
pub fn channel(config: &MeshConfig, name: &str) -> Result<MeshChannel, ClientError> {
    let initial = config.upstream(name)?.clone();
    let (stack, _) = resilient(&crate::config::process_name(name), name, config, 1, {
        let (name, initial) = (name.to_owned(), initial.clone());
        move |config| {
            config
                .upstreams
                .get(&name)
                .cloned()
                .unwrap_or_else(|| initial.clone())
        }
    })?;
    Ok(with_context(stack, name, &initial))
}

/// A channel to the upstream serving the gRPC service `grpc_service`
/// (`weft.user.v1.UserService`), as mesh-config's `grpc_services` lists say, with that
/// upstream's process name (`weft-user`, the `aud` of service tokens for it).
pub fn channel_serving(
    config: &MeshConfig,
    grpc_service: &str,
) -> Result<(MeshChannel, String), ClientError> {
    let (name, _) = config
        .upstream_serving(grpc_service)
        .ok_or_else(|| ClientError::NotServed(grpc_service.to_owned()))?;
    Ok((channel(config, name)?, crate::config::process_name(name)))
}

/// `stack` (to the upstream `name`) with the outer layers of the client stack: context
/// propagation and metrics. For a process that already has a resilient stack to the upstream
/// and must not balance over it twice.
pub fn with_context(stack: ResilientChannel, name: &str, upstream: &UpstreamConfig) -> MeshChannel {
    PropagateLayer.layer(ClientMetricsLayer::new(name, upstream).layer(stack))
}

/// The resilient stack to the upstream `select` picks from mesh-config (named `name` in errors,
/// logs and metrics; `key` is its `[upstreams.<key>]`, whose identity its certificate must carry
/// when mTLS is on), with `connections` HTTP/2 connections per endpoint, and its live
/// per-method policy. Must be called inside the tokio runtime.
pub fn resilient<F>(
    name: &str,
    key: &str,
    config: &MeshConfig,
    connections: usize,
    select: F,
) -> Result<(ResilientChannel, Live<UpstreamPolicy>), ClientError>
where
    F: Fn(&MeshConfig) -> UpstreamConfig + Clone + Send + Sync + 'static,
{
    let policy = upstream_policy(config, select.clone());
    let retry = crate::reload::policy(config, {
        let select = select.clone();
        move |config| select(config).retry
    });
    let breaker = crate::reload::policy(config, {
        let select = select.clone();
        move |config| select(config).breaker
    });
    let key = key.to_owned();
    let endpoints = crate::reload::policy(config, move |config| {
        let tls = config.mtls.is_on().then(|| ClientTls::to(&key));
        balance_policy(&select(config), connections, tls)
    });
    let balance = Balance::new(name, endpoints).map_err(|source| ClientError::Balance {
        upstream: name.to_owned(),
        source,
    })?;
    let stack = tower::ServiceBuilder::new()
        .layer(CallPolicyLayer::new(policy.clone()))
        .layer(DeadlineLayer::new(name))
        .layer(RetryLayer::new(name, retry))
        .layer(BreakerLayer::new(name, breaker))
        .service(balance);
    Ok((stack, policy))
}

/// The live per-method policy of the upstream that `select` picks from mesh-config.
pub fn upstream_policy<F>(config: &MeshConfig, select: F) -> Live<UpstreamPolicy>
where
    F: Fn(&MeshConfig) -> UpstreamConfig + Send + Sync + 'static,
{
    crate::reload::policy(config, move |config| {
        UpstreamPolicy::from_config(&select(config))
    })
}

fn balance_policy(
    upstream: &UpstreamConfig,
    connections: usize,
    tls: Option<ClientTls>,
) -> BalancePolicy {
    BalancePolicy {
        tls,
        endpoints: upstream.endpoint_list(),
        connections_per_endpoint: connections,
        connect_timeout: Duration::from_millis(upstream.connect_timeout_ms),
        keepalive: Keepalive {
            ping_interval: upstream.keepalive_interval(),
            ping_timeout: Duration::from_millis(upstream.keepalive_timeout_ms),
            tcp: upstream.tcp_keepalive(),
        },
        resolve_interval: Duration::from_millis(upstream.resolve_interval_ms),
        outlier: upstream.outlier.clone(),
        ..BalancePolicy::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MethodConfig;

    fn policy(methods: &[(&str, MethodConfig)]) -> UpstreamPolicy {
        let mut config = UpstreamConfig::with_endpoint("http://127.0.0.1:1".into());
        config.timeout_ms = 5000;
        config.methods = methods
            .iter()
            .map(|(name, method)| (name.to_string(), method.clone()))
            .collect();
        UpstreamPolicy::from_config(&config)
    }

    #[test]
    fn reads_are_idempotent_as_the_proto_says_and_config_overrides() {
        // The layers know no method: these tests need a real contract.
        let weft = crate::contract::Contract::load(
            &[weft_proto::FILE_DESCRIPTOR_SET],
            &Default::default(),
        );
        crate::contract::install(weft.expect("Weft's contract loads"));
        let default = policy(&[]);
        assert!(default.is_idempotent("/weft.user.v1.UserService/GetMe"));
        assert!(default.is_idempotent("/weft.order.v1.OrderService/GetProduct"));
        assert!(!default.is_idempotent("/weft.order.v1.OrderService/CreateOrder"));
        assert!(!default.is_idempotent("/weft.auth.v1.AuthService/Login"));
        let overridden = policy(&[(
            "weft.user.v1.UserService/GetMe",
            MethodConfig {
                idempotent: Some(false),
                ..Default::default()
            },
        )]);
        assert!(!overridden.is_idempotent("/weft.user.v1.UserService/GetMe"));
    }

    #[test]
    fn a_method_timeout_applies_by_its_full_name() {
        let p = policy(&[
            (
                "weft.user.v1.UserService/GetMe",
                MethodConfig {
                    timeout_ms: Some(100),
                    ..Default::default()
                },
            ),
            (
                "weft.user.v1.UserService/GetUser",
                MethodConfig {
                    timeout_ms: Some(200),
                    ..Default::default()
                },
            ),
        ]);
        let ms = |path| p.rule(path).timeout.as_millis();
        assert_eq!(ms("/weft.user.v1.UserService/GetMe"), 100);
        assert_eq!(ms("/weft.user.v1.UserService/GetUser"), 200);
        assert_eq!(ms("/weft.user.v1.UserService/ListUsers"), 5000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_capped_by_the_inbound_call_less_the_margin_and_the_caller() {
        let p = policy(&[]);
        let now = Instant::now();
        let path = "/weft.user.v1.UserService/GetMe";
        assert_eq!(p.deadline(path, now, None), now + Duration::from_secs(5));
        let caller = now + Duration::from_millis(200);
        assert_eq!(p.deadline(path, now, Some(caller)), caller);

        let mut context = crate::propagate::CallContext::default();
        context.deadline = Some(now + Duration::from_millis(100));
        let inherited = context
            .scope(async move { p.deadline(path, now, None) })
            .await;
        assert_eq!(inherited, now + Duration::from_millis(95), "5 ms margin");
    }
}
