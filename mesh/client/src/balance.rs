//! Load balancing over an upstream's endpoints, with outlier ejection.
//!
//! [`Balance`] is the innermost client service of the mesh, where a single
//! `tonic::transport::Channel` used to be. It holds every endpoint of one upstream (several
//! addresses in config, or a host name standing for every address it resolves to, as a
//! Kubernetes headless service gives), `connections_per_endpoint` lazily connecting HTTP/2
//! connections ([`crate::connection`]) to each, and sends each call to one of them.
//!
//! # Why power of two choices over peak-EWMA latency
//!
//! Round-robin spreads calls evenly whatever the endpoints do with them: a replica that is slow
//! (a cold cache, a noisy neighbour, a long GC) gets its full share and its queue grows. Picking
//! the least loaded endpoint of all needs a global view and sends every caller to the same
//! newly idle endpoint at once. Power of two choices (Mitzenmacher) takes two endpoints at
//! random and keeps the cheaper one: nearly as good as the best choice, with no herding, and
//! O(1) per call. The cost is the one Finagle and Linkerd use:
//! `cost = ewma_rtt * (pending + 1)`, where `ewma_rtt` is a *peak* EWMA of the time to response
//! headers: a sample above the average replaces it at once (a slowing endpoint is avoided
//! after one slow answer), while samples below it, and the passing of time, pull it down
//! only with a time constant (`decay`, default 10 s), so a long-idle endpoint is tried
//! again. `pending` counts calls in flight (decremented when a call ends *or is cancelled*),
//! so an endpoint that stops answering becomes expensive even before any sample arrives.
//! A new endpoint starts at `default_rtt` (1 ms), cheap enough to be tried soon.
//!
//! # Why outlier ejection with a half-open probe
//!
//! Latency alone does not catch an endpoint that fails *fast* (connection refused, a replica
//! answering UNAVAILABLE while it drains): its answers are quick, so it looks cheap and
//! attracts more calls. Each failure therefore counts as a latency sample eight times the
//! estimate, so the next call (a retry above all) prefers another endpoint; and after
//! `consecutive_failures` failures in a row (a transport error, or
//! a trailers-only answer whose code is in `failure_codes`, UNAVAILABLE by default) the
//! endpoint is ejected: it is not chosen while others remain. After `ejection_ms` exactly one
//! call is let through as a probe (the others keep avoiding it): success returns the endpoint,
//! failure ejects it again for twice as long, up to `max_ejection_ms`. One probe instead of a
//! return to full traffic means a dead endpoint costs one failed call per rest period, not a
//! burst; doubling the rest makes a long outage cost almost nothing. When every endpoint is
//! ejected, a call is refused at once with UNAVAILABLE naming the upstream, unless a probe is
//! due, in which case that call is the probe. The circuit breaker above this layer
//! ([`crate::breaker`]) throttles the upstream as a whole; ejection handles single replicas.
//!
//! # Endpoints that change
//!
//! A background task (one per [`Balance`], ended when the last clone is dropped) resolves host
//! names again every `resolve_interval` and rebuilds the endpoint set when the policy changes
//! ([`Live::set`], hot reload). An endpoint present before and after keeps its channels and
//! statistics; a removed one leaves the set but its calls in flight finish on the channel they
//! hold. A host name that cannot be resolved keeps its last addresses. Calls made before the
//! first resolution of a host-name-only upstream wait for it (bounded by the caller's deadline).
//!
//! ```ignore
//! let policy = Live::new(BalancePolicy {
//!     endpoints: vec!["http://weft-user.default.svc:50051".into()],
//!     ..BalancePolicy::default()
//! });
//! let balance = weft_mesh::balance::Balance::new("user", policy.clone())?;
//! let client = UserServiceClient::new(balance);
//! ```
//!
//! Metrics: `weft_client_endpoints{upstream,state="healthy"|"ejected"}` and
//! `weft_client_ejections_total{upstream}`. Build one [`Balance`] per upstream and process:
//! the series are labelled by upstream only.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, Once, RwLock, RwLockReadGuard, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use metrics::{Counter, Gauge, Key, KeyName, Label, Metadata, Recorder, SharedString};
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tonic::{Code, Status, body::Body};
use tower::{ServiceExt as _, util::Oneshot};
use tower_service::Service;

use crate::{
    connection::{ClientTls, Connection, Keepalive},
    grpc,
    live::Live,
};

/// Cost of an endpoint whose estimate decayed to zero while calls are pending (Finagle's rule:
/// do not pile calls onto an endpoint merely because nothing was heard from it for long).
const PENALTY_NS: f64 = 1e9;
/// How much slower than its estimate a failed call makes an endpoint look. With two endpoints,
/// P2C compares the same pair on every call: without it, one that refuses connections in
/// microseconds would keep winning, and a retry would land on it again until it is ejected.
const FAILURE_FACTOR: f64 = 8.0;
/// The least estimate a failure is multiplied from (an idle endpoint's decays toward zero).
const FAILURE_FLOOR_NS: f64 = 1e6;

const ENDPOINTS: &str = "weft_client_endpoints";
const EJECTIONS: &str = "weft_client_ejections_total";

// === OutlierPolicy ===

pub use crate::policy::OutlierPolicy;

// === BalancePolicy ===

/// The endpoints of one upstream and how calls are spread over them (built from the
/// upstream's config; replace it through the [`Live`] to change endpoints at run time).
#[derive(Debug, Clone, PartialEq)]
pub struct BalancePolicy {
    /// `http://host:port` or `https://host:port`; an IP literal is one endpoint, a host name
    /// stands for every address it resolves to; at least one; default none.
    pub endpoints: Vec<String>,
    /// Lazily connecting HTTP/2 connections per endpoint, calls spread round-robin over them
    /// (one connection serialises its frames through one task); 1 to 64, default 1.
    pub connections_per_endpoint: usize,
    /// Time allowed to open a connection; default 1 s.
    pub connect_timeout: Duration,
    /// How the connections find out that a peer is gone (HTTP/2 PINGs, TCP keepalive).
    pub keepalive: Keepalive,
    /// How often host names are resolved again; default 5 s.
    pub resolve_interval: Duration,
    /// When endpoints are ejected and probed.
    pub outlier: OutlierPolicy,
    /// Time constant of the peak-EWMA latency estimate; default 10 s.
    pub decay: Duration,
    /// Latency estimate of an endpoint not yet heard from; default 1 ms.
    pub default_rtt: Duration,
    /// mTLS to the endpoints (the identity their certificates must carry); default `None`:
    /// plain HTTP/2.
    pub tls: Option<ClientTls>,
}

impl Default for BalancePolicy {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            connections_per_endpoint: 1,
            connect_timeout: Duration::from_secs(1),
            keepalive: Keepalive::default(),
            resolve_interval: Duration::from_secs(5),
            outlier: OutlierPolicy::default(),
            decay: Duration::from_secs(10),
            tls: None,
            default_rtt: Duration::from_millis(1),
        }
    }
}

