//! Rate limiting at the edge: token buckets per client and route.
//!
//! Shedding ([`crate::shed`]) protects a process from too much work in total; it cannot tell a
//! credential-stuffing script from a crowd of honest users. A rate limit can: each client gets
//! its own bucket per rule, so one client sending too fast is refused (429 at the gateway)
//! while every other client goes on unaffected.
//!
//! The buckets are GCRA cells ([`governor`]'s keyed limiters, one per rule): a rule allows a
//! burst of `burst` requests, refilled at `per_second`. The client key is the verified token's
//! subject when the request carries one (rules with `key = "client"`), else the client's IP:
//! the TCP peer, or, when the peer is one of `trusted_proxies`, the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy (an address further left could have
//! been written by the client and proves nothing). An IPv6 client is keyed by its /64: a
//! single subscriber or host is commonly given a whole /64, and could take a fresh bucket
//! for each request by rotating the low bits of its address.
//!
//! The shipped mesh-configs limit the public routes that cost a database write
//! (`POST /v1/auth/register`, `/login`, `/refresh`, `/logout`): one bucket per client of 20
//! requests refilled 1 per second; the built-in default limits nothing.
//!
//! ```ignore
//! let policy = Live::new(config.gateway.rate_limit.clone());
//! let limiter = RateLimiter::new(policy.clone());
//! match limiter.check("POST /v1/auth/login", peer.ip(), req.headers(), None) {
//!     decision @ Decision::Denied { .. } => { /* 429 with decision.headers() */ }
//!     decision => { /* serve, then add decision.headers() to the answer */ }
//! }
//! ```
//!
//! Reload: the limiter reads its [`Live`] policy on every check. When the value changes, rules
//! that changed in any way get new, empty buckets (clients start afresh under them); rules
//! left exactly as they were keep their buckets. Memory: a bucket that has refilled is
//! indistinguishable from a new one, so [`RateLimiter::upkeep`] (the gateway calls it every
//! 5 s) drops such keys.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DashMapStateStore,
};
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::live::Live;

/// `RateLimit-Limit`: the requests a client may send in a burst (IETF draft
/// httpapi-ratelimit-headers).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: the requests the client may still send at once.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: seconds until the client's bucket is full again (on a refusal: until it
/// may send again).
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

pub use crate::policy::ANY_ROUTE;
use crate::policy::Cidr;

pub use crate::policy::{RateLimitKey, RateLimitPolicy, RateLimitRule};

// === Decision ===

/// The answer of [`RateLimiter::check`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No rule covers the route.
    Unlimited,
    /// Allowed; the figures of the matching rule with the fewest requests left.
    Allowed {
        /// The rule's burst.
        limit: u32,
        /// Requests the client may still send at once.
        remaining: u32,
        /// Time until the client's bucket is full again (at most one refill period late).
        reset: Duration,
    },
    /// Refused; the figures of the matching rule that makes the client wait longest.
    Denied {
        /// That rule's name.
        rule: String,
        /// That rule's burst.
        limit: u32,
        /// Time until the client may send again.
        wait: Duration,
    },
}

// === impl Decision ===

impl Decision {
    /// Whether the request must be refused.
    pub fn is_denied(&self) -> bool {
        matches!(self, Decision::Denied { .. })
    }

    /// The `Retry-After` of a refusal, in whole seconds (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Decision::Denied { wait, .. } => Some(whole_seconds(*wait)),
            _ => None,
        }
    }

    /// The headers of the answer: `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` on a limited route, and `Retry-After` on a refusal.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Decision::Unlimited => Vec::new(),
            Decision::Allowed {
                limit,
                remaining,
                reset,
            } => vec![
                (RATELIMIT_LIMIT, HeaderValue::from(*limit)),
                (RATELIMIT_REMAINING, HeaderValue::from(*remaining)),
                (RATELIMIT_RESET, HeaderValue::from(whole_seconds(*reset))),
            ],
            Decision::Denied { limit, wait, .. } => {
                let seconds = HeaderValue::from(whole_seconds(*wait));
                vec![
                    (header::RETRY_AFTER, seconds.clone()),
                    (RATELIMIT_LIMIT, HeaderValue::from(*limit)),
                    (RATELIMIT_REMAINING, HeaderValue::from_static("0")),
                    (RATELIMIT_RESET, seconds),
                ]
            }
        }
    }

    /// What a refused client is told: `rate limit exceeded for POST /v1/auth/login: try again
    /// in 3 s`. None unless denied.
    pub fn message(&self, route: &str) -> Option<String> {
        let seconds = self.retry_after_secs()?;
        Some(format!(
            "rate limit exceeded for {route}: try again in {seconds} s"
        ))
    }
}

