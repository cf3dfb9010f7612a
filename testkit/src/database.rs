//! Temporary databases, one helper for both engines: a SQLite file in a temporary folder, or a
//! fresh `weft_t_<random>` database on the PostgreSQL server named by [`POSTGRES_URL_ENV`].
//! Both are removed when the [`TestDatabase`] is dropped (or [`TestDatabase::remove`]d).
//!
//! ```ignore
//! for db in TestDatabase::each().await {
//!     let database = Database::open(db.url(), 2, &MIGRATOR).await.unwrap();
//!     // ... the same assertions on SQLite, then PostgreSQL ...
//! }
//! ```
//!
//! Without [`POSTGRES_URL_ENV`] the PostgreSQL runs are skipped with a note, except under
//! `CI=true`, where that is a failure: CI runs every test on both engines.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use sqlx::Connection as _;

/// Environment variable holding a PostgreSQL URL (to a database the tests may create databases
/// from, e.g. `postgres://postgres@127.0.0.1:5432/postgres`).
pub const POSTGRES_URL_ENV: &str = "WEFT_TEST_POSTGRES_URL";

/// Where a test keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// Fresh databases on the PostgreSQL server at this URL.
    Postgres(String),
}

impl Backend {
    /// SQLite, plus PostgreSQL when [`POSTGRES_URL_ENV`] is set (see [`Backend::postgres`]).
    pub fn all() -> Vec<Backend> {
        let mut all = vec![Backend::Sqlite];
        all.extend(Backend::postgres());
        all
    }

    /// PostgreSQL at [`POSTGRES_URL_ENV`]. When unset: panics under `CI=true` (CI must run the
    /// suite on both engines), otherwise prints a skip note and returns `None`.
    pub fn postgres() -> Option<Backend> {
        match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Some(Backend::Postgres(url.trim().to_string())),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
                "{POSTGRES_URL_ENV} is not set, but CI=true: CI must run the tests on PostgreSQL \
                 too (e.g. {POSTGRES_URL_ENV}=postgres://postgres@127.0.0.1:5432/postgres)"
            ),
            _ => {
                eprintln!(
                    "note: skipping the PostgreSQL run: set {POSTGRES_URL_ENV} \
                     (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
                );
                None
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An empty database that exists as long as this value: a SQLite file (not yet created; the
/// first connection with `mode=rwc`, as `weft_mesh::db::Database::open` makes, creates it) or
/// a freshly created PostgreSQL database.
pub struct TestDatabase {
    backend: Backend,
    url: String,
    place: Place,
}

enum Place {
    /// The folder of the SQLite file, removed on drop (unless kept by its owner).
    Folder(Option<tempfile::TempDir>),
    /// A SQLite file in a folder someone else owns.
    File(PathBuf),
    /// The server's URL and the database's name, dropped on drop.
    Postgres {
        base: String,
        name: String,
        dropped: bool,
    },
}

impl TestDatabase {
    /// A fresh database on `backend`. Panics when it cannot be made.
    pub async fn fresh(backend: &Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("weft-test-db-")
                    .tempdir()
                    .expect("cannot create a temporary directory");
                let url = sqlite_url(&dir.path().join("data.db"));
                TestDatabase {
                    backend: Backend::Sqlite,
                    url,
                    place: Place::Folder(Some(dir)),
                }
            }
            Backend::Postgres(base) => Self::postgres(base).await,
        }
    }

    /// A fresh database on each backend of [`Backend::all`]: SQLite, and PostgreSQL when
    /// [`POSTGRES_URL_ENV`] is set.
    pub async fn each() -> Vec<TestDatabase> {
        let mut databases = Vec::new();
        for backend in Backend::all() {
            databases.push(Self::fresh(&backend).await);
        }
        databases
    }

    /// A fresh database on `backend`; on SQLite the file `<dir>/<stem>.db`, left in `dir` (whose
    /// owner decides when it goes).
    pub async fn in_dir(backend: &Backend, dir: &Path, stem: &str) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let file = dir.join(format!("{stem}.db"));
                TestDatabase {
                    backend: Backend::Sqlite,
                    url: sqlite_url(&file),
                    place: Place::File(file),
                }
            }
            Backend::Postgres(base) => Self::postgres(base).await,
        }
    }

    async fn postgres(base: &str) -> TestDatabase {
        let name = format!(
            "weft_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let mut conn = sqlx::PgConnection::connect(base).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {} ({POSTGRES_URL_ENV}): {e}",
                weft_mesh::db::redact(base)
            )
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        let _ = conn.close().await;
        TestDatabase {
            backend: Backend::Postgres(base.to_string()),
            url: database_url(base, &name),
            place: Place::Postgres {
                base: base.to_string(),
                name,
                dropped: false,
            },
        }
    }

    /// Its URL: `sqlite://<path>` or `postgres://.../weft_t_<random>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The engine it runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Keeps a SQLite database's folder after the test (to inspect a failure); returns where.
    pub fn keep(&mut self) -> Option<PathBuf> {
        match &mut self.place {
            Place::Folder(dir) => dir.take().map(tempfile::TempDir::keep),
            Place::File(file) => Some(file.clone()),
            Place::Postgres { .. } => None,
        }
    }

    /// Removes the database now (PostgreSQL: `DROP DATABASE ... WITH (FORCE)`), waiting for it;
    /// dropping the value does the same on a thread of its own.
    pub async fn remove(mut self) {
        if let Place::Postgres {
            base,
            name,
            dropped,
        } = &mut self.place
        {
            drop_database(base, name).await;
            *dropped = true;
        }
    }
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDatabase")
            .field("backend", &self.backend.name())
            .field("url", &weft_mesh::db::redact(&self.url))
            .finish()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Place::Postgres {
            base,
            name,
            dropped: false,
        } = &self.place
        {
            let (base, name) = (base.clone(), name.clone());
            // Drop runs inside the test's runtime, which must not be blocked on: use a thread.
            let _ = std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(drop_database(&base, &name));
                }
            })
            .join();
        }
    }
}

