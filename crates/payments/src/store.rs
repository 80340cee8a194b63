//! The payments' data access: payments, operations, provider attempts, provider
//! events, and the outbox rows that go with their changes.
//!
//! Every change of a payment is one conditional `UPDATE` whose `WHERE` states the
//! rule (`status = 'authorized'` to capture, enough captured and not yet refunded
//! money to refund), so concurrent callers can never together break it; the CHECK
//! constraints stand behind it. Events are appended to `payments_outbox` in the
//! transaction of the change they describe, and only when the change happened.

use std::sync::Arc;

use agora_contracts::events::{EventPayload, PaymentAuthorized, PaymentFailed, PaymentRefunded};
use agora_contracts::payments::{Payment, PaymentStatus};
use agora_kernel::{Currency, Money, PaymentId, Timestamp};
use agora_platform::Database;
use agora_platform::bus::{Event, Outbox};
use agora_platform::db::{SqlBuilder, Violation, violation};
use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::PaymentsError;
use crate::provider_event::{Advance, ProviderEvent};

/// The outbox table of the payments module.
pub const OUTBOX_TABLE: &str = "payments_outbox";

/// Why a `processing` payment may be voided without an answer from the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// No authorization attempt ever reached the provider.
    NeverReached,
    /// The provider confirmed the authorization cancelled.
    CancelledAtProvider,
}

/// What the provider did to an authorized payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Took the whole amount.
    Captured,
    /// Let the authorization go.
    Voided,
}

/// The columns of a payment, in the order [`payment_from_row`] reads them.
macro_rules! payment_columns {
    () => {
        "id, authorize_key, reference, status, amount_minor, currency, captured_minor, \
         refunded_minor, refund_pending_minor, provider, provider_ref, card_brand, card_last4, \
         decline_reason, created_at, updated_at"
    };
}

/// The columns of an operation, in the order [`operation_from_row`] reads them.
macro_rules! operation_columns {
    () => {
        "key, payment_id, kind, amount_minor, reason, status, error, created_at, updated_at"
    };
}

/// A payment as stored (everything but the provider token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PaymentRecord {
    /// The payment.
    #[schema(value_type = String, example = "pay_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    pub id: PaymentId,
    /// The caller's key of the authorization.
    #[serde(skip)]
    pub authorize_key: String,
    /// The caller's reference, e.g. an order id.
    pub reference: String,
    /// `processing`, `authorized`, `declined`, `voided`, `captured`,
    /// `partially_refunded` or `refunded`.
    #[schema(value_type = String, example = "captured")]
    pub status: PaymentStatus,
    /// The amount authorized.
    pub amount: Money,
    /// How much was captured, in minor units.
    pub captured_minor: i64,
    /// How much of the capture was given back, in minor units.
    pub refunded_minor: i64,
    /// Refunds sent to the provider and not yet answered, in minor units.
    pub refund_pending_minor: i64,
    /// The provider that holds the payment.
    pub provider: String,
    /// The provider's id of the payment, once it answered.
    pub provider_ref: Option<String>,
    /// The card's brand, when the provider reported it.
    pub card_brand: Option<String>,
    /// The card's last four digits: the only card data stored.
    pub card_last4: Option<String>,
    /// The provider's decline code, when declined.
    pub decline_reason: Option<String>,
    /// When the payment was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl PaymentRecord {
    /// The payment as the port shows it.
    pub fn to_payment(&self) -> Payment {
        Payment {
            id: self.id,
            reference: self.reference.clone(),
            status: self.status,
            amount: self.amount,
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
            decline_reason: self.decline_reason.clone(),
            card_brand: self.card_brand.clone(),
            card_last4: self.card_last4.clone(),
        }
    }

    /// What can still be refunded: captured, minus refunded, minus refunds on
    /// their way.
    pub fn refundable_minor(&self) -> i64 {
        self.captured_minor - self.refunded_minor - self.refund_pending_minor
    }
}

/// A payment to create before the provider is asked.
#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    /// Its id.
    pub id: PaymentId,
    /// The caller's key of the authorization.
    pub key: &'a str,
    /// The caller's reference.
    pub reference: &'a str,
    /// The provider's token for the card (kept until the provider answered).
    pub payment_token: &'a str,
    /// The amount to authorize.
    pub amount: Money,
    /// The provider's name.
    pub provider: &'a str,
}

/// What the provider answered to an authorization.
#[derive(Debug, Clone)]
pub enum AuthorizationOutcome {
    /// Authorized.
    Approved {
        /// The provider's id of the payment.
        provider_ref: String,
        /// The card's brand.
        brand: String,
        /// The card's last four digits.
        last4: String,
    },
    /// Declined, with the provider's code.
    Declined {
        /// E.g. `card_declined`.
        reason: String,
    },
}

