//! SQL of the auth service: signing keys, credentials and refresh tokens.
//!
//! Writes and transactions run on the `write` pool; the caller picks the pool for reads.

use sqlx::{AnyPool, Row as _, any::AnyRow};
use tracing::Instrument as _;
use weft_mesh::db::{self, Engine};

use crate::domain::{self, Error, RefreshState};

// === signing keys ===

/// A row of `signing_keys`.
#[derive(Clone)]
pub struct StoredKey {
    /// Key id: 16 hex characters of SHA-256 of the public key.
    pub kid: String,
    /// Standard base64 of the PKCS#8 v1 DER private key.
    pub private_key: String,
    /// base64url (no padding) of the 32-byte public key.
    pub public_x: String,
    /// When the key was made, in microseconds.
    pub created_at: i64,
    /// When the key stopped signing, in microseconds.
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("public_x", &self.public_x)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// Every stored signing key.
pub async fn load_keys(pool: &AnyPool) -> Result<Vec<StoredKey>, Error> {
    let rows = sqlx::query(
        "SELECT kid, private_key, public_x, created_at, retired_at FROM signing_keys \
         ORDER BY created_at DESC, kid DESC",
    )
    .fetch_all(pool)
    .instrument(db::span(Engine::of_pool(pool), "SELECT", "signing_keys"))
    .await?;
    rows.iter().map(key_from_row).collect()
}

fn key_from_row(row: &AnyRow) -> Result<StoredKey, Error> {
    Ok(StoredKey {
        kid: row.try_get("kid")?,
        private_key: row.try_get("private_key")?,
        public_x: row.try_get("public_x")?,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
    })
}

/// Stores `key` unless an unretired key exists; whether it was stored.
pub async fn insert_first_key(pool: &AnyPool, key: &StoredKey) -> Result<bool, Error> {
    let result = sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, public_x, created_at, retired_at) \
         SELECT $1, $2, $3, $4, NULL \
         WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
    )
    .bind(&key.kid)
    .bind(&key.private_key)
    .bind(&key.public_x)
    .bind(key.created_at)
    .execute(pool)
    .instrument(db::span(Engine::of_pool(pool), "INSERT", "signing_keys"))
    .await;
    match result {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(err) if weft_mesh::db::is_unique_violation(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Schedules every unretired key to retire at `retire_at` and stores `key`, which takes over
/// signing then.
pub async fn rotate_key(pool: &AnyPool, key: &StoredKey, retire_at: i64) -> Result<(), Error> {
    let engine = Engine::of_pool(pool);
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
        .bind(retire_at)
        .execute(&mut *tx)
        .instrument(db::span(engine, "UPDATE", "signing_keys"))
        .await?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, public_x, created_at, retired_at) \
         VALUES ($1, $2, $3, $4, NULL)",
    )
    .bind(&key.kid)
    .bind(&key.private_key)
    .bind(&key.public_x)
    .bind(key.created_at)
    .execute(&mut *tx)
    .instrument(db::span(engine, "INSERT", "signing_keys"))
    .await?;
    tx.commit().await?;
    Ok(())
}

// === credentials ===

/// A completed registration.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The profile's id in weft-user.
    pub user_id: String,
    /// Argon2id PHC string.
    pub password_hash: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// The completed credential of `email`, if any; pending registrations are not credentials.
pub async fn completed_credential(
    pool: &AnyPool,
    email: &str,
) -> Result<Option<Credential>, Error> {
    let row = sqlx::query(
        "SELECT user_id, password_hash FROM credentials WHERE email = $1 AND user_id IS NOT NULL",
    )
    .bind(email)
    .fetch_optional(pool)
    .instrument(db::span(Engine::of_pool(pool), "SELECT", "credentials"))
    .await?;
    row.map(|row| {
        Ok(Credential {
            user_id: row.try_get("user_id")?,
            password_hash: row.try_get("password_hash")?,
        })
    })
    .transpose()
}

/// What [`begin_registration`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// A new pending registration: the creation key to send to weft-user.
    Started(String),
    /// Another attempt's registration of the email, still pending.
    Pending(PendingRegistration),
}

/// A registration that has not completed (its profile may or may not exist in weft-user).
#[derive(Clone, PartialEq, Eq)]
pub struct PendingRegistration {
    /// The attempt's Argon2id PHC string.
    pub password_hash: String,
    /// The creation key its profile is (or will be) made with.
    pub creation_key: String,
    /// When an attempt last took it, in microseconds.
    pub updated_at: i64,
}

impl std::fmt::Debug for PendingRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRegistration")
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

