//! The catalog's port.

use agora_kernel::{ImageId, Money, ProductId};
use async_trait::async_trait;

use crate::PortError;

/// A product as other modules see it at one moment: enough to put it in a cart or
/// price an order line. Orders keep the snapshot, so later price changes never
/// alter a placed order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProductSnapshot {
    /// The product.
    pub id: ProductId,
    /// Its stock-keeping unit.
    pub sku: String,
    /// Its name at the time of the snapshot.
    pub name: String,
    /// Its unit price at the time of the snapshot.
    pub unit_price: Money,
    /// Whether it can be sold.
    pub active: bool,
}

/// A smaller copy of a product image, made by the thumbnails function.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendition {
    /// The square box, in pixels, it was fitted into (128, 512).
    pub size: u32,
    /// Its object key (served at `/media/<key>`).
    pub key: String,
    /// Its content type.
    pub content_type: String,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
}

/// What the catalog offers other modules.
#[async_trait]
pub trait CatalogPort: Send + Sync {
    /// The products among `ids` that exist, in no particular order; ids that match
    /// no product are simply absent from the answer, and a repeated id is
    /// answered once. At most 1,000 ids a call. The answer may come from a
    /// cache: a change made on another node shows once its change event has
    /// reached this one (at most the cache's TTL). Fine to show a cart; for
    /// what must be current, see [`Self::current_products_by_ids`].
    async fn products_by_ids(&self, ids: &[ProductId]) -> Result<Vec<ProductSnapshot>, PortError>;

    /// As [`Self::products_by_ids`], read from the catalog's store now, past
    /// any cache: for the price snapshot an order is placed at.
    async fn current_products_by_ids(
        &self,
        ids: &[ProductId],
    ) -> Result<Vec<ProductSnapshot>, PortError> {
        self.products_by_ids(ids).await
    }

    /// Attaches `renditions` to the image `image`, replacing any it had (so a
    /// repeat is harmless); `false` when the image no longer exists.
    async fn attach_renditions(
        &self,
        image: ImageId,
        renditions: &[Rendition],
    ) -> Result<bool, PortError>;
}
