//! The inventory's data access: stock, the movement ledger and reservations.
//!
//! Every change of a stock row is one conditional `UPDATE` whose `WHERE` states the
//! rule (enough available units, on hand not below reserved), so concurrent
//! callers can never together break it; the CHECK constraints stand behind it.

use std::sync::Arc;

use agora_contracts::events::{EventPayload, StockLow};
use agora_contracts::inventory::{Reservation, ReservationStatus, StockLine};
use agora_kernel::{ProductId, Timestamp};
use agora_platform::Database;
use agora_platform::bus::{Event, Outbox};
use agora_platform::db::{SqlBuilder, Violation, violation};
use anyhow::anyhow;
use serde::Serialize;
use sqlx::Row;

use crate::error::StockError;

/// A product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StockLevel {
    /// The product.
    #[schema(value_type = String, example = "prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    pub product_id: ProductId,
    /// Units in the warehouse.
    pub on_hand: i64,
    /// Units set aside for checkouts in progress.
    pub reserved: i64,
    /// Units that can be sold now: on hand minus reserved.
    pub available: i64,
    /// When the stock last changed; absent if it never had any.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
}

impl StockLevel {
    fn none(product_id: ProductId) -> Self {
        StockLevel {
            product_id,
            on_hand: 0,
            reserved: 0,
            available: 0,
            updated_at: None,
        }
    }
}

/// One entry of the stock ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Movement {
    /// `set` (a stocktake), `adjust` (a correction) or `sale` (a committed
    /// reservation).
    pub kind: String,
    /// The change to on hand.
    pub delta: i64,
    /// On hand after it.
    pub on_hand_after: i64,
    /// Why, as given.
    pub reason: String,
    /// Who: a user or API key id, or the reservation key of a sale.
    pub actor: String,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Where a page of the ledger ends.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MovementCursor {
    /// The last entry's time, epoch milliseconds.
    pub created_at: i64,
    /// The last entry's id.
    pub id: String,
}

/// What a staff change of stock is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Set on hand to this count (a stocktake).
    Set(i64),
    /// Add this (negative: remove) to on hand.
    Adjust(i64),
}

/// The inventory's data access.
#[derive(Debug, Clone)]
pub struct InventoryStore {
    db: Database,
    outbox: Arc<Outbox>,
    low_stock_threshold: i64,
}

/// The inventory's outbox table.
pub const OUTBOX: &str = "inventory_outbox";
/// The available units at or below which a product's stock is low, by default.
pub const DEFAULT_LOW_STOCK_THRESHOLD: i64 = 5;

