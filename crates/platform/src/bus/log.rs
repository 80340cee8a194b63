//! The event log: every event the relays published, in publication order,
//! queryable by kind, aggregate and time, and readable from an offset for
//! replays.
//!
//! A relay appends the events it published in the same transaction that marks
//! their outbox rows published, so the log holds each published event exactly
//! once (a row published again after a crash is already there). The table is
//! the platform's (`bus_event_log`, migrations of the module `bus`); its `seq`
//! is the event's offset.

use agora_kernel::{EventId, Timestamp};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Event;
use crate::Database;
use crate::db::{Backend, SqlBuilder, WriteTx};

/// The advisory lock the relays' appends take turns on (PostgreSQL): "agoralog".
const LOG_LOCK: i64 = 0x6167_6f72_616c_6f67;

/// An event as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LoggedEvent {
    /// Its place in the log: increasing in publication order (not dense).
    pub offset: i64,
    /// The event's id (consumers deduplicate by it).
    #[schema(value_type = String, example = "evt_01936f3e5f7a7d2c9a4b1f0e2d3c4b5a")]
    pub id: EventId,
    /// `<module>.<event>`.
    #[schema(example = "orders.order_confirmed")]
    pub kind: String,
    /// The entity it is about.
    pub aggregate_id: String,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// When it was published (and logged).
    pub logged_at: Timestamp,
    /// Its payload.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The id of the request that produced it, if one did.
    pub request_id: Option<String>,
    /// The W3C `traceparent` of the span that produced it, if any.
    #[schema(example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    pub traceparent: Option<String>,
}

impl LoggedEvent {
    /// The event itself, as consumers receive it.
    pub fn event(&self) -> Event {
        Event {
            id: self.id,
            kind: self.kind.clone(),
            aggregate_id: self.aggregate_id.clone(),
            occurred_at: self.occurred_at,
            payload: self.payload.clone(),
            request_id: self.request_id.clone(),
            traceparent: self.traceparent.clone(),
        }
    }
}

/// Which logged events to read; every field narrows the selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only of this kind.
    pub kind: Option<String>,
    /// Only about this entity.
    pub aggregate_id: Option<String>,
    /// Only those that happened at or after this time.
    pub from: Option<Timestamp>,
    /// Only those that happened before this time.
    pub to: Option<Timestamp>,
    /// Only at or after this offset.
    pub from_offset: Option<i64>,
    /// Only at or before this offset.
    pub to_offset: Option<i64>,
}

/// The event log over a database.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: Database,
}

const COLUMNS: &str = "SELECT seq, id, kind, aggregate_id, payload, occurred_at, logged_at, request_id, traceparent FROM bus_event_log";

impl EventLog {
    /// The log in `db` (which ran [`super::MIGRATIONS`]).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Appends `events`, published at `now`, in `tx` (on a database of
    /// `backend`); an event already logged is left as it is.
    ///
    /// On PostgreSQL the appends of all relays take turns (a transaction-scoped
    /// advisory lock), so that offsets are given in commit order and a reader
    /// paging by offset never sees a lower offset commit after a higher one
    /// (SQLite's one writer does that by itself).
    pub async fn append(
        backend: Backend,
        tx: &mut WriteTx,
        events: &[Event],
        now: Timestamp,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        if backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LOG_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        let mut q = SqlBuilder::new(
            "INSERT INTO bus_event_log (id, kind, aggregate_id, payload, occurred_at, logged_at, request_id, traceparent) VALUES ",
        );
        q.push_list(events.iter(), |q, event| {
            q.push("(")
                .bind(event.id.to_db())?
                .push(", ")
                .bind(event.kind.clone())?
                .push(", ")
                .bind(event.aggregate_id.clone())?
                .push(", ")
                .bind(event.payload.to_string())?
                .push(", ")
                .bind(event.occurred_at.as_millis())?
                .push(", ")
                .bind(now.as_millis())?
                .push(", ")
                .bind(event.request_id.clone())?
                .push(", ")
                .bind(event.traceparent.clone())?
                .push(")");
            Ok(())
        })?;
        q.push(" ON CONFLICT (id) DO NOTHING");
        q.build().execute(&mut **tx).await.map(drop)
    }

