//! The hot read paths on SQLite: `GetProduct` and `CreateOrder`'s idempotency-key lookup
//! through rusqlite, inline on the runtime thread.
//!
//! sqlx runs every SQLite connection on a worker thread of its own, so each query is a
//! hand-off to that thread and back (futex wake-ups, context switches). On a 2-core box, a
//! prototype of this read (gateway -> order service -> SQLite, measured with wrk against a bare
//! hyper server in the same run) spent about 44 us of CPU per read in the order service, most of
//! it in that hand-off, and reached 17 % of the bare server's requests per second through the
//! sqlx pool, about 21 % with `test_before_acquire(false)`, and about 45 % through a per-thread
//! rusqlite connection as below. Weft's own figures for the whole path, still well below that
//! ratio, are in `bench/README.md`; there a product read through this module cost about 9.7k
//! of weft-order's 68k instructions per request, and 4.3k of 63k once cached (below).
//!
//! Each runtime thread keeps ONE read-only connection per database file (a `thread_local!`,
//! opened lazily on the first read, `PRAGMA query_only`, a short busy timeout) with its
//! statements prepared once (`prepare_cached`), and runs the query right there, without an
//! `.await`. That is not the kind of blocking call an async runtime thread must not make:
//!
//! - each is a lookup by key: a product by its primary key, an order by the unique
//!   (user, idempotency key) index and its few items by their primary key; a few B-tree pages,
//!   kept in the connection's page cache and the OS page cache, answered in microseconds (less
//!   than the gRPC decoding around it);
//! - the database is in WAL mode, where readers never wait for the writer (nor the writer for
//!   them): a read sees the last committed snapshot whatever the writers are doing;
//! - the rare lock a reader can meet (WAL recovery after a crash, an exclusive lock taken by
//!   an operator's tool) is bounded by [`BUSY_TIMEOUT`], then becomes an error, not a stall.
//!
//! A product read is also cached on its thread, keyed by id, for as long as the file's
//! `PRAGMA data_version` holds: SQLite changes that number on this connection whenever any
//! other connection (the writer thread, sqlx's pool, another process, an operator's `sqlite3`)
//! commits to the file, so the cache answers only while nothing was committed since its rows
//! were read: what it returns is what the table holds at the check. The check is one
//! statement without a table read; a hit then skips the B-tree lookup and the row's decoding.
//! A row not cached is read with the version, in one statement (one read transaction), so a
//! write-heavy spell that keeps emptying the cache costs a miss no more than an uncached read.
//! Only SQLite has this: on PostgreSQL (replicas, other writers) every read goes to the
//! database.
//!
//! `CreateOrder`'s transaction on a SQLite file goes to the mesh's SQLite writer thread
//! ([`crate::write`]). Everything else (the other writes and transactions, migrations, list
//! queries) stays on sqlx, and so does every query on PostgreSQL, where sqlx has no such worker
//! thread. rusqlite 0.39 links the same `libsqlite3-sys` (0.37, built bundled by sqlx) as sqlx
//! 0.9, so both share one SQLite.

