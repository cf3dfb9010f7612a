//! Demo products for the local run (`order.seed_demo_products`), so that a new user can place
//! an order right after `make run` without first becoming an administrator.
//!
//! Seeding happens at most once in a database's life: a row in the `seeds` table records it, in
//! the same transaction as the products, so deleting the products later never brings them back
//! and a crash half-way leaves neither. The row's primary key settles a race between two
//! processes starting at once: the second one's insert does nothing and it rolls back.

use sqlx::Row;
use weft_mesh::{clock::now_micros, db::Database};

/// The `seeds` row that records the demo products.
const DEMO_PRODUCTS_SEED: &str = "demo_products";

/// A demo product: name, description, unit price in cents, stock.
type Demo = (&'static str, &'static str, i64, i64);

/// The demo catalogue, all in USD, each with a stock between 10 and 10,000.
const DEMO_PRODUCTS: [Demo; 5] = [
    (
        "Espresso beans",
        "Single-origin Ethiopian beans, medium roast, 1 kg bag.",
        2_400,
        250,
    ),
    (
        "Ceramic teapot",
        "A 1.2 litre stoneware teapot with a stainless steel infuser.",
        3_499,
        40,
    ),
    (
        "Pour-over kettle",
        "Gooseneck kettle for slow, even pouring; works on gas and induction.",
        5_900,
        25,
    ),
    (
        "Paper filters",
        "A box of 100 unbleached paper filters for size 02 drippers.",
        499,
        5_000,
    ),
    (
        "Travel mug",
        "Double-walled 350 ml mug that keeps coffee hot for hours.",
        1_999,
        120,
    ),
];

/// What [`seed_demo_products`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeding {
    /// This many demo products were added.
    Added(usize),
    /// The database was seeded before (by this or another process); nothing was added.
    AlreadyDone,
    /// The catalogue already had products, so demo products would only be clutter; the seeding
    /// is recorded as done and nothing was added.
    CatalogueNotEmpty,
}

/// Adds the demo products unless this database was ever seeded, in one transaction with the
/// record that it was.
pub async fn seed_demo_products(db: &Database) -> Result<Seeding, sqlx::Error> {
    let now = now_micros();
    let mut tx = db.write.begin().await?;
    // The claim comes first: a write, so that on PostgreSQL a concurrent seeder waits here and
    // then finds the row taken.
    let claimed = sqlx::query(
        "INSERT INTO seeds (name, applied_time) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(DEMO_PRODUCTS_SEED)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(Seeding::AlreadyDone);
    }
    let existing: i64 = sqlx::query("SELECT COUNT(*) AS n FROM products")
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
    if existing > 0 {
        tx.commit().await?;
        return Ok(Seeding::CatalogueNotEmpty);
    }
    for (offset, (name, description, unit_price_cents, stock)) in (0_i64..).zip(DEMO_PRODUCTS) {
        // Distinct times keep the listing (by create time, then id) in the order above.
        let time = now + offset;
        sqlx::query(
            "INSERT INTO products (id, name, description, unit_price_cents, currency, stock, \
             create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(uuid::Uuid::new_v4().simple().to_string())
        .bind(name)
        .bind(description)
        .bind(unit_price_cents)
        .bind(crate::domain::DEFAULT_CURRENCY)
        .bind(stock)
        .bind(time)
        .bind(time)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Seeding::Added(DEMO_PRODUCTS.len()))
}

#[cfg(test)]
mod tests {
    use weft_mesh::page::PageRequest;
    use weft_testkit::TestDatabase;

    use super::*;
    use crate::{MIGRATOR, domain, store::Store};

    /// A fresh, migrated database, removed on drop.
    struct TempDb {
        db: Database,
        _test_db: TestDatabase,
    }

    impl TempDb {
        /// One per engine: SQLite, and PostgreSQL when `WEFT_TEST_POSTGRES_URL` is set.
        async fn each() -> Vec<Self> {
            let mut all = Vec::new();
            for test_db in TestDatabase::each().await {
                let db = Database::open(test_db.url(), 2, &MIGRATOR).await.unwrap();
                all.push(Self {
                    db,
                    _test_db: test_db,
                });
            }
            all
        }
    }

    async fn product_count(db: &Database) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM products")
            .fetch_one(&db.read)
            .await
            .unwrap()
            .try_get("n")
            .unwrap()
    }

    #[test]
    fn demo_products_are_valid_products() {
        for (name, description, price, stock) in DEMO_PRODUCTS {
            let product =
                domain::new_product(name, description, price, domain::DEFAULT_CURRENCY, stock)
                    .unwrap();
            assert_eq!(product.name, name, "names are already trimmed");
            assert!((10..=10_000).contains(&stock), "{name}: stock {stock}");
        }
    }

    #[tokio::test]
    async fn seeding_twice_adds_the_products_once() {
        for temp in TempDb::each().await {
            assert_eq!(
                seed_demo_products(&temp.db).await.unwrap(),
                Seeding::Added(5)
            );
            assert_eq!(
                seed_demo_products(&temp.db).await.unwrap(),
                Seeding::AlreadyDone
            );
            assert_eq!(product_count(&temp.db).await, 5);

            let store = Store::new(temp.db.clone());
            let (products, next) = store
                .list_products(&PageRequest::parse(0, "").unwrap())
                .await
                .unwrap();
            assert!(next.is_empty());
            let names: Vec<&str> = products.iter().map(|p| p.name.as_str()).collect();
            let expected: Vec<&str> = DEMO_PRODUCTS.iter().map(|d| d.0).collect();
            assert_eq!(names, expected, "listed in the seeded order");
            assert!(products.iter().all(|p| p.currency == "USD"));
            temp.db.close().await;
        }
    }

    #[tokio::test]
    async fn deleted_demo_products_do_not_come_back() {
        for temp in TempDb::each().await {
            seed_demo_products(&temp.db).await.unwrap();
            sqlx::query("DELETE FROM products")
                .execute(&temp.db.write)
                .await
                .unwrap();
            assert_eq!(
                seed_demo_products(&temp.db).await.unwrap(),
                Seeding::AlreadyDone
            );
            assert_eq!(product_count(&temp.db).await, 0);
            temp.db.close().await;
        }
    }

    #[tokio::test]
    async fn a_catalogue_with_products_gets_no_demo_products() {
        for temp in TempDb::each().await {
            let store = Store::new(temp.db.clone());
            let tea = domain::new_product("Tea", "", 100, "", 3).unwrap();
            store.create_product(&tea).await.unwrap();
            assert_eq!(
                seed_demo_products(&temp.db).await.unwrap(),
                Seeding::CatalogueNotEmpty
            );
            assert_eq!(
                seed_demo_products(&temp.db).await.unwrap(),
                Seeding::AlreadyDone
            );
            assert_eq!(product_count(&temp.db).await, 1);
            temp.db.close().await;
        }
    }

    #[tokio::test]
    async fn concurrent_seeders_seed_once() {
        for temp in TempDb::each().await {
            let (a, b) = tokio::join!(seed_demo_products(&temp.db), seed_demo_products(&temp.db));
            let mut outcomes = [a.unwrap(), b.unwrap()];
            outcomes.sort_by_key(|o| matches!(o, Seeding::AlreadyDone));
            assert_eq!(outcomes, [Seeding::Added(5), Seeding::AlreadyDone]);
            assert_eq!(product_count(&temp.db).await, 5);
            temp.db.close().await;
        }
    }
}
