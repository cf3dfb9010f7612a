//! `weft-user`: the profiles of the people who use the mesh (email, display name, role).
//!
//! Credentials are weft-auth's; this service only keeps profiles. weft-auth creates them with
//! a service token (`CreateUser`, idempotent per `creation_key`) and reads them at login, when
//! the profile's role goes into the access token. Every account starts as an ordinary user;
//! an operator with access to this service's database grants roles with [`grant_role`]
//! (`weft-user grant-role`, wrapped by `weft admin grant`): no request and no setting can.

pub mod api;
pub mod domain;
pub mod store;

use std::sync::Arc;

use weft_mesh::{
    MeshConfig,
    db::{Database, DbError},
    server::Started,
    validate::FieldError,
};
use weft_proto::user::{Role, user_service_server::UserServiceServer};

use crate::domain::{UserError, UserRecord};

pub use api::Api;

/// The service's name in mesh-config (`[services.user]`).
pub const NAME: &str = "user";

/// The crate's schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the database (running migrations) and builds the gRPC service.
pub async fn init(config: Arc<MeshConfig>) -> anyhow::Result<Started<UserServiceServer<Api>>> {
    let database = Database::open_service(&config, NAME, &MIGRATOR).await?;
    let api = Arc::new(Api::new(store::Store::new(database.clone())));
    let max_message = config.server.max_message_bytes;
    let service = UserServiceServer::from_arc(api.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    Ok(Started {
        service,
        unary: api::unary_routes(&api, max_message),
        database: Some(database),
    })
}

/// Why [`grant_role`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The email is not an email address.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No profile has the email.
    #[error("no user has the email {0}: the account must be registered first")]
    UnknownEmail(String),
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] DbError),
    /// The update failed.
    #[error(transparent)]
    Store(#[from] UserError),
}

/// Gives the profile with `email` the role `role`, in the database `config` names for this
/// service, and returns the profile. Tokens carry the new role from the user's next sign-in
/// (Login or Refresh); tokens issued before keep theirs until they expire.
pub async fn grant_role(
    config: &MeshConfig,
    email: &str,
    role: Role,
) -> Result<UserRecord, GrantError> {
    let email = weft_mesh::validate::email("email", email)?;
    let database = Database::open_service(config, NAME, &MIGRATOR).await?;
    let store = store::Store::new(database.clone());
    let result = store.set_role_by_email(&email, role).await;
    database.close().await;
    let user = result?.ok_or(GrantError::UnknownEmail(email))?;
    tracing::info!(user_id = %user.id, role = role.as_str_name(), "role granted");
    Ok(user)
}
