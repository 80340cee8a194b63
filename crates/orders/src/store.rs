//! The orders' data access: orders and lines, sagas and their log, idempotency
//! records.
//!
//! Every saga change is one transaction guarded by the lease: it applies only
//! while the caller still holds the saga (`lease_owner`) and the saga is still at
//! the step the caller ran, so a driver that lost its lease (it stalled, another
//! took over) can never move a saga twice.

use agora_kernel::{Currency, Money, OrderId, PaymentId, ProductId, Timestamp, UserId};
use agora_platform::Database;
use agora_platform::bus::{Event, Inbox, Outbox};
use agora_platform::db::SqlBuilder;
use anyhow::anyhow;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use crate::domain::{Order, OrderLine, OrderStatus};
use crate::error::OrderError;
use crate::saga::{SagaState, Step};

/// An order about to be placed, with its saga's inputs and the request that
/// placed it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// The order.
    pub id: OrderId,
    /// Its customer.
    pub user_id: UserId,
    /// Its lines, priced.
    pub lines: Vec<OrderLine>,
    /// Their sum.
    pub total: Money,
    /// The provider token to authorize with.
    pub payment_token: String,
    /// The `Idempotency-Key` and the hash of the request it came with.
    pub key: String,
    /// The request's hash.
    pub request_hash: String,
}

impl NewOrder {
    /// The order as placed at `now`: pending, nothing paid yet.
    pub fn placed(&self, now: Timestamp) -> Order {
        Order {
            id: self.id,
            user_id: self.user_id,
            status: OrderStatus::Pending,
            lines: self.lines.clone(),
            total: self.total,
            refunded_minor: 0,
            payment_id: None,
            cancel_reason: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A finished request's response, kept to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// `{"data": …}` for a success, `{"error": {"code", "details"}}` for a failure.
    pub body: serde_json::Value,
}

/// What an `Idempotency-Key` was used for.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    /// The hash of the first request with the key.
    pub request_hash: String,
    /// The order it placed.
    pub order_id: OrderId,
    /// Its response, once the checkout finished.
    pub response: Option<StoredResponse>,
}

/// A saga as stored.
#[derive(Debug, Clone)]
pub struct SagaRow {
    /// The order it drives.
    pub order_id: OrderId,
    /// Forward, backward, or over.
    pub state: SagaState,
    /// The next step.
    pub step: Step,
    /// The provider token, while it may still be needed.
    pub payment_token: Option<String>,
    /// The payment, once authorized.
    pub payment_id: Option<PaymentId>,
    /// Failed attempts of the current step.
    pub attempts: i64,
}

impl SagaRow {
    /// The saga of `order` as placed: running, at its first step.
    pub fn placed(order: &NewOrder) -> SagaRow {
        SagaRow {
            order_id: order.id,
            state: SagaState::Running,
            step: Step::Reserve,
            payment_token: Some(order.payment_token.clone()),
            payment_id: None,
            attempts: 0,
        }
    }
}

/// One transaction's worth of progress of a saga.
#[derive(Debug, Default)]
pub struct Progress {
    /// The saga's next step and state.
    pub next: Option<(Step, SagaState)>,
    /// The order's new status.
    pub status: Option<OrderStatus>,
    /// The payment, when just authorized.
    pub payment_id: Option<PaymentId>,
    /// Why the order is being cancelled, and what the customer is told.
    pub cancel: Option<(String, serde_json::Value)>,
    /// Log entries: step, phase, detail.
    pub log: Vec<(Step, &'static str, Option<String>)>,
    /// Events to publish.
    pub events: Vec<Event>,
    /// The checkout's response, when the saga is over.
    pub response: Option<StoredResponse>,
}

/// Which orders to list.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    /// Only this customer's.
    pub user_id: Option<UserId>,
    /// Only in this status.
    pub status: Option<OrderStatus>,
    /// Only placed at this time or later.
    pub placed_from: Option<Timestamp>,
    /// Only placed before this time.
    pub placed_before: Option<Timestamp>,
    /// Oldest first (and the cursor pages forward in time); newest first
    /// otherwise.
    pub oldest_first: bool,
}

/// Where a page of orders ends.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OrderCursor {
    /// The last order's creation, epoch ms.
    pub created_at: i64,
    /// The last order's id.
    pub id: String,
}