/// What a caller asked to be done to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Take the authorized amount.
    Capture,
    /// Let the authorization go, or give back what was captured.
    Cancel,
    /// Give back part of what was captured.
    Refund,
}

impl OperationKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Capture => "capture",
            OperationKind::Cancel => "cancel",
            OperationKind::Refund => "refund",
        }
    }

    fn parse(s: &str) -> Result<Self, PaymentsError> {
        Ok(match s {
            "capture" => OperationKind::Capture,
            "cancel" => OperationKind::Cancel,
            "refund" => OperationKind::Refund,
            other => return Err(anyhow!("corrupt operation kind {other}").into()),
        })
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    /// Sent to the provider, not yet answered; repeating it settles it.
    Pending,
    /// Done.
    Succeeded,
    /// The provider refused it; nothing changed.
    Failed,
}

impl OperationStatus {
    fn parse(s: &str) -> Result<Self, PaymentsError> {
        Ok(match s {
            "pending" => OperationStatus::Pending,
            "succeeded" => OperationStatus::Succeeded,
            "failed" => OperationStatus::Failed,
            other => return Err(anyhow!("corrupt operation status {other}").into()),
        })
    }
}

/// A capture, cancellation or refund, stored under the caller's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Operation {
    /// The caller's key.
    #[serde(skip)]
    pub key: String,
    /// The payment.
    #[schema(value_type = String)]
    pub payment_id: PaymentId,
    /// What was asked.
    pub kind: OperationKind,
    /// What it takes or gives back, in minor units (0 for a void).
    pub amount_minor: i64,
    /// Why, as given.
    pub reason: String,
    /// Where it stands.
    pub status: OperationStatus,
    /// Why the provider refused it, when it did.
    pub error: Option<String>,
    /// When it was asked.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// An operation to store before the provider is asked.
#[derive(Debug, Clone)]
pub struct NewOperation<'a> {
    /// The caller's key.
    pub key: &'a str,
    /// The payment.
    pub payment_id: PaymentId,
    /// What is asked.
    pub kind: OperationKind,
    /// What it takes or gives back, in minor units.
    pub amount_minor: i64,
    /// Why.
    pub reason: &'a str,
}

/// One call to the provider and how it ended.
#[derive(Debug, Clone)]
pub struct NewAttempt<'a> {
    /// The payment.
    pub payment_id: PaymentId,
    /// `authorize`, `capture`, `void` or `refund`.
    pub operation: &'static str,
    /// The caller's key of the operation (none for the authorization).
    pub operation_key: Option<&'a str>,
    /// `approved`, `declined`, `succeeded`, `refused`, `unavailable`, `timeout`.
    pub outcome: &'static str,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

/// A stored call to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// `authorize`, `capture`, `void` or `refund`.
    pub operation: String,
    /// `approved`, `declined`, `succeeded`, `refused`, `unavailable` or `timeout`.
    pub outcome: String,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// A stored webhook event of the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProviderEventRecord {
    /// The provider.
    pub provider: String,
    /// The provider's id of the event.
    pub event_id: String,
    /// E.g. `payment.refunded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it moved the payment forward (an older or repeated report does not).
    pub applied: bool,
    /// When it arrived.
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
}

/// How a webhook event was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventReceipt {
    /// The event was stored before: nothing was done.
    pub duplicate: bool,
    /// It moved a payment forward.
    pub applied: bool,
}

/// Where a page of payments ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentCursor {
    /// The last payment's creation time, epoch milliseconds.
    pub created_at: i64,
    /// The last payment's id (database form).
    pub id: String,
}

impl PaymentCursor {
    /// Whether the cursor names a real id (a forged one must be a coded 400,
    /// never a database error).
    pub fn is_valid(&self) -> bool {
        PaymentId::from_db(&self.id).is_ok()
    }
}

/// Which payments to list.
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    /// Only payments in this status.
    pub status: Option<PaymentStatus>,
    /// Only payments for this reference.
    pub reference: Option<String>,
}

/// Why a refund could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The amount is set aside for the refund.
    Reserved,
    /// Another call stored an operation with this key first.
    KeyTaken,
    /// Not enough is refundable, or the payment is not captured.
    Refused,
}

/// The payments' data access. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PaymentStore {
    db: Database,
    outbox: Arc<Outbox>,
}