/// Records a pending registration of `email` with `password_hash`, or reports the pending one
/// another attempt left, without touching it: whether that one may be taken over is the
/// caller's rule ([`resume_registration`] takes it). [`Error::EmailTaken`] when the email's
/// registration is complete.
pub async fn begin_registration(
    pool: &AnyPool,
    email: &str,
    password_hash: &str,
    now: i64,
) -> Result<Begun, Error> {
    let creation_key = uuid::Uuid::new_v4().simple().to_string();
    let engine = Engine::of_pool(pool);
    let inserted = sqlx::query(
        "INSERT INTO credentials (email, password_hash, user_id, creation_key, created_at, updated_at) \
         VALUES ($1, $2, NULL, $3, $4, $4) ON CONFLICT (email) DO NOTHING",
    )
    .bind(email)
    .bind(password_hash)
    .bind(&creation_key)
    .bind(now)
    .execute(pool)
    .instrument(db::span(engine, "INSERT", "credentials"))
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Begun::Started(creation_key));
    }
    // On the writer: it has seen the row that made the insert do nothing.
    let row = sqlx::query(
        "SELECT password_hash, creation_key, updated_at FROM credentials \
         WHERE email = $1 AND user_id IS NULL",
    )
    .bind(email)
    .fetch_optional(pool)
    .instrument(db::span(engine, "SELECT", "credentials"))
    .await?;
    match row {
        Some(row) => Ok(Begun::Pending(PendingRegistration {
            password_hash: row.try_get("password_hash")?,
            creation_key: row.try_get("creation_key")?,
            updated_at: row.try_get("updated_at")?,
        })),
        None => Err(Error::EmailTaken),
    }
}

/// Takes over the pending registration of `email`, provided it still holds `seen_hash` (the
/// hash the caller judged it by: no other attempt took it meanwhile), storing `password_hash`;
/// returns its creation key. [`Error::EmailTaken`] when it completed or was taken meanwhile.
pub async fn resume_registration(
    pool: &AnyPool,
    email: &str,
    seen_hash: &str,
    password_hash: &str,
    now: i64,
) -> Result<String, Error> {
    let row = sqlx::query(
        "UPDATE credentials SET password_hash = $1, updated_at = $2 \
         WHERE email = $3 AND user_id IS NULL AND password_hash = $4 RETURNING creation_key",
    )
    .bind(password_hash)
    .bind(now)
    .bind(email)
    .bind(seen_hash)
    .fetch_optional(pool)
    .instrument(db::span(Engine::of_pool(pool), "UPDATE", "credentials"))
    .await?;
    match row {
        Some(row) => Ok(row.try_get("creation_key")?),
        None => Err(Error::EmailTaken),
    }
}

/// Completes the pending registration of `email` with the profile `user_id`. Only the attempt
/// whose password hash is stored wins; `false` means another attempt finished first.
pub async fn complete_registration(
    pool: &AnyPool,
    email: &str,
    password_hash: &str,
    user_id: &str,
    now: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE credentials SET user_id = $1, updated_at = $2 \
         WHERE email = $3 AND password_hash = $4 AND user_id IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .bind(email)
    .bind(password_hash)
    .execute(pool)
    .instrument(db::span(Engine::of_pool(pool), "UPDATE", "credentials"))
    .await?;
    Ok(done.rows_affected() == 1)
}

// === refresh tokens ===

/// A stored refresh token with its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// The family it belongs to.
    pub family_id: String,
    /// The user the family signs in.
    pub user_id: String,
    /// Expiry, in microseconds.
    pub expires_at: i64,
    /// When it was exchanged, if it was.
    pub used_at: Option<i64>,
    /// When its family was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// When its family started (the sign-in), in microseconds.
    pub family_created_at: i64,
}

/// Starts a new family for `user_id` with its first token.
pub async fn start_family(
    pool: &AnyPool,
    user_id: &str,
    token_hash: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), Error> {
    let family_id = uuid::Uuid::new_v4().simple().to_string();
    let engine = Engine::of_pool(pool);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO refresh_families (id, user_id, created_at, revoked_at) VALUES ($1, $2, $3, NULL)",
    )
    .bind(&family_id)
    .bind(user_id)
    .bind(now)
    .execute(&mut *tx)
    .instrument(db::span(engine, "INSERT", "refresh_families"))
    .await?;
    insert_token(&mut tx, token_hash, &family_id, now, expires_at).await?;
    tx.commit().await?;
    Ok(())
}

