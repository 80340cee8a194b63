//! The checkout saga: the steps that turn a placed order into a paid one, and
//! the compensations that undo them when one fails.
//!
//! ```text
//! running:       reserve ─▶ authorize ─▶ capture ─▶ commit_stock ─▶ clear_cart ─▶ done
//!                   │           │           │            │   (order confirmed here)
//!                   │           ▼           ▼            ▼
//! compensating:     │      cancel_payment ───────────────┘
//!                   ▼           │
//!              release_stock ◀──┘ ─▶ done (order cancelled)
//! ```
//!
//! Each step calls one participant with a key derived from the order id
//! (`<order>:reserve`, `<order>:authorize`, …), so running a step again after a
//! crash or a timeout does its work once. Progress is one transaction per step:
//! the step's success, the next step's start, the order's new status and any
//! event, guarded by the driver's lease (see [`crate::store::OrdersStore::advance`]).
//! A step that fails for a passing reason (a participant unavailable) is retried
//! with a growing pause; after [`SagaSettings::max_attempts`] a forward step gives
//! up and the saga compensates. Compensations are retried until they succeed.

use std::time::Duration;

use agora_contracts::inventory::{InventoryError, ReservationStatus, StockLine};
use agora_contracts::payments::{Payment, PaymentError, PaymentStatus};
use agora_contracts::{PortError, events};
use agora_kernel::{ErrorCode, OrderId};
use agora_platform::bus::Event;
use serde_json::json;
use tracing::Instrument as _;

use crate::domain::{Order, OrderStatus};
use crate::error::OrderError;
use crate::service::Orders;
use crate::store::{Progress, SagaRow, StoredResponse};

/// Where a saga goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    /// Forward, towards a confirmed order.
    Running,
    /// Backward, undoing what was done, towards a cancelled order.
    Compensating,
    /// Over.
    Done,
}

impl SagaState {
    /// As stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Done => "done",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<SagaState> {
        [SagaState::Running, SagaState::Compensating, SagaState::Done]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A step of the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reserve the order's stock.
    Reserve,
    /// Authorize the payment.
    Authorize,
    /// Capture the payment.
    Capture,
    /// Commit the reservation (the stock is sold); the order is confirmed.
    CommitStock,
    /// Take the bought lines out of the customer's cart.
    ClearCart,
    /// Compensation: void the authorization, or refund the capture.
    CancelPayment,
    /// Compensation: release the reservation; the order is cancelled.
    ReleaseStock,
    /// Nothing left to do.
    Finished,
}

impl Step {
    const ALL: [Step; 8] = [
        Step::Reserve,
        Step::Authorize,
        Step::Capture,
        Step::CommitStock,
        Step::ClearCart,
        Step::CancelPayment,
        Step::ReleaseStock,
        Step::Finished,
    ];

    /// As stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Reserve => "reserve",
            Step::Authorize => "authorize",
            Step::Capture => "capture",
            Step::CommitStock => "commit_stock",
            Step::ClearCart => "clear_cart",
            Step::CancelPayment => "cancel_payment",
            Step::ReleaseStock => "release_stock",
            Step::Finished => "finished",
        }
    }

    /// The step named `s`.
    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Where a crash is injected (tests only): before a step's call, or after the
/// call returned but before its result was recorded.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Before calling the participant of this step.
    Before(Step),
    /// After the participant answered, before recording it.
    After(Step),
}

/// How sagas are driven.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// How long a driver holds a saga before another may take it over.
    pub lease: Duration,
    /// How long stock stays reserved for a checkout.
    pub reservation_ttl: Duration,
    /// Failed attempts of a forward step before the saga gives up and compensates.
    pub max_attempts: i64,
    /// The pause after the first failed attempt; it doubles after each.
    pub retry_pause: Duration,
    /// Attempts a request makes itself before leaving the rest to the recovery
    /// loop.
    pub inline_attempts: i64,
    /// How long a repeated request waits for the first one to finish before it
    /// answers `REQUEST_IN_PROGRESS`.
    pub replay_wait: Duration,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            reservation_ttl: Duration::from_secs(15 * 60),
            max_attempts: 4,
            retry_pause: Duration::from_millis(100),
            inline_attempts: 4,
            replay_wait: Duration::from_secs(10),
        }
    }
}

