-- Catalog: categories and products. Ids are UUID text, money BIGINT minor units,
-- times epoch milliseconds, flags 0/1, attributes JSON text. References use the
-- default NO ACTION: SQLite reports RESTRICT as a trigger error, not a foreign-key one.
-- Names sort in byte order ("C"), as on SQLite, so pages agree on both engines.
CREATE TABLE catalog_categories (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    slug        TEXT NOT NULL CONSTRAINT catalog_categories_slug_key UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    parent_id   TEXT CONSTRAINT catalog_categories_parent_fkey REFERENCES catalog_categories (id),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX catalog_categories_parent_idx ON catalog_categories (parent_id);
CREATE INDEX catalog_categories_name_idx ON catalog_categories (name, id);

CREATE TABLE catalog_products (
    id          TEXT PRIMARY KEY NOT NULL,
    sku         TEXT NOT NULL CONSTRAINT catalog_products_sku_key UNIQUE,
    slug        TEXT NOT NULL CONSTRAINT catalog_products_slug_key UNIQUE,
    name        TEXT COLLATE "C" NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_minor BIGINT NOT NULL CONSTRAINT catalog_products_price_check CHECK (price_minor >= 0),
    currency    TEXT NOT NULL,
    category_id TEXT CONSTRAINT catalog_products_category_fkey REFERENCES catalog_categories (id),
    attributes  TEXT NOT NULL DEFAULT '{}',
    active      BIGINT NOT NULL DEFAULT 1 CONSTRAINT catalog_products_active_check CHECK (active IN (0, 1)),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX catalog_products_category_idx ON catalog_products (category_id, created_at, id);
CREATE INDEX catalog_products_created_idx ON catalog_products (created_at, id);
CREATE INDEX catalog_products_price_idx ON catalog_products (price_minor, id);
CREATE INDEX catalog_products_name_idx ON catalog_products (name, id);