async fn insert_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    token_hash: &str,
    family_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), Error> {
    let engine = Engine::of_connection(tx);
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, created_at, expires_at, used_at) \
         VALUES ($1, $2, $3, $4, NULL)",
    )
    .bind(token_hash)
    .bind(family_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .instrument(db::span(engine, "INSERT", "refresh_tokens"))
    .await?;
    Ok(())
}

/// The refresh token stored under `token_hash`, with its family's state.
pub async fn find_refresh(pool: &AnyPool, token_hash: &str) -> Result<Option<RefreshToken>, Error> {
    let row = sqlx::query(
        "SELECT t.family_id, f.user_id, t.expires_at, t.used_at, f.revoked_at, \
         f.created_at AS family_created_at \
         FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
         WHERE t.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .instrument(db::span(Engine::of_pool(pool), "SELECT", "refresh_tokens"))
    .await?;
    row.map(|row| {
        Ok(RefreshToken {
            family_id: row.try_get("family_id")?,
            user_id: row.try_get("user_id")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
            revoked_at: row.try_get("revoked_at")?,
            family_created_at: row.try_get("family_created_at")?,
        })
    })
    .transpose()
}

/// What became of a refresh token presented for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// It was live; it is now used and the new token is stored in its family.
    Rotated,
    /// It had been used already: its family is now revoked.
    Reused,
    /// It is unknown, expired, or its family is revoked.
    Dead,
}

/// Exchanges the token `old_hash` for `new_hash` in one transaction: marks the old one used
/// (only if it was not), and stores the new one in the same family, expiring at `expires_at`
/// or at the end of the family's lifetime (`family_max` after it started), whichever is first.
/// Presenting a used token revokes its family; a family past its lifetime is dead.
pub async fn rotate_refresh(
    pool: &AnyPool,
    old_hash: &str,
    new_hash: &str,
    now: i64,
    expires_at: i64,
    family_max: i64,
) -> Result<Rotation, Error> {
    let engine = Engine::of_pool(pool);
    let mut tx = pool.begin().await?;
    let marked = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(now)
    .bind(old_hash)
    .execute(&mut *tx)
    .instrument(db::span(engine, "UPDATE", "refresh_tokens"))
    .await?
    .rows_affected();
    let row = sqlx::query(
        "SELECT t.family_id, t.expires_at, f.revoked_at, f.created_at AS family_created_at \
         FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
         WHERE t.token_hash = $1",
    )
    .bind(old_hash)
    .fetch_optional(&mut *tx)
    .instrument(db::span(engine, "SELECT", "refresh_tokens"))
    .await?;
    let Some(row) = row else {
        return Ok(Rotation::Dead);
    };
    let family_id: String = row.try_get("family_id")?;
    let token_expires_at: i64 = row.try_get("expires_at")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let family_created_at: i64 = row.try_get("family_created_at")?;
    let family_ends_at = family_created_at.saturating_add(family_max);
    // The mark above is the atomic test of "used": it changed nothing if the token was.
    match domain::refresh_state(
        marked == 0,
        revoked_at,
        token_expires_at,
        family_ends_at,
        now,
    ) {
        RefreshState::Reused => {
            revoke_family_in(&mut tx, &family_id, now).await?;
            tx.commit().await?;
            return Ok(Rotation::Reused);
        }
        // Dropping the transaction rolls the mark back; the token is dead either way.
        RefreshState::Dead => return Ok(Rotation::Dead),
        RefreshState::Live => {}
    }
    let expires_at = expires_at.min(family_ends_at);
    insert_token(&mut tx, new_hash, &family_id, now, expires_at).await?;
    tx.commit().await?;
    Ok(Rotation::Rotated)
}

