//! The orders module's operations: checkout (placing an order and driving its
//! saga), reading orders, staff cancellations, refunds and fulfilment, the
//! recovery loop, and the consumer of payment events.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use agora_contracts::PortError;
use agora_contracts::cart::CartPort;
use agora_contracts::catalog::CatalogPort;
use agora_contracts::events::{self, EventPayload};
use agora_contracts::inventory::InventoryPort;
use agora_contracts::orders::{OrderRecord, OrderRecordLine, OrdersPort};
use agora_contracts::payments::{PaymentError, PaymentStatus, PaymentsPort};
use agora_kernel::{Clock, Money, OrderId, Timestamp, UserId};
use agora_platform::Shutdown;
use agora_platform::bus::{Event, Handler, Inbox, Outbox};
use async_trait::async_trait;
use sha2::Digest as _;

use crate::domain::{Order, OrderLine, OrderStatus};
use crate::error::OrderError;
use crate::saga::SagaSettings;
use crate::store::{
    IdempotencyRecord, NewOrder, OrderCursor, OrderFilter, OrdersStore, SagaRow, StoredResponse,
};

/// The other modules the orders module calls, through their ports.
#[derive(Clone)]
pub struct Participants {
    /// Prices and availability.
    pub catalog: Arc<dyn CatalogPort>,
    /// The customer's cart.
    pub cart: Arc<dyn CartPort>,
    /// Stock reservations.
    pub inventory: Arc<dyn InventoryPort>,
    /// Payments.
    pub payments: Arc<dyn PaymentsPort>,
}

pub(crate) struct Inner {
    pub(crate) store: OrdersStore,
    pub(crate) catalog: Arc<dyn CatalogPort>,
    pub(crate) cart: Arc<dyn CartPort>,
    pub(crate) inventory: Arc<dyn InventoryPort>,
    pub(crate) payments: Arc<dyn PaymentsPort>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) settings: SagaSettings,
    /// This process, in lease owners' names.
    pub(crate) node: String,
    #[cfg(feature = "failpoints")]
    pub(crate) crash: std::sync::Mutex<Option<crate::saga::CrashPoint>>,
}

/// The orders module. Cheap to clone.
#[derive(Clone)]
pub struct Orders {
    pub(crate) inner: Arc<Inner>,
}

/// The outbox table of the orders module.
pub const OUTBOX: &str = "orders_outbox";
/// The inbox of the orders module's consumers.
pub const INBOX: Inbox = Inbox::new("orders_inbox");
/// The consumer of payment events.
pub const PAYMENT_EVENTS_CONSUMER: &str = "orders.payment_events";

/// Sagas the recovery loop resumes per round.
const RECOVERY_BATCH: i64 = 50;

