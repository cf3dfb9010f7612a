//! `weft.api.v1`: the part of the Protobuf contract that belongs to the mesh, not to a service.
//!
//! - [`Access`], the `weft.api.v1.access` method option: who may call a method, enforced by
//!   the server stack before any handler runs;
//! - [`FieldRules`], the `weft.api.v1.field` field option: what a field's value must be,
//!   enforced by the service that owns it and published in the gateway's OpenAPI document;
//! - [`Jwks`] and [`Jwk`], the token signing keys that every process verifying a token fetches
//!   from the method of the contract that returns them.
//!
//! Service contracts import these files (`proto/weft/api/v1/`); `weft-proto` maps the package
//! to this crate, so that there is one Rust type per message.

include!(concat!(env!("OUT_DIR"), "/weft.api.v1.rs"));

/// The full name of the message a token-issuing service returns its signing keys in.
pub const JWKS_MESSAGE: &str = "weft.api.v1.Jwks";

/// The full name of the method option declaring a method's [`Access`].
pub const ACCESS_OPTION: &str = "weft.api.v1.access";

/// The full name of the field option declaring a field's [`FieldRules`].
pub const FIELD_RULES_OPTION: &str = "weft.api.v1.field";
