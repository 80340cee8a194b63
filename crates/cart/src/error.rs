//! The cart's errors and their public codes.

use agora_contracts::PortError;
use agora_kernel::{ApiError, ErrorCode};
use agora_platform::db::database_failure;

/// Everything that can go wrong in the cart module.
#[derive(Debug, thiserror::Error)]
pub enum CartError {
    /// The cart has no line for this product.
    #[error("item not found")]
    ItemNotFound,
    /// The product does not exist or is not for sale.
    #[error("product unavailable")]
    ProductUnavailable,
    /// The line would exceed its quantity limit.
    #[error("quantity limit")]
    QuantityLimit,
    /// The cart has as many lines as it may.
    #[error("cart full")]
    Full,
    /// The cart was merged or deleted while the request ran.
    #[error("cart gone")]
    Gone,
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

impl From<CartError> for ApiError {
    fn from(e: CartError) -> Self {
        let code = match e {
            CartError::Database(e) => return database_failure("cart", &e),
            CartError::Unexpected(e) => return ApiError::internal(format!("{e:#}")),
            CartError::Catalog(e) => return e.into(),
            CartError::ItemNotFound => ErrorCode::CartItemNotFound,
            CartError::ProductUnavailable => ErrorCode::CartProductUnavailable,
            CartError::QuantityLimit => ErrorCode::CartQuantityLimit,
            CartError::Full => ErrorCode::CartFull,
            CartError::Gone => ErrorCode::CartConflict,
        };
        ApiError::from_code(code)
    }
}

impl From<CartError> for PortError {
    fn from(e: CartError) -> Self {
        match e {
            CartError::Catalog(e) => e,
            CartError::Database(sqlx::Error::PoolTimedOut) => PortError::Unavailable {
                module: "cart",
                reason: "database pool timed out".into(),
            },
            other => PortError::Internal {
                module: "cart",
                reason: format!("{other:#}"),
            },
        }
    }
}
