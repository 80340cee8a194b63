//! The catalog's tables: `catalog_categories` and `catalog_products`.
//!
//! The database enforces uniqueness (SKU, slugs), references (category, parent)
//! and price sign through named constraints; [`write_error`] turns their refusals
//! into [`CatalogError`]s, so no rule depends on a racy check-then-write.

use std::sync::Arc;

use agora_contracts::catalog::Rendition;
use agora_contracts::events::{
    CatalogChange, CategoryChanged, EventPayload, ImageUploaded, ProductChanged,
};
use agora_kernel::{CategoryId, Currency, ImageId, Limit, Money, ProductId, Timestamp};
use agora_platform::Database;
use agora_platform::bus::{Event, Outbox};
use agora_platform::db::{
    Backend, Columns, SqlBuilder, Violation, WriteTx, contains_pattern, violation,
};
use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::{Any, Executor};

use crate::domain::{
    Category, CategoryChanges, CategoryDraft, Product, ProductChanges, ProductDraft,
};
use crate::error::CatalogError;
use crate::images::{MAX_IMAGES_PER_PRODUCT, ProductImage, RenditionView, media_url};

/// The columns of a product row, in the order [`product_from_row`] reads them.
macro_rules! product_columns {
    () => {
        "id, sku, slug, name, description, price_minor, currency, category_id, attributes, active, created_at, updated_at"
    };
}

/// The columns of a category row, in the order [`category_from_row`] reads them.
macro_rules! category_columns {
    () => {
        "id, name, slug, description, parent_id, created_at, updated_at"
    };
}

/// The columns of an image row, in the order [`image_from_row`] reads them.
macro_rules! image_columns {
    () => {
        "id, product_id, object_key, content_type, sha256, byte_size, width, height, alt, renditions, created_at"
    };
}

/// The PostgreSQL advisory lock that serialises changes to the category tree.
const CATEGORY_TREE_LOCK: i64 = 0x6167_6f72_6163_6174; // "agoracat"

/// The PostgreSQL advisory lock that serialises demo seeding.
const SEED_LOCK: i64 = 0x6167_6f72_6173_6564; // "agorased"

/// The order of a product listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ProductSort {
    /// Newest first (the default).
    #[default]
    #[serde(rename = "newest")]
    Newest,
    /// Oldest first.
    #[serde(rename = "oldest")]
    Oldest,
    /// Cheapest first.
    #[serde(rename = "price")]
    PriceAsc,
    /// Dearest first.
    #[serde(rename = "-price")]
    PriceDesc,
    /// By name, A to Z.
    #[serde(rename = "name")]
    NameAsc,
    /// By name, Z to A.
    #[serde(rename = "-name")]
    NameDesc,
}

impl ProductSort {
    /// The keyset predicate (to be closed with the cursor's key and id) and the
    /// ORDER BY clause of this order.
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            ProductSort::Newest => ("(created_at, id) < (", " ORDER BY created_at DESC, id DESC"),
            ProductSort::Oldest => ("(created_at, id) > (", " ORDER BY created_at ASC, id ASC"),
            ProductSort::PriceAsc => ("(price_minor, id) > (", " ORDER BY price_minor ASC, id ASC"),
            ProductSort::PriceDesc => (
                "(price_minor, id) < (",
                " ORDER BY price_minor DESC, id DESC",
            ),
            ProductSort::NameAsc => ("(name, id) > (", " ORDER BY name ASC, id ASC"),
            ProductSort::NameDesc => ("(name, id) < (", " ORDER BY name DESC, id DESC"),
        }
    }

    /// The sort key of `p` under this order, which becomes the page's cursor.
    pub fn cursor_of(self, p: &Product) -> ProductCursor {
        let key = match self {
            ProductSort::Newest | ProductSort::Oldest => SortKey::Int(p.created_at.as_millis()),
            ProductSort::PriceAsc | ProductSort::PriceDesc => SortKey::Int(p.price.amount_minor()),
            ProductSort::NameAsc | ProductSort::NameDesc => SortKey::Text(p.name.clone()),
        };
        ProductCursor {
            sort: self,
            key,
            id: p.id.to_db(),
        }
    }
}