use std::{
    cell::RefCell,
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use weft_mesh::db::Database;

use crate::{
    domain::{Error, Order, OrderItem, Product},
    sql::{self, OrderRow},
};

/// How long a read may wait for a lock before it fails. Reads never wait for the writer in
/// WAL mode; this only bounds the rare exceptions, because the wait holds the runtime thread.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// Connections kept per thread at most (one per database file; more only in tests).
const MAX_CONNECTIONS_PER_THREAD: usize = 8;

/// Bytes of product rows cached per thread and file at most (text fields plus a fixed
/// overhead per row); a full cache is emptied, not evicted by age. About 4,000 products of the
/// demo catalogue's size fit; descriptions of 2,000 characters, the most, about 450.
const MAX_CACHED_BYTES: usize = 1 << 20;

/// What a cached row costs besides its text: the map entry, the key and the `Product`.
const ROW_OVERHEAD_BYTES: usize = 160;

/// Reads SQLite's count of commits by other connections to the file (see the module doc).
const DATA_VERSION: &str = "PRAGMA data_version";

/// [`sql::PRODUCT_BY_ID`] with that count first, both from one read transaction: the row is
/// as of that version.
const PRODUCT_AND_DATA_VERSION: &str = concat!(
    "SELECT (SELECT data_version FROM pragma_data_version()), ",
    sql::product_columns!(),
    " FROM products WHERE id = $1"
);

thread_local! {
    /// This thread's read connections, by database file.
    static CONNECTIONS: RefCell<Vec<(Arc<Path>, ThreadReader)>> = const { RefCell::new(Vec::new()) };
}

/// One thread's read connection to one file, and the products read through it.
struct ThreadReader {
    conn: Connection,
    products: ProductCache,
}

/// Products by id, as of one `PRAGMA data_version` of the connection that read them.
#[derive(Default)]
struct ProductCache {
    version: Option<i64>,
    /// Looked up on every read: foldhash, seeded per process, instead of SipHash (it holds
    /// only rows read from the table, and the seed keeps their ids from being chosen to collide).
    rows: HashMap<Box<str>, Product, foldhash::fast::RandomState>,
    /// What `rows` holds, as [`ProductCache::cost`] counts it.
    bytes: usize,
    /// Reads answered from `rows` (tests look at it; a counter costs nothing).
    hits: u64,
}

// === impl ProductCache ===

impl ProductCache {
    /// Forgets every row if the file changed since they were read (`version` differs).
    fn validate(&mut self, version: i64) {
        if self.version != Some(version) {
            self.clear();
            self.version = Some(version);
        }
    }

    /// Keeps `product`, emptying the cache first when it would hold more than
    /// [`MAX_CACHED_BYTES`].
    fn insert(&mut self, product: &Product) {
        let cost = Self::cost(product);
        if self.bytes + cost > MAX_CACHED_BYTES {
            self.clear();
        }
        if let Some(old) = self
            .rows
            .insert(product.id.as_str().into(), product.clone())
        {
            self.bytes -= Self::cost(&old);
        }
        self.bytes += cost;
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }

    /// The memory a cached `product` takes, roughly: its text twice (the key holds the id
    /// again) and a fixed overhead.
    fn cost(product: &Product) -> usize {
        2 * product.id.len()
            + product.name.len()
            + product.description.len()
            + product.currency.len()
            + ROW_OVERHEAD_BYTES
    }
}

/// Reads a SQLite database through a read-only rusqlite connection per thread.
#[derive(Debug, Clone)]
pub struct SqliteReader {
    path: Arc<Path>,
}

// === impl SqliteReader ===

impl SqliteReader {
    /// A reader of the SQLite file at `path` (opened on each thread's first read).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Arc::from(path.into()),
        }
    }

    /// A reader of the same file as `db`'s read pool, when `db` is a SQLite file (`None` on
    /// PostgreSQL and for in-memory databases, which another connection could not see).
    pub fn for_database(db: &Database) -> Option<Self> {
        db.sqlite_file().map(Self::new)
    }

    /// The database file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The product with this id: from this thread's cache while the file is unchanged, else
    /// one primary-key lookup, run inline (see the module doc).
    pub fn product(&self, id: &str) -> Result<Option<Product>, Error> {
        self.with_reader(|ThreadReader { conn, products }| {
            // Only a cached id needs the version first: a miss reads it with the row.
            if products.rows.contains_key(id) {
                let version = conn
                    .prepare_cached(DATA_VERSION)?
                    .query_row([], |row| row.get(0))?;
                products.validate(version);
                if let Some(product) = products.rows.get(id) {
                    products.hits += 1;
                    return Ok(Some(product.clone()));
                }
            }
            let read = conn
                .prepare_cached(PRODUCT_AND_DATA_VERSION)?
                .query_row([id], |row| {
                    let product = Product {
                        id: row.get(1)?,
                        name: row.get(2)?,
                        description: row.get(3)?,
                        unit_price_cents: row.get(4)?,
                        currency: row.get(5)?,
                        stock: row.get(6)?,
                        create_time: row.get(7)?,
                        update_time: row.get(8)?,
                    };
                    Ok((row.get(0)?, product))
                })
                .optional()?;
            Ok(read.map(|(version, product)| {
                products.validate(version);
                products.insert(&product);
                product
            }))
        })
    }

    /// The order `user_id` placed with idempotency `key`, with its request hash: the items of
    /// one order by key, run inline (see the module doc).
    pub fn order_by_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<(Order, Option<String>)>, Error> {
        let rows = self.with_reader(|reader| {
            reader
                .conn
                .prepare_cached(sql::ORDER_BY_KEY)?
                .query_map(params![user_id, key], order_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(sql::orders_of(rows)?.pop())
    }

    /// Runs `read` on this thread's connection to the file, opening it first if needed. A
    /// connection that failed is dropped (with its cache), so the next read starts afresh.
    fn with_reader<T>(
        &self,
        read: impl FnOnce(&mut ThreadReader) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let failed = |e: rusqlite::Error| {
            Error::Internal(format!("sqlite read of {}: {e}", self.path.display()))
        };
        CONNECTIONS
            .try_with(|cell| {
                // Never re-entered (no await, no callback inside): a failed borrow is a bug
                // reported as an error, not a panic.
                let mut connections = cell
                    .try_borrow_mut()
                    .map_err(|_| Error::Internal("sqlite read connection in use".into()))?;
                let index = match connections.iter().position(|(p, _)| *p == self.path) {
                    Some(index) => index,
                    None => {
                        let conn = open(&self.path).map_err(failed)?;
                        if connections.len() >= MAX_CONNECTIONS_PER_THREAD {
                            connections.remove(0);
                        }
                        let reader = ThreadReader {
                            conn,
                            products: ProductCache::default(),
                        };
                        connections.push((self.path.clone(), reader));
                        connections.len() - 1
                    }
                };
                let result = read(&mut connections[index].1);
                if result.is_err() {
                    connections.swap_remove(index);
                }
                result.map_err(failed)
            })
            .map_err(|_| Error::Internal("sqlite read during thread shutdown".into()))?
    }
}

/// A row of [`sql::ORDER_BY_KEY`].
fn order_row(row: &Row<'_>) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        id: row.get(0)?,
        user_id: row.get(1)?,
        status: row.get(2)?,
        total_cents: row.get(3)?,
        currency: row.get(4)?,
        idempotency_key: row.get(5)?,
        request_hash: row.get(6)?,
        create_time: row.get(7)?,
        update_time: row.get(8)?,
        item: OrderItem {
            product_id: row.get(9)?,
            product_name: row.get(10)?,
            quantity: row.get(11)?,
            unit_price_cents: row.get(12)?,
        },
    })
}

