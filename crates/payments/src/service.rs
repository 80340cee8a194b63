//! The payments' operations: the port other modules call (authorize, capture,
//! cancel, refund), the provider's webhooks, staff reads, and the resolver that
//! settles calls the provider left unanswered.
//!
//! Every call is idempotent by the caller's key. The row that records a call is
//! written before the provider is asked, and the provider gets a key derived from
//! it, so a repeat after a timeout or a crash continues from the stored state and
//! the provider does the work once.

use std::sync::Arc;
use std::time::Duration;

use agora_contracts::PortError;
use agora_contracts::payments::{Payment, PaymentError, PaymentStatus, PaymentsPort};
use agora_kernel::validation::has_control_characters;
use agora_kernel::{Clock, Limit, Money, Page, PaymentId, Timestamp};
use agora_platform::Shutdown;
use agora_platform::config::{PaymentsConfig, Secret};
use anyhow::anyhow;
use async_trait::async_trait;
use serde::Serialize;

use crate::error::PaymentsError;
use crate::provider::{Authorization, PaymentProvider, ProviderError};
use crate::provider_event::{ProviderEvent, advance};
use crate::store::{
    AttemptRecord, AuthorizationOutcome, EventReceipt, NewAttempt, NewOperation, NewPayment,
    Operation, OperationKind, OperationStatus, PaymentCursor, PaymentFilter, PaymentRecord,
    PaymentStore, ProviderEventRecord, Reservation, Settled, Unanswered,
};
use crate::webhook;

/// The longest idempotency key of a port call.
pub const MAX_KEY_LEN: usize = 512;
/// The longest reference, payment token and refund reason, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// A call left unanswered is retried by the resolver once untouched this long.
const RESOLVE_AFTER: Duration = Duration::from_secs(60);
/// The resolver gives up on a call after this many provider attempts (staff can
/// see it in the payment's attempts).
const MAX_RESOLVE_ATTEMPTS: i64 = 20;
/// Calls the resolver takes up per round, of each kind.
const RESOLVE_BATCH: i64 = 50;
/// How often a conflicting concurrent change is re-read before giving up.
const RACE_RETRIES: usize = 3;

/// How incoming webhooks are checked.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The secret they are signed with.
    pub secret: Secret,
    /// How far their signed time may be from our clock, in seconds.
    pub tolerance_secs: i64,
}

impl WebhookSettings {
    /// The settings of `payments.webhook_secret` and
    /// `payments.webhook_tolerance_secs`.
    pub fn from_config(config: &PaymentsConfig) -> Self {
        Self {
            secret: config.effective_webhook_secret(),
            tolerance_secs: i64::try_from(config.webhook_tolerance_secs).unwrap_or(i64::MAX),
        }
    }
}

/// A payment with everything staff may want to know about it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentDetails {
    /// The payment.
    pub payment: PaymentRecord,
    /// Money given back or on its way back: refunds, and cancellations of a
    /// captured payment.
    pub refunds: Vec<Operation>,
    /// Every call made to the provider.
    pub attempts: Vec<AttemptRecord>,
    /// The provider's webhook events about it.
    pub provider_events: Vec<ProviderEventRecord>,
}

/// The payments module. Cheap to clone.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    /// Payments, operations, attempts, provider events, and the outbox.
    store: PaymentStore,
    /// Who holds the money.
    provider: Arc<dyn PaymentProvider>,
    /// Timestamps, and the webhook tolerance window.
    clock: Arc<dyn Clock>,
    /// How the provider's webhooks are checked.
    webhooks: WebhookSettings,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("provider", &self.inner.provider.name())
            .finish_non_exhaustive()
    }
}

