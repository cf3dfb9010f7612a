//! Storage plumbing: one sqlx pool pair per service, on SQLite or PostgreSQL.
//!
//! The same migrations and queries run on both (queries use `$1`-style parameters, which
//! SQLite accepts too). On SQLite, writes go through a pool of exactly one connection: SQLite
//! admits one writer at a time anyway, and a single in-process writer turns lock contention
//! (SQLITE_BUSY and its retries) into a short, fair queue. Reads use a separate pool of
//! read-only connections that WAL mode lets run beside the writer. On PostgreSQL both pools
//! are the same pool.
//!
//! A service's hot transactions on a SQLite file may go through [`crate::sqlite_writer`]
//! instead (one rusqlite connection on a thread of its own, group commit), found with
//! [`Database::sqlite_file`]; the write pool then shares the file's write lock with it.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Once,
    time::Duration,
};

use sqlx::{
    AnyPool, ConnectOptions as _, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

use crate::sqlite_writer::WRITE_PRAGMAS;

/// The migrations of a service (`sqlx::migrate!`), as [`Database::open`] takes them.
pub use sqlx::migrate::Migrator;

/// A storage problem, for the service to map to a status.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL could not be used.
    #[error("cannot open database {url}: {source}")]
    Connect {
        /// The URL, with any password removed.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The service has no (valid) `[services.<name>]` with a `database_url`.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Which database engine a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite (embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A service's database: a writer pool and a reader pool.
#[derive(Debug, Clone)]
pub struct Database {
    /// For transactions and writes.
    pub write: AnyPool,
    /// For reads outside transactions.
    pub read: AnyPool,
    /// The engine behind the pools.
    pub engine: Engine,
}

static DRIVERS: Once = Once::new();

impl Engine {
    /// The engine behind `pool`.
    pub fn of_pool(pool: &AnyPool) -> Self {
        if pool
            .connect_options()
            .database_url
            .scheme()
            .starts_with("sqlite")
        {
            Engine::Sqlite
        } else {
            Engine::Postgres
        }
    }

    /// The engine behind `conn` (a transaction's connection, say).
    pub fn of_connection(conn: &sqlx::AnyConnection) -> Self {
        if conn.backend_name().eq_ignore_ascii_case("sqlite") {
            Engine::Sqlite
        } else {
            Engine::Postgres
        }
    }

    /// The OpenTelemetry `db.system` of the engine.
    pub fn system(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgresql",
        }
    }
}

/// A span for one statement or transaction, named `{operation} {collection}` with the
/// OpenTelemetry database attributes (`db.system`, `db.operation.name`, `db.collection.name`),
/// never the statement's values: `query.fetch_one(..).instrument(db::span(engine, "SELECT",
/// "products"))`. None when spans are not exported, and none outside a span: start-up work and
/// background chores (a key reload every few seconds) make no traces of their own.
pub fn span(engine: Engine, operation: &'static str, collection: &'static str) -> tracing::Span {
    if !crate::telemetry::spans_on() || tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        "db",
        otel.name = format_args!("{operation} {collection}"),
        otel.kind = "client",
        db.system = engine.system(),
        db.operation.name = operation,
        db.collection.name = collection,
    )
}

// === impl Database ===

impl Database {
    /// Its connection pools by name (`main` on PostgreSQL; `write` and `read` on SQLite), for
    /// metrics.
    pub fn pools(&self) -> Vec<(&'static str, &sqlx::AnyPool)> {
        match self.engine {
            Engine::Postgres => vec![("main", &self.write)],
            Engine::Sqlite => vec![("write", &self.write), ("read", &self.read)],
        }
    }