/// `wait` in whole seconds, rounded up, at least 1 (a `Retry-After: 0` invites a retry storm).
pub fn whole_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

// === RateLimiter ===

/// The gateway's rate limiter: one keyed GCRA limiter per rule of a live [`RateLimitPolicy`].
///
/// Checks are synchronous and take no lock for longer than a map lookup; it is `Send + Sync`
/// and shared by every request.
pub struct RateLimiter<C: Clock = DefaultClock> {
    policy: Live<RateLimitPolicy>,
    clock: C,
    built: RwLock<Arc<Built<C>>>,
}

/// What a client is known by in a rule's buckets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Subject(Box<str>),
    Ip(IpAddr),
}

type Keyed<C> =
    governor::RateLimiter<ClientKey, DashMapStateStore<ClientKey>, C, StateInformationMiddleware>;

/// The limiters of one policy value.
struct Built<C: Clock> {
    /// The value they were built from.
    source: Arc<RateLimitPolicy>,
    trusted: Vec<Cidr>,
    rules: Vec<Arc<BuiltRule<C>>>,
    /// Rules by route name (`*` rules are in every entry and in `any`).
    by_route: HashMap<String, Vec<usize>>,
    /// Rules naming every route.
    any: Vec<usize>,
}

struct BuiltRule<C: Clock> {
    rule: RateLimitRule,
    limiter: Keyed<C>,
    period: Duration,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// A limiter following `policy`, on the monotonic clock.
    pub fn new(policy: Live<RateLimitPolicy>) -> Self {
        Self::with_clock(policy, DefaultClock::default())
    }
}

impl<C> RateLimiter<C>
where
    C: Clock + Clone,
{
    /// A limiter following `policy` on `clock` (tests use governor's `FakeRelativeClock`).
    pub fn with_clock(policy: Live<RateLimitPolicy>, clock: C) -> Self {
        let source = policy.get();
        let built = Built::build(source, None, &clock);
        Self {
            policy,
            clock,
            built: RwLock::new(Arc::new(built)),
        }
    }

    /// Counts one request of `route` (`"POST /v1/auth/login"`) from the client known by
    /// `subject` (a verified token's subject, if any) and its IP (`peer`, or from `headers`'
    /// `X-Forwarded-For` when `peer` is a trusted proxy) against every rule naming the route.
    ///
    /// A request takes a token from each matching rule that allows it, even when another rule
    /// refuses it.
    pub fn check(
        &self,
        route: &str,
        peer: IpAddr,
        headers: &HeaderMap,
        subject: Option<&str>,
    ) -> Decision {
        let built = self.current();
        let rules = built.by_route.get(route).unwrap_or(&built.any);
        if rules.is_empty() {
            return Decision::Unlimited;
        }
        let ip = client_ip(&built.trusted, peer, headers);
        let mut allowed: Option<(u32, u32, Duration)> = None;
        let mut denied: Option<(&BuiltRule<C>, Duration)> = None;
        for &i in rules {
            let Some(rule) = built.rules.get(i) else {
                continue;
            };
            let key = match (rule.rule.key, subject) {
                (RateLimitKey::Client, Some(subject)) => ClientKey::Subject(subject.into()),
                _ => ClientKey::Ip(network_of(ip)),
            };
            let limit = rule.rule.burst;
            match rule.limiter.check_key(&key) {
                Ok(state) => {
                    let remaining = state.remaining_burst_capacity();
                    let used = limit.saturating_sub(remaining);
                    let reset = rule.period.saturating_mul(used);
                    if allowed.is_none_or(|(_, left, _)| remaining < left) {
                        allowed = Some((limit, remaining, reset));
                    }
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if denied.is_none_or(|(_, longest)| wait > longest) {
                        denied = Some((rule, wait));
                    }
                }
            }
        }
        match (denied, allowed) {
            (Some((rule, wait)), _) => Decision::Denied {
                rule: rule.rule.name.clone(),
                limit: rule.rule.burst,
                wait,
            },
            (None, Some((limit, remaining, reset))) => Decision::Allowed {
                limit,
                remaining,
                reset,
            },
            (None, None) => Decision::Unlimited,
        }
    }

    /// The client IP of a request from `peer`, as the current policy's trusted proxies say.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(&self.current().trusted, peer, headers)
    }

    /// Drops the buckets that have refilled (they equal new ones) and frees their memory. Call
    /// it every few seconds.
    pub fn upkeep(&self) {
        for rule in &self.current().rules {
            rule.limiter.retain_recent();
            rule.limiter.shrink_to_fit();
        }
    }

    /// Clients with a bucket, over every rule (buckets that refilled are counted until the next
    /// [`RateLimiter::upkeep`]).
    pub fn tracked_clients(&self) -> usize {
        self.current().rules.iter().map(|r| r.limiter.len()).sum()
    }

    /// The limiters of the current policy value, rebuilt if it changed since the last check.
    fn current(&self) -> Arc<Built<C>> {
        let policy = self.policy.get();
        {
            let built = self.built.read().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&built.source, &policy) {
                return built.clone();
            }
        }
        let mut built = self.built.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&built.source, &policy) {
            *built = Arc::new(Built::build(policy, Some(&built), &self.clock));
        }
        built.clone()
    }
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policy", &self.policy.get())
            .finish_non_exhaustive()
    }
}

