//! The bus on NATS JetStream, for processes that share events: the services
//! shape, or several monoliths behind a load balancer.
//!
//! - Every event goes to one stream (`bus.nats_stream`) under the subject
//!   `<prefix>.<module>.<event>` (the event's kind after the prefix). Its
//!   JetStream message id is the event id, so the server drops a repeat
//!   published within the stream's duplicate window (a relay that crashed
//!   between publishing and marking the row).
//! - A consumer is a durable pull consumer per subscribed kind, named after the
//!   consumer and the kind: every process that subscribes under that name shares
//!   it, as a work queue. `subscribe_each_node` instead gives each process a
//!   consumer of its own, starting at the next event, which the server drops a
//!   minute after the process stops asking (cache invalidation on every node). A subscriber handles one message at a time and acks it
//!   after its handler succeeded; a failure is redelivered after a pause that
//!   doubles with each attempt; after `bus.max_attempts` failed deliveries (or
//!   at once, for a message that is not an event) the message is **parked** in
//!   the dead-letter stream (`<stream>_DEAD`, subjects `<prefix>_dead.…`) with
//!   the consumer, the error and the attempts in its headers, and acked, so a
//!   poison message never loops.
//! - While NATS is unreachable, publishing fails: the relay keeps the outbox
//!   rows and publishes them when it is back. The client reconnects by itself;
//!   subscribers set themselves up again.
//!
//! The server here is NATS 2.9, whose consumers take one filter subject, hence
//! one consumer per kind. A subscriber handles a kind's messages in the
//! stream's order until one fails (a message that comes back later is
//! overtaken by those behind it); several replicas of a consumer share its
//! messages. So handlers must not depend on order (they are idempotent, and
//! state machines refuse illegal transitions). A handler runs guarded
//! (`catch_unwind`), bounded by the ack wait: a panic or a hang is a failed
//! delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt as _;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use super::dead::raw_text;
use super::{
    Bus, DeadLetter, DeliverError, Event, Handler, PublishError, Redrive, Routes, run_handler,
    token,
};

/// Messages a subscriber asks the server for at a time.
const BATCH: usize = 8;

/// Where the bus is and how it treats failures.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream holding every event.
    pub stream: String,
    /// The first token of every subject.
    pub subject_prefix: String,
    /// Failed deliveries of one message to one consumer before it is parked.
    pub max_attempts: i64,
    /// The pause before the first redelivery; it doubles with each attempt, up
    /// to a minute.
    pub retry_pause: Duration,
    /// How long a message handed to a subscriber may go unanswered before the
    /// server gives it to another.
    pub ack_wait: Duration,
}

/// The headers a parked message carries.
pub mod headers {
    /// The consumer that gave up on it.
    pub const CONSUMER: &str = "Agora-Consumer";
    /// The last error.
    pub const ERROR: &str = "Agora-Error";
    /// How many deliveries failed.
    pub const ATTEMPTS: &str = "Agora-Attempts";
    /// The subject it was published under.
    pub const SUBJECT: &str = "Agora-Subject";
}

/// The JetStream bus.
pub struct NatsBus {
    inner: Arc<Inner>,
    subscribers: Mutex<Vec<AbortHandle>>,
    /// Per shared consumer, the handlers of what is delivered to it alone
    /// (replays, re-drives), by kind.
    direct: Mutex<HashMap<String, Arc<Routes>>>,
}

struct Inner {
    js: jetstream::Context,
    settings: NatsSettings,
    /// Set up once the server answered; tried again on each use until then.
    streams: OnceCell<()>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.inner.settings.url)
            .field("stream", &self.inner.settings.stream)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// A bus on the server at `settings.url`. Does not wait for the server: if
    /// it is down, publishing fails (and the outbox waits) until it is up.
    /// Must be called within a Tokio runtime.
    pub async fn connect(settings: NatsSettings) -> anyhow::Result<NatsBus> {
        let client = async_nats::ConnectOptions::new()
            .name("agora")
            .retry_on_initial_connect()
            .connect(settings.url.as_str())
            .await?;
        let bus = NatsBus {
            inner: Arc::new(Inner {
                js: jetstream::new(client),
                settings,
                streams: OnceCell::new(),
            }),
            subscribers: Mutex::new(Vec::new()),
            direct: Mutex::new(HashMap::new()),
        };
        // Set up the streams now if the server answers, without holding up the
        // start: until then events wait in the outboxes.
        let inner = Arc::clone(&bus.inner);
        tokio::spawn(async move {
            if let Err(e) = inner.ready().await {
                tracing::warn!(error = %e, url = %inner.settings.url, "NATS is not ready; events wait in the outboxes until it is");
            }
        });
        Ok(bus)
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for subscriber in self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            subscriber.abort();
        }
    }
}

