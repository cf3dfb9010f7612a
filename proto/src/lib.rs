//! Weft's Protobuf contract, compiled into tonic clients and servers.
//!
//! The `.proto` files beside this crate are the source of truth for every RPC and route.
//! [`FILE_DESCRIPTOR_SET`] carries them, with comments, for the gateway's transcoder and for
//! gRPC server reflection; [`method_access`] tells who may call each method.

/// Google's HTTP annotation types (`google.api.http`).
pub mod google {
    /// `google.api`.
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

/// Weft's own packages.
pub mod weft {
    /// Options of the Weft API (`weft.api.v1.access`).
    pub mod api {
        /// `weft.api.v1`.
        pub mod v1 {
            tonic::include_proto!("weft.api.v1");
        }
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

/// Every method's declared access, keyed by its gRPC path (`/package.Service/Method`).
pub const METHOD_ACCESS: &[(&str, Access)] =
    include!(concat!(env!("OUT_DIR"), "/method_access.rs"));

/// The declared access of the method at a gRPC path, or `None` for a path outside the contract.
pub fn method_access(path: &str) -> Option<Access> {
    METHOD_ACCESS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, access)| *access)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_is_read_from_the_proto_options() {
        assert_eq!(
            method_access("/weft.auth.v1.AuthService/Login"),
            Some(Access::Public)
        );
        assert_eq!(
            method_access("/weft.user.v1.UserService/CreateUser"),
            Some(Access::Service)
        );
        assert_eq!(
            method_access("/weft.user.v1.UserService/ListUsers"),
            Some(Access::Admin)
        );
        assert_eq!(
            method_access("/weft.order.v1.OrderService/CreateOrder"),
            Some(Access::Authenticated)
        );
        assert_eq!(method_access("/nope.Service/Method"), None);
    }

    #[test]
    fn every_contract_method_declares_its_access() {
        assert_eq!(METHOD_ACCESS.len(), 5 + 5 + 8);
        assert!(METHOD_ACCESS.iter().all(|(_, a)| *a != Access::Unspecified));
    }
}