impl BalancePolicy {
    /// Checks the values; a bad endpoint is named in the error.
    pub fn validate(&self) -> Result<(), BalanceError> {
        let err = |key: &str, reason: &str| {
            Err(BalanceError::Policy {
                key: key.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.endpoints.is_empty() {
            return err("endpoints", "must name at least one endpoint");
        }
        for endpoint in &self.endpoints {
            parse_endpoint(endpoint)?;
        }
        if !(1..=64).contains(&self.connections_per_endpoint) {
            return err("connections_per_endpoint", "must be between 1 and 64");
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("resolve_interval", self.resolve_interval),
            ("decay", self.decay),
            ("keepalive.ping_timeout", self.keepalive.ping_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return err(key, "must be at least 1 ms");
            }
        }
        self.outlier
            .validate()
            .map_err(|(key, reason)| BalanceError::Policy {
                key: format!("outlier.{key}"),
                reason,
            })
    }
}

/// A balancer that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    /// An endpoint that is not `http(s)://host[:port]`.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Another value of the policy out of range.
    #[error("invalid balance policy: `{key}` {reason}")]
    Policy {
        /// The field (`outlier.ejection_ms`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// [`Balance::new`] was called outside a tokio runtime.
    #[error("a balancer must be built inside a tokio runtime")]
    NoRuntime,
}

/// A lazily connecting HTTP/2 connection to `target`, whose calls carry the configured
/// `scheme://host:port` (the endpoint's origin) and go to the target's address.
fn connect(target: &Target, policy: &BalancePolicy) -> Result<Connection, BalanceError> {
    let bad = |reason: &str| {
        BalanceError::Endpoint(EndpointError {
            endpoint: target.key.to_string(),
            reason: reason.to_string(),
        })
    };
    let addr: SocketAddr = target
        .uri
        .authority()
        .and_then(|authority| authority.as_str().parse().ok())
        .ok_or_else(|| bad("not a usable address"))?;
    let origin = target.origin.as_ref().unwrap_or(&target.uri);
    let (Some(scheme), Some(authority)) = (origin.scheme(), origin.authority()) else {
        return Err(bad("not a usable origin"));
    };
    Ok(Connection::with_tls(
        addr,
        scheme.clone(),
        authority.clone(),
        policy.connect_timeout,
        policy.keepalive,
        policy.tls.clone(),
    ))
}

/// Makes one connection's service to a target (a [`Connection`]; a mock in tests).
type Connector<S> =
    Arc<dyn Fn(&Target, &BalancePolicy) -> Result<S, BalanceError> + Send + Sync + 'static>;

use crate::discovery::{Dns, EndpointError, Plan, Target, parse_endpoint};

// === Balance ===

/// The endpoints of one upstream as one service: each call goes to the cheaper of two random
/// healthy endpoints. Always ready; cheap to clone (clones share endpoints and statistics).
pub struct Balance<S = Connection> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl Balance<Connection> {
    /// Balances calls to `upstream` over the endpoints of `policy`, following its changes.
    /// Must be called inside a tokio runtime: it spawns the task that resolves host names and
    /// applies policy changes, which ends when the last clone is dropped.
    pub fn new(upstream: &str, policy: Live<BalancePolicy>) -> Result<Self, BalanceError> {
        Self::with_connector(upstream, policy, Arc::new(connect))
    }
}

impl<S> Balance<S>
where
    S: Send + Sync + 'static,
{
    fn with_connector(
        upstream: &str,
        policy: Live<BalancePolicy>,
        connect: Connector<S>,
    ) -> Result<Self, BalanceError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BalanceError::NoRuntime);
        }
        let current = policy.get();
        current.validate()?;
        let plan = Plan::of(&current.endpoints)?;
        // Subscribed before anything else: a change made from now on is seen by the task.
        let changes = policy.subscribe();
        let (stop, stopped) = oneshot::channel();
        let resolved = plan.hosts.is_empty();
        let shared = Arc::new(Shared {
            upstream: upstream.into(),
            policy,
            connect,
            set: RwLock::new(Set {
                endpoints: Vec::new(),
                resolved,
                hosts: plan.host_names(),
            }),
            decay_ns: AtomicU64::new(duration_ns(current.decay)),
            transition: Mutex::new(()),
            next_probe: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            resolved: watch::Sender::new(resolved),
            metrics: Metrics::register(upstream),
            _stop: stop,
        });
        // Addresses are usable at once; host names are the task's first job.
        shared.rebuild(&plan.fixed, &current, resolved, plan.host_names());
        tokio::spawn(maintain(Arc::downgrade(&shared), current, changes, stopped));
        Ok(Self { shared })
    }

    /// Waits until host names were resolved once.
    async fn resolved(&self) {
        let mut resolved = self.shared.resolved.subscribe();
        // The sender lives in `shared`, which `self` holds: this cannot fail.
        let _ = resolved.wait_for(|done| *done).await;
    }
}

impl<S, B> Service<Request<B>> for Balance<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Every call is answered (by an endpoint or a refusal); a channel drives itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let forced_probe = req.extensions().get::<crate::breaker::Probe>().is_some();
        let state = match self.shared.pick(forced_probe) {
            Pick::Endpoint {
                endpoint,
                probe,
                now,
            } => {
                let connection = endpoint.connection();
                let guard = InFlight::start(self.shared.clone(), endpoint, probe, now);
                State::Call {
                    call: connection.oneshot(req),
                    guard: Some(guard),
                }
            }
            Pick::Refuse(status) => State::Refused {
                response: Some(grpc::refusal(status)),
            },
            Pick::Wait => {
                let mut this = self.clone();
                State::Waiting {
                    wait: Box::pin(async move {
                        this.resolved().await;
                        this.call(req).await
                    }),
                }
            }
        };
        ResponseFuture { state }
    }
}

// === Shared ===

/// What every clone of a [`Balance`] shares.
struct Shared<S> {
    upstream: Arc<str>,
    policy: Live<BalancePolicy>,
    connect: Connector<S>,
    /// The current endpoints. Lock order: `set`, then `transition`, then an endpoint's `stats`.
    set: RwLock<Set<S>>,
    /// The policy's `decay`, in ns.
    decay_ns: AtomicU64,
    /// Held while probes are claimed and the derived state below is recomputed.
    transition: Mutex<()>,
    /// When the earliest ejected endpoint may be probed, in ns since `base` (MAX: none).
    next_probe: AtomicU64,
    base: Instant,
    /// Whether host names were resolved once (calls before that wait).
    resolved: watch::Sender<bool>,
    metrics: Metrics,
    /// Dropped with the last clone: ends the background task.
    _stop: oneshot::Sender<()>,
}

struct Set<S> {
    endpoints: Vec<Arc<Endpoint<S>>>,
    resolved: bool,
    /// The configured host names, for a refusal when none resolves.
    hosts: String,
}

/// Where a call goes.
enum Pick<S> {
    /// To this endpoint (`probe`: as its probe), chosen at `now`.
    Endpoint {
        endpoint: Arc<Endpoint<S>>,
        probe: bool,
        now: Instant,
    },
    /// Nowhere: answer this.
    Refuse(Status),
    /// Nowhere yet: host names are being resolved for the first time.
    Wait,
}

/// How a call ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// No answer: the connection failed.
    Transport,
    /// A trailers-only answer with this code.
    Code(Code),
    /// An answer whose status comes later, in the trailers.
    Answer,
}

/// A change of an endpoint's health.
enum Change {
    Ejected { failures: u32, rest: Duration },
    Returned,
}

