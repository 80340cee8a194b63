//! Messaging: events, the bus that carries them, and the outbox and inbox that make
//! delivery reliable.
//!
//! A module never publishes straight to the bus. It appends the event to its
//! **outbox** table in the same transaction as the change the event describes
//! ([`Outbox::append`]), so an event exists if and only if the change committed.
//! A [`Relay`] per module reads unpublished rows in order, publishes them, and
//! marks them published; a crash between publishing and marking publishes again,
//! so delivery is at least once. Consumers make it effectively once with their
//! **inbox** ([`Inbox::first_time`]): they record the event id in the same
//! transaction as their effect, and skip ids already recorded.
//!
//! Every published event is also appended to the [`EventLog`], in the relay's
//! transaction that marks it published.
//!
//! The [`Bus`] trait has the in-process implementation here ([`InProcessBus`]),
//! which hands each event to every subscribed handler and reports failure if one
//! fails, so the relay keeps the row and tries again later. The NATS JetStream
//! ([`nats`]) and RabbitMQ ([`rabbit`]) backends implement the same trait.
//!
//! Each module owns its tables, named after it:
//! ```sql
//! CREATE TABLE <module>_outbox (
//!     seq          -- BIGSERIAL / INTEGER PRIMARY KEY AUTOINCREMENT: publication order
//!     id           TEXT NOT NULL UNIQUE,   -- the event id (UUIDv7)
//!     kind         TEXT NOT NULL,          -- `<module>.<event>`
//!     aggregate_id TEXT NOT NULL,          -- the entity it is about
//!     payload      TEXT NOT NULL,          -- JSON
//!     occurred_at  BIGINT NOT NULL,        -- epoch ms
//!     published_at BIGINT,                 -- NULL until the relay published it
//!     attempts     BIGINT NOT NULL DEFAULT 0,
//!     last_error   TEXT,
//!     request_id   TEXT,                   -- the request that produced it
//!     traceparent  TEXT                    -- the W3C trace context it continues
//! );
//! CREATE TABLE <module>_inbox (
//!     consumer TEXT NOT NULL, event_id TEXT NOT NULL, handled_at BIGINT NOT NULL,
//!     PRIMARY KEY (consumer, event_id)
//! );
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agora_kernel::{Clock, EventId, Timestamp};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Notify;

use crate::{Database, Shutdown};

pub mod dead;
pub mod log;
pub mod nats;
pub mod rabbit;

pub use dead::{DeadLetter, Redrive};
pub use log::{EventLog, LogFilter, LoggedEvent};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The bus's own tables (the event log), under the module name `bus`.
pub static MIGRATIONS: crate::db::ModuleMigrations = crate::db::ModuleMigrations {
    module: "bus",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// An event: something that happened in a module, for others to react to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique; consumers deduplicate by it.
    pub id: EventId,
    /// `<module>.<event>`, e.g. `orders.order_confirmed`.
    pub kind: String,
    /// The entity it is about (an order id, a payment id, a product id).
    pub aggregate_id: String,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// Its payload, as JSON.
    pub payload: serde_json::Value,
    /// The id of the request whose handling produced it (`X-Request-Id`), so
    /// that a consumer's log lines can be tied to that request; carried in
    /// the message (and the `Agora-Request-Id` header on NATS and RabbitMQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C `traceparent` of the span that produced it (the request's, or
    /// the consumer's that handled the event before it), so that one
    /// checkout is one trace across the relay and the consumers; carried in
    /// the message (and the `traceparent` header on NATS and RabbitMQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Event {
    /// A new event of `kind` about `aggregate_id`, carrying the current
    /// request's id when made while handling one.
    pub fn new<P: Serialize>(
        kind: &str,
        aggregate_id: impl std::fmt::Display,
        payload: &P,
        now: Timestamp,
    ) -> Result<Event, serde_json::Error> {
        Ok(Event {
            id: EventId::new(),
            kind: kind.to_string(),
            aggregate_id: aggregate_id.to_string(),
            occurred_at: now,
            payload: serde_json::to_value(payload)?,
            request_id: agora_kernel::RequestContext::current_request_id().map(|id| id.to_string()),
            traceparent: agora_kernel::RequestContext::current_trace().map(|t| t.to_string()),
        })
    }

    /// The payload read as `P`.
    pub fn payload<P: for<'de> Deserialize<'de>>(&self) -> Result<P, serde_json::Error> {
        P::deserialize(&self.payload)
    }
}

/// The message header (NATS, RabbitMQ) that carries an event's request id,
/// for tools that read messages without decoding them.
pub const REQUEST_ID_HEADER: &str = "Agora-Request-Id";
/// The message header that carries an event's W3C trace context, as tracing
/// tools that read messages expect it.
pub const TRACEPARENT_HEADER: &str = "traceparent";

impl Event {
    /// The headers a broker's message of this event carries (its body has
    /// them too): the request id and the trace context, where known.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (REQUEST_ID_HEADER, self.request_id.as_deref()),
            (TRACEPARENT_HEADER, self.traceparent.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

/// Handles the events a consumer subscribed to. Must be idempotent: the same
/// event can arrive more than once (record it in an [`Inbox`]).
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles one event. An error leaves the event to be delivered again.
    async fn handle(&self, event: &Event) -> anyhow::Result<()>;

    /// Called when a `subscribe_each_node` subscription was made again after a
    /// gap (a lost connection): events published meanwhile will not arrive, so
    /// a handler whose work is per node (forgetting cached reads) does it now.
    async fn resumed(&self) {}
}

/// Why a publication failed: the event stays in the outbox and is tried again.
#[derive(Debug, thiserror::Error)]
#[error("publishing {kind} {id} failed: {reason}")]
pub struct PublishError {
    /// The event's kind.
    pub kind: String,
    /// The event's id.
    pub id: EventId,
    /// What went wrong.
    pub reason: String,
}

impl PublishError {
    /// Publishing `event` failed for `reason`.
    pub(crate) fn of(event: &Event, reason: impl std::fmt::Display) -> PublishError {
        PublishError {
            kind: event.kind.clone(),
            id: event.id,
            reason: reason.to_string(),
        }
    }
}

/// The pause before redelivering a message that failed `attempts` times:
/// `first`, doubling per attempt, at most a minute (the shared brokers).
pub(crate) fn retry_pause(first: Duration, attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    (first * (1 << doublings)).min(Duration::from_secs(60))
}

/// `s` as one word of a subject, routing key or name on a broker: only
/// `A-Z a-z 0-9 - _`, anything else made `_`.
pub(crate) fn token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Why [`Bus::deliver_to`] did not deliver an event.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// No consumer of this name subscribed (in this process, for the
    /// in-process bus; on the server, for NATS).
    #[error("no consumer {0} is subscribed")]
    UnknownConsumer(String),
    /// The consumer does not take events of this kind.
    #[error("consumer {consumer} does not take {kind}")]
    KindNotSubscribed {
        /// The consumer.
        consumer: String,
        /// The event's kind.
        kind: String,
    },
    /// The delivery failed.
    #[error("{0}")]
    Failed(String),
}

