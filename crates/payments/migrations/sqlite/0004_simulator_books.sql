-- The simulated provider's own books: what a real provider keeps on its side.
-- Kept here so that every payments process, and a restarted one, sees the same
-- authorizations. Read and written by the simulator alone (src/simulator.rs).
CREATE TABLE payments_simulator_payments (
    provider_ref     TEXT PRIMARY KEY NOT NULL,
    currency         TEXT NOT NULL,
    authorized_minor BIGINT NOT NULL CONSTRAINT payments_simulator_payments_authorized_check CHECK (authorized_minor > 0),
    captured_minor   BIGINT NOT NULL DEFAULT 0,
    refunded_minor   BIGINT NOT NULL DEFAULT 0,
    voided           BIGINT NOT NULL DEFAULT 0 CONSTRAINT payments_simulator_payments_voided_check CHECK (voided IN (0, 1)),
    created_at       BIGINT NOT NULL,
    CONSTRAINT payments_simulator_payments_amounts_check CHECK (
        captured_minor >= 0 AND captured_minor <= authorized_minor
        AND refunded_minor >= 0 AND refunded_minor <= captured_minor
    )
);

-- One answer per idempotency key: 'pending' only inside the transaction that
-- claimed the key.
CREATE TABLE payments_simulator_answers (
    key        TEXT PRIMARY KEY NOT NULL,
    outcome    TEXT NOT NULL CONSTRAINT payments_simulator_answers_outcome_check CHECK (outcome IN ('pending', 'done', 'approved', 'declined', 'refused', 'unavailable', 'timeout')),
    detail     TEXT,
    brand      TEXT,
    last4      TEXT,
    created_at BIGINT NOT NULL
);
