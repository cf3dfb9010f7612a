//! Which addresses an upstream's endpoints stand for: fixed `scheme://ip:port` endpoints, and
//! host names resolved again every `resolve_interval_ms` (a Kubernetes headless service's name
//! stands for every replica). A lookup that fails keeps the host's last addresses.
//!
//! [`crate::balance`] asks this module what to connect to; it decides nothing about which
//! endpoint a call goes to.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http::Uri;

/// An endpoint that is not `http(s)://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream endpoint `{endpoint}`: {reason}")]
pub struct EndpointError {
    /// The endpoint as configured.
    pub endpoint: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The longest rest an ejection may be configured with.
/// Time allowed for one resolution of a host name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `scheme://ip:port`: the endpoint's identity, in logs and across rebuilds.
    pub(crate) key: Arc<str>,
    /// Where to connect.
    pub(crate) uri: Uri,
    /// The configured `scheme://host:port` of a resolved host name (the `:authority` of calls
    /// and the TLS server name stay the name).
    pub(crate) origin: Option<Uri>,
}

/// A host name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) scheme: &'static str,
    pub(crate) origin: Uri,
}

/// A configured endpoint.
pub(crate) enum Entry {
    Fixed(Target),
    Host(Host),
}

/// The configured endpoints of an upstream: fixed addresses and host names.
pub(crate) struct Plan {
    pub(crate) fixed: Vec<Target>,
    pub(crate) hosts: Vec<Host>,
}

impl Plan {
    pub(crate) fn of(endpoints: &[String]) -> Result<Self, EndpointError> {
        let mut plan = Plan {
            fixed: Vec::new(),
            hosts: Vec::new(),
        };
        for endpoint in endpoints {
            match parse_endpoint(endpoint)? {
                Entry::Fixed(target) => plan.fixed.push(target),
                Entry::Host(host) => plan.hosts.push(host),
            }
        }
        Ok(plan)
    }

    /// The host names, for a refusal when none resolves.
    pub(crate) fn host_names(&self) -> String {
        let names: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.name, h.port))
            .collect();
        names.join(", ")
    }
}

pub(crate) fn parse_endpoint(endpoint: &str) -> Result<Entry, EndpointError> {
    let bad = |reason: &str| EndpointError {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&format!("not a URI ({e})")))?;
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry user information"));
    }
    if !matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/")) {
        return Err(bad("must be scheme://host:port, without a path or query"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) => target(scheme, SocketAddr::new(ip, port), None)
            .map(Entry::Fixed)
            .ok_or_else(|| bad("not a usable address")),
        Err(_) => {
            let origin = format!("{scheme}://{authority}")
                .parse()
                .map_err(|_| bad("not a usable host"))?;
            Ok(Entry::Host(Host {
                name: host.to_string(),
                port,
                scheme,
                origin,
            }))
        }
    }
}

pub(crate) fn target(scheme: &str, addr: SocketAddr, origin: Option<Uri>) -> Option<Target> {
    let key = format!("{scheme}://{addr}");
    let uri = key.parse().ok()?;
    Some(Target {
        key: key.into(),
        uri,
        origin,
    })
}

/// The last good addresses of each host name, so that a failed lookup changes nothing.
#[derive(Default)]
pub(crate) struct Dns {
    last: HashMap<(String, u16), Vec<SocketAddr>>,
    failing: HashSet<(String, u16)>,
}

impl Dns {
    pub(crate) async fn resolve(&mut self, upstream: &str, hosts: &[Host]) -> Vec<Target> {
        let lookups = hosts.iter().map(|host| async move {
            let lookup = tokio::net::lookup_host((host.name.as_str(), host.port));
            (host, tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await)
        });
        let results = futures::future::join_all(lookups).await;
        let mut targets = Vec::new();
        for (host, result) in results {
            let key = (host.name.clone(), host.port);
            let error = match result {
                Ok(Ok(addrs)) => {
                    let mut addrs: Vec<SocketAddr> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    if self.failing.remove(&key) {
                        tracing::info!(upstream, host = %host.name, "endpoint host name resolves again");
                    }
                    self.last.insert(key.clone(), addrs);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())),
            };
            if let Some(error) = error
                && self.failing.insert(key.clone())
            {
                tracing::warn!(
                    upstream,
                    host = %host.name,
                    error,
                    "cannot resolve endpoint host name; keeping its last addresses"
                );
            }
            for addr in self.last.get(&key).into_iter().flatten() {
                match target(host.scheme, *addr, Some(host.origin.clone())) {
                    Some(target) => targets.push(target),
                    None => tracing::debug!(upstream, %addr, "resolved address not usable"),
                }
            }
        }
        self.last
            .retain(|(name, port), _| hosts.iter().any(|h| h.name == *name && h.port == *port));
        self.failing
            .retain(|(name, port)| hosts.iter().any(|h| h.name == *name && h.port == *port));
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_into_addresses_and_host_names() {
        let Ok(Entry::Fixed(target)) = parse_endpoint("http://[::1]") else {
            panic!("an address")
        };
        assert_eq!(&*target.key, "http://[::1]:80");
        assert_eq!(target.origin, None);
        let Ok(Entry::Host(host)) = parse_endpoint("https://user.svc/") else {
            panic!("a host")
        };
        assert_eq!(
            (host.name.as_str(), host.port, host.scheme),
            ("user.svc", 443, "https")
        );
    }
}