/// Why a step did not succeed.
enum Failure {
    /// A participant was unavailable: try again later.
    Passing(String),
    /// The step cannot succeed: compensate, with this reason and these details
    /// for the customer.
    Final(&'static str, serde_json::Value),
}

impl From<PortError> for Failure {
    fn from(e: PortError) -> Self {
        Failure::Passing(e.to_string())
    }
}

/// The error of an injected crash: the process "dies" there, answering
/// nothing.
#[cfg(feature = "failpoints")]
const INJECTED_CRASH: &str = "injected crash";

fn injected_crash(e: &OrderError) -> bool {
    #[cfg(feature = "failpoints")]
    if let OrderError::Unexpected(e) = e {
        return e.to_string() == INJECTED_CRASH;
    }
    let _ = e;
    false
}

/// What the driver does next.
enum Next {
    Continue,
    /// Continue; the step just recorded the checkout's response.
    Answered(StoredResponse),
    Stop,
}

/// The saga's keys for each participant call, derived from the order id.
fn key(order: OrderId, what: &str) -> String {
    format!("{}:{what}", order.to_db())
}

impl Orders {
    /// Drives the saga of `order_id` as far as it goes now: to its end, or until a
    /// step must wait (then the recovery loop resumes it). Does nothing when
    /// another driver holds it.
    pub async fn drive(&self, order_id: OrderId) -> Result<(), OrderError> {
        self.drive_as(order_id, &self.new_driver()).await
    }

    /// A lease owner name for one driver: this process and a unique suffix, so
    /// that two drivers in one process never share a lease either.
    pub(crate) fn new_driver(&self) -> String {
        format!("{}/{}", self.inner.node, uuid::Uuid::now_v7().simple())
    }

    /// Drives the saga as `owner` (who may already hold its lease).
    pub(crate) async fn drive_as(&self, order_id: OrderId, owner: &str) -> Result<(), OrderError> {
        let now = self.now();
        let Some(saga) = self
            .inner
            .store
            .claim(order_id, owner, self.lease_end(now), now)
            .await?
        else {
            return Ok(());
        };
        let Some(order) = self.inner.store.order(order_id).await? else {
            return Err(anyhow::anyhow!("saga {order_id} has no order").into());
        };
        self.run(saga, &order, owner).await.map(drop)
    }

    /// Drives `saga`, whose lease `owner` holds, as far as it goes now. Returns
    /// the checkout's response when this driver recorded it — even when a
    /// later step then failed: the response is durable and true (the order
    /// is decided), and the recovery loop finishes the steps left once the
    /// lease lapses.
    pub(crate) async fn run(
        &self,
        mut saga: SagaRow,
        order: &Order,
        owner: &str,
    ) -> Result<Option<StoredResponse>, OrderError> {
        let mut answered = None;
        while saga.state != SagaState::Done {
            match self.step(&mut saga, order, owner).await {
                Ok(Next::Continue) => {}
                Ok(Next::Answered(response)) => answered = Some(response),
                Ok(Next::Stop) => break,
                Err(e) => match answered {
                    Some(response) if !injected_crash(&e) => {
                        tracing::warn!(order_id = %order.id, step = saga.step.as_str(), error = %e,
                            "saga step failed after the checkout was answered; recovery resumes it");
                        return Ok(Some(response));
                    }
                    _ => return Err(e),
                },
            }
        }
        Ok(answered)
    }

