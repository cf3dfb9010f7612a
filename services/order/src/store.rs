//! The order service's SQL, the same on SQLite and PostgreSQL.
//!
//! Plain reads go to the read pool; every write and every transaction goes to the write pool
//! (one connection on SQLite). Stock is only ever changed by single conditional `UPDATE`s, so
//! it cannot go below zero whatever the concurrency, and an order's stock, order row and items
//! are written in one transaction: an order exists whole or not at all.
//!
//! On a SQLite file, the hot paths leave sqlx: `GetProduct` and the idempotency-key lookup read
//! through [`crate::read`], and `CreateOrder`'s transaction runs on the mesh's SQLite writer
//! thread through [`crate::write`] (group commit). Both run the same statements
//! ([`crate::sql`]) and steps ([`crate::place`]) as the sqlx path below.

use sqlx::{AnyConnection, Row, any::AnyRow};
use tracing::Instrument as _;
use weft_mesh::{
    clock::now_micros,
    db::{self, Database, Engine, is_unique_violation},
    page::{Cursor, PageRequest},
    sqlite_writer::SqliteWriter,
    validate,
};

use crate::{
    domain::{self, Error, NewProduct, Order, OrderItem, OrderRequest, OrderStatus, Product},
    place::{self, OrderWrites, Placed, Taken, new_id},
    read::SqliteReader,
    sql::{self, OrderRow},
    write,
};

/// The order service's tables.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    /// On a SQLite file, the hot reads' path (see [`crate::read`]).
    sqlite: Option<SqliteReader>,
    /// On a SQLite file, `CreateOrder`'s transactions (see [`crate::write`]).
    writer: Option<SqliteWriter>,
}

// === impl Store ===

impl Store {
    /// A store over `db` (already migrated).
    pub fn new(db: Database) -> Self {
        let file = db.sqlite_file();
        let sqlite = file.clone().map(SqliteReader::new);
        let writer = file.and_then(|file| match SqliteWriter::spawn(file) {
            Ok(writer) => Some(writer),
            Err(e) => {
                // sqlx's write pool still writes orders correctly, only slower.
                tracing::warn!(error = %e, "no SQLite writer thread: orders are placed via sqlx");
                None
            }
        });
        Self { db, sqlite, writer }
    }

    // --- products ---

    /// The product with this id. One primary-key lookup: this is the hot read path, read
    /// through rusqlite on SQLite and through sqlx on PostgreSQL.
    pub async fn product(&self, id: &str) -> Result<Option<Product>, Error> {
        if !validate::can_exist(id) {
            return Ok(None);
        }
        match &self.sqlite {
            Some(reader) => {
                db::span(self.db.engine, "SELECT", "products").in_scope(|| reader.product(id))
            }
            None => self.product_via_sqlx(id).await,
        }
    }

    /// [`Store::product`] through the sqlx read pool.
    async fn product_via_sqlx(&self, id: &str) -> Result<Option<Product>, Error> {
        let row = sqlx::query(sql::PRODUCT_BY_ID)
            .bind(id)
            .fetch_optional(&self.db.read)
            .instrument(db::span(self.db.engine, "SELECT", "products"))
            .await?;
        Ok(row.as_ref().map(product_of).transpose()?)
    }