// === impl Built ===

impl<C: Clock + Clone> Built<C> {
    /// Limiters for `source`, reusing those of `previous` whose rule did not change.
    fn build(source: Arc<RateLimitPolicy>, previous: Option<&Built<C>>, clock: &C) -> Self {
        let trusted = source
            .trusted_proxies
            .iter()
            .filter_map(|proxy| match Cidr::parse(proxy) {
                Ok(cidr) => Some(cidr),
                Err(reason) => {
                    tracing::warn!(proxy, reason, "trusted proxy ignored");
                    None
                }
            })
            .collect();
        let mut rules = Vec::new();
        let mut kept = 0;
        for rule in &source.rules {
            let reused = previous.and_then(|p| p.rules.iter().find(|b| b.rule == *rule));
            if let Some(built) = reused {
                kept += 1;
                rules.push(built.clone());
                continue;
            }
            match rule.quota() {
                Some(quota) => rules.push(Arc::new(BuiltRule {
                    rule: rule.clone(),
                    limiter: governor::RateLimiter::dashmap_with_clock(quota, clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                    period: quota.replenish_interval(),
                })),
                None => tracing::warn!(
                    rule = rule.name,
                    "rate limit rule ignored: burst or per_second out of range"
                ),
            }
        }
        let mut by_route: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any = Vec::new();
        for (i, built) in rules.iter().enumerate() {
            for route in &built.rule.routes {
                if route == ANY_ROUTE {
                    any.push(i);
                } else {
                    by_route.entry(route.clone()).or_default().push(i);
                }
            }
        }
        for entry in by_route.values_mut() {
            entry.extend(any.iter().copied());
            entry.sort_unstable();
            entry.dedup();
        }
        if previous.is_some() {
            tracing::debug!(
                rules = rules.len(),
                kept,
                "rate limit policy changed: changed rules start with full buckets"
            );
        }
        Self {
            source,
            trusted,
            rules,
            by_route,
            any,
        }
    }
}

// === client IP ===

/// The client's IP: `peer`, unless it is a trusted proxy; then the right-most address of
/// `X-Forwarded-For` that is not a trusted proxy (the left-most one when all are; the last
/// trusted hop when an entry is not an address).
fn client_ip(trusted: &[Cidr], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for entry in line.rsplit(',') {
            match parse_forwarded(entry.trim()) {
                Some(ip) => {
                    client = ip.to_canonical();
                    if !is_trusted(client) {
                        return client;
                    }
                }
                None => return client,
            }
        }
    }
    client
}