impl<S> Shared<S> {
    fn now_ns(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.base).as_nanos();
        ns.min(u128::from(u64::MAX - 1)) as u64
    }

    fn decay(&self) -> f64 {
        self.decay_ns.load(Ordering::Relaxed).max(1) as f64
    }

    /// Chooses the endpoint of a call: a due probe first, else the cheaper of two random
    /// endpoints that are not ejected; when all are ejected, a `forced_probe` (the breaker's)
    /// probes the one whose rest ends first.
    fn pick(&self, forced_probe: bool) -> Pick<S> {
        let set = read(&self.set);
        let endpoints = &set.endpoints;
        if endpoints.is_empty() {
            if !set.resolved {
                return Pick::Wait;
            }
            let status = if set.hosts.is_empty() {
                format!("upstream {}: no endpoints", self.upstream)
            } else {
                format!(
                    "upstream {}: no endpoints resolved for {}",
                    self.upstream, set.hosts
                )
            };
            return Pick::Refuse(Status::unavailable(status));
        }
        let now = Instant::now();
        if self.now_ns(now) >= self.next_probe.load(Ordering::Acquire)
            && let Some(endpoint) = self.claim_probe(endpoints, now)
        {
            return Pick::Endpoint {
                endpoint,
                probe: true,
                now,
            };
        }
        let n = endpoints.len();
        let chosen = if n == 1 {
            Some(&endpoints[0]).filter(|e| !e.is_ejected())
        } else {
            let (a, b) = two_distinct(n);
            let (a, b) = (&endpoints[a], &endpoints[b]);
            if !a.is_ejected() && !b.is_ejected() {
                Some(self.cheaper(a, b, now))
            } else {
                self.pick_available(endpoints, now)
            }
        };
        match chosen {
            Some(endpoint) => Pick::Endpoint {
                endpoint: endpoint.clone(),
                probe: false,
                now,
            },
            None if forced_probe => match self.claim_earliest_probe(endpoints) {
                Some(endpoint) => Pick::Endpoint {
                    endpoint,
                    probe: true,
                    now,
                },
                None => Pick::Refuse(self.all_ejected(n, now)),
            },
            None => Pick::Refuse(self.all_ejected(n, now)),
        }
    }

    /// Turns the ejected endpoint whose rest ends first into a probing one, rest or not; none
    /// when a probe is already under way.
    fn claim_earliest_probe(&self, endpoints: &[Arc<Endpoint<S>>]) -> Option<Arc<Endpoint<S>>> {
        let _transition = lock(&self.transition);
        let mut earliest: Option<(Instant, &Arc<Endpoint<S>>)> = None;
        for endpoint in endpoints {
            match lock(&endpoint.stats).health {
                Health::Probing { .. } => return None,
                Health::Ejected { until, .. } if earliest.is_none_or(|(at, _)| until < at) => {
                    earliest = Some((until, endpoint));
                }
                _ => {}
            }
        }
        let endpoint = earliest?.1;
        let mut stats = lock(&endpoint.stats);
        if let Health::Ejected { rest, .. } = stats.health {
            stats.health = Health::Probing { rest };
        }
        Some(endpoint.clone())
    }

    /// Power of two choices among the endpoints not ejected.
    fn pick_available<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint<S>>],
        now: Instant,
    ) -> Option<&'a Arc<Endpoint<S>>> {
        let available = || endpoints.iter().filter(|e| !e.is_ejected());
        match available().count() {
            0 => None,
            1 => available().next(),
            k => {
                let (a, b) = two_distinct(k);
                match (available().nth(a), available().nth(b)) {
                    (Some(a), Some(b)) => Some(self.cheaper(a, b, now)),
                    // An endpoint was ejected meanwhile.
                    (a, b) => a.or(b).or_else(|| available().next()),
                }
            }
        }
    }

    fn cheaper<'a>(
        &self,
        a: &'a Arc<Endpoint<S>>,
        b: &'a Arc<Endpoint<S>>,
        now: Instant,
    ) -> &'a Arc<Endpoint<S>> {
        let decay = self.decay();
        if b.cost(now, decay) < a.cost(now, decay) {
            b
        } else {
            a
        }
    }

    /// Turns the first ejected endpoint whose rest is over into a probing one, and returns it.
    /// Exactly one caller gets a given probe: claims are made under `transition`.
    fn claim_probe(
        &self,
        endpoints: &[Arc<Endpoint<S>>],
        now: Instant,
    ) -> Option<Arc<Endpoint<S>>> {
        let _transition = lock(&self.transition);
        let mut claimed = None;
        let mut next: Option<Instant> = None;
        for endpoint in endpoints {
            let mut stats = lock(&endpoint.stats);
            if let Health::Ejected { until, rest } = stats.health {
                if until <= now && claimed.is_none() {
                    stats.health = Health::Probing { rest };
                    claimed = Some(endpoint.clone());
                } else {
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
            }
        }
        self.next_probe.store(
            next.map_or(u64::MAX, |at| self.now_ns(at)),
            Ordering::Release,
        );
        if let Some(endpoint) = &claimed {
            tracing::debug!(
                upstream = %self.upstream,
                endpoint = %endpoint.target.key,
                "probing ejected endpoint"
            );
        }
        claimed
    }

    fn all_ejected(&self, n: usize, now: Instant) -> Status {
        let next = self.next_probe.load(Ordering::Acquire);
        let when = if next == u64::MAX {
            "a probe is under way".to_string()
        } else {
            let wait_ns = next.saturating_sub(self.now_ns(now));
            format!("next probe in {} ms", wait_ns.div_ceil(1_000_000))
        };
        Status::unavailable(format!(
            "upstream {}: all {n} endpoints ejected after consecutive failures; {when}",
            self.upstream
        ))
    }

    /// Records how a call to `endpoint` ended: its latency, and its part in outlier detection.
    fn record(&self, endpoint: &Endpoint<S>, start: Instant, outcome: Outcome, probe: bool) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(start).as_nanos() as f64;
        let policy = match outcome {
            Outcome::Answer => None,
            _ => Some(self.policy.get()),
        };
        let failed = match outcome {
            Outcome::Transport => true,
            Outcome::Code(code) => policy.as_ref().is_some_and(|p| p.outlier.is_failure(code)),
            Outcome::Answer => false,
        };
        let decay = self.decay();
        let change = {
            let mut stats = lock(&endpoint.stats);
            stats.observe(now, rtt, decay, failed);
            if failed {
                stats.failures = stats.failures.saturating_add(1);
            }
            match (stats.health, policy.as_deref()) {
                (Health::Healthy, Some(policy)) if failed => {
                    if stats.failures >= policy.outlier.consecutive_failures.max(1) {
                        let rest = policy.outlier.ejection();
                        stats.health = Health::Ejected {
                            until: later(now, rest),
                            rest,
                        };
                        endpoint.ejected.store(true, Ordering::Release);
                        Some(Change::Ejected {
                            failures: stats.failures,
                            rest,
                        })
                    } else {
                        None
                    }
                }
                (Health::Healthy, _) => {
                    stats.failures = 0;
                    None
                }
                (Health::Probing { rest }, Some(policy)) if probe && failed => {
                    let rest = rest.saturating_mul(2).min(policy.outlier.max_ejection());
                    stats.health = Health::Ejected {
                        until: later(now, rest),
                        rest,
                    };
                    Some(Change::Ejected {
                        failures: stats.failures,
                        rest,
                    })
                }
                (Health::Probing { .. }, _) if probe => {
                    stats.health = Health::Healthy;
                    stats.failures = 0;
                    // The failures' penalties said nothing about the endpoint that is back.
                    stats.rtt_ns = rtt;
                    endpoint.ejected.store(false, Ordering::Release);
                    Some(Change::Returned)
                }
                // Calls started before the ejection say nothing about the endpoint now.
                _ => None,
            }
        };
        let Some(change) = change else { return };
        match change {
            Change::Ejected { failures, rest } => {
                self.metrics.ejections.increment(1);
                tracing::warn!(
                    upstream = %self.upstream,
                    endpoint = %endpoint.target.key,
                    failures,
                    ejection_ms = rest.as_millis() as u64,
                    "endpoint ejected"
                );
            }
            Change::Returned => tracing::info!(
                upstream = %self.upstream,
                endpoint = %endpoint.target.key,
                "endpoint returned"
            ),
        }
        self.refresh();
    }

    /// A probe was cancelled before it answered: the endpoint may be probed again at once.
    fn abandon_probe(&self, endpoint: &Endpoint<S>) {
        {
            let mut stats = lock(&endpoint.stats);
            let Health::Probing { rest } = stats.health else {
                return;
            };
            stats.health = Health::Ejected {
                until: Instant::now(),
                rest,
            };
        }
        self.refresh();
    }

    /// Recomputes what derives from the endpoints' health: the next probe and the gauges.
    fn refresh(&self) {
        let set = read(&self.set);
        let _transition = lock(&self.transition);
        let (mut healthy, mut ejected) = (0usize, 0usize);
        let mut next: Option<Instant> = None;
        for endpoint in &set.endpoints {
            match lock(&endpoint.stats).health {
                Health::Healthy => healthy += 1,
                Health::Probing { .. } => ejected += 1,
                Health::Ejected { until, .. } => {
                    ejected += 1;
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
            }
        }
        self.next_probe.store(
            next.map_or(u64::MAX, |at| self.now_ns(at)),
            Ordering::Release,
        );
        self.metrics.healthy.set(healthy as f64);
        self.metrics.ejected.set(ejected as f64);
    }

    /// Replaces the endpoint set by `targets`. Endpoints already there with the same
    /// connection settings are kept as they are; others are made (carrying over the
    /// statistics of an endpoint at the same address).
    fn rebuild(&self, targets: &[Target], policy: &BalancePolicy, resolved: bool, hosts: String) {
        self.decay_ns
            .store(duration_ns(policy.decay), Ordering::Relaxed);
        let old: Vec<Arc<Endpoint<S>>> = read(&self.set).endpoints.clone();
        let now = Instant::now();
        let mut endpoints: Vec<Arc<Endpoint<S>>> = Vec::with_capacity(targets.len());
        for target in targets {
            if endpoints.iter().any(|e| e.target.key == target.key) {
                continue;
            }
            let before = old.iter().find(|e| e.target.key == target.key);
            if let Some(kept) = before.filter(|e| e.same_settings(target, policy)) {
                endpoints.push(kept.clone());
                continue;
            }
            let stats = before.map_or_else(
                || Stats::new(now, policy.default_rtt),
                |e| e.successor_stats(now),
            );
            match Endpoint::build(target, policy, &self.connect, stats) {
                Ok(endpoint) => endpoints.push(Arc::new(endpoint)),
                Err(error) => tracing::warn!(
                    upstream = %self.upstream,
                    endpoint = %target.key,
                    %error,
                    "cannot use endpoint"
                ),
            }
        }
        let changed = old.len() != endpoints.len()
            || old.iter().zip(&endpoints).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            let added: Vec<&str> = endpoints
                .iter()
                .filter(|e| !old.iter().any(|o| Arc::ptr_eq(o, e)))
                .map(|e| &*e.target.key)
                .collect();
            let removed: Vec<&str> = old
                .iter()
                .filter(|o| !endpoints.iter().any(|e| Arc::ptr_eq(o, e)))
                .map(|e| &*e.target.key)
                .collect();
            tracing::debug!(
                upstream = %self.upstream,
                endpoints = endpoints.len(),
                ?added,
                ?removed,
                "endpoint set changed"
            );
        }
        {
            let mut set = write(&self.set);
            set.endpoints = endpoints;
            set.resolved = set.resolved || resolved;
            set.hosts = hosts;
        }
        if resolved {
            self.resolved.send_replace(true);
        }
        self.refresh();
    }
}