impl Inner {
    fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.settings.subject_prefix)
    }

    /// Sends `event` with its id as the message id; the answer is the
    /// server's acknowledgement to wait for.
    async fn send(
        &self,
        event: &Event,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, PublishError> {
        self.ready()
            .await
            .map_err(|e| PublishError::of(event, format!("NATS is not ready: {e:#}")))?;
        let payload =
            serde_json::to_vec(event).map_err(|e| PublishError::of(event, e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        if let Some(request_id) = &event.request_id {
            headers.insert(super::REQUEST_ID_HEADER, request_id.as_str());
        }
        self.js
            .publish_with_headers(self.subject(&event.kind), headers, payload.into())
            .await
            .map_err(|e| PublishError::of(event, e.to_string()))
    }

    /// The "kind" under which messages for `consumer` alone travel:
    /// `<prefix>._direct.<consumer>` (no module's name starts with `_`).
    fn direct_kind(consumer: &str) -> String {
        format!("_direct.{}", token(consumer))
    }

    fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.settings.stream)
    }

    /// Creates the streams if they are not there.
    async fn ready(&self) -> anyhow::Result<()> {
        self.streams
            .get_or_try_init(|| async {
                let prefix = &self.settings.subject_prefix;
                self.js
                    .get_or_create_stream(stream::Config {
                        name: self.settings.stream.clone(),
                        subjects: vec![format!("{prefix}.>")],
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await?;
                self.js
                    .get_or_create_stream(stream::Config {
                        name: self.dead_stream(),
                        subjects: vec![format!("{prefix}_dead.>")],
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok(())
            })
            .await
            .map(drop)
    }

    /// Receives `kind` for `consumer` until aborted, setting itself up again
    /// after a lost connection.
    async fn subscriber(
        self: Arc<Self>,
        consumer: String,
        kind: String,
        handler: Arc<dyn Handler>,
        shared: bool,
    ) {
        let mut first = true;
        loop {
            if let Err(e) = self
                .consume(&consumer, &kind, &handler, shared, first)
                .await
            {
                tracing::warn!(consumer, kind, error = %e, "bus subscriber stopped; starting again");
            }
            first = false;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Receives `kind` on a durable consumer shared by every process (`shared`),
    /// or on one of this process's own that starts at the next event and that
    /// the server forgets a minute after this process stops asking.
    async fn consume(
        &self,
        consumer: &str,
        kind: &str,
        handler: &Arc<dyn Handler>,
        shared: bool,
        first: bool,
    ) -> anyhow::Result<()> {
        self.ready().await?;
        let stream = self.js.get_stream(&self.settings.stream).await?;
        let config = pull::Config {
            filter_subject: self.subject(kind),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            ..Default::default()
        };
        let pull = if shared {
            let name = durable_name(consumer, kind);
            stream
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        ..config
                    },
                )
                .await?
        } else {
            stream
                .create_consumer(pull::Config {
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    inactive_threshold: Duration::from_secs(60),
                    ..config
                })
                .await?
        };
        if !shared && !first {
            // A consumer of this node's own starts at the next event: what was
            // published while there was none is not coming.
            handler.resumed().await;
        }
        // Few messages at a time: the server counts `ack_wait` from when it
        // sent a message, and this subscriber handles one at a time.
        let mut messages = pull
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await?;
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => self.deliver(consumer, handler, message).await,
                // Reported, but the stream goes on.
                Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                    tracing::debug!(consumer, kind, "missed a heartbeat from NATS");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Hands one message to the handler and answers the server.
    async fn deliver(
        &self,
        consumer: &str,
        handler: &Arc<dyn Handler>,
        message: jetstream::Message,
    ) {
        let attempts = message.info().map_or(1, |info| info.delivered);
        let outcome = match serde_json::from_slice::<Event>(&message.payload) {
            Ok(event) => run_handler(handler, &event, self.settings.ack_wait.mul_f32(0.9))
                .await
                .map_err(|e| (e, attempts >= self.settings.max_attempts)),
            Err(e) => Err((format!("not an event: {e}"), true)),
        };
        let answered = match outcome {
            Ok(()) => message.ack().await,
            Err((error, give_up)) if give_up => {
                tracing::error!(consumer, subject = %message.subject, attempts, error, "parking a message the consumer cannot handle");
                match self.park(consumer, &message, &error, attempts).await {
                    Ok(()) => message.ack().await,
                    // Not parked: let it come back.
                    Err(e) => message
                        .ack_with(AckKind::Nak(Some(super::retry_pause(
                            self.settings.retry_pause,
                            attempts,
                        ))))
                        .await
                        .map_err(|_| e),
                }
            }
            Err((error, _)) => {
                tracing::warn!(consumer, subject = %message.subject, attempts, error, "consumer failed; the message comes back later");
                message
                    .ack_with(AckKind::Nak(Some(super::retry_pause(
                        self.settings.retry_pause,
                        attempts,
                    ))))
                    .await
            }
        };
        if let Err(e) = answered {
            tracing::warn!(consumer, error = %e, "answering the bus failed; the message comes back");
        }
    }

    /// Copies `message` into the dead-letter stream.
    async fn park(
        &self,
        consumer: &str,
        message: &jetstream::Message,
        error: &str,
        attempts: i64,
    ) -> Result<(), async_nats::Error> {
        let mut parked = HeaderMap::new();
        if let Ok(info) = message.info() {
            // Parking the same message again (after a failed ack) is dropped.
            let id = format!("{consumer}:{}", info.stream_sequence);
            parked.insert("Nats-Msg-Id", id.as_str());
        }
        parked.insert(headers::CONSUMER, consumer);
        // Header values are one line.
        parked.insert(headers::ERROR, error.replace(['\r', '\n'], " ").as_str());
        parked.insert(headers::ATTEMPTS, attempts.to_string().as_str());
        parked.insert(headers::SUBJECT, message.subject.as_str());
        let subject = format!("{}_dead.{}", self.settings.subject_prefix, token(consumer));
        self.js
            .publish_with_headers(subject, parked, message.payload.clone())
            .await?
            .await?;
        Ok(())
    }
}

/// A durable consumer's name: `<consumer>_<kind>` with the characters NATS
/// does not allow in names replaced.
fn durable_name(consumer: &str, kind: &str) -> String {
    token(&format!("{consumer}_{kind}"))
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let ack = self.inner.send(event).await?;
        ack.await
            .map_err(|e| PublishError::of(event, e.to_string()))?;
        Ok(())
    }

    /// Sends the whole batch, then waits for the acknowledgements, in order:
    /// one round trip's wait for all of them instead of one each. The server
    /// stores them in the order sent on the connection.
    async fn publish_batch(&self, events: &[Event]) -> (usize, Option<PublishError>) {
        let mut acks = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in events {
            match self.inner.send(event).await {
                Ok(ack) => acks.push((event, ack)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut published = 0;
        for (event, ack) in acks {
            if let Err(e) = ack.await {
                return (published, Some(PublishError::of(event, e.to_string())));
            }
            published += 1;
        }
        (published, failure)
    }

    fn subscribe(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>) {
        self.start(consumer, kinds, &handler, true);
    }

    fn subscribe_each_node(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>) {
        self.start(consumer, kinds, &handler, false);
    }

    async fn has_consumer(&self, consumer: &str) -> Result<bool, DeliverError> {
        // Some process subscribed it: its consumer for direct messages exists.
        let direct = durable_name(consumer, &Inner::direct_kind(consumer));
        consumer_exists(&self.events_stream().await?, &direct).await
    }

    async fn deliver_to(&self, consumer: &str, event: &Event) -> Result<(), DeliverError> {
        let failed = |e: &dyn std::fmt::Display| DeliverError::Failed(e.to_string());
        if !self.has_consumer(consumer).await? {
            return Err(DeliverError::UnknownConsumer(consumer.to_string()));
        }
        let kind = Inner::direct_kind(consumer);
        // It takes the event's kind if it has a consumer for it.
        let stream = self.events_stream().await?;
        if !consumer_exists(&stream, &durable_name(consumer, &event.kind)).await? {
            return Err(DeliverError::KindNotSubscribed {
                consumer: consumer.to_string(),
                kind: event.kind.clone(),
            });
        }
        let payload = serde_json::to_vec(event).map_err(|e| failed(&e))?;
        self.inner
            .js
            .publish(self.inner.subject(&kind), payload.into())
            .await
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        self.inner.ready().await?;
        let stream = self.inner.js.get_stream(self.inner.dead_stream()).await?;
        let info = stream.get_info().await?;
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return Ok(out);
        }
        let mut seq = after
            .map_or(0, |a| a.saturating_add(1))
            .max(info.state.first_sequence);
        while out.len() < limit && seq <= info.state.last_sequence {
            // Re-driven ones are deleted: their sequences are gaps.
            match stream.get_raw_message(seq).await {
                Ok(raw) => out.push(dead_letter(&raw)),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(e.into()),
            }
            seq += 1;
        }
        Ok(out)
    }

    async fn redrive(&self, id: u64) -> anyhow::Result<Redrive> {
        self.inner.ready().await?;
        let stream = self
            .inner
            .js
            .get_stream_no_info(self.inner.dead_stream())
            .await?;
        let raw = match stream.get_raw_message(id).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                return Ok(Redrive::NotFound);
            }
            Err(e) => return Err(e.into()),
        };
        let letter = dead_letter(&raw);
        let Some(event) = &letter.event else {
            return Ok(Redrive::Failed("the message is not an event".into()));
        };
        match self.deliver_to(&letter.consumer, event).await {
            Ok(()) => {
                // Queued for the consumer. A failure to delete leaves a copy
                // (that its inbox skips if re-driven again): say so.
                if let Err(e) = stream.delete_message(id).await {
                    return Ok(Redrive::Failed(format!(
                        "delivered again, but not removed from the list: {e}"
                    )));
                }
                Ok(Redrive::Redriven)
            }
            Err(e) => Ok(Redrive::Failed(e.to_string())),
        }
    }
}

/// Whether the stream has the consumer `name`; an error other than "not
/// found" (the server not answering) is a failed delivery.
async fn consumer_exists(
    stream: &jetstream::stream::Stream<()>,
    name: &str,
) -> Result<bool, DeliverError> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    match stream.consumer_info(name).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(false),
        Err(e) => Err(DeliverError::Failed(e.to_string())),
    }
}

impl NatsBus {
    /// The stream of events, without asking the server about it.
    async fn events_stream(&self) -> Result<jetstream::stream::Stream<()>, DeliverError> {
        let failed = |e: &dyn std::fmt::Display| DeliverError::Failed(e.to_string());
        self.inner.ready().await.map_err(|e| failed(&e))?;
        self.inner
            .js
            .get_stream_no_info(&self.inner.settings.stream)
            .await
            .map_err(|e| failed(&e))
    }
}

/// A parked message as a dead letter.
fn dead_letter(raw: &async_nats::jetstream::message::StreamMessage) -> DeadLetter {
    let header = |name: &str| {
        raw.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let event: Option<Event> = serde_json::from_slice(&raw.payload).ok();
    let millis = raw.time.unix_timestamp_nanos() / 1_000_000;
    DeadLetter {
        id: raw.sequence,
        consumer: header(headers::CONSUMER),
        raw: event.is_none().then(|| raw_text(&raw.payload)),
        event,
        error: header(headers::ERROR),
        attempts: header(headers::ATTEMPTS).parse().unwrap_or(0),
        parked_at: agora_kernel::Timestamp::from_millis(i64::try_from(millis).unwrap_or(0)),
    }
}

impl NatsBus {
    fn start(&self, consumer: &str, kinds: &[&str], handler: &Arc<dyn Handler>, shared: bool) {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut spawn = |kind: String, handler: Arc<dyn Handler>| {
            let task = tokio::spawn(Arc::clone(&self.inner).subscriber(
                consumer.to_string(),
                kind,
                handler,
                shared,
            ));
            subscribers.push(task.abort_handle());
        };
        for kind in kinds {
            spawn((*kind).to_string(), Arc::clone(handler));
        }
        if shared {
            // Replays and re-drives reach a shared consumer on a subject of its
            // own, for whichever of its kinds they are.
            let mut direct = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
            let routes = direct.entry(consumer.to_string()).or_insert_with(|| {
                let routes = Arc::new(Routes::default());
                spawn(Inner::direct_kind(consumer), routes.clone());
                routes
            });
            routes.add(consumer, kinds, Arc::clone(handler));
        }
    }
}

#[cfg(test)]
mod tests {
    use agora_kernel::Timestamp;

    use super::*;
    use crate::bus::test_event as event;
    use crate::bus::test_handlers::{Counting, eventually, parked};

    /// A bus on the server named by `AGORA_TEST_NATS_URL`, in streams of its
    /// own, with short pauses.
    async fn test_bus() -> anyhow::Result<NatsBus> {
        let url = std::env::var("AGORA_TEST_NATS_URL")
            .expect("AGORA_TEST_NATS_URL names the NATS server to test against");
        let unique = uuid::Uuid::now_v7().simple().to_string();
        NatsBus::connect(NatsSettings {
            url,
            stream: format!("TEST_{unique}"),
            subject_prefix: format!("t{unique}"),
            max_attempts: 3,
            retry_pause: Duration::from_millis(20),
            ack_wait: Duration::from_secs(5),
        })
        .await
    }

    /// Deletes the test's streams from the shared server.
    async fn remove(bus: NatsBus) -> anyhow::Result<()> {
        let js = bus.inner.js.clone();
        let (stream, dead) = (bus.inner.settings.stream.clone(), bus.inner.dead_stream());
        drop(bus);
        js.delete_stream(&stream).await?;
        js.delete_stream(&dead).await?;
        Ok(())
    }

    /// Events reach their subscriber in order; a repeated publication of the
    /// same event (a relay that crashed before marking it) is dropped by the
    /// server; other kinds are not delivered.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn events_arrive_once_and_in_order() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let handler = Counting::new(0);
        bus.subscribe("orders-test", &["orders.order_placed"], handler.clone());
        let first = event("orders.order_placed", "a");
        bus.publish(&first).await?;
        bus.publish(&first).await?;
        bus.publish(&event("orders.order_cancelled", "x")).await?;
        bus.publish(&event("orders.order_placed", "b")).await?;
        eventually("two events", || handler.seen().len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(handler.seen(), ["a", "b"]);
        remove(bus).await
    }

    /// A batch is sent whole before its acknowledgements are awaited, and
    /// arrives in the order sent.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn a_pipelined_batch_arrives_whole_and_in_order() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let handler = Counting::new(0);
        bus.subscribe("batch-test", &["orders.order_placed"], handler.clone());
        let names: Vec<String> = (0..50).map(|n| format!("e{n:02}")).collect();
        let events: Vec<Event> = names
            .iter()
            .map(|n| event("orders.order_placed", n))
            .collect();
        let (sent, failed) = bus.publish_batch(&events).await;
        assert!(failed.is_none(), "{failed:?}");
        assert_eq!(sent, 50);
        eventually("the whole batch", || handler.seen().len() == 50).await;
        assert_eq!(handler.seen(), names);
        remove(bus).await
    }

    /// Work queue and broadcast: two processes subscribed under one name share
    /// the events (each handled once in all), while each of them also gets
    /// every event on its own per-node subscription.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn shared_consumers_split_events_and_each_node_gets_all() -> anyhow::Result<()> {
        let first = test_bus().await?;
        let second = NatsBus::connect(first.inner.settings.clone()).await?;
        let (shared_a, shared_b) = (Counting::new(0), Counting::new(0));
        let (node_a, node_b) = (Counting::new(0), Counting::new(0));
        let kind = "catalog.product_changed";
        first.subscribe("shared-test", &[kind], shared_a.clone());
        second.subscribe("shared-test", &[kind], shared_b.clone());
        first.subscribe_each_node("cache-test", &[kind], node_a.clone());
        second.subscribe_each_node("cache-test", &[kind], node_b.clone());
        // Each node's consumer starts at the next event: let them be made.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for n in 0..20 {
            first.publish(&event(kind, &format!("p{n}"))).await?;
        }
        eventually(
            "every event on both nodes, once in the shared consumer",
            || {
                node_a.seen().len() == 20
                    && node_b.seen().len() == 20
                    && shared_a.seen().len() + shared_b.seen().len() == 20
            },
        )
        .await;
        let mut shared: Vec<String> = shared_a.seen();
        shared.extend(shared_b.seen());
        shared.sort();
        shared.dedup();
        assert_eq!(shared.len(), 20);
        drop(second);
        remove(first).await
    }

    /// A handler that panics is a failed delivery, not the end of the
    /// subscriber: the message is parked after its attempts, and the next one
    /// is handled.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn a_panicking_handler_does_not_stop_its_subscriber() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let handler = Counting::new(0);
        bus.subscribe("panic-test", &["orders.order_placed"], handler.clone());
        bus.publish(&event("orders.order_placed", "boom")).await?;
        bus.publish(&event("orders.order_placed", "after")).await?;
        eventually("the message behind", || handler.seen() == ["after"]).await;
        let parked = parked(&bus, 1).await?;
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(parked[0].attempts, 3);
        assert!(parked[0].error.contains("panicked"), "{parked:?}");
        remove(bus).await
    }

    /// A failing handler gets the message again after a pause, and succeeds.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn a_failed_delivery_comes_back() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let handler = Counting::new(2);
        bus.subscribe(
            "retry-test",
            &["payments.payment_refunded"],
            handler.clone(),
        );
        bus.publish(&event("payments.payment_refunded", "p"))
            .await?;
        eventually("the third attempt", || handler.seen() == ["p"]).await;
        assert_eq!(handler.calls(), 3);
        assert!(bus.dead_letters(None, 10).await?.is_empty());
        remove(bus).await
    }

    /// A message that always fails, and one that is not an event at all, end in
    /// the dead-letter stream after their attempts, not in a loop; the messages
    /// behind them are still delivered.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn poison_messages_are_parked() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let handler = Counting::failing_for("poison");
        bus.subscribe("poison-test", &["catalog.product_changed"], handler.clone());
        bus.publish(&event("catalog.product_changed", "poison"))
            .await?;
        bus.inner
            .js
            .publish(
                bus.inner.subject("catalog.product_changed"),
                "{not json".into(),
            )
            .await?
            .await?;
        bus.publish(&event("catalog.product_changed", "fine"))
            .await?;
        eventually("the message behind", || handler.seen() == ["fine"]).await;
        let mut parked = parked(&bus, 2).await?;
        parked.sort_by_key(|p| p.attempts);
        assert_eq!(parked.len(), 2, "{parked:?}");
        // The message that is not an event is parked at once.
        assert_eq!(parked[0].consumer, "poison-test");
        assert_eq!(parked[0].attempts, 1);
        assert!(parked[0].error.starts_with("not an event"), "{parked:?}");
        assert_eq!(parked[0].raw.as_deref(), Some("{not json"));
        assert_eq!(parked[0].event, None);
        // The event that always fails, after its three attempts.
        assert_eq!(parked[1].attempts, 3);
        assert!(parked[1].error.contains("failing on purpose"), "{parked:?}");
        let poison = parked[1].event.as_ref().expect("an event");
        assert_eq!(poison.aggregate_id, "poison");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Three failed calls for the poison, one for the fine event; no more.
        assert_eq!(handler.calls(), 4);
        remove(bus).await
    }

    /// A parked event re-driven once its consumer can handle it is handled and
    /// leaves the list; a message that is not an event cannot be re-driven; an
    /// event delivered to one consumer alone reaches it and no other.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn dead_letters_are_re_driven_and_events_delivered_to_one_consumer() -> anyhow::Result<()>
    {
        let bus = test_bus().await?;
        let kind = "payments.payment_refunded";
        // Fails its first three calls: the event is parked after them.
        let handler = Counting::new(3);
        let other = Counting::new(0);
        bus.subscribe("redrive-test", &[kind], handler.clone());
        bus.subscribe("other-test", &[kind], other.clone());
        let refunded = event(kind, "p");
        bus.publish(&refunded).await?;
        let parked = parked(&bus, 1).await?;
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(parked[0].event.as_ref(), Some(&refunded));
        assert_eq!(bus.redrive(parked[0].id).await?, Redrive::Redriven);
        eventually("the re-driven event", || handler.seen() == ["p"]).await;
        assert!(bus.dead_letters(None, 10).await?.is_empty());
        assert_eq!(bus.redrive(parked[0].id).await?, Redrive::NotFound);

        bus.deliver_to("redrive-test", &event(kind, "again"))
            .await?;
        eventually("the delivered event", || handler.seen() == ["p", "again"]).await;
        assert!(matches!(
            bus.deliver_to("nobody", &refunded).await,
            Err(DeliverError::UnknownConsumer(_))
        ));
        assert!(bus.has_consumer("redrive-test").await?);
        assert!(!bus.has_consumer("nobody").await?);
        assert!(matches!(
            bus.deliver_to("redrive-test", &event("orders.order_placed", "x"))
                .await,
            Err(DeliverError::KindNotSubscribed { .. })
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            other.seen(),
            ["p"],
            "the other consumer got the publication only"
        );
        remove(bus).await
    }

    /// A NATS server of the test's own (the binary `AGORA_TEST_NATS_SERVER`
    /// names), on `port`, storing in `dir`: killed when dropped.
    struct PrivateServer(std::process::Child);

    impl PrivateServer {
        async fn start(port: u16, dir: &std::path::Path) -> anyhow::Result<PrivateServer> {
            let binary = std::env::var("AGORA_TEST_NATS_SERVER")
                .expect("AGORA_TEST_NATS_SERVER names the nats-server binary");
            let child = std::process::Command::new(binary)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            let server = PrivateServer(child);
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Ok(server);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            anyhow::bail!("the private NATS server did not start on port {port}")
        }
    }

    impl Drop for PrivateServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// NATS down and back: while it is down the relay's publications fail and
    /// the events wait in the outbox; once it is back the relay publishes them
    /// and the subscriber, set up again by itself, handles every one: nothing
    /// is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the nats-server binary: set AGORA_TEST_NATS_SERVER and pass --ignored"]
    async fn events_wait_in_the_outbox_while_nats_is_down() -> anyhow::Result<()> {
        use agora_kernel::ManualClock;

        use crate::bus::{Outbox, Relay};
        use crate::testing::TestDatabase;

        let store = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let server = PrivateServer::start(port, store.path()).await?;
        let bus = Arc::new(
            NatsBus::connect(NatsSettings {
                url: format!("nats://127.0.0.1:{port}"),
                stream: "DOWN_TEST".into(),
                subject_prefix: "down".into(),
                max_attempts: 3,
                retry_pause: Duration::from_millis(20),
                ack_wait: Duration::from_secs(5),
            })
            .await?,
        );
        let handler = Counting::new(0);
        let kind = "orders.order_placed";
        bus.subscribe("down-test", &[kind], handler.clone());

        let test = TestDatabase::new().await?;
        test.db.migrate(&crate::bus::MIGRATIONS).await?;
        crate::bus::create_test_outbox(&test.db, "down_outbox").await?;
        let outbox = Arc::new(Outbox::new("down_outbox"));
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1)));
        let relay = Relay::new(test.db.clone(), outbox.clone(), bus.clone(), clock);
        let append = async |aggregate: &str| -> anyhow::Result<()> {
            let mut tx = test.db.begin().await?;
            outbox.append(&mut tx, &event(kind, aggregate)).await?;
            tx.commit().await?;
            Ok(())
        };

        append("before").await?;
        assert_eq!(relay.deliver().await?, 1);
        eventually("the first event", || handler.seen() == ["before"]).await;

        drop(server);
        for n in 0..3 {
            append(&format!("during-{n}")).await?;
        }
        assert!(
            relay.deliver().await.is_err(),
            "publishing fails while NATS is down"
        );
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM down_outbox WHERE published_at IS NULL")
                .fetch_one(test.db.reader())
                .await?;
        assert_eq!(waiting, 3, "the events wait in the outbox");

        let _server = PrivateServer::start(port, store.path()).await?;
        let mut published = 0;
        for _ in 0..60 {
            if let Ok(n) = relay.deliver().await {
                published += n;
            }
            if published == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(published, 3, "published once NATS is back");
        // At least once: the server, killed, may not have stored the ack of
        // the first event and deliver it again (the inboxes skip it).
        let distinct = || {
            let mut seen = handler.seen();
            seen.dedup();
            seen
        };
        for _ in 0..120 {
            if distinct().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(
            distinct(),
            ["before", "during-0", "during-1", "during-2"],
            "every event handled"
        );
        Ok(())
    }
}