impl PaymentStore {
    /// A store over `db`, writing events to `outbox` (the `payments_outbox` table,
    /// shared with the relay that publishes it).
    pub fn new(db: Database, outbox: Arc<Outbox>) -> Self {
        Self { db, outbox }
    }

    /// The database (for tests and tools).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The outbox (for the relay).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Creates a payment in status `processing` and returns it; `None` when its
    /// key is taken.
    pub async fn insert_payment(
        &self,
        new: &NewPayment<'_>,
        now: Timestamp,
    ) -> Result<Option<PaymentRecord>, PaymentsError> {
        let row = sqlx::query(concat!(
            "INSERT INTO payments_payments (id, authorize_key, reference, status, amount_minor, \
             currency, provider, payment_token, created_at, updated_at) \
             VALUES ($1, $2, $3, 'processing', $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (authorize_key) DO NOTHING RETURNING ",
            payment_columns!()
        ))
        .bind(new.id.to_db())
        .bind(new.key.to_string())
        .bind(new.reference.to_string())
        .bind(new.amount.amount_minor())
        .bind(new.amount.currency().code())
        .bind(new.provider.to_string())
        .bind(new.payment_token.to_string())
        .bind(now.as_millis())
        .fetch_optional(self.db.writer())
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }

    /// The payment with `id` (read from the primary: callers act on it).
    pub async fn payment(&self, id: PaymentId) -> Result<Option<PaymentRecord>, PaymentsError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments_payments WHERE id = $1"
        ))
        .bind(id.to_db())
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }

    /// The payment authorized with `key`.
    pub async fn payment_by_key(&self, key: &str) -> Result<Option<PaymentRecord>, PaymentsError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments_payments WHERE authorize_key = $1"
        ))
        .bind(key.to_string())
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }

    /// The provider token of a payment whose authorization is unsettled.
    pub async fn payment_token(&self, id: PaymentId) -> Result<Option<String>, PaymentsError> {
        let token: Option<Option<String>> =
            sqlx::query_scalar("SELECT payment_token FROM payments_payments WHERE id = $1")
                .bind(id.to_db())
                .fetch_optional(self.db.reader())
                .await?;
        Ok(token.flatten())
    }

    /// Settles a `processing` payment with the provider's answer, records the
    /// attempt, and emits `PaymentAuthorized` or `PaymentFailed` — all in one
    /// transaction, and returns the settled payment. `None` when the payment
    /// was no longer processing (a concurrent repeat settled it): then only
    /// the attempt is recorded.
    pub async fn settle_authorization(
        &self,
        id: PaymentId,
        outcome: &AuthorizationOutcome,
        now: Timestamp,
    ) -> Result<Option<PaymentRecord>, PaymentsError> {
        let mut tx = self.db.begin().await?;
        let (status, provider_ref, brand, last4, decline) = match outcome {
            AuthorizationOutcome::Approved {
                provider_ref,
                brand,
                last4,
            } => (
                PaymentStatus::Authorized,
                Some(provider_ref.clone()),
                Some(brand.clone()),
                Some(last4.clone()),
                None,
            ),
            AuthorizationOutcome::Declined { reason } => (
                PaymentStatus::Declined,
                None,
                None,
                None,
                Some(reason.clone()),
            ),
        };
        let row = sqlx::query(concat!(
            "UPDATE payments_payments SET status = $1, provider_ref = $2, card_brand = $3, \
             card_last4 = $4, decline_reason = $5, payment_token = NULL, updated_at = $6 \
             WHERE id = $7 AND status = 'processing' RETURNING ",
            payment_columns!()
        ))
        .bind(status.as_str())
        .bind(provider_ref)
        .bind(brand)
        .bind(last4)
        .bind(decline)
        .bind(now.as_millis())
        .bind(id.to_db())
        .fetch_optional(&mut *tx)
        .await?;
        let attempt = NewAttempt {
            payment_id: id,
            operation: "authorize",
            operation_key: None,
            outcome: match outcome {
                AuthorizationOutcome::Approved { .. } => "approved",
                AuthorizationOutcome::Declined { .. } => "declined",
            },
            error: None,
        };
        insert_attempt(&mut tx, &attempt, now).await?;
        let moved = match row {
            Some(row) => {
                let payment = payment_from_row(&row)?;
                let event = match outcome {
                    AuthorizationOutcome::Approved { .. } => event(
                        &payment,
                        &PaymentAuthorized {
                            payment_id: payment.id,
                            reference: payment.reference.clone(),
                            amount: payment.amount,
                        },
                        now,
                    )?,
                    AuthorizationOutcome::Declined { reason } => event(
                        &payment,
                        &PaymentFailed {
                            payment_id: payment.id,
                            reference: payment.reference.clone(),
                            reason: reason.clone(),
                        },
                        now,
                    )?,
                };
                self.outbox.append(&mut tx, &event).await?;
                Some(payment)
            }
            None => None,
        };
        tx.commit().await?;
        if moved.is_some() {
            self.outbox.notify();
        }
        Ok(moved)
    }

    /// Voids a `processing` payment and forgets its token: nothing calls the
    /// provider for it again. With [`Unanswered::NeverReached`] only when every
    /// authorization attempt so far failed before reaching the provider
    /// (`unavailable`, none timed out); with [`Unanswered::CancelledAtProvider`]
    /// in any case (the provider confirmed the authorization cancelled). `false`
    /// when it was no longer processing, or an attempt may have taken effect.
    pub async fn void_unanswered(
        &self,
        id: PaymentId,
        why: Unanswered,
        now: Timestamp,
    ) -> Result<bool, PaymentsError> {
        let mut q = SqlBuilder::new(
            "UPDATE payments_payments SET status = 'voided', payment_token = NULL, updated_at = ",
        );
        q.bind(now.as_millis())?
            .push(" WHERE id = ")
            .bind(id.to_db())?
            .push(" AND status = 'processing'");
        if why == Unanswered::NeverReached {
            q.push(
                " AND NOT EXISTS (SELECT 1 FROM payments_attempts a WHERE a.payment_id = payments_payments.id \
                 AND a.operation = 'authorize' AND a.outcome <> 'unavailable')",
            );
        }
        let done = q.build().execute(self.db.writer()).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a provider call that changed nothing (the provider failed, timed
    /// out or refused), and marks the payment or operation as touched, so the
    /// resolver waits before trying it again.
    pub async fn record_attempt(
        &self,
        attempt: &NewAttempt<'_>,
        now: Timestamp,
    ) -> Result<(), PaymentsError> {
        let mut tx = self.db.begin().await?;
        insert_attempt(&mut tx, attempt, now).await?;
        match attempt.operation_key {
            None => {
                sqlx::query(
                    "UPDATE payments_payments SET updated_at = $1 \
                     WHERE id = $2 AND status = 'processing'",
                )
                .bind(now.as_millis())
                .bind(attempt.payment_id.to_db())
                .execute(&mut *tx)
                .await?;
            }
            Some(key) => {
                sqlx::query(
                    "UPDATE payments_operations SET updated_at = $1 \
                     WHERE key = $2 AND status = 'pending'",
                )
                .bind(now.as_millis())
                .bind(key.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The operation stored under `key`.
    pub async fn operation(&self, key: &str) -> Result<Option<Operation>, PaymentsError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            operation_columns!(),
            " FROM payments_operations WHERE key = $1"
        ))
        .bind(key.to_string())
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(operation_from_row).transpose()
    }

    /// Stores a pending operation that reserves nothing (a capture, or a cancel
    /// that voids), in one statement; `None` when its key is taken.
    pub async fn insert_operation(
        &self,
        op: &NewOperation<'_>,
        now: Timestamp,
    ) -> Result<Option<Operation>, PaymentsError> {
        let row = insert_operation_query(op, now)
            .fetch_optional(self.db.writer())
            .await?;
        row.as_ref().map(operation_from_row).transpose()
    }

    /// Stores a pending operation that gives money back and sets its amount
    /// aside, in one transaction: the conditional update refuses when the payment
    /// is not captured or less than the amount is refundable, so concurrent
    /// refunds can never together exceed the capture.
    pub async fn reserve_refund(
        &self,
        op: &NewOperation<'_>,
        now: Timestamp,
    ) -> Result<Reservation, PaymentsError> {
        let mut tx = self.db.begin().await?;
        if !insert_operation(&mut tx, op, now).await? {
            tx.rollback().await?;
            return Ok(Reservation::KeyTaken);
        }
        if !reserve(&mut tx, op.payment_id, op.amount_minor, now).await? {
            // Dropping the transaction forgets the operation too.
            tx.rollback().await?;
            return Ok(Reservation::Refused);
        }
        tx.commit().await?;
        Ok(Reservation::Reserved)
    }

    /// Turns a pending cancel that was to void into one that refunds
    /// `amount_minor` (the payment was captured meanwhile), setting the amount
    /// aside. `false` when the operation or the payment moved on.
    pub async fn reserve_cancel_refund(
        &self,
        key: &str,
        payment_id: PaymentId,
        amount_minor: i64,
        now: Timestamp,
    ) -> Result<bool, PaymentsError> {
        let mut tx = self.db.begin().await?;
        let switched = sqlx::query(
            "UPDATE payments_operations SET amount_minor = $1, updated_at = $2 \
             WHERE key = $3 AND kind = 'cancel' AND status = 'pending' AND amount_minor = 0",
        )
        .bind(amount_minor)
        .bind(now.as_millis())
        .bind(key.to_string())
        .execute(&mut *tx)
        .await?;
        if switched.rows_affected() == 0 || !reserve(&mut tx, payment_id, amount_minor, now).await?
        {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records a capture or void the provider made: the payment becomes
    /// `captured` or `voided` (if it still was `authorized`) and the operation
    /// succeeds.
    pub async fn settle(
        &self,
        op: &Operation,
        settled: Settled,
        attempt: &NewAttempt<'_>,
        now: Timestamp,
    ) -> Result<(), PaymentsError> {
        let sql = match settled {
            Settled::Captured => {
                "UPDATE payments_payments SET status = 'captured', captured_minor = amount_minor, \
                 updated_at = $1 WHERE id = $2 AND status = 'authorized'"
            }
            Settled::Voided => {
                "UPDATE payments_payments SET status = 'voided', updated_at = $1 \
                 WHERE id = $2 AND status = 'authorized'"
            }
        };
        let mut tx = self.db.begin().await?;
        sqlx::query(sql)
            .bind(now.as_millis())
            .bind(op.payment_id.to_db())
            .execute(&mut *tx)
            .await?;
        finish_operation(&mut tx, &op.key, OperationStatus::Succeeded, None, now).await?;
        insert_attempt(&mut tx, attempt, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends an operation without changing the payment: succeeded (it was done
    /// another way, e.g. a webhook got there first) or failed (with `error`).
    /// A refund's reservation is given back when it fails; a capture reserved
    /// nothing (its amount is the payment's), so it gives nothing back.
    pub async fn finish_operation(
        &self,
        op: &Operation,
        status: OperationStatus,
        error: Option<String>,
        attempt: Option<&NewAttempt<'_>>,
        now: Timestamp,
    ) -> Result<(), PaymentsError> {
        let mut tx = self.db.begin().await?;
        let finished = finish_operation(&mut tx, &op.key, status, error, now).await?;
        if finished
            && status == OperationStatus::Failed
            && op.kind != OperationKind::Capture
            && op.amount_minor > 0
        {
            sqlx::query(
                "UPDATE payments_payments SET refund_pending_minor = refund_pending_minor - $1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(op.amount_minor)
            .bind(now.as_millis())
            .bind(op.payment_id.to_db())
            .execute(&mut *tx)
            .await?;
        }
        if let Some(attempt) = attempt {
            insert_attempt(&mut tx, attempt, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a refund the provider made: the reserved amount becomes refunded,
    /// the status follows, the operation succeeds and `PaymentRefunded` is
    /// emitted — in one transaction, once (a second settle of the same operation
    /// changes nothing).
    pub async fn settle_refund(
        &self,
        op: &Operation,
        attempt: &NewAttempt<'_>,
        now: Timestamp,
    ) -> Result<(), PaymentsError> {
        let mut tx = self.db.begin().await?;
        let finished =
            finish_operation(&mut tx, &op.key, OperationStatus::Succeeded, None, now).await?;
        insert_attempt(&mut tx, attempt, now).await?;
        if finished {
            let row = sqlx::query(concat!(
                "UPDATE payments_payments SET refund_pending_minor = refund_pending_minor - $1, \
                 refunded_minor = refunded_minor + $1, \
                 status = CASE WHEN refunded_minor + $1 = captured_minor THEN 'refunded' \
                 ELSE 'partially_refunded' END, updated_at = $2 WHERE id = $3 RETURNING ",
                payment_columns!()
            ))
            .bind(op.amount_minor)
            .bind(now.as_millis())
            .bind(op.payment_id.to_db())
            .fetch_one(&mut *tx)
            .await?;
            let payment = payment_from_row(&row)?;
            let refunded = refund_event(&payment, op.amount_minor, now)?;
            self.outbox.append(&mut tx, &refunded).await?;
        }
        tx.commit().await?;
        if finished {
            self.outbox.notify();
        }
        Ok(())
    }

    /// Stores a webhook event once per (provider, event id) and, in the same
    /// transaction, applies it to the payment it is about when `decide` says it
    /// moves the payment forward (emitting `PaymentRefunded` when more money was
    /// given back). A duplicate changes nothing.
    pub async fn receive_event(
        &self,
        provider: &str,
        event: &ProviderEvent,
        payload: &str,
        now: Timestamp,
        decide: impl Fn(&PaymentRecord, &ProviderEvent) -> Option<Advance>,
    ) -> Result<EventReceipt, PaymentsError> {
        let mut tx = self.db.begin().await?;
        let stored = sqlx::query(
            "INSERT INTO payments_provider_events \
             (provider, event_id, type, provider_ref, payload, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provider, event_id) DO NOTHING",
        )
        .bind(provider.to_string())
        .bind(event.id.clone())
        .bind(event.kind.as_str())
        .bind(event.data.provider_ref.clone())
        .bind(payload.to_string())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        if stored.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(EventReceipt {
                duplicate: true,
                applied: false,
            });
        }
        let mut applied = false;
        let mut emitted = false;
        let mut matched = None;
        // Compare and set: read the payment, decide, and update only if it is still
        // as read. PostgreSQL (read committed) may see a concurrent change between
        // the two; then read again. SQLite's writer lock rules that out.
        for _ in 0..5 {
            let row = sqlx::query(concat!(
                "SELECT ",
                payment_columns!(),
                " FROM payments_payments WHERE provider = $1 AND provider_ref = $2"
            ))
            .bind(provider.to_string())
            .bind(event.data.provider_ref.clone())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(ours) = row.as_ref().map(payment_from_row).transpose()? else {
                break;
            };
            matched = Some(ours.id);
            let Some(advance) = decide(&ours, event) else {
                break;
            };
            let row = sqlx::query(concat!(
                "UPDATE payments_payments SET status = $1, captured_minor = $2, \
                 refunded_minor = $3, updated_at = $4 \
                 WHERE id = $5 AND status = $6 AND captured_minor = $7 AND refunded_minor = $8 \
                 AND refund_pending_minor = $9 RETURNING ",
                payment_columns!()
            ))
            .bind(advance.status.as_str())
            .bind(advance.captured_minor)
            .bind(advance.refunded_minor)
            .bind(now.as_millis())
            .bind(ours.id.to_db())
            .bind(ours.status.as_str())
            .bind(ours.captured_minor)
            .bind(ours.refunded_minor)
            .bind(ours.refund_pending_minor)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| match violation(&e) {
                Some(Violation::Check(_)) => {
                    PaymentsError::WebhookInvalid("its amounts break the payment's rules".into())
                }
                _ => PaymentsError::Database(e),
            })?;
            let Some(row) = row else {
                continue;
            };
            let updated = payment_from_row(&row)?;
            applied = true;
            let more_refunded = updated.refunded_minor - ours.refunded_minor;
            if more_refunded > 0 {
                let refunded = refund_event(&updated, more_refunded, now)?;
                self.outbox.append(&mut tx, &refunded).await?;
                emitted = true;
            }
            break;
        }
        sqlx::query(
            "UPDATE payments_provider_events SET payment_id = $1, applied = $2 \
             WHERE provider = $3 AND event_id = $4",
        )
        .bind(matched.map(|id| id.to_db()))
        .bind(i64::from(applied))
        .bind(provider.to_string())
        .bind(event.id.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if emitted {
            self.outbox.notify();
        }
        Ok(EventReceipt {
            duplicate: false,
            applied,
        })
    }

    /// Up to `limit` payments matching `filter` after `after`, newest first.
    pub async fn list(
        &self,
        filter: &PaymentFilter,
        after: Option<&PaymentCursor>,
        limit: i64,
    ) -> Result<Vec<PaymentRecord>, PaymentsError> {
        let mut q = SqlBuilder::new(concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments_payments WHERE 1 = 1"
        ));
        if let Some(status) = filter.status {
            q.push(" AND status = ").bind(status.as_str())?;
        }
        if let Some(reference) = &filter.reference {
            q.push(" AND reference = ").bind(reference.clone())?;
        }
        if let Some(after) = after {
            q.push(" AND (created_at, id) < (")
                .bind(after.created_at)?
                .push(", ")
                .bind(after.id.clone())?
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .bind(limit)?;
        let rows = q.build().fetch_all(self.db.scan_reader()).await?;
        rows.iter().map(payment_from_row).collect()
    }

    /// A payment's operations, oldest first.
    pub async fn operations_of(&self, id: PaymentId) -> Result<Vec<Operation>, PaymentsError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            operation_columns!(),
            " FROM payments_operations WHERE payment_id = $1 ORDER BY created_at, key"
        ))
        .bind(id.to_db())
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(operation_from_row).collect()
    }

    /// A payment's provider calls, oldest first.
    pub async fn attempts_of(&self, id: PaymentId) -> Result<Vec<AttemptRecord>, PaymentsError> {
        let rows = sqlx::query(
            "SELECT operation, outcome, error, at FROM payments_attempts \
             WHERE payment_id = $1 ORDER BY at, id",
        )
        .bind(id.to_db())
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRecord {
                    operation: r.try_get(0)?,
                    outcome: r.try_get(1)?,
                    error: r.try_get(2)?,
                    at: Timestamp::from_millis(r.try_get(3)?),
                })
            })
            .collect()
    }

    /// The webhook events about a payment, oldest first.
    pub async fn provider_events_of(
        &self,
        id: PaymentId,
    ) -> Result<Vec<ProviderEventRecord>, PaymentsError> {
        let rows = sqlx::query(
            "SELECT provider, event_id, type, applied, received_at FROM payments_provider_events \
             WHERE payment_id = $1 ORDER BY received_at, event_id",
        )
        .bind(id.to_db())
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProviderEventRecord {
                    provider: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    applied: r.try_get::<i64, _>(3)? != 0,
                    received_at: Timestamp::from_millis(r.try_get(4)?),
                })
            })
            .collect()
    }

    /// Payments still `processing` and untouched since `before`, with fewer than
    /// `max_attempts` provider calls: for the resolver.
    pub async fn stale_authorizations(
        &self,
        before: Timestamp,
        max_attempts: i64,
        limit: i64,
    ) -> Result<Vec<PaymentId>, PaymentsError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT p.id FROM payments_payments p WHERE p.status = 'processing' \
             AND p.updated_at <= $1 AND (SELECT COUNT(*) FROM payments_attempts a \
             WHERE a.payment_id = p.id AND a.operation = 'authorize') < $2 \
             ORDER BY p.updated_at LIMIT $3",
        )
        .bind(before.as_millis())
        .bind(max_attempts)
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        ids.iter()
            .map(|id| PaymentId::from_db(id).map_err(|_| anyhow!("corrupt payment id {id}").into()))
            .collect()
    }

    /// Operations still `pending` and untouched since `before`, with fewer than
    /// `max_attempts` provider calls: for the resolver.
    pub async fn stale_operations(
        &self,
        before: Timestamp,
        max_attempts: i64,
        limit: i64,
    ) -> Result<Vec<Operation>, PaymentsError> {
        let rows = sqlx::query(
            "SELECT o.key, o.payment_id, o.kind, o.amount_minor, o.reason, o.status, o.error, \
             o.created_at, o.updated_at FROM payments_operations o WHERE o.status = 'pending' \
             AND o.updated_at <= $1 AND (SELECT COUNT(*) FROM payments_attempts a \
             WHERE a.operation_key = o.key) < $2 ORDER BY o.updated_at LIMIT $3",
        )
        .bind(before.as_millis())
        .bind(max_attempts)
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(operation_from_row).collect()
    }
}

