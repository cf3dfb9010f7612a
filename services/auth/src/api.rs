//! The gRPC face of the auth service.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_mesh::{
    MeshConfig, clock::now_micros, db::Database, unary::UnaryRoutes, validate::FieldError,
};
use weft_mesh_proto::Jwks;
use weft_proto::{
    auth::{
        AuthTokens, GetJwksRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
        auth_service_server::AuthService,
    },
    user::{Role as UserRole, User},
};

use crate::{
    domain::{self, Error, RefreshState},
    keys::KeyRing,
    password::Passwords,
    store::{self, Begun, PendingRegistration, Rotation},
    users::UserDirectory,
};

/// The AuthService implementation.
#[derive(Clone)]
pub struct AuthApi {
    config: Arc<MeshConfig>,
    db: Database,
    keys: Arc<KeyRing>,
    passwords: Passwords,
    users: UserDirectory,
}

impl AuthApi {
    /// The service over its parts.
    pub fn new(
        config: Arc<MeshConfig>,
        db: Database,
        keys: Arc<KeyRing>,
        passwords: Passwords,
        users: UserDirectory,
    ) -> Self {
        Self {
            config,
            db,
            keys,
            passwords,
            users,
        }
    }

    async fn register(&self, req: RegisterRequest) -> Result<AuthTokens, Error> {
        let reg = domain::validate_registration(&req.email, req.password, &req.display_name)?;
        // Cheap check first, so a taken email costs no hash.
        if store::completed_credential(&self.db.read, &reg.email)
            .await?
            .is_some()
        {
            return Err(Error::EmailTaken);
        }
        let hash = self.passwords.hash(reg.password.clone()).await?;
        let now = now_micros();
        let (creation_key, hash) =
            match store::begin_registration(&self.db.write, &reg.email, &hash, now).await? {
                Begun::Started(key) => (key, hash),
                Begun::Pending(pending) => self.resume(&reg, pending, hash, now).await?,
            };
        // Every account starts as an ordinary user; an operator grants roles in weft-user's
        // database (`weft-user grant-role`), and tokens take the role from the profile.
        let user = self
            .users
            .create_user(&reg.email, &reg.display_name, UserRole::User, &creation_key)
            .await?;
        let completed =
            store::complete_registration(&self.db.write, &reg.email, &hash, &user.id, now_micros())
                .await?;
        if !completed {
            // A concurrent attempt for the same email finished first.
            return Err(Error::EmailTaken);
        }
        tracing::debug!(user_id = %user.id, role = domain::role_claim(user.role()), "registered");
        self.issue(user).await
    }

    /// Decides whether a Register may take over another attempt's pending registration of the
    /// same email, and takes it: the creation key and password hash to go on with.
    ///
    /// Pending rows exist so that an attempt cut short (weft-user down, a crash) can be retried:
    /// the profile is made with the row's creation key, so a retry finds it instead of hitting
    /// ALREADY_EXISTS in weft-user. Only the person who started it may resume it at once (they
    /// know its password); anyone else must wait until it is abandoned, so that two concurrent
    /// registrations never take each other's row: the first one wins, the others get
    /// ALREADY_EXISTS.
    async fn resume(
        &self,
        reg: &domain::Registration,
        pending: PendingRegistration,
        hash: String,
        now: i64,
    ) -> Result<(String, String), Error> {
        if domain::pending_is_abandoned(pending.updated_at, now) {
            let key = store::resume_registration(
                &self.db.write,
                &reg.email,
                &pending.password_hash,
                &hash,
                now,
            )
            .await?;
            return Ok((key, hash));
        }
        let same_person = self
            .passwords
            .verify(reg.password.clone(), pending.password_hash.clone())
            .await?;
        if !same_person {
            return Err(Error::EmailTaken);
        }
        // Go on with the pending row as it is: whichever of the person's attempts completes
        // first wins, with the same password either way.
        Ok((pending.creation_key, pending.password_hash))
    }

    async fn login(&self, req: LoginRequest) -> Result<AuthTokens, Error> {
        let email = req.email.trim().to_lowercase();
        let password = req.password;
        // No registered email holds a control character (PostgreSQL could not even compare
        // a NUL), nor is any password that long: no lookup, the same refusal.
        let credential = if password.chars().count() > domain::PASSWORD_MAX_CHARS
            || email.chars().any(char::is_control)
        {
            None
        } else {
            store::completed_credential(&self.db.read, &email).await?
        };
        let Some(credential) = credential else {
            // Same work as for a known email, so timing does not tell which emails exist.
            self.passwords.verify_dummy(password).await?;
            return Err(Error::BadCredentials);
        };
        if !self
            .passwords
            .verify(password, credential.password_hash)
            .await?
        {
            return Err(Error::BadCredentials);
        }
        let Some(user) = self.users.get_user(&credential.user_id).await? else {
            return Err(Error::BadCredentials);
        };
        self.issue(user).await
    }

