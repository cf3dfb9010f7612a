//! Argon2id password hashing, off the async runtime and bounded.
//!
//! Each hash holds `argon2.memory_kib` of memory for its whole run, so hashes running at once
//! are what weft-auth's memory grows with: unbounded, 200 concurrent logins took it past
//! 3 GiB. [`Passwords`] runs at most `auth.password_workers` of them at a time (one per core by
//! default: more would not finish sooner) and lets at most `auth.password_queue` more wait for a
//! worker; a call beyond that fails at once with [`PasswordError::Busy`], which the service
//! answers with RESOURCE_EXHAUSTED, so a burst costs a bounded amount of memory and no call
//! waits long.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{
        Error as HashError, PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash,
    },
};
use base64::Engine as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::settings::{Argon2Settings, AuthSettings};

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every worker is busy and the wait queue is full: try again shortly.
    #[error("too many password checks in progress")]
    Busy,
    /// Hashing itself failed (bad parameters, an unreadable stored hash, no randomness).
    #[error("{0}")]
    Failed(String),
}

/// Hashes and verifies passwords with the configured Argon2id cost, a bounded number at a
/// time.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against for unknown emails so that a Login for an
    /// unknown account costs as much as one for a known account.
    dummy_hash: String,
    gate: Gate,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").finish_non_exhaustive()
    }
}

impl Passwords {
    /// A hasher with `settings`' cost and bounds; computes the dummy hash (one full hash) first.
    pub async fn new(settings: &AuthSettings) -> Result<Self, PasswordError> {
        let params = params(&settings.argon2)?;
        let gate = Gate::new(settings.password_workers(), settings.password_queue);
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| PasswordError::Failed(format!("no randomness: {e}")))?;
        let dummy_password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed);
        let dummy_hash = gate.run(hash_job(params.clone(), dummy_password)).await??;
        Ok(Self {
            params,
            dummy_hash,
            gate,
        })
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.gate
            .run(hash_job(self.params.clone(), password))
            .await?
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, PasswordError> {
        let span = weft_mesh::telemetry::span("argon2.verify");
        self.gate
            .run(move || span.in_scope(|| verify_sync(&password, &hash)))
            .await?
    }

    /// Spends the time of one verification on nothing, for unknown accounts.
    pub async fn verify_dummy(&self, password: String) -> Result<(), PasswordError> {
        self.verify(password, self.dummy_hash.clone())
            .await
            .map(drop)
    }
}

fn params(config: &Argon2Settings) -> Result<Params, PasswordError> {
    Params::new(
        config.memory_kib,
        config.iterations,
        config.parallelism,
        None,
    )
    .map_err(|e| PasswordError::Failed(format!("invalid argon2 parameters: {e}")))
}

fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_job(
    params: Params,
    password: String,
) -> impl FnOnce() -> Result<String, PasswordError> + Send + 'static {
    let span = weft_mesh::telemetry::span("argon2.hash");
    move || {
        span.in_scope(|| {
            argon2(params)
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| PasswordError::Failed(format!("cannot hash password: {e}")))
        })
    }
}

fn verify_sync(password: &str, hash: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| PasswordError::Failed(format!("stored password hash unreadable: {e}")))?;
    // The hash carries its own parameters, so old hashes verify after a cost change.
    match argon2(Params::default()).verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(HashError::PasswordInvalid) => Ok(false),
        Err(e) => Err(PasswordError::Failed(format!(
            "cannot verify password: {e}"
        ))),
    }
}

// === impl Gate ===

/// Admits a bounded number of blocking jobs: `workers` run, `queue` more wait, the rest are
/// refused at once.
#[derive(Clone)]
struct Gate {
    /// One permit per job admitted (running or waiting): `workers + queue` in all.
    admitted: Arc<Semaphore>,
    /// One permit per running job.
    workers: Arc<Semaphore>,
}

impl Gate {
    fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        Self {
            admitted: Arc::new(Semaphore::new(workers.saturating_add(queue))),
            workers: Arc::new(Semaphore::new(workers)),
        }
    }

    /// Runs `job` on the blocking pool once a worker is free; [`PasswordError::Busy`] at once
    /// when the queue is full. Cancel-safe: a caller that goes away while its job runs (a
    /// client that hung up) does not free the job's worker before the job ends, so the bound
    /// holds whatever the callers do.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| PasswordError::Busy)?;
        let worker = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PasswordError::Failed("password workers closed".into()))?;
        let permits: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (admitted, worker);
        tokio::task::spawn_blocking(move || {
            let _permits = permits;
            job()
        })
        .await
        .map_err(|e| PasswordError::Failed(format!("password task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cheap() -> AuthSettings {
        AuthSettings {
            argon2: Argon2Settings {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            ..AuthSettings::default()
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

    #[tokio::test]
    async fn the_gate_runs_workers_queues_a_few_and_refuses_the_rest() {
        // One worker and one queue place: a third job is refused while two are in.
        let gate = Gate::new(1, 1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let gate = gate.clone();
            async move { gate.run(move || wait.recv().is_ok()).await }
        });
        // Let the first job take the worker.
        while gate.workers.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let queued = tokio::spawn({
            let gate = gate.clone();
            async move { gate.run(|| 2).await }
        });
        while gate.admitted.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(gate.run(|| 3).await, Err(PasswordError::Busy)));
        release.send(()).unwrap();
        assert!(running.await.unwrap().unwrap());
        assert_eq!(queued.await.unwrap().unwrap(), 2);
        // Room again once they are done.
        assert_eq!(gate.run(|| 4).await.unwrap(), 4);
    }
}
