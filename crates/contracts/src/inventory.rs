//! The inventory's port: stock reservations for checkouts.

use agora_kernel::{ProductId, Timestamp};
use async_trait::async_trait;

use crate::PortError;

/// One line of a reservation: a product and how many.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StockLine {
    /// The product.
    pub product_id: ProductId,
    /// How many units, at least one.
    pub quantity: i64,
}

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// The units are set aside until the reservation is committed, released, or
    /// lapses.
    Held,
    /// The units were sold: taken off the stock on hand.
    Committed,
    /// The units went back to the available stock.
    Released,
}

/// A reservation, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// The caller's key (e.g. derived from a saga id): one reservation per key.
    pub key: String,
    /// Where it stands.
    pub status: ReservationStatus,
    /// Its lines, one per product.
    pub lines: Vec<StockLine>,
    /// When a held reservation lapses and is released by itself.
    pub expires_at: Timestamp,
}

/// Why a reservation call was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Not enough available stock for a line: nothing was reserved.
    #[error("insufficient stock for {product_id}: {available} available, {requested} requested")]
    Insufficient {
        /// The first product short of stock.
        product_id: ProductId,
        /// Its available units.
        available: i64,
        /// The units asked for.
        requested: i64,
    },
    /// The key names a reservation with other lines.
    #[error("the key names a reservation with other lines")]
    KeyReused,
    /// No reservation has this key.
    #[error("no reservation has this key")]
    NotFound,
    /// The reservation is in a state that does not allow the call (committing a
    /// released one, releasing a committed one).
    #[error("the reservation is {0:?}")]
    WrongState(ReservationStatus),
    /// The lines are malformed (no line, a quantity below one, a product twice).
    #[error("invalid lines: {0}")]
    InvalidLines(String),
    /// The call could not be made.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// What the inventory offers other modules. Every call is idempotent by `key`:
/// repeating it after a timeout or a crash does the work once.
#[async_trait]
pub trait InventoryPort: Send + Sync {
    /// Sets aside every line or none, until `expires_at`. Repeating the call with
    /// the same key and lines returns the same reservation (held or committed);
    /// if it was released meanwhile (or lapsed), the answer is
    /// `WrongState(Released)`, never a success.
    async fn reserve(
        &self,
        key: &str,
        lines: &[StockLine],
        expires_at: Timestamp,
    ) -> Result<Reservation, InventoryError>;

    /// Turns a held reservation into a sale. Committing a committed one is a no-op.
    async fn commit(&self, key: &str) -> Result<Reservation, InventoryError>;

    /// Gives a held reservation's units back. Releasing a released one (or one
    /// that lapsed) is a no-op.
    async fn release(&self, key: &str) -> Result<Reservation, InventoryError>;
}
