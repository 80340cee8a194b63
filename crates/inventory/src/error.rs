//! The inventory's errors and their public codes.

use agora_contracts::PortError;
use agora_contracts::inventory::{InventoryError, ReservationStatus};
use agora_kernel::{ApiError, ErrorCode, ProductId};
use agora_platform::db::database_failure;

/// Everything that can go wrong in the inventory module.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// No product has this id.
    #[error("unknown product")]
    UnknownProduct,
    /// Not enough available units for a line.
    #[error("insufficient stock")]
    Insufficient {
        /// The product short of stock.
        product_id: ProductId,
        /// Its available units.
        available: i64,
        /// The units asked for.
        requested: i64,
    },
    /// On hand would drop below the reserved units (or below zero).
    #[error("below reserved")]
    BelowReserved,
    /// No reservation has this key.
    #[error("reservation not found")]
    ReservationNotFound,
    /// The key is used with other lines.
    #[error("reservation key reused with other lines")]
    KeyReused,
    /// The reservation's state does not allow the call.
    #[error("reservation is {0:?}")]
    WrongState(ReservationStatus),
    /// The lines are malformed.
    #[error("invalid lines: {0}")]
    InvalidLines(String),
    /// The catalog could not be asked.
    #[error(transparent)]
    Catalog(#[from] PortError),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else unexpected.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StockError> for ApiError {
    fn from(e: StockError) -> Self {
        let code = match e {
            StockError::Database(e) => return database_failure("inventory", &e),
            StockError::Unexpected(e) => return ApiError::internal(format!("{e:#}")),
            StockError::Catalog(e) => return e.into(),
            StockError::InvalidLines(why) => {
                return ApiError::validation(vec![agora_kernel::error::FieldError::new(
                    "lines", why,
                )]);
            }
            StockError::Insufficient {
                product_id,
                available,
                requested,
            } => {
                return ApiError::from_code(ErrorCode::InventoryInsufficientStock).with_details(
                    serde_json::json!({
                        "product_id": product_id,
                        "available": available,
                        "requested": requested,
                    }),
                );
            }
            StockError::UnknownProduct => ErrorCode::InventoryUnknownProduct,
            StockError::BelowReserved => ErrorCode::InventoryBelowReserved,
            StockError::ReservationNotFound => ErrorCode::InventoryReservationNotFound,
            StockError::KeyReused | StockError::WrongState(_) => {
                ErrorCode::InventoryReservationConflict
            }
        };
        ApiError::from_code(code)
    }
}

impl From<StockError> for InventoryError {
    fn from(e: StockError) -> Self {
        match e {
            StockError::Insufficient {
                product_id,
                available,
                requested,
            } => InventoryError::Insufficient {
                product_id,
                available,
                requested,
            },
            StockError::KeyReused => InventoryError::KeyReused,
            StockError::ReservationNotFound => InventoryError::NotFound,
            StockError::WrongState(s) => InventoryError::WrongState(s),
            StockError::InvalidLines(why) => InventoryError::InvalidLines(why),
            StockError::Catalog(e) => InventoryError::Port(e),
            other => InventoryError::Port(PortError::Internal {
                module: "inventory",
                reason: format!("{other:#}"),
            }),
        }
    }
}
