//! The payments' errors and their public codes.

use agora_contracts::PortError;
use agora_contracts::payments::{PaymentError, PaymentStatus};
use agora_kernel::{ApiError, ErrorCode};
use agora_platform::db::database_failure;

use crate::webhook::SignatureError;

/// Everything that can go wrong in the payments module. (The port's
/// [`PaymentError`] is what other modules see of it.)
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// No payment has this id.
    #[error("no such payment")]
    NotFound,
    /// The payment's status does not allow the call.
    #[error("the payment is {}", .0.as_str())]
    InvalidState(PaymentStatus),
    /// The refund is more than what is captured and not yet refunded (or on its
    /// way back), or in another currency.
    #[error("the refund exceeds what is refundable ({refundable_minor})")]
    ExceedsRefundable {
        /// What can still be refunded, in minor units.
        refundable_minor: i64,
    },
    /// The provider failed or did not answer; the same key settles it later.
    #[error("the payment provider is unavailable: {0}")]
    ProviderUnavailable(String),
    /// The caller's key was used for another call or other arguments.
    #[error("the key was used for another call")]
    KeyReused,
    /// The arguments are malformed (an empty key, a non-positive amount).
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The argument at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A webhook came for a provider we do not have.
    #[error("unknown payment provider")]
    UnknownProvider,
    /// A webhook's signature did not verify.
    #[error("webhook signature refused: {0}")]
    WebhookSignature(#[from] SignatureError),
    /// A webhook's body is not an event we understand.
    #[error("invalid webhook: {0}")]
    WebhookInvalid(String),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else unexpected.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<PaymentsError> for ApiError {
    fn from(e: PaymentsError) -> Self {
        let code = match e {
            PaymentsError::Database(e) => return database_failure("payments", &e),
            PaymentsError::Unexpected(e) => return ApiError::internal(format!("{e:#}")),
            PaymentsError::Invalid { field, message } => {
                return ApiError::validation(vec![agora_kernel::error::FieldError::new(
                    field, message,
                )]);
            }
            PaymentsError::InvalidState(status) => {
                return ApiError::from_code(ErrorCode::PaymentsInvalidState)
                    .with_details(serde_json::json!({ "status": status }));
            }
            PaymentsError::ExceedsRefundable { refundable_minor } => {
                return ApiError::from_code(ErrorCode::PaymentsRefundExceedsCaptured)
                    .with_details(serde_json::json!({ "refundable_minor": refundable_minor }));
            }
            PaymentsError::ProviderUnavailable(reason) => {
                return ApiError::from_code(ErrorCode::PaymentsProviderUnavailable)
                    .with_cause(reason);
            }
            PaymentsError::WebhookSignature(why) => {
                return ApiError::from_code(ErrorCode::PaymentsWebhookSignatureInvalid)
                    .with_cause(why);
            }
            PaymentsError::WebhookInvalid(why) => {
                return ApiError::new(
                    ErrorCode::PaymentsWebhookInvalid,
                    format!("the webhook is not an event this server understands: {why}"),
                );
            }
            PaymentsError::NotFound => ErrorCode::PaymentsPaymentNotFound,
            PaymentsError::KeyReused => ErrorCode::RequestIdempotencyKeyReused,
            PaymentsError::UnknownProvider => ErrorCode::PaymentsUnknownProvider,
        };
        ApiError::from_code(code)
    }
}

impl From<PaymentsError> for PaymentError {
    fn from(e: PaymentsError) -> Self {
        match e {
            PaymentsError::NotFound => PaymentError::NotFound,
            PaymentsError::InvalidState(status) => PaymentError::InvalidState(status),
            PaymentsError::ExceedsRefundable { refundable_minor } => {
                PaymentError::ExceedsRefundable { refundable_minor }
            }
            PaymentsError::ProviderUnavailable(reason) => PaymentError::ProviderUnavailable(reason),
            PaymentsError::KeyReused => PaymentError::KeyReused,
            PaymentsError::Database(sqlx::Error::PoolTimedOut) => {
                PaymentError::Port(PortError::Unavailable {
                    module: "payments",
                    reason: "timed out waiting for a database connection".into(),
                })
            }
            PaymentsError::Database(e) => PaymentError::Port(PortError::Internal {
                module: "payments",
                reason: format!("database error: {e}"),
            }),
            other => PaymentError::Port(PortError::Internal {
                module: "payments",
                reason: format!("{other:#}"),
            }),
        }
    }
}

impl From<PaymentsError> for PortError {
    fn from(e: PaymentsError) -> Self {
        match PaymentError::from(e) {
            PaymentError::Port(e) => e,
            other => PortError::Internal {
                module: "payments",
                reason: other.to_string(),
            },
        }
    }
}