/// Two distinct random indices below `n` (n >= 2).
fn two_distinct(n: usize) -> (usize, usize) {
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

fn later(now: Instant, rest: Duration) -> Instant {
    now.checked_add(rest)
        .unwrap_or_else(|| now + Duration::from_millis(crate::policy::MAX_EJECTION_LIMIT_MS))
}

fn duration_ns(d: Duration) -> u64 {
    d.as_nanos().clamp(1, u128::from(u64::MAX)) as u64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

// === Endpoint ===

/// One address of the upstream: its connections and statistics.
struct Endpoint<S> {
    target: Target,
    connect_timeout: Duration,
    keepalive: Keepalive,
    connections: Box<[S]>,
    next: AtomicUsize,
    /// Calls in flight.
    pending: AtomicUsize,
    /// Whether `stats.health` is not healthy, readable without the lock.
    ejected: AtomicBool,
    stats: Mutex<Stats>,
}

/// The statistics of an endpoint.
#[derive(Debug, Clone, Copy)]
struct Stats {
    /// Peak-EWMA latency, in ns.
    rtt_ns: f64,
    /// When `rtt_ns` was last brought up to date.
    stamp: Instant,
    /// Failures in a row.
    failures: u32,
    health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Healthy,
    /// Not chosen until `until`; then probed.
    Ejected {
        until: Instant,
        rest: Duration,
    },
    /// One probe call is under way.
    Probing {
        rest: Duration,
    },
}

impl Stats {
    fn new(now: Instant, default_rtt: Duration) -> Self {
        Self {
            rtt_ns: default_rtt.as_nanos() as f64,
            stamp: now,
            failures: 0,
            health: Health::Healthy,
        }
    }

    /// The weight of the current estimate against a sample taken `now`.
    fn weight(&self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        (-elapsed / decay_ns).exp()
    }

    /// The estimate at `now`, decayed toward zero since the last update.
    fn decayed(&mut self, now: Instant, decay_ns: f64) -> f64 {
        self.rtt_ns *= self.weight(now, decay_ns);
        self.stamp = self.stamp.max(now);
        self.rtt_ns
    }

    /// Takes a latency sample: above the estimate it replaces it, below it is averaged in. A
    /// failure counts as a sample [`FAILURE_FACTOR`] times slower than the estimate (at least
    /// [`FAILURE_FLOOR_NS`]): a fast refusal must not make an endpoint look good, and the
    /// retry of a call that failed there should go elsewhere.
    fn observe(&mut self, now: Instant, rtt_ns: f64, decay_ns: f64, failed: bool) {
        if failed {
            self.rtt_ns = self.rtt_ns.max(rtt_ns).max(FAILURE_FLOOR_NS) * FAILURE_FACTOR;
        } else if rtt_ns > self.rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let w = self.weight(now, decay_ns);
            self.rtt_ns = self.rtt_ns * w + rtt_ns * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }
}

impl<S> Endpoint<S> {
    fn build(
        target: &Target,
        policy: &BalancePolicy,
        connect: &Connector<S>,
        stats: Stats,
    ) -> Result<Self, BalanceError> {
        let connections = (0..policy.connections_per_endpoint.max(1))
            .map(|_| connect(target, policy))
            .collect::<Result<Vec<S>, _>>()?;
        Ok(Self {
            target: target.clone(),
            connect_timeout: policy.connect_timeout,
            keepalive: policy.keepalive,
            connections: connections.into_boxed_slice(),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            ejected: AtomicBool::new(stats.health != Health::Healthy),
            stats: Mutex::new(stats),
        })
    }

    fn same_settings(&self, target: &Target, policy: &BalancePolicy) -> bool {
        self.target == *target
            && self.connections.len() == policy.connections_per_endpoint.max(1)
            && self.connect_timeout == policy.connect_timeout
            && self.keepalive == policy.keepalive
    }

    /// The statistics a replacement of this endpoint starts with. A probe under way here
    /// would report to this endpoint, not its successor: the successor probes again.
    fn successor_stats(&self, now: Instant) -> Stats {
        let mut stats = *lock(&self.stats);
        if let Health::Probing { rest } = stats.health {
            stats.health = Health::Ejected { until: now, rest };
        }
        stats
    }

    fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// `ewma_rtt * (pending + 1)`.
    fn cost(&self, now: Instant, decay_ns: f64) -> f64 {
        let rtt = lock(&self.stats).decayed(now, decay_ns);
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        if rtt == 0.0 && pending > 0.0 {
            PENALTY_NS + pending
        } else {
            rtt * (pending + 1.0)
        }
    }
}

impl<S: Clone> Endpoint<S> {
    /// The next connection, round-robin.
    fn connection(&self) -> S {
        let n = self.connections.len();
        let i = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        self.connections[i].clone()
    }
}

// === InFlight ===

/// A call under way on an endpoint: counted as pending until it ends or is dropped.
struct InFlight<S> {
    shared: Arc<Shared<S>>,
    endpoint: Arc<Endpoint<S>>,
    start: Instant,
    probe: bool,
    finished: bool,
}

impl<S> InFlight<S> {
    fn start(
        shared: Arc<Shared<S>>,
        endpoint: Arc<Endpoint<S>>,
        probe: bool,
        start: Instant,
    ) -> Self {
        endpoint.pending.fetch_add(1, Ordering::Relaxed);
        Self {
            shared,
            endpoint,
            start,
            probe,
            finished: false,
        }
    }

    fn finish<E>(mut self, result: &Result<Response<Body>, E>) {
        self.finished = true;
        let outcome = match result {
            Err(_) => Outcome::Transport,
            Ok(response) => match grpc::status_code(response.headers()) {
                Some(code) => Outcome::Code(code),
                None => Outcome::Answer,
            },
        };
        self.shared
            .record(&self.endpoint, self.start, outcome, self.probe);
    }
}

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.finished {
            self.shared.abandon_probe(&self.endpoint);
        }
    }
}

// === ResponseFuture ===

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project_lite::pin_project! {
    /// The answer to one call through a [`Balance`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Call {
            #[pin]
            call: Oneshot<S, Request<B>>,
            guard: Option<InFlight<S>>,
        },
        Refused {
            response: Option<Response<Body>>,
        },
        Waiting {
            wait: BoxFuture<Result<Response<Body>, S::Error>>,
        },
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Output = Result<Response<Body>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Call { call, guard } => {
                let result = ready!(call.poll(cx));
                if let Some(guard) = guard.take() {
                    guard.finish(&result);
                }
                Poll::Ready(result)
            }
            StateProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    grpc::refusal(Status::internal("balance: answer polled twice"))
                })))
            }
            StateProj::Waiting { wait } => wait.as_mut().poll(cx),
        }
    }
}