/// Carries events from the outbox relays to the consumers.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Delivers `event`. `Ok` means the bus took responsibility for it.
    async fn publish(&self, event: &Event) -> Result<(), PublishError>;

    /// Delivers `events` in order: how many of them, from the first, the bus
    /// took responsibility for, and why the next one failed. A bus may have
    /// taken some after the failure too (NATS pipelines the batch); publishing
    /// them again is harmless (the message id, the inboxes).
    async fn publish_batch(&self, events: &[Event]) -> (usize, Option<PublishError>) {
        for (n, event) in events.iter().enumerate() {
            if let Err(e) = self.publish(event).await {
                return (n, Some(e));
            }
        }
        (events.len(), None)
    }

    /// Has `handler`, known as `consumer`, receive every event whose kind is in
    /// `kinds`. Every process that subscribes under the same name shares the
    /// events: each is handled by one of them.
    fn subscribe(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>);

    /// Has `handler` receive, in every process that calls this, each event of
    /// `kinds` published from now on: for work each node does for itself
    /// (forgetting what it cached), where `subscribe` shares the work. A node
    /// cut off from the bus misses what was published meanwhile, so the work
    /// must be bounded without it (cached entries expire).
    fn subscribe_each_node(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>);

    /// Hands `event` to the consumer named `consumer` alone, which must have
    /// subscribed (with [`Bus::subscribe`]) to its kind: a replay from the
    /// event log, or a re-drive. The consumer's inbox skips an event it has
    /// handled already. In-process, `Ok` means it was handled; on NATS, that it
    /// is queued for the consumer.
    async fn deliver_to(&self, consumer: &str, event: &Event) -> Result<(), DeliverError>;

    /// Whether a consumer of this name subscribed with [`Bus::subscribe`]
    /// (in this process for the in-process bus; on the server for NATS).
    async fn has_consumer(&self, consumer: &str) -> Result<bool, DeliverError>;

    /// Keeps the events of `kinds` for `consumer`, which runs in other
    /// processes (functions workers), from now on even while none of them
    /// runs. A bus whose streams keep every event anyway (NATS) or that has
    /// no other processes (in-process) need do nothing.
    fn retain_for(&self, consumer: &str, kinds: &[&str]) {
        let _ = (consumer, kinds);
    }

    /// Up to `limit` messages consumers gave up on, oldest first, after the
    /// dead letter `after`.
    async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<DeadLetter>>;

    /// Delivers the dead letter `id` to its consumer again; it leaves the list
    /// when that succeeds.
    async fn redrive(&self, id: u64) -> anyhow::Result<Redrive>;
}

/// How long an in-process handler may take before its delivery counts as
/// failed (and for NATS, within the ack wait).
const HANDLER_LIMIT: Duration = Duration::from_secs(30);

/// Runs `handler` on `event` so that a panic is a failed delivery rather than
/// the end of the caller (a relay, a subscriber), and gives up on it (drops
/// it) after `limit`. On the caller's task: a task of its own would cost a
/// thread hop per event.
pub(crate) async fn run_handler(
    handler: &Arc<dyn Handler>,
    event: &Event,
    limit: Duration,
) -> Result<(), String> {
    use futures_util::FutureExt as _;
    use tracing::Instrument as _;
    // The handler's span is a child of the span that made the event (an
    // invalid `traceparent` is ignored).
    let parent = event
        .traceparent
        .as_deref()
        .and_then(agora_kernel::TraceContext::parse);
    let span = tracing::info_span!(
        "bus.handle",
        kind = %event.kind,
        event_id = %event.id,
        request_id = event.request_id.as_deref().unwrap_or(""),
        trace_id = parent.map(|t| t.trace_id()).unwrap_or_default()
    );
    let own = crate::telemetry::continue_trace(&span, parent);
    let handled = handler.handle(event).instrument(span);
    // Events the handler makes carry the same request id, and continue the
    // trace from the handler's span.
    let call = std::panic::AssertUnwindSafe(async {
        match (&event.request_id, parent, own) {
            (None, None, None) => handled.await,
            (id, parent, own) => {
                let id = id.as_deref().map_or_else(|| Arc::from(""), Arc::from);
                let context = match own {
                    Some(own) => agora_kernel::RequestContext::with_trace(id, parent, own),
                    None => agora_kernel::RequestContext::new(id, parent),
                };
                context.scope(handled).await
            }
        }
    })
    .catch_unwind();
    let outcome = match tokio::time::timeout(limit, call).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("{e:#}")),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            Err(format!("the handler panicked: {message}"))
        }
        Err(_) => Err(format!("the handler took longer than {limit:?}")),
    };
    let result = if outcome.is_ok() { "handled" } else { "failed" };
    ::metrics::counter!("agora_bus_consumed_total", "kind" => event.kind.clone(), "outcome" => result)
        .increment(1);
    outcome
}

/// Counts a broker's delivery to `consumer` that is its `attempts`-th: every
/// one after the first is a redelivery.
pub(crate) fn count_redelivery(consumer: &str, attempts: i64) {
    if attempts > 1 {
        ::metrics::counter!("agora_bus_redeliveries_total", "consumer" => consumer.to_string())
            .increment(1);
    }
}

/// Counts an event parked in the dead letters for `consumer`.
pub(crate) fn count_parked(consumer: &str) {
    ::metrics::counter!("agora_bus_parked_total", "consumer" => consumer.to_string()).increment(1);
}

