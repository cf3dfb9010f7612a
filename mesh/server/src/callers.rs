//! Authorization by identity: which processes of the mesh may call which methods.
//!
//! [`CallerLayer`] checks the client's mTLS identity ([`PeerIdentity`], put in the request's
//! extensions by [`crate::listener`]) against mesh-config's `[callers]` before anything else
//! looks at the call, so a caller not allowed gets PERMISSION_DENIED whatever token it carries.
//! Health and reflection stay open to every identity of the mesh, and a method `[callers]`
//! does not name (nor its service with `/*`) is open to every identity too. With mTLS off
//! there is no identity to check: the layer lets everything through (and `serve` warns).

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Request;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;
use weft_tls::PeerIdentity;

use crate::{config::MeshConfig, live::Live};

/// The rules of `[callers]`, and whether they are enforced (mTLS on).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallerRules {
    /// Whether the rules apply: mTLS is on.
    pub enforce: bool,
    /// `[callers]`: method or `Service/*` to the process names allowed.
    pub callers: BTreeMap<String, Vec<String>>,
}

impl From<&MeshConfig> for CallerRules {
    fn from(config: &MeshConfig) -> Self {
        Self {
            enforce: config.mtls.is_on(),
            callers: config.callers.clone(),
        }
    }
}

impl CallerRules {
    /// Whether the process `caller` (`None`: no identity) may call `path`; the refusal otherwise.
    pub fn check(&self, path: &str, caller: Option<&str>) -> Result<(), Status> {
        if !self.enforce || crate::grpc::is_infrastructure(path) {
            return Ok(());
        }
        let Some(caller) = caller else {
            return Err(Status::permission_denied(
                "the call came without a mesh identity (no client certificate)",
            ));
        };
        match crate::config::allowed_callers(&self.callers, path) {
            Some(allowed) if !allowed.iter().any(|name| name == caller) => {
                Err(Status::permission_denied(format!(
                    "`{caller}` may not call {}: [callers] allows {}",
                    path.trim_start_matches('/'),
                    allowed.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Server layer refusing calls from identities `[callers]` does not allow.
#[derive(Clone)]
pub struct CallerLayer {
    rules: Live<CallerRules>,
}

impl CallerLayer {
    /// A layer enforcing `rules` (live: reloads of mesh-config apply).
    pub fn new(rules: Live<CallerRules>) -> Self {
        Self { rules }
    }
}

impl<S> Layer<S> for CallerLayer {
    type Service = CheckCaller<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CheckCaller {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// Service made by [`CallerLayer`].
#[derive(Clone)]
pub struct CheckCaller<S> {
    inner: S,
    rules: Live<CallerRules>,
}

impl<S, B> Service<Request<B>> for CheckCaller<S>
where
    S: Service<Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|peer| peer.0.name.as_str());
        match self.rules.get().check(req.uri().path(), caller) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                let refused = status.into_http();
                Box::pin(async move { Ok(refused) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> CallerRules {
        let mut callers = BTreeMap::new();
        callers.insert("a.S/*".to_string(), vec!["gateway".to_string()]);
        callers.insert("a.S/Create".to_string(), vec!["auth".to_string()]);
        CallerRules {
            enforce: true,
            callers,
        }
    }

    #[test]
    fn a_method_allows_its_callers_and_its_services_rule_covers_the_rest() {
        let rules = rules();
        assert!(rules.check("/a.S/Create", Some("auth")).is_ok());
        let refused = rules.check("/a.S/Create", Some("gateway")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(rules.check("/a.S/Get", Some("gateway")).is_ok());
        assert!(rules.check("/a.S/Get", Some("auth")).is_err());
        // Named nowhere: open to every identity; without one: refused.
        assert!(rules.check("/b.T/Get", Some("auth")).is_ok());
        assert!(rules.check("/b.T/Get", None).is_err());
        // Health stays open to any identity.
        assert!(
            rules
                .check("/grpc.health.v1.Health/Check", Some("auth"))
                .is_ok()
        );
    }

    #[test]
    fn with_mtls_off_nothing_is_checked() {
        let rules = CallerRules {
            enforce: false,
            ..rules()
        };
        assert!(rules.check("/a.S/Create", None).is_ok());
    }
}
