//! The bus on RabbitMQ (AMQP 0-9-1), the second shared broker beside NATS:
//! the same [`Bus`] contract on a queue-shaped broker.
//!
//! - Every event is published, persistent and with publisher confirms, to one
//!   durable topic exchange (`bus.rabbitmq_exchange`) with its kind as the
//!   routing key (`orders.order_confirmed`) and its id as the message id. A
//!   publication counts only once the broker confirmed it; until then the
//!   outbox row stays.
//! - A consumer is one durable **quorum** queue, `<exchange>.<consumer>`,
//!   bound to each of its kinds and to `_direct.<consumer>` (replays and
//!   re-drives for it alone). Every process subscribing under the name shares
//!   the queue (a work queue). A subscriber handles its queue's messages one
//!   at a time, in order, and acks each after its handler succeeded.
//! - A failure is returned to the queue (at its head: later messages wait)
//!   after a pause that doubles per attempt; the broker counts deliveries
//!   (`x-delivery-count`). After `bus.max_attempts` failed deliveries the
//!   event is parked in the dead letters (the table `bus_dead_letters`, as
//!   the in-process bus does) and acked. A message that is not an event is
//!   rejected at once into the queue `<exchange>.dead` (through the exchange
//!   of that name), kept on the broker for inspection.
//! - `subscribe_each_node` gives each process an exclusive, server-named
//!   queue bound to the kinds, gone when the process disconnects.
//! - The broker's topology (exchanges, queues, bindings) is declared on
//!   connect and on subscribe; publishing waits until this process's
//!   subscriptions are bound, so a consumer's first start misses no event.
//! - While RabbitMQ is unreachable, publishing fails (events wait in the
//!   outboxes) and subscribers try again every second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agora_kernel::Clock;
use async_trait::async_trait;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::task::AbortHandle;

use super::dead::DeadLetterStore;
use super::{
    Bus, DeadLetter, DeliverError, Event, HANDLER_LIMIT, Handler, PublishError, Redrive, Routes,
    run_handler, token,
};
use crate::Database;

/// Messages the broker hands a subscriber before it acked them: one, so
/// that a failed message, returned to the head of the queue, is the next one
/// this process handles (order kept), and a lost connection returns no
/// message that was never tried.
const PREFETCH: u16 = 1;
/// The most waiting for the broker's confirmation of a publication may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// The most connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a publication waits for this process's subscriptions to be bound.
const SETUP_WAIT: Duration = Duration::from_secs(10);

/// Where the bus is and how it treats failures.
#[derive(Debug, Clone)]
pub struct RabbitSettings {
    /// The broker, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// The topic exchange of every event; queues are named after it.
    pub exchange: String,
    /// Failed deliveries of one message to one consumer before it is parked.
    pub max_attempts: i64,
    /// The pause before the first redelivery; it doubles with each attempt, up
    /// to a minute.
    pub retry_pause: Duration,
}

/// The RabbitMQ bus.
pub struct RabbitBus {
    inner: Arc<Inner>,
    subscribers: Mutex<Vec<AbortHandle>>,
    /// Per shared consumer, this process's handlers by kind.
    routes: Mutex<HashMap<String, Arc<Routes>>>,
}

struct Inner {
    settings: RabbitSettings,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// The channel publications go through, in confirm mode.
    publisher: tokio::sync::Mutex<Option<Channel>>,
    /// Subscriptions not yet bound on the broker.
    pending: tokio::sync::watch::Sender<usize>,
    /// Failed deliveries per consumer and event seen by this process: the
    /// count for queues whose broker does not count (a node's own).
    failures: Mutex<HashMap<(String, agora_kernel::EventId), i64>>,
    dead: DeadLetterStore,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("exchange", &self.inner.settings.exchange)
            .finish_non_exhaustive()
    }
}

/// How a subscriber's queue is made.
#[derive(Clone)]
enum QueueSpec {
    /// The durable queue every process of the consumer shares, bound to
    /// what its routes take (again at every start: the queue may have been
    /// deleted).
    Shared {
        queue: String,
        consumer: String,
        routes: Arc<Routes>,
    },
    /// A queue of this process's own, bound to these kinds.
    Node { kinds: Vec<String> },
}

