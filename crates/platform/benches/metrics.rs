//! Rendering `/metrics` with 100 routes' series: the request counter (two
//! status classes) and latency histogram of each, as the edge records them,
//! through the process's recorder with its buckets. `cargo bench -p
//! agora-platform --bench metrics`; the figures are in docs/performance.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

const ROUTES: usize = 100;

fn render(c: &mut Criterion) {
    let handle = agora_platform::metrics::install().expect("the recorder");
    for i in 0..ROUTES {
        let route = format!("/api/v1/resource{i}/{{id}}");
        let histogram = metrics::histogram!(
            "agora_http_request_duration_seconds",
            "method" => "GET",
            "route" => route.clone()
        );
        for n in 0..1000u32 {
            histogram.record(f64::from(n % 250) / 1000.0);
        }
        for class in ["2xx", "4xx"] {
            metrics::counter!(
                "agora_http_requests_total",
                "method" => "GET",
                "route" => route.clone(),
                "status" => class
            )
            .increment(1000);
        }
    }
    let text = handle.render();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series > ROUTES * 15, "{series} series");
    c.bench_function("metrics: render /metrics with 100 routes", |b| {
        b.iter(|| black_box(handle.render()))
    });
}

criterion_group!(benches, render);
criterion_main!(benches);