    async fn step(
        &self,
        saga: &mut SagaRow,
        order: &Order,
        owner: &str,
    ) -> Result<Next, OrderError> {
        #[cfg(feature = "failpoints")]
        if self.crash_at(CrashPoint::Before(saga.step)) {
            return Err(OrderError::Unexpected(anyhow::anyhow!(INJECTED_CRASH)));
        }
        let began = std::time::Instant::now();
        let span = if agora_platform::telemetry::tracing_here() {
            tracing::debug_span!(
                "saga.step",
                order_id = %saga.order_id,
                step = saga.step.as_str(),
                compensating = saga.state == SagaState::Compensating,
                attempt = saga.attempts + 1,
            )
        } else {
            tracing::Span::none()
        };
        let outcome = match saga.state {
            SagaState::Running => self.forward(saga, order).instrument(span).await,
            SagaState::Compensating => self.backward(saga, order).instrument(span).await,
            SagaState::Done => return Ok(Next::Stop),
        };
        metrics::histogram!("agora_saga_step_duration_seconds", "step" => saga.step.as_str())
            .record(began.elapsed().as_secs_f64());
        #[cfg(feature = "failpoints")]
        if self.crash_at(CrashPoint::After(saga.step)) {
            return Err(OrderError::Unexpected(anyhow::anyhow!(INJECTED_CRASH)));
        }
        let now = self.now();
        match outcome {
            Ok(progress) => self.record(saga, owner, progress).await,
            Err(Failure::Final(reason, details)) => {
                self.compensate(saga, owner, reason, details, reason.to_string())
                    .await
            }
            Err(Failure::Passing(error)) => {
                let attempts = saga.attempts + 1;
                // Once a capture was sent the money may be taken, so capture and
                // the stock commit after it are never given up on for a passing
                // failure: they are retried (until the reservation lapses, which
                // is final and compensated).
                let may_give_up =
                    matches!(saga.step, Step::Reserve | Step::Authorize | Step::ClearCart);
                if saga.state == SagaState::Running
                    && may_give_up
                    && attempts >= self.inner.settings.max_attempts
                {
                    // Give up, telling the customer which part failed.
                    let reason = match saga.step {
                        Step::Reserve => "inventory_unavailable",
                        Step::ClearCart => {
                            // Only the cart is left to tidy: the order stands.
                            let progress = Progress {
                                next: Some((Step::Finished, SagaState::Done)),
                                log: vec![(Step::ClearCart, "failed", Some(error))],
                                ..Progress::default()
                            };
                            return self.record(saga, owner, progress).await;
                        }
                        _ => "payment_unavailable",
                    };
                    let details = json!({ "order_id": order.id });
                    return self.compensate(saga, owner, reason, details, error).await;
                }
                let pause = self.pause(attempts);
                let inline = attempts < self.inner.settings.inline_attempts;
                let held = self
                    .inner
                    .store
                    .failed(
                        saga,
                        owner,
                        &error,
                        now.plus(pause),
                        (!inline).then(|| self.lease_end(now)),
                        now,
                    )
                    .await?;
                if held.is_none() {
                    tracing::info!(order_id = %saga.order_id, "saga lease lost; another driver has it");
                    return Ok(Next::Stop);
                }
                saga.attempts = attempts;
                tracing::warn!(order_id = %order.id, step = saga.step.as_str(), attempts, error, "saga step failed; will retry");
                if inline {
                    tokio::time::sleep(pause).await;
                    Ok(Next::Continue)
                } else {
                    Ok(Next::Stop)
                }
            }
        }
    }

    /// Turns the saga around: the order will be cancelled for `reason`, after
    /// undoing what the steps so far did.
    async fn compensate(
        &self,
        saga: &mut SagaRow,
        owner: &str,
        reason: &'static str,
        details: serde_json::Value,
        error: String,
    ) -> Result<Next, OrderError> {
        let first = match saga.step {
            Step::Reserve => Step::ReleaseStock,
            _ => Step::CancelPayment,
        };
        tracing::info!(order_id = %saga.order_id, step = saga.step.as_str(), reason, "checkout failed; compensating");
        let progress = Progress {
            next: Some((first, SagaState::Compensating)),
            cancel: Some((reason.to_string(), details)),
            log: vec![(saga.step, "failed", Some(error)), (first, "started", None)],
            ..Progress::default()
        };
        self.record(saga, owner, progress).await
    }

