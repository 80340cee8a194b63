//! The catalog's service layer: the operations its API and its port offer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agora_contracts::PortError;
use agora_contracts::catalog::{CatalogPort, ProductSnapshot, Rendition};
use agora_contracts::events::{CategoryChanged, EventPayload, ProductChanged};
use agora_kernel::{CategoryId, Clock, ImageId, Page, ProductId};
use agora_platform::bus::{Event, Handler};
use agora_platform::cache::CacheAside;
use agora_platform::http::cacheable;
use agora_platform::storage::{Object, ObjectKey, ObjectStorage, StorageError};
use async_trait::async_trait;
use axum::body::Bytes;
use tokio::sync::Semaphore;

use crate::domain::{
    Category, CategoryChanges, CategoryDraft, Product, ProductChanges, ProductDraft,
};
use crate::error::CatalogError;
use crate::images::{self, ProductImage};
use crate::store::{Added, CatalogStore, ProductFilter, new_category, new_product};

/// The most ids one [`CatalogPort::products_by_ids`] call may ask for.
pub const MAX_IDS_PER_CALL: usize = 1_000;

/// The tag of every cached catalog read: any write to the catalog invalidates
/// them all. Writes are rare beside reads, and one tag leaves no read to forget
/// (a product's change moves it in and out of list pages too).
const CACHE_TAG: &str = "catalog";

/// The cache in front of the catalog's public reads.
#[derive(Clone)]
struct ReadCache {
    aside: Arc<CacheAside>,
    ttl: Duration,
}

/// Where product images are stored, and how big they may be.
#[derive(Clone)]
struct Media {
    storage: ObjectStorage,
    max_image_bytes: usize,
    /// Decoding an upload takes CPU and up to ~230 MB: two at a time.
    decoding: Arc<Semaphore>,
}

/// The catalog. Cheap to clone: one reference count, since every request's
/// handler takes a clone (counts shared between cores are what a clone costs).
#[derive(Clone)]
pub struct Catalog {
    parts: Arc<Parts>,
}

#[derive(Clone)]
struct Parts {
    store: CatalogStore,
    clock: Arc<dyn Clock>,
    /// Public reads (active products, their lists), when caching is on.
    cache: Option<ReadCache>,
    /// Product images, when storage is configured.
    media: Option<Media>,
}

