//! A port call over gRPC on loopback against the same call in process: the
//! catalog's `products_by_ids` for one product (answered from its read cache),
//! on a SQLite database with the demo catalog. Sequential calls give the
//! latency (p50, p99 from an HDR histogram); then `TASKS` concurrent callers
//! for `SECONDS` give the throughput. docs/performance.md records the figures.
//!
//! Usage: `cargo run --release -p agora --example grpc_bench [CALLS] [TASKS] [SECONDS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora::app;
use agora_contracts::catalog::CatalogPort;
use agora_grpc::PortServer;
use agora_grpc::client::{CatalogClient, RemoteSettings, Replicas};
use agora_platform::Shutdown;
use agora_platform::storage::ObjectStorage;
use agora_platform::testing::TestDatabase;
use hdrhistogram::Histogram;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let tasks: usize = args.next().map_or(Ok(32), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(5), |a| a.parse())?;

    let test = TestDatabase::new().await?;
    let config = test.app_config();
    app::migrate_only(&config).await?;
    let catalog = app::catalog(
        &config,
        &test.db,
        app::read_cache(&config)?,
        ObjectStorage::from_config(&config)?,
    );
    let product = agora_catalog::seed::seed_demo(&catalog).await?.products[0];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let shutdown = Shutdown::new();
    tokio::spawn(
        PortServer::new(None)
            .catalog(Arc::new(catalog.clone()))
            .serve(listener, shutdown.clone(), Duration::from_secs(1)),
    );
    let remote: Arc<dyn CatalogPort> = Arc::new(CatalogClient::new(Replicas::new(
        "catalog",
        &[address],
        RemoteSettings::default(),
    )?));
    let local: Arc<dyn CatalogPort> = Arc::new(catalog);

    println!(
        "| path | calls | p50 | p99 | max | concurrent calls/s ({tasks} tasks, {seconds} s) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, port) in [("in process", local), ("gRPC, loopback", remote)] {
        // Warm up: connections, caches.
        for _ in 0..1000 {
            port.products_by_ids(&[product]).await?;
        }
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..calls {
            let started = Instant::now();
            let found = port.products_by_ids(&[product]).await?;
            latency.record(started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX))?;
            anyhow::ensure!(found.len() == 1, "the product is found");
        }
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let port = port.clone();
            workers.spawn(async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    port.products_by_ids(&[product]).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            });
        }
        let mut total = 0;
        for done in workers.join_all().await {
            total += done?;
        }
        let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {name} | {calls} | {:.1} µs | {:.1} µs | {:.1} µs | {:.0} |",
            us(0.5),
            us(0.99),
            latency.max() as f64 / 1000.0,
            total as f64 / seconds as f64
        );
    }
    shutdown.trigger();
    Ok(())
}
