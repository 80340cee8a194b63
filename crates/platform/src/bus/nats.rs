//! The bus on NATS JetStream, for processes that share events: the services
//! shape, or several monoliths behind a load balancer.
//!
//! - Every event goes to one stream (`bus.nats_stream`) under the subject
//!   `<prefix>.<module>.<event>.<partition>`: the event's kind after the
//!   prefix, then the partition of its aggregate (`bus.nats_partitions`, from
//!   a hash of the aggregate id). Its JetStream message id is the event id, so
//!   the server drops a repeat published within the stream's duplicate window
//!   (a relay that crashed between publishing and marking the row).
//! - **Order per aggregate.** A subscription (a consumer name and its kinds)
//!   is one durable pull consumer per partition, shared by every process that
//!   subscribes it: a work queue. Each hands out one message at a time
//!   (`max_ack_pending = 1`), to whichever process asks, and the next only once
//!   it is acknowledged; so the events of one aggregate are handled one after
//!   another, in the order published, across kinds and replicas, while the
//!   partitions run in parallel. A failed message holds its partition back
//!   until it is handled or parked. The server here is NATS 2.9, whose
//!   consumers take one filter subject: the kind's own for a subscription of
//!   one kind, the module's (`<prefix>.<module>.*.<p>`) for kinds of one
//!   module, every event's otherwise; what the filter takes beyond the
//!   subscription's kinds is acknowledged unhandled. A durable's name carries
//!   a digest of its kinds, so a process subscribing the same name to other
//!   kinds (another version, mid-deploy) has feeds of its own and never
//!   acknowledges what the other takes. See ADR 0007.
//! - `subscribe_each_node` instead gives each process one consumer of its own
//!   over every partition, starting at the next event, which the server drops
//!   a minute after the process stops asking (cache invalidation on every
//!   node).
//! - A handler's success acknowledges the message; a failure is redelivered
//!   after a pause that doubles with each attempt; after `bus.max_attempts`
//!   failed deliveries (or at once, for a message that is not an event) the
//!   message is **parked** in the dead-letter stream (`<stream>_DEAD`,
//!   subjects `<prefix>_dead.…`) with the consumer, the error and the attempts
//!   in its headers, and acked, so a poison message never loops (and the
//!   aggregate's later events go on). A handler runs guarded
//!   (`catch_unwind`), bounded by the ack wait: a panic or a hang is a failed
//!   delivery.
//! - Replays and re-drives for one consumer travel on a subject of its own
//!   (`<prefix>._direct.<consumer>`), outside the partitions.
//! - While NATS is unreachable, publishing fails: the relay keeps the outbox
//!   rows and publishes them when it is back. The client reconnects by itself;
//!   subscribers set themselves up again.

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
/// How the events stream records the partitions its processes use.
const PARTITIONS_NOTE: &str = "partitions=";

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
    /// Partitions of every shared consumer: an event goes to the partition of
    /// its aggregate, and each partition hands out one message at a time.
    pub partitions: u32,
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

    /// Where `event` is published: `<prefix>.<kind>.<partition>`.
    fn event_subject(&self, event: &Event) -> String {
        format!(
            "{}.{}.{}",
            self.settings.subject_prefix,
            event.kind,
            partition(&event.aggregate_id, self.settings.partitions)
        )
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
        let mut headers = event_headers(event);
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        self.js
            .publish_with_headers(self.event_subject(event), headers, payload.into())
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
                let described = format!("{PARTITIONS_NOTE}{}", self.settings.partitions);
                let mut events = self
                    .js
                    .get_or_create_stream(stream::Config {
                        name: self.settings.stream.clone(),
                        subjects: vec![format!("{prefix}.>")],
                        duplicate_window: Duration::from_secs(120),
                        description: Some(described.clone()),
                        ..Default::default()
                    })
                    .await?;
                // Processes that split aggregates differently would leave
                // partitions unread: refuse rather than lose events.
                let info = events.info().await?;
                if let Some(theirs) = info.config.description.as_deref()
                    && theirs.starts_with(PARTITIONS_NOTE)
                    && theirs != described
                {
                    anyhow::bail!(
                        "the stream {} was made with {theirs}, but bus.nats_partitions is {}",
                        self.settings.stream,
                        self.settings.partitions
                    );
                }
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

    /// Receives `feed` until aborted, setting itself up again after a lost
    /// connection.
    async fn subscriber(self: Arc<Self>, feed: Feed, handler: Arc<dyn Handler>) {
        let mut first = true;
        loop {
            if let Err(e) = self.consume(&feed, &handler, first).await {
                tracing::warn!(consumer = feed.consumer, filter = feed.filter, error = %e, "bus subscriber stopped; starting again");
            }
            first = false;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Receives `feed` on its durable consumer, shared by every process, or
    /// (`feed.durable` is `None`) on one of this process's own that starts at
    /// the next event and that the server forgets a minute after this process
    /// stops asking.
    async fn consume(
        &self,
        feed: &Feed,
        handler: &Arc<dyn Handler>,
        first: bool,
    ) -> anyhow::Result<()> {
        self.ready().await?;
        let stream = self.js.get_stream(&self.settings.stream).await?;
        let config = pull::Config {
            filter_subject: feed.filter.clone(),
            description: feed.description(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            // One message out at a time: the next is handed out (to whichever
            // process asks) only once this one is answered, so the events of
            // an aggregate are handled in the order they were published.
            // Replays and re-drives (a feed of every kind) are not ordered.
            max_ack_pending: if feed.kinds.is_some() { 1 } else { -1 },
            ..Default::default()
        };
        let pull = match &feed.durable {
            Some(name) => {
                stream
                    .get_or_create_consumer(
                        name,
                        pull::Config {
                            durable_name: Some(name.clone()),
                            ..config
                        },
                    )
                    .await?
            }
            None => {
                stream
                    .create_consumer(pull::Config {
                        deliver_policy: jetstream::consumer::DeliverPolicy::New,
                        inactive_threshold: Duration::from_secs(60),
                        ..config
                    })
                    .await?
            }
        };
        if feed.durable.is_none() && !first {
            // A consumer of this node's own starts at the next event: what was
            // published while there was none is not coming.
            handler.resumed().await;
        }
        let mut messages = pull
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await?;
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => self.deliver(feed, handler, message).await,
                // Reported, but the stream goes on.
                Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                    tracing::debug!(
                        consumer = feed.consumer,
                        filter = feed.filter,
                        "missed a heartbeat from NATS"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Hands one message to the handler and answers the server.
    async fn deliver(&self, feed: &Feed, handler: &Arc<dyn Handler>, message: jetstream::Message) {
        let consumer = feed.consumer.as_str();
        let attempts = message.info().map_or(1, |info| info.delivered);
        super::count_redelivery(consumer, attempts);
        let outcome = match serde_json::from_slice::<Event>(&message.payload) {
            // Its filter is wider than its kinds: not this feed's.
            Ok(event) if !feed.takes(&event.kind) => Ok(()),
            Ok(event) => run_handler(handler, &event, self.settings.ack_wait.mul_f32(0.9))
                .await
                .map_err(|e| (e, attempts >= self.settings.max_attempts)),
            Err(e) => Err((format!("not an event: {e}"), true)),
        };
        let answered = match outcome {
            Ok(()) => message.ack().await,
            Err((error, give_up)) if give_up => {
                tracing::error!(consumer, subject = %message.subject, attempts, error, "parking a message the consumer cannot handle");
                super::count_parked(consumer);
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

/// The subject a feed of `kinds` listens to, in `partition` or in all:
/// the kind's own for one kind, the module's for kinds of one module, and
/// every event's otherwise (the feed skips what it does not take). Kinds
/// are `<module>.<event>`.
fn filter(prefix: &str, kinds: &[String], partition: Option<u32>) -> String {
    let tail = partition.map_or_else(|| "*".to_string(), |p| p.to_string());
    let module = |kind: &String| kind.split('.').next().unwrap_or_default().to_string();
    match kinds {
        [kind] => format!("{prefix}.{kind}.{tail}"),
        [first, rest @ ..] if rest.iter().all(|k| module(k) == module(first)) => {
            format!("{prefix}.{}.*.{tail}", module(first))
        }
        _ => format!("{prefix}.*.*.{tail}"),
    }
}

/// The headers of `event`'s message: its request id and trace context.
fn event_headers(event: &Event) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in event.headers() {
        headers.insert(name, value);
    }
    headers
}

/// Whether `kind` is `<module>.<event>`, two tokens that are safe in a subject
/// (and in a feed's description).
fn is_kind(kind: &str) -> bool {
    let mut tokens = kind.split('.');
    let safe = |t: &str| {
        !t.is_empty()
            && !t.starts_with('_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    matches!((tokens.next(), tokens.next(), tokens.next()), (Some(m), Some(e), None) if safe(m) && safe(e))
}

/// The partition of `aggregate` among `partitions`: the first four bytes of
/// its SHA-256, so every process and version agrees.
fn partition(aggregate: &str, partitions: u32) -> u32 {
    digest32(aggregate) % partitions.max(1)
}

/// The first four bytes of the SHA-256 of `s`.
fn digest32(s: &str) -> u32 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(s.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// What one subscriber task receives: the messages of one consumer on one
/// subject filter.
#[derive(Debug, Clone)]
struct Feed {
    consumer: String,
    /// The JetStream filter subject.
    filter: String,
    /// The durable consumer's name, or `None` for a consumer of this
    /// process's own.
    durable: Option<String>,
    /// The kinds it hands to its handler (what else its filter takes is
    /// acknowledged unhandled); `None`: every kind (its handler routes them).
    kinds: Option<Vec<String>>,
}

/// How a shared feed describes itself on the server, so that any process can
/// tell which kinds a consumer takes: `<consumer>: <kind> <kind> …`.
const DESCRIPTION_SEPARATOR: &str = ": ";

impl Feed {
    fn takes(&self, kind: &str) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }

    fn description(&self) -> Option<String> {
        let kinds = self.kinds.as_ref()?;
        Some(format!(
            "{}{DESCRIPTION_SEPARATOR}{}",
            self.consumer,
            kinds.join(" ")
        ))
    }

    /// The durable name of partition `p` of `consumer`'s feed of `kinds`. The
    /// name carries a digest of the kinds: processes that subscribe the same
    /// name to other kinds (another version, during a rolling deploy) do not
    /// share a feed, so that none acknowledges unhandled what another takes.
    fn durable(consumer: &str, kinds: &[String], p: u32) -> String {
        let digest = digest32(&kinds.join(" "));
        token(&format!("{consumer}_{digest:08x}_p{p}"))
    }
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
        if !self.takes(consumer, &event.kind).await? {
            return Err(DeliverError::KindNotSubscribed {
                consumer: consumer.to_string(),
                kind: event.kind.clone(),
            });
        }
        let payload = serde_json::to_vec(event).map_err(|e| failed(&e))?;
        self.inner
            .js
            .publish_with_headers(
                self.inner.subject(&kind),
                event_headers(event),
                payload.into(),
            )
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
        let mut spawn = |feed: Feed, handler: Arc<dyn Handler>| {
            let task = tokio::spawn(Arc::clone(&self.inner).subscriber(feed, handler));
            subscribers.push(task.abort_handle());
        };
        // Subjects and filters are built from `<module>.<event>`: anything
        // else would never match, so it is refused loudly rather than left
        // waiting for events that cannot come.
        let (mut kinds, refused): (Vec<String>, Vec<String>) = kinds
            .iter()
            .map(|k| (*k).to_string())
            .partition(|k| is_kind(k));
        for kind in refused {
            tracing::error!(
                consumer,
                kind,
                "not subscribed: a kind is <module>.<event>, each of A-Z a-z 0-9 - _"
            );
        }
        if kinds.is_empty() {
            return;
        }
        kinds.sort();
        kinds.dedup();
        let feed = |filter, durable| Feed {
            consumer: consumer.to_string(),
            filter,
            durable,
            kinds: Some(kinds.clone()),
        };
        if !shared {
            // One subscriber for every partition: this process alone handles
            // them, in the stream's order.
            spawn(
                feed(
                    filter(&self.inner.settings.subject_prefix, &kinds, None),
                    None,
                ),
                Arc::clone(handler),
            );
            return;
        }
        for p in 0..self.inner.settings.partitions.max(1) {
            spawn(
                feed(
                    filter(&self.inner.settings.subject_prefix, &kinds, Some(p)),
                    Some(Feed::durable(consumer, &kinds, p)),
                ),
                Arc::clone(handler),
            );
        }
        // Replays and re-drives reach a shared consumer on a subject of its
        // own, for whichever of its kinds they are.
        let mut direct = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
        let routes = direct.entry(consumer.to_string()).or_insert_with(|| {
            let routes = Arc::new(Routes::default());
            let kind = Inner::direct_kind(consumer);
            spawn(
                Feed {
                    consumer: consumer.to_string(),
                    filter: self.inner.subject(&kind),
                    durable: Some(durable_name(consumer, &kind)),
                    kinds: None,
                },
                routes.clone(),
            );
            routes
        });
        let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
        routes.add(consumer, &kinds, Arc::clone(handler));
    }

    /// Whether some process subscribed `consumer` to `kind`: one of the
    /// consumer's feeds on the server says it takes it.
    async fn takes(&self, consumer: &str, kind: &str) -> Result<bool, DeliverError> {
        use futures_util::TryStreamExt as _;
        let failed = |e: &dyn std::fmt::Display| DeliverError::Failed(e.to_string());
        let stream = self.events_stream().await?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.try_next().await.map_err(|e| failed(&e))? {
            let described = info.config.description.unwrap_or_default();
            if let Some((name, kinds)) = described.split_once(DESCRIPTION_SEPARATOR)
                && name == consumer
                && kinds.split(' ').any(|k| k == kind)
            {
                return Ok(true);
            }
        }
        Ok(false)
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
            partitions: 4,
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

    /// The ids of `events`, in order.
    fn ids(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| e.id.to_string()).collect()
    }

    /// The events of one aggregate reach their subscriber in order; a
    /// repeated publication of the same event (a relay that crashed before
    /// marking it) is dropped by the server; other kinds are not delivered.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn events_arrive_once_and_in_order() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let handler = Counting::new(0);
        bus.subscribe("orders-test", &["orders.order_placed"], handler.clone());
        let (first, second) = (
            event("orders.order_placed", "a"),
            event("orders.order_placed", "a"),
        );
        bus.publish(&first).await?;
        bus.publish(&first).await?;
        bus.publish(&event("orders.order_cancelled", "a")).await?;
        bus.publish(&second).await?;
        eventually("two events", || handler.seen().len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ids(&handler.events()), ids(&[first, second]));
        remove(bus).await
    }

    /// A process that splits aggregates into another number of partitions
    /// than the stream was made with refuses the bus instead of leaving
    /// partitions unread.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn another_partition_count_is_refused() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        bus.publish(&event("orders.order_placed", "a")).await?;
        let other = NatsBus::connect(NatsSettings {
            partitions: 8,
            ..bus.inner.settings.clone()
        })
        .await?;
        let refused = other
            .publish(&event("orders.order_placed", "a"))
            .await
            .expect_err("refused");
        assert!(
            refused.to_string().contains("bus.nats_partitions"),
            "{refused}"
        );
        drop(other);
        remove(bus).await
    }

    /// The request id and the trace context travel in the message's headers
    /// (and its body), so tools can follow a message without decoding it.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn the_request_id_and_trace_context_travel_in_headers() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let traceparent = agora_kernel::TraceContext::root().to_string();
        let sent = Event {
            request_id: Some("req-9".into()),
            traceparent: Some(traceparent.clone()),
            ..event("orders.order_placed", "a")
        };
        bus.publish(&sent).await?;
        let stream = bus.events_stream().await?;
        let raw = stream.get_raw_message(1).await?;
        let header = |name: &str| raw.headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(
            header(crate::bus::REQUEST_ID_HEADER).as_deref(),
            Some("req-9")
        );
        assert_eq!(header("traceparent"), Some(traceparent));
        assert_eq!(serde_json::from_slice::<Event>(&raw.payload)?, sent);
        remove(bus).await
    }

    /// A batch is sent whole before its acknowledgements are awaited, and each
    /// aggregate's events arrive in the order sent.
    #[tokio::test]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn a_pipelined_batch_arrives_whole_and_in_order() -> anyhow::Result<()> {
        let bus = test_bus().await?;
        let handler = Counting::new(0);
        bus.subscribe("batch-test", &["orders.order_placed"], handler.clone());
        let events: Vec<Event> = (0..50)
            .map(|n| event("orders.order_placed", &format!("o{}", n % 5)))
            .collect();
        let (sent, failed) = bus.publish_batch(&events).await;
        assert!(failed.is_none(), "{failed:?}");
        assert_eq!(sent, 50);
        eventually("the whole batch", || handler.seen().len() == 50).await;
        assert_in_order_per_aggregate(&events, &handler.events());
        remove(bus).await
    }

    /// Asserts that `handled` holds each of `published` once and, for every
    /// aggregate, in the order published.
    fn assert_in_order_per_aggregate(published: &[Event], handled: &[Event]) {
        let by_aggregate = |events: &[Event]| {
            let mut map: HashMap<String, Vec<String>> = HashMap::new();
            for e in events {
                map.entry(e.aggregate_id.clone())
                    .or_default()
                    .push(e.id.to_string());
            }
            map
        };
        assert_eq!(handled.len(), published.len(), "each event once");
        assert_eq!(by_aggregate(handled), by_aggregate(published));
    }

    /// Fails the first delivery of every event, after a short pause that
    /// varies, then records it: the worst case for order.
    #[derive(Default)]
    struct FailsFirst {
        tried: Mutex<std::collections::HashSet<String>>,
        handled: Mutex<Vec<Event>>,
    }

    #[async_trait]
    impl Handler for FailsFirst {
        async fn handle(&self, event: &Event) -> anyhow::Result<()> {
            let pause = u64::from(event.id.to_string().as_bytes()[20] % 4);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let first = self
                .tried
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(event.id.to_string());
            anyhow::ensure!(!first, "failing the first delivery on purpose");
            self.handled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event.clone());
            Ok(())
        }
    }

    impl FailsFirst {
        fn handled(&self) -> Vec<Event> {
            self.handled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    /// Order per aggregate holds across kinds and across two processes
    /// sharing the consumer, even when every delivery fails once: a failed
    /// event holds its aggregate's later ones back until it is handled. A
    /// kind of the same module that the consumer does not take is not handed
    /// to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a NATS server with JetStream: set AGORA_TEST_NATS_URL and pass --ignored"]
    async fn each_aggregate_is_handled_in_order_across_kinds_and_replicas() -> anyhow::Result<()> {
        let first = test_bus().await?;
        let second = NatsBus::connect(first.inner.settings.clone()).await?;
        let handler = Arc::new(FailsFirst::default());
        let kinds = ["orders.order_placed", "orders.order_confirmed"];
        first.subscribe("order-test", &kinds, handler.clone());
        second.subscribe("order-test", &kinds, handler.clone());
        let mut published = Vec::new();
        for round in 0..6 {
            for aggregate in 0..8 {
                let kind = kinds[round % 2];
                published.push(event(kind, &format!("ord_{aggregate}")));
            }
        }
        let (sent, failed) = first.publish_batch(&published).await;
        assert!(failed.is_none(), "{failed:?}");
        assert_eq!(sent, published.len());
        first
            .publish(&event("orders.order_cancelled", "ord_0"))
            .await?;
        eventually("every event handled", || {
            handler.handled().len() >= published.len()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_in_order_per_aggregate(&published, &handler.handled());
        assert!(first.dead_letters(None, 10).await?.is_empty());
        drop(second);
        remove(first).await
    }

    /// An aggregate's partition is the same in every process and spreads
    /// aggregates over every partition.
    #[test]
    fn partitions_are_stable_and_spread() {
        // Pinned: every process and version must agree.
        assert_eq!(partition("ord_42", 8), 4);
        assert_eq!(partition("anything", 8), 7);
        assert_eq!(partition("anything", 1), 0);
        assert!(is_kind("orders.order_placed"));
        for bad in [
            "orders",
            "a.b.c",
            "a..b",
            "a.b c",
            "_direct.x",
            "a.*",
            "a.>",
        ] {
            assert!(!is_kind(bad), "{bad}");
        }
        let used: std::collections::HashSet<u32> = (0..200)
            .map(|n| partition(&format!("ord_{n}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
    }

    /// A subscription's filter is as narrow as one subject can be.
    #[test]
    fn a_feed_filters_on_the_narrowest_subject() {
        let kinds = |k: &[&str]| k.iter().map(|k| (*k).to_string()).collect::<Vec<_>>();
        let narrowest = |k: &[&str], p| filter("agora", &kinds(k), p);
        assert_eq!(
            narrowest(&["orders.order_placed"], Some(3)),
            "agora.orders.order_placed.3"
        );
        assert_eq!(
            narrowest(&["orders.order_placed", "orders.order_confirmed"], Some(0)),
            "agora.orders.*.0"
        );
        assert_eq!(
            narrowest(&["orders.order_placed", "catalog.product_changed"], None),
            "agora.*.*.*"
        );
        let name = Feed::durable("functions-receipts", &kinds(&["orders.order_confirmed"]), 2);
        assert!(name.starts_with("functions-receipts_"), "{name}");
        assert!(name.ends_with("_p2"), "{name}");
        assert_ne!(
            name,
            Feed::durable(
                "functions-receipts",
                &kinds(&["orders.order_confirmed", "orders.order_placed"]),
                2
            ),
            "other kinds, another durable"
        );
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
        let metrics = crate::metrics::install()?;
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
        let redelivered = crate::metrics::rendered(
            &metrics.render(),
            r#"agora_bus_redeliveries_total{consumer="retry-test"}"#,
        );
        assert!(redelivered.is_some_and(|n| n >= 2.0), "{redelivered:?}");
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
                format!("{}.0", bus.inner.subject("catalog.product_changed")),
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
                partitions: 4,
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
        // The aggregates are in different partitions: no order among them.
        let distinct = || {
            let mut seen = handler.seen();
            seen.sort();
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