    /// Applies `progress`; stops when the lease was lost.
    async fn record(
        &self,
        saga: &mut SagaRow,
        owner: &str,
        progress: Progress,
    ) -> Result<Next, OrderError> {
        let next = progress.next;
        let cancels = progress.status == Some(OrderStatus::Cancelled);
        let payment_id = progress.payment_id;
        let has_events = !progress.events.is_empty();
        let response = progress.response.clone();
        let now = self.now();
        if !self
            .inner
            .store
            .advance(
                saga,
                owner,
                progress,
                &self.inner.outbox,
                self.lease_end(now),
                now,
            )
            .await?
        {
            tracing::info!(order_id = %saga.order_id, "saga lease lost; another driver has it");
            return Ok(Next::Stop);
        }
        if has_events {
            self.inner.outbox.notify();
        }
        if let Some((step, state)) = next {
            if state == SagaState::Done {
                let outcome = if cancels || saga.state == SagaState::Compensating {
                    "cancelled"
                } else {
                    "confirmed"
                };
                metrics::counter!("agora_saga_outcomes_total", "outcome" => outcome).increment(1);
            }
            saga.step = step;
            saga.state = state;
        }
        if payment_id.is_some() {
            saga.payment_id = payment_id;
        }
        saga.attempts = 0;
        Ok(response.map_or(Next::Continue, Next::Answered))
    }

    /// The pause after `attempts` failed attempts: doubling, at most 5 minutes.
    fn pause(&self, attempts: i64) -> Duration {
        let base = self.inner.settings.retry_pause;
        let factor = 1_u32 << attempts.clamp(0, 12);
        (base * factor).min(Duration::from_secs(300))
    }

