-- Product images. The bytes live in object storage under a content-addressed
-- key (`images/<sha256>.<ext>`); a row says which product shows them. The same
-- bytes uploaded twice to one product are one image. `renditions` is the JSON
-- list the thumbnails function attaches (contracts::catalog::Rendition).
CREATE TABLE catalog_product_images (
    id           TEXT PRIMARY KEY NOT NULL,
    product_id   TEXT NOT NULL CONSTRAINT catalog_product_images_product_fkey REFERENCES catalog_products (id) ON DELETE CASCADE,
    object_key   TEXT NOT NULL,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    byte_size    BIGINT NOT NULL,
    width        BIGINT NOT NULL,
    height       BIGINT NOT NULL,
    alt          TEXT NOT NULL DEFAULT '',
    renditions   TEXT NOT NULL DEFAULT '[]',
    created_at   BIGINT NOT NULL,
    CONSTRAINT catalog_product_images_content_key UNIQUE (product_id, sha256)
);
CREATE INDEX catalog_product_images_product_idx ON catalog_product_images (product_id, created_at, id);