impl Orders {
    /// The orders module over `store`, calling `participants`.
    pub fn new(
        store: OrdersStore,
        participants: Participants,
        outbox: Arc<Outbox>,
        clock: Arc<dyn Clock>,
        settings: SagaSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                catalog: participants.catalog,
                cart: participants.cart,
                inventory: participants.inventory,
                payments: participants.payments,
                clock,
                outbox,
                settings,
                node: format!("node-{}", uuid::Uuid::now_v7().simple()),
                #[cfg(feature = "failpoints")]
                crash: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &OrdersStore {
        &self.inner.store
    }

    /// The module's outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.inner.outbox
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    pub(crate) fn lease_end(&self, now: Timestamp) -> Timestamp {
        now.plus(self.inner.settings.lease)
    }

    /// Makes the saga stop as if the process died at `point` (tests only).
    #[cfg(feature = "failpoints")]
    pub fn crash_at_point(&self, point: Option<crate::saga::CrashPoint>) {
        *self
            .inner
            .crash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = point;
    }

    #[cfg(feature = "failpoints")]
    pub(crate) fn crash_at(&self, point: crate::saga::CrashPoint) -> bool {
        *self
            .inner
            .crash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == Some(point)
    }

    /// Checks out `user`'s cart, paying with `payment_token`, once per `key`:
    /// places the order and drives its saga to the end. Repeating the call with
    /// the same key and token answers what the first call answered (waiting for
    /// it if it is still running); with another token it is refused.
    pub async fn checkout(
        &self,
        user: UserId,
        key: &str,
        payment_token: &str,
    ) -> Result<StoredResponse, OrderError> {
        let request_hash = hex::encode(sha2::Sha256::digest(
            format!("POST /checkout\n{payment_token}").as_bytes(),
        ));
        let caller = user.to_db();
        if let Some(record) = self.inner.store.idempotency(&caller, key).await? {
            return self.replay(&caller, key, record, &request_hash).await;
        }
        let order = self
            .price_cart(user, key, payment_token, &request_hash)
            .await?;
        let now = self.now();
        let owner = self.new_driver();
        let placed = self.order_event(
            order.id,
            &events::OrderPlaced {
                order_id: order.id,
                user_id: user,
                total: order.total,
            },
        )?;
        // The saga starts leased to this request's driver, so the recovery loop
        // leaves it alone; if this process dies, the loop takes it over once the
        // lease has run out.
        let placed = self
            .inner
            .store
            .place(
                &order,
                &owner,
                self.lease_end(now),
                &self.inner.outbox,
                &placed,
                now,
            )
            .await?;
        if placed.is_none() {
            // A concurrent request with this key placed its order first.
            let record = self.idempotency_record(&caller, key).await?;
            return self.replay(&caller, key, record, &request_hash).await;
        }
        self.inner.outbox.notify();
        tracing::info!(order_id = %order.id, user_id = %user, total = %order.total, "order placed");
        // This request placed the saga with its lease: it drives it from the
        // first step without reading it back.
        if let Some(response) = self
            .run(SagaRow::placed(&order), &order.placed(now), &owner)
            .await?
        {
            return Ok(response);
        }
        let record = self.idempotency_record(&caller, key).await?;
        record.response.ok_or(OrderError::InProgress)
    }

    /// The record of `caller`'s `key`, which this request (or a concurrent one)
    /// wrote.
    async fn idempotency_record(
        &self,
        caller: &str,
        key: &str,
    ) -> Result<IdempotencyRecord, OrderError> {
        self.inner
            .store
            .idempotency(caller, key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the idempotency record vanished").into())
    }

    /// An event about order `order_id`, happening now.
    pub(crate) fn order_event<P: EventPayload>(
        &self,
        order_id: OrderId,
        payload: &P,
    ) -> Result<Event, serde_json::Error> {
        Event::new(P::KIND, order_id, payload, self.now())
    }

    /// Answers a repeated checkout: the stored response once there is one.
    async fn replay(
        &self,
        caller: &str,
        key: &str,
        mut record: IdempotencyRecord,
        request_hash: &str,
    ) -> Result<StoredResponse, OrderError> {
        if record.request_hash != request_hash {
            return Err(OrderError::KeyReused);
        }
        let deadline = tokio::time::Instant::now() + self.inner.settings.replay_wait;
        loop {
            if let Some(response) = record.response {
                return Ok(response);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OrderError::InProgress);
            }
            // If the saga's driver died, take over; otherwise wait for it.
            self.drive(record.order_id).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            record = self.idempotency_record(caller, key).await?;
        }
    }

    /// Reads the cart and prices it from the catalog now: the order's snapshot.
    async fn price_cart(
        &self,
        user: UserId,
        key: &str,
        payment_token: &str,
        request_hash: &str,
    ) -> Result<NewOrder, OrderError> {
        let cart = self.inner.cart.lines(user).await?;
        if cart.is_empty() {
            return Err(OrderError::CartEmpty);
        }
        let ids: Vec<_> = cart.iter().map(|l| l.product_id).collect();
        let products = self.inner.catalog.current_products_by_ids(&ids).await?;
        let mut unavailable = Vec::new();
        let mut lines = Vec::with_capacity(cart.len());
        for line in &cart {
            match products.iter().find(|p| p.id == line.product_id) {
                Some(p) if p.active && line.quantity > 0 => lines.push(OrderLine {
                    product_id: p.id,
                    sku: p.sku.clone(),
                    name: p.name.clone(),
                    unit_price: p.unit_price,
                    quantity: line.quantity,
                    line_total: p
                        .unit_price
                        .checked_mul(line.quantity)
                        .map_err(|_| OrderError::TotalOutOfRange)?,
                }),
                _ => unavailable.push(line.product_id.to_string()),
            }
        }
        if !unavailable.is_empty() {
            return Err(OrderError::ProductsUnavailable(unavailable));
        }
        let currencies: BTreeSet<&str> = lines
            .iter()
            .map(|l| l.unit_price.currency().code())
            .collect();
        if currencies.len() > 1 {
            return Err(OrderError::CurrencyMismatch(
                currencies.into_iter().map(String::from).collect(),
            ));
        }
        let mut total = Money::zero(lines[0].unit_price.currency());
        for line in &lines {
            total = total
                .checked_add(line.line_total)
                .map_err(|_| OrderError::TotalOutOfRange)?;
        }
        if total.amount_minor() <= 0 {
            // A payment of nothing cannot be authorized.
            return Err(OrderError::TotalOutOfRange);
        }
        Ok(NewOrder {
            id: OrderId::new(),
            user_id: user,
            lines,
            total,
            payment_token: payment_token.to_string(),
            key: key.to_string(),
            request_hash: request_hash.to_string(),
        })
    }

    /// The order `id`.
    pub async fn order(&self, id: OrderId) -> Result<Order, OrderError> {
        self.inner
            .store
            .order(id)
            .await?
            .ok_or(OrderError::NotFound)
    }

    /// A page of orders matching `filter`.
    pub async fn orders(
        &self,
        filter: &OrderFilter,
        after: Option<&OrderCursor>,
        limit: i64,
    ) -> Result<Vec<(Order, OrderCursor)>, OrderError> {
        self.inner.store.orders(filter, after, limit).await
    }

    /// Resumes unfinished sagas whose driver is gone, round after round, until
    /// the signal fires.
    pub async fn run_recovery(self, every: Duration, shutdown: Shutdown) {
        loop {
            if let Err(e) = self.recover().await {
                tracing::warn!(error = %e, "saga recovery failed; retrying");
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One round of recovery: drives every due saga nobody holds. Returns how
    /// many it picked up.
    pub async fn recover(&self) -> Result<usize, OrderError> {
        let due = self.inner.store.due(self.now(), RECOVERY_BATCH).await?;
        for order_id in &due {
            tracing::info!(%order_id, "resuming saga");
            if let Err(e) = self.drive(*order_id).await {
                tracing::warn!(%order_id, error = %e, "resuming the saga failed");
            }
        }
        Ok(due.len())
    }

    /// Staff cancel a confirmed order that was not shipped: its payment is
    /// refunded in full and it becomes `cancelled`. Orders still in checkout are
    /// settled by their saga; shipped ones are refunded instead.
    pub async fn cancel(&self, id: OrderId, reason: &str) -> Result<Order, OrderError> {
        let order = self.order(id).await?;
        if order.status != OrderStatus::Confirmed {
            return Err(OrderError::InvalidTransition(order.status));
        }
        let payment_id = order
            .payment_id
            .ok_or_else(|| anyhow::anyhow!("confirmed order {id} has no payment"))?;
        let payment = self
            .inner
            .payments
            .cancel(&format!("{}:staff-cancel", id.to_db()), payment_id)
            .await
            .map_err(payment_error)?;
        let now = self.now();
        self.inner
            .store
            .record_refund(id, payment.refunded_minor, false, now)
            .await?;
        let event = self.order_event(
            id,
            &events::OrderCancelled {
                order_id: id,
                user_id: order.user_id,
                reason: reason.to_string(),
            },
        )?;
        if !self
            .inner
            .store
            .transition(
                id,
                // The refund's event may have made it `refunded` meanwhile: the
                // cancellation (which includes the refund) still applies.
                &[OrderStatus::Confirmed, OrderStatus::Refunded],
                OrderStatus::Cancelled,
                Some(reason),
                Some(&event),
                &self.inner.outbox,
                now,
            )
            .await?
        {
            let order = self.order(id).await?;
            return Err(OrderError::InvalidTransition(order.status));
        }
        self.inner.outbox.notify();
        self.order(id).await
    }

    /// Staff refund `amount_minor` of a paid order, once per `key`: repeating
    /// the call with the key answers as the first did, refunding nothing more.
    pub async fn refund(
        &self,
        id: OrderId,
        amount_minor: i64,
        reason: &str,
        key: &str,
    ) -> Result<Order, OrderError> {
        let order = self.order(id).await?;
        if !matches!(
            order.status,
            OrderStatus::Confirmed | OrderStatus::Fulfilled | OrderStatus::Refunded
        ) {
            return Err(OrderError::InvalidTransition(order.status));
        }
        let payment_id = order
            .payment_id
            .ok_or_else(|| anyhow::anyhow!("paid order {id} has no payment"))?;
        let refundable = order.total.amount_minor() - order.refunded_minor;
        // What is left to refund is the payment's to check (a repeat of a
        // refund already made is answered by its key there).
        let money = Money::new(amount_minor, order.total.currency())
            .ok()
            .filter(|m| m.amount_minor() > 0 && m.amount_minor() <= order.total.amount_minor())
            .ok_or(OrderError::RefundExceedsPaid {
                refundable_minor: refundable,
            })?;
        let payment = self
            .inner
            .payments
            .refund(
                &format!("{}:refund:{key}", id.to_db()),
                payment_id,
                money,
                reason,
            )
            .await
            .map_err(|e| match e {
                PaymentError::ExceedsRefundable { refundable_minor } => {
                    OrderError::RefundExceedsPaid { refundable_minor }
                }
                e => payment_error(e),
            })?;
        self.inner
            .store
            .record_refund(
                id,
                payment.refunded_minor,
                payment.status == PaymentStatus::Refunded,
                self.now(),
            )
            .await?;
        self.order(id).await
    }

    /// Staff mark a confirmed order shipped.
    pub async fn fulfil(&self, id: OrderId) -> Result<Order, OrderError> {
        if !self
            .inner
            .store
            .transition(
                id,
                &OrderStatus::sources(OrderStatus::Fulfilled),
                OrderStatus::Fulfilled,
                None,
                None,
                &self.inner.outbox,
                self.now(),
            )
            .await?
        {
            let order = self.order(id).await?;
            return Err(OrderError::InvalidTransition(order.status));
        }
        self.order(id).await
    }
}

fn payment_error(e: PaymentError) -> OrderError {
    match e {
        PaymentError::ProviderUnavailable(_) => OrderError::PaymentUnavailable,
        PaymentError::Port(e) => OrderError::Port(e),
        PaymentError::KeyReused => OrderError::KeyReused,
        PaymentError::ExceedsRefundable { refundable_minor } => {
            OrderError::RefundExceedsPaid { refundable_minor }
        }
        PaymentError::InvalidState(status) => OrderError::PaymentState(status),
        e => OrderError::Unexpected(anyhow::anyhow!("payment refused: {e}")),
    }
}

/// Keeps orders in step with refunds made elsewhere (staff through the payments
/// routes, or the provider's dashboard through a webhook).
#[async_trait]
impl Handler for Orders {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        if event.kind != events::PaymentRefunded::KIND {
            return Ok(());
        }
        let refund: events::PaymentRefunded = event.payload()?;
        let Ok(order_id) = OrderId::parse(&refund.reference) else {
            // A payment that is not an order's: nothing to do here.
            return Ok(());
        };
        self.inner
            .store
            .apply_refund_event(
                &INBOX,
                PAYMENT_EVENTS_CONSUMER,
                event,
                order_id,
                refund.refunded_total_minor,
                refund.fully_refunded,
                self.now(),
            )
            .await?;
        Ok(())
    }
}

/// The most orders one [`OrdersPort::placed_between`] call returns.
pub const MAX_ORDERS_PER_CALL: u32 = 500;

#[async_trait]
impl OrdersPort for Orders {
    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, PortError> {
        let order = self.inner.store.order(id).await.map_err(PortError::from)?;
        Ok(order.map(record))
    }

    async fn placed_between(
        &self,
        from: Timestamp,
        to: Timestamp,
        after: Option<(Timestamp, OrderId)>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, PortError> {
        let filter = OrderFilter {
            placed_from: Some(from),
            placed_before: Some(to),
            oldest_first: true,
            ..OrderFilter::default()
        };
        let after = after.map(|(created_at, id)| OrderCursor {
            created_at: created_at.as_millis(),
            id: id.to_db(),
        });
        let limit = i64::from(limit.clamp(1, MAX_ORDERS_PER_CALL));
        let page = self
            .inner
            .store
            .orders(&filter, after.as_ref(), limit)
            .await
            .map_err(PortError::from)?;
        Ok(page.into_iter().map(|(o, _)| record(o)).collect())
    }
}

fn record(o: Order) -> OrderRecord {
    OrderRecord {
        id: o.id,
        user_id: o.user_id,
        status: o.status.as_str().to_string(),
        lines: o
            .lines
            .into_iter()
            .map(|l| OrderRecordLine {
                product_id: l.product_id,
                sku: l.sku,
                name: l.name,
                unit_price: l.unit_price,
                quantity: l.quantity,
                line_total: l.line_total,
            })
            .collect(),
        total: o.total,
        refunded_minor: o.refunded_minor,
        created_at: o.created_at,
    }
}
