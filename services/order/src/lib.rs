//! `weft-order`: the catalogue of products with their stock, and the orders that take from it.
//!
//! - [`api`]: the tonic `OrderService` (validation, owner checks, mapping to the proto);
//! - [`domain`]: the rules (input limits, request hashing, stock per product, pricing) and the
//!   crate's [`domain::Error`];
//! - [`store`]: the queries, on SQLite or PostgreSQL, with stock taken in one transaction;
//! - [`place`]: that transaction's steps, whichever driver runs them; [`sql`]: the statements
//!   both drivers send;
//! - [`read`]: `GetProduct` and the idempotency-key lookup on SQLite through rusqlite, inline
//!   on the runtime thread;
//! - [`write`]: `CreateOrder`'s transaction on SQLite, on the mesh's writer thread (group
//!   commit);
//! - [`seed`]: the demo products of the local run (`order.seed_demo_products`), added once.
//!
//! Placing an order asks `weft-user` (over gRPC, with the caller's own token, which the mesh
//! forwards) that the caller's profile exists.

pub mod api;
pub mod domain;
pub mod place;
pub mod read;
pub mod seed;
pub mod sql;
pub mod store;
pub mod write;

use std::sync::Arc;

use serde::Deserialize;
use weft_mesh::{MeshConfig, db::Database, server::Started};
use weft_proto::{
    order::order_service_server::OrderServiceServer,
    user::{user_service_client::UserServiceClient, user_service_server},
};

use crate::{api::OrderApi, store::Store};

/// The service's name in mesh-config (`[services.order]`, `[order]`).
pub const NAME: &str = "order";

/// weft-order's own settings, the `[order]` table of mesh-config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderSettings {
    /// On the first start with an empty catalogue, add a few demo products (once, ever);
    /// default false (`mesh-config/local.toml` turns it on so that a new user can order at once).
    pub seed_demo_products: bool,
}

/// The crate's schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the database, runs migrations and builds the service, for `weft_mesh::server::serve`.
pub async fn init(
    config: Arc<MeshConfig>,
) -> anyhow::Result<Started<OrderServiceServer<OrderApi>>> {
    let settings: OrderSettings = config.settings(NAME)?;
    let database = Database::open_service(&config, NAME, &MIGRATOR).await?;
    if settings.seed_demo_products {
        let seeding = seed::seed_demo_products(&database).await?;
        tracing::info!(?seeding, "demo products (order.seed_demo_products)");
    }
    let (users, _) =
        weft_mesh::client::channel_serving(&config, user_service_server::SERVICE_NAME)?;
    let users = UserServiceClient::new(users);
    let api = Arc::new(OrderApi::new(Store::new(database.clone()), users));
    let max_message = config.server.max_message_bytes;
    let service = OrderServiceServer::from_arc(api.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    Ok(Started {
        service,
        unary: api::unary_routes(&api, max_message),
        database: Some(database),
    })
}
