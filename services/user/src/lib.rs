//! `weft-user`: the profiles of the people who use the mesh (email, display name, role).
//!
//! Credentials are weft-auth's; this service only keeps profiles. weft-auth creates them with
//! a service token (`CreateUser`, idempotent per `creation_key`) and reads them at login.

pub mod api;
pub mod domain;
pub mod store;

use std::sync::Arc;

use weft_mesh::{MeshConfig, db::Database, server::Started};
use weft_proto::user::user_service_server::UserServiceServer;

pub use api::Api;

/// The service's name in mesh-config (`[services.user]`).
pub const NAME: &str = "user";

/// The crate's schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the database (running migrations) and builds the gRPC service.
pub async fn init(config: Arc<MeshConfig>) -> anyhow::Result<Started<UserServiceServer<Api>>> {
    let database = Database::open_service(&config, NAME, &MIGRATOR).await?;
    let service = UserServiceServer::new(Api::new(store::Store::new(database.clone())))
        .max_decoding_message_size(config.server.max_message_bytes)
        .max_encoding_message_size(config.server.max_message_bytes);
    Ok(Started {
        service,
        database: Some(database),
    })
}