/// A consumer's handler of some kinds.
pub(crate) struct Subscription {
    pub(crate) consumer: String,
    pub(crate) kinds: Vec<String>,
    pub(crate) handler: Arc<dyn Handler>,
}

/// The handlers of one consumer in this process, by kind: for what reaches
/// the consumer as a whole (on NATS, what is sent to it alone; on RabbitMQ,
/// its queue), whatever the kind.
#[derive(Default)]
pub(crate) struct Routes {
    pub(crate) routes: RwLock<Vec<Subscription>>,
}

impl Routes {
    /// Has `handler` take `kinds` for `consumer`.
    pub(crate) fn add(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>) {
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Subscription {
                consumer: consumer.to_string(),
                kinds: kinds.iter().map(|k| (*k).to_string()).collect(),
                handler,
            });
    }

    /// Every kind some handler here takes.
    pub(crate) fn kinds(&self) -> Vec<String> {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .flat_map(|s| s.kinds.iter().cloned())
            .collect()
    }

    /// Whether some handler here takes `kind`.
    pub(crate) fn takes(&self, kind: &str) -> bool {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|s| s.kinds.iter().any(|k| k == kind))
    }
}

#[async_trait]
impl Handler for Routes {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let handler = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|s| s.kinds.contains(&event.kind))
            .map(|s| Arc::clone(&s.handler));
        match handler {
            Some(handler) => handler.handle(event).await,
            // Another process's subscription of this name takes the kind (a
            // newer version, during a rolling deploy): a failed delivery, so
            // that the message goes to another process, or is parked, rather
            // than being acknowledged unhandled.
            None => anyhow::bail!(
                "this process's consumer does not take {}; another process's may",
                event.kind
            ),
        }
    }
}

/// The bus of the monolith: events go to the handlers in this process. Publishing
/// returns once every interested handler has handled the event, so an event is
/// marked published only when it was handled; a failing handler makes the relay
/// deliver it again (to every handler: their inboxes skip the repeat). After
/// `max_attempts` failed deliveries of an event to one consumer, the event is
/// parked in the dead letters (`bus_dead_letters`) for that consumer and the
/// others go on: a poison event holds back the events behind it in its outbox
/// only until then.
#[derive(Default)]
pub struct InProcessBus {
    subscriptions: RwLock<Vec<Arc<Subscription>>>,
    parking: Option<Parking>,
    /// Failed deliveries so far, per consumer and event, in this process; and
    /// the consumers that gave up on an event not yet published to all (a
    /// later consumer failing makes the relay publish it again: they are not
    /// handed it again).
    attempts: std::sync::Mutex<Attempts>,
}

#[derive(Default)]
struct Attempts {
    failed: HashMap<(String, EventId), i64>,
    parked: std::collections::HashSet<(String, EventId)>,
}

struct Parking {
    store: dead::DeadLetterStore,
    max_attempts: i64,
    clock: Arc<dyn Clock>,
}

impl InProcessBus {
    /// A bus with no subscribers that never gives up on an event: a failing
    /// one is delivered again until it is handled (for tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus with no subscribers that parks an event in `db`'s dead letters
    /// after `max_attempts` failed deliveries to a consumer.
    pub fn with_dead_letters(db: Database, max_attempts: i64, clock: Arc<dyn Clock>) -> Self {
        Self {
            parking: Some(Parking {
                store: dead::DeadLetterStore::new(db),
                max_attempts: max_attempts.max(1),
                clock,
            }),
            ..Self::default()
        }
    }

    /// Counts a failed delivery of `event` to `consumer`; parks it when that
    /// was the last attempt. `true` when parked.
    async fn give_up(&self, consumer: &str, event: &Event, error: &str) -> anyhow::Result<bool> {
        let Some(parking) = &self.parking else {
            return Ok(false);
        };
        let key = (consumer.to_string(), event.id);
        let attempts = {
            let mut attempts = self.attempts();
            let n = attempts.failed.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if attempts < parking.max_attempts {
            return Ok(false);
        }
        tracing::error!(consumer, kind = %event.kind, event_id = %event.id, attempts, error, "parking an event the consumer cannot handle");
        parking
            .store
            .park(consumer, event, error, attempts, parking.clock.now())
            .await?;
        let mut known = self.attempts();
        known.failed.remove(&key);
        known.parked.insert(key);
        Ok(true)
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `event` to every interested consumer that has not given up on
    /// it, in subscription order; stops at the first that fails (and has
    /// attempts left).
    async fn hand_out(&self, event: &Event) -> Result<(), PublishError> {
        let interested: Vec<Arc<Subscription>> = self
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|s| s.kinds.contains(&event.kind))
            .cloned()
            .collect();
        for subscription in interested {
            let consumer = &subscription.consumer;
            let key = (consumer.clone(), event.id);
            if self.attempts().parked.contains(&key) {
                continue;
            }
            let failed = |reason: String| PublishError {
                kind: event.kind.clone(),
                id: event.id,
                reason,
            };
            match run_handler(&subscription.handler, event, HANDLER_LIMIT).await {
                Ok(()) => {
                    self.attempts().failed.remove(&key);
                }
                Err(error) => match self.give_up(consumer, event, &error).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(failed(format!("consumer {consumer} failed: {error}")));
                    }
                    Err(e) => {
                        return Err(failed(format!(
                            "consumer {consumer} failed ({error}) and parking failed: {e:#}"
                        )));
                    }
                },
            }
        }
        Ok(())
    }

    /// `event` reached every consumer: who gave up on it need not be
    /// remembered.
    fn published(&self, event: &Event) {
        self.attempts().parked.retain(|(_, id)| *id != event.id);
    }

    /// The subscription of `consumer` that takes `kind`.
    fn subscription(&self, consumer: &str, kind: &str) -> Result<Arc<Subscription>, DeliverError> {
        let subscriptions = self
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut named = subscriptions
            .iter()
            .filter(|s| s.consumer == consumer)
            .peekable();
        if named.peek().is_none() {
            return Err(DeliverError::UnknownConsumer(consumer.to_string()));
        }
        named
            .find(|s| s.kinds.iter().any(|k| k == kind))
            .cloned()
            .ok_or_else(|| DeliverError::KindNotSubscribed {
                consumer: consumer.to_string(),
                kind: kind.to_string(),
            })
    }
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").finish_non_exhaustive()
    }
}

