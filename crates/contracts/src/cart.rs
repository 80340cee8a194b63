//! The cart's port: what the checkout reads and clears.

use agora_kernel::{ProductId, UserId};
use async_trait::async_trait;

use crate::PortError;

/// One line of a cart: a product and how many. Prices are the catalog's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CartLine {
    /// The product.
    pub product_id: ProductId,
    /// How many, 1 to 99.
    pub quantity: i64,
}

/// What the cart offers other modules.
#[async_trait]
pub trait CartPort: Send + Sync {
    /// The lines of `owner`'s cart, oldest first; empty when there is no cart.
    async fn lines(&self, owner: UserId) -> Result<Vec<CartLine>, PortError>;

    /// Takes the lines of `products` out of `owner`'s cart (after a checkout bought
    /// them); other lines stay. Removing absent lines is a no-op, so a repeat is
    /// harmless.
    async fn remove_products(&self, owner: UserId, products: &[ProductId])
    -> Result<(), PortError>;

    /// Empties `owner`'s cart. Emptying an empty cart is a no-op.
    async fn clear(&self, owner: UserId) -> Result<(), PortError>;
}