/// Sets `amount_minor` of a captured payment aside for a refund, if that much is
/// refundable.
async fn reserve(
    tx: &mut agora_platform::db::WriteTx,
    payment_id: PaymentId,
    amount_minor: i64,
    now: Timestamp,
) -> Result<bool, PaymentsError> {
    let done = sqlx::query(
        "UPDATE payments_payments SET refund_pending_minor = refund_pending_minor + $1, \
         updated_at = $2 WHERE id = $3 AND status IN ('captured', 'partially_refunded') \
         AND refunded_minor + refund_pending_minor + $1 <= captured_minor",
    )
    .bind(amount_minor)
    .bind(now.as_millis())
    .bind(payment_id.to_db())
    .execute(&mut **tx)
    .await;
    match done {
        Ok(done) => Ok(done.rows_affected() == 1),
        // The CHECK constraint stands behind the condition.
        Err(e) if matches!(violation(&e), Some(Violation::Check(_))) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn insert_operation(
    tx: &mut agora_platform::db::WriteTx,
    op: &NewOperation<'_>,
    now: Timestamp,
) -> Result<bool, PaymentsError> {
    let row = insert_operation_query(op, now)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// Stores `op` as pending unless its key is taken, returning it as stored.
fn insert_operation_query(
    op: &NewOperation<'_>,
    now: Timestamp,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(concat!(
        "INSERT INTO payments_operations \
         (key, payment_id, kind, amount_minor, reason, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) ON CONFLICT (key) DO NOTHING RETURNING ",
        operation_columns!()
    ))
    .bind(op.key.to_string())
    .bind(op.payment_id.to_db())
    .bind(op.kind.as_str())
    .bind(op.amount_minor)
    .bind(op.reason.to_string())
    .bind(now.as_millis())
}

/// Moves a pending operation to `status`; `false` when it was not pending.
async fn finish_operation(
    tx: &mut agora_platform::db::WriteTx,
    key: &str,
    status: OperationStatus,
    error: Option<String>,
    now: Timestamp,
) -> Result<bool, PaymentsError> {
    let status = match status {
        OperationStatus::Pending => {
            return Err(anyhow!("an operation cannot go back to pending").into());
        }
        OperationStatus::Succeeded => "succeeded",
        OperationStatus::Failed => "failed",
    };
    let done = sqlx::query(
        "UPDATE payments_operations SET status = $1, error = $2, updated_at = $3 \
         WHERE key = $4 AND status = 'pending'",
    )
    .bind(status)
    .bind(error)
    .bind(now.as_millis())
    .bind(key.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn insert_attempt(
    tx: &mut agora_platform::db::WriteTx,
    attempt: &NewAttempt<'_>,
    now: Timestamp,
) -> Result<(), PaymentsError> {
    sqlx::query(
        "INSERT INTO payments_attempts (id, payment_id, operation, operation_key, outcome, error, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::now_v7().hyphenated().to_string())
    .bind(attempt.payment_id.to_db())
    .bind(attempt.operation)
    .bind(attempt.operation_key.map(str::to_string))
    .bind(attempt.outcome)
    .bind(attempt.error.clone())
    .bind(now.as_millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn event<P: EventPayload>(
    payment: &PaymentRecord,
    payload: &P,
    now: Timestamp,
) -> Result<Event, PaymentsError> {
    Event::new(P::KIND, payment.id, payload, now)
        .map_err(|e| anyhow!("cannot serialize {}: {e}", P::KIND).into())
}

/// `PaymentRefunded` for `amount_minor` more given back of `payment` (as it is
/// after the refund).
fn refund_event(
    payment: &PaymentRecord,
    amount_minor: i64,
    now: Timestamp,
) -> Result<Event, PaymentsError> {
    let amount = Money::new(amount_minor, payment.amount.currency())
        .map_err(|e| anyhow!("refund amount out of range: {e}"))?;
    event(
        payment,
        &PaymentRefunded {
            payment_id: payment.id,
            reference: payment.reference.clone(),
            amount,
            refunded_total_minor: payment.refunded_minor,
            fully_refunded: payment.refunded_minor == payment.captured_minor,
        },
        now,
    )
}

fn payment_from_row(r: &AnyRow) -> Result<PaymentRecord, PaymentsError> {
    let id: String = r.try_get(0)?;
    let status: String = r.try_get(3)?;
    let currency: String = r.try_get(5)?;
    let currency = Currency::parse(&currency).map_err(|e| anyhow!("corrupt currency: {e}"))?;
    Ok(PaymentRecord {
        id: PaymentId::from_db(&id).map_err(|_| anyhow!("corrupt payment id {id}"))?,
        authorize_key: r.try_get(1)?,
        reference: r.try_get(2)?,
        status: PaymentStatus::parse(&status)
            .ok_or_else(|| anyhow!("corrupt payment status {status}"))?,
        amount: Money::new(r.try_get(4)?, currency)
            .map_err(|e| anyhow!("corrupt payment amount: {e}"))?,
        captured_minor: r.try_get(6)?,
        refunded_minor: r.try_get(7)?,
        refund_pending_minor: r.try_get(8)?,
        provider: r.try_get(9)?,
        provider_ref: r.try_get(10)?,
        card_brand: r.try_get(11)?,
        card_last4: r.try_get(12)?,
        decline_reason: r.try_get(13)?,
        created_at: Timestamp::from_millis(r.try_get(14)?),
        updated_at: Timestamp::from_millis(r.try_get(15)?),
    })
}

fn operation_from_row(r: &AnyRow) -> Result<Operation, PaymentsError> {
    let payment_id: String = r.try_get(1)?;
    Ok(Operation {
        key: r.try_get(0)?,
        payment_id: PaymentId::from_db(&payment_id)
            .map_err(|_| anyhow!("corrupt payment id {payment_id}"))?,
        kind: OperationKind::parse(&r.try_get::<String, _>(2)?)?,
        amount_minor: r.try_get(3)?,
        reason: r.try_get(4)?,
        status: OperationStatus::parse(&r.try_get::<String, _>(5)?)?,
        error: r.try_get(6)?,
        created_at: Timestamp::from_millis(r.try_get(7)?),
        updated_at: Timestamp::from_millis(r.try_get(8)?),
    })
}
