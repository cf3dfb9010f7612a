//! `weft-core`: The mesh's vocabulary: the typed mesh-config and its hot reload, the contract read from
//! descriptor sets, the layers' policies as data, and the gRPC wire facts every layer shares.
//!
//! Part of the mesh library (see `ARCHITECTURE.md`); services and the gateway use it through
//! the `weft-mesh` facade. Imports go one way: this crate uses only the crates below it.

pub mod config;
pub mod contract;
pub mod grpc;
pub mod live;
pub mod policy;
pub mod reload;
