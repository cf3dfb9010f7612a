//! `weft-auth`: credentials, access and refresh tokens, and the signing keys of the Weft mesh.
//!
//! Passwords are hashed with Argon2id; access and service tokens are EdDSA JWTs signed with a key
//! kept in this service's database (or read from `auth.signing_key_file`) and published through
//! `GetJwks`; refresh tokens rotate on
//! every use and are stored only as SHA-256 hashes. Profiles live in weft-user, reached with
//! short-lived service tokens.

pub mod api;
pub mod domain;
pub mod keys;
pub mod password;
pub mod settings;
pub mod store;
pub mod users;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use weft_mesh::{MeshConfig, db::Database, server::Started};
use weft_proto::{auth::auth_service_server::AuthServiceServer, user::user_service_server};

use crate::{
    api::AuthApi, keys::KeyRing, password::Passwords, settings::AuthSettings, users::UserDirectory,
};

/// The service's name in mesh-config (`[services.auth]`, `[auth]`).
pub const NAME: &str = "auth";

/// The service's schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the database from `config`, running migrations.
pub async fn open_database(config: &MeshConfig) -> anyhow::Result<Database> {
    Ok(Database::open_service(config, NAME, &MIGRATOR).await?)
}

/// Builds the service: database, signing keys (created on first start), password hasher and
/// the weft-user client.
pub async fn init(config: Arc<MeshConfig>) -> anyhow::Result<Started<AuthServiceServer<AuthApi>>> {
    let settings = Arc::new(AuthSettings::from_config(&config)?);
    let db = open_database(&config).await?;
    let timing = keys::KeyTiming::new(&config, &settings);
    let keys = if settings.signing_key_file.is_empty() {
        let keys = Arc::new(
            KeyRing::load(&db, timing)
                .await
                .context("cannot load the signing keys")?,
        );
        keys.clone().spawn_reload(
            db.clone(),
            Duration::from_millis(settings.key_reload_interval_ms),
        );
        keys
    } else {
        let path = &settings.signing_key_file;
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read auth.signing_key_file {path}"))?;
        Arc::new(
            KeyRing::from_pem(&pem, timing)
                .with_context(|| format!("auth.signing_key_file {path}"))?,
        )
    };
    let passwords = Passwords::new(&settings)
        .await
        .context("cannot set up password hashing")?;
    let (channel, user_service) =
        weft_mesh::client::channel_serving(&config, user_service_server::SERVICE_NAME)?;
    let users = UserDirectory::new(channel, user_service, keys.clone(), config.jwt.clone());
    let max_message = config.server.max_message_bytes;
    let api = Arc::new(AuthApi::new(config, db.clone(), keys, passwords, users));
    let service = AuthServiceServer::from_arc(api.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    Ok(Started {
        service,
        unary: api::unary_routes(&api, max_message),
        database: Some(db),
    })
}

/// Creates a new signing key, published at once, which replaces the current one for signing
/// after the activation delay (see [`keys`]); returns the new key's id.
pub async fn rotate_key(config: &MeshConfig) -> anyhow::Result<String> {
    let key = keys::generate_key(weft_mesh::clock::now_micros())?;
    store_rotated(config, key).await
}

/// Stores the Ed25519 private key in `pem` (PKCS#8) as [`rotate_key`] stores a generated one:
/// published at once, signing after the activation delay, or at once when no other key is
/// current (a fresh database). Returns its key id.
pub async fn import_key(config: &MeshConfig, pem: &str) -> anyhow::Result<String> {
    let key = keys::key_from_pem(pem, weft_mesh::clock::now_micros())?;
    store_rotated(config, key).await
}

async fn store_rotated(config: &MeshConfig, key: keys::StoredKey) -> anyhow::Result<String> {
    let settings = AuthSettings::from_config(config)?;
    if !settings.signing_key_file.is_empty() {
        anyhow::bail!(
            "the signing key comes from auth.signing_key_file ({}): the database keeps no key \
             to rotate; replace that file and restart weft-auth instead",
            settings.signing_key_file
        );
    }
    let db = open_database(config).await?;
    let now = key.created_at;
    let retire_at =
        now.saturating_add(keys::KeyTiming::new(config, &settings).activation_delay_micros);
    let result = store::rotate_key(&db.write, &key, retire_at).await;
    db.close().await;
    result.context("cannot store the new signing key")?;
    tracing::info!(kid = %key.kid, "signing key rotated");
    Ok(key.kid)
}