    async fn forward(&self, saga: &SagaRow, order: &Order) -> Result<Progress, Failure> {
        let id = order.id;
        match saga.step {
            Step::Reserve => {
                let mut lines: Vec<StockLine> = order
                    .lines
                    .iter()
                    .map(|l| StockLine {
                        product_id: l.product_id,
                        quantity: l.quantity,
                    })
                    .collect();
                lines.sort_by_key(|l| l.product_id.to_db());
                let expires = self.now().plus(self.inner.settings.reservation_ttl);
                match self
                    .inner
                    .inventory
                    .reserve(&key(id, "reserve"), &lines, expires)
                    .await
                {
                    Ok(_) => Ok(Progress {
                        next: Some((Step::Authorize, SagaState::Running)),
                        status: Some(OrderStatus::Reserved),
                        log: vec![
                            (Step::Reserve, "succeeded", None),
                            (Step::Authorize, "started", None),
                        ],
                        ..Progress::default()
                    }),
                    Err(InventoryError::Insufficient {
                        product_id,
                        available,
                        requested,
                    }) => Err(Failure::Final(
                        "out_of_stock",
                        json!({
                            "order_id": id,
                            "product_id": product_id,
                            "available": available,
                            "requested": requested,
                        }),
                    )),
                    Err(InventoryError::Port(e)) => Err(e.into()),
                    Err(e) => Err(Failure::Final(
                        "inventory_refused",
                        json!({ "order_id": id, "error": e.to_string() }),
                    )),
                }
            }
            Step::Authorize => {
                let payment = self.authorize(saga, order).await?;
                match payment.status {
                    PaymentStatus::Declined => Err(Failure::Final(
                        "payment_declined",
                        json!({
                            "order_id": id,
                            "reason": payment.decline_reason.unwrap_or_else(|| "declined".into()),
                        }),
                    )),
                    PaymentStatus::Authorized | PaymentStatus::Captured => Ok(Progress {
                        next: Some((Step::Capture, SagaState::Running)),
                        status: Some(OrderStatus::Authorized),
                        payment_id: Some(payment.id),
                        log: vec![
                            (Step::Authorize, "succeeded", Some(payment.id.to_string())),
                            (Step::Capture, "started", None),
                        ],
                        ..Progress::default()
                    }),
                    PaymentStatus::Processing => Err(Failure::Passing(
                        "the authorization's outcome is not known yet".into(),
                    )),
                    other => Err(Failure::Final(
                        "payment_failed",
                        json!({ "order_id": id, "status": other }),
                    )),
                }
            }
            Step::Capture => {
                let payment_id = saga
                    .payment_id
                    .ok_or_else(|| Failure::Final("payment_failed", json!({ "order_id": id })))?;
                match self
                    .inner
                    .payments
                    .capture(&key(id, "capture"), payment_id)
                    .await
                {
                    Ok(_) => Ok(Progress {
                        next: Some((Step::CommitStock, SagaState::Running)),
                        log: vec![
                            (Step::Capture, "succeeded", None),
                            (Step::CommitStock, "started", None),
                        ],
                        ..Progress::default()
                    }),
                    Err(e) => Err(payment_failure(id, e)),
                }
            }
            Step::CommitStock => {
                match self.inner.inventory.commit(&key(id, "reserve")).await {
                    Ok(r) if r.status == ReservationStatus::Committed => {}
                    Ok(_) | Err(InventoryError::WrongState(_) | InventoryError::NotFound) => {
                        return Err(Failure::Final(
                            "reservation_lapsed",
                            json!({ "order_id": id }),
                        ));
                    }
                    Err(InventoryError::Port(e)) => return Err(e.into()),
                    Err(e) => {
                        return Err(Failure::Final(
                            "inventory_refused",
                            json!({ "order_id": id, "error": e.to_string() }),
                        ));
                    }
                }
                let mut confirmed = order.clone();
                confirmed.status = OrderStatus::Confirmed;
                confirmed.payment_id = saga.payment_id;
                confirmed.updated_at = self.now();
                let event = self.event(
                    id,
                    &events::OrderConfirmed {
                        order_id: id,
                        user_id: order.user_id,
                        total: order.total,
                    },
                )?;
                Ok(Progress {
                    next: Some((Step::ClearCart, SagaState::Running)),
                    status: Some(OrderStatus::Confirmed),
                    log: vec![
                        (Step::CommitStock, "succeeded", None),
                        (Step::ClearCart, "started", None),
                    ],
                    events: vec![event],
                    response: Some(StoredResponse {
                        status: 201,
                        body: json!({ "data": confirmed }),
                    }),
                    ..Progress::default()
                })
            }
            Step::ClearCart => {
                let products: Vec<_> = order.lines.iter().map(|l| l.product_id).collect();
                self.inner
                    .cart
                    .remove_products(order.user_id, &products)
                    .await?;
                Ok(Progress {
                    next: Some((Step::Finished, SagaState::Done)),
                    log: vec![(Step::ClearCart, "succeeded", None)],
                    ..Progress::default()
                })
            }
            Step::CancelPayment | Step::ReleaseStock | Step::Finished => Err(Failure::Final(
                "saga_corrupt",
                json!({ "order_id": id, "step": saga.step.as_str() }),
            )),
        }
    }

    /// Authorizes the order's payment with the saga's key; repeating it returns
    /// the same payment.
    async fn authorize(&self, saga: &SagaRow, order: &Order) -> Result<Payment, Failure> {
        let token = saga
            .payment_token
            .as_deref()
            .ok_or_else(|| Failure::Final("payment_failed", json!({ "order_id": order.id })))?;
        self.inner
            .payments
            .authorize(
                &key(order.id, "authorize"),
                &order.id.to_string(),
                token,
                order.total,
            )
            .await
            .map_err(|e| payment_failure(order.id, e))
    }