impl Payments {
    /// The module over `store`, with money held by `provider`, and webhooks
    /// checked as `webhooks` says.
    pub fn new(
        store: PaymentStore,
        provider: Arc<dyn PaymentProvider>,
        clock: Arc<dyn Clock>,
        webhooks: WebhookSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                provider,
                clock,
                webhooks,
            }),
        }
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &PaymentStore {
        &self.inner.store
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The payment with `id`.
    pub async fn payment_record(&self, id: PaymentId) -> Result<PaymentRecord, PaymentsError> {
        self.inner
            .store
            .payment(id)
            .await?
            .ok_or(PaymentsError::NotFound)
    }

    /// A page of payments, newest first.
    pub async fn list(
        &self,
        filter: &PaymentFilter,
        after: Option<PaymentCursor>,
        limit: Limit,
    ) -> Result<Page<PaymentRecord>, PaymentsError> {
        let rows = self
            .inner
            .store
            .list(filter, after.as_ref(), i64::from(limit.get()) + 1)
            .await?;
        Ok(Page::from_overfetch(rows, limit, |p| PaymentCursor {
            created_at: p.created_at.as_millis(),
            id: p.id.to_db(),
        }))
    }

    /// A payment with its refunds, provider attempts and webhook events.
    pub async fn details(&self, id: PaymentId) -> Result<PaymentDetails, PaymentsError> {
        let payment = self.payment_record(id).await?;
        let store = &self.inner.store;
        let refunds = store
            .operations_of(id)
            .await?
            .into_iter()
            .filter(|op| op.kind != OperationKind::Capture && op.amount_minor > 0)
            .collect();
        Ok(PaymentDetails {
            payment,
            refunds,
            attempts: store.attempts_of(id).await?,
            provider_events: store.provider_events_of(id).await?,
        })
    }

    /// Authorizes `amount` for `reference` (see [`PaymentsPort::authorize`]).
    pub async fn authorize_payment(
        &self,
        key: &str,
        reference: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<PaymentRecord, PaymentsError> {
        check_key(key)?;
        check_text("reference", reference)?;
        check_text("payment_token", payment_token)?;
        if amount.amount_minor() <= 0 {
            return Err(invalid("amount", "must be positive"));
        }
        let store = &self.inner.store;
        let id = PaymentId::new();
        let created = store
            .insert_payment(
                &NewPayment {
                    id,
                    key,
                    reference,
                    payment_token,
                    amount,
                    provider: self.inner.provider.name(),
                },
                self.now(),
            )
            .await?;
        // A new payment: the token is the one just stored.
        if let Some(payment) = created {
            return self
                .continue_authorization(payment, Some(payment_token.to_string()))
                .await;
        }
        let payment = store
            .payment_by_key(key)
            .await?
            .ok_or_else(|| anyhow!("the payment of key {key} vanished"))?;
        if payment.reference != reference || payment.amount != amount {
            return Err(PaymentsError::KeyReused);
        }
        if payment.status != PaymentStatus::Processing {
            return Ok(payment);
        }
        self.continue_authorization(payment, None).await
    }

    /// Asks the provider (again, with the same key) to authorize a `processing`
    /// payment, and records its answer. `token` is the payment's token when the
    /// caller knows it (it read it from the store otherwise).
    async fn continue_authorization(
        &self,
        payment: PaymentRecord,
        token: Option<String>,
    ) -> Result<PaymentRecord, PaymentsError> {
        let store = &self.inner.store;
        let token = match token {
            Some(token) => token,
            None => match store.payment_token(payment.id).await? {
                Some(token) => token,
                // Settled meanwhile by a concurrent repeat.
                None => return self.settled(payment.id).await,
            },
        };
        let provider_key = format!("{}:authorize", payment.id);
        let answer = self
            .inner
            .provider
            .authorize(&provider_key, &token, payment.amount)
            .await;
        let outcome = match answer {
            Ok(Authorization::Approved {
                provider_ref,
                brand,
                last4,
            }) => AuthorizationOutcome::Approved {
                provider_ref,
                brand,
                last4,
            },
            Ok(Authorization::Declined { reason }) => AuthorizationOutcome::Declined { reason },
            Err(ProviderError::Refused(why)) => {
                tracing::warn!(payment_id = %payment.id, why, "the provider refused an authorization");
                AuthorizationOutcome::Declined {
                    reason: "provider_refused".into(),
                }
            }
            Err(e) => return Err(self.unanswered(&payment, "authorize", None, e).await),
        };
        let settled = store
            .settle_authorization(payment.id, &outcome, self.now())
            .await?;
        match (&outcome, settled) {
            (AuthorizationOutcome::Approved { .. }, Some(settled)) => {
                tracing::info!(payment_id = %payment.id, reference = payment.reference, "payment authorized");
                return Ok(settled);
            }
            (AuthorizationOutcome::Declined { reason }, Some(settled)) => {
                tracing::info!(payment_id = %payment.id, reference = payment.reference, reason, "payment declined");
                return Ok(settled);
            }
            (AuthorizationOutcome::Approved { provider_ref, .. }, None) => {
                self.release_stray_authorization(payment.id, provider_ref)
                    .await?;
            }
            (AuthorizationOutcome::Declined { .. }, None) => {}
        }
        self.settled(payment.id).await
    }

    /// Lets go an authorization the provider granted after the payment was given
    /// up as never authorized (a cancel voided it while this call was on its
    /// way), so no hold stays on the card. Best effort: a failure is logged.
    async fn release_stray_authorization(
        &self,
        id: PaymentId,
        provider_ref: &str,
    ) -> Result<(), PaymentsError> {
        let now = self.payment_record(id).await?;
        if now.status != PaymentStatus::Voided || now.provider_ref.is_some() {
            return Ok(());
        }
        let answer = self
            .inner
            .provider
            .void(&format!("{id}:void"), provider_ref)
            .await;
        let (outcome, error) = match &answer {
            Ok(()) => ("succeeded", None),
            Err(e) => {
                tracing::error!(payment_id = %id, provider_ref, error = %e, "a stray authorization could not be voided");
                ("unavailable", Some(e.to_string()))
            }
        };
        let attempt = NewAttempt {
            payment_id: id,
            operation: "void",
            operation_key: None,
            outcome,
            error,
        };
        self.inner.store.record_attempt(&attempt, self.now()).await
    }

    /// Learns how a `processing` authorization ended before it is let go: asks
    /// the provider again. If the provider still fails before doing anything, and
    /// no earlier attempt may have taken effect, the authorization never happened:
    /// the payment is voided here, and nothing will ask the provider for it again.
    async fn settle_before_cancel(
        &self,
        payment: PaymentRecord,
    ) -> Result<PaymentRecord, PaymentsError> {
        let id = payment.id;
        match self.continue_authorization(payment, None).await {
            Err(PaymentsError::ProviderUnavailable(why)) => {
                let store = &self.inner.store;
                if store
                    .void_unanswered(id, Unanswered::NeverReached, self.now())
                    .await?
                {
                    tracing::info!(payment_id = %id, "an authorization the provider never took was voided");
                    return self.payment_record(id).await;
                }
                // An earlier attempt may have taken effect: have the provider
                // make sure it holds nothing, whatever it did.
                let record = self.payment_record(id).await?;
                match self
                    .inner
                    .provider
                    .cancel_authorization(&format!("{id}:authorize"))
                    .await
                {
                    Ok(()) => {
                        store
                            .void_unanswered(id, Unanswered::CancelledAtProvider, self.now())
                            .await?;
                        tracing::info!(payment_id = %id, "an unanswered authorization was cancelled at the provider");
                        self.payment_record(id).await
                    }
                    Err(e) => {
                        tracing::debug!(payment_id = %id, first = why, "cancelling an unanswered authorization failed");
                        Err(self
                            .unanswered(&record, "cancel_authorization", None, e)
                            .await)
                    }
                }
            }
            other => other,
        }
    }

    /// The payment after its authorization was settled; still `processing`
    /// means the provider's answer is yet unknown.
    async fn settled(&self, id: PaymentId) -> Result<PaymentRecord, PaymentsError> {
        let payment = self.payment_record(id).await?;
        if payment.status == PaymentStatus::Processing {
            return Err(PaymentsError::ProviderUnavailable(
                "the authorization is still being processed".into(),
            ));
        }
        Ok(payment)
    }

    /// Records a provider call that gave no answer and returns the error for it.
    async fn unanswered(
        &self,
        payment: &PaymentRecord,
        operation: &'static str,
        operation_key: Option<&str>,
        e: ProviderError,
    ) -> PaymentsError {
        let (outcome, reason) = match &e {
            ProviderError::Timeout => {
                ("timeout", "the provider did not answer in time".to_string())
            }
            ProviderError::Unavailable(why) => ("unavailable", why.clone()),
            ProviderError::Refused(why) => ("refused", why.clone()),
        };
        tracing::warn!(payment_id = %payment.id, operation, outcome, reason, "a provider call gave no answer");
        let attempt = NewAttempt {
            payment_id: payment.id,
            operation,
            operation_key,
            outcome,
            error: Some(reason.clone()),
        };
        if let Err(e) = self.inner.store.record_attempt(&attempt, self.now()).await {
            return e;
        }
        PaymentsError::ProviderUnavailable(reason)
    }

    /// Captures the whole authorized amount (see [`PaymentsPort::capture`]).
    pub async fn capture_payment(
        &self,
        key: &str,
        id: PaymentId,
    ) -> Result<PaymentRecord, PaymentsError> {
        check_key(key)?;
        let payment = self.payment_record(id).await?;
        if let Some(op) = self
            .known_operation(key, id, OperationKind::Capture, None)
            .await?
        {
            return self.resume(op).await;
        }
        match payment.status {
            PaymentStatus::Captured
            | PaymentStatus::PartiallyRefunded
            | PaymentStatus::Refunded => return Ok(payment),
            PaymentStatus::Authorized => {}
            other => return Err(PaymentsError::InvalidState(other)),
        }
        let op = NewOperation {
            key,
            payment_id: id,
            kind: OperationKind::Capture,
            amount_minor: payment.amount.amount_minor(),
            reason: "capture",
        };
        if let Some(op) = self.inner.store.insert_operation(&op, self.now()).await? {
            return self.run_capture(op, payment).await;
        }
        // A concurrent repeat's: the same call.
        let op = self
            .known_operation(key, id, OperationKind::Capture, None)
            .await?
            .ok_or_else(|| anyhow!("the operation of key {key} vanished"))?;
        self.resume(op).await
    }

    /// Lets the authorization go, or refunds what was captured (see
    /// [`PaymentsPort::cancel`]).
    pub async fn cancel_payment(
        &self,
        key: &str,
        id: PaymentId,
    ) -> Result<PaymentRecord, PaymentsError> {
        check_key(key)?;
        let mut payment = self.payment_record(id).await?;
        if let Some(op) = self
            .known_operation(key, id, OperationKind::Cancel, None)
            .await?
        {
            return self.resume(op).await;
        }
        if payment.status == PaymentStatus::Processing {
            payment = self.settle_before_cancel(payment).await?;
        }
        for _ in 0..RACE_RETRIES {
            let now = self.now();
            let store = &self.inner.store;
            let op = |amount_minor| NewOperation {
                key,
                payment_id: id,
                kind: OperationKind::Cancel,
                amount_minor,
                reason: "cancel",
            };
            match payment.status {
                PaymentStatus::Declined | PaymentStatus::Voided | PaymentStatus::Refunded => {
                    return Ok(payment);
                }
                PaymentStatus::Processing => {
                    return Err(PaymentsError::ProviderUnavailable(
                        "the authorization is still being processed".into(),
                    ));
                }
                PaymentStatus::Authorized => {
                    store.insert_operation(&op(0), now).await?;
                }
                PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => {
                    let rest = payment.refundable_minor();
                    if rest <= 0 {
                        return Err(refund_in_progress());
                    }
                    if store.reserve_refund(&op(rest), now).await? == Reservation::Refused {
                        // The payment moved meanwhile: look again.
                        payment = self.payment_record(id).await?;
                        continue;
                    }
                }
            }
            let op = self
                .known_operation(key, id, OperationKind::Cancel, None)
                .await?
                .ok_or_else(|| anyhow!("the operation of key {key} vanished"))?;
            return self.resume(op).await;
        }
        Err(PaymentsError::ProviderUnavailable(
            "the payment keeps changing; try again".into(),
        ))
    }

    /// Refunds `amount` of the captured money (see [`PaymentsPort::refund`]).
    pub async fn refund_payment(
        &self,
        key: &str,
        id: PaymentId,
        amount: Money,
        reason: &str,
    ) -> Result<PaymentRecord, PaymentsError> {
        check_key(key)?;
        check_text("reason", reason)?;
        if amount.amount_minor() <= 0 {
            return Err(invalid("amount", "must be positive"));
        }
        let payment = self.payment_record(id).await?;
        let args = Some((amount.amount_minor(), reason));
        if let Some(op) = self
            .known_operation(key, id, OperationKind::Refund, args)
            .await?
        {
            if amount.currency() != payment.amount.currency() {
                return Err(PaymentsError::KeyReused);
            }
            return self.resume(op).await;
        }
        refundable(&payment, amount)?;
        let op = NewOperation {
            key,
            payment_id: id,
            kind: OperationKind::Refund,
            amount_minor: amount.amount_minor(),
            reason,
        };
        match self.inner.store.reserve_refund(&op, self.now()).await? {
            Reservation::Reserved | Reservation::KeyTaken => {
                let op = self
                    .known_operation(key, id, OperationKind::Refund, args)
                    .await?
                    .ok_or_else(|| anyhow!("the operation of key {key} vanished"))?;
                self.resume(op).await
            }
            Reservation::Refused => {
                let now = self.payment_record(id).await?;
                refundable(&now, amount)?;
                Err(PaymentsError::ExceedsRefundable {
                    refundable_minor: now.refundable_minor(),
                })
            }
        }
    }

    /// The operation stored under `key`, if any, after checking it is the same
    /// call: same payment, kind and (for refunds) amount and reason.
    async fn known_operation(
        &self,
        key: &str,
        id: PaymentId,
        kind: OperationKind,
        refund: Option<(i64, &str)>,
    ) -> Result<Option<Operation>, PaymentsError> {
        let Some(op) = self.inner.store.operation(key).await? else {
            return Ok(None);
        };
        let same_args =
            refund.is_none_or(|(amount, reason)| op.amount_minor == amount && op.reason == reason);
        if op.payment_id != id || op.kind != kind || !same_args {
            return Err(PaymentsError::KeyReused);
        }
        Ok(Some(op))
    }

    /// Answers an operation from where it stands: as it ended, or by asking the
    /// provider (again, with the same key) when it is pending.
    async fn resume(&self, op: Operation) -> Result<PaymentRecord, PaymentsError> {
        let payment = self.payment_record(op.payment_id).await?;
        match op.status {
            OperationStatus::Succeeded => Ok(payment),
            OperationStatus::Failed => Err(failure(&op, &payment)),
            OperationStatus::Pending => match op.kind {
                OperationKind::Capture => self.run_capture(op, payment).await,
                OperationKind::Cancel => self.run_cancel(op, payment).await,
                OperationKind::Refund => self.run_refund(op, payment).await,
            },
        }
    }

    async fn run_capture(
        &self,
        op: Operation,
        payment: PaymentRecord,
    ) -> Result<PaymentRecord, PaymentsError> {
        let store = &self.inner.store;
        match payment.status {
            PaymentStatus::Captured
            | PaymentStatus::PartiallyRefunded
            | PaymentStatus::Refunded => {
                // Captured another way (a webhook got here first), as read
                // when a repeat resumes the operation. A first call passes
                // the payment it read before inserting the operation, without
                // reading it again: a capture landing in between costs only a
                // repeated provider call, which the payment-keyed capture
                // makes harmless.
                store
                    .finish_operation(&op, OperationStatus::Succeeded, None, None, self.now())
                    .await?;
                return Ok(payment);
            }
            PaymentStatus::Authorized => {}
            other => {
                let why = format!("the payment is {}", other.as_str());
                store
                    .finish_operation(&op, OperationStatus::Failed, Some(why), None, self.now())
                    .await?;
                return Err(PaymentsError::InvalidState(other));
            }
        }
        let provider_ref = provider_ref(&payment)?;
        // Keyed by the payment: a capture takes the whole amount once, whichever
        // caller's key asked for it.
        let answer = self
            .inner
            .provider
            .capture(
                &format!("{}:capture", payment.id),
                provider_ref,
                payment.amount,
            )
            .await;
        let attempt = |outcome, error| NewAttempt {
            payment_id: payment.id,
            operation: "capture",
            operation_key: Some(&op.key),
            outcome,
            error,
        };
        match answer {
            Ok(()) => {
                store
                    .settle(
                        &op,
                        Settled::Captured,
                        &attempt("succeeded", None),
                        self.now(),
                    )
                    .await?;
                tracing::info!(payment_id = %payment.id, reference = payment.reference, "payment captured");
                self.payment_record(payment.id).await
            }
            Err(ProviderError::Refused(why)) => {
                let now = self.payment_record(payment.id).await?;
                let captured = matches!(
                    now.status,
                    PaymentStatus::Captured
                        | PaymentStatus::PartiallyRefunded
                        | PaymentStatus::Refunded
                );
                let (status, error) = if captured {
                    (OperationStatus::Succeeded, None)
                } else {
                    (OperationStatus::Failed, Some(why.clone()))
                };
                store
                    .finish_operation(
                        &op,
                        status,
                        error,
                        Some(&attempt("refused", Some(why))),
                        self.now(),
                    )
                    .await?;
                if captured {
                    Ok(now)
                } else {
                    Err(PaymentsError::InvalidState(now.status))
                }
            }
            Err(e) => Err(self.unanswered(&payment, "capture", Some(&op.key), e).await),
        }
    }

    async fn run_cancel(
        &self,
        op: Operation,
        payment: PaymentRecord,
    ) -> Result<PaymentRecord, PaymentsError> {
        if op.amount_minor > 0 {
            return self.run_refund(op, payment).await;
        }
        let store = &self.inner.store;
        let payment = if payment.status == PaymentStatus::Processing {
            self.settle_before_cancel(payment).await?
        } else {
            payment
        };
        match payment.status {
            PaymentStatus::Declined | PaymentStatus::Voided | PaymentStatus::Refunded => {
                store
                    .finish_operation(&op, OperationStatus::Succeeded, None, None, self.now())
                    .await?;
                return Ok(payment);
            }
            PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => {
                return self.cancel_by_refund(op, payment).await;
            }
            PaymentStatus::Processing | PaymentStatus::Authorized => {}
        }
        let provider_ref = provider_ref(&payment)?;
        // Keyed by the payment: an authorization is let go once.
        let answer = self
            .inner
            .provider
            .void(&format!("{}:void", payment.id), provider_ref)
            .await;
        let attempt = |outcome, error| NewAttempt {
            payment_id: payment.id,
            operation: "void",
            operation_key: Some(&op.key),
            outcome,
            error,
        };
        match answer {
            Ok(()) => {
                store
                    .settle(
                        &op,
                        Settled::Voided,
                        &attempt("succeeded", None),
                        self.now(),
                    )
                    .await?;
                tracing::info!(payment_id = %payment.id, reference = payment.reference, "payment voided");
                self.payment_record(payment.id).await
            }
            Err(ProviderError::Refused(why)) => {
                store
                    .record_attempt(&attempt("refused", Some(why.clone())), self.now())
                    .await?;
                let now = self.payment_record(payment.id).await?;
                match now.status {
                    PaymentStatus::Voided | PaymentStatus::Refunded => {
                        store
                            .finish_operation(
                                &op,
                                OperationStatus::Succeeded,
                                None,
                                None,
                                self.now(),
                            )
                            .await?;
                        Ok(now)
                    }
                    // Captured meanwhile: give the money back instead.
                    PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => {
                        self.cancel_by_refund(op, now).await
                    }
                    other => {
                        store
                            .finish_operation(
                                &op,
                                OperationStatus::Failed,
                                Some(why),
                                None,
                                self.now(),
                            )
                            .await?;
                        Err(PaymentsError::InvalidState(other))
                    }
                }
            }
            Err(e) => Err(self.unanswered(&payment, "void", Some(&op.key), e).await),
        }
    }

    /// Turns a cancel that was to void into a refund of what is left to refund.
    async fn cancel_by_refund(
        &self,
        mut op: Operation,
        payment: PaymentRecord,
    ) -> Result<PaymentRecord, PaymentsError> {
        let rest = payment.refundable_minor();
        if rest <= 0
            || !self
                .inner
                .store
                .reserve_cancel_refund(&op.key, payment.id, rest, self.now())
                .await?
        {
            return Err(refund_in_progress());
        }
        op.amount_minor = rest;
        let payment = self.payment_record(payment.id).await?;
        self.run_refund(op, payment).await
    }

    /// Sends a reserved refund (or cancel) to the provider and records its answer.
    async fn run_refund(
        &self,
        op: Operation,
        payment: PaymentRecord,
    ) -> Result<PaymentRecord, PaymentsError> {
        let store = &self.inner.store;
        let provider_ref = provider_ref(&payment)?;
        let amount = Money::new(op.amount_minor, payment.amount.currency())
            .map_err(|e| anyhow!("refund amount: {e}"))?;
        // Keyed by the caller's key: each refund is its own.
        let provider_key = format!("{}:refund:{}", payment.id, key_digest(&op.key));
        let answer = self
            .inner
            .provider
            .refund(&provider_key, provider_ref, amount)
            .await;
        let attempt = |outcome, error| NewAttempt {
            payment_id: payment.id,
            operation: "refund",
            operation_key: Some(&op.key),
            outcome,
            error,
        };
        match answer {
            Ok(()) => {
                store
                    .settle_refund(&op, &attempt("succeeded", None), self.now())
                    .await?;
                tracing::info!(payment_id = %payment.id, reference = payment.reference, amount = %amount, "payment refunded");
                self.payment_record(payment.id).await
            }
            Err(ProviderError::Refused(why)) => {
                tracing::warn!(payment_id = %payment.id, why, "the provider refused a refund");
                store
                    .finish_operation(
                        &op,
                        OperationStatus::Failed,
                        Some(why.clone()),
                        Some(&attempt("refused", Some(why))),
                        self.now(),
                    )
                    .await?;
                let now = self.payment_record(payment.id).await?;
                Err(failure(&op, &now))
            }
            Err(e) => Err(self.unanswered(&payment, "refund", Some(&op.key), e).await),
        }
    }

    /// Takes a webhook of `provider`: checks its signature (`signature` is the
    /// `Agora-Signature` header) against the raw `body`, stores the event once,
    /// and applies it when it moves its payment forward.
    pub async fn receive_webhook(
        &self,
        provider: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<EventReceipt, PaymentsError> {
        if provider != self.inner.provider.name() {
            return Err(PaymentsError::UnknownProvider);
        }
        let header = signature.ok_or(webhook::SignatureError::Malformed)?;
        let now = self.now();
        let settings = &self.inner.webhooks;
        webhook::verify(
            settings.secret.expose().as_bytes(),
            header,
            body,
            now.as_millis().div_euclid(1000),
            settings.tolerance_secs,
        )?;
        let event = ProviderEvent::parse(body).map_err(PaymentsError::WebhookInvalid)?;
        let payload = std::str::from_utf8(body)
            .map_err(|_| PaymentsError::WebhookInvalid("the body is not UTF-8".into()))?;
        let receipt = self
            .inner
            .store
            .receive_event(provider, &event, payload, now, advance)
            .await?;
        tracing::info!(
            provider,
            event_id = event.id,
            kind = event.kind.as_str(),
            duplicate = receipt.duplicate,
            applied = receipt.applied,
            "payment webhook received"
        );
        Ok(receipt)
    }

    /// Repeats provider calls left unanswered (payments still `processing`,
    /// operations still `pending`) that nobody touched for a minute; returns how
    /// many were settled.
    pub async fn resolve_unanswered(&self) -> Result<usize, PaymentsError> {
        let store = &self.inner.store;
        let before = Timestamp::from_millis(
            self.now().as_millis() - i64::try_from(RESOLVE_AFTER.as_millis()).unwrap_or(0),
        );
        let mut settled = 0;
        for id in store
            .stale_authorizations(before, MAX_RESOLVE_ATTEMPTS, RESOLVE_BATCH)
            .await?
        {
            let payment = self.payment_record(id).await?;
            if payment.status != PaymentStatus::Processing {
                continue;
            }
            // One failing payment must not hold back the others.
            match self.continue_authorization(payment, None).await {
                Ok(_) => settled += 1,
                Err(e) => {
                    tracing::debug!(payment_id = %id, error = %e, "authorization still unsettled")
                }
            }
        }
        for op in store
            .stale_operations(before, MAX_RESOLVE_ATTEMPTS, RESOLVE_BATCH)
            .await?
        {
            let payment_id = op.payment_id;
            match self.resume(op).await {
                Ok(_) => settled += 1,
                Err(PaymentsError::ProviderUnavailable(e)) => {
                    tracing::debug!(%payment_id, error = %e, "operation still unsettled");
                }
                // A failure of ours (the database), not an answer: it stays
                // unsettled, for the next round.
                Err(e @ (PaymentsError::Database(_) | PaymentsError::Unexpected(_))) => {
                    tracing::warn!(%payment_id, error = %e, "operation not settled");
                }
                // Settled, as a refusal.
                Err(_) => settled += 1,
            }
        }
        if settled > 0 {
            tracing::info!(settled, "unanswered provider calls settled");
        }
        Ok(settled)
    }

    /// Runs [`Self::resolve_unanswered`] every `every` until `shutdown`.
    pub async fn run_resolver(self, every: Duration, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.wait() => return,
            }
            if let Err(e) = self.resolve_unanswered().await {
                tracing::warn!(error = %e, "resolving unanswered payments failed; retrying later");
            }
        }
    }
}

