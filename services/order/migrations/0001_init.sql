-- Products, stock and orders of weft-order. Portable SQL: runs on SQLite and PostgreSQL.
-- Times are microseconds since the Unix epoch; money is integer cents.

CREATE TABLE products (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    currency TEXT NOT NULL,
    -- The last line of defence: no statement can take stock below zero.
    stock BIGINT NOT NULL CHECK (stock >= 0),
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

-- ListProducts: oldest first, keyset on (create_time, id).
CREATE INDEX products_by_create_time ON products (create_time, id);

CREATE TABLE orders (
    id TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    total_cents BIGINT NOT NULL CHECK (total_cents >= 0),
    currency TEXT NOT NULL,
    -- NULL when the order was placed without a key; NULLs never collide in the UNIQUE below.
    idempotency_key TEXT NULL,
    -- sha256 of the canonical item list, to tell a retry from a different request.
    request_hash TEXT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    UNIQUE (user_id, idempotency_key)
);

-- ListOrders: a user's orders, newest first (scanned backwards), keyset on (create_time, id).
CREATE INDEX orders_by_user ON orders (user_id, create_time, id);

CREATE TABLE order_items (
    order_id TEXT NOT NULL,
    line_no BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    product_name TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no)
);