    async fn backward(&self, saga: &SagaRow, order: &Order) -> Result<Progress, Failure> {
        let id = order.id;
        match saga.step {
            Step::CancelPayment => {
                let payment_id = match saga.payment_id {
                    Some(p) => p,
                    // The authorization never answered: ask again (same key) to
                    // learn which payment it made, then cancel that.
                    None => self.authorize(saga, order).await.map_err(passing)?.id,
                };
                self.inner
                    .payments
                    .cancel(&key(id, "cancel-payment"), payment_id)
                    .await
                    .map_err(|e| passing(payment_failure(id, e)))?;
                Ok(Progress {
                    next: Some((Step::ReleaseStock, SagaState::Compensating)),
                    payment_id: Some(payment_id),
                    log: vec![
                        (Step::CancelPayment, "succeeded", None),
                        (Step::ReleaseStock, "started", None),
                    ],
                    ..Progress::default()
                })
            }
            Step::ReleaseStock => {
                match self.inner.inventory.release(&key(id, "reserve")).await {
                    Ok(r) if r.status == ReservationStatus::Committed => {
                        // Sold by a driver that lost its lease mid-step: the order
                        // is cancelled and refunded; the units are counted as sold
                        // until staff put them back.
                        tracing::error!(order_id = %id, "a cancelled order's stock was committed; adjust the stock by hand");
                    }
                    Ok(_) | Err(InventoryError::NotFound) => {}
                    Err(InventoryError::WrongState(ReservationStatus::Committed)) => {
                        tracing::error!(order_id = %id, "a cancelled order's stock was committed; adjust the stock by hand");
                    }
                    Err(InventoryError::Port(e)) => return Err(e.into()),
                    Err(e) => return Err(Failure::Passing(e.to_string())),
                }
                let (reason, details) = self
                    .inner
                    .store
                    .cancellation(id)
                    .await
                    .map_err(|e| Failure::Passing(e.to_string()))?;
                let event = self.event(
                    id,
                    &events::OrderCancelled {
                        order_id: id,
                        user_id: order.user_id,
                        reason: reason.clone(),
                    },
                )?;
                Ok(Progress {
                    next: Some((Step::Finished, SagaState::Done)),
                    status: Some(OrderStatus::Cancelled),
                    log: vec![(Step::ReleaseStock, "succeeded", None)],
                    events: vec![event],
                    response: Some(cancelled_response(&reason, details)),
                    ..Progress::default()
                })
            }
            _ => Err(Failure::Final(
                "saga_corrupt",
                json!({ "order_id": id, "step": saga.step.as_str() }),
            )),
        }
    }

    fn event<P: events::EventPayload>(
        &self,
        order: OrderId,
        payload: &P,
    ) -> Result<Event, Failure> {
        self.order_event(order, payload)
            .map_err(|e| Failure::Passing(e.to_string()))
    }
}

/// Compensations never give up: every failure is a passing one.
fn passing(f: Failure) -> Failure {
    match f {
        Failure::Final(reason, details) => Failure::Passing(format!("{reason}: {details}")),
        passing => passing,
    }
}

fn payment_failure(order: OrderId, e: PaymentError) -> Failure {
    match e {
        PaymentError::ProviderUnavailable(why) => Failure::Passing(why),
        PaymentError::Port(e) => e.into(),
        other => Failure::Final(
            "payment_failed",
            json!({ "order_id": order, "error": other.to_string() }),
        ),
    }
}

/// The checkout's answer for an order cancelled for `reason`.
pub(crate) fn cancelled_response(reason: &str, details: serde_json::Value) -> StoredResponse {
    let code = match reason {
        "out_of_stock" => ErrorCode::OrdersOutOfStock,
        "payment_declined" => ErrorCode::OrdersPaymentDeclined,
        "inventory_unavailable" | "inventory_refused" | "reservation_lapsed" => {
            ErrorCode::ServiceNotReady
        }
        _ => ErrorCode::OrdersPaymentUnavailable,
    };
    StoredResponse {
        status: code.status().as_u16(),
        body: json!({ "error": { "code": code.as_str(), "details": details } }),
    }
}
