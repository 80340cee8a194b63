//! The cache hit path of a catalog read: `CacheAside::get_or_load` finding the
//! rendered product in the in-process cache. `cargo bench -p agora-platform`;
//! the figures are in docs/performance.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use agora_platform::cache::{CacheAside, MemoryCache};
use axum::body::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;

fn hit(c: &mut Criterion) {
    let aside = CacheAside::new(Arc::new(MemoryCache::new(64 * 1024 * 1024)));
    let product = Bytes::from(vec![b'x'; 420]);
    let key = "catalog:product:prod_01a2382ad1fb744788b0aca2ce3e8287";
    let ttl = Duration::from_secs(300);
    let stored = aside
        .get_or_load(key, ttl, &["catalog:products"], async {
            Ok::<_, ()>(product.clone())
        })
        .now_or_never()
        .expect("the in-process cache answers at once");
    assert_eq!(stored, Ok(product));
    c.bench_function("cache: a product read that hits the memory cache", |b| {
        b.iter(|| {
            // A hit never awaits: it completes on its first poll.
            aside
                .get_or_load(black_box(key), ttl, &["catalog:products"], async {
                    Err::<Bytes, ()>(())
                })
                .now_or_never()
        });
    });
}

criterion_group!(benches, hit);
criterion_main!(benches);
