//! The policies of the mesh's layers as mesh-config data: what `[upstreams.<name>.retry]`,
//! `.breaker`, `.outlier`, `[[faults]]` and `[gateway.rate_limit]` hold, with their defaults and
//! checks.
//!
//! They live apart from their layers so that the config (which holds them) never imports a
//! layer: the layers import their policy from here, and the config only this data.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use governor::Quota;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::grpc;

/// Longest rest of an ejected endpoint that config may ask for: 24 hours.
pub const MAX_EJECTION_LIMIT_MS: u64 = 24 * 60 * 60 * 1000;

/// The rule a route matches when it names every route.
pub const ANY_ROUTE: &str = "*";

/// Longest time a rule may take to refill a whole burst (`burst / per_second`): one year.
const MAX_REFILL: Duration = Duration::from_secs(365 * 24 * 3600);

// === Retries (`[upstreams.<name>.retry]`, see `crate::retry`) ===

/// How an upstream's calls are retried (`[upstreams.<name>.retry]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts per call, counting the first (1: no retries); 1 to 10; default 3.
    pub max_attempts: u32,
    /// Backoff before the first retry at most, in milliseconds, doubling for each next one;
    /// at least 1; default 25.
    pub backoff_base_ms: u64,
    /// Longest backoff before a retry, in milliseconds; at least `backoff_base_ms`; default 250.
    pub backoff_max_ms: u64,
    /// gRPC status codes (names like `UNAVAILABLE`) of trailers-only answers that are retried;
    /// transport errors always are; default `["UNAVAILABLE"]`.
    pub retry_on: Vec<String>,
    /// Retries may add at most this share of the calls made over the window, in percent;
    /// 0 to 1000; default 20.
    pub budget_percent: f64,
    /// Retries per second allowed over the window whatever the share above (a floor);
    /// default 10.
    pub budget_min_per_sec: u32,
    /// The sliding window over which calls and retries are counted, in milliseconds; 1000 to
    /// 60000; default 10000.
    pub budget_window_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            retry_on: vec!["UNAVAILABLE".to_string()],
            budget_percent: 20.0,
            budget_min_per_sec: 10,
            budget_window_ms: 10_000,
        }
    }
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// The backoff ceiling of the first retry.
    pub fn backoff_base(&self) -> Duration {
        Duration::from_millis(self.backoff_base_ms)
    }

    /// The largest backoff ceiling.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }

    /// The window of the retry budget.
    pub fn budget_window(&self) -> Duration {
        Duration::from_millis(self.budget_window_ms)
    }

    /// The longest backoff before retry number `retry` (1 for the first):
    /// `min(backoff_max, backoff_base * 2^(retry - 1))`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u64
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u64::MAX);
        Duration::from_millis(
            self.backoff_base_ms
                .saturating_mul(factor)
                .min(self.backoff_max_ms),
        )
    }

    /// A random backoff before retry number `retry`, uniform in `[0, backoff_ceiling(retry)]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry).as_micros();
        Duration::from_micros(fastrand::u64(0..=ceiling.min(u128::from(u64::MAX)) as u64))
    }

    /// Whether a trailers-only answer with `code` is retried.
    pub fn retries_on(&self, code: Code) -> bool {
        grpc::names_code(&self.retry_on, code)
    }

    /// Checks the values: `Err((key, reason))` names the first bad key of the table.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if !(1..=10).contains(&self.max_attempts) {
            return err("max_attempts", "must be between 1 and 10");
        }
        if self.backoff_base_ms == 0 {
            return err("backoff_base_ms", "must be at least 1");
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return err("backoff_max_ms", "must be at least backoff_base_ms");
        }
        if !self.budget_percent.is_finite() || !(0.0..=1000.0).contains(&self.budget_percent) {
            return err("budget_percent", "must be a number between 0 and 1000");
        }
        if !(1_000..=60_000).contains(&self.budget_window_ms) {
            return err("budget_window_ms", "must be between 1000 and 60000");
        }
        grpc::validate_error_codes("retry_on", &self.retry_on)
    }
}

