//! Contracts: the ports through which modules call each other, and their DTOs.
//!
//! A module never depends on another module's crate. It holds the other's port as
//! `Arc<dyn Port>`: the in-process implementation in the monolith, a remote client
//! when that module runs as its own service.
//!
//! # Layout
//! - [`catalog`]: [`catalog::CatalogPort`] — products by ids, with the price
//!   snapshot that carts and orders rely on.
//! - [`cart`]: [`cart::CartPort`] — a customer's cart lines, and clearing them.
//! - [`inventory`]: [`inventory::InventoryPort`] — stock reservations, idempotent
//!   by the caller's key.
//! - [`payments`]: [`payments::PaymentsPort`] — payments authorized, captured,
//!   cancelled and refunded, idempotent by the caller's key.
//! - [`orders`]: [`orders::OrdersPort`] — orders as the functions read them
//!   (receipts, exports).
//! - [`identity`]: [`identity::AccountsPort`] — how to reach a customer.
//! - [`events`]: the events modules publish, and their payloads.

pub mod cart;
pub mod catalog;
pub mod events;
pub mod identity;
pub mod inventory;
pub mod orders;
pub mod payments;

/// Why a port call failed, as the caller needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The module is unreachable or overloaded; retrying later may succeed.
    #[error("{module} is unavailable: {reason}")]
    Unavailable {
        /// The module called.
        module: &'static str,
        /// What went wrong, for the log.
        reason: String,
    },
    /// The module failed unexpectedly.
    #[error("{module} failed: {reason}")]
    Internal {
        /// The module called.
        module: &'static str,
        /// What went wrong, for the log.
        reason: String,
    },
}

impl From<PortError> for agora_kernel::ApiError {
    /// An unreachable module is `SERVICE_NOT_READY` naming it; anything else an
    /// internal fault (the reason is logged, never shown).
    fn from(e: PortError) -> Self {
        match e {
            PortError::Unavailable { module, reason } => {
                agora_kernel::ApiError::from_code(agora_kernel::ErrorCode::ServiceNotReady)
                    .with_details(serde_json::json!({ "dependency": module }))
                    .with_cause(reason)
            }
            PortError::Internal { .. } => agora_kernel::ApiError::internal(e),
        }
    }
}
