-- The saga stores the checkout's final response on the idempotency record of its
-- order (`WHERE order_id = …`). Without this index that update read the whole
-- table, once per finished checkout, while holding the writer.
CREATE UNIQUE INDEX orders_idempotency_order_idx ON orders_idempotency (order_id);
