//! The catalog's port.

use agora_kernel::{Money, ProductId};
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

/// What the catalog offers other modules.
#[async_trait]
pub trait CatalogPort: Send + Sync {
    /// The products among `ids` that exist, in no particular order; ids that match
    /// no product are simply absent from the answer. At most 1,000 ids a call.
    async fn products_by_ids(&self, ids: &[ProductId]) -> Result<Vec<ProductSnapshot>, PortError>;
}
