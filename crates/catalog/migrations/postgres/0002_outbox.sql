-- The catalog's outbox: ProductChanged and CategoryChanged, written in the same
-- transaction as the change, so that every node's cache hears of it (see
-- agora_platform::bus). The catalog consumes no events, so it has no inbox.
CREATE TABLE catalog_outbox (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    payload      TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    published_at BIGINT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX catalog_outbox_unpublished_idx ON catalog_outbox (seq) WHERE published_at IS NULL;
