-- Carts: one per customer, or anonymous, found by the SHA-256 of its token.
-- Prices are not stored: a cart shows the catalog's prices when it is read.
CREATE TABLE cart_carts (
    id         TEXT PRIMARY KEY NOT NULL,
    -- The customer (a user id as stored by identity), or NULL for an anonymous cart.
    owner      TEXT CONSTRAINT cart_carts_owner_key UNIQUE,
    -- SHA-256 of an anonymous cart's token, hex; NULL for a customer's cart.
    token_hash TEXT CONSTRAINT cart_carts_token_key UNIQUE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    CONSTRAINT cart_carts_owner_or_token_check CHECK ((owner IS NULL) <> (token_hash IS NULL))
);
CREATE INDEX cart_carts_updated_idx ON cart_carts (updated_at);

CREATE TABLE cart_items (
    cart_id    TEXT NOT NULL CONSTRAINT cart_items_cart_fkey REFERENCES cart_carts (id) ON DELETE CASCADE,
    product_id TEXT NOT NULL,
    quantity   INTEGER NOT NULL CONSTRAINT cart_items_quantity_check CHECK (quantity BETWEEN 1 AND 99),
    added_at   INTEGER NOT NULL,
    CONSTRAINT cart_items_pkey PRIMARY KEY (cart_id, product_id)
);