    /// A page of products, oldest first, and the next page's token.
    pub async fn list_products(&self, page: &PageRequest) -> Result<(Vec<Product>, String), Error> {
        let rows = match &page.after {
            None => {
                sqlx::query(
                    "SELECT id, name, description, unit_price_cents, currency, stock, \
                     create_time, update_time FROM products \
                     ORDER BY create_time, id LIMIT $1",
                )
                .bind(page.fetch_limit())
                .fetch_all(&self.db.read)
                .instrument(db::span(self.db.engine, "SELECT", "products"))
                .await?
            }
            Some(after) => {
                sqlx::query(
                    "SELECT id, name, description, unit_price_cents, currency, stock, \
                     create_time, update_time FROM products \
                     WHERE (create_time, id) > ($1, $2) \
                     ORDER BY create_time, id LIMIT $3",
                )
                .bind(after.time)
                .bind(after.id.as_str())
                .bind(page.fetch_limit())
                .fetch_all(&self.db.read)
                .instrument(db::span(self.db.engine, "SELECT", "products"))
                .await?
            }
        };
        let products = rows.iter().map(product_of).collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(products, |p| Cursor {
            time: p.create_time,
            id: p.id.clone(),
        }))
    }

    /// Adds a product to the catalogue.
    pub async fn create_product(&self, new: &NewProduct) -> Result<Product, Error> {
        let now = now_micros();
        let product = Product {
            id: new_id(),
            name: new.name.clone(),
            description: new.description.clone(),
            unit_price_cents: new.unit_price_cents,
            currency: new.currency.clone(),
            stock: new.stock,
            create_time: now,
            update_time: now,
        };
        sqlx::query(
            "INSERT INTO products (id, name, description, unit_price_cents, currency, stock, \
             create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(product.id.as_str())
        .bind(product.name.as_str())
        .bind(product.description.as_str())
        .bind(product.unit_price_cents)
        .bind(product.currency.as_str())
        .bind(product.stock)
        .bind(product.create_time)
        .bind(product.update_time)
        .execute(&self.db.write)
        .instrument(db::span(self.db.engine, "INSERT", "products"))
        .await?;
        Ok(product)
    }

    /// Adds `quantity` units to a product's stock in one atomic statement.
    pub async fn restock(&self, id: &str, quantity: i64) -> Result<Product, Error> {
        if !validate::can_exist(id) {
            return Err(Error::ProductNotFound(id.to_owned()));
        }
        let row = sqlx::query(
            "UPDATE products SET stock = stock + $1, update_time = $2 \
             WHERE id = $3 AND stock <= $4 RETURNING id, name, description, \
             unit_price_cents, currency, stock, create_time, update_time",
        )
        .bind(quantity)
        .bind(now_micros())
        .bind(id)
        .bind(i64::MAX - quantity)
        .fetch_optional(&self.db.write)
        .instrument(db::span(self.db.engine, "UPDATE", "products"))
        .await?;
        match row {
            Some(row) => Ok(product_of(&row)?),
            None if self.product(id).await?.is_some() => Err(Error::StockOverflow(id.to_owned())),
            None => Err(Error::ProductNotFound(id.to_owned())),
        }
    }

    // --- orders ---

    /// The order with this id, whoever owns it.
    pub async fn order(&self, id: &str) -> Result<Option<Order>, Error> {
        if !validate::can_exist(id) {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT o.id, o.user_id, o.status, o.total_cents, o.currency, o.idempotency_key, \
             o.request_hash, o.create_time, o.update_time, i.product_id, i.product_name, \
             i.quantity, i.unit_price_cents AS item_price \
             FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.id = $1 ORDER BY i.line_no",
        )
        .bind(id)
        .fetch_all(&self.db.read)
        .instrument(db::span(self.db.engine, "SELECT", "orders"))
        .await?;
        Ok(orders_of(&rows)?.pop().map(|(order, _)| order))
    }

    /// A page of a user's orders, newest first, and the next page's token.
    pub async fn list_orders(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Order>, String), Error> {
        // One statement reads the page and its items, so both come from the same snapshot.
        let rows = match &page.after {
            None => {
                sqlx::query(
                    "SELECT o.id, o.user_id, o.status, o.total_cents, o.currency, \
                     o.idempotency_key, o.request_hash, o.create_time, o.update_time, \
                     i.product_id, i.product_name, i.quantity, i.unit_price_cents AS item_price \
                     FROM (SELECT * FROM orders WHERE user_id = $1 \
                           ORDER BY create_time DESC, id DESC LIMIT $2) o \
                     JOIN order_items i ON i.order_id = o.id \
                     ORDER BY o.create_time DESC, o.id DESC, i.line_no",
                )
                .bind(user_id)
                .bind(page.fetch_limit())
                .fetch_all(&self.db.read)
                .instrument(db::span(self.db.engine, "SELECT", "orders"))
                .await?
            }
            Some(after) => {
                sqlx::query(
                    "SELECT o.id, o.user_id, o.status, o.total_cents, o.currency, \
                     o.idempotency_key, o.request_hash, o.create_time, o.update_time, \
                     i.product_id, i.product_name, i.quantity, i.unit_price_cents AS item_price \
                     FROM (SELECT * FROM orders WHERE user_id = $1 \
                           AND (create_time, id) < ($2, $3) \
                           ORDER BY create_time DESC, id DESC LIMIT $4) o \
                     JOIN order_items i ON i.order_id = o.id \
                     ORDER BY o.create_time DESC, o.id DESC, i.line_no",
                )
                .bind(user_id)
                .bind(after.time)
                .bind(after.id.as_str())
                .bind(page.fetch_limit())
                .fetch_all(&self.db.read)
                .instrument(db::span(self.db.engine, "SELECT", "orders"))
                .await?
            }
        };
        let orders = orders_of(&rows)?
            .into_iter()
            .map(|(order, _)| order)
            .collect();
        Ok(page.finish(orders, |o| Cursor {
            time: o.create_time,
            id: o.id.clone(),
        }))
    }

    /// The order a user placed with an idempotency key, with its request hash: through
    /// rusqlite on a SQLite file, through sqlx otherwise.
    async fn order_by_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<(Order, Option<String>)>, Error> {
        let span = db::span(self.db.engine, "SELECT", "orders");
        match &self.sqlite {
            Some(reader) => span.in_scope(|| reader.order_by_key(user_id, key)),
            None => {
                let rows = sqlx::query(sql::ORDER_BY_KEY)
                    .bind(user_id)
                    .bind(key)
                    .fetch_all(&self.db.read)
                    .instrument(span)
                    .await?;
                Ok(orders_of(&rows)?.pop())
            }
        }
    }

    /// Places `request` for `user_id`, or returns the order already placed with its
    /// idempotency key (ALREADY_EXISTS when that order was for other items).
    pub async fn create_order(
        &self,
        user_id: &str,
        request: &OrderRequest,
    ) -> Result<Order, Error> {
        if let Some(key) = &request.idempotency_key
            && let Some((existing, hash)) = self.order_by_key(user_id, key).await?
        {
            return domain::replay(existing, hash.as_deref(), &request.request_hash);
        }
        match self.place_order(user_id, request).await? {
            Placed::Order(order) => Ok(order),
            Placed::KeyTaken => {
                // A twin request won the race; its order is committed and visible now.
                let key = request.idempotency_key.as_deref().unwrap_or_default();
                match self.order_by_key(user_id, key).await? {
                    Some((existing, hash)) => {
                        domain::replay(existing, hash.as_deref(), &request.request_hash)
                    }
                    None => Err(Error::Internal(
                        "idempotency key taken but its order is missing".into(),
                    )),
                }
            }
        }
    }

    /// Takes the stock and writes the order in one transaction, without looking for an
    /// earlier order with the same key first: on the SQLite writer thread when there is one,
    /// else in a sqlx transaction.
    pub(crate) async fn place_order(
        &self,
        user_id: &str,
        request: &OrderRequest,
    ) -> Result<Placed, Error> {
        let transaction = async {
            match &self.writer {
                Some(writer) => {
                    let (user_id, request) = (user_id.to_owned(), request.clone());
                    writer
                        .write(move |conn| write::place_order(conn, &user_id, &request))
                        .await
                }
                None => self.place_order_via_sqlx(user_id, request).await,
            }
        };
        // Around the awaited write, on the caller's side: the statements' spans nest under it
        // on either path.
        transaction
            .instrument(db::span(self.db.engine, "TRANSACTION", "orders"))
            .await
    }

    /// [`Store::place_order`] in a transaction of the sqlx write pool.
    async fn place_order_via_sqlx(
        &self,
        user_id: &str,
        request: &OrderRequest,
    ) -> Result<Placed, Error> {
        let mut tx = self.db.write.begin().await?;
        let mut writes = SqlxTx {
            conn: &mut tx,
            engine: self.db.engine,
        };
        match place::place(&mut writes, user_id, request).await {
            Ok(Placed::Order(order)) => {
                tx.commit().await?;
                Ok(Placed::Order(order))
            }
            Ok(Placed::KeyTaken) => {
                tx.rollback().await?;
                Ok(Placed::KeyTaken)
            }
            Err(err) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                Err(err)
            }
        }
    }

    /// Cancels a confirmed order and puts its stock back, in one transaction. When another
    /// call cancelled it first, returns the order as that call left it.
    pub async fn cancel_order(&self, mut order: Order) -> Result<Order, Error> {
        let now = now_micros();
        let mut tx = self.db.write.begin().await?;
        let done = sqlx::query(
            "UPDATE orders SET status = 'cancelled', update_time = $1 \
             WHERE id = $2 AND status = 'confirmed'",
        )
        .bind(now)
        .bind(order.id.as_str())
        .execute(&mut *tx)
        .instrument(db::span(self.db.engine, "UPDATE", "orders"))
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return self
                .order(&order.id)
                .await?
                .ok_or_else(|| Error::OrderNotFound(order.id.clone()));
        }
        // Products in id order, as when the stock was taken, so the two never deadlock. A
        // restock may have filled the stock to the top of 64 bits meanwhile: it saturates there
        // rather than overflow (which would fail the cancel, or turn SQLite's integer to a real).
        for (product_id, quantity) in order.units_per_product() {
            sqlx::query(
                "UPDATE products SET stock = CASE WHEN stock > $4 THEN $5 ELSE stock + $1 END, \
                 update_time = $2 WHERE id = $3",
            )
            .bind(quantity)
            .bind(now)
            .bind(product_id)
            .bind(i64::MAX - quantity)
            .bind(i64::MAX)
            .execute(&mut *tx)
            .instrument(db::span(self.db.engine, "UPDATE", "products"))
            .await?;
        }
        tx.commit().await?;
        order.status = OrderStatus::Cancelled;
        order.update_time = now;
        Ok(order)
    }
}