impl RabbitBus {
    /// A bus on the broker at `settings.url`, parking dead letters in `db`.
    /// Does not wait for the broker: while it is down, publishing fails (and
    /// the outboxes wait) and subscribers keep trying.
    pub fn new(settings: RabbitSettings, db: Database, clock: Arc<dyn Clock>) -> RabbitBus {
        RabbitBus {
            inner: Arc::new(Inner {
                settings,
                connection: tokio::sync::Mutex::new(None),
                publisher: tokio::sync::Mutex::new(None),
                pending: tokio::sync::watch::Sender::new(0),
                failures: Mutex::new(HashMap::new()),
                dead: DeadLetterStore::new(db),
                clock,
            }),
            subscribers: Mutex::new(Vec::new()),
            routes: Mutex::new(HashMap::new()),
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task).abort_handle();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }
}

impl Drop for RabbitBus {
    fn drop(&mut self) {
        for subscriber in self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            subscriber.abort();
        }
        // Close the connection, so that the broker hands what this process's
        // consumers held unacknowledged to the others at once.
        if let Ok(mut slot) = self.inner.connection.try_lock()
            && let Some(connection) = slot.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = connection.close(200, "bye".into()).await;
            });
        }
    }
}

impl Inner {
    fn queue(&self, consumer: &str) -> String {
        format!("{}.{}", self.settings.exchange, token(consumer))
    }

    fn direct_key(consumer: &str) -> String {
        format!("_direct.{}", token(consumer))
    }

    fn dead_exchange(&self) -> String {
        format!("{}.dead", self.settings.exchange)
    }

