//! Channels to upstream services, with the mesh's client stack.
//!
//! An upstream is named in `[upstreams.<name>]` of mesh-config. Its channel connects lazily
//! (a service starts even when its upstreams are down), bounds connecting and each call by the
//! configured timeouts, carries the current call's context (see [`crate::propagate`]), and
//! counts its calls by method and outcome (see [`crate::metrics`]).
//! Generated tonic clients take a [`MeshChannel`] directly:
//! `UserServiceClient::new(weft_mesh::client::channel(&config.upstreams.user)?)`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tower_layer::Layer;

use crate::{
    config::UpstreamConfig,
    metrics::{ClientMetricsLayer, Metered},
    propagate::{Propagate, PropagateLayer},
};

/// A channel to an upstream with the mesh's client layers.
pub type MeshChannel = Propagate<Metered<Channel>>;

/// An upstream address that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream endpoint `{endpoint}`: {source}")]
pub struct ClientError {
    endpoint: String,
    #[source]
    source: tonic::transport::Error,
}

/// A lazily connecting channel to the upstream described by `config`.
pub fn channel(config: &UpstreamConfig) -> Result<MeshChannel, ClientError> {
    let endpoint = endpoint(&config.endpoint, config.connect_timeout())?.timeout(config.timeout());
    let metered = ClientMetricsLayer::new(&config.endpoint).layer(endpoint.connect_lazy());
    Ok(PropagateLayer.layer(metered))
}

/// A lazily connecting channel with no per-call timeout and no context propagation: for a
/// caller (the gateway) that sets each call's deadline and metadata itself.
pub fn raw_channel(endpoint_uri: &str, connect_timeout: Duration) -> Result<Channel, ClientError> {
    Ok(endpoint(endpoint_uri, connect_timeout)?.connect_lazy())
}

fn endpoint(uri: &str, connect_timeout: Duration) -> Result<Endpoint, ClientError> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|source| ClientError {
            endpoint: uri.to_string(),
            source,
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true))
}
