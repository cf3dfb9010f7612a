//! Weft's Protobuf contract, compiled into tonic clients and servers.
//!
//! The `.proto` files beside this crate are the source of truth for every RPC and route.
//! [`FILE_DESCRIPTOR_SET`] carries them, with comments: every process hands it to the mesh as
//! its contract (routes, access, retry safety, reflection).

/// Google's HTTP annotation types (`google.api.http`).
pub mod google {
    /// `google.api`.
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

/// Weft's own packages.
pub mod weft {
    /// The mesh's own package (`weft.api.v1`: the access option, the token keys), whose
    /// Rust types live in `weft-mesh-proto`.
    pub mod api {
        pub use weft_mesh_proto as v1;
    }
    /// The authentication service.
    pub mod auth {
        /// `weft.auth.v1`.
        pub mod v1 {
            tonic::include_proto!("weft.auth.v1");
        }
    }
    /// The user profile service.
    pub mod user {
        /// `weft.user.v1`.
        pub mod v1 {
            tonic::include_proto!("weft.user.v1");
        }
    }
    /// The product and order service.
    pub mod order {
        /// `weft.order.v1`.
        pub mod v1 {
            tonic::include_proto!("weft.order.v1");
        }
    }
}

pub use weft::api::v1::Access;
pub use weft::auth::v1 as auth;
pub use weft::order::v1 as order;
pub use weft::user::v1 as user;

/// The encoded `FileDescriptorSet` of the whole contract, imports and source comments included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));