/// The orders' data access.
#[derive(Debug, Clone)]
pub struct OrdersStore {
    db: Database,
}

const ORDER_COLUMNS: &str = "SELECT id, user_id, status, currency, total_minor, refunded_minor, \
     payment_id, cancel_reason, created_at, updated_at FROM orders_orders";

impl OrdersStore {
    /// A store over `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The record of `caller`'s `key`, if the key was used.
    pub async fn idempotency(
        &self,
        caller: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, OrderError> {
        let row = sqlx::query(
            "SELECT request_hash, order_id, response_status, response_body \
             FROM orders_idempotency WHERE caller = $1 AND key = $2",
        )
        .bind(caller.to_string())
        .bind(key.to_string())
        .fetch_optional(self.db.reader())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status: Option<i64> = row.try_get(2)?;
        let body: Option<String> = row.try_get(3)?;
        let response = match (status, body) {
            (Some(status), Some(body)) => Some(StoredResponse {
                status: u16::try_from(status).map_err(|e| anyhow!("stored status: {e}"))?,
                body: serde_json::from_str(&body)?,
            }),
            _ => None,
        };
        Ok(Some(IdempotencyRecord {
            request_hash: row.try_get(0)?,
            order_id: OrderId::from_db(&row.try_get::<String, _>(1)?)?,
            response,
        }))
    }

    /// Places `order` with its saga (held by `owner` until `lease_until`), its
    /// idempotency record and `placed` in the outbox, in one transaction. `None`
    /// when the caller's key was taken first (by a concurrent request).
    pub async fn place(
        &self,
        order: &NewOrder,
        owner: &str,
        lease_until: Timestamp,
        outbox: &Outbox,
        placed: &Event,
        now: Timestamp,
    ) -> Result<Option<()>, OrderError> {
        let mut tx = self.db.begin().await?;
        // A concurrent request with the key waits here for this one, then finds
        // the key taken (`DO NOTHING`: a repeat is no error, and PostgreSQL
        // does not log one).
        let claimed = sqlx::query(
            "INSERT INTO orders_idempotency (caller, key, request_hash, order_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (caller, key) DO NOTHING",
        )
        .bind(order.user_id.to_db())
        .bind(order.key.clone())
        .bind(order.request_hash.clone())
        .bind(order.id.to_db())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO orders_orders (id, user_id, status, currency, total_minor, created_at, updated_at) \
             VALUES ($1, $2, 'pending', $3, $4, $5, $5)",
        )
        .bind(order.id.to_db())
        .bind(order.user_id.to_db())
        .bind(order.total.currency().code())
        .bind(order.total.amount_minor())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        if !order.lines.is_empty() {
            let mut q = SqlBuilder::new(
                "INSERT INTO orders_lines (order_id, product_id, sku, name, unit_price_minor, quantity, \
                 line_total_minor) VALUES ",
            );
            q.push_list(order.lines.iter(), |q, line| {
                q.push("(");
                q.bind(order.id.to_db())?
                    .push(", ")
                    .bind(line.product_id.to_db())?
                    .push(", ")
                    .bind(line.sku.clone())?
                    .push(", ")
                    .bind(line.name.clone())?
                    .push(", ")
                    .bind(line.unit_price.amount_minor())?
                    .push(", ")
                    .bind(line.quantity)?
                    .push(", ")
                    .bind(line.line_total.amount_minor())?
                    .push(")");
                Ok(())
            })?;
            q.build().execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO orders_sagas (order_id, state, step, payment_token, lease_owner, lease_until, \
             next_attempt_at, created_at, updated_at) VALUES ($1, 'running', $2, $3, $4, $5, $6, $6, $6)",
        )
        .bind(order.id.to_db())
        .bind(Step::Reserve.as_str())
        .bind(order.payment_token.clone())
        .bind(owner.to_string())
        .bind(lease_until.as_millis())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        log(&mut tx, order.id, &[(Step::Reserve, "started", None)], now).await?;
        outbox.append(&mut tx, placed).await?;
        tx.commit().await?;
        Ok(Some(()))
    }

