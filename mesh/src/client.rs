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
//! `UserServiceClient::new(weft_mesh::client::channel(&config, ServiceName::User)?)`.

use std::{
    collections::{HashMap, HashSet},
    sync::LazyLock,
    task::{Context, Poll},
    time::Duration,
};

use http::Request;
use prost::Message as _;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    balance::{Balance, BalanceError, BalancePolicy},
    breaker::{Breaker, BreakerLayer},
    config::{MeshConfig, ServiceName, UpstreamConfig},
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

/// Methods the contract marks safe to retry (`idempotency_level` `NO_SIDE_EFFECTS` or
/// `IDEMPOTENT`), by full path.
static PROTO_IDEMPOTENT: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let Ok(set) = prost_types::FileDescriptorSet::decode(weft_proto::FILE_DESCRIPTOR_SET) else {
        return HashSet::new();
    };
    let mut paths = HashSet::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let level = method
                    .options
                    .as_ref()
                    .map(|options| options.idempotency_level())
                    .unwrap_or_default();
                if level != prost_types::method_options::IdempotencyLevel::IdempotencyUnknown {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    paths
});

impl MethodRule {
    /// Whether calls of this rule's method, at `path`, may be retried whatever their fields.
    fn is_idempotent(&self, path: &str) -> bool {
        self.idempotent
            .unwrap_or_else(|| PROTO_IDEMPOTENT.contains(path))
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
                let key = if name.contains('/') {
                    format!("/{name}")
                } else {
                    name.clone()
                };
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
        let name = path.rsplit('/').next().unwrap_or(path);
        self.methods
            .get(path)
            .or_else(|| self.methods.get(name))
            .unwrap_or(&self.default)
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
#[error("upstream {upstream}: {source}")]
pub struct ClientError {
    upstream: String,
    #[source]
    source: BalanceError,
}

/// A lazily connecting channel to the service `name`, as `[upstreams.<name>]` describes it.
pub fn channel(config: &MeshConfig, name: ServiceName) -> Result<MeshChannel, ClientError> {
    let (stack, _) = resilient(name.as_str(), config, 1, move |config| {
        config.upstream(name).clone()
    })?;
    Ok(with_context(stack, config.upstream(name)))
}

/// `stack` (to `upstream`) with the outer layers of the client stack: context propagation and
/// metrics. For a process that already has a resilient stack to the upstream and must not
/// balance over it twice.
pub fn with_context(stack: ResilientChannel, upstream: &UpstreamConfig) -> MeshChannel {
    let first = upstream.endpoint_list().remove(0);
    PropagateLayer.layer(ClientMetricsLayer::new(&first).layer(stack))
}

/// The resilient stack to the upstream `select` picks from mesh-config (named `name` in errors,
/// logs and metrics), with `connections` HTTP/2 connections per endpoint, and its live
/// per-method policy. Must be called inside the tokio runtime.
pub fn resilient<F>(
    name: &str,
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
    let endpoints = crate::reload::policy(config, move |config| {
        balance_policy(&select(config), connections)
    });
    let balance = Balance::new(name, endpoints).map_err(|source| ClientError {
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

fn balance_policy(upstream: &UpstreamConfig, connections: usize) -> BalancePolicy {
    BalancePolicy {
        endpoints: upstream.endpoint_list(),
        connections_per_endpoint: connections,
        connect_timeout: Duration::from_millis(upstream.connect_timeout_ms),
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
        let default = policy(&[]);
        assert!(default.is_idempotent("/weft.user.v1.UserService/GetMe"));
        assert!(default.is_idempotent("/weft.order.v1.OrderService/GetProduct"));
        assert!(!default.is_idempotent("/weft.order.v1.OrderService/CreateOrder"));
        assert!(!default.is_idempotent("/weft.auth.v1.AuthService/Login"));
        let overridden = policy(&[(
            "GetMe",
            MethodConfig {
                idempotent: Some(false),
                ..Default::default()
            },
        )]);
        assert!(!overridden.is_idempotent("/weft.user.v1.UserService/GetMe"));
    }

    #[test]
    fn a_method_timeout_applies_by_name_or_full_name() {
        let p = policy(&[
            (
                "GetMe",
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