/// Checks that `amount` can be refunded from `payment` as it stands.
fn refundable(payment: &PaymentRecord, amount: Money) -> Result<(), PaymentsError> {
    match payment.status {
        PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => {}
        PaymentStatus::Refunded => {
            return Err(PaymentsError::ExceedsRefundable {
                refundable_minor: 0,
            });
        }
        other => return Err(PaymentsError::InvalidState(other)),
    }
    if amount.currency() != payment.amount.currency()
        || amount.amount_minor() > payment.refundable_minor()
    {
        return Err(PaymentsError::ExceedsRefundable {
            refundable_minor: payment.refundable_minor(),
        });
    }
    Ok(())
}

/// The answer a failed operation gives, first time and on every repeat.
fn failure(op: &Operation, payment: &PaymentRecord) -> PaymentsError {
    match op.kind {
        OperationKind::Refund => PaymentsError::ExceedsRefundable {
            refundable_minor: payment.refundable_minor(),
        },
        OperationKind::Capture | OperationKind::Cancel => {
            PaymentsError::InvalidState(payment.status)
        }
    }
}

fn refund_in_progress() -> PaymentsError {
    PaymentsError::ProviderUnavailable(
        "a refund of this payment is still on its way to the provider; try again".into(),
    )
}

fn provider_ref(payment: &PaymentRecord) -> Result<&str, PaymentsError> {
    payment
        .provider_ref
        .as_deref()
        .ok_or_else(|| anyhow!("payment {} has no provider reference", payment.id).into())
}