/// A read-only connection to `path` (which migrations have created).
fn open(path: &Path) -> rusqlite::Result<Connection> {
    // No SQLITE_OPEN_URI: the path is a file name, whatever characters it holds. NO_MUTEX: the
    // connection never leaves its thread.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use weft_testkit::{Backend, TestDatabase};

    use super::*;

    /// A migrated SQLite database (SQLite whatever the test environment: this reader is
    /// SQLite's), its file, and the guard that removes it.
    async fn sqlite_db() -> (Database, PathBuf, TestDatabase) {
        let test_db = TestDatabase::fresh(&Backend::Sqlite).await;
        let file = PathBuf::from(test_db.url().trim_start_matches("sqlite://"));
        let db = Database::open(test_db.url(), 2, &crate::MIGRATOR)
            .await
            .unwrap();
        (db, file, test_db)
    }

    #[tokio::test]
    async fn the_reader_opens_the_pools_file_read_only() {
        let (db, file, _test_db) = sqlite_db().await;
        let reader = SqliteReader::for_database(&db).unwrap();
        assert_eq!(reader.path(), file);
        assert_eq!(reader.product("nope").unwrap(), None);
        // The connection refuses writes (read-only open and `query_only`).
        let write = reader.with_reader(|reader| {
            reader.conn.execute(
                "INSERT INTO products VALUES ('x', 'x', '', 1, 'USD', 1, 0, 0)",
                [],
            )
        });
        assert!(matches!(write, Err(Error::Internal(_))), "{write:?}");
        // The failed connection was dropped; the next read opens a new one and works.
        assert_eq!(reader.product("nope").unwrap(), None);
        db.close().await;
    }

    /// Reads of this thread's cache answered without the table.
    fn cache_hits(reader: &SqliteReader) -> u64 {
        reader.with_reader(|r| Ok(r.products.hits)).unwrap()
    }

    #[tokio::test]
    async fn a_cached_product_stays_until_any_connection_commits_to_the_file() {
        let (db, file, _test_db) = sqlite_db().await;
        let reader = SqliteReader::for_database(&db).unwrap();
        // Another connection to the file, as the writer thread, sqlx's pool or an operator's
        // `sqlite3` would be.
        let other = Connection::open(&file).unwrap();
        other
            .execute(
                "INSERT INTO products VALUES ('p1', 'Tea', 'Green', 250, 'EUR', 5, 1, 1)",
                [],
            )
            .unwrap();
        let stock = |reader: &SqliteReader| reader.product("p1").unwrap().unwrap().stock;

        assert_eq!(stock(&reader), 5);
        let hits = cache_hits(&reader);
        assert_eq!(stock(&reader), 5);
        assert_eq!(stock(&reader), 5);
        assert_eq!(
            cache_hits(&reader),
            hits + 2,
            "unchanged file: answered from the cache"
        );

        other
            .execute("UPDATE products SET stock = 3 WHERE id = 'p1'", [])
            .unwrap();
        assert_eq!(stock(&reader), 3, "a commit elsewhere drops the cached row");
        assert_eq!(cache_hits(&reader), hits + 2);

        other.execute("DELETE FROM products", []).unwrap();
        assert_eq!(reader.product("p1").unwrap(), None);
        // A missing product is not cached: it is found once it exists.
        other
            .execute(
                "INSERT INTO products VALUES ('p1', 'Tea', 'Green', 250, 'EUR', 9, 1, 2)",
                [],
            )
            .unwrap();
        assert_eq!(stock(&reader), 9);
        db.close().await;
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = ProductCache::default();
        cache.validate(1);
        let product = |id: usize| Product {
            id: format!("p{id}"),
            name: "n".into(),
            description: String::new(),
            unit_price_cents: 1,
            currency: "EUR".into(),
            stock: 1,
            create_time: 0,
            update_time: 0,
        };
        let fit = MAX_CACHED_BYTES / ProductCache::cost(&product(1000));
        let mut emptied = false;
        for id in 1000..1000 + 2 * fit {
            let before = cache.rows.len();
            cache.insert(&product(id));
            emptied |= cache.rows.len() < before;
            assert!(cache.bytes <= MAX_CACHED_BYTES);
            assert!(cache.rows.contains_key(format!("p{id}").as_str()));
        }
        assert!(emptied, "{fit} rows fill it");
        // The same row again replaces itself without growing.
        let (bytes, rows) = (cache.bytes, cache.rows.len());
        cache.insert(&product(1000 + 2 * fit - 1));
        assert_eq!((cache.bytes, cache.rows.len()), (bytes, rows));
        cache.validate(2);
        assert!(cache.rows.is_empty(), "another data version empties it");
        assert_eq!(cache.bytes, 0);
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let reader = SqliteReader::new(std::env::temp_dir().join("weft_order_no_such_dir/x.db"));
        assert!(matches!(reader.product("a"), Err(Error::Internal(_))));
    }
}