impl Catalog {
    /// The catalog over `store`, telling time by `clock`, without a cache.
    pub fn new(store: CatalogStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            parts: Arc::new(Parts {
                store,
                clock,
                cache: None,
                media: None,
            }),
        }
    }

    /// The same catalog with product images kept in `storage`, uploads of at
    /// most `max_image_bytes`.
    pub fn with_storage(mut self, storage: ObjectStorage, max_image_bytes: usize) -> Self {
        Arc::make_mut(&mut self.parts).media = Some(Media {
            storage,
            max_image_bytes,
            decoding: Arc::new(Semaphore::new(2)),
        });
        self
    }

    fn media(&self) -> Result<&Media, CatalogError> {
        self.parts.media.as_ref().ok_or_else(|| {
            CatalogError::Unexpected(anyhow::anyhow!("no object storage configured"))
        })
    }

    /// The largest image upload taken, in bytes (0 without storage).
    pub fn max_image_bytes(&self) -> usize {
        self.parts.media.as_ref().map_or(0, |m| m.max_image_bytes)
    }

    /// Adds the image in `bytes` to a product (staff). The bytes are checked
    /// (a whole JPEG, PNG or WebP within the limits) before anything is
    /// stored; the original is stored under its content hash, then recorded
    /// with ImageUploaded. `false` with the image when the product already had
    /// these bytes.
    pub async fn add_image(
        &self,
        product: ProductId,
        bytes: Bytes,
        alt: String,
    ) -> Result<(ProductImage, bool), CatalogError> {
        let media = self.media()?;
        // No decoding for a product that is not there.
        self.product(product, true).await?;
        let inspected = {
            let _turn = media
                .decoding
                .acquire()
                .await
                .map_err(|e| CatalogError::Unexpected(e.into()))?;
            let (bytes, max) = (bytes.clone(), media.max_image_bytes);
            tokio::task::spawn_blocking(move || images::inspect(&bytes, max))
                .await
                .map_err(|e| CatalogError::Unexpected(e.into()))??
        };
        let key = ObjectKey::parse(&inspected.key())
            .map_err(|e| CatalogError::Unexpected(anyhow::anyhow!("image key: {e}")))?;
        // Content-addressed: bytes already stored are these bytes. A crash
        // after this put leaves an object no row names, never a row without
        // its object.
        if !media.storage.exists(&key).await? {
            media.storage.put(&key, bytes).await?;
        }
        let image = ProductImage {
            id: ImageId::new(),
            product_id: product,
            url: images::media_url(key.as_str()),
            key: key.to_string(),
            content_type: inspected.format.content_type().to_string(),
            width: inspected.width,
            height: inspected.height,
            byte_size: inspected.byte_size as u64,
            sha256: inspected.sha256,
            alt,
            renditions: Vec::new(),
            created_at: self.parts.clock.now(),
        };
        match self.write(self.parts.store.add_image(&image)).await? {
            Added::New(image) => {
                tracing::info!(product_id = %product, image_id = %image.id, key = %image.key, "image added");
                Ok((image, true))
            }
            Added::Existing(image) => Ok((image, false)),
        }
    }

    /// A product's images; an inactive product's for staff only.
    pub async fn images(
        &self,
        product: ProductId,
        staff: bool,
    ) -> Result<Vec<ProductImage>, CatalogError> {
        self.product(product, staff).await?;
        self.parts.store.images(product).await
    }

    /// An active product's images, rendered for the public, from the cache
    /// when it holds them.
    pub async fn public_images(&self, product: ProductId) -> Result<Bytes, CatalogError> {
        let load = async { render(&self.images(product, false).await?, None) };
        self.cached(&format!("catalog:images:{product}"), load)
            .await
    }

    /// Removes an image from a product (staff).
    pub async fn delete_image(
        &self,
        product: ProductId,
        image: ImageId,
    ) -> Result<(), CatalogError> {
        if !self
            .write(
                self.parts
                    .store
                    .delete_image(product, image, self.parts.clock.now()),
            )
            .await?
        {
            return Err(CatalogError::ImageNotFound);
        }
        tracing::info!(product_id = %product, image_id = %image, "image removed");
        Ok(())
    }

    /// A stored original or rendition, for `/media/{key}`; nothing else in
    /// the storage is served.
    pub async fn media_object(&self, key: &str) -> Result<(ObjectKey, Object), CatalogError> {
        let key = ObjectKey::parse(key).map_err(|_| CatalogError::MediaNotFound)?;
        if !images::is_public_key(key.as_str()) {
            return Err(CatalogError::MediaNotFound);
        }
        match self.media()?.storage.get(&key).await {
            Ok(object) => Ok((key, object)),
            Err(StorageError::NotFound(_)) => Err(CatalogError::MediaNotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// The same catalog with its public reads cached in `aside` for at most
    /// `ttl`. Writes through it invalidate them at once.
    pub fn with_cache(mut self, aside: Arc<CacheAside>, ttl: Duration) -> Self {
        Arc::make_mut(&mut self.parts).cache = Some(ReadCache { aside, ttl });
        self
    }

    /// The read cache's counts, when caching is on.
    pub fn cache_stats(&self) -> Option<agora_platform::cache::CacheStats> {
        self.parts.cache.as_ref().map(|c| c.aside.stats())
    }

    /// An active product, rendered for the public (`platform::http::cacheable`),
    /// from the cache when it holds it.
    pub async fn public_product(&self, id: ProductId) -> Result<Bytes, CatalogError> {
        let load = async { render(&self.product(id, false).await?, None) };
        self.cached(&format!("catalog:product:{id}"), load).await
    }

    /// A page of active products, rendered for the public, from the cache when
    /// it holds it. `filter` must ask for active products only.
    pub async fn public_products(&self, filter: ProductFilter) -> Result<Bytes, CatalogError> {
        debug_assert_eq!(filter.active, Some(true));
        let key = format!("catalog:products:{filter:?}");
        let load = async {
            let page = self.list_products(filter).await?;
            render(&page.items, page.next_cursor.as_deref())
        };
        self.cached(&key, load).await
    }

    async fn cached(
        &self,
        key: &str,
        load: impl Future<Output = Result<Bytes, CatalogError>>,
    ) -> Result<Bytes, CatalogError> {
        match &self.parts.cache {
            Some(cache) => {
                cache
                    .aside
                    .get_or_load(key, cache.ttl, &[CACHE_TAG], load)
                    .await
            }
            None => load.await,
        }
    }

    /// Runs a write, then forgets every cached read; if the caller is dropped
    /// before the write returns (a cancelled request, whose write may have
    /// taken effect), the reads are forgotten in the background.
    async fn write<T>(
        &self,
        write: impl Future<Output = Result<T, CatalogError>>,
    ) -> Result<T, CatalogError> {
        let invalidation = self
            .parts
            .cache
            .as_ref()
            .map(|c| c.aside.invalidation(CACHE_TAG));
        let written = write.await;
        if written.is_ok() {
            // Its ProductChanged or CategoryChanged tells the other nodes.
            self.parts.store.outbox().notify();
        }
        if let Some(invalidation) = invalidation {
            invalidation.now().await;
        }
        written
    }

    /// The store, for seeding and tests.
    pub fn store(&self) -> &CatalogStore {
        &self.parts.store
    }

    /// A page of products. `staff` callers see inactive products too.
    pub async fn list_products(
        &self,
        filter: ProductFilter,
    ) -> Result<Page<Product>, CatalogError> {
        let rows = self.parts.store.list_products(&filter).await?;
        let sort = filter.sort;
        Ok(Page::from_overfetch(rows, filter.limit, |p| {
            sort.cursor_of(p)
        }))
    }

    /// One product; inactive ones only for staff.
    pub async fn product(&self, id: ProductId, staff: bool) -> Result<Product, CatalogError> {
        match self.parts.store.product(id).await? {
            Some(p) if p.active || staff => Ok(p),
            _ => Err(CatalogError::ProductNotFound),
        }
    }

    /// Adds a product.
    pub async fn create_product(&self, draft: ProductDraft) -> Result<Product, CatalogError> {
        let product = new_product(draft, self.parts.clock.now());
        self.write(self.parts.store.create_product(&product))
            .await?;
        tracing::info!(product_id = %product.id, sku = %product.sku, "product created");
        Ok(product)
    }

    /// Changes a product.
    pub async fn update_product(
        &self,
        id: ProductId,
        changes: ProductChanges,
    ) -> Result<Product, CatalogError> {
        let product = self
            .write(
                self.parts
                    .store
                    .update_product(id, &changes, self.parts.clock.now()),
            )
            .await?
            .ok_or(CatalogError::ProductNotFound)?;
        tracing::info!(product_id = %id, "product updated");
        Ok(product)
    }

    /// Removes a product.
    pub async fn delete_product(&self, id: ProductId) -> Result<(), CatalogError> {
        if !self
            .write(self.parts.store.delete_product(id, self.parts.clock.now()))
            .await?
        {
            return Err(CatalogError::ProductNotFound);
        }
        tracing::info!(product_id = %id, "product deleted");
        Ok(())
    }

    /// Every category.
    pub async fn categories(&self) -> Result<Vec<Category>, CatalogError> {
        self.parts.store.categories().await
    }

    /// One category.
    pub async fn category(&self, id: CategoryId) -> Result<Category, CatalogError> {
        self.parts
            .store
            .category(id)
            .await?
            .ok_or(CatalogError::CategoryNotFound)
    }

    /// Adds a category.
    pub async fn create_category(&self, draft: CategoryDraft) -> Result<Category, CatalogError> {
        let category = new_category(draft, self.parts.clock.now());
        self.write(self.parts.store.create_category(&category))
            .await?;
        tracing::info!(category_id = %category.id, "category created");
        Ok(category)
    }

    /// Changes a category.
    pub async fn update_category(
        &self,
        id: CategoryId,
        changes: CategoryChanges,
    ) -> Result<Category, CatalogError> {
        self.write(
            self.parts
                .store
                .update_category(id, &changes, self.parts.clock.now()),
        )
        .await?
        .ok_or(CatalogError::CategoryNotFound)
    }

    /// Removes a category that has no products and no subcategories.
    pub async fn delete_category(&self, id: CategoryId) -> Result<(), CatalogError> {
        if !self
            .write(self.parts.store.delete_category(id, self.parts.clock.now()))
            .await?
        {
            return Err(CatalogError::CategoryNotFound);
        }
        tracing::info!(category_id = %id, "category deleted");
        Ok(())
    }

    /// Forgets every cached read: for writes made past the service (seeding).
    pub async fn forget_cached_reads(&self) {
        if let Some(cache) = &self.parts.cache {
            cache.aside.invalidation(CACHE_TAG).now().await;
        }
    }

    /// The time now, by the catalog's clock.
    pub fn now(&self) -> agora_kernel::Timestamp {
        self.parts.clock.now()
    }
}

/// Every node forgets its cached catalog reads when another node changed the
/// catalog (ProductChanged, CategoryChanged; see `Bus::subscribe_each_node`).
#[async_trait]
impl Handler for Catalog {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        if CHANGE_EVENTS.contains(&event.kind.as_str()) {
            self.forget_cached_reads().await;
        }
        Ok(())
    }

    /// Changes may have been missed: forget everything cached.
    async fn resumed(&self) {
        self.forget_cached_reads().await;
    }
}

/// What the catalog's cache listens to.
pub const CHANGE_EVENTS: [&str; 2] = [ProductChanged::KIND, CategoryChanged::KIND];

/// The name of the catalog's per-node cache subscription.
pub const CACHE_CONSUMER: &str = "catalog-cache";

/// `ids` without repeats, in their order; refused when there are too many.
fn distinct(ids: &[ProductId]) -> Result<Vec<ProductId>, PortError> {
    if ids.len() > MAX_IDS_PER_CALL {
        return Err(PortError::Internal {
            module: "catalog",
            reason: format!(
                "asked for {} ids; at most {MAX_IDS_PER_CALL} a call",
                ids.len()
            ),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    Ok(ids.iter().copied().filter(|id| seen.insert(*id)).collect())
}

fn unavailable(e: CatalogError) -> PortError {
    PortError::Unavailable {
        module: "catalog",
        reason: e.to_string(),
    }
}

impl Catalog {
    /// The snapshots of the products among `ids` that exist, from the store.
    async fn snapshots(&self, ids: &[ProductId]) -> Result<Vec<ProductSnapshot>, CatalogError> {
        let products = self.parts.store.products_by_ids(ids).await?;
        Ok(products
            .into_iter()
            .map(|p| ProductSnapshot {
                id: p.id,
                sku: p.sku,
                name: p.name,
                unit_price: p.price,
                active: p.active,
            })
            .collect())
    }
}

#[async_trait]
impl CatalogPort for Catalog {
    async fn products_by_ids(&self, ids: &[ProductId]) -> Result<Vec<ProductSnapshot>, PortError> {
        let ids = distinct(ids)?;
        let Some(cache) = &self.parts.cache else {
            return self.snapshots(&ids).await.map_err(unavailable);
        };
        // Cached like the public reads (and forgotten with them on every
        // write, here and, through the change events, on other nodes).
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("catalog:snapshot:{id}"))
            .collect();
        let ids = &ids;
        let cached = cache
            .aside
            .get_many_or_load(&keys, cache.ttl, &[CACHE_TAG], |missing| async move {
                let wanted: Vec<ProductId> = missing.iter().map(|&i| ids[i]).collect();
                let found: HashMap<ProductId, ProductSnapshot> = self
                    .snapshots(&wanted)
                    .await?
                    .into_iter()
                    .map(|p| (p.id, p))
                    .collect();
                wanted
                    .iter()
                    .map(|id| {
                        found
                            .get(id)
                            .map(|p| serde_json::to_vec(p).map(Bytes::from))
                            .transpose()
                            .map_err(|e| CatalogError::Unexpected(e.into()))
                    })
                    .collect()
            })
            .await
            .map_err(unavailable)?;
        cached
            .into_iter()
            .flatten()
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| PortError::Internal {
                    module: "catalog",
                    reason: format!("a cached product snapshot: {e}"),
                })
            })
            .collect()
    }

    async fn current_products_by_ids(
        &self,
        ids: &[ProductId],
    ) -> Result<Vec<ProductSnapshot>, PortError> {
        let ids = distinct(ids)?;
        self.snapshots(&ids).await.map_err(unavailable)
    }

    async fn attach_renditions(
        &self,
        image: ImageId,
        renditions: &[Rendition],
    ) -> Result<bool, PortError> {
        self.write(
            self.parts
                .store
                .attach_renditions(image, renditions, self.parts.clock.now()),
        )
        .await
        .map_err(|e| PortError::Unavailable {
            module: "catalog",
            reason: e.to_string(),
        })
    }
}

fn render<T: serde::Serialize>(data: &T, next_cursor: Option<&str>) -> Result<Bytes, CatalogError> {
    cacheable::render(data, next_cursor).map_err(|e| CatalogError::Unexpected(e.into()))
}