// === Adaptive throttling (`[upstreams.<name>.breaker]`, see `crate::breaker`) ===

/// Thresholds of an upstream's adaptive throttling (`[upstreams.<name>.breaker]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerPolicy {
    /// Multiplier K of the throttling formula: calls are rejected once the window holds more
    /// than K times as many calls as the upstream accepted; at least 1.0; default 2.0.
    pub k: f64,
    /// Length of the sliding window in which calls are counted, in milliseconds, kept as 10
    /// buckets; 1000 to 600000; default 10000.
    pub window_ms: u64,
    /// Calls the window must hold before any is rejected; default 10 (one call a second over
    /// the default window: with less evidence, a couple of unlucky failures of a quiet upstream
    /// would reject calls that would have succeeded).
    pub min_requests: u32,
    /// gRPC status codes (names like `UNAVAILABLE`) that count as failures besides transport
    /// errors and calls dropped before an answer; any other status is an accept; default
    /// `["UNAVAILABLE"]`.
    pub failure_codes: Vec<String>,
    /// While the upstream looks down (failures and no accept in the window), one call per this
    /// interval is let through as a probe, in milliseconds; at least 1; default 1000.
    pub probe_interval_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            k: 2.0,
            window_ms: 10_000,
            min_requests: 10,
            failure_codes: vec!["UNAVAILABLE".to_string()],
            probe_interval_ms: 1_000,
        }
    }
}

// === impl BreakerPolicy ===

impl BreakerPolicy {
    /// The sliding window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// The interval between probes while the upstream looks down.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// Checks the values: `Err((key, reason))` names the first bad key of the table.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if !self.k.is_finite() || self.k < 1.0 {
            return err("k", "must be a number of at least 1.0");
        }
        if !(1_000..=600_000).contains(&self.window_ms) {
            return err("window_ms", "must be between 1000 and 600000");
        }
        if self.probe_interval_ms == 0 {
            return err("probe_interval_ms", "must be at least 1");
        }
        grpc::validate_error_codes("failure_codes", &self.failure_codes)
    }

    /// Whether a trailers-only answer with `code` counts as a failure.
    pub fn is_failure(&self, code: tonic::Code) -> bool {
        grpc::names_code(&self.failure_codes, code)
    }
}

// === Outlier ejection (`[upstreams.<name>.outlier]`, see `crate::balance`) ===

/// When an endpoint is ejected and how it comes back: the `[upstreams.<name>.outlier]` table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierPolicy {
    /// Failures in a row (transport errors, or answers with a code in `failure_codes`) after
    /// which an endpoint is ejected; default 5.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint rests before one probe call is let through, in ms; a failed
    /// probe doubles the rest; default 1000.
    pub ejection_ms: u64,
    /// Longest rest of an endpoint whose probes keep failing, in ms; default 30000.
    pub max_ejection_ms: u64,
    /// gRPC status codes (names like "UNAVAILABLE") that count as failures; transport errors
    /// (no connection) always do; default ["UNAVAILABLE"].
    pub failure_codes: Vec<String>,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection_ms: 1000,
            max_ejection_ms: 30_000,
            failure_codes: vec!["UNAVAILABLE".to_string()],
        }
    }
}

impl OutlierPolicy {
    /// The first rest of an ejected endpoint.
    pub fn ejection(&self) -> Duration {
        Duration::from_millis(self.ejection_ms)
    }

    /// The longest rest of an ejected endpoint.
    pub fn max_ejection(&self) -> Duration {
        Duration::from_millis(self.max_ejection_ms)
    }

    /// Whether an answer with `code` counts as a failure of the endpoint.
    pub fn is_failure(&self, code: Code) -> bool {
        grpc::names_code(&self.failure_codes, code)
    }