/// How many aggregates' events an in-process batch hands out at once.
const IN_PROCESS_LANES: usize = 16;

#[async_trait]
impl Bus for InProcessBus {
    /// Hands a batch's events out by aggregate: each aggregate's events one
    /// after another in batch order, up to [`IN_PROCESS_LANES`] aggregates side
    /// by side, as the NATS partitions do (ADRs 0007, 0009). One at a time, a relay
    /// could publish no faster than one slow consumer (a receipt written to
    /// disk) handles, and fell behind the checkouts for good. An aggregate's
    /// failed event holds back its later ones in the batch; other aggregates'
    /// go on, and those behind the failure in the outbox are published again
    /// with it (the inboxes skip them).
    async fn publish_batch(&self, events: &[Event]) -> (usize, Option<PublishError>) {
        use futures_util::StreamExt as _;
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        let mut lane_of: HashMap<&str, usize> = HashMap::new();
        for (n, event) in events.iter().enumerate() {
            let lane = *lane_of
                .entry(event.aggregate_id.as_str())
                .or_insert_with(|| {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                });
            lanes[lane].push(n);
        }
        let mut outcomes: Vec<Option<Result<(), PublishError>>> =
            (0..events.len()).map(|_| None).collect();
        let mut handed = futures_util::stream::iter(lanes)
            .map(|lane| async move {
                let mut done = Vec::with_capacity(lane.len());
                for n in lane {
                    let outcome = self.hand_out(&events[n]).await;
                    let failed = outcome.is_err();
                    done.push((n, outcome));
                    if failed {
                        break;
                    }
                }
                done
            })
            .buffer_unordered(IN_PROCESS_LANES);
        while let Some(done) = handed.next().await {
            for (n, outcome) in done {
                outcomes[n] = Some(outcome);
            }
        }
        // The publication ends at the first event not handled (one left
        // untried sits behind a failure of its aggregate, earlier in the batch).
        // Until an event is published to all, who gave up on it is
        // remembered: it is handed out again with the batch, not to them.
        for (n, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Some(Ok(())) => self.published(&events[n]),
                Some(Err(e)) => return (n, Some(e)),
                None => {
                    let held = PublishError {
                        kind: events[n].kind.clone(),
                        id: events[n].id,
                        reason: "held back behind a failed event of its aggregate".to_string(),
                    };
                    return (n, Some(held));
                }
            }
        }
        (events.len(), None)
    }

    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.hand_out(event).await?;
        self.published(event);
        Ok(())
    }

    async fn has_consumer(&self, consumer: &str) -> Result<bool, DeliverError> {
        Ok(self
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|s| s.consumer == consumer))
    }

    async fn deliver_to(&self, consumer: &str, event: &Event) -> Result<(), DeliverError> {
        let subscription = self.subscription(consumer, &event.kind)?;
        run_handler(&subscription.handler, event, HANDLER_LIMIT)
            .await
            .map_err(DeliverError::Failed)
    }

    async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        match &self.parking {
            Some(parking) => parking.store.page(after, limit).await,
            None => Ok(Vec::new()),
        }
    }

    async fn redrive(&self, id: u64) -> anyhow::Result<Redrive> {
        let Some(parking) = &self.parking else {
            return Ok(Redrive::NotFound);
        };
        parking
            .store
            .redrive(id, |consumer, event| async move {
                self.deliver_to(&consumer, &event).await
            })
            .await
    }

    fn subscribe_each_node(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>) {
        // One process: every subscription is its own.
        self.subscribe(consumer, kinds, handler);
    }

    fn subscribe(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>) {
        self.subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::new(Subscription {
                consumer: consumer.to_string(),
                kinds: kinds.iter().map(|k| (*k).to_string()).collect(),
                handler,
            }));
    }
}

/// A module's outbox table.
#[derive(Debug)]
pub struct Outbox {
    table: &'static str,
    /// The SQL for this table, written once.
    insert: String,
    waiting: String,
    failed: String,
    wake: Notify,
}

impl Outbox {
    /// The outbox in `table` (e.g. `orders_outbox`).
    pub fn new(table: &'static str) -> Self {
        Self {
            table,
            insert: format!(
                "INSERT INTO {table} \
                 (id, kind, aggregate_id, payload, occurred_at, request_id, traceparent) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
            waiting: format!(
                "SELECT id, kind, aggregate_id, payload, occurred_at, request_id, traceparent \
                 FROM {table} \
                 WHERE published_at IS NULL ORDER BY seq LIMIT $1"
            ),
            failed: format!(
                "UPDATE {table} SET attempts = attempts + 1, last_error = $1 WHERE id = $2"
            ),
            wake: Notify::new(),
        }
    }

    /// Appends `event` in `tx`: it is published if and only if `tx` commits.
    /// Call [`Outbox::notify`] after the commit to publish it at once.
    pub async fn append(
        &self,
        tx: &mut crate::db::WriteTx,
        event: &Event,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(self.insert.as_str()))
            .bind(event.id.to_db())
            .bind(event.kind.clone())
            .bind(event.aggregate_id.clone())
            .bind(event.payload.to_string())
            .bind(event.occurred_at.as_millis())
            .bind(event.request_id.clone())
            .bind(event.traceparent.clone())
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    /// Wakes the relay: something was committed to the outbox.
    pub fn notify(&self) {
        self.wake.notify_one();
    }
}

/// Publishes a module's outbox to the bus, in order, until shutdown.
pub struct Relay {
    db: Database,
    outbox: Arc<Outbox>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
}

/// Rows a relay reads and publishes per round.
const RELAY_BATCH: i64 = 100;
/// How often a relay looks without being woken (events of other processes).
const RELAY_POLL: Duration = Duration::from_millis(500);
/// How long a woken relay waits for more commits before it reads, so that the
/// events of concurrent requests go out in one batch: one read and one
/// transaction marking them, instead of one each (like a producer's linger).
const RELAY_LINGER: Duration = Duration::from_millis(5);

impl Relay {
    /// A relay from `outbox` in `db` to `bus`.
    pub fn new(
        db: Database,
        outbox: Arc<Outbox>,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            db,
            outbox,
            bus,
            clock,
        }
    }

