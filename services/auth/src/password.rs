//! Argon2id password hashing, off the async runtime.

use crate::settings::Argon2Settings;
use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{
        Error as HashError, PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash,
    },
};

use crate::domain::Error;

/// Hashes and verifies passwords with the configured Argon2id cost.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against for unknown emails so that a Login for an
    /// unknown account costs as much as one for a known account.
    dummy_hash: String,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").finish_non_exhaustive()
    }
}

impl Passwords {
    /// A hasher with `config`'s cost; computes the dummy hash (one full hash) first.
    pub async fn new(config: &Argon2Settings) -> Result<Self, Error> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|e| Error::internal(format!("invalid argon2 parameters: {e}")))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let dummy_password = crate::domain::hex(&seed);
        let dummy_hash = hash_blocking(params.clone(), dummy_password).await?;
        Ok(Self { params, dummy_hash })
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        hash_blocking(self.params.clone(), password).await
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Error> {
        let span = weft_mesh::telemetry::span("argon2.verify");
        tokio::task::spawn_blocking(move || span.in_scope(|| verify_sync(&password, &hash)))
            .await
            .map_err(|e| Error::internal(format!("password task failed: {e}")))?
    }

    /// Spends the time of one verification on nothing, for unknown accounts.
    pub async fn verify_dummy(&self, password: String) -> Result<(), Error> {
        self.verify(password, self.dummy_hash.clone())
            .await
            .map(drop)
    }
}

fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

async fn hash_blocking(params: Params, password: String) -> Result<String, Error> {
    let span = weft_mesh::telemetry::span("argon2.hash");
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            argon2(params)
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| Error::internal(format!("cannot hash password: {e}")))
        })
    })
    .await
    .map_err(|e| Error::internal(format!("password task failed: {e}")))?
}

fn verify_sync(password: &str, hash: &str) -> Result<bool, Error> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| Error::internal(format!("stored password hash unreadable: {e}")))?;
    // The hash carries its own parameters, so old hashes verify after a cost change.
    match argon2(Params::default()).verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(HashError::PasswordInvalid) => Ok(false),
        Err(e) => Err(Error::internal(format!("cannot verify password: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Argon2Settings {
        Argon2Settings {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let passwords = Passwords::new(&cheap()).await.unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert!(
            passwords
                .verify("correct horse".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(!passwords.verify("wrong horse".into(), hash).await.unwrap());
        passwords.verify_dummy("anything".into()).await.unwrap();
        assert!(
            passwords
                .verify("x".into(), "not a hash".into())
                .await
                .is_err()
        );
    }
}