/// A sqlx transaction's connection, running [`crate::place`]'s steps.
struct SqlxTx<'c> {
    conn: &'c mut AnyConnection,
    engine: Engine,
}

impl OrderWrites for SqlxTx<'_> {
    fn engine(&self) -> Engine {
        self.engine
    }

    async fn take_stock(
        &mut self,
        product_id: &str,
        quantity: i64,
        now: i64,
    ) -> Result<Option<Taken>, Error> {
        let row = sqlx::query(sql::TAKE_STOCK)
            .bind(quantity)
            .bind(now)
            .bind(product_id)
            .fetch_optional(&mut *self.conn)
            .await?;
        let taken = |row: AnyRow| -> Result<Taken, sqlx::Error> {
            Ok(Taken {
                name: row.try_get("name")?,
                unit_price_cents: row.try_get("unit_price_cents")?,
                currency: row.try_get("currency")?,
            })
        };
        Ok(row.map(taken).transpose()?)
    }

    async fn product_exists(&mut self, product_id: &str) -> Result<bool, Error> {
        let row = sqlx::query(sql::PRODUCT_EXISTS)
            .bind(product_id)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(row.is_some())
    }

    async fn insert_order(
        &mut self,
        order: &Order,
        request_hash: Option<&str>,
    ) -> Result<bool, Error> {
        let inserted = sqlx::query(sql::INSERT_ORDER)
            .bind(order.id.as_str())
            .bind(order.user_id.as_str())
            .bind(order.status.as_str())
            .bind(order.total_cents)
            .bind(order.currency.as_str())
            .bind(order.idempotency_key.as_deref())
            .bind(request_hash)
            .bind(order.create_time)
            .bind(order.update_time)
            .execute(&mut *self.conn)
            .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(err) if is_unique_violation(&err) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    async fn insert_item(
        &mut self,
        order_id: &str,
        line_no: i64,
        item: &OrderItem,
    ) -> Result<(), Error> {
        sqlx::query(sql::INSERT_ITEM)
            .bind(order_id)
            .bind(line_no)
            .bind(item.product_id.as_str())
            .bind(item.product_name.as_str())
            .bind(item.quantity)
            .bind(item.unit_price_cents)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }
}

