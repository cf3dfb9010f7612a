//! The `users` table, with SQL that runs alike on SQLite and PostgreSQL.

use sqlx::{Row, any::AnyRow};
use tracing::Instrument as _;
use weft_mesh::{
    db::{self, Database},
    page::Cursor,
};

use weft_proto::user::Role;

use crate::domain::{Changes, NewUser, UserError, UserRecord, role_from_db, role_to_db};

/// Reads and writes profiles.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

/// What [`Store::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new profile was inserted.
    New(UserRecord),
    /// A profile with the same `creation_key` existed; returned unchanged.
    Existing(UserRecord),
}

impl Created {
    /// The profile, new or not.
    pub fn into_record(self) -> UserRecord {
        match self {
            Created::New(r) | Created::Existing(r) => r,
        }
    }
}

impl Store {
    /// A store over `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Creates a profile, or returns the one made earlier with the same `creation_key`.
    /// The email being another profile's is [`UserError::EmailTaken`].
    pub async fn create(&self, new: &NewUser) -> Result<Created, UserError> {
        if let Some(existing) = self
            .by_creation_key(&self.db.read, &new.creation_key)
            .await?
        {
            return Ok(Created::Existing(existing));
        }
        self.insert(new).await
    }

    /// Inserts a profile; losing a race on the unique columns is resolved by re-reading.
    async fn insert(&self, new: &NewUser) -> Result<Created, UserError> {
        let role = role_to_db(new.role)
            .ok_or_else(|| UserError::Corrupt("cannot store ROLE_UNSPECIFIED".into()))?;
        let now = weft_mesh::clock::now_micros();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, display_name, role, creation_key, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             RETURNING id, email, display_name, role, create_time, update_time",
        )
        .bind(&id)
        .bind(&new.email)
        .bind(&new.display_name)
        .bind(role)
        .bind(&new.creation_key)
        .bind(now)
        .fetch_one(&self.db.write)
        .instrument(db::span(self.db.engine, "INSERT", "users"))
        .await;
        match inserted {
            Ok(row) => Ok(Created::New(record(&row)?)),
            Err(err) if weft_mesh::db::is_unique_violation(&err) => {
                // A concurrent call with the same key won the race, or the email is taken.
                // Read on the writer: it has certainly seen the row that made the insert fail.
                match self
                    .by_creation_key(&self.db.write, &new.creation_key)
                    .await?
                {
                    Some(existing) => Ok(Created::Existing(existing)),
                    None => Err(UserError::EmailTaken),
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn by_creation_key(
        &self,
        pool: &sqlx::AnyPool,
        key: &str,
    ) -> Result<Option<UserRecord>, UserError> {
        let row = sqlx::query(
            "SELECT id, email, display_name, role, create_time, update_time \
             FROM users WHERE creation_key = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .instrument(db::span(self.db.engine, "SELECT", "users"))
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// The profile with `id`, if any.
    pub async fn get(&self, id: &str) -> Result<Option<UserRecord>, UserError> {
        let row = sqlx::query(
            "SELECT id, email, display_name, role, create_time, update_time \
             FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.read)
        .instrument(db::span(self.db.engine, "SELECT", "users"))
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// Applies `changes` to the profile `id` and returns it, or `None` if there is no such
    /// profile. Nothing to change returns the profile as it is.
    pub async fn update(
        &self,
        id: &str,
        changes: &Changes,
    ) -> Result<Option<UserRecord>, UserError> {
        if changes.is_empty() {
            return self.get(id).await;
        }
        let role = changes.role.and_then(role_to_db);
        let row = sqlx::query(
            "UPDATE users SET display_name = COALESCE($1, display_name), \
             role = COALESCE($2, role), update_time = $3 WHERE id = $4 \
             RETURNING id, email, display_name, role, create_time, update_time",
        )
        .bind(changes.display_name.as_deref())
        .bind(role)
        .bind(weft_mesh::clock::now_micros())
        .bind(id)
        .fetch_optional(&self.db.write)
        .instrument(db::span(self.db.engine, "UPDATE", "users"))
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// Sets the role of the profile with `email` (already normalised) and returns it, or `None`
    /// if no profile has that email.
    pub async fn set_role_by_email(
        &self,
        email: &str,
        role: Role,
    ) -> Result<Option<UserRecord>, UserError> {
        let role = role_to_db(role)
            .ok_or_else(|| UserError::Corrupt("cannot store ROLE_UNSPECIFIED".into()))?;
        let row = sqlx::query(
            "UPDATE users SET role = $1, update_time = $2 WHERE email = $3 \
             RETURNING id, email, display_name, role, create_time, update_time",
        )
        .bind(role)
        .bind(weft_mesh::clock::now_micros())
        .bind(email)
        .fetch_optional(&self.db.write)
        .instrument(db::span(self.db.engine, "UPDATE", "users"))
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// Up to `limit` profiles after `after` in (create_time, id) order.
    pub async fn list(
        &self,
        after: Option<&Cursor>,
        limit: i64,
    ) -> Result<Vec<UserRecord>, UserError> {
        let rows = match after {
            None => {
                sqlx::query(
                    "SELECT id, email, display_name, role, create_time, update_time \
                     FROM users ORDER BY create_time, id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.db.read)
                .instrument(db::span(self.db.engine, "SELECT", "users"))
                .await?
            }
            Some(cursor) => {
                sqlx::query(
                    "SELECT id, email, display_name, role, create_time, update_time \
                     FROM users WHERE create_time > $1 OR (create_time = $1 AND id > $2) \
                     ORDER BY create_time, id LIMIT $3",
                )
                .bind(cursor.time)
                .bind(&cursor.id)
                .bind(limit)
                .fetch_all(&self.db.read)
                .instrument(db::span(self.db.engine, "SELECT", "users"))
                .await?
            }
        };
        rows.iter().map(record).collect()
    }
}

fn record(row: &AnyRow) -> Result<UserRecord, UserError> {
    let role: String = row.try_get("role")?;
    let id: String = row.try_get("id")?;
    let role = role_from_db(&role)
        .ok_or_else(|| UserError::Corrupt(format!("user {id} has unknown role {role:?}")))?;
    Ok(UserRecord {
        id,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        role,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use weft_testkit::{Backend, TestDatabase};

    use super::*;

    /// A store on a fresh, migrated database per engine: SQLite, and PostgreSQL when
    /// `WEFT_TEST_POSTGRES_URL` is set. The database goes with its guard.
    pub(crate) async fn stores() -> Vec<(Store, TestDatabase)> {
        let mut stores = Vec::new();
        for backend in Backend::all() {
            stores.push(temp_store(&backend).await);
        }
        stores
    }

    /// A store on a fresh, migrated database on `backend`.
    pub(crate) async fn temp_store(backend: &Backend) -> (Store, TestDatabase) {
        let test_db = TestDatabase::fresh(backend).await;
        let db = Database::open(test_db.url(), 2, &crate::MIGRATOR)
            .await
            .expect("open test database");
        (Store::new(db), test_db)
    }

    fn new_user(email: &str, key: &str) -> NewUser {
        NewUser {
            email: email.into(),
            display_name: "Ada".into(),
            role: Role::User,
            creation_key: key.into(),
        }
    }

    #[tokio::test]
    async fn creation_is_idempotent_per_key_and_emails_are_unique() {
        for (store, _db) in stores().await {
            let Created::New(first) = store.create(&new_user("a@x.io", "k1")).await.unwrap() else {
                panic!("expected a new user");
            };
            // Same key again, even with other fields: the first profile, unchanged.
            let mut retry = new_user("other@x.io", "k1");
            retry.display_name = "Bob".into();
            assert_eq!(
                store.create(&retry).await.unwrap(),
                Created::Existing(first.clone())
            );
            // Same email, other key: taken.
            let err = store.create(&new_user("a@x.io", "k2")).await.unwrap_err();
            assert!(matches!(err, UserError::EmailTaken), "{err:?}");
            assert_eq!(store.get(&first.id).await.unwrap(), Some(first));
            assert_eq!(store.get("nope").await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn concurrent_creates_with_one_key_make_one_profile() {
        for (store, _db) in stores().await {
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let store = store.clone();
                calls.spawn(async move { store.create(&new_user("race@x.io", "same")).await });
            }
            let mut ids = std::collections::BTreeSet::new();
            while let Some(result) = calls.join_next().await {
                ids.insert(result.unwrap().unwrap().into_record().id);
            }
            assert_eq!(ids.len(), 1);
            assert_eq!(store.list(None, 100).await.unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn losing_the_insert_race_returns_the_winner() {
        for (store, _db) in stores().await {
            // As if two calls with one key both passed the first lookup.
            let winner = store
                .insert(&new_user("a@x.io", "k1"))
                .await
                .unwrap()
                .into_record();
            let mut late = new_user("b@x.io", "k1");
            late.display_name = "Bob".into();
            assert_eq!(
                store.insert(&late).await.unwrap(),
                Created::Existing(winner)
            );
            let err = store.insert(&new_user("a@x.io", "k2")).await.unwrap_err();
            assert!(matches!(err, UserError::EmailTaken), "{err:?}");
        }
    }

    #[tokio::test]
    async fn updates_change_only_what_is_asked() {
        for (store, _db) in stores().await {
            let user = store
                .create(&new_user("a@x.io", "k"))
                .await
                .unwrap()
                .into_record();
            let renamed = store
                .update(
                    &user.id,
                    &Changes {
                        display_name: Some("Grace".into()),
                        role: None,
                    },
                )
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (renamed.display_name.as_str(), renamed.role),
                ("Grace", Role::User)
            );
            assert!(renamed.update_time >= user.update_time);
            assert_eq!(renamed.create_time, user.create_time);
            let promoted = store
                .update(
                    &user.id,
                    &Changes {
                        display_name: None,
                        role: Some(Role::Admin),
                    },
                )
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (promoted.display_name.as_str(), promoted.role),
                ("Grace", Role::Admin)
            );
            assert_eq!(
                store.update(&user.id, &Changes::default()).await.unwrap(),
                Some(promoted)
            );
            let missing = Changes {
                display_name: Some("X".into()),
                role: None,
            };
            assert_eq!(store.update("nope", &missing).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn roles_are_set_by_email() {
        for (store, _db) in stores().await {
            let user = store
                .create(&new_user("a@x.io", "k"))
                .await
                .unwrap()
                .into_record();
            let admin = store
                .set_role_by_email("a@x.io", Role::Admin)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (admin.id.as_str(), admin.role),
                (user.id.as_str(), Role::Admin)
            );
            assert_eq!(store.get(&user.id).await.unwrap(), Some(admin));
            let back = store.set_role_by_email("a@x.io", Role::User).await.unwrap();
            assert_eq!(back.map(|u| u.role), Some(Role::User));
            assert_eq!(
                store
                    .set_role_by_email("b@x.io", Role::Admin)
                    .await
                    .unwrap(),
                None
            );
        }
    }

    #[tokio::test]
    async fn listing_pages_in_creation_order() {
        for (store, _db) in stores().await {
            let mut created = Vec::new();
            for n in 0..5 {
                let key = format!("k{n}");
                let user = store
                    .create(&new_user(&format!("u{n}@x.io"), &key))
                    .await
                    .unwrap();
                created.push(user.into_record());
            }
            created.sort_by(|a, b| (a.create_time, &a.id).cmp(&(b.create_time, &b.id)));
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store.list(after.as_ref(), 2).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some(Cursor {
                    time: last.create_time,
                    id: last.id.clone(),
                });
                seen.extend(page);
            }
            assert_eq!(seen, created);
        }
    }
}