/// A short digest of a caller's key, for the provider key derived from it.
fn key_digest(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16])
}

fn invalid(field: &'static str, message: &str) -> PaymentsError {
    PaymentsError::Invalid {
        field,
        message: message.to_string(),
    }
}

fn check_key(key: &str) -> Result<(), PaymentsError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || has_control_characters(key) {
        return Err(invalid(
            "key",
            &format!("must have 1 to {MAX_KEY_LEN} bytes and no control characters"),
        ));
    }
    Ok(())
}

fn check_text(field: &'static str, text: &str) -> Result<(), PaymentsError> {
    if text.trim().is_empty() || text.len() > MAX_TEXT_LEN || has_control_characters(text) {
        return Err(invalid(
            field,
            &format!("must have 1 to {MAX_TEXT_LEN} bytes and no control characters"),
        ));
    }
    Ok(())
}

#[async_trait]
impl PaymentsPort for Payments {
    async fn authorize(
        &self,
        key: &str,
        reference: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<Payment, PaymentError> {
        match self
            .authorize_payment(key, reference, payment_token, amount)
            .await
        {
            Ok(payment) => Ok(payment.to_payment()),
            // No answer yet: the caller gets the payment, `processing`, to repeat
            // or cancel.
            Err(PaymentsError::ProviderUnavailable(why)) => {
                match self.inner.store.payment_by_key(key).await? {
                    Some(p) if p.status == PaymentStatus::Processing => Ok(p.to_payment()),
                    _ => Err(PaymentError::ProviderUnavailable(why)),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn capture(&self, key: &str, payment: PaymentId) -> Result<Payment, PaymentError> {
        Ok(self.capture_payment(key, payment).await?.to_payment())
    }

    async fn cancel(&self, key: &str, payment: PaymentId) -> Result<Payment, PaymentError> {
        Ok(self.cancel_payment(key, payment).await?.to_payment())
    }

    async fn refund(
        &self,
        key: &str,
        payment: PaymentId,
        amount: Money,
        reason: &str,
    ) -> Result<Payment, PaymentError> {
        Ok(self
            .refund_payment(key, payment, amount, reason)
            .await?
            .to_payment())
    }

    async fn payment(&self, id: PaymentId) -> Result<Option<Payment>, PortError> {
        Ok(self.inner.store.payment(id).await?.map(|p| p.to_payment()))
    }
}