/// Where the previous page of a product listing ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductCursor {
    /// The order the cursor belongs to; a cursor of another order is refused.
    #[serde(rename = "s")]
    pub sort: ProductSort,
    /// The sort key of the last item.
    #[serde(rename = "k")]
    pub key: SortKey,
    /// The id of the last item (the tie-breaker).
    #[serde(rename = "i")]
    pub id: String,
}

impl ProductCursor {
    /// Whether this cursor can continue a listing in `sort` order: issued for that
    /// order, with a key of the sort column's type, a real id, and no text the
    /// database would refuse. Cursors are opaque but not trusted: a forged one must
    /// be a coded 400, never a database error.
    pub fn fits(&self, sort: ProductSort) -> bool {
        let key_fits = match (&self.key, sort) {
            (SortKey::Text(t), ProductSort::NameAsc | ProductSort::NameDesc) => !t.contains('\0'),
            (SortKey::Int(_), ProductSort::NameAsc | ProductSort::NameDesc) => false,
            (SortKey::Int(_), _) => true,
            (SortKey::Text(_), _) => false,
        };
        self.sort == sort && key_fits && ProductId::from_db(&self.id).is_ok()
    }
}

/// A sort key value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortKey {
    /// A number (price, time).
    Int(i64),
    /// Text (name).
    Text(String),
}

/// What a product listing asks for. All filters are optional and combined with AND.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    /// Only products in this category.
    pub category: Option<CategoryId>,
    /// Only products costing at least this, in minor units.
    pub min_price: Option<i64>,
    /// Only products costing at most this, in minor units.
    pub max_price: Option<i64>,
    /// Only products priced in this currency.
    pub currency: Option<Currency>,
    /// Only products whose name or description contains this text (any case).
    pub text: Option<String>,
    /// Only active (or only inactive) products.
    pub active: Option<bool>,
    /// The order.
    pub sort: ProductSort,
    /// Continue after this item.
    pub after: Option<ProductCursor>,
    /// The page size.
    pub limit: Limit,
}

/// The catalog's data access.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    db: Database,
    outbox: Arc<Outbox>,
}

/// The catalog's outbox table.
pub const OUTBOX: &str = "catalog_outbox";

/// What a write changed, for its event.
#[derive(Clone, Copy)]
enum Changed {
    Product(ProductId),
    Category(CategoryId),
}

