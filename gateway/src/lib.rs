//! `weft-gateway`: the mesh's REST front door (placeholder).
//!
//! The gateway turns REST+JSON into gRPC calls with no per-route code: its routes are built at
//! start from the `google.api.http` rules of `weft_proto::FILE_DESCRIPTOR_SET`. It is built by
//! the gateway issue; until then this crate holds its place in the workspace layout.

pub mod route;
