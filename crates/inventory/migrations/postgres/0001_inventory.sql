-- Inventory: stock per product, the ledger of every change to it, and
-- reservations that set units aside for checkouts. Available = on_hand - reserved;
-- the CHECK constraints make overselling impossible whatever the application does.
CREATE TABLE inventory_stock (
    product_id TEXT PRIMARY KEY NOT NULL,
    on_hand    BIGINT NOT NULL CONSTRAINT inventory_stock_on_hand_check CHECK (on_hand >= 0),
    reserved   BIGINT NOT NULL DEFAULT 0 CONSTRAINT inventory_stock_reserved_check CHECK (reserved >= 0 AND reserved <= on_hand),
    updated_at BIGINT NOT NULL
);

-- Every change to on_hand: set by staff, adjusted by staff, or sold (a committed
-- reservation). Append-only.
CREATE TABLE inventory_movements (
    id            TEXT PRIMARY KEY NOT NULL,
    product_id    TEXT NOT NULL,
    kind          TEXT NOT NULL CONSTRAINT inventory_movements_kind_check CHECK (kind IN ('set', 'adjust', 'sale')),
    delta         BIGINT NOT NULL,
    on_hand_after BIGINT NOT NULL,
    reason        TEXT NOT NULL,
    -- Who: a user or API key id, or the reservation key of a sale.
    actor         TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX inventory_movements_product_idx ON inventory_movements (product_id, created_at, id);

-- One reservation per caller key. Lines are JSON: [{"product_id","quantity"}],
-- sorted by product id.
CREATE TABLE inventory_reservations (
    key        TEXT PRIMARY KEY NOT NULL,
    status     TEXT NOT NULL CONSTRAINT inventory_reservations_status_check CHECK (status IN ('held', 'committed', 'released')),
    lines      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX inventory_reservations_expiry_idx ON inventory_reservations (status, expires_at);
