//! Placing an order: the steps of its transaction, the same whichever driver runs them.
//!
//! [`place`] takes the stock of each product, prices the order and writes it, one statement at
//! a time through an [`OrderWrites`]: sqlx's transaction on PostgreSQL (and in-memory SQLite),
//! rusqlite's on the SQLite writer thread (see [`crate::write`]). The caller owns the
//! transaction around it: it commits a [`Placed::Order`] and rolls back anything else, so an
//! order exists whole or not at all.

use tracing::Instrument as _;
use weft_mesh::{
    clock::now_micros,
    db::{self, Engine},
    validate,
};

use crate::domain::{Error, Order, OrderItem, OrderPricing, OrderRequest, OrderStatus};

/// What one attempt to place an order did.
#[derive(Debug)]
pub(crate) enum Placed {
    /// The order was written (and is committed once the caller commits).
    Order(Order),
    /// A concurrent request with the same user and key wrote first; the caller must roll back
    /// this attempt's stock.
    KeyTaken,
}

/// What taking a product's stock tells the pricing: its current name, unit price and currency.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The product's name.
    pub(crate) name: String,
    /// Its price per unit, in cents.
    pub(crate) unit_price_cents: i64,
    /// Its currency.
    pub(crate) currency: String,
}

/// The statements of the order transaction, each one statement of [`crate::sql`] on the
/// driver's open transaction.
pub(crate) trait OrderWrites {
    /// The engine, for the statements' spans.
    fn engine(&self) -> Engine;

    /// Takes `quantity` units of the product at time `now` ([`crate::sql::TAKE_STOCK`]); `None`
    /// when it has fewer, or does not exist.
    fn take_stock(
        &mut self,
        product_id: &str,
        quantity: i64,
        now: i64,
    ) -> impl Future<Output = Result<Option<Taken>, Error>>;

    /// Whether the product exists ([`crate::sql::PRODUCT_EXISTS`]).
    fn product_exists(&mut self, product_id: &str) -> impl Future<Output = Result<bool, Error>>;

    /// Inserts the order row with its request hash ([`crate::sql::INSERT_ORDER`]); `false`
    /// when a unique constraint refused it (the user's idempotency key is taken).
    fn insert_order(
        &mut self,
        order: &Order,
        request_hash: Option<&str>,
    ) -> impl Future<Output = Result<bool, Error>>;

    /// Inserts one item of the order ([`crate::sql::INSERT_ITEM`]).
    fn insert_item(
        &mut self,
        order_id: &str,
        line_no: i64,
        item: &OrderItem,
    ) -> impl Future<Output = Result<(), Error>>;
}

/// Takes the stock and writes the order through `tx`; the caller commits or rolls back.
pub(crate) async fn place<W: OrderWrites>(
    tx: &mut W,
    user_id: &str,
    request: &OrderRequest,
) -> Result<Placed, Error> {
    let engine = tx.engine();
    let now = now_micros();
    // One decrement per distinct product, in id order: concurrent orders lock rows in the same
    // order (no deadlocks on PostgreSQL).
    let mut pricing = OrderPricing::default();
    for (product_id, quantity) in request.units_per_product() {
        if !validate::can_exist(product_id) {
            return Err(Error::ProductNotFound(product_id.to_owned()));
        }
        let taken = tx
            .take_stock(product_id, quantity, now)
            .instrument(db::span(engine, "UPDATE", "products"))
            .await?;
        let Some(taken) = taken else {
            let exists = tx
                .product_exists(product_id)
                .instrument(db::span(engine, "SELECT", "products"))
                .await?;
            return Err(if exists {
                Error::InsufficientStock(product_id.to_owned())
            } else {
                Error::ProductNotFound(product_id.to_owned())
            });
        };
        pricing.take(
            product_id,
            taken.name,
            taken.unit_price_cents,
            taken.currency,
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
    // The hash is kept only with a key: it tells a retry of the key from a different request.
    let request_hash = order
        .idempotency_key
        .as_ref()
        .map(|_| request.request_hash.as_str());
    let inserted = tx
        .insert_order(&order, request_hash)
        .instrument(db::span(engine, "INSERT", "orders"))
        .await?;
    if !inserted {
        return match order.idempotency_key {
            Some(_) => Ok(Placed::KeyTaken),
            None => Err(Error::Internal("a new order's id is taken".into())),
        };
    }
    for (line_no, item) in order.items.iter().enumerate() {
        tx.insert_item(&order.id, line_no as i64, item)
            .instrument(db::span(engine, "INSERT", "order_items"))
            .await?;
    }
    Ok(Placed::Order(order))
}

/// A new random id (32 hex digits).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
