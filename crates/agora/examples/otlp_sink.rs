//! A stand-in OTLP/HTTP collector for the benchmarks: accepts every export
//! at `POST /v1/traces` with an empty (valid) protobuf answer, counts the
//! exports and their bytes, and tells them at `GET /stats`. So that
//! `scripts/bench.sh` measures Agora with its spans really exported, on a
//! machine without a collector.
//!
//! Usage: `otlp_sink ADDR`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};

#[derive(Default)]
struct Counts {
    exports: AtomicU64,
    bytes: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let Some(addr) = std::env::args().nth(1) else {
        anyhow::bail!("usage: otlp_sink ADDR");
    };
    let counts = Arc::new(Counts::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let seen = counts.clone();
        let app = Router::new()
            .route(
                "/v1/traces",
                post(move |body: Bytes| {
                    let seen = seen.clone();
                    async move {
                        seen.exports.fetch_add(1, Ordering::Relaxed);
                        seen.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        ([("content-type", "application/x-protobuf")], Vec::new())
                    }
                }),
            )
            .route(
                "/stats",
                get(move || async move {
                    format!(
                        "{} exports, {} bytes\n",
                        counts.exports.load(Ordering::Relaxed),
                        counts.bytes.load(Ordering::Relaxed)
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}
