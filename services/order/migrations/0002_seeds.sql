-- One-time data seedings that have run (`order.seed_demo_products`), so that each runs at most
-- once in a database's life: deleting the demo products later does not bring them back.
-- The primary key makes two processes starting at once seed only once.

CREATE TABLE seeds (
    name TEXT NOT NULL PRIMARY KEY,
    applied_time BIGINT NOT NULL
);
