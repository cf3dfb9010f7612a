//! Calls to weft-user, authenticated with weft-auth's own short-lived service tokens.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Code, Status, metadata::MetadataValue};
use weft_mesh::{client::MeshChannel, config::JwtConfig};
use weft_proto::user::{
    CreateUserRequest, GetUserRequest, Role as UserRole, User,
    user_service_client::UserServiceClient,
};

use crate::{
    domain::{self, Error},
    keys::KeyRing,
};

/// A signed service token and when to stop reusing it.
struct CachedToken {
    token: String,
    kid: String,
    renew_at: Instant,
}

/// The client of weft-user.
#[derive(Clone)]
pub struct UserDirectory {
    client: UserServiceClient<MeshChannel>,
    keys: Arc<KeyRing>,
    jwt: JwtConfig,
    /// weft-user's name as the `aud` of the service tokens it accepts.
    audience: String,
    cached: Arc<Mutex<Option<CachedToken>>>,
}

impl UserDirectory {
    /// A client over `channel` to the service named `audience` (`weft-user`), signing service
    /// tokens with `keys`.
    pub fn new(channel: MeshChannel, audience: String, keys: Arc<KeyRing>, jwt: JwtConfig) -> Self {
        Self {
            client: UserServiceClient::new(channel),
            keys,
            jwt,
            audience,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// Creates (or, for a repeated `creation_key`, finds) the profile of a new account.
    pub async fn create_user(
        &self,
        email: &str,
        display_name: &str,
        role: UserRole,
        creation_key: &str,
    ) -> Result<User, Error> {
        let request = self.authorized(CreateUserRequest {
            email: email.to_owned(),
            display_name: display_name.to_owned(),
            role: role as i32,
            creation_key: creation_key.to_owned(),
        })?;
        match self.client.clone().create_user(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if status.code() == Code::AlreadyExists => Err(Error::EmailTaken),
            Err(status) => Err(upstream_error("CreateUser", &status)),
        }
    }

    /// The current profile of `user_id`; `None` when it no longer exists.
    pub async fn get_user(&self, user_id: &str) -> Result<Option<User>, Error> {
        let request = self.authorized(GetUserRequest {
            id: user_id.to_owned(),
        })?;
        match self.client.clone().get_user(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!(user_id, "signed-in user has no profile any more");
                Ok(None)
            }
            Err(status) => Err(upstream_error("GetUser", &status)),
        }
    }

    /// `message` with an explicit service token, so the caller's own token is not forwarded.
    fn authorized<T>(&self, message: T) -> Result<tonic::Request<T>, Error> {
        let token = self.service_token()?;
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Error::internal("service token is not a valid header value"))?;
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// A service token for weft-user, reused until half its lifetime has passed or the
    /// signing key changed.
    fn service_token(&self) -> Result<String, Error> {
        let keys = self.keys.current();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.kid == keys.kid()
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let now = domain::unix_secs(weft_mesh::clock::now_micros());
        let claims = domain::service_claims(&self.jwt, &self.audience, now);
        let token = keys.sign(&claims)?;
        let half_life = Duration::from_secs(claims.exp.saturating_sub(now)) / 2;
        *cached = Some(CachedToken {
            token: token.clone(),
            kid: keys.kid().to_owned(),
            renew_at: Instant::now() + half_life,
        });
        Ok(token)
    }
}

fn upstream_error(method: &str, status: &Status) -> Error {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            tracing::warn!(method, code = ?status.code(), message = status.message(), "weft-user unavailable");
            Error::UserServiceUnavailable
        }
        code => Error::internal(format!(
            "weft-user {method} failed: {code:?}: {}",
            status.message()
        )),
    }
}