    /// The order `id` with its lines.
    pub async fn order(&self, id: OrderId) -> Result<Option<Order>, OrderError> {
        let mut q = SqlBuilder::new(ORDER_COLUMNS);
        q.push(" WHERE id = ").bind(id.to_db())?;
        let row = q.build().fetch_optional(self.db.reader()).await?;
        let Some(row) = row else { return Ok(None) };
        let mut orders = self.with_lines(vec![row]).await?;
        Ok(orders.pop())
    }

    /// Up to `limit` orders matching `filter` after `after`, newest first (or
    /// oldest first, as the filter says), each with its cursor.
    pub async fn orders(
        &self,
        filter: &OrderFilter,
        after: Option<&OrderCursor>,
        limit: i64,
    ) -> Result<Vec<(Order, OrderCursor)>, OrderError> {
        let mut q = SqlBuilder::new(ORDER_COLUMNS);
        q.push(" WHERE 1 = 1");
        if let Some(user) = filter.user_id {
            q.push(" AND user_id = ").bind(user.to_db())?;
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").bind(status.as_str())?;
        }
        if let Some(from) = filter.placed_from {
            q.push(" AND created_at >= ").bind(from.as_millis())?;
        }
        if let Some(before) = filter.placed_before {
            q.push(" AND created_at < ").bind(before.as_millis())?;
        }
        let (beyond, order) = if filter.oldest_first {
            (" > ", " ORDER BY created_at, id LIMIT ")
        } else {
            (" < ", " ORDER BY created_at DESC, id DESC LIMIT ")
        };
        if let Some(after) = after {
            q.push(" AND (created_at, id)")
                .push(beyond)
                .push("(")
                .bind(after.created_at)?
                .push(", ")
                .bind(after.id.clone())?
                .push(")");
        }
        q.push(order).bind(limit)?;
        let rows = q.build().fetch_all(self.db.scan_reader()).await?;
        let orders = self.with_lines(rows).await?;
        Ok(orders
            .into_iter()
            .map(|o| {
                let cursor = OrderCursor {
                    created_at: o.created_at.as_millis(),
                    id: o.id.to_db(),
                };
                (o, cursor)
            })
            .collect())
    }

