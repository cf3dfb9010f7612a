//! The order service's SQL, the same on SQLite and PostgreSQL.
//!
//! Plain reads go to the read pool; every write and every transaction goes to the write pool
//! (one connection on SQLite). Stock is only ever changed by single conditional `UPDATE`s, so
//! it cannot go below zero whatever the concurrency, and an order's stock, order row and items
//! are written in one transaction: an order exists whole or not at all.

use sqlx::{AnyConnection, Row, any::AnyRow};
use tracing::Instrument as _;
use weft_mesh::{
    clock::now_micros,
    db::{self, Database, Engine, is_unique_violation},
    page::{Cursor, PageRequest},
    validate,
};

use crate::{
    domain::{
        self, Error, NewProduct, Order, OrderItem, OrderPricing, OrderRequest, OrderStatus, Product,
    },
    read::SqliteReader,
};

/// The order service's tables.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    /// On a SQLite file, `GetProduct`'s read path (see [`crate::read`]).
    sqlite: Option<SqliteReader>,
}

/// What one attempt to place an order did.
#[derive(Debug)]
pub(crate) enum Placed {
    /// The order was placed and committed.
    Order(Order),
    /// A concurrent request with the same user and key committed first; nothing was written.
    KeyTaken,
}

// === impl Store ===

impl Store {
    /// A store over `db` (already migrated).
    pub fn new(db: Database) -> Self {
        let sqlite = SqliteReader::for_database(&db);
        Self { db, sqlite }
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
        let row = sqlx::query(
            "SELECT id, name, description, unit_price_cents, currency, stock, create_time, \
             update_time FROM products WHERE id = $1",
        )
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

    /// The order a user placed with an idempotency key, with its request hash.
    async fn order_by_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<(Order, Option<String>)>, Error> {
        let rows = sqlx::query(
            "SELECT o.id, o.user_id, o.status, o.total_cents, o.currency, o.idempotency_key, \
             o.request_hash, o.create_time, o.update_time, i.product_id, i.product_name, \
             i.quantity, i.unit_price_cents AS item_price \
             FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.user_id = $1 AND o.idempotency_key = $2 ORDER BY i.line_no",
        )
        .bind(user_id)
        .bind(key)
        .fetch_all(&self.db.read)
        .instrument(db::span(self.db.engine, "SELECT", "orders"))
        .await?;
        Ok(orders_of(&rows)?.pop())
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
    /// earlier order with the same key first.
    pub(crate) async fn place_order(
        &self,
        user_id: &str,
        request: &OrderRequest,
    ) -> Result<Placed, Error> {
        let transaction = async {
            let mut tx = self.db.write.begin().await?;
            match write_order(&mut tx, self.db.engine, user_id, request).await {
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
        };
        transaction
            .instrument(db::span(self.db.engine, "TRANSACTION", "orders"))
            .await
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

/// The body of [`Store::place_order`]'s transaction; the caller commits or rolls back.
async fn write_order(
    conn: &mut AnyConnection,
    engine: Engine,
    user_id: &str,
    request: &OrderRequest,
) -> Result<Placed, Error> {
    let now = now_micros();
    // One decrement per distinct product, in id order: concurrent orders lock rows in the same
    // order (no deadlocks on PostgreSQL).
    let mut pricing = OrderPricing::default();
    for (product_id, quantity) in request.units_per_product() {
        if !validate::can_exist(product_id) {
            return Err(Error::ProductNotFound(product_id.to_owned()));
        }
        let row = sqlx::query(
            "UPDATE products SET stock = stock - $1, update_time = $2 \
             WHERE id = $3 AND stock >= $1 RETURNING name, unit_price_cents, currency",
        )
        .bind(quantity)
        .bind(now)
        .bind(product_id)
        .fetch_optional(&mut *conn)
        .instrument(db::span(engine, "UPDATE", "products"))
        .await?;
        let Some(row) = row else {
            let exists = sqlx::query("SELECT stock FROM products WHERE id = $1")
                .bind(product_id)
                .fetch_optional(&mut *conn)
                .instrument(db::span(engine, "SELECT", "products"))
                .await?
                .is_some();
            return Err(if exists {
                Error::InsufficientStock(product_id.to_owned())
            } else {
                Error::ProductNotFound(product_id.to_owned())
            });
        };
        pricing.take(
            product_id,
            row.try_get("name")?,
            row.try_get("unit_price_cents")?,
            row.try_get("currency")?,
        )?;
    }
    let priced = pricing.price(&request.lines)?;
    let order = Order {
        id: new_id(),
        user_id: user_id.to_owned(),
        status: OrderStatus::Confirmed,
        items: priced.items,
        total_cents: priced.total_cents,
        currency: priced.currency,
        idempotency_key: request.idempotency_key.clone(),
        create_time: now,
        update_time: now,
    };
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_cents, currency, idempotency_key, \
         request_hash, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(order.id.as_str())
    .bind(order.user_id.as_str())
    .bind(order.status.as_str())
    .bind(order.total_cents)
    .bind(order.currency.as_str())
    .bind(order.idempotency_key.clone())
    .bind(
        order
            .idempotency_key
            .as_ref()
            .map(|_| request.request_hash.clone()),
    )
    .bind(order.create_time)
    .bind(order.update_time)
    .execute(&mut *conn)
    .instrument(db::span(engine, "INSERT", "orders"))
    .await;
    match inserted {
        Ok(_) => {}
        Err(err) if is_unique_violation(&err) && order.idempotency_key.is_some() => {
            return Ok(Placed::KeyTaken);
        }
        Err(err) => return Err(err.into()),
    }
    for (line_no, item) in order.items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity, \
             unit_price_cents) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(order.id.as_str())
        .bind(line_no as i64)
        .bind(item.product_id.as_str())
        .bind(item.product_name.as_str())
        .bind(item.quantity)
        .bind(item.unit_price_cents)
        .execute(&mut *conn)
        .instrument(db::span(engine, "INSERT", "order_items"))
        .await?;
    }
    Ok(Placed::Order(order))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
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

/// Groups order-and-item rows (sorted by order, then line) into orders with their request
/// hashes, keeping the rows' order.
fn orders_of(rows: &[AnyRow]) -> Result<Vec<(Order, Option<String>)>, sqlx::Error> {
    let mut orders: Vec<(Order, Option<String>)> = Vec::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let item = OrderItem {
            product_id: row.try_get("product_id")?,
            product_name: row.try_get("product_name")?,
            quantity: row.try_get("quantity")?,
            unit_price_cents: row.try_get("item_price")?,
        };
        match orders.last_mut() {
            Some((order, _)) if order.id == id => order.items.push(item),
            _ => {
                let stored: String = row.try_get("status")?;
                let status = OrderStatus::parse(&stored).ok_or_else(|| {
                    sqlx::Error::Decode(format!("unknown order status {stored:?}").into())
                })?;
                let order = Order {
                    id,
                    user_id: row.try_get("user_id")?,
                    status,
                    items: vec![item],
                    total_cents: row.try_get("total_cents")?,
                    currency: row.try_get("currency")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    create_time: row.try_get("create_time")?,
                    update_time: row.try_get("update_time")?,
                };
                orders.push((order, row.try_get("request_hash")?));
            }
        }
    }
    Ok(orders)
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
    use weft_mesh::db::Engine;

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
        }
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
