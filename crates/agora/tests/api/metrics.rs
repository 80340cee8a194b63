//! `/metrics`: Prometheus text with the request, saga, bus, cache, outbox and
//! process metrics. The recorder is one per process, shared by the apps of
//! this test binary, so the checks look for series and lower bounds, not exact
//! totals.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{As, TestApp, spawn_app, spawn_app_with};

/// The scrape, as text.
async fn scrape(app: &TestApp) -> String {
    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("the scrape is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.expect("a body")
}

/// The value of the series `series` (its name and labels, as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrapes until `series` reaches `at_least` (what the relays and consumers
/// do happens after the request that caused it), for at most 10 s.
async fn eventually(app: &TestApp, series: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(app).await;
        if value(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_are_counted_and_timed_by_route_template_and_status_class() {
    let app = spawn_app().await;
    let product = app.stocked_product(1200, 5).await;
    for _ in 0..2 {
        let a = app.get(&format!("/api/v1/products/{product}")).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let missing = app.get("/api/v1/no-such-thing/at-all").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let text = scrape(&app).await;
    let ok =
        r#"agora_http_requests_total{method="GET",route="/api/v1/products/{id}",status="2xx"}"#;
    assert!(value(&text, ok).is_some_and(|v| v >= 2.0), "{text}");
    let unmatched = r#"agora_http_requests_total{method="GET",route="unmatched",status="4xx"}"#;
    assert!(value(&text, unmatched).is_some_and(|v| v >= 1.0), "{text}");
    assert!(
        !text.contains("no-such-thing"),
        "a path that matches no route makes no series of its own"
    );
    let bucket = r#"agora_http_request_duration_seconds_bucket{method="GET",route="/api/v1/products/{id}",le="10"}"#;
    assert!(value(&text, bucket).is_some_and(|v| v >= 2.0), "{text}");
    assert!(
        value(&text, "agora_http_requests_in_flight").is_some(),
        "{text}"
    );
    assert!(value(&text, "agora_process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    assert!(value(&text, "agora_process_uptime_seconds").is_some());
    for outbox in ["catalog", "inventory", "payments", "orders"] {
        let series = format!(r#"agora_outbox_backlog{{outbox="{outbox}_outbox"}}"#);
        assert!(value(&text, &series).is_some(), "{series}:\n{text}");
    }
    assert!(
        value(&text, r#"agora_cache_hits_total{cache="catalog"}"#).is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn a_checkout_counts_its_saga_and_the_events_it_sent() {
    let app = spawn_app().await;
    let token = app.register_and_login("metrics@agora.test").await;
    app.place_order(As::Token(&token)).await;
    let text = eventually(
        &app,
        r#"agora_bus_published_total{outbox="orders_outbox"}"#,
        2.0,
    )
    .await;
    assert!(
        value(&text, r#"agora_saga_outcomes_total{outcome="confirmed"}"#).is_some_and(|v| v >= 1.0),
        "{text}"
    );
    let step = r#"agora_saga_step_duration_seconds_count{step="capture"}"#;
    assert!(value(&text, step).is_some_and(|v| v >= 1.0), "{text}");
    for series in [
        r#"agora_db_query_duration_seconds_count{role="read"}"#,
        r#"agora_db_query_duration_seconds_count{role="transaction"}"#,
        "agora_db_commit_duration_seconds_count",
    ] {
        assert!(
            value(&text, series).is_some_and(|v| v >= 1.0),
            "{series}:\n{text}"
        );
    }
    if app.db.db.backend() == agora_platform::db::Backend::Postgres {
        let open = r#"agora_db_connections{state="idle"}"#;
        assert!(value(&text, open).is_some(), "{text}");
    }
    eventually(
        &app,
        r#"agora_bus_consumed_total{kind="orders.order_confirmed",outcome="handled"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn with_metrics_off_there_is_no_endpoint() {
    let app = spawn_app_with(|c| c.telemetry.metrics = false).await;
    let a = app.get("/metrics").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "ROUTE_NOT_FOUND");
}
