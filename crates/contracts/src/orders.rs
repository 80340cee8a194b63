//! The orders' port: what the functions read of orders (receipts, exports).

use agora_kernel::{Money, OrderId, ProductId, Timestamp, UserId};
use async_trait::async_trait;

use crate::PortError;

/// An order as other modules read it: its lines are the price snapshot taken
/// at checkout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderRecord {
    /// The order.
    pub id: OrderId,
    /// Its customer.
    pub user_id: UserId,
    /// Where it stands, as the API shows it (`confirmed`, `cancelled`, …).
    pub status: String,
    /// Its lines.
    pub lines: Vec<OrderRecordLine>,
    /// The sum of its lines.
    pub total: Money,
    /// How much of the total was refunded, in minor units.
    pub refunded_minor: i64,
    /// When it was placed.
    pub created_at: Timestamp,
}

/// One line of an [`OrderRecord`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderRecordLine {
    /// The product.
    pub product_id: ProductId,
    /// Its SKU at checkout.
    pub sku: String,
    /// Its name at checkout.
    pub name: String,
    /// Its unit price at checkout.
    pub unit_price: Money,
    /// How many.
    pub quantity: i64,
    /// Unit price times quantity.
    pub line_total: Money,
}

/// What the orders module offers other modules.
#[async_trait]
pub trait OrdersPort: Send + Sync {
    /// The order `id`, if it exists.
    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, PortError>;

    /// Up to `limit` (at most 500) orders placed at `from` or later and before
    /// `to`, oldest first (by creation, then id), starting after `after` when
    /// given: the `created_at` and id of the last order of the previous page.
    async fn placed_between(
        &self,
        from: Timestamp,
        to: Timestamp,
        after: Option<(Timestamp, OrderId)>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, PortError>;
}
