-- Orders: orders with their lines (a price snapshot taken at checkout), the
-- checkout saga that drives each order, its step log, the idempotency records of
-- requests that change orders, and the module's outbox and inbox.
CREATE TABLE orders_orders (
    id             TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL,
    status         TEXT NOT NULL CONSTRAINT orders_orders_status_check CHECK (status IN ('pending', 'reserved', 'authorized', 'confirmed', 'fulfilled', 'cancelled', 'refunded')),
    currency       TEXT NOT NULL,
    total_minor    BIGINT NOT NULL CONSTRAINT orders_orders_total_check CHECK (total_minor >= 0),
    refunded_minor BIGINT NOT NULL DEFAULT 0 CONSTRAINT orders_orders_refunded_check CHECK (refunded_minor >= 0 AND refunded_minor <= total_minor),
    payment_id     TEXT,
    -- Why the order was cancelled (e.g. payment_declined, out_of_stock), and the
    -- details the customer was told.
    cancel_reason  TEXT,
    failure        TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX orders_orders_user_idx ON orders_orders (user_id, created_at, id);
CREATE INDEX orders_orders_created_idx ON orders_orders (created_at, id);

CREATE TABLE orders_lines (
    order_id         TEXT NOT NULL REFERENCES orders_orders (id),
    product_id       TEXT NOT NULL,
    sku              TEXT NOT NULL,
    name             TEXT NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    quantity         BIGINT NOT NULL CONSTRAINT orders_lines_quantity_check CHECK (quantity > 0),
    line_total_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- One saga per order. `step` is the next thing to do; `state` says whether it
-- moves forward (running), backward (compensating), or is over (done). A driver
-- holds the lease until `lease_until`; another takes over only after it passed.
CREATE TABLE orders_sagas (
    order_id        TEXT PRIMARY KEY NOT NULL REFERENCES orders_orders (id),
    state           TEXT NOT NULL CONSTRAINT orders_sagas_state_check CHECK (state IN ('running', 'compensating', 'done')),
    step            TEXT NOT NULL,
    -- The provider token, kept only while the saga may still authorize.
    payment_token   TEXT,
    payment_id      TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    lease_owner     TEXT,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX orders_sagas_due_idx ON orders_sagas (state, next_attempt_at);

-- Every step of every saga, before (started) and after (succeeded, failed).
CREATE TABLE orders_saga_log (
    id       TEXT PRIMARY KEY NOT NULL,
    order_id TEXT NOT NULL,
    step     TEXT NOT NULL,
    phase    TEXT NOT NULL CONSTRAINT orders_saga_log_phase_check CHECK (phase IN ('started', 'succeeded', 'failed')),
    detail   TEXT,
    at       BIGINT NOT NULL
);
CREATE INDEX orders_saga_log_order_idx ON orders_saga_log (order_id, at, id);

-- Requests with an Idempotency-Key, per caller: the request's hash, the order it
-- made, and once finished the response to replay.
CREATE TABLE orders_idempotency (
    caller          TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    response_status BIGINT,
    response_body   TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (caller, key)
);

CREATE TABLE orders_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    payload      TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    published_at BIGINT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX orders_outbox_unpublished_idx ON orders_outbox (seq) WHERE published_at IS NULL;

CREATE TABLE orders_inbox (
    consumer   TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