    async fn with_lines(&self, rows: Vec<AnyRow>) -> Result<Vec<Order>, OrderError> {
        let mut orders = rows
            .iter()
            .map(order_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if orders.is_empty() {
            return Ok(orders);
        }
        let mut q = SqlBuilder::new(
            "SELECT order_id, product_id, sku, name, unit_price_minor, quantity, line_total_minor \
             FROM orders_lines WHERE order_id IN (",
        );
        q.push_list(orders.iter(), |q, o| {
            q.bind(o.id.to_db())?;
            Ok(())
        })?;
        q.push(") ORDER BY order_id, product_id");
        let lines = q.build().fetch_all(self.db.reader()).await?;
        for row in &lines {
            let order_id = OrderId::from_db(&row.try_get::<String, _>(0)?)?;
            let Some(order) = orders.iter_mut().find(|o| o.id == order_id) else {
                continue;
            };
            let currency = order.total.currency();
            order.lines.push(OrderLine {
                product_id: ProductId::from_db(&row.try_get::<String, _>(1)?)?,
                sku: row.try_get(2)?,
                name: row.try_get(3)?,
                unit_price: money(row.try_get(4)?, currency)?,
                quantity: row.try_get(5)?,
                line_total: money(row.try_get(6)?, currency)?,
            });
        }
        Ok(orders)
    }

    /// Takes (or renews) the lease of an unfinished saga for `owner` until
    /// `until`: only when nobody else holds it now. `None` when it is over or
    /// held by another driver.
    pub async fn claim(
        &self,
        order_id: OrderId,
        owner: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<Option<SagaRow>, OrderError> {
        let row = sqlx::query(
            "UPDATE orders_sagas SET lease_owner = $1, lease_until = $2 \
             WHERE order_id = $3 AND state <> 'done' \
             AND (lease_owner = $1 OR (lease_until <= $4 AND next_attempt_at <= $4)) \
             RETURNING order_id, state, step, payment_token, payment_id, attempts",
        )
        .bind(owner.to_string())
        .bind(until.as_millis())
        .bind(order_id.to_db())
        .bind(now.as_millis())
        .fetch_optional(self.db.writer())
        .await?;
        row.as_ref().map(saga_from_row).transpose()
    }

    /// Applies `progress` to the saga (which `owner` must still hold, at the same
    /// step), its order, log, outbox and idempotency record, in one transaction,
    /// and renews the lease until `lease_until`. `false` when the lease was lost
    /// or the saga moved on meanwhile: nothing changed.
    #[allow(clippy::too_many_arguments)]
    pub async fn advance(
        &self,
        saga: &SagaRow,
        owner: &str,
        progress: Progress,
        outbox: &Outbox,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<bool, OrderError> {
        let mut tx = self.db.begin().await?;
        let (step, state) = progress.next.unwrap_or((saga.step, saga.state));
        let done = state == SagaState::Done;
        let moved = sqlx::query(
            "UPDATE orders_sagas SET step = $1, state = $2, attempts = 0, last_error = NULL, \
             payment_id = COALESCE($3, payment_id), \
             payment_token = CASE WHEN $4 = 1 OR $3 IS NOT NULL THEN NULL ELSE payment_token END, \
             lease_until = CASE WHEN $4 = 1 THEN 0 ELSE $10 END, \
             next_attempt_at = $5, updated_at = $5 \
             WHERE order_id = $6 AND lease_owner = $7 AND step = $8 AND state = $9",
        )
        .bind(step.as_str())
        .bind(state.as_str())
        .bind(progress.payment_id.map(|p| p.to_db()))
        .bind(i64::from(done))
        .bind(now.as_millis())
        .bind(saga.order_id.to_db())
        .bind(owner.to_string())
        .bind(saga.step.as_str())
        .bind(saga.state.as_str())
        .bind(lease_until.as_millis())
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if !update_order(&mut tx, saga.order_id, &progress, now).await? {
            return Err(anyhow!(
                "order {} cannot take its saga's change (status {})",
                saga.order_id,
                progress.status.map_or("unchanged", OrderStatus::as_str)
            )
            .into());
        }
        log(&mut tx, saga.order_id, &progress.log, now).await?;
        for event in &progress.events {
            outbox.append(&mut tx, event).await?;
        }
        if let Some(response) = &progress.response {
            sqlx::query(
                "UPDATE orders_idempotency SET response_status = $1, response_body = $2 WHERE order_id = $3",
            )
            .bind(i64::from(response.status))
            .bind(response.body.to_string())
            .bind(saga.order_id.to_db())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed attempt of the saga's step and when to try again; the
    /// lease is renewed until `keep_until`, or handed back when that is `None`.
    /// Returns the attempts so far, or `None` when `owner` no longer holds the
    /// saga (nothing was recorded: stop driving it).
    pub async fn failed(
        &self,
        saga: &SagaRow,
        owner: &str,
        error: &str,
        retry_at: Timestamp,
        keep_until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<i64>, OrderError> {
        let mut tx = self.db.begin().await?;
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE orders_sagas SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, \
             lease_until = $3, updated_at = $4 \
             WHERE order_id = $5 AND lease_owner = $6 AND step = $7 AND state = $8 RETURNING attempts",
        )
        .bind(error.to_string())
        .bind(retry_at.as_millis())
        .bind(keep_until.map_or(0, Timestamp::as_millis))
        .bind(now.as_millis())
        .bind(saga.order_id.to_db())
        .bind(owner.to_string())
        .bind(saga.step.as_str())
        .bind(saga.state.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(attempts) = attempts else {
            tx.rollback().await?;
            return Ok(None);
        };
        log(
            &mut tx,
            saga.order_id,
            &[(saga.step, "failed", Some(error.to_string()))],
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(attempts))
    }

    /// Why the order is being cancelled and what the customer is told.
    pub async fn cancellation(
        &self,
        order_id: OrderId,
    ) -> Result<(String, serde_json::Value), OrderError> {
        let row = sqlx::query("SELECT cancel_reason, failure FROM orders_orders WHERE id = $1")
            .bind(order_id.to_db())
            .fetch_one(self.db.reader())
            .await?;
        let reason: Option<String> = row.try_get(0)?;
        let failure: Option<String> = row.try_get(1)?;
        let details = match failure {
            Some(f) => serde_json::from_str(&f)?,
            None => serde_json::json!({ "order_id": order_id }),
        };
        Ok((reason.unwrap_or_else(|| "cancelled".into()), details))
    }

    /// Unfinished sagas nobody holds whose next attempt is due, oldest first.
    /// (`state IN (…)`, not `<> 'done'`, so that the index on `(state,
    /// next_attempt_at)` serves it: finished sagas are most of the table.)
    pub async fn due(&self, now: Timestamp, limit: i64) -> Result<Vec<OrderId>, OrderError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT order_id FROM orders_sagas WHERE state IN ('running', 'compensating') AND next_attempt_at <= $1 \
             AND lease_until <= $1 ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now.as_millis())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        ids.iter()
            .map(|id| OrderId::from_db(id).map_err(Into::into))
            .collect()
    }

    /// The saga log of an order: step, phase, detail, oldest first.
    pub async fn saga_log(
        &self,
        order_id: OrderId,
    ) -> Result<Vec<(String, String, Option<String>)>, OrderError> {
        let rows = sqlx::query(
            "SELECT step, phase, detail FROM orders_saga_log WHERE order_id = $1 ORDER BY at, id",
        )
        .bind(order_id.to_db())
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Moves an order to `to` if its status is one of `from`, with `event` in the
    /// outbox, in one transaction. `false` when its status is not.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition(
        &self,
        order_id: OrderId,
        from: &[OrderStatus],
        to: OrderStatus,
        reason: Option<&str>,
        event: Option<&Event>,
        outbox: &Outbox,
        now: Timestamp,
    ) -> Result<bool, OrderError> {
        let mut tx = self.db.begin().await?;
        if !set_status(&mut tx, order_id, from, to, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(reason) = reason {
            sqlx::query("UPDATE orders_orders SET cancel_reason = $1 WHERE id = $2")
                .bind(reason.to_string())
                .bind(order_id.to_db())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(event) = event {
            outbox.append(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Applies a refund event to the order, once: the inbox records the event in
    /// the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_refund_event(
        &self,
        inbox: &Inbox,
        consumer: &str,
        event: &Event,
        order_id: OrderId,
        refunded_minor: i64,
        full: bool,
        now: Timestamp,
    ) -> Result<(), OrderError> {
        let mut tx = self.db.begin().await?;
        if inbox.first_time(&mut tx, consumer, event, now).await? {
            refund_update(order_id, refunded_minor, full, now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that `refunded_minor` of the order's payment is refunded in total
    /// (never lowering what is recorded), and makes a paid order `refunded` when
    /// `full`. Idempotent: the same news twice changes nothing.
    pub async fn record_refund(
        &self,
        order_id: OrderId,
        refunded_minor: i64,
        full: bool,
        now: Timestamp,
    ) -> Result<(), OrderError> {
        refund_update(order_id, refunded_minor, full, now)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }
}

/// Raises the order's refunded amount to `refunded_minor` (never lowers it), and
/// makes a paid order `refunded` when `full`.
fn refund_update(
    order_id: OrderId,
    refunded_minor: i64,
    full: bool,
    now: Timestamp,
) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "UPDATE orders_orders SET \
         refunded_minor = CASE WHEN refunded_minor < $1 THEN $1 ELSE refunded_minor END, \
         status = CASE WHEN $2 = 1 AND status IN ('confirmed', 'fulfilled') THEN 'refunded' ELSE status END, \
         updated_at = $3 WHERE id = $4",
    )
    .bind(refunded_minor)
    .bind(i64::from(full))
    .bind(now.as_millis())
    .bind(order_id.to_db())
}

/// Sets the order's status to `to` if its current status is one of `from`.
async fn set_status(
    tx: &mut agora_platform::db::WriteTx,
    order_id: OrderId,
    from: &[OrderStatus],
    to: OrderStatus,
    now: Timestamp,
) -> Result<bool, OrderError> {
    let mut q = SqlBuilder::new("UPDATE orders_orders SET status = ");
    q.bind(to.as_str())?
        .push(", updated_at = ")
        .bind(now.as_millis())?
        .push(" WHERE id = ")
        .bind(order_id.to_db())?;
    only_from(&mut q, from)?;
    let done = q.build().execute(&mut **tx).await?;
    Ok(done.rows_affected() == 1)
}

/// Applies a saga step's changes to its order (status, payment, cancellation) in
/// one statement; a new status only from the statuses it may follow. `false`
/// when the order is not in one of them (nothing changed).
async fn update_order(
    tx: &mut agora_platform::db::WriteTx,
    order_id: OrderId,
    progress: &Progress,
    now: Timestamp,
) -> Result<bool, OrderError> {
    if progress.status.is_none() && progress.payment_id.is_none() && progress.cancel.is_none() {
        return Ok(true);
    }
    let mut q = SqlBuilder::new("UPDATE orders_orders SET updated_at = ");
    q.bind(now.as_millis())?;
    if let Some((reason, failure)) = &progress.cancel {
        q.push(", cancel_reason = ")
            .bind(reason.clone())?
            .push(", failure = ")
            .bind(failure.to_string())?;
    }
    if let Some(payment_id) = progress.payment_id {
        q.push(", payment_id = ").bind(payment_id.to_db())?;
    }
    if let Some(status) = progress.status {
        q.push(", status = ").bind(status.as_str())?;
    }
    q.push(" WHERE id = ").bind(order_id.to_db())?;
    if let Some(status) = progress.status {
        only_from(&mut q, &OrderStatus::sources(status))?;
    }
    let done = q.build().execute(&mut **tx).await?;
    Ok(done.rows_affected() == 1)
}

/// Appends ` AND status IN (…from)`.
fn only_from(q: &mut SqlBuilder, from: &[OrderStatus]) -> Result<(), sqlx::Error> {
    q.push(" AND status IN (");
    q.push_list(from.iter(), |q, from| {
        q.bind(from.as_str())?;
        Ok(())
    })?;
    q.push(")");
    Ok(())
}

/// Appends `entries` (step, phase, detail) to the order's saga log, in one
/// statement.
async fn log(
    tx: &mut agora_platform::db::WriteTx,
    order_id: OrderId,
    entries: &[(Step, &str, Option<String>)],
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut q = SqlBuilder::new(
        "INSERT INTO orders_saga_log (id, order_id, step, phase, detail, at) VALUES ",
    );
    q.push_list(entries.iter(), |q, (step, phase, detail)| {
        q.push("(");
        // Ids in the order given: the log reads back by (at, id).
        q.bind(uuid::Uuid::now_v7().to_string())?
            .push(", ")
            .bind(order_id.to_db())?
            .push(", ")
            .bind(step.as_str())?
            .push(", ")
            .bind(phase.to_string())?
            .push(", ")
            .bind(detail.clone())?
            .push(", ")
            .bind(now.as_millis())?
            .push(")");
        Ok(())
    })?;
    q.build().execute(&mut **tx).await.map(drop)
}

fn money(minor: i64, currency: Currency) -> Result<Money, OrderError> {
    Money::new(minor, currency).map_err(|e| anyhow!("stored amount: {e}").into())
}

fn order_from_row(row: &AnyRow) -> Result<Order, OrderError> {
    let status: String = row.try_get(2)?;
    let currency: String = row.try_get(3)?;
    let currency = Currency::parse(&currency).map_err(|e| anyhow!("stored currency: {e}"))?;
    let payment: Option<String> = row.try_get(6)?;
    Ok(Order {
        id: OrderId::from_db(&row.try_get::<String, _>(0)?)?,
        user_id: UserId::from_db(&row.try_get::<String, _>(1)?)?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| anyhow!("stored order status `{status}`"))?,
        lines: Vec::new(),
        total: money(row.try_get(4)?, currency)?,
        refunded_minor: row.try_get(5)?,
        payment_id: payment.as_deref().map(PaymentId::from_db).transpose()?,
        cancel_reason: row.try_get(7)?,
        created_at: Timestamp::from_millis(row.try_get(8)?),
        updated_at: Timestamp::from_millis(row.try_get(9)?),
    })
}

fn saga_from_row(row: &AnyRow) -> Result<SagaRow, OrderError> {
    let state: String = row.try_get(1)?;
    let step: String = row.try_get(2)?;
    let payment: Option<String> = row.try_get(4)?;
    Ok(SagaRow {
        order_id: OrderId::from_db(&row.try_get::<String, _>(0)?)?,
        state: SagaState::parse(&state).ok_or_else(|| anyhow!("stored saga state `{state}`"))?,
        step: Step::parse(&step).ok_or_else(|| anyhow!("stored saga step `{step}`"))?,
        payment_token: row.try_get(3)?,
        payment_id: payment.as_deref().map(PaymentId::from_db).transpose()?,
        attempts: row.try_get(5)?,
    })
}