impl CatalogStore {
    /// A store over `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            outbox: Arc::new(Outbox::new(OUTBOX)),
        }
    }

    /// The module's outbox: ProductChanged and CategoryChanged.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Adds a product, with its ProductChanged, in one transaction.
    pub async fn create_product(&self, product: &Product) -> Result<(), CatalogError> {
        let mut tx = self.db.begin().await?;
        self.insert_product(&mut *tx, product).await?;
        let changed = Changed::Product(product.id);
        self.finish(
            tx,
            true,
            changed,
            CatalogChange::Created,
            product.created_at,
        )
        .await
        .map(drop)
    }

    /// Adds a category, with its CategoryChanged, in one transaction.
    pub async fn create_category(&self, category: &Category) -> Result<(), CatalogError> {
        let mut tx = self.db.begin().await?;
        self.insert_category(&mut *tx, category).await?;
        let changed = Changed::Category(category.id);
        self.finish(
            tx,
            true,
            changed,
            CatalogChange::Created,
            category.created_at,
        )
        .await
        .map(drop)
    }

    /// Ends a write's transaction: when the write `found` its row, with the
    /// event of the change appended, committed; otherwise rolled back, with no
    /// event. Returns `found`.
    async fn finish(
        &self,
        mut tx: WriteTx,
        found: bool,
        changed: Changed,
        change: CatalogChange,
        now: Timestamp,
    ) -> Result<bool, CatalogError> {
        if !found {
            tx.rollback().await?;
            return Ok(false);
        }
        let event = match changed {
            Changed::Product(product_id) => Event::new(
                ProductChanged::KIND,
                product_id,
                &ProductChanged { product_id, change },
                now,
            ),
            Changed::Category(category_id) => Event::new(
                CategoryChanged::KIND,
                category_id,
                &CategoryChanged {
                    category_id,
                    change,
                },
                now,
            ),
        }
        .map_err(|e| CatalogError::Unexpected(anyhow!("event payload: {e}")))?;
        self.outbox.append(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// One product.
    pub async fn product(&self, id: ProductId) -> Result<Option<Product>, CatalogError> {
        self.db
            .fetch_by_key(
                concat!(
                    "SELECT ",
                    product_columns!(),
                    " FROM catalog_products WHERE id = $1"
                ),
                &id.to_db(),
                product_from_row,
            )
            .await
    }

    /// Up to `filter.limit + 1` products: the extra one tells whether a next page exists.
    pub async fn list_products(
        &self,
        filter: &ProductFilter,
    ) -> Result<Vec<Product>, CatalogError> {
        let mut q = SqlBuilder::new(concat!(
            "SELECT ",
            product_columns!(),
            " FROM catalog_products WHERE 1 = 1"
        ));
        if let Some(category) = filter.category {
            q.push(" AND category_id = ").bind(category.to_db())?;
        }
        if let Some(min) = filter.min_price {
            q.push(" AND price_minor >= ").bind(min)?;
        }
        if let Some(max) = filter.max_price {
            q.push(" AND price_minor <= ").bind(max)?;
        }
        if let Some(currency) = filter.currency {
            q.push(" AND currency = ").bind(currency.code())?;
        }
        if let Some(text) = &filter.text {
            let pattern = contains_pattern(&text.to_lowercase());
            q.push(" AND (LOWER(name) LIKE ").bind(pattern.clone())?;
            q.push(" ESCAPE '\\' OR LOWER(description) LIKE ")
                .bind(pattern)?;
            q.push(" ESCAPE '\\')");
        }
        if let Some(active) = filter.active {
            q.push(" AND active = ").bind(i64::from(active))?;
        }
        let (after_predicate, order_by) = filter.sort.sql();
        if let Some(after) = &filter.after {
            q.push(" AND ").push(after_predicate);
            match &after.key {
                SortKey::Int(n) => q.bind(*n)?,
                SortKey::Text(s) => q.bind(s.clone())?,
            };
            q.push(", ").bind(after.id.clone())?.push(")");
        }
        q.push(order_by)
            .push(" LIMIT ")
            .bind(i64::from(filter.limit.get()) + 1)?;
        let rows = q.build().fetch_all(self.db.scan_reader()).await?;
        rows.iter().map(|row| product_from_row(row)).collect()
    }

    /// The products among `ids` that exist.
    pub async fn products_by_ids(&self, ids: &[ProductId]) -> Result<Vec<Product>, CatalogError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = SqlBuilder::new(concat!(
            "SELECT ",
            product_columns!(),
            " FROM catalog_products WHERE id IN ("
        ));
        q.push_list(ids.iter(), |q, id| {
            q.bind(id.to_db())?;
            Ok(())
        })?;
        q.push(")");
        let rows = q.build().fetch_all(self.db.reader()).await?;
        rows.iter().map(|row| product_from_row(row)).collect()
    }

    /// Stores a new product.
    pub async fn insert_product<'e, E>(
        &self,
        executor: E,
        product: &Product,
    ) -> Result<(), CatalogError>
    where
        E: Executor<'e, Database = Any>,
    {
        sqlx::query(concat!(
            "INSERT INTO catalog_products (",
            product_columns!(),
            ") \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(product.id.to_db())
        .bind(product.sku.clone())
        .bind(product.slug.clone())
        .bind(product.name.clone())
        .bind(product.description.clone())
        .bind(product.price.amount_minor())
        .bind(product.price.currency().code())
        .bind(product.category_id.map(|c| c.to_db()))
        .bind(product.attributes.get().to_string())
        .bind(i64::from(product.active))
        .bind(product.created_at.as_millis())
        .bind(product.updated_at.as_millis())
        .execute(executor)
        .await
        .map_err(|e| write_error(e, CatalogError::UnknownCategory))?;
        Ok(())
    }

    /// Applies `changes` in one statement and returns the product as it is now;
    /// `None` when there is no such product.
    pub async fn update_product(
        &self,
        id: ProductId,
        changes: &ProductChanges,
        now: Timestamp,
    ) -> Result<Option<Product>, CatalogError> {
        let mut q = SqlBuilder::new("UPDATE catalog_products SET updated_at = ");
        q.bind(now.as_millis())?;
        if let Some(sku) = &changes.sku {
            q.push(", sku = ").bind(sku.clone())?;
        }
        if let Some(slug) = &changes.slug {
            q.push(", slug = ").bind(slug.clone())?;
        }
        if let Some(name) = &changes.name {
            q.push(", name = ").bind(name.clone())?;
        }
        if let Some(description) = &changes.description {
            q.push(", description = ").bind(description.clone())?;
        }
        if let Some(price) = changes.price {
            q.push(", price_minor = ").bind(price.amount_minor())?;
            q.push(", currency = ").bind(price.currency().code())?;
        }
        if let Some(category) = changes.category_id {
            q.push(", category_id = ")
                .bind(category.map(|c| c.to_db()))?;
        }
        if let Some(attributes) = &changes.attributes {
            q.push(", attributes = ")
                .bind(attributes.get().to_string())?;
        }
        if let Some(active) = changes.active {
            q.push(", active = ").bind(i64::from(active))?;
        }
        q.push(" WHERE id = ").bind(id.to_db())?;
        q.push(concat!(" RETURNING ", product_columns!()));
        let mut tx = self.db.begin().await?;
        let row = q
            .build()
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| write_error(e, CatalogError::UnknownCategory))?;
        let product = row.as_ref().map(|row| product_from_row(row)).transpose()?;
        let found = product.is_some();
        self.finish(tx, found, Changed::Product(id), CatalogChange::Updated, now)
            .await?;
        Ok(product)
    }

    /// Deletes a product (with its ProductChanged); whether it existed.
    pub async fn delete_product(
        &self,
        id: ProductId,
        now: Timestamp,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query("DELETE FROM catalog_products WHERE id = $1")
            .bind(id.to_db())
            .execute(&mut *tx)
            .await?;
        let found = done.rows_affected() > 0;
        self.finish(tx, found, Changed::Product(id), CatalogChange::Deleted, now)
            .await
    }

    /// Adds `image` to its product, with ImageUploaded and ProductChanged, in
    /// one transaction. The product's row is locked (its `updated_at` moves),
    /// so two uploads cannot both pass the count. The same bytes already on
    /// the product are that image: returned, nothing written.
    pub async fn add_image(&self, image: &ProductImage) -> Result<Added, CatalogError> {
        let now = image.created_at;
        let mut tx = self.db.begin().await?;
        let found = sqlx::query("UPDATE catalog_products SET updated_at = $1 WHERE id = $2")
            .bind(now.as_millis())
            .bind(image.product_id.to_db())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if !found {
            tx.rollback().await?;
            return Err(CatalogError::ProductNotFound);
        }
        let existing = sqlx::query(concat!(
            "SELECT ",
            image_columns!(),
            " FROM catalog_product_images WHERE product_id = $1 AND sha256 = $2"
        ))
        .bind(image.product_id.to_db())
        .bind(image.sha256.clone())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.rollback().await?;
            return Ok(Added::Existing(image_from_row(&row)?));
        }
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM catalog_product_images WHERE product_id = $1")
                .bind(image.product_id.to_db())
                .fetch_one(&mut *tx)
                .await?;
        if count >= MAX_IMAGES_PER_PRODUCT as i64 {
            tx.rollback().await?;
            return Err(CatalogError::ImageLimit);
        }
        sqlx::query(concat!(
            "INSERT INTO catalog_product_images (",
            image_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '[]', $10)"
        ))
        .bind(image.id.to_db())
        .bind(image.product_id.to_db())
        .bind(image.key.clone())
        .bind(image.content_type.clone())
        .bind(image.sha256.clone())
        .bind(image.byte_size as i64)
        .bind(i64::from(image.width))
        .bind(i64::from(image.height))
        .bind(image.alt.clone())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        let uploaded = Event::new(
            ImageUploaded::KIND,
            image.product_id,
            &ImageUploaded {
                product_id: image.product_id,
                image_id: image.id,
                key: image.key.clone(),
                content_type: image.content_type.clone(),
                width: image.width,
                height: image.height,
            },
            now,
        )
        .map_err(|e| CatalogError::Unexpected(anyhow!("event payload: {e}")))?;
        self.outbox.append(&mut tx, &uploaded).await?;
        let changed = Changed::Product(image.product_id);
        self.finish(tx, true, changed, CatalogChange::Updated, now)
            .await?;
        Ok(Added::New(image.clone()))
    }

    /// A product's images, oldest first.
    pub async fn images(&self, product: ProductId) -> Result<Vec<ProductImage>, CatalogError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            image_columns!(),
            " FROM catalog_product_images WHERE product_id = $1 ORDER BY created_at, id"
        ))
        .bind(product.to_db())
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(|row| image_from_row(row)).collect()
    }

    /// Removes an image from its product (with ProductChanged); whether it was
    /// there. The stored bytes stay: another product may show the same ones.
    pub async fn delete_image(
        &self,
        product: ProductId,
        image: ImageId,
        now: Timestamp,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.db.begin().await?;
        let done =
            sqlx::query("DELETE FROM catalog_product_images WHERE id = $1 AND product_id = $2")
                .bind(image.to_db())
                .bind(product.to_db())
                .execute(&mut *tx)
                .await?;
        let found = done.rows_affected() > 0;
        self.finish(
            tx,
            found,
            Changed::Product(product),
            CatalogChange::Updated,
            now,
        )
        .await
    }

    /// Sets an image's renditions (with ProductChanged); whether the image
    /// exists.
    pub async fn attach_renditions(
        &self,
        image: ImageId,
        renditions: &[Rendition],
        now: Timestamp,
    ) -> Result<bool, CatalogError> {
        let json = serde_json::to_string(renditions)
            .map_err(|e| CatalogError::Unexpected(anyhow!("renditions: {e}")))?;
        let mut tx = self.db.begin().await?;
        let product: Option<String> = sqlx::query_scalar(
            "UPDATE catalog_product_images SET renditions = $1 WHERE id = $2 RETURNING product_id",
        )
        .bind(json)
        .bind(image.to_db())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(product) = product else {
            tx.rollback().await?;
            return Ok(false);
        };
        let product = ProductId::from_db(&product)
            .map_err(|_| corrupt("catalog_product_images.product_id"))?;
        self.finish(
            tx,
            true,
            Changed::Product(product),
            CatalogChange::Updated,
            now,
        )
        .await
    }

    /// One category.
    pub async fn category(&self, id: CategoryId) -> Result<Option<Category>, CatalogError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            category_columns!(),
            " FROM catalog_categories WHERE id = $1"
        ))
        .bind(id.to_db())
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(|row| category_from_row(row)).transpose()
    }

    /// Every category, by name.
    pub async fn categories(&self) -> Result<Vec<Category>, CatalogError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            category_columns!(),
            " FROM catalog_categories ORDER BY name, id"
        ))
        // The whole table, however many categories staff made.
        .fetch_all(self.db.scan_reader())
        .await?;
        rows.iter().map(|row| category_from_row(row)).collect()
    }

    /// Stores a new category.
    pub async fn insert_category<'e, E>(
        &self,
        executor: E,
        c: &Category,
    ) -> Result<(), CatalogError>
    where
        E: Executor<'e, Database = Any>,
    {
        sqlx::query(concat!(
            "INSERT INTO catalog_categories (",
            category_columns!(),
            ") \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(c.id.to_db())
        .bind(c.name.clone())
        .bind(c.slug.clone())
        .bind(c.description.clone())
        .bind(c.parent_id.map(|p| p.to_db()))
        .bind(c.created_at.as_millis())
        .bind(c.updated_at.as_millis())
        .execute(executor)
        .await
        .map_err(|e| write_error(e, CatalogError::UnknownCategory))?;
        Ok(())
    }

    /// Applies `changes` to a category inside one transaction, refusing a parent
    /// that would make a cycle; `None` when there is no such category.
    pub async fn update_category(
        &self,
        id: CategoryId,
        changes: &CategoryChanges,
        now: Timestamp,
    ) -> Result<Option<Category>, CatalogError> {
        let mut tx = self.db.begin().await?;
        if changes.parent_id.is_some() && self.db.backend() == Backend::Postgres {
            // The cycle check reads the tree and then writes it: serialise
            // re-parenting so two crossing moves cannot both pass the check.
            // (SQLite already serialises writers with BEGIN IMMEDIATE.)
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CATEGORY_TREE_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(Some(parent)) = changes.parent_id {
            // Walk up from the new parent: meeting `id` means a cycle.
            let mut cursor = Some(parent);
            let mut depth = 0;
            while let Some(current) = cursor {
                if current == id {
                    return Err(CatalogError::CategoryCycle);
                }
                depth += 1;
                if depth > 1_000 {
                    return Err(CatalogError::CategoryCycle);
                }
                let parent_of: Option<Option<String>> =
                    sqlx::query_scalar("SELECT parent_id FROM catalog_categories WHERE id = $1")
                        .bind(current.to_db())
                        .fetch_optional(&mut *tx)
                        .await?;
                cursor = match parent_of {
                    None => return Err(CatalogError::UnknownCategory),
                    Some(None) => None,
                    Some(Some(p)) => Some(
                        CategoryId::from_db(&p)
                            .map_err(|_| corrupt("catalog_categories.parent_id"))?,
                    ),
                };
            }
        }
        let mut q = SqlBuilder::new("UPDATE catalog_categories SET updated_at = ");
        q.bind(now.as_millis())?;
        if let Some(name) = &changes.name {
            q.push(", name = ").bind(name.clone())?;
        }
        if let Some(slug) = &changes.slug {
            q.push(", slug = ").bind(slug.clone())?;
        }
        if let Some(description) = &changes.description {
            q.push(", description = ").bind(description.clone())?;
        }
        if let Some(parent) = changes.parent_id {
            q.push(", parent_id = ").bind(parent.map(|p| p.to_db()))?;
        }
        q.push(" WHERE id = ").bind(id.to_db())?;
        q.push(concat!(" RETURNING ", category_columns!()));
        let row = q
            .build()
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| write_error(e, CatalogError::UnknownCategory))?;
        let category = row.as_ref().map(|row| category_from_row(row)).transpose()?;
        let found = category.is_some();
        self.finish(
            tx,
            found,
            Changed::Category(id),
            CatalogChange::Updated,
            now,
        )
        .await?;
        Ok(category)
    }

    /// Deletes a category that nothing refers to (with its CategoryChanged);
    /// whether it existed.
    pub async fn delete_category(
        &self,
        id: CategoryId,
        now: Timestamp,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query("DELETE FROM catalog_categories WHERE id = $1")
            .bind(id.to_db())
            .execute(&mut *tx)
            .await
            .map_err(|e| write_error(e, CatalogError::CategoryInUse))?;
        let found = done.rows_affected() > 0;
        self.finish(
            tx,
            found,
            Changed::Category(id),
            CatalogChange::Deleted,
            now,
        )
        .await
    }

    /// Whether the catalog has neither products nor categories, as seen by
    /// `executor` (inside a transaction, to decide and write atomically).
    pub async fn is_empty<'e, E>(&self, executor: E) -> Result<bool, CatalogError>
    where
        E: Executor<'e, Database = Any>,
    {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM catalog_products) + (SELECT COUNT(*) FROM catalog_categories)",
        )
        .fetch_one(executor)
        .await?;
        Ok(n == 0)
    }

    /// On PostgreSQL, holds the lock that serialises seeding until `tx` ends, so
    /// two replicas starting together do not both load the demo catalog.
    pub async fn lock_for_seeding(
        &self,
        tx: &mut agora_platform::db::WriteTx,
    ) -> Result<(), CatalogError> {
        if self.db.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SEED_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// What [`CatalogStore::add_image`] did.
#[derive(Debug, Clone)]
pub enum Added {
    /// The image is new.
    New(ProductImage),
    /// The product already had these bytes: this image.
    Existing(ProductImage),
}

/// Builds a product to store from a draft.
pub fn new_product(draft: ProductDraft, now: Timestamp) -> Product {
    Product {
        id: ProductId::new(),
        sku: draft.sku,
        slug: draft.slug,
        name: draft.name,
        description: draft.description,
        price: draft.price,
        category_id: draft.category_id,
        attributes: draft.attributes,
        active: draft.active,
        created_at: now,
        updated_at: now,
    }
}

/// Builds a category to store from a draft.
pub fn new_category(draft: CategoryDraft, now: Timestamp) -> Category {
    Category {
        id: CategoryId::new(),
        name: draft.name,
        slug: draft.slug,
        description: draft.description,
        parent_id: draft.parent_id,
        created_at: now,
        updated_at: now,
    }
}

/// Turns a constraint the database enforced into the error the client sees;
/// `on_foreign_key` says what a broken reference means for this statement.
fn write_error(e: sqlx::Error, on_foreign_key: CatalogError) -> CatalogError {
    match violation(&e) {
        Some(v) if v.is_unique("catalog_products_sku_key", "catalog_products.sku") => {
            CatalogError::SkuTaken
        }
        Some(v) if v.is_unique("catalog_products_slug_key", "catalog_products.slug") => {
            CatalogError::SlugTaken
        }
        Some(v) if v.is_unique("catalog_categories_slug_key", "catalog_categories.slug") => {
            CatalogError::CategorySlugTaken
        }
        Some(Violation::ForeignKey(_)) => on_foreign_key,
        _ => CatalogError::Database(e),
    }
}

fn corrupt(column: &str) -> CatalogError {
    CatalogError::Unexpected(anyhow!("corrupt value in {column}"))
}

fn product_from_row(row: &dyn Columns) -> Result<Product, CatalogError> {
    let id = row.text(0)?;
    let currency = row.text(6)?;
    let currency = Currency::parse(&currency).map_err(|_| corrupt("catalog_products.currency"))?;
    let price = Money::new(row.integer(5)?, currency)
        .map_err(|_| corrupt("catalog_products.price_minor"))?;
    let category_id = row.optional_text(7)?;
    let attributes = row.text(8)?;
    let active = row.integer(9)?;
    Ok(Product {
        id: ProductId::from_db(&id).map_err(|_| corrupt("catalog_products.id"))?,
        sku: row.text(1)?,
        slug: row.text(2)?,
        name: row.text(3)?,
        description: row.text(4)?,
        price,
        category_id: category_id
            .map(|c| CategoryId::from_db(&c))
            .transpose()
            .map_err(|_| corrupt("catalog_products.category_id"))?,
        attributes: RawValue::from_string(attributes)
            .context("corrupt value in catalog_products.attributes")?,
        active: active != 0,
        created_at: Timestamp::from_millis(row.integer(10)?),
        updated_at: Timestamp::from_millis(row.integer(11)?),
    })
}

fn image_from_row(row: &dyn Columns) -> Result<ProductImage, CatalogError> {
    let id = row.text(0)?;
    let product_id = row.text(1)?;
    let key = row.text(2)?;
    let renditions: Vec<Rendition> = serde_json::from_str(&row.text(9)?)
        .map_err(|_| corrupt("catalog_product_images.renditions"))?;
    let size = |column: usize, name: &str| -> Result<u32, CatalogError> {
        u32::try_from(row.integer(column)?).map_err(|_| corrupt(name))
    };
    Ok(ProductImage {
        id: ImageId::from_db(&id).map_err(|_| corrupt("catalog_product_images.id"))?,
        product_id: ProductId::from_db(&product_id)
            .map_err(|_| corrupt("catalog_product_images.product_id"))?,
        url: media_url(&key),
        key,
        content_type: row.text(3)?,
        sha256: row.text(4)?,
        byte_size: u64::try_from(row.integer(5)?)
            .map_err(|_| corrupt("catalog_product_images.byte_size"))?,
        width: size(6, "catalog_product_images.width")?,
        height: size(7, "catalog_product_images.height")?,
        alt: row.text(8)?,
        renditions: renditions.into_iter().map(RenditionView::from).collect(),
        created_at: Timestamp::from_millis(row.integer(10)?),
    })
}

fn category_from_row(row: &dyn Columns) -> Result<Category, CatalogError> {
    let id = row.text(0)?;
    let parent_id = row.optional_text(4)?;
    Ok(Category {
        id: CategoryId::from_db(&id).map_err(|_| corrupt("catalog_categories.id"))?,
        name: row.text(1)?,
        slug: row.text(2)?,
        description: row.text(3)?,
        parent_id: parent_id
            .map(|p| CategoryId::from_db(&p))
            .transpose()
            .map_err(|_| corrupt("catalog_categories.parent_id"))?,
        created_at: Timestamp::from_millis(row.integer(5)?),
        updated_at: Timestamp::from_millis(row.integer(6)?),
    })
}