    /// The SQLite file behind the pools, as sqlx opened it: `None` on PostgreSQL and for an
    /// in-memory database (which a connection of another driver could not see).
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        if self.engine != Engine::Sqlite {
            return None;
        }
        // The read pool's own URL, parsed by sqlx, so that rusqlite opens exactly its file.
        let url = &self.read.connect_options().database_url;
        let options = match sqlx::sqlite::SqliteConnectOptions::from_url(url) {
            Ok(options) => options,
            Err(e) => {
                tracing::warn!(error = %e, "cannot parse the SQLite URL: no rusqlite connection");
                return None;
            }
        };
        let path = options.get_filename();
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file:") {
            return None;
        }
        Some(path.to_path_buf())
    }

    /// Applies the service's migrations to its configured database and closes it: a
    /// deployment's migration step (the Kubernetes Job), run before the new version starts.
    /// Returns how many migrations the database has. (Starting the service applies them too;
    /// replicas that start together take turns on PostgreSQL's migration lock.)
    pub async fn migrate_service(
        config: &crate::config::MeshConfig,
        name: &str,
        migrator: &Migrator,
    ) -> Result<usize, DbError> {
        let database = Self::open_service(config, name, migrator).await?;
        database.close().await;
        Ok(migrator.iter().count())
    }

    /// Opens the database of the service `name` (`services.<name>.database_url` and
    /// `database_max_connections`), running `migrator`.
    pub async fn open_service(
        config: &crate::config::MeshConfig,
        name: &str,
        migrator: &Migrator,
    ) -> Result<Self, DbError> {
        let service = config.service(name)?;
        if service.database_url.is_empty() {
            return Err(crate::config::ConfigError {
                source_name: "mesh-config".into(),
                key: Some(format!("services.{name}.database_url")),
                reason: "not set: this service keeps data (sqlite://path or postgres://...)".into(),
            }
            .into());
        }
        let idle = Duration::from_millis(service.database_idle_transaction_timeout_ms);
        Self::open_with(
            &service.database_url,
            service.database_max_connections,
            migrator,
            idle,
        )
        .await
    }

    /// Opens the database at `url` (creating a SQLite file and its folder if missing, readable
    /// by their owner only: 0600 and 0700 whatever the umask), runs `migrator`, and opens the
    /// pools.
    pub async fn open(
        url: &str,
        max_connections: u32,
        migrator: &Migrator,
    ) -> Result<Self, DbError> {
        Self::open_with(
            url,
            max_connections,
            migrator,
            DEFAULT_IDLE_TRANSACTION_TIMEOUT,
        )
        .await
    }

    /// [`Database::open`], with PostgreSQL ending a session whose transaction its client left
    /// idle for `idle_transaction_timeout` (zero: never), so that a client gone silent
    /// mid-transaction does not hold its row locks for good.
    pub async fn open_with(
        url: &str,
        max_connections: u32,
        migrator: &Migrator,
        idle_transaction_timeout: Duration,
    ) -> Result<Self, DbError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let redacted = redact(url);
        let connect_err = |source| DbError::Connect {
            url: redacted.clone(),
            source,
        };
        if url.starts_with("sqlite:") {
            let path = sqlite_path(url);
            private_sqlite_file(Path::new(path)).map_err(|e| connect_err(sqlx::Error::Io(e)))?;
            let write = AnyPoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move { conn.execute(WRITE_PRAGMAS).await.map(|_| ()) })
                })
                .connect_with(options(&format!("sqlite://{path}?mode=rwc"), &connect_err)?)
                .await
                .map_err(connect_err)?;
            migrator.run(&write).await?;
            // WAL mode made them; SQLite gives them the database file's mode, and files left by
            // an older version are tightened here.
            for suffix in ["-wal", "-shm"] {
                let side = format!("{path}{suffix}");
                if Path::new(&side).exists() {
                    restrict(Path::new(&side), PRIVATE_FILE)
                        .map_err(|e| connect_err(sqlx::Error::Io(e)))?;
                }
            }
            let read = AnyPoolOptions::new()
                .max_connections(max_connections)
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout = 5000;")
                            .await
                            .map(|_| ())
                    })
                })
                .connect_with(options(&format!("sqlite://{path}?mode=ro"), &connect_err)?)
                .await
                .map_err(connect_err)?;
            Ok(Self {
                write,
                read,
                engine: Engine::Sqlite,
            })
        } else {
            let idle_ms = idle_transaction_timeout.as_millis();
            let pool = AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        sqlx::query(
                            "SELECT set_config('idle_in_transaction_session_timeout', $1, false)",
                        )
                        .bind(idle_ms.to_string())
                        .execute(&mut *conn)
                        .await
                        .map(|_| ())
                    })
                })
                .connect_with(options(url, &connect_err)?)
                .await
                .map_err(connect_err)?;
            migrator.run(&pool).await?;
            Ok(Self {
                write: pool.clone(),
                read: pool,
                engine: Engine::Postgres,
            })
        }
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Mode of the database files: the owner's only (password hashes, keys and profiles are in
/// them).
const PRIVATE_FILE: u32 = 0o600;
/// How long PostgreSQL lets a client leave its transaction idle, unless configured
/// (`services.<name>.database_idle_transaction_timeout_ms`).
pub const DEFAULT_IDLE_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Mode of a folder made for them.
const PRIVATE_DIR: u32 = 0o700;

/// Makes sure the SQLite file at `path` exists and only its owner may read it, whatever the
/// umask: the folders it creates are 0700, the file 0600 (an existing one is tightened).
/// SQLite gives the `-wal` and `-shm` files it makes the database file's mode.
fn private_sqlite_file(path: &Path) -> std::io::Result<()> {
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR);
        builder.create(parent)?;
        restrict(parent, PRIVATE_DIR)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE);
    options.open(path)?;
    restrict(path, PRIVATE_FILE)
}

/// Sets `path`'s permission bits to `mode` (Unix; elsewhere nothing).
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn options(
    url: &str,
    connect_err: &impl Fn(sqlx::Error) -> DbError,
) -> Result<AnyConnectOptions, DbError> {
    AnyConnectOptions::from_str(url).map_err(connect_err)
}

/// The file path of a `sqlite:` URL (`sqlite://data/x.db`, `sqlite:data/x.db`), without query.
fn sqlite_path(url: &str) -> &str {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    rest.split('?').next().unwrap_or(rest)
}

/// The URL with its password, if any, replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Whether `err` is a unique-constraint violation (on either engine).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_db_span_outside_a_request() {
        assert!(span(Engine::Sqlite, "SELECT", "t").is_none());
    }

    #[test]
    fn sqlite_urls_become_paths() {
        assert_eq!(sqlite_path("sqlite://data/x.db"), "data/x.db");
        assert_eq!(sqlite_path("sqlite:data/x.db?mode=rwc"), "data/x.db");
        assert_eq!(sqlite_path("sqlite:///tmp/x.db"), "/tmp/x.db");
    }

    #[cfg(unix)]
    #[test]
    fn sqlite_files_and_folders_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = std::env::temp_dir().join(format!("weft-db-mode-{}", std::process::id()));
        let file = dir.join("data/sub/x.db");
        private_sqlite_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir.join("data/sub")), 0o700);
        assert_eq!(mode(&dir.join("data")), 0o700);
        // An existing file made world-readable is tightened.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_sqlite_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://weft:s3cret@db:5432/order"),
            "postgres://weft:***@db:5432/order"
        );
        assert_eq!(redact("postgres://db/order"), "postgres://db/order");
    }
}
