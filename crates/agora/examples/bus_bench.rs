//! Events per second through a bus, publisher to handler, as the outbox relays
//! use it: `publish` awaited (the relay marks a row published only after), with
//! `IN_FLIGHT` publications at once, to a subscriber that counts.
//!
//! Usage: `bus_bench in-process COUNT IN_FLIGHT`,
//! `bus_bench nats://127.0.0.1:4222 COUNT IN_FLIGHT` (a stream of its own,
//! deleted afterwards) or `bus_bench amqp://guest:guest@127.0.0.1:5672/%2f
//! COUNT IN_FLIGHT` (RabbitMQ: an exchange and queues of its own, deleted
//! afterwards). `IN_FLIGHT` = `relay` publishes as an outbox relay
//! does: batches of 100 with `publish_batch`, one batch after another.
//!
//! Prints the publication rate (all publications acknowledged) and the end to
//! end rate (all events handled). Bounded: COUNT events, loopback only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_kernel::Timestamp;
use agora_platform::bus::nats::{NatsBus, NatsSettings};
use agora_platform::bus::rabbit::{RabbitBus, RabbitSettings};
use agora_platform::bus::{Bus, Event, Handler, InProcessBus};
use async_trait::async_trait;
use futures_util::StreamExt as _;

struct Count(AtomicU64);

#[async_trait]
impl Handler for Count {
    async fn handle(&self, _event: &Event) -> anyhow::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(count), Some(in_flight)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!(
            "usage: bus_bench in-process|nats://HOST:PORT|amqp://USER:PASS@HOST:PORT/%2f COUNT IN_FLIGHT"
        );
    };
    let count: u64 = count.parse()?;
    let relay = in_flight == "relay";
    let in_flight: usize = if relay { 1 } else { in_flight.parse()? };
    anyhow::ensure!(
        (1..=10_000_000).contains(&count) && (1..=4096).contains(&in_flight),
        "COUNT must be 1..=10000000 and IN_FLIGHT 1..=4096"
    );
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let rabbit = target.starts_with("amqp://");
    // The RabbitMQ bus parks dead letters in a database: a scratch one.
    let scratch = if rabbit {
        let test = agora_platform::testing::TestDatabase::new().await?;
        test.db.migrate(&agora_platform::bus::MIGRATIONS).await?;
        Some(test)
    } else {
        None
    };
    let exchange = format!("bench-{unique}");
    let bus: Arc<dyn Bus> = if target == "in-process" {
        Arc::new(InProcessBus::new())
    } else if let Some(test) = &scratch {
        Arc::new(RabbitBus::new(
            RabbitSettings {
                url: target.clone(),
                exchange: exchange.clone(),
                max_attempts: 5,
                retry_pause: Duration::from_millis(100),
            },
            test.db.clone(),
            Arc::new(agora_kernel::SystemClock),
        ))
    } else {
        Arc::new(
            NatsBus::connect(NatsSettings {
                url: target.clone(),
                stream: format!("BENCH_{unique}"),
                subject_prefix: format!("bench{unique}"),
                max_attempts: 5,
                retry_pause: Duration::from_millis(100),
                ack_wait: Duration::from_secs(30),
                // As configured by default.
                partitions: agora_platform::config::BusConfig::default().nats_partitions,
            })
            .await?,
        )
    };
    let handled = Arc::new(Count(AtomicU64::new(0)));
    bus.subscribe("bench", &["bench.event"], handled.clone());
    // Let the subscriber set itself up before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let payload = serde_json::json!({ "order_id": "ord_0000", "total": { "amount": 1999, "currency": "USD" } });
    let started = Instant::now();
    let published = if relay {
        let mut published = 0_u64;
        let mut n = 0_u64;
        while n < count {
            let batch = (n..count.min(n + 100))
                .map(|i| Event::new("bench.event", i, &payload, Timestamp::from_millis(0)))
                .collect::<Result<Vec<_>, _>>()?;
            n += batch.len() as u64;
            let (sent, failed) = bus.publish_batch(&batch).await;
            if let Some(e) = failed {
                anyhow::bail!("{e}");
            }
            published += sent as u64;
        }
        published
    } else {
        futures_util::stream::iter(0..count)
            .map(|n| {
                let bus = Arc::clone(&bus);
                let payload = payload.clone();
                async move {
                    let event = Event::new("bench.event", n, &payload, Timestamp::from_millis(0))?;
                    bus.publish(&event).await.map_err(anyhow::Error::from)
                }
            })
            .buffer_unordered(in_flight)
            .fold(Ok(0_u64), |acc: anyhow::Result<u64>, r| async move {
                Ok(acc? + u64::from(r.is_ok()))
            })
            .await?
    };
    let publish_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled.0.load(Ordering::Relaxed) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let handled = handled.0.load(Ordering::Relaxed);
    println!(
        "bus={} events={count} in_flight={} published={published} handled={handled} \
         publish_per_s={:.0} end_to_end_per_s={:.0}",
        if target == "in-process" {
            "in-process"
        } else if rabbit {
            "rabbitmq"
        } else {
            "nats"
        },
        if relay {
            "relay".to_string()
        } else {
            in_flight.to_string()
        },
        published as f64 / publish_secs,
        handled as f64 / total_secs,
    );
    if rabbit {
        drop(bus);
        let connection =
            lapin::Connection::connect(&target, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for queue in [format!("{exchange}.bench"), format!("{exchange}.dead")] {
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await?;
        }
        for name in [exchange.clone(), format!("{exchange}.dead")] {
            channel
                .exchange_delete(name.as_str().into(), Default::default())
                .await?;
        }
    } else if target != "in-process" {
        let js = async_nats::jetstream::new(async_nats::connect(target.as_str()).await?);
        js.delete_stream(format!("BENCH_{unique}")).await?;
        js.delete_stream(format!("BENCH_{unique}_DEAD")).await?;
    }
    anyhow::ensure!(handled == count, "{handled} of {count} events handled");
    Ok(())
}
