-- pgbench script: weft-order's CreateOrder (one line, a fresh idempotency key) as the SQL it
-- sends, with nothing around it: the yardstick of bench/write.sh on PostgreSQL.
-- Run with `-M prepared` (sqlx prepares its statements too) and `-D product=<id>` naming a
-- product with enough stock. Orders go to the user `bench-pgbench`.
\set n random(1, 9000000000000000000)
-- The idempotency key lookup that precedes the transaction.
SELECT o.id, o.user_id, o.status, o.total_cents, o.currency, o.idempotency_key,
       o.request_hash, o.create_time, o.update_time, i.product_id, i.product_name,
       i.quantity, i.unit_price_cents AS item_price
  FROM orders o JOIN order_items i ON i.order_id = o.id
 WHERE o.user_id = 'bench-pgbench' AND o.idempotency_key = 'pg-' || :client_id || '-' || :n
 ORDER BY i.line_no;
BEGIN;
UPDATE products SET stock = stock - 1, update_time = :n
 WHERE id = :product AND stock >= 1
 RETURNING name, unit_price_cents, currency \gset
INSERT INTO orders (id, user_id, status, total_cents, currency, idempotency_key, request_hash,
                    create_time, update_time)
VALUES ('pg-' || :client_id || '-' || :n, 'bench-pgbench', 'confirmed', :unit_price_cents,
        :currency, 'pg-' || :client_id || '-' || :n, 'hash', :n, :n);
INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity,
                         unit_price_cents)
VALUES ('pg-' || :client_id || '-' || :n, 0, :product, :name, 1, :unit_price_cents);
END;