/// The address a client's buckets are keyed by: an IPv4 address as is, an IPv6 address as
/// its /64 network (the low 64 bits cleared), the least a subscriber is usually given.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, or either with a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const LOGIN: &str = "POST /v1/auth/login";
    const REGISTER: &str = "POST /v1/auth/register";
    const REFRESH: &str = "POST /v1/auth/refresh";
    const LOGOUT: &str = "POST /v1/auth/logout";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn rule(name: &str, routes: &[&str], burst: u32, per_second: f64) -> RateLimitRule {
        RateLimitRule {
            name: name.into(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
            key: RateLimitKey::Client,
            burst,
            per_second,
        }
    }

    fn limiter(policy: RateLimitPolicy) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            RateLimiter::with_clock(Live::new(policy), clock.clone()),
            clock,
        )
    }

    fn no_headers() -> HeaderMap {
        HeaderMap::new()
    }

    /// The rule the shipped mesh-configs set on the credential routes.
    fn credentials() -> RateLimitPolicy {
        RateLimitPolicy {
            rules: vec![rule(
                "credentials",
                &[REGISTER, LOGIN, REFRESH, LOGOUT],
                20,
                1.0,
            )],
            ..Default::default()
        }
    }

    #[test]
    fn the_default_limits_nothing_and_the_shipped_rule_is_valid() {
        let policy = RateLimitPolicy::default();
        assert!(policy.rules.is_empty() && policy.trusted_proxies.is_empty());
        credentials().validate().unwrap();
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_the_time_to_wait() {
        let (limiter, clock) = limiter(credentials());
        let client = ip("203.0.113.7");
        // Register and login share the bucket: 20 requests in all.
        for n in 0..20u32 {
            let route = if n % 2 == 0 { LOGIN } else { REGISTER };
            let decision = limiter.check(route, client, &no_headers(), None);
            match decision {
                Decision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!(limit, 20);
                    assert_eq!(remaining, 19 - n, "request {n}");
                }
                other => panic!("request {n} of a burst of 20 was refused: {other:?}"),
            }
        }
        let refused = limiter.check(LOGIN, client, &no_headers(), None);
        assert!(refused.is_denied(), "the 21st request must be refused");
        assert_eq!(refused.retry_after_secs(), Some(1), "one token per second");
        assert_eq!(
            refused.message(LOGIN).unwrap(),
            "rate limit exceeded for POST /v1/auth/login: try again in 1 s"
        );
        let headers = refused.headers();
        let get = |name: &HeaderName| headers.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(get(&header::RETRY_AFTER), "1");
        assert_eq!(get(&RATELIMIT_LIMIT), "20");
        assert_eq!(get(&RATELIMIT_REMAINING), "0");
        assert_eq!(get(&RATELIMIT_RESET), "1");

        // Part of the way: still refused, and told the rest of the wait (rounded up).
        clock.advance(Duration::from_millis(400));
        match limiter.check(LOGIN, client, &no_headers(), None) {
            Decision::Denied { wait, .. } => assert_eq!(wait, Duration::from_millis(600)),
            other => panic!("refused until the token is back: {other:?}"),
        }
        // A token is back after a second.
        clock.advance(Duration::from_millis(600));
        assert!(matches!(
            limiter.check(LOGIN, client, &no_headers(), None),
            Decision::Allowed { remaining: 0, .. }
        ));
    }

    #[test]
    fn the_wait_is_in_whole_seconds_rounded_up() {
        let policy = RateLimitPolicy {
            rules: vec![rule("slow", &[LOGIN], 1, 0.4)],
            ..Default::default()
        };
        let (limiter, clock) = limiter(policy);
        let client = ip("203.0.113.7");
        assert!(
            !limiter
                .check(LOGIN, client, &no_headers(), None)
                .is_denied()
        );
        clock.advance(Duration::from_millis(10));
        let refused = limiter.check(LOGIN, client, &no_headers(), None);
        // 2.5 s per token, 10 ms spent: 2.49 s -> 3.
        assert_eq!(refused.retry_after_secs(), Some(3));
        assert_eq!(
            refused.message(LOGIN).unwrap(),
            "rate limit exceeded for POST /v1/auth/login: try again in 3 s"
        );
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
    }

    #[test]
    fn another_client_and_other_routes_are_unaffected() {
        let policy = RateLimitPolicy {
            rules: vec![rule("tight", &[LOGIN], 2, 0.001)],
            ..Default::default()
        };
        let (limiter, _clock) = limiter(policy);
        let (greedy, other) = (ip("203.0.113.7"), ip("198.51.100.1"));
        for _ in 0..2 {
            limiter.check(LOGIN, greedy, &no_headers(), None);
        }
        assert!(
            limiter
                .check(LOGIN, greedy, &no_headers(), None)
                .is_denied()
        );
        assert!(
            !limiter.check(LOGIN, other, &no_headers(), None).is_denied(),
            "another client has its own bucket"
        );
        assert_eq!(
            limiter.check("GET /v1/products", greedy, &no_headers(), None),
            Decision::Unlimited,
            "a route no rule names is not limited"
        );
    }

    #[test]
    fn an_ipv6_client_is_keyed_by_its_64_so_rotating_addresses_gains_nothing() {
        let policy = RateLimitPolicy {
            rules: vec![rule("tight", &[LOGIN], 2, 0.001)],
            ..Default::default()
        };
        let (direct, _clock) = limiter(policy);
        let rotating = ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe"];
        for address in rotating {
            assert!(
                !direct
                    .check(LOGIN, ip(address), &no_headers(), None)
                    .is_denied()
            );
        }
        assert!(
            direct
                .check(LOGIN, ip("2001:db8:1:2:abcd::9"), &no_headers(), None)
                .is_denied(),
            "a third address of the same /64 finds the bucket empty"
        );
        assert!(
            !direct
                .check(LOGIN, ip("2001:db8:1:3::1"), &no_headers(), None)
                .is_denied(),
            "the next /64 is another client"
        );
        // Behind a trusted proxy, the forwarded address is keyed the same way.
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "2001:db8:1:2::77".parse().unwrap());
        let trusting = RateLimitPolicy {
            trusted_proxies: vec!["10.0.0.1".into()],
            ..credentials()
        };
        let (proxied, _clock) = limiter(RateLimitPolicy {
            rules: vec![rule("tight", &[LOGIN], 1, 0.001)],
            ..trusting
        });
        assert!(
            !proxied
                .check(LOGIN, ip("10.0.0.1"), &headers, None)
                .is_denied()
        );
        headers.insert("x-forwarded-for", "2001:db8:1:2::78".parse().unwrap());
        assert!(
            proxied
                .check(LOGIN, ip("10.0.0.1"), &headers, None)
                .is_denied()
        );
        assert_eq!(
            proxied.client_ip(ip("10.0.0.1"), &headers),
            ip("2001:db8:1:2::78"),
            "the client IP itself stays whole (for logs)"
        );
    }

    #[test]
    fn a_signed_in_client_is_keyed_by_subject_unless_the_rule_says_ip() {
        let mut by_ip = rule("by-ip", &["GET /v1/me"], 1, 0.001);
        by_ip.key = RateLimitKey::Ip;
        let policy = RateLimitPolicy {
            rules: vec![rule("by-client", &["GET /v1/orders"], 1, 0.001), by_ip],
            ..Default::default()
        };
        let (limiter, _clock) = limiter(policy);
        let shared_nat = ip("192.0.2.1");
        let orders = "GET /v1/orders";
        assert!(
            !limiter
                .check(orders, shared_nat, &no_headers(), Some("alice"))
                .is_denied()
        );
        assert!(
            !limiter
                .check(orders, shared_nat, &no_headers(), Some("bob"))
                .is_denied(),
            "two users behind one address have their own buckets"
        );
        assert!(
            limiter
                .check(orders, shared_nat, &no_headers(), Some("alice"))
                .is_denied()
        );
        assert!(
            !limiter
                .check("GET /v1/me", shared_nat, &no_headers(), Some("alice"))
                .is_denied()
        );
        assert!(
            limiter
                .check("GET /v1/me", shared_nat, &no_headers(), Some("bob"))
                .is_denied(),
            "a key = \"ip\" rule shares the address's bucket"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_right_most_untrusted_first() {
        let policy = RateLimitPolicy {
            trusted_proxies: vec!["10.0.0.0/8".into(), "2001:db8::1".into()],
            rules: vec![rule("tight", &[LOGIN], 1, 0.001)],
        };
        let (limiter, _clock) = limiter(policy);
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.9"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
        // From a trusted proxy: skip trusted hops from the right, stop at the first other.
        assert_eq!(
            limiter.client_ip(ip("10.0.0.1"), &headers),
            ip("198.51.100.9"),
            "the left-most entry could be forged by the client"
        );
        assert_eq!(
            limiter.client_ip(ip("2001:db8::1"), &headers),
            ip("198.51.100.9")
        );
        // An IPv4 peer on a dual-stack socket is trusted alike.
        assert_eq!(
            limiter.client_ip(ip("::ffff:10.0.0.1"), &headers),
            ip("198.51.100.9")
        );
        // From anyone else the header is ignored.
        assert_eq!(
            limiter.client_ip(ip("203.0.113.5"), &headers),
            ip("203.0.113.5")
        );
        // Garbage stops the walk at the last trusted hop; ports are tolerated.
        let mut odd = HeaderMap::new();
        odd.insert(
            "x-forwarded-for",
            HeaderValue::from_static("unknown, 10.9.9.9"),
        );
        assert_eq!(limiter.client_ip(ip("10.0.0.1"), &odd), ip("10.9.9.9"));
        odd.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::7]:443, 198.51.100.2:5555"),
        );
        assert_eq!(limiter.client_ip(ip("10.0.0.1"), &odd), ip("198.51.100.2"));

        // The bucket follows the forwarded client, not the proxy.
        assert!(
            !limiter
                .check(LOGIN, ip("10.0.0.1"), &headers, None)
                .is_denied()
        );
        assert!(
            limiter
                .check(LOGIN, ip("10.0.0.2"), &headers, None)
                .is_denied(),
            "same client through another proxy: same bucket"
        );
        let mut other = HeaderMap::new();
        other.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.10"));
        assert!(
            !limiter
                .check(LOGIN, ip("10.0.0.1"), &other, None)
                .is_denied()
        );
    }

    #[test]
    fn a_rule_for_every_route_applies_with_the_specific_ones() {
        let policy = RateLimitPolicy {
            rules: vec![
                rule("everything", &["*"], 3, 0.001),
                rule("login", &[LOGIN], 10, 0.001),
            ],
            ..Default::default()
        };
        let (limiter, _clock) = limiter(policy);
        let client = ip("203.0.113.7");
        assert!(matches!(
            limiter.check("GET /v1/products", client, &no_headers(), None),
            Decision::Allowed {
                limit: 3,
                remaining: 2,
                ..
            }
        ));
        // Both rules count a login; the figures are the tighter rule's.
        assert!(matches!(
            limiter.check(LOGIN, client, &no_headers(), None),
            Decision::Allowed {
                limit: 3,
                remaining: 1,
                ..
            }
        ));
        assert!(
            !limiter
                .check("GET /v1/whatever", client, &no_headers(), None)
                .is_denied()
        );
        match limiter.check(LOGIN, client, &no_headers(), None) {
            Decision::Denied { rule, limit, .. } => {
                assert_eq!((rule.as_str(), limit), ("everything", 3))
            }
            other => panic!("the * rule is exhausted: {other:?}"),
        }
    }

    #[test]
    fn a_policy_change_rebuilds_the_changed_rules_and_keeps_the_others() {
        let policy = Live::new(RateLimitPolicy {
            rules: vec![
                rule("login", &[LOGIN], 1, 0.001),
                rule("register", &[REGISTER], 1, 0.001),
            ],
            ..Default::default()
        });
        let limiter = RateLimiter::with_clock(policy.clone(), FakeRelativeClock::default());
        let client = ip("203.0.113.7");
        for route in [LOGIN, REGISTER] {
            limiter.check(route, client, &no_headers(), None);
            assert!(
                limiter
                    .check(route, client, &no_headers(), None)
                    .is_denied()
            );
        }
        // Raise the login burst; leave register alone.
        policy.set(RateLimitPolicy {
            rules: vec![
                rule("login", &[LOGIN], 5, 0.001),
                rule("register", &[REGISTER], 1, 0.001),
            ],
            ..Default::default()
        });
        assert!(
            matches!(
                limiter.check(LOGIN, client, &no_headers(), None),
                Decision::Allowed {
                    limit: 5,
                    remaining: 4,
                    ..
                }
            ),
            "the changed rule starts with a full bucket of the new size"
        );
        assert!(
            limiter
                .check(REGISTER, client, &no_headers(), None)
                .is_denied(),
            "an unchanged rule keeps its buckets"
        );
        // Removing every rule lifts the limits.
        policy.set(RateLimitPolicy {
            rules: Vec::new(),
            ..Default::default()
        });
        assert_eq!(
            limiter.check(REGISTER, client, &no_headers(), None),
            Decision::Unlimited
        );
    }

    #[test]
    fn upkeep_drops_clients_whose_bucket_refilled() {
        let (limiter, clock) = limiter(credentials());
        for n in 0..100u8 {
            limiter.check(LOGIN, IpAddr::from([198, 51, 100, n]), &no_headers(), None);
        }
        assert_eq!(limiter.tracked_clients(), 100);
        limiter.upkeep();
        assert_eq!(limiter.tracked_clients(), 100, "recent clients are kept");
        clock.advance(Duration::from_secs(3));
        limiter.upkeep();
        assert_eq!(limiter.tracked_clients(), 0, "refilled buckets are dropped");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let check = |policy: RateLimitPolicy| policy.validate().unwrap_err().0;
        let with_rule = |rule: RateLimitRule| RateLimitPolicy {
            rules: vec![credentials().rules[0].clone(), rule],
            ..Default::default()
        };
        assert_eq!(
            check(with_rule(rule("r", &[LOGIN], 0, 1.0))),
            "rules[1].burst"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert_eq!(
                check(with_rule(rule("r", &[LOGIN], 1, bad))),
                "rules[1].per_second",
                "{bad}"
            );
        }
        assert_eq!(
            check(with_rule(rule("r", &[LOGIN], 1000, 1e-9))),
            "rules[1].per_second",
            "a refill of centuries would overflow the clock"
        );
        assert_eq!(
            check(with_rule(rule("r", &["/v1/auth/login"], 1, 1.0))),
            "rules[1].routes"
        );
        assert_eq!(check(with_rule(rule("r", &[], 1, 1.0))), "rules[1].routes");
        assert_eq!(check(with_rule(rule(" ", &["*"], 1, 1.0))), "rules[1].name");
        let proxies = |p: &str| RateLimitPolicy {
            trusted_proxies: vec!["10.0.0.0/8".into(), p.into()],
            ..Default::default()
        };
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/x", "::1/129"] {
            assert_eq!(check(proxies(bad)), "trusted_proxies[1]", "{bad}");
        }
        proxies("::/0").validate().unwrap();
        proxies("192.168.1.1").validate().unwrap();
    }

    #[test]
    fn mesh_config_reads_and_checks_gateway_rate_limit() {
        use crate::config::MeshConfig;
        let env = |name: &str, value: &str| {
            MeshConfig::load_from(None, [(name.to_owned(), value.to_owned())])
        };
        let defaults = MeshConfig::default();
        assert_eq!(defaults.gateway.rate_limit, RateLimitPolicy::default());
        assert_eq!(defaults.gateway.max_concurrent_requests, 4096);
        let config = env(
            "WEFT_GATEWAY__RATE_LIMIT__RULES",
            "[{ name = \"all\", routes = [\"*\"], burst = 5, per_second = 2.0, key = \"ip\" }]",
        )
        .unwrap();
        assert_eq!(
            config.gateway.rate_limit.rules.len(),
            1,
            "rules replace the defaults"
        );
        assert_eq!(config.gateway.rate_limit.rules[0].key, RateLimitKey::Ip);
        let err = env(
            "WEFT_GATEWAY__RATE_LIMIT__RULES",
            "[{ name = \"all\", routes = [\"*\"], burst = 0, per_second = 2.0 }]",
        )
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("gateway.rate_limit.rules[0].burst")
        );
        let err = env(
            "WEFT_GATEWAY__RATE_LIMIT__TRUSTED_PROXIES",
            "[\"10.0.0.0/40\"]",
        )
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("gateway.rate_limit.trusted_proxies[0]")
        );
        let err = env("WEFT_GATEWAY__MAX_CONCURRENT_REQUESTS", "0").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("gateway.max_concurrent_requests"));
    }

    #[test]
    fn cidrs_match_their_networks() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::5")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
    }

    #[test]
    fn a_policy_read_from_toml_keeps_the_key_default() {
        let policy: RateLimitPolicy = toml::from_str(
            "trusted_proxies = [\"10.0.0.0/8\"]\n\
             [[rules]]\nname = \"all\"\nroutes = [\"*\"]\nburst = 100\nper_second = 50.0\n",
        )
        .unwrap();
        policy.validate().unwrap();
        assert_eq!(policy.rules.len(), 1, "rules replace the defaults");
        assert_eq!(policy.rules[0].key, RateLimitKey::Client);
        let err = toml::from_str::<RateLimitPolicy>("[[rules]]\nname = \"x\"\nroutes = [\"*\"]\nburst = 1\nper_second = 1.0\nkey = \"cookie\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("cookie"), "{err}");
    }
}
