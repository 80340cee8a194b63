//! The payments' port: payment intents that the checkout authorizes, captures,
//! voids and refunds, each call idempotent by the caller's key.

use agora_kernel::{Money, PaymentId};
use async_trait::async_trait;

use crate::PortError;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// The authorization was sent but its outcome is unknown (the provider
    /// failed or timed out); repeating the call with the same key settles it.
    Processing,
    /// The amount is held on the card.
    Authorized,
    /// The provider declined the card. Terminal.
    Declined,
    /// The authorization was let go without taking money. Terminal.
    Voided,
    /// The money was taken.
    Captured,
    /// Part of the captured money was given back.
    PartiallyRefunded,
    /// All of the captured money was given back. Terminal.
    Refunded,
}

impl PaymentStatus {
    /// The status as stored and shown, e.g. `partially_refunded`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Processing => "processing",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Captured => "captured",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
            PaymentStatus::Refunded => "refunded",
        }
    }

    /// The status named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "processing" => PaymentStatus::Processing,
            "authorized" => PaymentStatus::Authorized,
            "declined" => PaymentStatus::Declined,
            "voided" => PaymentStatus::Voided,
            "captured" => PaymentStatus::Captured,
            "partially_refunded" => PaymentStatus::PartiallyRefunded,
            "refunded" => PaymentStatus::Refunded,
            _ => return None,
        })
    }
}

/// A payment as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    /// The payment.
    pub id: PaymentId,
    /// The caller's reference, e.g. the order id.
    pub reference: String,
    /// Where it stands.
    pub status: PaymentStatus,
    /// The amount authorized.
    pub amount: Money,
    /// How much of it was captured, in minor units.
    pub captured_minor: i64,
    /// How much of the captured money was refunded, in minor units.
    pub refunded_minor: i64,
    /// The provider's decline code, when declined.
    pub decline_reason: Option<String>,
    /// The card's brand, when the provider reported it.
    pub card_brand: Option<String>,
    /// The card's last four digits: the only card data stored.
    pub card_last4: Option<String>,
}

/// Why a payment call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The provider failed or did not answer in time. The outcome may be
    /// unknown; repeating the call with the same key is safe and settles it.
    #[error("the payment provider is unavailable: {0}")]
    ProviderUnavailable(String),
    /// No payment has this id.
    #[error("no such payment")]
    NotFound,
    /// The payment's status does not allow the call.
    #[error("the payment is {0:?}")]
    InvalidState(PaymentStatus),
    /// The refund is more than what is captured and not yet refunded, or in
    /// another currency.
    #[error("the refund exceeds what is refundable ({refundable_minor})")]
    ExceedsRefundable {
        /// What can still be refunded, in minor units.
        refundable_minor: i64,
    },
    /// The key was used before for another call or other arguments.
    #[error("the key was used for another call")]
    KeyReused,
    /// The call could not be made.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// What the payments module offers other modules. Every call that changes money
/// carries a key: repeating a call with its key after a timeout or a crash does
/// the work once and answers as the first call did.
#[async_trait]
pub trait PaymentsPort: Send + Sync {
    /// Authorizes `amount` on the card behind `payment_token`, for `reference`
    /// (e.g. an order id). A decline is not an error: the payment comes back
    /// `Declined` with its reason. When the provider fails or does not answer,
    /// the payment comes back `Processing`: repeat the call with the same key to
    /// settle it, or cancel it.
    async fn authorize(
        &self,
        key: &str,
        reference: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<Payment, PaymentError>;

    /// Captures the whole authorized amount. Capturing a captured payment is a
    /// no-op.
    async fn capture(&self, key: &str, payment: PaymentId) -> Result<Payment, PaymentError>;

    /// Lets the authorization go, or, if the money was already captured, refunds
    /// what is left of it: afterwards the customer is out of nothing. Cancelling
    /// a declined, voided or refunded payment is a no-op. A `processing` payment
    /// is settled first, or its authorization cancelled at the provider.
    async fn cancel(&self, key: &str, payment: PaymentId) -> Result<Payment, PaymentError>;

    /// Refunds `amount` of the captured money (partial refunds allowed, in
    /// total at most what was captured).
    async fn refund(
        &self,
        key: &str,
        payment: PaymentId,
        amount: Money,
        reason: &str,
    ) -> Result<Payment, PaymentError>;

    /// The payment with `id`, if any.
    async fn payment(&self, id: PaymentId) -> Result<Option<Payment>, PortError>;
}
