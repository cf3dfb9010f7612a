//! `CreateOrder`'s transaction on a SQLite file, as a job of the mesh's SQLite writer thread
//! (`weft_mesh::sqlite_writer`: group commit, one fsync per batch, replies after the commit).
//!
//! The steps are [`crate::place`]'s, the statements [`crate::sql`]'s, as on sqlx; only the
//! driver calls differ: rusqlite, run synchronously on the writer thread, each statement
//! prepared once per connection. An order whose idempotency key a twin took first (perhaps in
//! the same batch) rolls back to its savepoint, stock decrement included.

use std::{
    pin::pin,
    task::{Context, Poll, Waker},
};

use rusqlite::{Connection, OptionalExtension as _, params};
use weft_mesh::{
    db::Engine,
    sqlite_writer::{Outcome, is_unique_violation},
};

use crate::{
    domain::{Error, Order, OrderItem, OrderRequest},
    place::{self, OrderWrites, Placed, Taken},
    sql,
};

/// The body of a writer job: places `request` for `user_id` on `conn`, inside the job's
/// savepoint. A placed order is kept; a taken key is rolled back (and reported as such).
pub(crate) fn place_order(
    conn: &Connection,
    user_id: &str,
    request: &OrderRequest,
) -> Result<Outcome<Placed>, Error> {
    let mut tx = SqliteTx(conn);
    let placing = place::place(&mut tx, user_id, request);
    // Every step below runs its statement and returns: the future is ready at its first poll.
    // Polled once, so that a step that ever did wait would be an error, not a stalled writer.
    let placed = match pin!(placing).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(placed) => placed?,
        Poll::Pending => {
            return Err(Error::Internal(
                "the SQLite order transaction waited on the writer thread".into(),
            ));
        }
    };
    Ok(match placed {
        Placed::Order(order) => Outcome::Commit(Placed::Order(order)),
        Placed::KeyTaken => Outcome::RollBack(Placed::KeyTaken),
    })
}

/// The writer thread's connection, inside a job's savepoint.
struct SqliteTx<'c>(&'c Connection);

impl OrderWrites for SqliteTx<'_> {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn take_stock(
        &mut self,
        product_id: &str,
        quantity: i64,
        now: i64,
    ) -> Result<Option<Taken>, Error> {
        Ok(self
            .0
            .prepare_cached(sql::TAKE_STOCK)?
            .query_row(params![quantity, now, product_id], |row| {
                Ok(Taken {
                    name: row.get(0)?,
                    unit_price_cents: row.get(1)?,
                    currency: row.get(2)?,
                })
            })
            .optional()?)
    }

    async fn product_exists(&mut self, product_id: &str) -> Result<bool, Error> {
        Ok(self
            .0
            .prepare_cached(sql::PRODUCT_EXISTS)?
            .exists([product_id])?)
    }

    async fn insert_order(
        &mut self,
        order: &Order,
        request_hash: Option<&str>,
    ) -> Result<bool, Error> {
        let inserted = self.0.prepare_cached(sql::INSERT_ORDER)?.execute(params![
            order.id,
            order.user_id,
            order.status.as_str(),
            order.total_cents,
            order.currency,
            order.idempotency_key,
            request_hash,
            order.create_time,
            order.update_time,
        ]);
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
        self.0.prepare_cached(sql::INSERT_ITEM)?.execute(params![
            order_id,
            line_no,
            item.product_id,
            item.product_name,
            item.quantity,
            item.unit_price_cents,
        ])?;
        Ok(())
    }
}