    /// Checks the values; the error is (key in the table, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, reason: String| Err((key.to_string(), reason));
        if self.consecutive_failures == 0 {
            return err("consecutive_failures", "must be at least 1".into());
        }
        if self.ejection_ms == 0 {
            return err("ejection_ms", "must be at least 1 ms".into());
        }
        if self.max_ejection_ms < self.ejection_ms {
            return err(
                "max_ejection_ms",
                format!("must be at least ejection_ms ({})", self.ejection_ms),
            );
        }
        if self.max_ejection_ms > MAX_EJECTION_LIMIT_MS {
            return err(
                "max_ejection_ms",
                format!("must be at most {MAX_EJECTION_LIMIT_MS} (24 h)"),
            );
        }
        grpc::validate_error_codes("failure_codes", &self.failure_codes)?;
        Ok(())
    }
}

// === Fault injection (`[[faults]]`, see `crate::fault`) ===

/// One fault to inject (an entry of `[[faults]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRule {
    /// The calls it applies to: a full method (`weft.user.v1.UserService/GetMe`), every
    /// method of a service (`weft.user.v1.UserService/*`), or `*`; default `*`.
    pub method: String,
    /// Share of the matching calls that get the fault, in percent; default 100.
    pub percent: f64,
    /// Delay before the call runs, in ms; default 0 (none).
    pub delay_ms: u64,
    /// gRPC code to answer with instead (`UNAVAILABLE`, ...); default empty (no abort).
    pub abort: String,
    /// Run the call first and then lose its answer (answer `abort` instead); default false.
    pub abort_after_call: bool,
}

impl Default for FaultRule {
    fn default() -> Self {
        Self {
            method: "*".into(),
            percent: 100.0,
            delay_ms: 0,
            abort: String::new(),
            abort_after_call: false,
        }
    }
}

// === impl FaultRule ===

impl FaultRule {
    /// Checks the rule; the error names the key (relative to the rule) and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if !(0.0..=100.0).contains(&self.percent) {
            return err("percent", "must be between 0 and 100");
        }
        if !self.abort.is_empty() {
            grpc::error_code(&self.abort).map_err(|reason| ("abort".to_string(), reason))?;
        }
        if self.abort.is_empty() && self.abort_after_call {
            return err("abort_after_call", "needs `abort`: the code to answer with");
        }
        if self.abort.is_empty() && self.delay_ms == 0 {
            return err("delay_ms", "a fault needs a delay_ms or an abort");
        }
        if self.method != "*" && !self.method.contains('/') {
            return err(
                "method",
                "must be `*`, `package.Service/*` or `package.Service/Method`",
            );
        }
        Ok(())
    }

    /// Whether the rule applies to the call at gRPC `path` (`/package.Service/Method`).
    pub fn matches(&self, path: &str) -> bool {
        let path = path.strip_prefix('/').unwrap_or(path);
        match self.method.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.method,
        }
    }

    pub fn abort_status(&self, path: &str) -> Option<Status> {
        let code = grpc::error_code(&self.abort).ok()?;
        Some(Status::new(
            code,
            format!("fault injected by mesh-config into {path}"),
        ))
    }
}

// === Rate limits at the gateway (`[gateway.rate_limit]`, see `crate::ratelimit`) ===

/// The gateway's rate limits (`[gateway.rate_limit]` in mesh-config).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitPolicy {
    /// Proxies (IP addresses or CIDRs such as `10.0.0.0/8`) whose `X-Forwarded-For` is believed:
    /// a request from one is keyed by the right-most forwarded address that is not itself a
    /// trusted proxy. Default empty: the client IP is always the TCP peer.
    pub trusted_proxies: Vec<String>,
    /// The limits, each with its own buckets. Setting `rules` replaces the defaults (write the
    /// `credentials` rule again to keep it). Default: one rule `credentials` on
    /// `POST /v1/auth/register`, `POST /v1/auth/login` and `POST /v1/auth/refresh` (one bucket
    /// per client shared by the three routes), burst 20, refilled 1 per second.
    pub rules: Vec<RateLimitRule>,
}

