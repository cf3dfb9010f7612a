//! The statements that both of the order service's drivers send (sqlx in [`crate::store`],
//! rusqlite in [`crate::read`] and [`crate::write`]), and the rows they read back.
//!
//! One text per statement, so the two paths cannot drift apart. Parameters are `$1`-style,
//! which PostgreSQL and SQLite both accept; SQLite numbers them in order of first appearance,
//! so each statement names `$1`, `$2`, ... first in that order and binds by position alike.

use crate::domain::{Error, Order, OrderItem, OrderStatus};

/// The columns of a product row, in the order [`PRODUCT_BY_ID`] reads them (a macro, so that
/// `concat!` can build statements from it).
macro_rules! product_columns {
    () => {
        "id, name, description, unit_price_cents, currency, stock, create_time, update_time"
    };
}
pub(crate) use product_columns;

/// A product by id.
pub(crate) const PRODUCT_BY_ID: &str = concat!(
    "SELECT ",
    product_columns!(),
    " FROM products WHERE id = $1"
);

/// Takes `$1` units of product `$3` at time `$2`, only if it has that many: a conditional
/// update, so stock never goes below zero whatever the concurrency. Returns what pricing needs.
pub(crate) const TAKE_STOCK: &str = "UPDATE products SET stock = stock - $1, update_time = $2 \
                                     WHERE id = $3 AND stock >= $1 \
                                     RETURNING name, unit_price_cents, currency";

/// Whether a product exists (after [`TAKE_STOCK`] took nothing: short stock or no product).
pub(crate) const PRODUCT_EXISTS: &str = "SELECT stock FROM products WHERE id = $1";

/// An order row; unique on (user_id, idempotency_key).
pub(crate) const INSERT_ORDER: &str = "INSERT INTO orders (id, user_id, status, total_cents, currency, idempotency_key, \
     request_hash, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// One item of an order.
pub(crate) const INSERT_ITEM: &str = "INSERT INTO order_items (order_id, line_no, product_id, \
                                      product_name, quantity, unit_price_cents) \
                                      VALUES ($1, $2, $3, $4, $5, $6)";

/// The order user `$1` placed with idempotency key `$2`, one row per item, as [`OrderRow`]s.
pub(crate) const ORDER_BY_KEY: &str = "SELECT o.id, o.user_id, o.status, o.total_cents, o.currency, o.idempotency_key, \
     o.request_hash, o.create_time, o.update_time, i.product_id, i.product_name, \
     i.quantity, i.unit_price_cents AS item_price \
     FROM orders o JOIN order_items i ON i.order_id = o.id \
     WHERE o.user_id = $1 AND o.idempotency_key = $2 ORDER BY i.line_no";

/// One row of an order joined with one of its items, in the column order of [`ORDER_BY_KEY`]
/// (and of the other order queries of [`crate::store`]).
#[derive(Debug)]
pub(crate) struct OrderRow {
    /// `o.id`.
    pub(crate) id: String,
    /// `o.user_id`.
    pub(crate) user_id: String,
    /// `o.status`, as stored.
    pub(crate) status: String,
    /// `o.total_cents`.
    pub(crate) total_cents: i64,
    /// `o.currency`.
    pub(crate) currency: String,
    /// `o.idempotency_key`.
    pub(crate) idempotency_key: Option<String>,
    /// `o.request_hash`.
    pub(crate) request_hash: Option<String>,
    /// `o.create_time`.
    pub(crate) create_time: i64,
    /// `o.update_time`.
    pub(crate) update_time: i64,
    /// The item's columns (`item_price` is its unit price).
    pub(crate) item: OrderItem,
}

/// Groups order-and-item rows (sorted by order, then line) into orders with their request
/// hashes, keeping the rows' order.
pub(crate) fn orders_of(
    rows: impl IntoIterator<Item = OrderRow>,
) -> Result<Vec<(Order, Option<String>)>, Error> {
    let mut orders: Vec<(Order, Option<String>)> = Vec::new();
    for row in rows {
        match orders.last_mut() {
            Some((order, _)) if order.id == row.id => order.items.push(row.item),
            _ => {
                let status = OrderStatus::parse(&row.status).ok_or_else(|| {
                    Error::Internal(format!("unknown order status {:?}", row.status))
                })?;
                let order = Order {
                    id: row.id,
                    user_id: row.user_id,
                    status,
                    items: vec![row.item],
                    total_cents: row.total_cents,
                    currency: row.currency,
                    idempotency_key: row.idempotency_key,
                    create_time: row.create_time,
                    update_time: row.update_time,
                };
                orders.push((order, row.request_hash));
            }
        }
    }
    Ok(orders)
}
