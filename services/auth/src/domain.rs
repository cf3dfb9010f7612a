//! The auth service's rules: input checks, token contents, when a refresh token may be
//! exchanged, and its error type.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tonic::Status;
use weft_mesh::{auth::Claims, config::JwtConfig, validate::FieldError};
use weft_proto::user::Role as UserRole;

use crate::password::PasswordError;

/// Subject of the service tokens weft-auth signs for its own calls.
pub const SERVICE_SUBJECT: &str = "service:weft-auth";

/// Shortest accepted password, in characters.
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Longest accepted password, in characters.
pub const PASSWORD_MAX_CHARS: usize = 1024;

/// Everything that can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The email belongs to a completed registration.
    #[error("email already registered")]
    EmailTaken,
    /// Unknown email or wrong password; deliberately indistinguishable.
    #[error("invalid email or password")]
    BadCredentials,
    /// Unknown, used, expired or revoked refresh token.
    #[error("invalid refresh token")]
    BadRefreshToken,
    /// weft-user could not be reached.
    #[error("user service unavailable")]
    UserServiceUnavailable,
    /// Too many passwords are being checked already; the caller should retry shortly.
    #[error("too many sign-ins in progress; retry shortly")]
    Busy,
    /// A storage failure.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Any other failure that is not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An internal error described by `what` (logged, never returned to callers).
    pub fn internal(what: impl std::fmt::Display) -> Self {
        Error::Internal(what.to_string())
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::Invalid(field) => field.into(),
            Error::EmailTaken => Status::already_exists(err.to_string()),
            Error::BadCredentials | Error::BadRefreshToken => {
                Status::unauthenticated(err.to_string())
            }
            Error::UserServiceUnavailable => Status::unavailable(err.to_string()),
            Error::Busy => {
                let mut status = Status::resource_exhausted(err.to_string());
                // The gateway turns it into `Retry-After: 1`; gRPC clients may honour it too.
                status.metadata_mut().insert(
                    weft_mesh::grpc::RETRY_PUSHBACK,
                    tonic::metadata::MetadataValue::from_static(BUSY_PUSHBACK_MS),
                );
                status
            }
            Error::Database(_) | Error::Internal(_) => {
                tracing::error!(error = %err, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// How long a caller refused with [`Error::Busy`] is asked to wait, in ms
/// (`grpc-retry-pushback-ms`): a queue's worth of hashes takes about that long.
const BUSY_PUSHBACK_MS: &str = "1000";

impl From<PasswordError> for Error {
    fn from(err: PasswordError) -> Error {
        match err {
            PasswordError::Busy => Error::Busy,
            PasswordError::Failed(what) => Error::Internal(what),
        }
    }
}

/// How long a pending registration must have been left before another person may take it
/// over: far longer than a Register call may take (its deadline), so an attempt in progress is
/// never taken over.
pub const PENDING_ABANDONED_AFTER_SECS: u64 = 60;

/// Whether a pending registration last taken at `updated_at` is abandoned at `now`
/// (microseconds).
pub fn pending_is_abandoned(updated_at: i64, now: i64) -> bool {
    now.saturating_sub(updated_at) >= secs_to_micros(PENDING_ABANDONED_AFTER_SECS)
}

/// A checked Register request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Trimmed, lower-cased email.
    pub email: String,
    /// The password exactly as given.
    pub password: String,
    /// Trimmed display name.
    pub display_name: String,
}

/// Checks and normalises a Register request; the error names the field at fault.
pub fn validate_registration(
    email: &str,
    password: String,
    display_name: &str,
) -> Result<Registration, FieldError> {
    let email = weft_mesh::validate::email("email", email)?;
    check_password(&password)?;
    let display_name = weft_mesh::validate::text("display_name", display_name, 1, 200)?.to_owned();
    Ok(Registration {
        email,
        password,
        display_name,
    })
}

/// A password of 8..=1024 characters; not trimmed, because spaces may be part of it.
pub fn check_password(password: &str) -> Result<(), FieldError> {
    let len = password.chars().count();
    if (PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&len) {
        Ok(())
    } else {
        Err(FieldError::new(
            "password",
            format!("must be between {PASSWORD_MIN_CHARS} and {PASSWORD_MAX_CHARS} characters"),
        ))
    }
}

/// The `role` claim for a stored profile role; anything but admin is an ordinary user.
pub fn role_claim(role: UserRole) -> &'static str {
    match role {
        UserRole::Admin => "admin",
        _ => "user",
    }
}

/// Seconds since the epoch, for token claims.
pub fn unix_secs(now_micros: i64) -> u64 {
    u64::try_from(now_micros.div_euclid(1_000_000)).unwrap_or(0)
}

/// Claims of an access token for `user_id` with `role`, issued at `iat` (seconds).
pub fn access_claims(jwt: &JwtConfig, user_id: &str, role: UserRole, iat: u64) -> Claims {
    Claims {
        iss: jwt.issuer.clone(),
        aud: jwt.audience.clone(),
        sub: user_id.to_owned(),
        role: role_claim(role).to_owned(),
        iat,
        exp: iat.saturating_add(jwt.access_ttl_secs),
        jti: uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Claims of a service token that lets weft-auth call `audience` (another service's name).
pub fn service_claims(jwt: &JwtConfig, audience: &str, iat: u64) -> Claims {
    Claims {
        iss: jwt.issuer.clone(),
        aud: audience.to_owned(),
        sub: SERVICE_SUBJECT.to_owned(),
        role: weft_mesh::auth::Role::Service.as_str().to_owned(),
        iat,
        exp: iat.saturating_add(jwt.service_token_ttl_secs.max(1)),
        jti: uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// A new refresh token: 32 random bytes, base64url without padding.
pub fn new_refresh_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a refresh token: lower-case hex SHA-256 of its text.
pub fn refresh_token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// What a refresh token presented for exchange may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshState {
    /// Unused, unexpired and in a live family: it may be exchanged, once.
    Live,
    /// Exchanged before: a second use means it leaked, so its family must be revoked.
    Reused,
    /// Expired, or its family was revoked: refused, and nothing else changes.
    Dead,
}

/// The state of a refresh token that expires at `expires_at`, in a family whose absolute
/// lifetime ends at `family_ends_at`, at `now` (microseconds). Reuse is judged first: a used
/// token presented again revokes its family even when it has expired or the family is revoked
/// already.
pub fn refresh_state(
    used: bool,
    revoked_at: Option<i64>,
    expires_at: i64,
    family_ends_at: i64,
    now: i64,
) -> RefreshState {
    if used {
        RefreshState::Reused
    } else if revoked_at.is_some() || expires_at.min(family_ends_at) <= now {
        RefreshState::Dead
    } else {
        RefreshState::Live
    }
}

/// `secs` as microseconds, saturating.
pub fn secs_to_micros(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_registration_is_abandoned_after_a_minute() {
        let minute = secs_to_micros(60);
        assert!(!pending_is_abandoned(1_000, 1_000));
        assert!(!pending_is_abandoned(1_000, 1_000 + minute - 1));
        assert!(pending_is_abandoned(1_000, 1_000 + minute));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed_with_sha256() {
        let a = new_refresh_token().unwrap();
        let b = new_refresh_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes base64url without padding");
        assert!(!a.contains('=') && !a.contains('+') && !a.contains('/'));
        assert_eq!(
            refresh_token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(refresh_token_hash(&a), refresh_token_hash(&a.clone()));
        assert_ne!(refresh_token_hash(&a), refresh_token_hash(&b));
    }

    #[test]
    fn registration_names_the_bad_field() {
        let ok = validate_registration(" Ada@Example.com ", "12345678".into(), " Ada ").unwrap();
        assert_eq!(ok.email, "ada@example.com");
        assert_eq!(ok.display_name, "Ada");
        let field = |r: Result<Registration, FieldError>| r.unwrap_err().field;
        assert_eq!(
            field(validate_registration("nope", "12345678".into(), "A")),
            "email"
        );
        assert_eq!(
            field(validate_registration("a@b.io", "1234567".into(), "A")),
            "password"
        );
        let long = "x".repeat(1025);
        assert_eq!(
            field(validate_registration("a@b.io", long, "A")),
            "password"
        );
        // Characters, not bytes: 8 two-byte characters are enough.
        assert!(validate_registration("a@b.io", "éééééééé".into(), "A").is_ok());
        assert_eq!(
            field(validate_registration("a@b.io", "12345678".into(), " ")),
            "display_name"
        );
        let name = "n".repeat(201);
        assert_eq!(
            field(validate_registration("a@b.io", "12345678".into(), &name)),
            "display_name"
        );
    }

    #[test]
    fn claims_follow_the_config() {
        let jwt = JwtConfig::default();
        let access = access_claims(&jwt, "u1", UserRole::Admin, 1_000);
        assert_eq!((access.sub.as_str(), access.role.as_str()), ("u1", "admin"));
        assert_eq!((access.iss.as_str(), access.aud.as_str()), ("weft", "weft"));
        assert_eq!(access.exp, 1_000 + jwt.access_ttl_secs);
        assert_eq!(access.jti.len(), 32);
        let service = service_claims(&jwt, "weft-user", 1_000);
        assert_eq!(service.sub, SERVICE_SUBJECT);
        assert_eq!(
            (service.role.as_str(), service.aud.as_str()),
            ("service", "weft-user")
        );
        assert_eq!(service.exp, 1_000 + jwt.service_token_ttl_secs);
        assert_eq!(role_claim(UserRole::Unspecified), "user");
    }

    #[test]
    fn a_refresh_token_is_live_until_used_expired_or_revoked() {
        use RefreshState::*;
        let now = 1_000;
        let far = now + 1_000;
        assert_eq!(refresh_state(false, None, now + 1, far, now), Live);
        assert_eq!(
            refresh_state(false, None, now, far, now),
            Dead,
            "expiry is exclusive"
        );
        assert_eq!(refresh_state(false, Some(now - 1), now + 1, far, now), Dead);
        assert_eq!(refresh_state(true, None, now + 1, far, now), Reused);
        // A reused token revokes its family whatever else is true of it.
        assert_eq!(
            refresh_state(true, Some(now - 1), now - 1, far, now),
            Reused
        );
        // An unexpired token of a family past its absolute lifetime is dead too.
        assert_eq!(refresh_state(false, None, far, now, now), Dead);
        assert_eq!(refresh_state(false, None, far, now + 1, now), Live);
    }

    #[test]
    fn statuses_hide_internal_details() {
        let status = Status::from(Error::internal("secret detail"));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = Status::from(Error::EmailTaken);
        assert_eq!(status.code(), tonic::Code::AlreadyExists);
        assert_eq!(status.message(), "email already registered");
        let status = Status::from(Error::UserServiceUnavailable);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let status = Status::from(Error::from(PasswordError::Busy));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let pushback = status.metadata().get(weft_mesh::grpc::RETRY_PUSHBACK);
        assert_eq!(pushback.and_then(|v| v.to_str().ok()), Some("1000"));
    }
}
