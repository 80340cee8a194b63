//! The events modules publish, with their payloads. An event's `kind` is
//! `<module>.<event>`; its payload is the JSON of the struct here. Kinds and
//! fields are only ever added, never renamed or removed (consumers in other
//! processes read them).

use agora_kernel::{CategoryId, ImageId, Money, OrderId, PaymentId, ProductId, UserId};
use serde::{Deserialize, Serialize};

/// An event payload and the kind it is published as.
pub trait EventPayload: Serialize + for<'de> Deserialize<'de> {
    /// E.g. `orders.order_confirmed`.
    const KIND: &'static str;
}

/// A customer placed an order: it exists, its saga has started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: OrderId,
    /// Its customer.
    pub user_id: UserId,
    /// What it costs.
    pub total: Money,
}
impl EventPayload for OrderPlaced {
    const KIND: &'static str = "orders.order_placed";
}

/// An order was paid (captured) and its stock committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: OrderId,
    /// Its customer.
    pub user_id: UserId,
    /// What was paid.
    pub total: Money,
}
impl EventPayload for OrderConfirmed {
    const KIND: &'static str = "orders.order_confirmed";
}

/// An order was cancelled: its stock was released and nothing is owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: OrderId,
    /// Its customer.
    pub user_id: UserId,
    /// Why: the checkout's reason (`payment_declined`, `out_of_stock`, …) or
    /// the reason staff gave.
    pub reason: String,
}
impl EventPayload for OrderCancelled {
    const KIND: &'static str = "orders.order_cancelled";
}

/// A payment was authorized: the amount is held on the card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    /// The payment.
    pub payment_id: PaymentId,
    /// The caller's reference (an order id).
    pub reference: String,
    /// The amount held.
    pub amount: Money,
}
impl EventPayload for PaymentAuthorized {
    const KIND: &'static str = "payments.payment_authorized";
}

/// A payment failed: the provider declined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// The payment.
    pub payment_id: PaymentId,
    /// The caller's reference (an order id).
    pub reference: String,
    /// The provider's decline code.
    pub reason: String,
}
impl EventPayload for PaymentFailed {
    const KIND: &'static str = "payments.payment_failed";
}

/// Captured money was given back, in part or in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// The payment.
    pub payment_id: PaymentId,
    /// The caller's reference (an order id).
    pub reference: String,
    /// This refund.
    pub amount: Money,
    /// Everything refunded of the payment so far, in minor units.
    pub refunded_total_minor: i64,
    /// Whether all of the captured money is now refunded.
    pub fully_refunded: bool,
}
impl EventPayload for PaymentRefunded {
    const KIND: &'static str = "payments.payment_refunded";
}

/// A product's available stock fell to or below the low-stock threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLow {
    /// The product.
    pub product_id: ProductId,
    /// Units available now (on hand minus reserved).
    pub available: i64,
    /// The threshold it crossed.
    pub threshold: i64,
}
impl EventPayload for StockLow {
    const KIND: &'static str = "inventory.stock_low";
}

/// What happened to a product or a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatalogChange {
    /// Created.
    Created,
    /// Changed.
    Updated,
    /// Removed.
    Deleted,
}

/// A product was created, changed or deleted: what is cached of it, and of the
/// lists it appears in, is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductChanged {
    /// The product.
    pub product_id: ProductId,
    /// What happened to it.
    pub change: CatalogChange,
}
impl EventPayload for ProductChanged {
    const KIND: &'static str = "catalog.product_changed";
}

/// A category was created, changed or deleted: cached catalog reads that show
/// it are stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryChanged {
    /// The category.
    pub category_id: CategoryId,
    /// What happened to it.
    pub change: CatalogChange,
}
impl EventPayload for CategoryChanged {
    const KIND: &'static str = "catalog.category_changed";
}

/// An image was added to a product: the thumbnails function makes its
/// renditions from the original stored under `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUploaded {
    /// The product.
    pub product_id: ProductId,
    /// The image.
    pub image_id: ImageId,
    /// The original's object key (content-addressed: `images/<sha256>.<ext>`).
    pub key: String,
    /// Its content type, read from its bytes.
    pub content_type: String,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
}
impl EventPayload for ImageUploaded {
    const KIND: &'static str = "catalog.image_uploaded";
}
