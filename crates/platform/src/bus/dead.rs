//! Dead letters: messages a consumer gave up on, kept for staff to inspect and
//! re-drive ([`super::Bus::dead_letters`], [`super::Bus::redrive`]).
//!
//! The in-process and RabbitMQ buses keep them in the table
//! `bus_dead_letters` (the platform's migrations); NATS keeps them in its
//! dead-letter stream.

use agora_kernel::Timestamp;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Event;
use crate::Database;

/// A message a consumer gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Its place in the dead-letter list: re-drive it by this.
    pub id: u64,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// The event, when the message was one.
    #[schema(value_type = Option<Object>)]
    pub event: Option<Event>,
    /// The message as received, when it was not an event (at most 1 KiB, as
    /// text): it was parked at its first delivery.
    pub raw: Option<String>,
    /// The last error.
    pub error: String,
    /// Failed deliveries.
    pub attempts: i64,
    /// When it was parked.
    pub parked_at: Timestamp,
}

/// What a re-drive did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    /// Its consumer handled it (in-process), or has it queued (NATS); it left
    /// the list.
    Redriven,
    /// No dead letter has this id.
    NotFound,
    /// It could not be delivered; it stays in the list with this error.
    Failed(String),
}

/// The most of a message that is not an event a dead letter shows.
pub(crate) const RAW_LIMIT: usize = 1024;

/// The in-process bus's dead letters, in `bus_dead_letters`.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterStore {
    db: Database,
}

const COLUMNS: &str =
    "SELECT seq, consumer, event, error, attempts, parked_at FROM bus_dead_letters";

impl DeadLetterStore {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }

    /// Parks `event` for `consumer` (again: the latest error and count win).
    pub(crate) async fn park(
        &self,
        consumer: &str,
        event: &Event,
        error: &str,
        attempts: i64,
        now: Timestamp,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO bus_dead_letters (consumer, event_id, kind, event, error, attempts, parked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (consumer, event_id) DO UPDATE SET error = $5, attempts = $6, parked_at = $7",
        )
        .bind(consumer.to_string())
        .bind(event.id.to_db())
        .bind(event.kind.clone())
        .bind(serde_json::to_string(event)?)
        .bind(error.to_string())
        .bind(attempts)
        .bind(now.as_millis())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Up to `limit` dead letters after `after`, oldest first.
    pub(crate) async fn page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        let after = i64::try_from(after.unwrap_or(0)).unwrap_or(i64::MAX);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{COLUMNS} WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(dead_from_row).collect()
    }

    /// The dead letter `id`.
    async fn get(&self, id: u64) -> anyhow::Result<Option<DeadLetter>> {
        let Ok(seq) = i64::try_from(id) else {
            return Ok(None);
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE seq = $1")))
            .bind(seq)
            .fetch_optional(self.db.reader())
            .await?;
        row.as_ref().map(dead_from_row).transpose()
    }

    /// Removes `id` after its re-drive succeeded.
    async fn remove(&self, id: u64) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM bus_dead_letters WHERE seq = $1")
            .bind(i64::try_from(id)?)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Re-drives the dead letter `id` through `deliver` (to its consumer); it
    /// leaves the list when that succeeds, and counts one more failed attempt
    /// when it does not. For the buses that keep dead letters here.
    pub(crate) async fn redrive<F, Fut>(&self, id: u64, deliver: F) -> anyhow::Result<Redrive>
    where
        F: FnOnce(String, Event) -> Fut,
        Fut: std::future::Future<Output = Result<(), super::DeliverError>>,
    {
        let Some(letter) = self.get(id).await? else {
            return Ok(Redrive::NotFound);
        };
        let Some(event) = letter.event else {
            return Ok(Redrive::Failed("the message is not an event".into()));
        };
        match deliver(letter.consumer, event).await {
            Ok(()) => match self.remove(id).await {
                Ok(()) => Ok(Redrive::Redriven),
                // Delivered; the copy left is skipped by the inbox if re-driven.
                Err(e) => Ok(Redrive::Failed(format!(
                    "delivered again, but not removed from the list: {e:#}"
                ))),
            },
            Err(e) => {
                let error = e.to_string();
                self.failed_again(id, &error).await?;
                Ok(Redrive::Failed(error))
            }
        }
    }

    /// Records that re-driving `id` failed again.
    async fn failed_again(&self, id: u64, error: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE bus_dead_letters SET error = $1, attempts = attempts + 1 WHERE seq = $2",
        )
        .bind(error.to_string())
        .bind(i64::try_from(id)?)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }
}

fn dead_from_row(row: &AnyRow) -> anyhow::Result<DeadLetter> {
    let event: String = row.try_get(2)?;
    let seq: i64 = row.try_get(0)?;
    Ok(DeadLetter {
        id: u64::try_from(seq)?,
        consumer: row.try_get(1)?,
        event: Some(serde_json::from_str(&event)?),
        raw: None,
        error: row.try_get(3)?,
        attempts: row.try_get(4)?,
        parked_at: Timestamp::from_millis(row.try_get(5)?),
    })
}

/// The first [`RAW_LIMIT`] bytes of `payload`, as text.
pub(crate) fn raw_text(payload: &[u8]) -> String {
    let end = payload.len().min(RAW_LIMIT);
    String::from_utf8_lossy(&payload[..end]).into_owned()
}
