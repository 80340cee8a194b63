//! The catalog's service layer: the operations its API and its port offer.

use std::sync::Arc;

use agora_contracts::PortError;
use agora_contracts::catalog::{CatalogPort, ProductSnapshot};
use agora_kernel::{CategoryId, Clock, Page, ProductId};
use async_trait::async_trait;

use crate::domain::{
    Category, CategoryChanges, CategoryDraft, Product, ProductChanges, ProductDraft,
};
use crate::error::CatalogError;
use crate::store::{CatalogStore, ProductFilter, new_category, new_product};

/// The most ids one [`CatalogPort::products_by_ids`] call may ask for.
pub const MAX_IDS_PER_CALL: usize = 1_000;

/// The catalog. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    store: CatalogStore,
    clock: Arc<dyn Clock>,
}

impl Catalog {
    /// The catalog over `store`, telling time by `clock`.
    pub fn new(store: CatalogStore, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// The store, for seeding and tests.
    pub fn store(&self) -> &CatalogStore {
        &self.store
    }

    /// A page of products. `staff` callers see inactive products too.
    pub async fn list_products(
        &self,
        filter: ProductFilter,
    ) -> Result<Page<Product>, CatalogError> {
        let rows = self.store.list_products(&filter).await?;
        let sort = filter.sort;
        Ok(Page::from_overfetch(rows, filter.limit, |p| {
            sort.cursor_of(p)
        }))
    }

    /// One product; inactive ones only for staff.
    pub async fn product(&self, id: ProductId, staff: bool) -> Result<Product, CatalogError> {
        match self.store.product(id).await? {
            Some(p) if p.active || staff => Ok(p),
            _ => Err(CatalogError::ProductNotFound),
        }
    }

    /// Adds a product.
    pub async fn create_product(&self, draft: ProductDraft) -> Result<Product, CatalogError> {
        let product = new_product(draft, self.clock.now());
        self.store
            .insert_product(self.store.db().writer(), &product)
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
            .store
            .update_product(id, &changes, self.clock.now())
            .await?
            .ok_or(CatalogError::ProductNotFound)?;
        tracing::info!(product_id = %id, "product updated");
        Ok(product)
    }

    /// Removes a product.
    pub async fn delete_product(&self, id: ProductId) -> Result<(), CatalogError> {
        if !self.store.delete_product(id).await? {
            return Err(CatalogError::ProductNotFound);
        }
        tracing::info!(product_id = %id, "product deleted");
        Ok(())
    }

    /// Every category.
    pub async fn categories(&self) -> Result<Vec<Category>, CatalogError> {
        self.store.categories().await
    }

    /// One category.
    pub async fn category(&self, id: CategoryId) -> Result<Category, CatalogError> {
        self.store
            .category(id)
            .await?
            .ok_or(CatalogError::CategoryNotFound)
    }

    /// Adds a category.
    pub async fn create_category(&self, draft: CategoryDraft) -> Result<Category, CatalogError> {
        let category = new_category(draft, self.clock.now());
        self.store
            .insert_category(self.store.db().writer(), &category)
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
        self.store
            .update_category(id, &changes, self.clock.now())
            .await?
            .ok_or(CatalogError::CategoryNotFound)
    }

    /// Removes a category that has no products and no subcategories.
    pub async fn delete_category(&self, id: CategoryId) -> Result<(), CatalogError> {
        if !self.store.delete_category(id).await? {
            return Err(CatalogError::CategoryNotFound);
        }
        tracing::info!(category_id = %id, "category deleted");
        Ok(())
    }

    /// The time now, by the catalog's clock.
    pub fn now(&self) -> agora_kernel::Timestamp {
        self.clock.now()
    }
}

#[async_trait]
impl CatalogPort for Catalog {
    async fn products_by_ids(&self, ids: &[ProductId]) -> Result<Vec<ProductSnapshot>, PortError> {
        if ids.len() > MAX_IDS_PER_CALL {
            return Err(PortError::Internal {
                module: "catalog",
                reason: format!(
                    "asked for {} ids; at most {MAX_IDS_PER_CALL} a call",
                    ids.len()
                ),
            });
        }
        let products =
            self.store
                .products_by_ids(ids)
                .await
                .map_err(|e| PortError::Unavailable {
                    module: "catalog",
                    reason: e.to_string(),
                })?;
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
