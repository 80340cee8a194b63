-- Payments: one row per payment intent, the operations callers asked for (capture,
-- cancel, refund) by their idempotency key, every call made to the provider, the
-- provider's webhook events, and the module's outbox and inbox.
--
-- Money is never in doubt: the CHECK constraints keep
-- 0 <= refunded + refunds in flight <= captured <= amount whatever the application
-- does, and every change is a conditional UPDATE.
CREATE TABLE payments_payments (
    id                   TEXT PRIMARY KEY NOT NULL,
    -- The caller's key of the authorization: a repeat finds this row.
    authorize_key        TEXT NOT NULL CONSTRAINT payments_payments_authorize_key_key UNIQUE,
    reference            TEXT NOT NULL,
    status               TEXT NOT NULL CONSTRAINT payments_payments_status_check CHECK (status IN ('processing', 'authorized', 'declined', 'voided', 'captured', 'partially_refunded', 'refunded')),
    amount_minor         INTEGER NOT NULL CONSTRAINT payments_payments_amount_check CHECK (amount_minor > 0),
    currency             TEXT NOT NULL,
    captured_minor       INTEGER NOT NULL DEFAULT 0,
    refunded_minor       INTEGER NOT NULL DEFAULT 0,
    -- Refunds sent to the provider and not yet answered: reserved, so concurrent
    -- refunds can never together exceed the capture.
    refund_pending_minor INTEGER NOT NULL DEFAULT 0,
    provider             TEXT NOT NULL,
    provider_ref         TEXT,
    -- The provider's token, kept only while the authorization is unsettled (to
    -- repeat it); cleared once the provider answered. Card numbers are never stored.
    payment_token        TEXT,
    card_brand           TEXT,
    card_last4           TEXT,
    decline_reason       TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    CONSTRAINT payments_payments_amounts_check CHECK (
        refunded_minor >= 0 AND refund_pending_minor >= 0
        AND refunded_minor + refund_pending_minor <= captured_minor
        AND captured_minor <= amount_minor
    )
);
CREATE INDEX payments_payments_created_idx ON payments_payments (created_at, id);
CREATE INDEX payments_payments_reference_idx ON payments_payments (reference);
CREATE INDEX payments_payments_status_idx ON payments_payments (status, updated_at);
CREATE INDEX payments_payments_provider_ref_idx ON payments_payments (provider, provider_ref);

-- Captures, cancellations and refunds, one per caller key. `amount_minor` is what
-- the operation takes or gives back (for a cancel: the refund of what was
-- captured, or 0 for a void).
CREATE TABLE payments_operations (
    key          TEXT PRIMARY KEY NOT NULL,
    payment_id   TEXT NOT NULL,
    kind         TEXT NOT NULL CONSTRAINT payments_operations_kind_check CHECK (kind IN ('capture', 'cancel', 'refund')),
    amount_minor INTEGER NOT NULL CONSTRAINT payments_operations_amount_check CHECK (amount_minor >= 0),
    reason       TEXT NOT NULL,
    status       TEXT NOT NULL CONSTRAINT payments_operations_status_check CHECK (status IN ('pending', 'succeeded', 'failed')),
    error        TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX payments_operations_payment_idx ON payments_operations (payment_id, created_at);
CREATE INDEX payments_operations_pending_idx ON payments_operations (status, updated_at);

-- Every call made to the provider and how it ended. Append-only.
CREATE TABLE payments_attempts (
    id            TEXT PRIMARY KEY NOT NULL,
    payment_id    TEXT NOT NULL,
    -- `authorize`, `capture`, `void` or `refund`.
    operation     TEXT NOT NULL,
    -- The caller's key of the operation; NULL for the authorization.
    operation_key TEXT,
    -- `approved`, `declined`, `succeeded`, `refused`, `unavailable`, `timeout`.
    outcome       TEXT NOT NULL,
    error         TEXT,
    at            INTEGER NOT NULL
);
CREATE INDEX payments_attempts_payment_idx ON payments_attempts (payment_id, at);
CREATE INDEX payments_attempts_operation_idx ON payments_attempts (operation_key);

-- Webhook events as the provider sent them, once per (provider, event id).
CREATE TABLE payments_provider_events (
    provider     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    provider_ref TEXT,
    -- The payment it is about, when known; whether it moved that payment forward.
    payment_id   TEXT,
    applied      INTEGER NOT NULL DEFAULT 0,
    payload      TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX payments_provider_events_payment_idx ON payments_provider_events (payment_id, received_at);

-- The outbox and inbox (crates/platform/src/bus.rs).
CREATE TABLE payments_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    payload      TEXT NOT NULL,
    occurred_at  INTEGER NOT NULL,
    published_at INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX payments_outbox_unpublished_idx ON payments_outbox (seq) WHERE published_at IS NULL;

CREATE TABLE payments_inbox (
    consumer   TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    handled_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