    async fn refresh(&self, req: RefreshRequest) -> Result<AuthTokens, Error> {
        if req.refresh_token.is_empty() {
            return Err(FieldError::new("refresh_token", "must not be empty").into());
        }
        let old_hash = domain::refresh_token_hash(&req.refresh_token);
        let now = now_micros();
        let Some(token) = store::find_refresh(&self.db.read, &old_hash).await? else {
            return Err(Error::BadRefreshToken);
        };
        let family_ends_at = token.family_created_at.saturating_add(self.family_max());
        match domain::refresh_state(
            token.used_at.is_some(),
            token.revoked_at,
            token.expires_at,
            family_ends_at,
            now,
        ) {
            RefreshState::Reused => {
                store::revoke_family(&self.db.write, &token.family_id, now).await?;
                tracing::warn!(family_id = %token.family_id, user_id = %token.user_id, "refresh token reused; family revoked");
                return Err(Error::BadRefreshToken);
            }
            RefreshState::Dead => return Err(Error::BadRefreshToken),
            RefreshState::Live => {}
        }
        // Fetched before the token is spent: if weft-user is down, the token stays usable.
        let Some(user) = self.users.get_user(&token.user_id).await? else {
            return Err(Error::BadRefreshToken);
        };
        let new_token = domain::new_refresh_token()?;
        let new_hash = domain::refresh_token_hash(&new_token);
        let now = now_micros();
        let rotation = store::rotate_refresh(
            &self.db.write,
            &old_hash,
            &new_hash,
            now,
            self.refresh_expiry(now),
            self.family_max(),
        )
        .await?;
        match rotation {
            Rotation::Rotated => self.tokens(user, new_token),
            Rotation::Reused => {
                tracing::warn!(family_id = %token.family_id, user_id = %token.user_id, "refresh token reused; family revoked");
                Err(Error::BadRefreshToken)
            }
            Rotation::Dead => Err(Error::BadRefreshToken),
        }
    }

    async fn logout(&self, req: LogoutRequest) -> Result<(), Error> {
        if req.refresh_token.is_empty() {
            return Err(FieldError::new("refresh_token", "must not be empty").into());
        }
        let hash = domain::refresh_token_hash(&req.refresh_token);
        store::revoke_family_of(&self.db.write, &hash, now_micros()).await
    }

    fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys.current().jwks().to_vec(),
        }
    }

    /// Signs `user` in with a new refresh token family.
    async fn issue(&self, user: User) -> Result<AuthTokens, Error> {
        let refresh_token = domain::new_refresh_token()?;
        let now = now_micros();
        store::start_family(
            &self.db.write,
            &user.id,
            &domain::refresh_token_hash(&refresh_token),
            now,
            self.refresh_expiry(now),
        )
        .await?;
        self.tokens(user, refresh_token)
    }

    /// The response for `user` holding `refresh_token`, with a fresh access token.
    fn tokens(&self, user: User, refresh_token: String) -> Result<AuthTokens, Error> {
        let jwt = &self.config.jwt;
        let iat = domain::unix_secs(now_micros());
        let claims = domain::access_claims(jwt, &user.id, user.role(), iat);
        let access_token = self.keys.current().sign(&claims)?;
        Ok(AuthTokens {
            access_token,
            token_type: "Bearer".into(),
            expires_in: i64::try_from(jwt.access_ttl_secs).unwrap_or(i64::MAX),
            refresh_token,
            user: Some(user),
        })
    }

    /// When a refresh token issued at `now` expires: the sliding lifetime, never beyond the
    /// family's (a new family's first token included).
    fn refresh_expiry(&self, now: i64) -> i64 {
        let jwt = &self.config.jwt;
        now.saturating_add(domain::secs_to_micros(
            jwt.refresh_ttl_secs.min(jwt.refresh_family_max_secs),
        ))
    }

    /// The absolute lifetime of a refresh token family, in microseconds.
    fn family_max(&self) -> i64 {
        domain::secs_to_micros(self.config.jwt.refresh_family_max_secs)
    }
}

/// Every method of `weft.auth.v1.AuthService`, served without tonic's codec (see
/// `weft_mesh::unary`; a test checks that none is missing).
pub fn unary_routes(api: &Arc<AuthApi>, max_message_bytes: usize) -> UnaryRoutes {
    UnaryRoutes::new(max_message_bytes)
        .route(
            api,
            "/weft.auth.v1.AuthService/Register",
            |api: &AuthApi, r| AuthService::register(api, r),
        )
        .route(
            api,
            "/weft.auth.v1.AuthService/Login",
            |api: &AuthApi, r| AuthService::login(api, r),
        )
        .route(
            api,
            "/weft.auth.v1.AuthService/Refresh",
            |api: &AuthApi, r| AuthService::refresh(api, r),
        )
        .route(
            api,
            "/weft.auth.v1.AuthService/Logout",
            |api: &AuthApi, r| AuthService::logout(api, r),
        )
        .route(
            api,
            "/weft.auth.v1.AuthService/GetJwks",
            |api: &AuthApi, r| AuthService::get_jwks(api, r),
        )
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        Ok(Response::new(
            AuthApi::register(self, request.into_inner()).await?,
        ))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<AuthTokens>, Status> {
        Ok(Response::new(
            AuthApi::login(self, request.into_inner()).await?,
        ))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        Ok(Response::new(
            AuthApi::refresh(self, request.into_inner()).await?,
        ))
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<()>, Status> {
        AuthApi::logout(self, request.into_inner()).await?;
        Ok(Response::new(()))
    }

    async fn get_jwks(&self, _request: Request<GetJwksRequest>) -> Result<Response<Jwks>, Status> {
        Ok(Response::new(self.jwks()))
    }
}