    /// Up to `limit` events matching `filter` after the offset `after`, in log
    /// order.
    pub async fn page(
        &self,
        filter: &LogFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, sqlx::Error> {
        let mut q = SqlBuilder::new(COLUMNS);
        q.push(" WHERE 1 = 1");
        if let Some(kind) = &filter.kind {
            q.push(" AND kind = ").bind(kind.clone())?;
        }
        if let Some(aggregate) = &filter.aggregate_id {
            q.push(" AND aggregate_id = ").bind(aggregate.clone())?;
        }
        if let Some(from) = filter.from {
            q.push(" AND occurred_at >= ").bind(from.as_millis())?;
        }
        if let Some(to) = filter.to {
            q.push(" AND occurred_at < ").bind(to.as_millis())?;
        }
        if let Some(from) = filter.from_offset {
            q.push(" AND seq >= ").bind(from)?;
        }
        if let Some(to) = filter.to_offset {
            q.push(" AND seq <= ").bind(to)?;
        }
        if let Some(after) = after {
            q.push(" AND seq > ").bind(after)?;
        }
        q.push(" ORDER BY seq LIMIT ").bind(i64::from(limit))?;
        let rows = q.build().fetch_all(self.db.scan_reader()).await?;
        rows.iter().map(logged_from_row).collect()
    }
}

fn logged_from_row(row: &AnyRow) -> Result<LoggedEvent, sqlx::Error> {
    let id: String = row.try_get(1)?;
    let payload: String = row.try_get(4)?;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        sqlx::Error::Decode(format!("bus_event_log {what}: {e}").into())
    };
    Ok(LoggedEvent {
        offset: row.try_get(0)?,
        id: EventId::from_db(&id).map_err(|e| corrupt("id", &e))?,
        kind: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        payload: serde_json::from_str(&payload).map_err(|e| corrupt("payload", &e))?,
        occurred_at: Timestamp::from_millis(row.try_get(5)?),
        logged_at: Timestamp::from_millis(row.try_get(6)?),
        request_id: row.try_get(7)?,
        traceparent: row.try_get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use agora_kernel::ManualClock;

    use super::*;
    use crate::bus::{InProcessBus, Outbox, Relay};
    use crate::testing::TestDatabase;

    const START: i64 = 1_800_000_000_000;

    /// A database with the bus's tables and an outbox `test_outbox`.
    async fn with_outbox() -> anyhow::Result<TestDatabase> {
        let test = TestDatabase::new().await?;
        test.db.migrate(&crate::bus::MIGRATIONS).await?;
        crate::bus::create_test_outbox(&test.db, "test_outbox").await?;
        Ok(test)
    }

    /// Events the relay publishes are in the log once each, in publication
    /// order, and read back by kind, aggregate, time and offset, page by page.
    #[tokio::test]
    async fn published_events_are_logged_once_and_queryable() -> anyhow::Result<()> {
        let test = with_outbox().await?;
        let db = &test.db;
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(START)));
        let outbox = Arc::new(Outbox::new("test_outbox"));
        let events: Vec<Event> = [("a.made", "x", 0), ("a.made", "y", 10), ("b.done", "x", 20)]
            .into_iter()
            .map(|(kind, aggregate, at)| {
                Event::new(
                    kind,
                    aggregate,
                    &serde_json::json!({ "at": at }),
                    Timestamp::from_millis(START + at),
                )
            })
            .collect::<Result<_, _>>()?;
        let mut tx = db.begin().await?;
        for event in &events {
            outbox.append(&mut tx, event).await?;
        }
        tx.commit().await?;
        let relay = Relay::new(
            db.clone(),
            outbox.clone(),
            Arc::new(InProcessBus::new()),
            clock.clone(),
        );
        assert_eq!(relay.deliver().await?, 3);

        let log = EventLog::new(db.clone());
        let all = log.page(&LogFilter::default(), None, 100).await?;
        let ids: Vec<EventId> = all.iter().map(|e| e.id).collect();
        assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
        assert_eq!(all[0].event(), events[0]);
        assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(
            all.iter()
                .all(|e| e.logged_at == Timestamp::from_millis(START))
        );

        // Published again (a relay that crashed before marking them): the log
        // keeps the first copy only.
        sqlx::query("UPDATE test_outbox SET published_at = NULL")
            .execute(db.writer())
            .await?;
        assert_eq!(relay.deliver().await?, 3);
        assert_eq!(log.page(&LogFilter::default(), None, 100).await?, all);

        let select = async |filter: LogFilter| -> anyhow::Result<Vec<EventId>> {
            Ok(log
                .page(&filter, None, 100)
                .await?
                .iter()
                .map(|e| e.id)
                .collect())
        };
        let by_kind = LogFilter {
            kind: Some("a.made".into()),
            ..LogFilter::default()
        };
        assert_eq!(select(by_kind).await?, vec![events[0].id, events[1].id]);
        let by_aggregate = LogFilter {
            aggregate_id: Some("x".into()),
            ..LogFilter::default()
        };
        assert_eq!(
            select(by_aggregate).await?,
            vec![events[0].id, events[2].id]
        );
        let by_time = LogFilter {
            from: Some(Timestamp::from_millis(START + 10)),
            to: Some(Timestamp::from_millis(START + 20)),
            ..LogFilter::default()
        };
        assert_eq!(select(by_time).await?, vec![events[1].id]);
        let by_offset = LogFilter {
            from_offset: Some(all[1].offset),
            to_offset: Some(all[2].offset),
            ..LogFilter::default()
        };
        assert_eq!(select(by_offset).await?, vec![events[1].id, events[2].id]);

        let first = log.page(&LogFilter::default(), None, 2).await?;
        let rest = log
            .page(&LogFilter::default(), Some(first[1].offset), 2)
            .await?;
        assert_eq!((first.len(), rest.len()), (2, 1));
        assert_eq!(rest[0].id, events[2].id);
        Ok(())
    }
}