/// One limit: a bucket per client shared by the routes it names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// The rule's name, for logs (required).
    pub name: String,
    /// Routes as the gateway names them, `"METHOD /template"` (`"POST /v1/auth/login"`, the
    /// same strings as its span names and the `http_route` label of its metrics), or `"*"` for
    /// every route (required). The routes of a rule share each client's bucket.
    pub routes: Vec<String>,
    /// What identifies a client: `client` (default: the verified token's subject when the
    /// route needs a token, else the client IP) or `ip` (always the client IP).
    #[serde(default)]
    pub key: RateLimitKey,
    /// Requests a client may send at once, with a full bucket (required; at least 1).
    pub burst: u32,
    /// Requests per second added back to each bucket, fractions allowed (`0.5`: one every 2 s)
    /// (required; more than 0).
    pub per_second: f64,
}

/// What identifies a client to a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKey {
    /// The verified token's subject, or the client IP when the request has no verified token.
    #[default]
    Client,
    /// The client IP, signed in or not.
    Ip,
}

// === impl RateLimitPolicy ===

impl Default for RateLimitPolicy {
    /// No limits: which routes to limit (the credential routes, say) is for mesh-config to say;
    /// the shipped files limit Weft's.
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl RateLimitPolicy {
    /// Checks every value: `(key relative to [gateway.rate_limit], reason)` for the first bad one.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, proxy) in self.trusted_proxies.iter().enumerate() {
            Cidr::parse(proxy).map_err(|reason| (format!("trusted_proxies[{i}]"), reason))?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |field: &str| format!("rules[{i}].{field}");
            if rule.name.trim().is_empty() {
                return Err((key("name"), "must not be empty".into()));
            }
            if rule.routes.is_empty() {
                return Err((
                    key("routes"),
                    "must name at least one route, or \"*\"".into(),
                ));
            }
            for route in &rule.routes {
                if !is_route_name(route) {
                    return Err((
                        key("routes"),
                        format!(
                            "`{route}` is not a route: write \"METHOD /template\" as the \
                             gateway names it (\"POST /v1/things/{{id}}\"), or \"*\""
                        ),
                    ));
                }
            }
            if rule.burst == 0 {
                return Err((key("burst"), "must be at least 1".into()));
            }
            if !(rule.per_second.is_finite() && rule.per_second > 0.0) {
                return Err((key("per_second"), "must be a number above 0".into()));
            }
            if rule.per_second > 1e9 {
                return Err((key("per_second"), "must be at most 1000000000".into()));
            }
            if rule.quota().is_none() {
                return Err((
                    key("per_second"),
                    format!(
                        "refilling a burst of {} at {}/s takes more than a year",
                        rule.burst, rule.per_second
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl RateLimitRule {
    /// The GCRA quota of this rule, None when its values are out of range.
    pub fn quota(&self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.burst)?;
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return None;
        }
        let period = Duration::try_from_secs_f64(1.0 / self.per_second).ok()?;
        if period.checked_mul(self.burst)? > MAX_REFILL {
            return None;
        }
        Some(Quota::with_period(period)?.allow_burst(burst))
    }
}

/// Whether `route` is `*` or `METHOD /template`.
fn is_route_name(route: &str) -> bool {
    if route == ANY_ROUTE {
        return true;
    }
    match route.split_once(' ') {
        Some((method, template)) => {
            !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_uppercase())
                && template.starts_with('/')
                && !template.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{text}` is not an IP address or CIDR: {why}");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|_| bad("bad address"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("prefix length must be 0..={max}")))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` (canonical) is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u128::from(u32::from(net)), u128::from(u32::from(ip)), 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net), u128::from(ip), 128),
            _ => return false,
        };
        let host_bits = bits - u32::from(self.prefix);
        if host_bits >= 128 {
            return true;
        }
        (net >> host_bits) == (ip >> host_bits)
    }
}