// === background task ===

/// Resolves host names every `resolve_interval` and applies policy changes, until `stop`
/// (the last [`Balance`] clone) is dropped.
async fn maintain<S>(
    shared: Weak<Shared<S>>,
    mut applied: Arc<BalancePolicy>,
    mut changes: watch::Receiver<Arc<BalancePolicy>>,
    mut stop: oneshot::Receiver<()>,
) where
    S: Send + Sync + 'static,
{
    let mut dns = Dns::default();
    loop {
        let Some(upstream) = shared.upgrade().map(|s| s.upstream.clone()) else {
            return;
        };
        let latest = changes.borrow_and_update().clone();
        if !Arc::ptr_eq(&latest, &applied) {
            // The reloader validates before it sets; should an invalid policy come anyway,
            // the last valid one stays (and its host names are still resolved).
            match latest.validate() {
                Ok(()) => applied = latest,
                Err(error) => tracing::warn!(
                    %upstream,
                    %error,
                    "balance policy not applied; the endpoints stay as they were"
                ),
            }
        }
        let policy = applied.clone();
        // `applied` was validated: this cannot fail.
        let plan = Plan::of(&policy.endpoints).unwrap_or(Plan {
            fixed: Vec::new(),
            hosts: Vec::new(),
        });
        let mut targets = plan.fixed.clone();
        if !plan.hosts.is_empty() {
            tokio::select! {
                _ = &mut stop => return,
                resolved = dns.resolve(&upstream, &plan.hosts) => targets.extend(resolved),
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.rebuild(&targets, &policy, true, plan.host_names());
        drop(shared);
        tokio::select! {
            _ = &mut stop => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(policy.resolve_interval), if !plan.hosts.is_empty() => {}
        }
    }
}

// === metrics ===

struct Metrics {
    healthy: Gauge,
    ejected: Gauge,
    ejections: Counter,
}

impl Metrics {
    fn register(upstream: &str) -> Self {
        static DESCRIBE: Once = Once::new();
        let recorder = crate::metrics::registry().recorder();
        DESCRIBE.call_once(|| {
            recorder.describe_gauge(
                KeyName::from(ENDPOINTS),
                None,
                SharedString::from("Endpoints of an upstream, by state (healthy or ejected)."),
            );
            recorder.describe_counter(
                KeyName::from(EJECTIONS),
                None,
                SharedString::from("Endpoints ejected after consecutive failures."),
            );
        });
        let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
        let upstream = Label::new("upstream", upstream.to_string());
        let gauge = |state: &'static str| {
            let labels = vec![upstream.clone(), Label::from_static_parts("state", state)];
            recorder.register_gauge(&Key::from_parts(ENDPOINTS, labels), &metadata)
        };
        Self {
            healthy: gauge("healthy"),
            ejected: gauge("ejected"),
            ejections: recorder.register_counter(
                &Key::from_parts(EJECTIONS, vec![upstream.clone()]),
                &metadata,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use http::{Request, Response};
    use tokio::sync::Semaphore;
    use tonic::{Code, Status, body::Body};
    use tower::{ServiceExt as _, util::BoxCloneSyncService};

    use super::*;

    /// The error of a fake connection: no answer at all.
    #[derive(Debug)]
    struct NoConnection;

    impl fmt::Display for NoConnection {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection refused")
        }
    }

    impl std::error::Error for NoConnection {}

    type Fake = BoxCloneSyncService<Request<Body>, Response<Body>, NoConnection>;

    /// How a fake endpoint answers.
    #[derive(Clone, Default)]
    struct Behaviour {
        /// Time to answer.
        delay: Duration,
        /// `None`: a normal answer; `Some(None)`: no connection; `Some(Some(code))`: a
        /// trailers-only answer with that code.
        failure: Option<Option<Code>>,
        /// When set, each call waits for a permit first.
        gate: Option<Arc<Semaphore>>,
    }

    /// The fake endpoints: how each answers, and what they saw.
    #[derive(Default)]
    struct World {
        behaviours: Mutex<HashMap<String, Behaviour>>,
        calls: Mutex<HashMap<String, usize>>,
        /// Calls per connection, keyed `endpoint#connection`.
        connection_calls: Mutex<HashMap<String, usize>>,
        connects: Mutex<Vec<String>>,
    }

    impl World {
        fn set(&self, key: &str, behaviour: Behaviour) {
            self.behaviours
                .lock()
                .unwrap()
                .insert(key.to_string(), behaviour);
        }

        fn calls(&self, key: &str) -> usize {
            self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
        }

        fn connects(&self, key: &str) -> usize {
            let connects = self.connects.lock().unwrap();
            connects.iter().filter(|k| *k == key).count()
        }

        async fn serve(&self, key: &str, connection: &str) -> Result<Response<Body>, NoConnection> {
            *self
                .calls
                .lock()
                .unwrap()
                .entry(key.to_string())
                .or_default() += 1;
            *self
                .connection_calls
                .lock()
                .unwrap()
                .entry(connection.to_string())
                .or_default() += 1;
            let behaviour = self
                .behaviours
                .lock()
                .unwrap()
                .get(key)
                .cloned()
                .unwrap_or_default();
            if let Some(gate) = behaviour.gate {
                gate.acquire().await.unwrap().forget();
            }
            tokio::time::sleep(behaviour.delay).await;
            match behaviour.failure {
                None => Ok(Response::new(Body::empty())),
                Some(None) => Err(NoConnection),
                Some(Some(code)) => Ok(grpc::refusal(Status::new(code, "fake failure"))),
            }
        }
    }

    fn connector(world: &Arc<World>) -> Connector<Fake> {
        let world = world.clone();
        Arc::new(move |target: &Target, _policy: &BalancePolicy| {
            let key = target.key.to_string();
            let connection = {
                let mut connects = world.connects.lock().unwrap();
                connects.push(key.clone());
                format!("{key}#{}", connects.iter().filter(|k| **k == key).count())
            };
            let world = world.clone();
            Ok(BoxCloneSyncService::new(tower::service_fn(
                move |_req: Request<Body>| {
                    let (world, key, connection) = (world.clone(), key.clone(), connection.clone());
                    async move { world.serve(&key, &connection).await }
                },
            )))
        })
    }

    fn policy(endpoints: &[&str]) -> BalancePolicy {
        BalancePolicy {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            ..BalancePolicy::default()
        }
    }

    fn balance(upstream: &str, world: &Arc<World>, policy: &Live<BalancePolicy>) -> Balance<Fake> {
        Balance::with_connector(upstream, policy.clone(), connector(world)).unwrap()
    }

    /// One call through a clone of `balance` (the future holds no borrow, so it can be spawned).
    fn call(
        balance: &Balance<Fake>,
    ) -> impl Future<Output = Result<Response<Body>, NoConnection>> + Send + 'static {
        balance.clone().oneshot(Request::new(Body::empty()))
    }

    /// The status of a refusal, if the answer is one.
    fn refusal_of(response: &Response<Body>) -> Option<Status> {
        Status::from_header_map(response.headers())
    }

    /// The code of a refusal, if the answer is one.
    fn refused_code(response: &Response<Body>) -> Option<Code> {
        refusal_of(response).map(|s| s.code())
    }

    fn keys(balance: &Balance<Fake>) -> Vec<String> {
        let set = read(&balance.shared.set);
        set.endpoints
            .iter()
            .map(|e| e.target.key.to_string())
            .collect()
    }

    fn endpoint(balance: &Balance<Fake>, key: &str) -> Arc<Endpoint<Fake>> {
        let set = read(&balance.shared.set);
        let found = set.endpoints.iter().find(|e| &*e.target.key == key);
        found
            .cloned()
            .unwrap_or_else(|| panic!("{key} is not in the set"))
    }

    fn health(balance: &Balance<Fake>, key: &str) -> Health {
        lock(&endpoint(balance, key).stats).health
    }

    /// The value of the series whose line starts with `prefix` (0 when absent).
    fn metric(prefix: &str) -> f64 {
        let text = crate::metrics::registry().render();
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    const A: &str = "http://10.0.0.1:50051";
    const B: &str = "http://10.0.0.2:50051";
    const C: &str = "http://10.0.0.3:50051";

    #[test]
    fn the_channel_balance_is_a_tonic_transport() {
        fn transport<T>()
        where
            T: Service<
                    Request<Body>,
                    Response = Response<Body>,
                    Error = crate::connection::ConnectionError,
                    Future: Send + 'static,
                > + Clone
                + Send
                + Sync
                + 'static,
        {
        }
        transport::<Balance>();
        // What generated clients are built on.
        fn grpc(balance: Balance) -> tonic::client::Grpc<Balance> {
            tonic::client::Grpc::new(balance)
        }
        let _ = grpc;
    }

    #[tokio::test]
    async fn a_channel_balance_answers_unavailable_from_a_closed_port() {
        // A real Channel to a port nobody listens on: a transport error, never a hang.
        let live = Live::new(policy(&["http://127.0.0.1:1"]));
        let balance = Balance::new("closed", live).unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            balance.oneshot(Request::new(Body::empty())),
        )
        .await
        .expect("a call to a closed port must fail fast");
        assert!(answer.is_err(), "no connection is a transport error");
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let err = Balance::new("x", Live::new(policy(&[A]))).unwrap_err();
        assert_eq!(err, BalanceError::NoRuntime);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_sends_most_calls_to_the_faster_endpoint() {
        fastrand::seed(1);
        let world = Arc::new(World::default());
        world.set(
            A,
            Behaviour {
                delay: Duration::from_millis(1),
                ..Default::default()
            },
        );
        world.set(
            B,
            Behaviour {
                delay: Duration::from_millis(20),
                ..Default::default()
            },
        );
        let live = Live::new(policy(&[A, B]));
        let balance = balance("p2c-latency", &world, &live);
        for _ in 0..200 {
            call(&balance).await.unwrap();
        }
        let (fast, slow) = (world.calls(A), world.calls(B));
        assert_eq!(fast + slow, 200);
        assert!(
            fast >= 190,
            "the 1 ms endpoint should get nearly every call, got {fast} (20 ms one: {slow})"
        );
        assert!(slow >= 1, "the slow endpoint was tried at least once");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_avoids_an_endpoint_with_calls_piling_up() {
        fastrand::seed(2);
        // A accepts calls but does not answer; B answers in 1 ms. A call every 1 ms.
        let world = Arc::new(World::default());
        let gate = Arc::new(Semaphore::new(0));
        world.set(
            A,
            Behaviour {
                gate: Some(gate.clone()),
                ..Default::default()
            },
        );
        world.set(
            B,
            Behaviour {
                delay: Duration::from_millis(1),
                ..Default::default()
            },
        );
        let live = Live::new(policy(&[A, B]));
        let balance = balance("p2c-pending", &world, &live);
        let mut calls = Vec::new();
        for _ in 0..50 {
            calls.push(tokio::spawn(call(&balance)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let stuck = world.calls(A);
        assert!(
            stuck <= 5,
            "calls pending on a silent endpoint make it expensive: {stuck} of 50 went there"
        );
        assert_eq!(endpoint(&balance, A).pending.load(Ordering::Relaxed), stuck);
        gate.add_permits(stuck);
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(endpoint(&balance, A).pending.load(Ordering::Relaxed), 0);
        assert_eq!(endpoint(&balance, B).pending.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_fast_failure_the_next_calls_go_to_the_other_endpoint() {
        fastrand::seed(7);
        let world = Arc::new(World::default());
        world.set(
            A,
            Behaviour {
                failure: Some(None),
                ..Default::default()
            },
        );
        let live = Live::new(policy(&[A, B]));
        let balance = balance("fast-failure", &world, &live);
        while world.calls(A) == 0 {
            let _ = call(&balance).await;
        }
        for _ in 0..20 {
            call(&balance).await.expect("B answers");
        }
        assert_eq!(
            world.calls(A),
            1,
            "a refusal in no time does not make A the cheaper choice"
        );
        assert_eq!(
            health(&balance, A),
            Health::Healthy,
            "latency, not ejection, kept calls away"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_an_endpoint_and_traffic_moves_to_the_others() {
        fastrand::seed(3);
        let world = Arc::new(World::default());
        world.set(
            B,
            Behaviour {
                failure: Some(Some(Code::Unavailable)),
                ..Default::default()
            },
        );
        // A and C answer slowly enough that B's failures (each a sample 8x its estimate: 8,
        // 64, 512 ms) leave it the cheaper choice for the first two: ejection, not latency,
        // is what keeps it away after the third.
        let slow = Behaviour {
            delay: Duration::from_millis(200),
            ..Default::default()
        };
        world.set(A, slow.clone());
        world.set(C, slow);
        let mut p = policy(&[A, B, C]);
        p.outlier.consecutive_failures = 3;
        p.outlier.ejection_ms = 60_000;
        p.outlier.max_ejection_ms = 60_000;
        let live = Live::new(p);
        let upstream = "eject-moves";
        let ejections = format!("{EJECTIONS}{{upstream=\"{upstream}\"}}");
        let ejected = format!("{ENDPOINTS}{{upstream=\"{upstream}\",state=\"ejected\"}}");
        let healthy = format!("{ENDPOINTS}{{upstream=\"{upstream}\",state=\"healthy\"}}");
        let balance = balance(upstream, &world, &live);
        assert_eq!(metric(&healthy), 3.0);

        let mut failed = 0;
        for _ in 0..100 {
            let response = call(&balance).await.unwrap();
            if let Some(status) = refusal_of(&response) {
                assert_eq!(status.code(), Code::Unavailable);
                assert_eq!(
                    status.message(),
                    "fake failure",
                    "only B's own answers fail"
                );
                failed += 1;
            }
        }
        assert_eq!(
            world.calls(B),
            3,
            "B is ejected after exactly 3 failures in a row"
        );
        assert_eq!(failed, 3, "callers see B's 3 failures and nothing else");
        assert_eq!(
            world.calls(A) + world.calls(C),
            97,
            "the rest went to A and C"
        );
        assert!(matches!(health(&balance, B), Health::Ejected { .. }));
        assert_eq!(metric(&ejections), 1.0);
        assert_eq!(metric(&ejected), 1.0);
        assert_eq!(metric(&healthy), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_of_failures_in_a_row() {
        fastrand::seed(4);
        let world = Arc::new(World::default());
        let mut p = policy(&[A]);
        p.outlier.consecutive_failures = 3;
        let live = Live::new(p);
        let balance = balance("eject-reset", &world, &live);
        let fail = Behaviour {
            failure: Some(None),
            ..Default::default()
        };
        for round in 0..3 {
            world.set(A, fail.clone());
            assert!(call(&balance).await.is_err());
            assert!(call(&balance).await.is_err());
            // NOT_FOUND is the service's answer, not the endpoint's failure.
            world.set(
                A,
                Behaviour {
                    failure: Some(Some(Code::NotFound)),
                    ..Default::default()
                },
            );
            call(&balance).await.unwrap();
            assert_eq!(
                health(&balance, A),
                Health::Healthy,
                "round {round}: 2 failures, then an answer"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_gets_one_probe_after_its_rest_then_returns_or_rests_twice_as_long()
    {
        fastrand::seed(5);
        let world = Arc::new(World::default());
        let gate = Arc::new(Semaphore::new(0));
        world.set(
            A,
            Behaviour {
                failure: Some(None),
                ..Default::default()
            },
        );
        let mut p = policy(&[A, B]);
        p.outlier.consecutive_failures = 1;
        p.outlier.ejection_ms = 1000;
        p.outlier.max_ejection_ms = 3000;
        let live = Live::new(p);
        let balance = balance("probe", &world, &live);

        // A fails once and is ejected for 1 s.
        while world.calls(A) == 0 {
            let _ = call(&balance).await;
        }
        assert!(
            matches!(health(&balance, A), Health::Ejected { rest, .. } if rest == Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        for _ in 0..20 {
            call(&balance).await.unwrap();
        }
        assert_eq!(world.calls(A), 1, "no call reaches A during its rest");

        // At 1 s, A's probe hangs: of 20 concurrent calls exactly one goes to A.
        world.set(
            A,
            Behaviour {
                failure: Some(None),
                gate: Some(gate.clone()),
                ..Default::default()
            },
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let calls: Vec<_> = (0..20).map(|_| tokio::spawn(call(&balance))).collect();
        tokio::task::yield_now().await;
        assert_eq!(world.calls(A), 2, "exactly one probe while it is under way");
        assert!(matches!(health(&balance, A), Health::Probing { .. }));
        // The probe fails: A rests 2 s.
        gate.add_permits(1);
        let mut failures = 0;
        for call in calls {
            failures += usize::from(call.await.unwrap().is_err());
        }
        assert_eq!(failures, 1, "only the probe failed; the others went to B");
        assert!(
            matches!(health(&balance, A), Health::Ejected { rest, .. } if rest == Duration::from_secs(2)),
            "a failed probe doubles the rest"
        );
        tokio::time::advance(Duration::from_millis(1999)).await;
        call(&balance).await.unwrap();
        assert_eq!(
            world.calls(A),
            2,
            "no probe before the doubled rest is over"
        );

        // The next probe succeeds: A returns and gets calls again.
        world.set(A, Behaviour::default());
        tokio::time::advance(Duration::from_millis(1)).await;
        call(&balance).await.unwrap();
        assert_eq!(
            world.calls(A),
            3,
            "the first call after the rest is the probe"
        );
        assert_eq!(
            health(&balance, A),
            Health::Healthy,
            "a successful probe returns the endpoint"
        );
        for _ in 0..50 {
            call(&balance).await.unwrap();
        }
        assert!(world.calls(A) > 3, "a returned endpoint is chosen again");
    }

    #[tokio::test(start_paused = true)]
    async fn rests_double_up_to_the_maximum_and_a_cancelled_probe_is_retried() {
        let world = Arc::new(World::default());
        world.set(
            A,
            Behaviour {
                failure: Some(None),
                ..Default::default()
            },
        );
        let mut p = policy(&[A]);
        p.outlier.consecutive_failures = 1;
        p.outlier.ejection_ms = 1000;
        p.outlier.max_ejection_ms = 3000;
        let live = Live::new(p);
        let balance = balance("probe-max", &world, &live);
        assert!(call(&balance).await.is_err());
        for expected in [2000, 3000, 3000] {
            let Health::Ejected { rest, .. } = health(&balance, A) else {
                panic!("A is ejected")
            };
            tokio::time::advance(rest).await;
            assert!(call(&balance).await.is_err(), "the probe fails");
            assert!(
                matches!(health(&balance, A), Health::Ejected { rest, .. } if rest == Duration::from_millis(expected)),
                "rest should be {expected} ms"
            );
        }
        // A probe dropped before it answers leaves the endpoint due for another at once.
        world.set(
            A,
            Behaviour {
                delay: Duration::from_secs(10),
                ..Default::default()
            },
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        let probe = tokio::spawn(call(&balance));
        tokio::task::yield_now().await;
        assert!(matches!(health(&balance, A), Health::Probing { .. }));
        probe.abort();
        let _ = probe.await;
        assert!(matches!(health(&balance, A), Health::Ejected { .. }));
        world.set(A, Behaviour::default());
        let response = call(&balance).await.unwrap();
        assert_eq!(
            refused_code(&response),
            None,
            "the next call is the probe, and it succeeds"
        );
        assert_eq!(health(&balance, A), Health::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn all_endpoints_ejected_answer_unavailable_at_once_naming_the_upstream() {
        let world = Arc::new(World::default());
        let fail = Behaviour {
            failure: Some(None),
            ..Default::default()
        };
        world.set(A, fail.clone());
        world.set(B, fail);
        let mut p = policy(&[A, B]);
        p.outlier.consecutive_failures = 1;
        p.outlier.ejection_ms = 5000;
        let live = Live::new(p);
        let balance = balance("orders", &world, &live);
        assert!(call(&balance).await.is_err());
        assert!(
            call(&balance).await.is_err(),
            "the second call goes to the other endpoint"
        );
        assert_eq!((world.calls(A), world.calls(B)), (1, 1));

        tokio::time::advance(Duration::from_millis(1000)).await;
        let started = Instant::now();
        let response = call(&balance).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
        let status = refusal_of(&response).expect("a trailers-only refusal");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "upstream orders: all 2 endpoints ejected after consecutive failures; next probe in 4000 ms"
        );
        assert_eq!(
            (world.calls(A), world.calls(B)),
            (1, 1),
            "no endpoint was called"
        );

        // When the rest is over, the call is a probe.
        tokio::time::advance(Duration::from_millis(4000)).await;
        world.set(A, Behaviour::default());
        world.set(B, Behaviour::default());
        let response = call(&balance).await.unwrap();
        assert_eq!(refused_code(&response), None);
        assert_eq!(world.calls(A) + world.calls(B), 3, "one probe went through");
    }

    #[tokio::test(start_paused = true)]
    async fn the_breakers_probe_tries_a_resting_endpoint_and_brings_it_back() {
        let world = Arc::new(World::default());
        world.set(
            A,
            Behaviour {
                failure: Some(None),
                ..Default::default()
            },
        );
        let mut p = policy(&[A]);
        p.outlier.consecutive_failures = 1;
        p.outlier.ejection_ms = 5000;
        let live = Live::new(p);
        let balance = balance("users", &world, &live);
        assert!(call(&balance).await.is_err(), "ejects A");
        let refused = call(&balance).await.unwrap();
        assert_eq!(refused_code(&refused), Some(Code::Unavailable), "A rests");

        // The upstream is back; the breaker's probe does not wait for the 5 s rest.
        world.set(A, Behaviour::default());
        let mut probe = Request::new(Body::empty());
        probe.extensions_mut().insert(crate::breaker::Probe);
        let response = balance.clone().oneshot(probe).await.unwrap();
        assert_eq!(refused_code(&response), None, "the probe reached A");
        assert_eq!(health(&balance, A), Health::Healthy);
        let response = call(&balance).await.unwrap();
        assert_eq!(refused_code(&response), None, "A takes calls again");
        assert_eq!(world.calls(A), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_set_change_keeps_calls_in_flight_and_the_kept_endpoint_stats() {
        fastrand::seed(6);
        let world = Arc::new(World::default());
        let gate = Arc::new(Semaphore::new(0));
        world.set(
            A,
            Behaviour {
                gate: Some(gate.clone()),
                ..Default::default()
            },
        );
        world.set(
            B,
            Behaviour {
                failure: Some(Some(Code::Unavailable)),
                ..Default::default()
            },
        );
        let live = Live::new(policy(&[A, B]));
        let balance = balance("set-change", &world, &live);

        // One call hangs on A; B has failed twice in a row (of 5 allowed).
        let mut in_flight = Vec::new();
        while world.calls(A) == 0 || world.calls(B) < 2 {
            let started = tokio::spawn(call(&balance));
            tokio::task::yield_now().await;
            if world.calls(B) > 2 {
                panic!("test setup: too many calls reached B");
            }
            in_flight.push(started);
        }
        let b_before = endpoint(&balance, B);
        assert_eq!(lock(&b_before.stats).failures, 2);

        // A is removed, C added.
        live.set(policy(&[B, C]));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(keys(&balance), [B, C]);
        let b_after = endpoint(&balance, B);
        assert!(
            Arc::ptr_eq(&b_before, &b_after),
            "B keeps its channels and statistics"
        );
        assert_eq!(lock(&b_after.stats).failures, 2);
        assert_eq!((world.connects(B), world.connects(C)), (1, 1));

        // The call on A still completes, on the channel it holds.
        gate.add_permits(world.calls(A));
        for call in in_flight {
            call.await.unwrap().unwrap();
        }
        world.set(B, Behaviour::default());
        let a_calls = world.calls(A);
        for _ in 0..20 {
            call(&balance).await.unwrap();
        }
        assert_eq!(
            world.calls(A),
            a_calls,
            "no new call goes to a removed endpoint"
        );
        assert!(world.calls(C) > 0, "the added endpoint gets calls");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_settings_change_makes_new_channels_but_keeps_the_stats() {
        let world = Arc::new(World::default());
        world.set(
            A,
            Behaviour {
                failure: Some(None),
                ..Default::default()
            },
        );
        let mut p = policy(&[A]);
        p.outlier.consecutive_failures = 1;
        let live = Live::new(p.clone());
        let balance = balance("settings-change", &world, &live);
        assert!(call(&balance).await.is_err());
        p.connections_per_endpoint = 2;
        live.set(p);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(world.connects(A), 3, "one connection, then two new ones");
        assert!(
            matches!(health(&balance, A), Health::Ejected { .. }),
            "the new channels inherit the ejection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_policy_change_keeps_the_endpoints() {
        let world = Arc::new(World::default());
        let live = Live::new(policy(&[A, B]));
        let balance = balance("invalid-change", &world, &live);
        live.set(policy(&["ftp://nowhere", C]));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(keys(&balance), [A, B], "the last valid endpoints stay");
        live.set(policy(&[C]));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(keys(&balance), [C], "a valid change after it applies");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_rotate_over_the_connections_of_an_endpoint() {
        let world = Arc::new(World::default());
        let mut p = policy(&[A]);
        p.connections_per_endpoint = 3;
        let live = Live::new(p);
        let balance = balance("connections", &world, &live);
        for _ in 0..6 {
            call(&balance).await.unwrap();
        }
        let per_connection = world.connection_calls.lock().unwrap().clone();
        for i in 1..=3 {
            assert_eq!(
                per_connection.get(&format!("{A}#{i}")),
                Some(&2),
                "{per_connection:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_host_name_resolves_to_endpoints_and_early_calls_wait_for_it() {
        let world = Arc::new(World::default());
        let live = Live::new(policy(&["http://localhost:50999"]));
        let balance = balance("resolve", &world, &live);
        // Made before the first resolution: it waits, then is answered.
        let response = tokio::time::timeout(Duration::from_secs(5), call(&balance))
            .await
            .expect("localhost resolves within 5 s")
            .unwrap();
        assert_eq!(refused_code(&response), None);
        let keys = keys(&balance);
        assert!(!keys.is_empty(), "localhost yields at least one endpoint");
        for key in &keys {
            assert!(
                key == "http://127.0.0.1:50999" || key == "http://[::1]:50999",
                "unexpected endpoint {key}"
            );
            let target = endpoint(&balance, key).target.clone();
            assert_eq!(
                target.origin.map(|o| o.to_string()),
                Some("http://localhost:50999/".to_string()),
                "calls keep the host name as their authority"
            );
        }
        let calls: usize = keys.iter().map(|k| world.calls(k)).sum();
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn a_host_name_that_resolves_to_nothing_is_refused_naming_it() {
        let world = Arc::new(World::default());
        let live = Live::new(policy(&["http://no-such-host.invalid:50051"]));
        let balance = balance("unresolved", &world, &live);
        let response = tokio::time::timeout(Duration::from_secs(10), call(&balance))
            .await
            .expect("a failed lookup ends within its timeout")
            .unwrap();
        let status = refusal_of(&response).expect("a refusal");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "upstream unresolved: no endpoints resolved for no-such-host.invalid:50051"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_task_lets_go_when_the_last_clone_is_dropped() {
        let world = Arc::new(World::default());
        let live = Live::new(policy(&[A]));
        let balance = balance("dropped", &world, &live);
        let clone = balance.clone();
        drop(balance);
        tokio::task::yield_now().await;
        assert!(
            Arc::strong_count(&world) > 1,
            "a clone still holds the endpoints"
        );
        drop(clone);
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            Arc::strong_count(&world),
            1,
            "nothing holds the connections any more"
        );
        // A change after that finds nobody listening and panics nothing.
        live.set(policy(&[B]));
        tokio::task::yield_now().await;
    }

    #[test]
    fn outlier_policy_defaults_and_validation() {
        let policy: OutlierPolicy = toml::from_str("").unwrap();
        assert_eq!(policy, OutlierPolicy::default());
        assert_eq!(policy.consecutive_failures, 5);
        assert_eq!(policy.ejection(), Duration::from_secs(1));
        assert_eq!(policy.max_ejection(), Duration::from_secs(30));
        assert!(policy.is_failure(Code::Unavailable));
        assert!(!policy.is_failure(Code::NotFound));
        assert_eq!(policy.validate(), Ok(()));
        assert!(
            toml::from_str::<OutlierPolicy>("nope = 1").is_err(),
            "unknown keys are refused"
        );

        let bad = |edit: fn(&mut OutlierPolicy)| {
            let mut policy = OutlierPolicy::default();
            edit(&mut policy);
            policy.validate().unwrap_err()
        };
        assert_eq!(
            bad(|p| p.consecutive_failures = 0).0,
            "consecutive_failures"
        );
        assert_eq!(bad(|p| p.ejection_ms = 0).0, "ejection_ms");
        assert_eq!(bad(|p| p.max_ejection_ms = 10).0, "max_ejection_ms");
        let (key, reason) = bad(|p| p.failure_codes = vec!["UNAVAILABLE".into(), "BROKEN".into()]);
        assert_eq!(key, "failure_codes[1]");
        assert!(
            reason.contains("`BROKEN`") && reason.contains("DEADLINE_EXCEEDED"),
            "{reason}"
        );
        let policy: OutlierPolicy =
            toml::from_str(r#"failure_codes = ["unavailable", "INTERNAL"]"#).unwrap();
        assert_eq!(policy.validate(), Ok(()));
        assert!(policy.is_failure(Code::Internal) && policy.is_failure(Code::Unavailable));
    }

    #[test]
    fn balance_policy_validation_names_the_bad_endpoint() {
        let endpoint_error = |endpoint: &str| match policy(&[A, endpoint]).validate() {
            Err(BalanceError::Endpoint(EndpointError { endpoint, reason })) => {
                format!("{endpoint}: {reason}")
            }
            other => panic!("{endpoint} should be refused, got {other:?}"),
        };
        assert!(endpoint_error("ftp://x:1").starts_with("ftp://x:1: must start with http"));
        assert!(endpoint_error("http://x:1/api").contains("without a path"));
        assert!(endpoint_error("not a uri").starts_with("not a uri: not a URI"));
        assert!(endpoint_error("x:1").starts_with("x:1: must start with http"));
        assert_eq!(
            policy(&[A, "http://[::1]:80", "https://user.svc"]).validate(),
            Ok(())
        );
        assert!(matches!(
            policy(&[]).validate(),
            Err(BalanceError::Policy { key, .. }) if key == "endpoints"
        ));
        let mut p = policy(&[A]);
        p.outlier.ejection_ms = 0;
        assert!(matches!(
            p.validate(),
            Err(BalanceError::Policy { key, .. }) if key == "outlier.ejection_ms"
        ));
        let message = policy(&["ftp://x"]).validate().unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid upstream endpoint `ftp://x`: must start with http:// or https://"
        );
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let now = Instant::now();
        let decay = Duration::from_secs(10).as_nanos() as f64;
        let mut stats = Stats::new(now, Duration::from_millis(1));
        stats.observe(now, 50e6, decay, false);
        assert_eq!(
            stats.rtt_ns, 50e6,
            "a slower sample replaces the estimate at once"
        );
        let later = now + Duration::from_secs(10);
        stats.observe(later, 1e6, decay, false);
        let expected = 50e6 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp());
        assert!(
            (stats.rtt_ns - expected).abs() < 1.0,
            "a faster one is averaged in"
        );
        let before = stats.rtt_ns;
        stats.observe(later + Duration::from_secs(10), 0.0, decay, true);
        assert_eq!(
            stats.rtt_ns,
            before * FAILURE_FACTOR,
            "a fast failure makes it look slower, not faster"
        );
        let failed = stats.rtt_ns;
        let decayed = stats.decayed(later + Duration::from_secs(20), decay);
        assert!(
            decayed < failed * 0.37,
            "time alone brings it down: {decayed}"
        );
        let mut idle = Stats::new(now, Duration::ZERO);
        idle.observe(now, 1e3, decay, true);
        assert_eq!(
            idle.rtt_ns,
            FAILURE_FLOOR_NS * FAILURE_FACTOR,
            "a failure of an endpoint with no estimate costs at least the floor"
        );
    }
}