impl InventoryStore {
    /// A store over `db`, with the default low-stock threshold.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            outbox: Arc::new(Outbox::new(OUTBOX)),
            low_stock_threshold: DEFAULT_LOW_STOCK_THRESHOLD,
        }
    }

    /// The same store with another low-stock threshold: a `StockLow` event is
    /// published when a product's available units fall to it or below.
    pub fn with_low_stock_threshold(mut self, threshold: i64) -> Self {
        self.low_stock_threshold = threshold;
        self
    }

    /// The module's outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Appends `StockLow` to the outbox in `tx` when the available units of
    /// `product_id` went from above the threshold to at or below it.
    async fn low_stock(
        &self,
        tx: &mut agora_platform::db::WriteTx,
        product_id: ProductId,
        before: i64,
        after: i64,
        now: Timestamp,
    ) -> Result<bool, StockError> {
        let threshold = self.low_stock_threshold;
        if !(before > threshold && after <= threshold) {
            return Ok(false);
        }
        let payload = StockLow {
            product_id,
            available: after,
            threshold,
        };
        let event = Event::new(StockLow::KIND, product_id, &payload, now)
            .map_err(|e| StockError::Unexpected(e.into()))?;
        self.outbox.append(tx, &event).await?;
        Ok(true)
    }

    /// The database (for tests and tools).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// A product's stock (zero when it never had any).
    pub async fn stock(&self, product_id: ProductId) -> Result<StockLevel, StockError> {
        let row = sqlx::query(
            "SELECT on_hand, reserved, updated_at FROM inventory_stock WHERE product_id = $1",
        )
        .bind(product_id.to_db())
        .fetch_optional(self.db.reader())
        .await?;
        Ok(match row {
            None => StockLevel::none(product_id),
            Some(r) => level(product_id, r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
        })
    }

    /// Sets or adjusts a product's stock and records the movement, in one
    /// transaction. Refused when on hand would fall below the reserved units.
    pub async fn change(
        &self,
        product_id: ProductId,
        change: Change,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<StockLevel, StockError> {
        let mut tx = self.db.begin().await?;
        // Insert the row at zero when it is missing, then lock it and read it (a
        // no-op update locks the row on PostgreSQL), so the delta written to the
        // ledger is exact even while sales land concurrently.
        sqlx::query(
            "INSERT INTO inventory_stock (product_id, on_hand, reserved, updated_at) \
             VALUES ($1, 0, 0, $2) ON CONFLICT (product_id) DO NOTHING",
        )
        .bind(product_id.to_db())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        let locked = sqlx::query(
            "UPDATE inventory_stock SET updated_at = updated_at WHERE product_id = $1 \
             RETURNING on_hand, on_hand - reserved",
        )
        .bind(product_id.to_db())
        .fetch_one(&mut *tx)
        .await?;
        let before: i64 = locked.try_get(0)?;
        let available_before: i64 = locked.try_get(1)?;
        let (sql, value, kind) = match change {
            Change::Set(n) => (
                "UPDATE inventory_stock SET on_hand = $1, updated_at = $2 \
                 WHERE product_id = $3 AND reserved <= $1 \
                 RETURNING on_hand, reserved, updated_at",
                n,
                "set",
            ),
            Change::Adjust(d) => (
                "UPDATE inventory_stock SET on_hand = on_hand + $1, updated_at = $2 \
                 WHERE product_id = $3 AND on_hand + $1 >= reserved \
                 RETURNING on_hand, reserved, updated_at",
                d,
                "adjust",
            ),
        };
        let row = sqlx::query(sql)
            .bind(value)
            .bind(now.as_millis())
            .bind(product_id.to_db())
            .fetch_optional(&mut *tx)
            .await
            .map_err(below_reserved_on_check)?;
        let Some(row) = row else {
            return Err(StockError::BelowReserved);
        };
        let stock = level(
            product_id,
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
        );
        let movement = NewMovement {
            product_id,
            kind,
            delta: stock.on_hand - before,
            on_hand_after: stock.on_hand,
            reason,
            actor,
        };
        record_movements(&mut tx, &[movement], now).await?;
        let low = self
            .low_stock(&mut tx, product_id, available_before, stock.available, now)
            .await?;
        tx.commit().await?;
        if low {
            self.outbox.notify();
        }
        Ok(stock)
    }

    /// Up to `limit` ledger entries of a product after `after`, newest first,
    /// each with its cursor.
    pub async fn movements(
        &self,
        product_id: ProductId,
        after: Option<&MovementCursor>,
        limit: i64,
    ) -> Result<Vec<(Movement, MovementCursor)>, StockError> {
        let mut q = SqlBuilder::new(
            "SELECT id, kind, delta, on_hand_after, reason, actor, created_at \
             FROM inventory_movements WHERE product_id = ",
        );
        q.bind(product_id.to_db())?;
        if let Some(after) = after {
            q.push(" AND (created_at, id) < (")
                .bind(after.created_at)?
                .push(", ")
                .bind(after.id.clone())?
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .bind(limit)?;
        let rows = q.build().fetch_all(self.db.reader()).await?;
        rows.iter()
            .map(|r| {
                let created_at: i64 = r.try_get(6)?;
                Ok((
                    Movement {
                        kind: r.try_get(1)?,
                        delta: r.try_get(2)?,
                        on_hand_after: r.try_get(3)?,
                        reason: r.try_get(4)?,
                        actor: r.try_get(5)?,
                        created_at: Timestamp::from_millis(created_at),
                    },
                    MovementCursor {
                        created_at,
                        id: r.try_get(0)?,
                    },
                ))
            })
            .collect()
    }

    /// The reservation with `key`.
    pub async fn reservation(&self, key: &str) -> Result<Option<Reservation>, StockError> {
        let row = sqlx::query(
            "SELECT key, status, lines, expires_at FROM inventory_reservations WHERE key = $1",
        )
        .bind(key.to_string())
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|r| reservation_from_row(&r)).transpose()
    }

    /// Reserves every line or none, in one transaction. `lines` must be sorted by
    /// product id, so concurrent reservations lock rows in one order. `None` when
    /// another call stored a reservation with this key first.
    pub async fn reserve(
        &self,
        key: &str,
        lines: &[StockLine],
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Reservation>, StockError> {
        let mut tx = self.db.begin().await?;
        // The key first: a concurrent call with the same key waits here for this
        // one and then finds the key taken, instead of competing for the stock.
        // (`DO NOTHING` rather than a refused insert: a repeat is no error, and
        // PostgreSQL does not log one.)
        let inserted = sqlx::query(
            "INSERT INTO inventory_reservations (key, status, lines, expires_at, created_at, updated_at) \
             VALUES ($1, 'held', $2, $3, $4, $4) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key.to_string())
        .bind(lines_to_db(lines)?)
        .bind(expires_at.as_millis())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut low = false;
        for line in lines {
            let available: Option<i64> = sqlx::query_scalar(
                "UPDATE inventory_stock SET reserved = reserved + $1, updated_at = $2 \
                 WHERE product_id = $3 AND on_hand - reserved >= $1 RETURNING on_hand - reserved",
            )
            .bind(line.quantity)
            .bind(now.as_millis())
            .bind(line.product_id.to_db())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(after) = available {
                low |= self
                    .low_stock(&mut tx, line.product_id, after + line.quantity, after, now)
                    .await?;
            } else {
                let available: Option<i64> = sqlx::query_scalar(
                    "SELECT on_hand - reserved FROM inventory_stock WHERE product_id = $1",
                )
                .bind(line.product_id.to_db())
                .fetch_optional(&mut *tx)
                .await?;
                // Dropping the transaction rolls back the lines reserved so far.
                return Err(StockError::Insufficient {
                    product_id: line.product_id,
                    available: available.unwrap_or(0),
                    requested: line.quantity,
                });
            }
        }
        tx.commit().await?;
        if low {
            self.outbox.notify();
        }
        Ok(Some(Reservation {
            key: key.to_string(),
            status: ReservationStatus::Held,
            lines: lines.to_vec(),
            expires_at,
        }))
    }

    /// Moves a held, unexpired reservation to `to` and applies it to the stock:
    /// committed units leave on hand (a sale, in the ledger), released ones go
    /// back to available. Returns the settled reservation; `None` when it was not
    /// held (or lapsed, for a commit): nothing changed.
    pub async fn settle(
        &self,
        key: &str,
        to: ReservationStatus,
        now: Timestamp,
    ) -> Result<Option<Reservation>, StockError> {
        let mut tx = self.db.begin().await?;
        let (status, deadline) = match to {
            ReservationStatus::Committed => ("committed", now.as_millis()),
            ReservationStatus::Released => ("released", i64::MIN),
            ReservationStatus::Held => {
                return Err(anyhow!("a reservation cannot go back to held").into());
            }
        };
        let row = sqlx::query(
            "UPDATE inventory_reservations SET status = $1, updated_at = $2 \
             WHERE key = $3 AND status = 'held' AND expires_at > $4 RETURNING lines, expires_at",
        )
        .bind(status)
        .bind(now.as_millis())
        .bind(key.to_string())
        .bind(deadline)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let lines = lines_from_db(&row.try_get::<String, _>(0)?)?;
        let expires_at = Timestamp::from_millis(row.try_get(1)?);
        let mut sold = Vec::new();
        for line in &lines {
            match to {
                ReservationStatus::Committed => {
                    let on_hand: i64 = sqlx::query_scalar(
                        "UPDATE inventory_stock SET on_hand = on_hand - $1, reserved = reserved - $1, \
                         updated_at = $2 WHERE product_id = $3 RETURNING on_hand",
                    )
                    .bind(line.quantity)
                    .bind(now.as_millis())
                    .bind(line.product_id.to_db())
                    .fetch_one(&mut *tx)
                    .await?;
                    sold.push(NewMovement {
                        product_id: line.product_id,
                        kind: "sale",
                        delta: -line.quantity,
                        on_hand_after: on_hand,
                        reason: "checkout",
                        actor: key,
                    });
                }
                _ => {
                    sqlx::query(
                        "UPDATE inventory_stock SET reserved = reserved - $1, updated_at = $2 \
                         WHERE product_id = $3",
                    )
                    .bind(line.quantity)
                    .bind(now.as_millis())
                    .bind(line.product_id.to_db())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        record_movements(&mut tx, &sold, now).await?;
        tx.commit().await?;
        Ok(Some(Reservation {
            key: key.to_string(),
            status: to,
            lines,
            expires_at,
        }))
    }

    /// Keys of held reservations that lapsed by `now`, at most `limit`.
    pub async fn lapsed(&self, now: Timestamp, limit: i64) -> Result<Vec<String>, StockError> {
        Ok(sqlx::query_scalar(
            "SELECT key FROM inventory_reservations WHERE status = 'held' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
        )
        .bind(now.as_millis())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?)
    }
}

fn level(product_id: ProductId, on_hand: i64, reserved: i64, updated_at: i64) -> StockLevel {
    StockLevel {
        product_id,
        on_hand,
        reserved,
        available: on_hand - reserved,
        updated_at: Some(Timestamp::from_millis(updated_at)),
    }
}

/// A CHECK failure on a stock row (a set below zero) is the same refusal as a
/// failed condition.
fn below_reserved_on_check(e: sqlx::Error) -> StockError {
    match violation(&e) {
        Some(Violation::Check(_)) => StockError::BelowReserved,
        _ => StockError::Database(e),
    }
}

/// A change of a product's stock, for the ledger.
struct NewMovement<'a> {
    product_id: ProductId,
    kind: &'a str,
    delta: i64,
    on_hand_after: i64,
    reason: &'a str,
    actor: &'a str,
}

/// Appends `movements` to the ledger, in one statement.
async fn record_movements(
    tx: &mut agora_platform::db::WriteTx,
    movements: &[NewMovement<'_>],
    now: Timestamp,
) -> Result<(), StockError> {
    if movements.is_empty() {
        return Ok(());
    }
    let mut q = SqlBuilder::new(
        "INSERT INTO inventory_movements \
         (id, product_id, kind, delta, on_hand_after, reason, actor, created_at) VALUES ",
    );
    q.push_list(movements.iter(), |q, m| {
        q.push("(");
        q.bind(uuid::Uuid::now_v7().hyphenated().to_string())?
            .push(", ")
            .bind(m.product_id.to_db())?
            .push(", ")
            .bind(m.kind.to_string())?
            .push(", ")
            .bind(m.delta)?
            .push(", ")
            .bind(m.on_hand_after)?
            .push(", ")
            .bind(m.reason.to_string())?
            .push(", ")
            .bind(m.actor.to_string())?
            .push(", ")
            .bind(now.as_millis())?
            .push(")");
        Ok(())
    })?;
    q.build().execute(&mut **tx).await?;
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredLine {
    product_id: String,
    quantity: i64,
}

fn lines_to_db(lines: &[StockLine]) -> Result<String, StockError> {
    let stored: Vec<StoredLine> = lines
        .iter()
        .map(|l| StoredLine {
            product_id: l.product_id.to_db(),
            quantity: l.quantity,
        })
        .collect();
    serde_json::to_string(&stored).map_err(|e| anyhow!("lines: {e}").into())
}

fn lines_from_db(column: &str) -> Result<Vec<StockLine>, StockError> {
    let stored: Vec<StoredLine> = serde_json::from_str(column)
        .map_err(|e| anyhow!("corrupt inventory_reservations.lines: {e}"))?;
    stored
        .into_iter()
        .map(|l| {
            Ok(StockLine {
                product_id: ProductId::from_db(&l.product_id)
                    .map_err(|_| anyhow!("corrupt product id in inventory_reservations.lines"))?,
                quantity: l.quantity,
            })
        })
        .collect()
}

fn reservation_from_row(row: &sqlx::any::AnyRow) -> Result<Reservation, StockError> {
    let status = match row.try_get::<String, _>(1)?.as_str() {
        "held" => ReservationStatus::Held,
        "committed" => ReservationStatus::Committed,
        "released" => ReservationStatus::Released,
        other => return Err(anyhow!("corrupt reservation status {other}").into()),
    };
    Ok(Reservation {
        key: row.try_get(0)?,
        status,
        lines: lines_from_db(&row.try_get::<String, _>(2)?)?,
        expires_at: Timestamp::from_millis(row.try_get(3)?),
    })
}
