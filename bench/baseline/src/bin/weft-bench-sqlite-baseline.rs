//! `weft-bench-sqlite-baseline`: the write benchmark's yardstick on SQLite, a bare rusqlite
//! loop running weft-order's order transaction with nothing around it.
//!
//! Each iteration does what `CreateOrder` with an idempotency key does to the database: the
//! key lookup (the same SELECT), then one transaction that takes one unit of stock
//! (`UPDATE products ... WHERE stock >= 1 RETURNING ...`), inserts the order and its item, and
//! commits. The file is opened with weft-order's write settings (WAL, `synchronous = FULL`,
//! `busy_timeout = 5000`, foreign keys on), and, as weft-order writes through one connection,
//! so does the loop by default. No network, no protobuf, no async runtime: what is left is
//! SQLite's own cost, the ceiling weft-order's write path is compared with.
//!
//! Usage: `weft-bench-sqlite-baseline DB_FILE PRODUCT_ID SECONDS [CONNECTIONS]`, on a database
//! weft-order has created (its migrations) holding the product. Orders are placed for the user
//! `bench-sqlite-baseline`. It prints one line: `transactions N seconds S tx/s R`.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OptionalExtension, params};

const USER: &str = "bench-sqlite-baseline";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: weft-bench-sqlite-baseline DB_FILE PRODUCT_ID SECONDS [CONNECTIONS]";
    let (Some(file), Some(product), Some(seconds)) = (args.first(), args.get(1), args.get(2))
    else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(seconds) = seconds.parse::<f64>() else {
        eprintln!("weft-bench-sqlite-baseline: SECONDS must be a number, not `{seconds}`");
        return ExitCode::from(2);
    };
    let connections = match args.get(3).map(|n| n.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("weft-bench-sqlite-baseline: CONNECTIONS must be a positive number");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let (file, product) = (file.clone(), product.clone());
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || -> rusqlite::Result<()> {
                let conn = open(&file)?;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    place_order(&conn, &product, &format!("w{worker}-{n}"))?;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("weft-bench-sqlite-baseline: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "transactions {n} seconds {elapsed:.3} tx/s {:.1}",
        n as f64 / elapsed
    );
    ExitCode::SUCCESS
}

/// A connection with weft-order's write settings (mesh/server/src/db.rs).
fn open(file: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
         PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
    )?;
    Ok(conn)
}

/// The statements of weft-order's `Store::create_order` for one line with a fresh key.
fn place_order(conn: &Connection, product: &str, key: &str) -> rusqlite::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let key = format!("{key}-{now}");
    // Looked up for the cost of it, as weft-order does; the keys made here are always fresh.
    let _replay: Option<String> = conn
        .query_row(
            "SELECT o.id, o.user_id, o.status, o.total_cents, o.currency, o.idempotency_key, \
             o.request_hash, o.create_time, o.update_time, i.product_id, i.product_name, \
             i.quantity, i.unit_price_cents AS item_price \
             FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.user_id = ?1 AND o.idempotency_key = ?2 ORDER BY i.line_no",
            params![USER, key],
            |row| row.get(0),
        )
        .optional()?;
    let tx = conn.unchecked_transaction()?;
    let (name, price, currency): (String, i64, String) = tx.query_row(
        "UPDATE products SET stock = stock - ?1, update_time = ?2 \
         WHERE id = ?3 AND stock >= ?1 RETURNING name, unit_price_cents, currency",
        params![1, now, product],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    tx.execute(
        "INSERT INTO orders (id, user_id, status, total_cents, currency, idempotency_key, \
         request_hash, create_time, update_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id,
            USER,
            "confirmed",
            price,
            currency,
            key,
            "hash",
            now,
            now
        ],
    )?;
    tx.execute(
        "INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity, \
         unit_price_cents) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, 0, product, name, 1, price],
    )?;
    tx.commit()
}