fn product_of(row: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        unit_price_cents: row.try_get("unit_price_cents")?,
        currency: row.try_get("currency")?,
        stock: row.try_get("stock")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Groups the order-and-item rows of an order query into orders ([`sql::orders_of`]).
fn orders_of(rows: &[AnyRow]) -> Result<Vec<(Order, Option<String>)>, Error> {
    let rows = rows.iter().map(order_row).collect::<Result<Vec<_>, _>>()?;
    sql::orders_of(rows)
}

/// A row of an order query, read by column name.
fn order_row(row: &AnyRow) -> Result<OrderRow, sqlx::Error> {
    Ok(OrderRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        status: row.try_get("status")?,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_hash: row.try_get("request_hash")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
        item: OrderItem {
            product_id: row.try_get("product_id")?,
            product_name: row.try_get("product_name")?,
            quantity: row.try_get("quantity")?,
            unit_price_cents: row.try_get("item_price")?,
        },
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! Throwaway stores for unit tests, on the test kit's temporary databases.

    use weft_testkit::{Backend, TestDatabase};

    use super::*;

    /// A fresh, migrated store, removed when dropped.
    pub(crate) struct TempStore {
        /// The store.
        pub(crate) store: Store,
        _database: TestDatabase,
    }

    /// A fresh store on `backend`.
    pub(crate) async fn temp_store(backend: &Backend) -> TempStore {
        let database = TestDatabase::fresh(backend).await;
        let db = Database::open(database.url(), 4, &crate::MIGRATOR)
            .await
            .expect("open test database");
        TempStore {
            store: Store::new(db),
            _database: database,
        }
    }

    /// A fresh store per engine: SQLite, and PostgreSQL when `WEFT_TEST_POSTGRES_URL` is set.
    pub(crate) async fn temp_stores() -> Vec<TempStore> {
        let mut stores = Vec::new();
        for backend in Backend::all() {
            stores.push(temp_store(&backend).await);
        }
        stores
    }
}

#[cfg(test)]
mod tests {
    use weft_mesh::{db::Engine, sqlite_writer::Outcome};

    use weft_testkit::Backend;

    use super::testing::{temp_store, temp_stores};
    use super::*;
    use crate::domain::order_request;

    async fn product(store: &Store, name: &str, currency: &str, stock: i64) -> Product {
        let new = domain::new_product(name, "", 250, currency, stock).unwrap();
        store.create_product(&new).await.unwrap()
    }

    fn request(key: &str, lines: &[(&str, i64)]) -> OrderRequest {
        order_request(key, lines.iter().map(|(id, q)| (*id, *q))).unwrap()
    }

    async fn stock(store: &Store, id: &str) -> i64 {
        store.product(id).await.unwrap().unwrap().stock
    }

    /// The orders attempted through the SQLite writer thread so far (`None`: no writer, on
    /// PostgreSQL).
    fn writer_jobs(store: &Store) -> Option<u64> {
        store.writer.as_ref().map(|writer| writer.stats().jobs)
    }

    #[tokio::test]
    async fn orders_on_a_sqlite_file_go_through_the_writer_thread() {
        for t in temp_stores().await {
            let store = &t.store;
            match store.db.engine {
                Engine::Sqlite => {
                    // A real file (not :memory:), so the writer and the readers share it.
                    let file = store.db.sqlite_file().expect("the test database is a file");
                    assert!(file.is_file(), "{}", file.display());
                    let writer = store.writer.as_ref().expect("orders go to the writer");
                    assert_eq!(writer.path(), file);
                    assert_eq!(store.sqlite.as_ref().map(SqliteReader::path), Some(&*file));
                }
                Engine::Postgres => {
                    assert!(
                        store.writer.is_none() && store.sqlite.is_none(),
                        "all on sqlx"
                    );
                }
            }
            let a = product(store, "a", "USD", 3).await;
            let first = store
                .create_order("u1", &request("k", &[(&a.id, 1)]))
                .await
                .unwrap();
            // The replay is found by the key lookup (rusqlite on SQLite) and writes nothing.
            let again = store
                .create_order("u1", &request("k", &[(&a.id, 1)]))
                .await
                .unwrap();
            assert_eq!(first, again);
            assert_eq!(stock(store, &a.id).await, 2);
            if store.db.engine == Engine::Sqlite {
                assert_eq!(writer_jobs(store), Some(1));
            }
        }
    }

    #[tokio::test]
    async fn products_are_created_read_listed_and_restocked() {
        for t in temp_stores().await {
            let mut ids = Vec::new();
            for n in 0..5 {
                ids.push(product(&t.store, &format!("p{n}"), "", n).await.id);
            }
            let got = t.store.product(&ids[2]).await.unwrap().unwrap();
            assert_eq!(
                (got.name.as_str(), got.currency.as_str(), got.stock),
                ("p2", "USD", 2)
            );
            assert!(t.store.product("nope").await.unwrap().is_none());

            // Two pages of two and a last page of one, oldest first.
            let mut seen = Vec::new();
            let mut token = String::new();
            loop {
                let page = PageRequest::parse(2, &token).unwrap();
                let (products, next) = t.store.list_products(&page).await.unwrap();
                seen.extend(products.into_iter().map(|p| p.id));
                if next.is_empty() {
                    break;
                }
                token = next;
            }
            assert_eq!(seen, ids);

            let restocked = t.store.restock(&ids[0], 7).await.unwrap();
            assert_eq!(restocked.stock, 7);
            assert!(matches!(
                t.store.restock("nope", 1).await,
                Err(Error::ProductNotFound(_))
            ));
        }
    }

    #[tokio::test]
    async fn get_product_reads_through_rusqlite_on_sqlite_and_sqlx_on_postgres() {
        for t in temp_stores().await {
            let store = &t.store;
            match store.db.engine {
                Engine::Sqlite => assert!(store.sqlite.is_some(), "SQLite must read via rusqlite"),
                Engine::Postgres => assert!(store.sqlite.is_none(), "PostgreSQL stays on sqlx"),
            }
            let a = product(store, "a", "EUR", 3).await;
            // Both paths give the same product, and the same absence.
            assert_eq!(store.product(&a.id).await.unwrap().as_ref(), Some(&a));
            assert_eq!(
                store.product_via_sqlx(&a.id).await.unwrap().as_ref(),
                Some(&a)
            );
            assert_eq!(store.product("nope").await.unwrap(), None);
            assert_eq!(store.product_via_sqlx("nope").await.unwrap(), None);
            // A committed write is visible to the very next read (WAL: a new snapshot per read).
            let restocked = store.restock(&a.id, 4).await.unwrap();
            assert_eq!(store.product(&a.id).await.unwrap(), Some(restocked.clone()));
            assert_eq!(
                store.product_via_sqlx(&a.id).await.unwrap(),
                Some(restocked)
            );
        }
    }

    #[tokio::test]
    async fn one_thread_reads_several_databases() {
        // Each store's reads go to its own file, though they share this thread's connections.
        for backend in Backend::all() {
            let (t1, t2) = (temp_store(&backend).await, temp_store(&backend).await);
            let a = product(&t1.store, "a", "USD", 1).await;
            let b = product(&t2.store, "b", "USD", 2).await;
            for _ in 0..3 {
                assert_eq!(t1.store.product(&a.id).await.unwrap().as_ref(), Some(&a));
                assert_eq!(t2.store.product(&b.id).await.unwrap().as_ref(), Some(&b));
                assert_eq!(t1.store.product(&b.id).await.unwrap(), None);
                assert_eq!(t2.store.product(&a.id).await.unwrap(), None);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_beside_concurrent_orders_see_committed_stock_only() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", 40).await;
            let writers: Vec<_> = (0..40)
                .map(|n| {
                    let store = t.store.clone();
                    let req = request("", &[(&a.id, 1)]);
                    tokio::spawn(async move { store.create_order(&format!("u{n}"), &req).await })
                })
                .collect();
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    let store = t.store.clone();
                    let id = a.id.clone();
                    tokio::spawn(async move {
                        let mut last = i64::MAX;
                        for _ in 0..200 {
                            let stock = store.product(&id).await.unwrap().unwrap().stock;
                            // Stock only goes down here, and never below zero.
                            assert!((0..=last).contains(&stock), "stock {stock} after {last}");
                            last = stock;
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.await.unwrap().unwrap();
            }
            for reader in readers {
                reader.await.unwrap();
            }
            assert_eq!(stock(&t.store, &a.id).await, 0);
        }
    }

    #[tokio::test]
    async fn an_order_takes_stock_and_duplicate_lines_add_up() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "EUR", 10).await;
            let b = product(&t.store, "b", "EUR", 10).await;
            let order = t
                .store
                .create_order("u1", &request("", &[(&a.id, 2), (&b.id, 1), (&a.id, 3)]))
                .await
                .unwrap();
            assert_eq!(order.items.len(), 3);
            assert_eq!(order.total_cents, 6 * 250);
            assert_eq!(order.currency, "EUR");
            assert_eq!(order.idempotency_key, None);
            assert_eq!(stock(&t.store, &a.id).await, 5);
            assert_eq!(stock(&t.store, &b.id).await, 9);
            assert_eq!(t.store.order(&order.id).await.unwrap(), Some(order));
        }
    }

    #[tokio::test]
    async fn a_failing_order_changes_nothing() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", 5).await;
            let b = product(&t.store, "b", "USD", 1).await;
            let e = product(&t.store, "e", "EUR", 5).await;

            let short = t
                .store
                .create_order("u1", &request("", &[(&a.id, 1), (&b.id, 2)]))
                .await;
            assert!(matches!(short, Err(Error::InsufficientStock(id)) if id == b.id));
            let unknown = t
                .store
                .create_order("u1", &request("", &[(&a.id, 1), ("nope", 1)]))
                .await;
            assert!(matches!(unknown, Err(Error::ProductNotFound(id)) if id == "nope"));
            let mixed = t
                .store
                .create_order("u1", &request("", &[(&a.id, 1), (&e.id, 1)]))
                .await;
            assert!(matches!(mixed, Err(Error::MixedCurrencies { .. })));

            assert_eq!(stock(&t.store, &a.id).await, 5);
            assert_eq!(stock(&t.store, &b.id).await, 1);
            assert_eq!(stock(&t.store, &e.id).await, 5);
            // On a SQLite file, the three failed in the writer thread's transactions.
            assert!(matches!(writer_jobs(&t.store), None | Some(3)));
            let (orders, _) = t
                .store
                .list_orders("u1", &PageRequest::parse(0, "").unwrap())
                .await
                .unwrap();
            assert!(orders.is_empty());
        }
    }

    #[tokio::test]
    async fn an_idempotency_key_returns_the_first_order() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", 10).await;
            let first = t
                .store
                .create_order("u1", &request("k1", &[(&a.id, 2)]))
                .await
                .unwrap();
            let again = t
                .store
                .create_order("u1", &request("k1", &[(&a.id, 2)]))
                .await
                .unwrap();
            assert_eq!(first, again);
            assert_eq!(stock(&t.store, &a.id).await, 8);

            let other = t
                .store
                .create_order("u1", &request("k1", &[(&a.id, 3)]))
                .await;
            assert!(matches!(other, Err(Error::KeyReused)));
            // The same key from another user is another order.
            let theirs = t
                .store
                .create_order("u2", &request("k1", &[(&a.id, 2)]))
                .await
                .unwrap();
            assert_ne!(theirs.id, first.id);
            assert_eq!(stock(&t.store, &a.id).await, 6);
        }
    }

    #[tokio::test]
    async fn a_twin_that_loses_the_race_rolls_back() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", 10).await;
            let req = request("k1", &[(&a.id, 4)]);
            // Both twins got past the key lookup; the second to write must leave no trace.
            let Placed::Order(first) = t.store.place_order("u1", &req).await.unwrap() else {
                panic!("the first twin should place the order");
            };
            assert!(matches!(
                t.store.place_order("u1", &req).await.unwrap(),
                Placed::KeyTaken
            ));
            assert_eq!(stock(&t.store, &a.id).await, 6);
            assert!(matches!(writer_jobs(&t.store), None | Some(2)));
            // And the full path returns the winner.
            assert_eq!(t.store.create_order("u1", &req).await.unwrap(), first);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_orders_never_oversell() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", 7).await;
            let tasks: Vec<_> = (0..20)
                .map(|n| {
                    let store = t.store.clone();
                    let req = request("", &[(&a.id, 1)]);
                    tokio::spawn(async move { store.create_order(&format!("u{n}"), &req).await })
                })
                .collect();
            let mut placed = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(_) => placed += 1,
                    Err(Error::InsufficientStock(_)) => {}
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            assert_eq!(placed, 7);
            assert_eq!(stock(&t.store, &a.id).await, 0);
            assert!(matches!(writer_jobs(&t.store), None | Some(20)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_twins_get_one_order() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", 100).await;
            let tasks: Vec<_> = (0..10)
                .map(|_| {
                    let store = t.store.clone();
                    let req = request("same", &[(&a.id, 3)]);
                    tokio::spawn(async move { store.create_order("u1", &req).await })
                })
                .collect();
            let mut ids = Vec::new();
            for task in tasks {
                ids.push(task.await.unwrap().unwrap().id);
            }
            ids.dedup();
            assert_eq!(ids.len(), 1);
            assert_eq!(stock(&t.store, &a.id).await, 97);
            // Each twin that missed the key lookup raced in the writer thread.
            assert!(matches!(writer_jobs(&t.store), None | Some(1..=10)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twins_in_one_batch_of_the_writer_get_one_order() {
        let t = temp_store(&Backend::Sqlite).await;
        let writer = t.store.writer.clone().expect("a SQLite file has a writer");
        let a = product(&t.store, "a", "USD", 10).await;
        // Hold the writer thread with a job of our own, so that the twins queue up behind it
        // and run in one transaction: the first inserts the key, the others meet it uncommitted.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let held = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .write(move |_| -> Result<Outcome<()>, Error> {
                        let _ = started.send(());
                        let _ = released.recv();
                        Ok(Outcome::Commit(()))
                    })
                    .await
            }
        });
        running.await.unwrap();
        let twins: Vec<_> = (0..3)
            .map(|_| {
                let store = t.store.clone();
                let req = request("k", &[(&a.id, 2)]);
                tokio::spawn(async move { store.create_order("u1", &req).await })
            })
            .collect();
        while writer.queued() < 3 {
            tokio::task::yield_now().await;
        }
        drop(release);
        held.await.unwrap().unwrap();
        let mut ids = Vec::new();
        for twin in twins {
            ids.push(twin.await.unwrap().unwrap().id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "one order for the three twins");
        assert_eq!(stock(&t.store, &a.id).await, 8, "stock taken once");
        assert_eq!(writer.stats().largest_batch, 3);
    }

    #[tokio::test]
    async fn stock_at_the_top_of_64_bits_neither_overflows_nor_fails_a_cancel() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", i64::MAX).await;
            let order = t
                .store
                .create_order("u1", &request("", &[(&a.id, 5)]))
                .await
                .unwrap();
            assert!(matches!(
                t.store.restock(&a.id, 6).await,
                Err(Error::StockOverflow(_))
            ));
            assert_eq!(t.store.restock(&a.id, 5).await.unwrap().stock, i64::MAX);
            // The five units come back to a full stock: it stays at the largest value.
            let cancelled = t.store.cancel_order(order).await.unwrap();
            assert_eq!(cancelled.status, OrderStatus::Cancelled);
            assert_eq!(stock(&t.store, &a.id).await, i64::MAX);
        }
    }

    #[tokio::test]
    async fn orders_list_newest_first_and_cancel_puts_stock_back() {
        for t in temp_stores().await {
            let a = product(&t.store, "a", "USD", 100).await;
            let mut placed = Vec::new();
            for n in 1..=5 {
                placed.push(
                    t.store
                        .create_order("u1", &request("", &[(&a.id, n)]))
                        .await
                        .unwrap(),
                );
            }
            t.store
                .create_order("u2", &request("", &[(&a.id, 1)]))
                .await
                .unwrap();

            let mut seen = Vec::new();
            let mut token = String::new();
            loop {
                let page = PageRequest::parse(2, &token).unwrap();
                let (orders, next) = t.store.list_orders("u1", &page).await.unwrap();
                seen.extend(orders);
                if next.is_empty() {
                    break;
                }
                token = next;
            }
            // Newest first; equal times (same microsecond) fall back to the id, descending.
            placed.sort_by(|x, y| (y.create_time, &y.id).cmp(&(x.create_time, &x.id)));
            assert_eq!(seen, placed);

            let target = placed[0].clone();
            let quantity = target.items[0].quantity;
            let before = stock(&t.store, &a.id).await;
            let cancelled = t.store.cancel_order(target.clone()).await.unwrap();
            assert_eq!(cancelled.status, OrderStatus::Cancelled);
            assert_eq!(stock(&t.store, &a.id).await, before + quantity);
            // A second cancel of the stale copy finds it cancelled and puts nothing back.
            let again = t.store.cancel_order(target).await.unwrap();
            assert_eq!(again, cancelled);
            assert_eq!(stock(&t.store, &a.id).await, before + quantity);
        }
    }
}