fn sqlite_url(file: &Path) -> String {
    format!("sqlite://{}", file.display())
}

async fn drop_database(base: &str, name: &str) {
    let Ok(mut conn) = sqlx::PgConnection::connect(base).await else {
        eprintln!("warning: cannot connect to PostgreSQL to drop the test database {name}");
        return;
    };
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    {
        eprintln!("warning: cannot drop the test database {name}: {e}");
    }
    let _ = conn.close().await;
}

/// `base` (a PostgreSQL URL) pointing at database `db` instead, query string kept.
pub fn database_url(base: &str, db: &str) -> String {
    let (main, query) = match base.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (base, None),
    };
    let authority = main.find("://").map_or(0, |i| i + 3);
    let path = main[authority..]
        .find('/')
        .map_or(main.len(), |i| authority + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{db}{query}", &main[..path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_swap_the_path_only() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[tokio::test]
    async fn each_backend_gives_a_database_that_goes_away() {
        for db in TestDatabase::each().await {
            let url = db.url().to_string();
            match db.backend().clone() {
                Backend::Sqlite => {
                    let path = PathBuf::from(url.trim_start_matches("sqlite://"));
                    let folder = path.parent().unwrap().to_path_buf();
                    assert!(folder.is_dir());
                    drop(db);
                    assert!(!folder.exists(), "the folder is removed on drop");
                }
                Backend::Postgres(base) => {
                    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                    let one: i32 = sqlx::query_scalar("SELECT 1")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                    assert_eq!(one, 1);
                    conn.close().await.unwrap();
                    let name = url.rsplit('/').next().unwrap().to_string();
                    assert!(name.starts_with("weft_t_"), "{name}");
                    db.remove().await;
                    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
                    let left: i64 =
                        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                            .bind(&name)
                            .fetch_one(&mut admin)
                            .await
                            .unwrap();
                    assert_eq!(left, 0, "the database is dropped");
                }
            }
        }
    }
}
