//! Channels to upstream services, with the mesh's client stack.
//!
//! An upstream is named in `[upstreams.<name>]` of mesh-config. Its channel connects lazily
//! (a service starts even when its upstreams are down), bounds connecting and each call by the
//! configured timeouts, and carries the current call's context (see [`crate::propagate`]).
//! Generated tonic clients take a [`MeshChannel`] directly:
//! `UserServiceClient::new(weft_mesh::client::channel(&config.upstreams.user)?)`.

use tonic::transport::{Channel, Endpoint};
use tower_layer::Layer;

use crate::{
    config::UpstreamConfig,
    propagate::{Propagate, PropagateLayer},
};

/// A channel to an upstream with the mesh's client layers.
pub type MeshChannel = Propagate<Channel>;

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
    let endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(|source| ClientError {
            endpoint: config.endpoint.clone(),
            source,
        })?
        .connect_timeout(config.connect_timeout())
        .timeout(config.timeout())
        .tcp_nodelay(true);
    Ok(PropagateLayer.layer(endpoint.connect_lazy()))
}