    /// Publishes what waits, round after round, until the signal fires. A failed
    /// publication is retried with a growing pause (up to 30 s).
    pub async fn run(self, shutdown: Shutdown) {
        let mut pause = RELAY_POLL;
        loop {
            let delivered = self.deliver().await;
            let failing = delivered.is_err();
            let wait = match delivered {
                Ok(n) if n as i64 == RELAY_BATCH => Duration::ZERO,
                Ok(_) => {
                    pause = RELAY_POLL;
                    RELAY_POLL
                }
                Err(e) => {
                    tracing::warn!(outbox = self.outbox.table, error = %e, "outbox relay failed; retrying");
                    pause = (pause * 2).min(Duration::from_secs(30));
                    pause
                }
            };
            if failing {
                // After a failure, new events do not cut the pause short: each
                // attempt counts towards parking an event (bus.max_attempts).
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            if wait.is_zero() {
                // A full batch: more are waiting already, so no linger (a
                // wake-up left from those commits would only delay them).
                if shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = self.outbox.wake.notified() => tokio::time::sleep(RELAY_LINGER).await,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes one batch of waiting events, oldest first, and marks those
    /// published; stops at the first failure (later events wait behind it, so
    /// each aggregate's events arrive in order). Returns how many were published.
    pub async fn deliver(&self) -> anyhow::Result<usize> {
        let table = self.outbox.table;
        let rows = sqlx::query(AssertSqlSafe(self.outbox.waiting.as_str()))
            .bind(RELAY_BATCH)
            .fetch_all(self.db.reader())
            .await?;
        let mut events: Vec<Event> = Vec::with_capacity(rows.len());
        let mut unreadable = None;
        for row in &rows {
            match event_from_row(row) {
                Ok(event) => events.push(event),
                Err(e) => {
                    // Counted against the row like a failed publication (and
                    // after the ones before it are published and marked).
                    let id: String = row.try_get(0)?;
                    unreadable = Some((id, format!("unreadable outbox row: {e:#}")));
                    break;
                }
            }
        }
        // With spans exported, one per event, continuing the trace of the
        // request that made it; they end once the event is marked published.
        let _spans: Vec<tracing::Span> = if crate::telemetry::exporting() {
            events
                .iter()
                .filter_map(|event| {
                    let parent = event
                        .traceparent
                        .as_deref()
                        .and_then(agora_kernel::TraceContext::parse);
                    if parent.is_some_and(|p| !p.sampled()) {
                        return None;
                    }
                    let span = tracing::debug_span!(
                        "bus.publish",
                        kind = %event.kind,
                        event_id = %event.id,
                        outbox = table
                    );
                    crate::telemetry::continue_trace(&span, parent);
                    Some(span)
                })
                .collect()
        } else {
            Vec::new()
        };
        let (sent, failed) = self.bus.publish_batch(&events).await;
        let failure = match failed {
            Some(e) => Some((e.id.to_db(), e.to_string())),
            None => unreadable,
        };
        events.truncate(sent);
        let published = events;
        let now = self.clock.now();
        if !published.is_empty() {
            // Marked published and logged together: the log holds each
            // published event once.
            let mut q = crate::db::SqlBuilder::new("UPDATE ");
            q.push(table)
                .push(" SET published_at = ")
                .bind(now.as_millis())?
                .push(" WHERE id IN (");
            q.push_list(published.iter(), |q, event| {
                q.bind(event.id.to_db())?;
                Ok(())
            })?;
            q.push(")");
            let mut tx = self.db.begin().await?;
            q.build().execute(&mut *tx).await?;
            EventLog::append(self.db.backend(), &mut tx, &published, now).await?;
            tx.commit().await?;
            ::metrics::counter!("agora_bus_published_total", "outbox" => table)
                .increment(published.len() as u64);
        }
        if let Some((id, reason)) = failure {
            ::metrics::counter!("agora_bus_publish_failures_total", "outbox" => table).increment(1);
            sqlx::query(AssertSqlSafe(self.outbox.failed.as_str()))
                .bind(reason.clone())
                .bind(id)
                .execute(self.db.writer())
                .await?;
            anyhow::bail!("{table}: {reason}");
        }
        Ok(published.len())
    }
}

/// The outboxes' backlogs, read at each metrics scrape: how many events wait
/// in each, and how long the oldest has waited.
pub struct OutboxBacklog {
    db: Database,
    tables: Vec<&'static str>,
    clock: Arc<dyn Clock>,
}

impl OutboxBacklog {
    /// The backlogs of `outboxes` in `db`.
    pub fn new(db: Database, outboxes: &[&Outbox], clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            tables: outboxes.iter().map(|o| o.table).collect(),
            clock,
        }
    }
}

#[async_trait]
impl crate::metrics::Gauges for OutboxBacklog {
    async fn record(&self) {
        for &table in &self.tables {
            let sql = format!(
                "SELECT COUNT(*), MIN(occurred_at) FROM {table} WHERE published_at IS NULL"
            );
            // The scan reader: a large backlog is counted off the runtime's
            // threads on SQLite, where the gauge's timeout can still cut it.
            let row: Result<(i64, Option<i64>), _> = sqlx::query_as(AssertSqlSafe(sql))
                .fetch_one(self.db.scan_reader())
                .await;
            match row {
                Ok((waiting, oldest)) => {
                    let age_ms = oldest.map_or(0, |at| (self.clock.now().as_millis() - at).max(0));
                    ::metrics::gauge!("agora_outbox_backlog", "outbox" => table)
                        .set(waiting as f64);
                    ::metrics::gauge!("agora_outbox_oldest_age_seconds", "outbox" => table)
                        .set(age_ms as f64 / 1000.0);
                }
                Err(e) => {
                    tracing::warn!(outbox = table, error = %e, "reading an outbox's backlog failed")
                }
            }
        }
    }
}

fn event_from_row(row: &sqlx::any::AnyRow) -> anyhow::Result<Event> {
    let id: String = row.try_get(0)?;
    let payload: String = row.try_get(3)?;
    Ok(Event {
        id: EventId::from_db(&id)?,
        kind: row.try_get(1)?,
        aggregate_id: row.try_get(2)?,
        payload: serde_json::from_str(&payload)?,
        occurred_at: Timestamp::from_millis(row.try_get(4)?),
        request_id: row.try_get(5)?,
        traceparent: row.try_get(6)?,
    })
}

/// A module's inbox table: which events each of its consumers has handled.
#[derive(Debug, Clone, Copy)]
pub struct Inbox {
    table: &'static str,
}

impl Inbox {
    /// The inbox in `table` (e.g. `orders_inbox`).
    pub const fn new(table: &'static str) -> Self {
        Self { table }
    }

    /// Whether `consumer` has handled `event`: for handlers whose work is not
    /// a database transaction (files, mail), which look first, do work that is
    /// harmless to repeat, then record it with [`Inbox::record`].
    pub async fn handled(
        &self,
        db: &Database,
        consumer: &str,
        event: &Event,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "SELECT 1 FROM {} WHERE consumer = $1 AND event_id = $2",
            self.table
        );
        let found: Option<i32> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(consumer.to_string())
            .bind(event.id.to_db())
            .fetch_optional(db.reader())
            .await?;
        Ok(found.is_some())
    }

    /// Records that `consumer` has handled `event`, in one statement of its
    /// own (a record already there is kept).
    pub async fn record(
        &self,
        db: &Database,
        consumer: &str,
        event: &Event,
        now: Timestamp,
    ) -> Result<(), sqlx::Error> {
        self.insert(consumer, event, now)
            .execute(db.writer())
            .await
            .map(drop)
    }

    /// Records in `tx` that `consumer` handles `event`; `false` when it already
    /// had (then skip it, and roll back or commit `tx` unchanged).
    pub async fn first_time(
        &self,
        tx: &mut crate::db::WriteTx,
        consumer: &str,
        event: &Event,
        now: Timestamp,
    ) -> Result<bool, sqlx::Error> {
        let done = self.insert(consumer, event, now).execute(&mut **tx).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Inserts the record that `consumer` handled `event`, unless it is there.
    fn insert(
        &self,
        consumer: &str,
        event: &Event,
        now: Timestamp,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let sql = format!(
            "INSERT INTO {} (consumer, event_id, handled_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, event_id) DO NOTHING",
            self.table
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(consumer.to_string())
            .bind(event.id.to_db())
            .bind(now.as_millis())
    }
}

/// Creates an outbox table `table` in `db` (for tests of relays), with the DDL
/// of the module migrations.
#[cfg(test)]
pub(crate) async fn create_test_outbox(db: &Database, table: &str) -> anyhow::Result<()> {
    let seq = match db.backend() {
        crate::db::Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        crate::db::Backend::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {table} (seq {seq}, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, \
         aggregate_id TEXT NOT NULL, payload TEXT NOT NULL, occurred_at BIGINT NOT NULL, \
         published_at BIGINT, attempts BIGINT NOT NULL DEFAULT 0, last_error TEXT, \
         request_id TEXT, traceparent TEXT)"
    )))
    .execute(db.writer())
    .await?;
    Ok(())
}

/// An event of `kind` about `aggregate` with an empty payload (for tests).
#[cfg(test)]
pub(crate) fn test_event(kind: &str, aggregate: &str) -> Event {
    Event::new(
        kind,
        aggregate,
        &serde_json::json!({}),
        Timestamp::from_millis(1),
    )
    .expect("a JSON payload")
}

/// Handlers for the tests of the buses that run against real servers.
#[cfg(test)]
pub(crate) mod test_handlers {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::{Event, Handler};

    /// Records the events it handled; fails the first `failures` deliveries,
    /// and every delivery of an event about `poison`.
    pub(crate) struct Counting {
        seen: Mutex<Vec<Event>>,
        calls: AtomicUsize,
        failures: usize,
        poison: Option<&'static str>,
    }

    impl Counting {
        pub(crate) fn new(failures: usize) -> Arc<Counting> {
            Arc::new(Counting {
                seen: Mutex::new(Vec::new()),
                calls: AtomicUsize::new(0),
                failures,
                poison: None,
            })
        }

        pub(crate) fn failing_for(poison: &'static str) -> Arc<Counting> {
            Arc::new(Counting {
                seen: Mutex::new(Vec::new()),
                calls: AtomicUsize::new(0),
                failures: 0,
                poison: Some(poison),
            })
        }

        /// The aggregate ids of the events handled, in order.
        pub(crate) fn seen(&self) -> Vec<String> {
            self.events().into_iter().map(|e| e.aggregate_id).collect()
        }

        /// The events handled, in order.
        pub(crate) fn events(&self) -> Vec<Event> {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        /// Deliveries so far, failed or not.
        pub(crate) fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Handler for Counting {
        async fn handle(&self, event: &Event) -> anyhow::Result<()> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call < self.failures || self.poison == Some(event.aggregate_id.as_str()) {
                anyhow::bail!("failing on purpose");
            }
            assert_ne!(event.aggregate_id, "boom", "panicking on purpose");
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event.clone());
            Ok(())
        }
    }

    /// The dead letters of `bus`, once there are at least `count` (or after
    /// 5 s).
    pub(crate) async fn parked(
        bus: &dyn super::Bus,
        count: usize,
    ) -> anyhow::Result<Vec<super::DeadLetter>> {
        for _ in 0..250 {
            let parked = bus.dead_letters(None, 10).await?;
            if parked.len() >= count {
                return Ok(parked);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bus.dead_letters(None, 10).await
    }

    /// Waits up to 10 s for `done` (a broker making its first quorum queues
    /// on a busy machine takes seconds).
    pub(crate) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use agora_kernel::ManualClock;

    use super::*;
    use crate::bus::test_event as event;
    use crate::testing::TestDatabase;

    /// Fails (or panics) while told to; records what it handled.
    #[derive(Default)]
    struct Flaky {
        failing: AtomicBool,
        panicking: AtomicBool,
        calls: std::sync::atomic::AtomicUsize,
        seen: Mutex<Vec<String>>,
    }

    impl Flaky {
        fn failing() -> Arc<Flaky> {
            let flaky = Flaky::default();
            flaky.failing.store(true, Ordering::SeqCst);
            Arc::new(flaky)
        }

        fn seen(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    #[async_trait]
    impl Handler for Flaky {
        async fn handle(&self, event: &Event) -> anyhow::Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert!(
                !self.panicking.load(Ordering::SeqCst),
                "panicking on purpose"
            );
            anyhow::ensure!(!self.failing.load(Ordering::SeqCst), "failing on purpose");
            self.seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(event.aggregate_id.clone());
            Ok(())
        }
    }

    async fn bus_with_dead_letters(
        max_attempts: i64,
    ) -> anyhow::Result<(TestDatabase, InProcessBus)> {
        let test = TestDatabase::new().await?;
        test.db.migrate(&MIGRATIONS).await?;
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
        let bus = InProcessBus::with_dead_letters(test.db.clone(), max_attempts, clock);
        Ok((test, bus))
    }

    /// An event one consumer always fails on is parked for it after its
    /// attempts (the publication then succeeds, so the outbox moves on); the
    /// other consumer handled it once; re-driven after the consumer is fixed,
    /// it is handled and leaves the list.
    #[tokio::test]
    async fn in_process_poison_events_are_parked_and_re_driven() -> anyhow::Result<()> {
        let (_test, bus) = bus_with_dead_letters(3).await?;
        let kind = "orders.order_placed";
        let poisoned = Flaky::failing();
        let healthy = Arc::new(Flaky::default());
        bus.subscribe("poisoned", &[kind], poisoned.clone());
        bus.subscribe("healthy", &[kind], healthy.clone());
        let placed = event(kind, "o1");
        assert!(bus.publish(&placed).await.is_err(), "first attempt");
        assert!(bus.publish(&placed).await.is_err(), "second attempt");
        bus.publish(&placed).await?;
        // Handlers run in subscription order: the healthy one got the event
        // once the poisoned one gave up on it.
        assert_eq!(healthy.seen(), ["o1"]);

        let parked = bus.dead_letters(None, 10).await?;
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(
            (
                parked[0].consumer.as_str(),
                parked[0].attempts,
                parked[0].event.as_ref()
            ),
            ("poisoned", 3, Some(&placed))
        );
        assert!(parked[0].error.contains("failing on purpose"), "{parked:?}");
        assert!(bus.dead_letters(Some(parked[0].id), 10).await?.is_empty());

        // Still failing: it stays, with one attempt more.
        assert!(matches!(
            bus.redrive(parked[0].id).await?,
            Redrive::Failed(_)
        ));
        assert_eq!(bus.dead_letters(None, 10).await?[0].attempts, 4);
        poisoned.failing.store(false, Ordering::SeqCst);
        assert_eq!(bus.redrive(parked[0].id).await?, Redrive::Redriven);
        assert_eq!(poisoned.seen(), ["o1"]);
        assert!(bus.dead_letters(None, 10).await?.is_empty());
        assert_eq!(bus.redrive(parked[0].id).await?, Redrive::NotFound);
        Ok(())
    }

    /// A consumer that gave up on an event is not handed it again when another
    /// consumer's failure makes the relay publish it again: each is tried
    /// `max_attempts` times, and both end parked.
    #[tokio::test]
    async fn a_parked_consumer_is_not_tried_again_for_the_same_event() -> anyhow::Result<()> {
        let (_test, bus) = bus_with_dead_letters(2).await?;
        let (first, second) = (Flaky::failing(), Flaky::failing());
        bus.subscribe("first", &["a.b"], first.clone());
        bus.subscribe("second", &["a.b"], second.clone());
        let x = event("a.b", "x");
        assert!(bus.publish(&x).await.is_err(), "first fails");
        assert!(bus.publish(&x).await.is_err(), "first parked, second fails");
        bus.publish(&x).await?;
        assert_eq!(first.calls.load(Ordering::SeqCst), 2);
        assert_eq!(second.calls.load(Ordering::SeqCst), 2);
        let parked: Vec<String> = bus
            .dead_letters(None, 10)
            .await?
            .into_iter()
            .map(|d| d.consumer)
            .collect();
        assert_eq!(parked, ["first", "second"]);
        Ok(())
    }

    /// A panicking handler is a failed delivery, not the end of the relay that
    /// published.
    #[tokio::test]
    async fn a_panicking_in_process_handler_is_a_failed_delivery() -> anyhow::Result<()> {
        let (_test, bus) = bus_with_dead_letters(2).await?;
        let handler = Arc::new(Flaky::default());
        handler.panicking.store(true, Ordering::SeqCst);
        bus.subscribe("panicky", &["a.b"], handler.clone());
        let x = event("a.b", "x");
        let failed = bus.publish(&x).await;
        assert!(
            failed
                .as_ref()
                .is_err_and(|e| e.reason.contains("panicked")),
            "{failed:?}"
        );
        bus.publish(&x).await?;
        assert_eq!(bus.dead_letters(None, 10).await?.len(), 1);
        Ok(())
    }

    /// Waits, in each delivery, until `width` deliveries are under way.
    struct Gate(tokio::sync::Barrier);

    #[async_trait]
    impl Handler for Gate {
        async fn handle(&self, _event: &Event) -> anyhow::Result<()> {
            self.0.wait().await;
            Ok(())
        }
    }

    /// A batch's aggregates are handed out side by side: four events of four
    /// aggregates to a handler that returns only once four deliveries are
    /// under way (one at a time, the first would wait for ever).
    #[tokio::test]
    async fn an_in_process_batch_hands_its_aggregates_out_side_by_side() -> anyhow::Result<()> {
        let bus = InProcessBus::new();
        bus.subscribe(
            "gate",
            &["a.b"],
            Arc::new(Gate(tokio::sync::Barrier::new(4))),
        );
        let batch: Vec<Event> = ["w", "x", "y", "z"].map(|a| event("a.b", a)).to_vec();
        let (sent, failed) =
            tokio::time::timeout(Duration::from_secs(10), bus.publish_batch(&batch)).await?;
        assert_eq!((sent, failed.map(|e| e.reason)), (4, None));
        Ok(())
    }

    /// Within a batch, one aggregate's events are handled in order, and its
    /// failed event holds back its later ones, not other aggregates': the
    /// batch counts as published up to the failure.
    #[tokio::test]
    async fn an_in_process_batch_keeps_each_aggregates_order() -> anyhow::Result<()> {
        let bus = InProcessBus::new();
        let handler = test_handlers::Counting::new(0);
        bus.subscribe("counting", &["a.b"], handler.clone());
        let batch: Vec<Event> = ["x", "y", "x", "z", "y", "x"]
            .map(|a| event("a.b", a))
            .to_vec();
        assert_eq!(bus.publish_batch(&batch).await.0, 6);
        let ids = |events: Vec<Event>, aggregate: &str| -> Vec<EventId> {
            events
                .into_iter()
                .filter(|e| e.aggregate_id == aggregate)
                .map(|e| e.id)
                .collect()
        };
        for aggregate in ["x", "y", "z"] {
            assert_eq!(
                ids(handler.events(), aggregate),
                ids(batch.clone(), aggregate),
                "{aggregate}"
            );
        }

        let bus = InProcessBus::new();
        let handler = test_handlers::Counting::failing_for("p");
        bus.subscribe("counting", &["a.b"], handler.clone());
        let batch: Vec<Event> = ["x", "p", "y", "p"].map(|a| event("a.b", a)).to_vec();
        let (sent, failed) = bus.publish_batch(&batch).await;
        assert_eq!(sent, 1);
        assert_eq!(failed.map(|e| e.id), Some(batch[1].id));
        let mut seen = handler.seen();
        seen.sort();
        assert_eq!(seen, ["x", "y"]);
        assert_eq!(handler.calls(), 3, "the second p is held back");
        Ok(())
    }

    /// A consumer that gave up on an event in a batch that failed earlier
    /// (another aggregate's event) is not handed it again when the batch is
    /// published again.
    #[tokio::test]
    async fn a_consumer_that_gave_up_in_a_failed_batch_is_not_tried_again() -> anyhow::Result<()> {
        let (_test, bus) = bus_with_dead_letters(3).await?;
        let blocking = test_handlers::Counting::failing_for("a");
        let giving_up = test_handlers::Counting::failing_for("b");
        bus.subscribe("blocking", &["a.b"], blocking.clone());
        bus.subscribe("giving_up", &["a.b"], giving_up.clone());
        let batch = [event("a.b", "a"), event("a.b", "b")];
        // Its last attempt at the second event is the next.
        bus.attempts()
            .failed
            .insert(("giving_up".to_string(), batch[1].id), 2);
        for _ in 0..2 {
            let (sent, failed) = bus.publish_batch(&batch).await;
            assert_eq!((sent, failed.map(|e| e.id)), (0, Some(batch[0].id)));
        }
        assert_eq!(
            giving_up.calls(),
            1,
            "parked in the first round, skipped in the second"
        );
        assert_eq!(bus.dead_letters(None, 10).await?.len(), 1);
        Ok(())
    }

    /// Delivering to one consumer reaches it alone, for a kind it takes.
    #[tokio::test]
    async fn in_process_delivery_to_one_consumer() -> anyhow::Result<()> {
        let bus = InProcessBus::new();
        let (one, two) = (Arc::new(Flaky::default()), Arc::new(Flaky::default()));
        bus.subscribe("one", &["a.b"], one.clone());
        bus.subscribe("two", &["a.b"], two.clone());
        bus.deliver_to("one", &event("a.b", "x")).await?;
        assert_eq!((one.seen(), two.seen()), (vec!["x".to_string()], vec![]));
        assert!(matches!(
            bus.deliver_to("three", &event("a.b", "x")).await,
            Err(DeliverError::UnknownConsumer(_))
        ));
        assert!(matches!(
            bus.deliver_to("one", &event("c.d", "x")).await,
            Err(DeliverError::KindNotSubscribed { .. })
        ));
        assert!(bus.has_consumer("one").await?);
        assert!(!bus.has_consumer("three").await?);
        // Without a dead-letter store the list is empty.
        assert!(bus.dead_letters(None, 10).await?.is_empty());
        Ok(())
    }

    /// What a consumer makes while handling an event continues that event's
    /// trace from a span of its own, and keeps its request id; an event made
    /// outside any request or handler has neither.
    #[tokio::test]
    async fn a_consumers_events_continue_the_trace_of_what_it_handles() -> anyhow::Result<()> {
        struct Follows(std::sync::Mutex<Option<Event>>);
        #[async_trait]
        impl Handler for Follows {
            async fn handle(&self, _: &Event) -> anyhow::Result<()> {
                let made = event("c.d", "y");
                *self
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(made);
                Ok(())
            }
        }
        let outside = event("a.b", "x");
        assert_eq!(
            (
                outside.request_id.as_deref(),
                outside.traceparent.as_deref()
            ),
            (None, None)
        );

        let handler = Arc::new(Follows(std::sync::Mutex::new(None)));
        let caller = agora_kernel::TraceContext::root();
        let handled = Event {
            request_id: Some("req-7".into()),
            traceparent: Some(caller.to_string()),
            ..event("a.b", "x")
        };
        let as_handler: Arc<dyn Handler> = handler.clone();
        // What the handler made while handling `event`.
        let made_handling = async |event: &Event| -> anyhow::Result<Event> {
            run_handler(&as_handler, event, Duration::from_secs(5))
                .await
                .map_err(anyhow::Error::msg)?;
            let made = handler
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            made.ok_or_else(|| anyhow::anyhow!("no event made"))
        };
        let made = made_handling(&handled).await?;
        assert_eq!(made.request_id.as_deref(), Some("req-7"));
        let trace = agora_kernel::TraceContext::parse(made.traceparent.as_deref().unwrap_or(""))
            .expect("a traceparent");
        assert_eq!(trace.trace_id(), caller.trace_id());
        assert_ne!(trace.span_id(), caller.span_id());

        // Without a request id, the trace still continues; the id stays unset.
        let traced_only = Event {
            traceparent: Some(caller.to_string()),
            ..event("a.b", "x")
        };
        let made = made_handling(&traced_only).await?;
        assert_eq!(made.request_id, None);
        assert!(
            made.traceparent
                .is_some_and(|t| t.contains(&caller.trace_id()))
        );
        Ok(())
    }
}