async fn revoke_family_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    family_id: &str,
    now: i64,
) -> Result<(), Error> {
    let engine = Engine::of_connection(tx);
    sqlx::query("UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(family_id)
        .execute(&mut **tx)
        .instrument(db::span(engine, "UPDATE", "refresh_families"))
        .await?;
    Ok(())
}

/// Revokes the family `family_id` (no-op when already revoked).
pub async fn revoke_family(pool: &AnyPool, family_id: &str, now: i64) -> Result<(), Error> {
    sqlx::query("UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(family_id)
        .execute(pool)
        .instrument(db::span(
            Engine::of_pool(pool),
            "UPDATE",
            "refresh_families",
        ))
        .await?;
    Ok(())
}

/// Revokes the family of the token stored under `token_hash`, if there is one.
pub async fn revoke_family_of(pool: &AnyPool, token_hash: &str, now: i64) -> Result<(), Error> {
    sqlx::query(
        "UPDATE refresh_families SET revoked_at = $1 WHERE revoked_at IS NULL \
         AND id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
    )
    .bind(now)
    .bind(token_hash)
    .execute(pool)
    .instrument(db::span(
        Engine::of_pool(pool),
        "UPDATE",
        "refresh_families",
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The SQL runs against SQLite always, and PostgreSQL too when `WEFT_TEST_POSTGRES_URL`
    //! names a server the test may create databases on.

    use weft_mesh::db::Database;
    use weft_testkit::TestDatabase;

    use super::*;
    use crate::keys::generate_key;

    const SECOND: i64 = 1_000_000;
    /// A family lifetime no scenario reaches unless it means to.
    const DAY: i64 = 86_400 * SECOND;

    /// A fresh, migrated database per engine (SQLite, and PostgreSQL when
    /// `WEFT_TEST_POSTGRES_URL` is set), with what removes it after the scenario.
    async fn databases() -> Vec<(Database, TestDatabase)> {
        let mut databases = Vec::new();
        for test_db in TestDatabase::each().await {
            let db = Database::open(test_db.url(), 2, &crate::MIGRATOR)
                .await
                .unwrap();
            databases.push((db, test_db));
        }
        databases
    }

    async fn drop_database(db: Database, test_db: TestDatabase) {
        db.close().await;
        test_db.remove().await;
    }

    #[tokio::test]
    async fn the_first_key_is_created_once_and_rotation_retires_it() {
        for (db, cleanup) in databases().await {
            let first = generate_key(10).unwrap();
            assert!(insert_first_key(&db.write, &first).await.unwrap());
            // A second process racing to create the first key loses and uses the winner's.
            let racer = generate_key(11).unwrap();
            assert!(!insert_first_key(&db.write, &racer).await.unwrap());
            let keys = load_keys(&db.read).await.unwrap();
            assert_eq!(keys.len(), 1);
            assert_eq!(
                (keys[0].kid.as_str(), keys[0].retired_at),
                (first.kid.as_str(), None)
            );

            let next = generate_key(20).unwrap();
            rotate_key(&db.write, &next, 20).await.unwrap();
            let keys = load_keys(&db.read).await.unwrap();
            let kids: Vec<(&str, Option<i64>)> = keys
                .iter()
                .map(|k| (k.kid.as_str(), k.retired_at))
                .collect();
            assert_eq!(
                kids,
                [(next.kid.as_str(), None), (first.kid.as_str(), Some(20))]
            );
            assert_eq!(keys[0].private_key, next.private_key);
            drop_database(db, cleanup).await;
        }
    }

    #[tokio::test]
    async fn a_pending_registration_is_taken_over_only_through_its_hash() {
        for (db, cleanup) in databases().await {
            let email = "ada@example.com";
            let Begun::Started(key) = begin_registration(&db.write, email, "hash-1", 1)
                .await
                .unwrap()
            else {
                panic!("the first attempt starts the registration");
            };
            assert_eq!(completed_credential(&db.read, email).await.unwrap(), None);
            // A second attempt is told about the pending one and changes nothing.
            let Begun::Pending(pending) = begin_registration(&db.write, email, "hash-2", 2)
                .await
                .unwrap()
            else {
                panic!("the second attempt finds the first one pending");
            };
            assert_eq!(
                (
                    pending.password_hash.as_str(),
                    pending.creation_key.as_str()
                ),
                ("hash-1", key.as_str())
            );
            assert_eq!(pending.updated_at, 1);
            // Taking it over keeps the creation key, so the same profile is found again...
            let resumed = resume_registration(&db.write, email, "hash-1", "hash-2", 3)
                .await
                .unwrap();
            assert_eq!(resumed, key);
            // ...and only one attempt can take it over from what it saw.
            assert!(matches!(
                resume_registration(&db.write, email, "hash-1", "hash-3", 4).await,
                Err(Error::EmailTaken)
            ));
            // The attempt whose hash was replaced loses; the one holding it completes.
            assert!(
                !complete_registration(&db.write, email, "hash-1", "u1", 5)
                    .await
                    .unwrap()
            );
            assert!(
                complete_registration(&db.write, email, "hash-2", "u1", 5)
                    .await
                    .unwrap()
            );
            let credential = completed_credential(&db.read, email)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(credential.user_id, "u1");
            assert_eq!(credential.password_hash, "hash-2");
            assert!(matches!(
                begin_registration(&db.write, email, "hash-3", 6).await,
                Err(Error::EmailTaken)
            ));
            assert!(matches!(
                resume_registration(&db.write, email, "hash-2", "hash-3", 6).await,
                Err(Error::EmailTaken)
            ));
            drop_database(db, cleanup).await;
        }
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
        for (db, cleanup) in databases().await {
            let now = 1_000 * SECOND;
            let expires = now + 60 * SECOND;
            start_family(&db.write, "u1", "t1", now, expires)
                .await
                .unwrap();
            let t1 = find_refresh(&db.read, "t1").await.unwrap().unwrap();
            assert_eq!(
                (t1.user_id.as_str(), t1.used_at, t1.revoked_at),
                ("u1", None, None)
            );
            assert_eq!(find_refresh(&db.read, "nope").await.unwrap(), None);

            let rotated = rotate_refresh(&db.write, "t1", "t2", now + 1, expires, DAY)
                .await
                .unwrap();
            assert_eq!(rotated, Rotation::Rotated);
            let t2 = find_refresh(&db.read, "t2").await.unwrap().unwrap();
            assert_eq!(t2.family_id, t1.family_id);
            assert_eq!(
                find_refresh(&db.read, "t1").await.unwrap().unwrap().used_at,
                Some(now + 1)
            );

            // t1 again: reuse. The family dies, t2 with it.
            let reused = rotate_refresh(&db.write, "t1", "t3", now + 2, expires, DAY)
                .await
                .unwrap();
            assert_eq!(reused, Rotation::Reused);
            assert!(find_refresh(&db.read, "t3").await.unwrap().is_none());
            assert_eq!(
                find_refresh(&db.read, "t2")
                    .await
                    .unwrap()
                    .unwrap()
                    .revoked_at,
                Some(now + 2)
            );
            let dead = rotate_refresh(&db.write, "t2", "t4", now + 3, expires, DAY)
                .await
                .unwrap();
            assert_eq!(dead, Rotation::Dead);
            // The dead token was not spent by the failed attempt.
            assert_eq!(
                find_refresh(&db.read, "t2").await.unwrap().unwrap().used_at,
                None
            );
            assert_eq!(
                rotate_refresh(&db.write, "nope", "t5", now, expires, DAY)
                    .await
                    .unwrap(),
                Rotation::Dead
            );
            drop_database(db, cleanup).await;
        }
    }

    #[tokio::test]
    async fn expired_tokens_are_dead_and_logout_revokes_the_family() {
        for (db, cleanup) in databases().await {
            let now = 1_000 * SECOND;
            start_family(&db.write, "u1", "old", now - 10 * SECOND, now)
                .await
                .unwrap();
            let expired = rotate_refresh(&db.write, "old", "x", now, now + SECOND, DAY)
                .await
                .unwrap();
            assert_eq!(expired, Rotation::Dead);

            start_family(&db.write, "u1", "live", now, now + 60 * SECOND)
                .await
                .unwrap();
            revoke_family_of(&db.write, "live", now + 1).await.unwrap();
            revoke_family_of(&db.write, "live", now + 2).await.unwrap();
            revoke_family_of(&db.write, "unknown", now + 2)
                .await
                .unwrap();
            let live = find_refresh(&db.read, "live").await.unwrap().unwrap();
            assert_eq!(live.revoked_at, Some(now + 1));
            let after = rotate_refresh(&db.write, "live", "y", now + 3, now + SECOND, DAY)
                .await
                .unwrap();
            assert_eq!(after, Rotation::Dead);
            // Another family of the same user is untouched.
            assert_eq!(
                find_refresh(&db.read, "old")
                    .await
                    .unwrap()
                    .unwrap()
                    .revoked_at,
                None
            );
            drop_database(db, cleanup).await;
        }
    }

    #[tokio::test]
    async fn a_family_cannot_be_refreshed_past_its_absolute_lifetime() {
        for (db, cleanup) in databases().await {
            let start = 1_000 * SECOND;
            let max = 60 * SECOND;
            // Refresh tokens live a day each: only the family's lifetime stops them.
            start_family(&db.write, "u1", "t1", start, start + DAY)
                .await
                .unwrap();
            let rotated =
                rotate_refresh(&db.write, "t1", "t2", start + 30 * SECOND, start + DAY, max)
                    .await
                    .unwrap();
            assert_eq!(rotated, Rotation::Rotated);
            // The new token is cut to the family's end, not given a full day.
            let t2 = find_refresh(&db.read, "t2").await.unwrap().unwrap();
            assert_eq!(t2.expires_at, start + max);
            assert_eq!(t2.family_created_at, start);
            let late = rotate_refresh(&db.write, "t2", "t3", start + max, start + max + DAY, max)
                .await
                .unwrap();
            assert_eq!(late, Rotation::Dead, "the family's lifetime is over");
            assert!(find_refresh(&db.read, "t3").await.unwrap().is_none());
            drop_database(db, cleanup).await;
        }
    }
}
