//! `weft-viewer`: the local trace viewer of `weft up`.
//!
//! `weft up` points its children's OTLP exporters at a [`receiver::Receiver`] on loopback; the
//! spans land in a [`store::Store`] that keeps the last N requests in bounded memory, and
//! [`server::serve`] shows them on a web page (a live list over server-sent events, search, a
//! waterfall per request) and as JSON for `weft trace`. When the mesh has an OTLP endpoint of its
//! own (Jaeger), a [`forward::Forwarder`] passes every export request on to it.
//!
//! ```ignore
//! let viewer = Viewer::start(ViewerOptions::default()).await?;
//! // children get OTEL_EXPORTER_OTLP_ENDPOINT=viewer.otlp_endpoint()
//! println!("traces at {}", viewer.url());
//! ```
//!
//! - [`model`]: what the API sends (spans, summaries, traces);
//! - [`store`]: the bounded store and its search;
//! - [`hub`]: the store and the change broadcast, shared;
//! - [`receiver`]: OTLP/gRPC in;
//! - [`forward`]: OTLP out, to the configured endpoint;
//! - [`server`]: the page and the API.

#![warn(missing_docs)]

pub mod error;
pub mod forward;
pub mod hub;
pub mod model;
pub mod receiver;
pub mod server;
pub mod store;

use std::net::SocketAddr;

pub use error::ViewerError;
use forward::{Forwarder, Upstream};
use hub::Hub;
use receiver::Receiver;
use store::Limits;

/// Where the viewer listens unless told otherwise (Jaeger's UI port, on loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:16686";

/// How to start a viewer.
#[derive(Debug, Clone)]
pub struct ViewerOptions {
    /// The page's address; must be a loopback address.
    pub listen: SocketAddr,
    /// The store's bounds.
    pub limits: Limits,
    /// A Jaeger UI to link traces to (`http://localhost:16686`).
    pub jaeger_url: Option<String>,
    /// Where to forward what is received, if anywhere.
    pub forward: Option<Upstream>,
}

impl Default for ViewerOptions {
    /// [`DEFAULT_LISTEN`], default [`Limits`], no Jaeger, no forwarding.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 16686)),
            limits: Limits::default(),
            jaeger_url: None,
            forward: None,
        }
    }
}

/// A running viewer: its receiver and its page, serving until the runtime stops.
#[derive(Debug, Clone)]
pub struct Viewer {
    hub: Hub,
    page: SocketAddr,
    otlp: SocketAddr,
    forwarder: Option<Forwarder>,
}

// === impl Viewer ===

impl Viewer {
    /// Binds the page (refusing a non-loopback address) and the receiver, and serves both on the
    /// current runtime.
    pub async fn start(options: ViewerOptions) -> Result<Viewer, ViewerError> {
        let hub = Hub::new(options.limits, options.jaeger_url);
        let forwarder = options.forward.map(Forwarder::start).transpose()?;
        let page = server::serve(hub.clone(), options.listen).await?;
        let otlp = Receiver::new(hub.clone(), forwarder.clone())
            .serve()
            .await?;
        Ok(Viewer {
            hub,
            page,
            otlp,
            forwarder,
        })
    }

    /// The page's URL, `http://127.0.0.1:16686`.
    pub fn url(&self) -> String {
        format!("http://{}", self.page)
    }

    /// The page's link to one request, by request id or trace id.
    pub fn request_url(&self, id: &str) -> String {
        request_url(&self.url(), id)
    }

    /// The receiver's endpoint, for `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP/gRPC).
    pub fn otlp_endpoint(&self) -> String {
        format!("http://{}", self.otlp)
    }

    /// The shared store and change broadcast.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The forwarder, when spans are also sent elsewhere.
    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.forwarder.as_ref()
    }
}

/// The page at `base` opened on request (or trace) `id`.
pub fn request_url(base: &str, id: &str) -> String {
    format!("{}/#/request/{id}", base.trim_end_matches('/'))
}
