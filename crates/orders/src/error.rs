//! The orders module's errors and their public codes.

use agora_contracts::PortError;
use agora_kernel::{ApiError, ErrorCode};
use agora_platform::db::database_failure;

use crate::domain::OrderStatus;

/// Everything that can go wrong in the orders module.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The `Idempotency-Key` was used for another request.
    #[error("idempotency key reused")]
    KeyReused,
    /// A request with this key is still running.
    #[error("request in progress")]
    InProgress,
    /// The cart is empty.
    #[error("cart empty")]
    CartEmpty,
    /// Cart lines for products that cannot be sold.
    #[error("products unavailable")]
    ProductsUnavailable(Vec<String>),
    /// The cart mixes currencies.
    #[error("currency mismatch")]
    CurrencyMismatch(Vec<String>),
    /// The total is zero, or does not fit.
    #[error("the order total is out of range")]
    TotalOutOfRange,
    /// No such order (or not the caller's).
    #[error("order not found")]
    NotFound,
    /// The order's status does not allow it.
    #[error("invalid transition from {0:?}")]
    InvalidTransition(OrderStatus),
    /// The refund is more than what is left.
    #[error("refund exceeds what was paid")]
    RefundExceedsPaid {
        /// What is left to refund.
        refundable_minor: i64,
    },
    /// The payment provider failed (for staff refunds and cancellations).
    #[error("payment provider unavailable")]
    PaymentUnavailable,
    /// The order's payment is in a state that does not allow the refund or
    /// cancellation (e.g. the provider refused it earlier).
    #[error("the payment is {0:?}")]
    PaymentState(agora_contracts::payments::PaymentStatus),
    /// Another module could not be called.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else unexpected.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<serde_json::Error> for OrderError {
    fn from(e: serde_json::Error) -> Self {
        OrderError::Unexpected(e.into())
    }
}

impl From<agora_kernel::IdParseError> for OrderError {
    fn from(e: agora_kernel::IdParseError) -> Self {
        OrderError::Unexpected(anyhow::anyhow!("a stored id is malformed: {e}"))
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        let code = match e {
            OrderError::Database(e) => return database_failure("orders", &e),
            OrderError::Unexpected(e) => return ApiError::internal(format!("{e:#}")),
            OrderError::Port(e) => return e.into(),
            OrderError::ProductsUnavailable(ids) => {
                return ApiError::from_code(ErrorCode::OrdersProductUnavailable)
                    .with_details(serde_json::json!({ "product_ids": ids }));
            }
            OrderError::CurrencyMismatch(currencies) => {
                return ApiError::from_code(ErrorCode::OrdersCurrencyMismatch)
                    .with_details(serde_json::json!({ "currencies": currencies }));
            }
            OrderError::InvalidTransition(status) => {
                return ApiError::from_code(ErrorCode::OrdersInvalidTransition)
                    .with_details(serde_json::json!({ "status": status }));
            }
            OrderError::RefundExceedsPaid { refundable_minor } => {
                return ApiError::from_code(ErrorCode::OrdersRefundExceedsPaid)
                    .with_details(serde_json::json!({ "refundable_minor": refundable_minor }));
            }
            OrderError::PaymentState(status) => {
                return ApiError::from_code(ErrorCode::PaymentsInvalidState)
                    .with_details(serde_json::json!({ "status": status }));
            }
            OrderError::InProgress => {
                return ApiError::from_code(ErrorCode::RequestInProgress).with_retry_after(1);
            }
            OrderError::TotalOutOfRange => {
                return ApiError::validation(vec![agora_kernel::error::FieldError::new(
                    "cart",
                    "the order total must be more than zero and within range",
                )]);
            }
            OrderError::KeyReused => ErrorCode::RequestIdempotencyKeyReused,
            OrderError::CartEmpty => ErrorCode::OrdersCartEmpty,
            OrderError::NotFound => ErrorCode::OrdersOrderNotFound,
            OrderError::PaymentUnavailable => ErrorCode::PaymentsProviderUnavailable,
        };
        ApiError::from_code(code)
    }
}

impl From<OrderError> for PortError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Port(e) => e,
            OrderError::Database(sqlx::Error::PoolTimedOut) => PortError::Unavailable {
                module: "orders",
                reason: "database pool timed out".into(),
            },
            other => PortError::Internal {
                module: "orders",
                reason: format!("{other:#}"),
            },
        }
    }
}
