//! Hot paths of every request and every checkout: writing the response
//! envelope, the money arithmetic of an order's total, and the trace context
//! an event carries. `cargo bench -p agora-kernel`; the figures are in
//! docs/performance.md.

use std::hint::black_box;
use std::sync::Arc;

use agora_kernel::envelope::ok_prerendered;
use agora_kernel::{ApiResponse, Currency, Money, RequestContext, TraceContext};
use axum_core::response::IntoResponse as _;
use criterion::{Criterion, criterion_group, criterion_main};

/// A product as the catalog answers it.
fn product() -> serde_json::Value {
    serde_json::json!({
        "id": "prod_01a2382ad1fb744788b0aca2ce3e8287",
        "sku": "SKU-0001",
        "name": "Espresso cup, stoneware",
        "description": "A small cup for a short coffee, glazed inside and out.",
        "price": { "amount": 1250, "currency": "EUR" },
        "active": true,
        "category_id": null,
        "tags": ["kitchen", "coffee"],
        "images": [],
        "created_at": "2026-12-01T10:00:00.000Z",
        "updated_at": "2026-12-01T10:00:00.000Z"
    })
}

/// Runs `f` inside a request context, as handlers do.
fn in_request<T>(f: impl FnOnce() -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(RequestContext::new(Arc::from("bench-request"), None).scope(async { f() }))
}

fn envelope(c: &mut Criterion) {
    let data = product();
    let bytes = serde_json::to_vec(&data).expect("JSON");
    in_request(|| {
        c.bench_function("envelope: serialize a product into the envelope", |b| {
            b.iter(|| ApiResponse::ok(black_box(&data)).into_response());
        });
        c.bench_function("envelope: wrap a pre-rendered product (cache hit)", |b| {
            b.iter(|| ok_prerendered(black_box(&bytes), None));
        });
    });
}

fn money(c: &mut Criterion) {
    let eur = Currency::parse("EUR").expect("a currency");
    let lines = [(1250_i64, 2_i64), (899, 1), (15_000, 3)];
    c.bench_function("money: total of three order lines", |b| {
        b.iter(|| {
            black_box(&lines)
                .iter()
                .try_fold(Money::zero(eur), |total, &(price, quantity)| {
                    total.checked_add(Money::new(price, eur)?.checked_mul(quantity)?)
                })
        });
    });
}

fn trace(c: &mut Criterion) {
    let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.bench_function("trace: parse a traceparent", |b| {
        b.iter(|| TraceContext::parse(black_box(header)));
    });
    let context = TraceContext::parse(header).expect("valid");
    c.bench_function("trace: a child span's traceparent", |b| {
        b.iter(|| black_box(&context).child().to_string());
    });
}

criterion_group!(benches, envelope, money, trace);
criterion_main!(benches);