    /// The connection, made (with the exchanges and the dead queue) if there
    /// is none or it was lost.
    async fn connection(&self) -> anyhow::Result<Arc<Connection>> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref()
            && connection.status().connected()
        {
            return Ok(Arc::clone(connection));
        }
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&self.settings.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("RabbitMQ did not answer within {CONNECT_TIMEOUT:?}"))??;
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.settings.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let dead = self.dead_exchange();
        channel
            .exchange_declare(
                dead.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(dead.as_str().into(), durable_queue(), quorum(None))
            .await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dead.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "set up".into()).await;
        let connection = Arc::new(connection);
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.connection().await?.create_channel().await?)
    }

    /// The publishing channel, in confirm mode.
    async fn publisher(&self) -> anyhow::Result<Channel> {
        let mut slot = self.publisher.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Waits until this process's subscriptions are bound (a subscription
    /// made at start-up receives the first events published).
    async fn subscriptions_bound(&self) -> anyhow::Result<()> {
        let mut pending = self.pending.subscribe();
        tokio::time::timeout(SETUP_WAIT, pending.wait_for(|n| *n == 0))
            .await
            .map_err(|_| anyhow::anyhow!("this process's subscriptions are not bound yet"))?
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Publishes `payload` under `routing_key`; the answer is the broker's
    /// confirmation to wait for.
    async fn send(
        &self,
        routing_key: &str,
        event: &Event,
    ) -> anyhow::Result<lapin::PublisherConfirm> {
        self.subscriptions_bound().await?;
        let payload = serde_json::to_vec(event)?;
        let mut headers = FieldTable::default();
        for (name, value) in event.headers() {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_message_id(event.id.to_string().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(event.occurred_at.as_millis() / 1000).unwrap_or(0));
        let channel = self.publisher().await?;
        match channel
            .basic_publish(
                self.settings.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
        {
            Ok(confirm) => Ok(confirm),
            Err(e) => {
                // A channel that failed is made again on the next use.
                self.publisher.lock().await.take();
                Err(e.into())
            }
        }
    }

    /// Declares `queue` and binds it to `keys`.
    async fn bind(&self, queue: &str, keys: &[String]) -> anyhow::Result<()> {
        let channel = self.channel().await?;
        channel
            .queue_declare(
                queue.into(),
                durable_queue(),
                quorum(Some(&self.dead_exchange())),
            )
            .await?;
        for key in keys {
            channel
                .queue_bind(
                    queue.into(),
                    self.settings.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let _ = channel.close(200, "bound".into()).await;
        Ok(())
    }

    /// Binds until it succeeds, then counts the subscription as bound.
    async fn bind_until_done(self: Arc<Self>, queue: String, keys: Vec<String>) {
        loop {
            match self.bind(&queue, &keys).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(queue, error = %e, "binding a RabbitMQ queue failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Receives for `consumer` until aborted, setting itself up again after a
    /// lost connection.
    async fn subscriber(
        self: Arc<Self>,
        consumer: String,
        spec: QueueSpec,
        handler: Arc<dyn Handler>,
    ) {
        let mut bound = false;
        loop {
            if let Err(e) = self.consume(&consumer, &spec, &handler, &mut bound).await {
                tracing::warn!(consumer, error = %e, "bus subscriber stopped; starting again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn consume(
        &self,
        consumer: &str,
        spec: &QueueSpec,
        handler: &Arc<dyn Handler>,
        bound: &mut bool,
    ) -> anyhow::Result<()> {
        let channel = self.channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let queue = match spec {
            QueueSpec::Shared {
                queue,
                consumer,
                routes,
            } => {
                let mut keys = routes.kinds();
                keys.push(Inner::direct_key(consumer));
                self.bind(queue, &keys).await?;
                queue.clone()
            }
            QueueSpec::Node { kinds } => {
                let declared = channel
                    .queue_declare(
                        "".into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let name = declared.name().as_str().to_string();
                for kind in kinds {
                    channel
                        .queue_bind(
                            name.as_str().into(),
                            self.settings.exchange.as_str().into(),
                            kind.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                if !*bound {
                    *bound = true;
                    self.pending.send_modify(|n| *n = n.saturating_sub(1));
                } else {
                    // A queue of this node's own starts now: what was published
                    // while there was none is not coming.
                    handler.resumed().await;
                }
                name
            }
        };
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        while let Some(delivery) = deliveries.next().await {
            self.deliver(consumer, handler, delivery?).await;
        }
        anyhow::bail!("the broker cancelled the consumer")
    }

    /// Hands one message to the handler and answers the broker.
    async fn deliver(
        &self,
        consumer: &str,
        handler: &Arc<dyn Handler>,
        delivery: lapin::message::Delivery,
    ) {
        let max = self.settings.max_attempts;
        let event = match serde_json::from_slice::<Event>(&delivery.data) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(consumer, error = %e, "a message that is not an event; rejected into the dead queue");
                let rejected = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await;
                if let Err(e) = rejected {
                    tracing::warn!(consumer, error = %e, "answering the bus failed; the message comes back");
                }
                return;
            }
        };
        let key = (consumer.to_string(), event.id);
        let seen_failures = self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            .unwrap_or(0);
        let attempts = delivery_count(&delivery.properties).max(seen_failures) + 1;
        super::count_redelivery(consumer, attempts);
        let outcome = if attempts > max {
            // Delivered more often than it was allowed to fail: its handler
            // stopped the process (or the connection) before answering.
            Err(format!(
                "delivered {attempts} times, more than bus.max_attempts, without an answer"
            ))
        } else {
            run_handler(handler, &event, HANDLER_LIMIT).await
        };
        let failures = |failed: bool| {
            let mut all = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if failed {
                all.insert(key.clone(), attempts);
            } else {
                all.remove(&key);
            }
        };
        let answered = match outcome {
            Ok(()) => {
                failures(false);
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            Err(error) if attempts >= max => {
                tracing::error!(consumer, kind = %event.kind, event_id = %event.id, attempts, error, "parking an event the consumer cannot handle");
                super::count_parked(consumer);
                match self
                    .dead
                    .park(consumer, &event, &error, attempts, self.clock.now())
                    .await
                {
                    Ok(()) => {
                        failures(false);
                        delivery.acker.ack(BasicAckOptions::default()).await
                    }
                    Err(e) => {
                        failures(true);
                        tracing::warn!(consumer, error = %e, "parking failed; the message comes back");
                        tokio::time::sleep(super::retry_pause(self.settings.retry_pause, attempts))
                            .await;
                        delivery.acker.nack(requeue()).await
                    }
                }
            }
            Err(error) => {
                failures(true);
                tracing::warn!(consumer, kind = %event.kind, attempts, error, "consumer failed; the message comes back later");
                tokio::time::sleep(super::retry_pause(self.settings.retry_pause, attempts)).await;
                delivery.acker.nack(requeue()).await
            }
        };
        if let Err(e) = answered {
            tracing::warn!(consumer, error = %e, "answering the bus failed; the message comes back");
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// The arguments of a quorum queue (replicated, counting deliveries), whose
/// rejected messages go to `dead_exchange`.
fn quorum(dead_exchange: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dead) = dead_exchange {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dead.into()),
        );
    }
    args
}

/// Failed deliveries before this one, as the broker counts them.
fn delivery_count(properties: &BasicProperties) -> i64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    let key: ShortString = "x-delivery-count".into();
    match headers.inner().get(&key) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Waits for the broker's answer to one publication.
async fn confirmed(confirm: lapin::PublisherConfirm) -> anyhow::Result<()> {
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| anyhow::anyhow!("no confirmation within {CONFIRM_TIMEOUT:?}"))??;
    anyhow::ensure!(confirmation.is_ack(), "the broker refused the message");
    Ok(())
}

#[async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let confirm = self
            .inner
            .send(&event.kind, event)
            .await
            .map_err(|e| PublishError::of(event, format!("{e:#}")))?;
        confirmed(confirm)
            .await
            .map_err(|e| PublishError::of(event, format!("{e:#}")))
    }

    /// Sends the whole batch, then waits for the confirmations in order.
    async fn publish_batch(&self, events: &[Event]) -> (usize, Option<PublishError>) {
        let mut confirms = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in events {
            match self.inner.send(&event.kind, event).await {
                Ok(confirm) => confirms.push((event, confirm)),
                Err(e) => {
                    failure = Some(PublishError::of(event, format!("{e:#}")));
                    break;
                }
            }
        }
        let mut published = 0;
        for (event, confirm) in confirms {
            if let Err(e) = confirmed(confirm).await {
                return (published, Some(PublishError::of(event, format!("{e:#}"))));
            }
            published += 1;
        }
        (published, failure)
    }

    fn subscribe(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>) {
        let queue = self.inner.queue(consumer);
        let routes = {
            let mut all = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            match all.get(consumer) {
                Some(routes) => Arc::clone(routes),
                None => {
                    let routes = Arc::new(Routes::default());
                    all.insert(consumer.to_string(), Arc::clone(&routes));
                    self.spawn(Arc::clone(&self.inner).subscriber(
                        consumer.to_string(),
                        QueueSpec::Shared {
                            queue: queue.clone(),
                            consumer: consumer.to_string(),
                            routes: routes.clone(),
                        },
                        routes.clone(),
                    ));
                    routes
                }
            }
        };
        routes.add(consumer, kinds, handler);
        let mut keys: Vec<String> = kinds.iter().map(|k| (*k).to_string()).collect();
        keys.push(Inner::direct_key(consumer));
        self.inner.pending.send_modify(|n| *n += 1);
        self.spawn(Arc::clone(&self.inner).bind_until_done(queue, keys));
    }

    fn subscribe_each_node(&self, consumer: &str, kinds: &[&str], handler: Arc<dyn Handler>) {
        self.inner.pending.send_modify(|n| *n += 1);
        self.spawn(Arc::clone(&self.inner).subscriber(
            consumer.to_string(),
            QueueSpec::Node {
                kinds: kinds.iter().map(|k| (*k).to_string()).collect(),
            },
            handler,
        ));
    }

    fn retain_for(&self, consumer: &str, kinds: &[&str]) {
        let mut keys: Vec<String> = kinds.iter().map(|k| (*k).to_string()).collect();
        keys.push(Inner::direct_key(consumer));
        self.inner.pending.send_modify(|n| *n += 1);
        self.spawn(Arc::clone(&self.inner).bind_until_done(self.inner.queue(consumer), keys));
    }

    async fn has_consumer(&self, consumer: &str) -> Result<bool, DeliverError> {
        let failed = |e: &dyn std::fmt::Display| DeliverError::Failed(e.to_string());
        // A fresh channel: a passive declare of a missing queue closes it.
        let channel = self.inner.channel().await.map_err(|e| failed(&e))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(
                self.inner.queue(consumer).as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
                Ok(true)
            }
            Err(e) => match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp)
                    if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
                {
                    Ok(false)
                }
                _ => Err(failed(&e)),
            },
        }
    }

    async fn deliver_to(&self, consumer: &str, event: &Event) -> Result<(), DeliverError> {
        if !self.has_consumer(consumer).await? {
            return Err(DeliverError::UnknownConsumer(consumer.to_string()));
        }
        // What this process knows of the consumer's kinds (other processes'
        // subscriptions of the name take the same ones).
        let local = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(consumer)
            .cloned();
        if let Some(routes) = local
            && !routes.takes(&event.kind)
        {
            return Err(DeliverError::KindNotSubscribed {
                consumer: consumer.to_string(),
                kind: event.kind.clone(),
            });
        }
        let failed = |e: anyhow::Error| DeliverError::Failed(format!("{e:#}"));
        let confirm = self
            .inner
            .send(&Inner::direct_key(consumer), event)
            .await
            .map_err(failed)?;
        confirmed(confirm).await.map_err(failed)
    }

    async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        self.inner.dead.page(after, limit).await
    }

    async fn redrive(&self, id: u64) -> anyhow::Result<Redrive> {
        self.inner
            .dead
            .redrive(id, |consumer, event| async move {
                self.deliver_to(&consumer, &event).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use agora_kernel::{ManualClock, Timestamp};
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

    use super::*;
    use crate::bus::test_event as event;
    use crate::bus::test_handlers::{Counting, eventually, parked};
    use crate::testing::TestDatabase;

    /// A bus on the broker named by `AGORA_TEST_RABBITMQ_URL`, on an exchange
    /// of its own, parking in `test`'s database.
    fn test_bus(test: &TestDatabase, exchange: &str) -> RabbitBus {
        let url = std::env::var("AGORA_TEST_RABBITMQ_URL")
            .expect("AGORA_TEST_RABBITMQ_URL names the RabbitMQ broker to test against");
        RabbitBus::new(
            RabbitSettings {
                url,
                exchange: exchange.to_string(),
                max_attempts: 3,
                retry_pause: Duration::from_millis(20),
            },
            test.db.clone(),
            Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000))),
        )
    }

    async fn setup() -> anyhow::Result<(TestDatabase, String)> {
        let test = TestDatabase::new().await?;
        test.db.migrate(&crate::bus::MIGRATIONS).await?;
        Ok((test, format!("test-{}", uuid::Uuid::now_v7().simple())))
    }

    /// Deletes the test's exchanges and queues from the shared broker.
    async fn remove(bus: RabbitBus, consumers: &[&str]) -> anyhow::Result<()> {
        let channel = bus.inner.channel().await?;
        for consumer in consumers {
            channel
                .queue_delete(
                    bus.inner.queue(consumer).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await?;
        }
        let dead = bus.inner.dead_exchange();
        channel
            .queue_delete(dead.as_str().into(), QueueDeleteOptions::default())
            .await?;
        for exchange in [bus.inner.settings.exchange.clone(), dead] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Events reach their subscriber once each, in the order published (a
    /// batch confirmed as a whole); a publication right after subscribing is
    /// not missed.
    #[tokio::test]
    #[ignore = "needs RabbitMQ: set AGORA_TEST_RABBITMQ_URL (see docs/operations.md)"]
    async fn events_arrive_once_and_in_order() -> anyhow::Result<()> {
        let (test, exchange) = setup().await?;
        let bus = test_bus(&test, &exchange);
        let handler = Counting::new(0);
        bus.subscribe("orders", &["orders.order_placed"], handler.clone());
        bus.publish(&event("orders.order_placed", "o1")).await?;
        let batch: Vec<Event> = ["o2", "o3", "o4"]
            .iter()
            .map(|a| event("orders.order_placed", a))
            .collect();
        assert_eq!(bus.publish_batch(&batch).await.0, 3);
        // A kind nobody takes is confirmed and goes nowhere.
        bus.publish(&event("catalog.product_changed", "p1")).await?;
        eventually("four events", || handler.seen().len() == 4).await;
        assert_eq!(handler.seen(), ["o1", "o2", "o3", "o4"]);
        remove(bus, &["orders"]).await
    }

    /// A failed delivery comes back after the pause and is handled; a panic
    /// is a failed delivery, not the end of the subscriber.
    #[tokio::test]
    #[ignore = "needs RabbitMQ: set AGORA_TEST_RABBITMQ_URL (see docs/operations.md)"]
    async fn a_failed_delivery_comes_back() -> anyhow::Result<()> {
        let metrics = crate::metrics::install()?;
        let (test, exchange) = setup().await?;
        let bus = test_bus(&test, &exchange);
        let handler = Counting::new(2);
        bus.subscribe("orders", &["orders.order_placed"], handler.clone());
        bus.publish(&event("orders.order_placed", "boom")).await?;
        bus.publish(&event("orders.order_placed", "o1")).await?;
        eventually("o1 after two failures", || handler.seen() == ["o1"]).await;
        assert!(handler.calls() >= 3, "{}", handler.calls());
        let parked = parked(&bus, 1).await?;
        assert_eq!(parked.len(), 1, "the panicking event was parked");
        let text = metrics.render();
        for series in [
            r#"agora_bus_redeliveries_total{consumer="orders"}"#,
            r#"agora_bus_parked_total{consumer="orders"}"#,
        ] {
            let n = crate::metrics::rendered(&text, series);
            assert!(n.is_some_and(|n| n >= 1.0), "{series}: {n:?}");
        }
        assert_eq!(
            parked[0].event.as_ref().map(|e| e.aggregate_id.as_str()),
            Some("boom")
        );
        remove(bus, &["orders"]).await
    }

    /// An event its consumer always fails on is parked after its attempts,
    /// and the events behind it are delivered; re-driven once the consumer is
    /// fixed, it is handled and leaves the list. A message that is not an
    /// event goes to the dead queue at once. Replays reach the named consumer
    /// alone; an unknown consumer is refused.
    #[tokio::test]
    #[ignore = "needs RabbitMQ: set AGORA_TEST_RABBITMQ_URL (see docs/operations.md)"]
    async fn poison_is_parked_and_re_driven_and_replays_reach_one_consumer() -> anyhow::Result<()> {
        let (test, exchange) = setup().await?;
        let bus = test_bus(&test, &exchange);
        let poisoned = Counting::failing_for("poison");
        let other = Counting::new(0);
        bus.subscribe("orders", &["orders.order_placed"], poisoned.clone());
        bus.subscribe("audit", &["orders.order_placed"], other.clone());
        bus.publish(&event("orders.order_placed", "poison")).await?;
        bus.publish(&event("orders.order_placed", "fine")).await?;
        eventually("the event behind the poison", || {
            poisoned.seen() == ["fine"]
        })
        .await;
        eventually("the other consumer's two", || other.seen().len() == 2).await;
        assert_eq!(other.seen(), ["poison", "fine"]);
        let parked = parked(&bus, 1).await?;
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].consumer, "orders");
        assert_eq!(parked[0].attempts, 3);
        assert!(
            parked[0].error.contains("failing on purpose"),
            "{:?}",
            parked[0]
        );

        // Not an event: straight to the dead queue.
        let channel = bus.inner.publisher().await?;
        confirmed(
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "orders.order_placed".into(),
                    BasicPublishOptions::default(),
                    b"not json",
                    BasicProperties::default(),
                )
                .await?,
        )
        .await?;
        let check = bus.inner.channel().await?;
        let dead = bus.inner.dead_exchange();
        let mut in_dead = 0;
        for _ in 0..250 {
            let queue = check
                .queue_declare(
                    dead.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            in_dead = queue.message_count();
            if in_dead >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(in_dead, 2, "rejected by both consumers");

        // A replay to one consumer: the other does not see it.
        let replayed = event("orders.order_placed", "replayed");
        bus.deliver_to("audit", &replayed).await?;
        eventually("the replay", || other.seen().len() == 3).await;
        assert!(matches!(
            bus.deliver_to("nobody", &replayed).await,
            Err(DeliverError::UnknownConsumer(_))
        ));
        assert!(matches!(
            bus.deliver_to("audit", &event("catalog.product_changed", "p"))
                .await,
            Err(DeliverError::KindNotSubscribed { .. })
        ));
        assert!(bus.has_consumer("orders").await?);
        assert!(!bus.has_consumer("nobody").await?);

        // After the fix (a new process), the re-driven event is handled.
        drop(bus);
        let fixed = test_bus(&test, &exchange);
        let healed = Counting::new(0);
        fixed.subscribe("orders", &["orders.order_placed"], healed.clone());
        fixed.subscribe("audit", &["orders.order_placed"], Counting::new(0));
        assert_eq!(fixed.redrive(parked[0].id).await?, Redrive::Redriven);
        eventually("the re-driven event", || healed.seen() == ["poison"]).await;
        assert!(fixed.dead_letters(None, 10).await?.is_empty());
        assert_eq!(fixed.redrive(parked[0].id).await?, Redrive::NotFound);
        remove(fixed, &["orders", "audit"]).await
    }

    /// Events for a consumer that runs elsewhere (a functions worker) wait in
    /// its queue from the moment a publisher retained it, before the worker
    /// ever ran; the worker then receives them.
    #[tokio::test]
    #[ignore = "needs RabbitMQ: set AGORA_TEST_RABBITMQ_URL (see docs/operations.md)"]
    async fn a_retained_consumer_gets_what_was_published_before_it_ran() -> anyhow::Result<()> {
        let (test, exchange) = setup().await?;
        let server = test_bus(&test, &exchange);
        server.retain_for("worker", &["orders.order_confirmed"]);
        server
            .publish(&event("orders.order_confirmed", "o1"))
            .await?;
        assert!(server.has_consumer("worker").await?);
        let worker = test_bus(&test, &exchange);
        let handler = Counting::new(0);
        worker.subscribe("worker", &["orders.order_confirmed"], handler.clone());
        eventually("the waiting event", || handler.seen() == ["o1"]).await;
        drop(worker);
        remove(server, &["worker"]).await
    }

    /// Processes that subscribe under one name share its events; each node's
    /// own subscription gets every event.
    #[tokio::test]
    #[ignore = "needs RabbitMQ: set AGORA_TEST_RABBITMQ_URL (see docs/operations.md)"]
    async fn shared_consumers_split_events_and_each_node_gets_all() -> anyhow::Result<()> {
        let (test, exchange) = setup().await?;
        let (a, b) = (test_bus(&test, &exchange), test_bus(&test, &exchange));
        let (shared_a, shared_b) = (Counting::new(0), Counting::new(0));
        let (node_a, node_b) = (Counting::new(0), Counting::new(0));
        a.subscribe("orders", &["orders.order_placed"], shared_a.clone());
        b.subscribe("orders", &["orders.order_placed"], shared_b.clone());
        a.subscribe_each_node("cache", &["orders.order_placed"], node_a.clone());
        b.subscribe_each_node("cache", &["orders.order_placed"], node_b.clone());
        // b's own queue is bound before a publishes (a waits for its own).
        b.inner.subscriptions_bound().await?;
        let events: Vec<Event> = (0..20)
            .map(|i| event("orders.order_placed", &format!("o{i}")))
            .collect();
        assert_eq!(a.publish_batch(&events).await.0, 20);
        eventually("every node saw all", || {
            node_a.seen().len() == 20 && node_b.seen().len() == 20
        })
        .await;
        eventually("the shared consumer saw all", || {
            shared_a.seen().len() + shared_b.seen().len() >= 20
        })
        .await;
        // Nothing more comes: each event reached one of the two, once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut all = shared_a.seen();
        all.extend(shared_b.seen());
        assert_eq!(all.len(), 20, "{all:?}");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "no event twice");
        drop(b);
        remove(a, &["orders"]).await
    }
}
