//! The nightly export: the orders placed on one UTC day, one CSV row per
//! order line, stored at `exports/orders/<day>.csv` in the object storage.
//!
//! Time triggers it, not an event: [`Export::run_nightly`] makes the previous
//! day's file an hour after that day is over ([`NIGHTLY_SETTLE`]), if the file
//! is missing (so a worker that was down makes it when it starts, and several
//! workers write the same file). Only the previous day: older missing days
//! are made by hand. `agora functions run export --date <day>` makes (or remakes) any
//! finished day's file by hand.

use std::sync::Arc;
use std::time::Duration;

use agora_contracts::orders::{OrderRecord, OrdersPort};
use agora_kernel::{Clock, Timestamp};
use agora_platform::Shutdown;
use agora_platform::storage::{ObjectKey, ObjectStorage};
use anyhow::Context;
use axum::body::Bytes;

/// How many orders one port call reads.
const PAGE: u32 = 200;
/// How often the nightly schedule looks for a missing export.
pub const NIGHTLY_CHECK: Duration = Duration::from_secs(15 * 60);
/// How long after a day's end the nightly export waits, so that checkouts
/// begun late that day have finished (their orders' status is final).
pub const NIGHTLY_SETTLE: Duration = Duration::from_secs(3600);
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The CSV's columns, in order. Amounts are in minor units of `currency`.
pub const COLUMNS: [&str; 13] = [
    "order_id",
    "placed_at",
    "status",
    "customer_id",
    "currency",
    "order_total_minor",
    "refunded_minor",
    "product_id",
    "sku",
    "name",
    "quantity",
    "unit_price_minor",
    "line_total_minor",
];

/// A UTC calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day {
    start: Timestamp,
}

impl Day {
    /// The day written `YYYY-MM-DD`; a date that does not exist (`2026-02-30`)
    /// or another form is an error saying so.
    pub fn parse(s: &str) -> Result<Day, String> {
        let shaped = s.len() == 10
            && s.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            });
        let start = shaped
            .then(|| Timestamp::parse_rfc3339(&format!("{s}T00:00:00Z")).ok())
            .flatten()
            .ok_or_else(|| format!("{s:?} is not a date: write YYYY-MM-DD, e.g. 2026-12-01"))?;
        Ok(Day { start })
    }

    /// The day `at` falls on.
    pub fn of(at: Timestamp) -> Day {
        Day {
            start: Timestamp::from_millis(at.as_millis().div_euclid(DAY_MS) * DAY_MS),
        }
    }

    /// The day before.
    pub fn previous(self) -> Day {
        Day {
            start: Timestamp::from_millis(self.start.as_millis() - DAY_MS),
        }
    }

    /// Its first moment.
    pub fn start(self) -> Timestamp {
        self.start
    }

    /// The first moment of the next day.
    pub fn end(self) -> Timestamp {
        Timestamp::from_millis(self.start.as_millis() + DAY_MS)
    }

    /// Where its export is stored.
    pub fn key(self) -> ObjectKey {
        ObjectKey::parse(&format!("exports/orders/{self}.csv")).expect("a date makes a valid key")
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rfc = self.start.to_rfc3339();
        f.write_str(&rfc[..10])
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The object's key.
    pub key: ObjectKey,
    /// How many orders.
    pub orders: usize,
    /// How many rows (order lines).
    pub rows: usize,
    /// The object's size in bytes.
    pub bytes: usize,
}

/// The export function.
#[derive(Clone)]
pub struct Export {
    orders: Arc<dyn OrdersPort>,
    storage: ObjectStorage,
}

impl Export {
    /// The function, reading orders through `orders` and writing to `storage`.
    pub fn new(orders: Arc<dyn OrdersPort>, storage: ObjectStorage) -> Self {
        Self { orders, storage }
    }

    /// Exports the orders placed on `day`, replacing an earlier export of it.
    /// `now` decides whether the day is over: an unfinished day is refused,
    /// as its file would miss the orders still to come.
    pub async fn run(&self, day: Day, now: Timestamp) -> anyhow::Result<Exported> {
        anyhow::ensure!(
            day.end() <= now,
            "{day} is not over yet (it ends at {}): only finished days are exported",
            day.end().to_rfc3339()
        );
        let mut csv = csv::Writer::from_writer(Vec::new());
        csv.write_record(COLUMNS)?;
        let (mut orders, mut rows) = (0, 0);
        let mut after = None;
        loop {
            let page = self
                .orders
                .placed_between(day.start(), day.end(), after, PAGE)
                .await?;
            for order in &page {
                rows += write_order(&mut csv, order)?;
            }
            orders += page.len();
            // Until an empty page: the port may return fewer than asked.
            match page.last() {
                Some(last) => after = Some((last.created_at, last.id)),
                None => break,
            }
        }
        let body = csv.into_inner().context("finishing the CSV")?;
        let bytes = body.len();
        let key = day.key();
        self.storage
            .put(&key, Bytes::from(body))
            .await
            .with_context(|| format!("storing {key}"))?;
        tracing::info!(%key, orders, rows, bytes, "orders exported");
        Ok(Exported {
            key,
            orders,
            rows,
            bytes,
        })
    }

    /// Exports the previous day once it has been over for
    /// [`NIGHTLY_SETTLE`] and its file is missing, looking every `every`,
    /// until the signal fires. A failure is logged and
    /// tried again at the next look.
    pub async fn run_nightly(self, clock: Arc<dyn Clock>, every: Duration, shutdown: Shutdown) {
        loop {
            let now = clock.now();
            let settle_ms = i64::try_from(NIGHTLY_SETTLE.as_millis()).unwrap_or(i64::MAX);
            let day = Day::of(Timestamp::from_millis(now.as_millis() - settle_ms)).previous();
            match self.storage.exists(&day.key()).await {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(e) = self.run(day, now).await {
                        tracing::warn!(%day, error = %format!("{e:#}"), "the nightly export failed; it is tried again later");
                    }
                }
                Err(e) => {
                    tracing::warn!(%day, error = %e, "the object storage does not answer; the nightly export waits");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.wait() => return,
            }
        }
    }
}

fn write_order(csv: &mut csv::Writer<Vec<u8>>, order: &OrderRecord) -> anyhow::Result<usize> {
    let placed_at = order.created_at.to_rfc3339();
    for line in &order.lines {
        csv.write_record([
            order.id.to_string().as_str(),
            &placed_at,
            &order.status,
            &order.user_id.to_string(),
            order.total.currency().code(),
            &order.total.amount_minor().to_string(),
            &order.refunded_minor.to_string(),
            &line.product_id.to_string(),
            &line.sku,
            &line.name,
            &line.quantity.to_string(),
            &line.unit_price.amount_minor().to_string(),
            &line.line_total.amount_minor().to_string(),
        ])?;
    }
    Ok(order.lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_written_as_dates_and_nothing_else() {
        let day = Day::parse("2026-12-01").expect("a day");
        assert_eq!(day.to_string(), "2026-12-01");
        assert_eq!(day.end().as_millis() - day.start().as_millis(), DAY_MS);
        assert_eq!(day.key().as_str(), "exports/orders/2026-12-01.csv");
        assert_eq!(
            Day::parse("2024-02-29").expect("leap").to_string(),
            "2024-02-29"
        );
        for bad in [
            "",
            "2026-12-1",
            "2026/12/01",
            "2026-13-01",
            "2026-02-30",
            "2025-02-29",
            "yesterday",
            "2026-12-01T00:00:00Z",
            "+026-12-01",
        ] {
            assert!(Day::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_moment_falls_on_its_utc_day() {
        let day = Day::parse("2026-12-01").expect("a day");
        assert_eq!(Day::of(day.start()), day);
        assert_eq!(
            Day::of(Timestamp::from_millis(day.end().as_millis() - 1)),
            day
        );
        assert_eq!(Day::of(day.end()).previous(), day);
    }
}
