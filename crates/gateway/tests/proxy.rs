//! The gateway in front of real HTTP services on loopback: routing, balancing,
//! what is forwarded, and what happens when an instance dies, hangs or fails
//! its health check.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

mod support;

use support::{gateway, get_json, instance, pool};

#[tokio::test]
async fn requests_go_by_the_longest_prefix_and_unknown_paths_are_a_coded_404() {
    let catalog = instance("catalog").await;
    let images = instance("images").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/api/v1/products\"\nupstream = \"catalog\"\n\
         [[routes]]\nprefix = \"/api/v1/products/images\"\nupstream = \"images\"\n{}{}",
        pool("catalog", &[&catalog], ""),
        pool("images", &[&images], "")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    let (status, body) = get_json(&http, format!("{base}/api/v1/products?limit=5")).await;
    assert_eq!(
        (status, &body["instance"]),
        (StatusCode::OK, &json!("catalog"))
    );
    assert_eq!(
        body["path"], "/api/v1/products?limit=5",
        "path and query pass unchanged"
    );
    let (_, body) = get_json(&http, format!("{base}/api/v1/products/images/1")).await;
    assert_eq!(body["instance"], "images");
    let (_, body) = get_json(&http, format!("{base}/api/v1/products/42")).await;
    assert_eq!(body["instance"], "catalog");
    for path in ["/api/v1/productsX", "/api/v2/products", "/"] {
        let (status, body) = get_json(&http, format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "ROUTE_NOT_FOUND", "{path}: {body}");
    }
    let (status, _) = get_json(&http, format!("{base}/health/live")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get_json(&http, format!("{base}/health/ready")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["upstreams"]["catalog"], "ok", "{body}");
}

#[tokio::test]
async fn round_robin_spreads_requests_and_the_forwarded_headers_are_right() {
    let a = instance("a").await;
    let b = instance("b").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool("svc", &[&a, &b], "")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    for _ in 0..10 {
        let (status, _) = get_json(&http, format!("{base}/api/x")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(a.served.load(Ordering::Relaxed), 5);
    assert_eq!(b.served.load(Ordering::Relaxed), 5);

    let answer = http
        .get(format!("{base}/api/x"))
        .header("connection", "x-secret-hop")
        .header("x-secret-hop", "1")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("x-request-id", "req-gw-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-forwarded-for", "203.0.113.7")
        .header("authorization", "Bearer token")
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.headers()["x-request-id"], "req-gw-1");
    let body: Value = answer.json().await.expect("json");
    let seen = &body["headers"];
    for hop in ["x-secret-hop", "proxy-authorization", "te"] {
        assert!(seen.get(hop).is_none(), "{hop} was forwarded: {seen}");
    }
    assert_eq!(seen["x-request-id"], "req-gw-1");
    assert_eq!(
        seen["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(seen["authorization"], "Bearer token");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");

    // Without a request id, the gateway makes one and forwards it.
    let answer = http
        .get(format!("{base}/api/x"))
        .send()
        .await
        .expect("an answer");
    let made = answer.headers()["x-request-id"]
        .to_str()
        .expect("text")
        .to_owned();
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["headers"]["x-request-id"], made.as_str());
}

#[tokio::test]
async fn a_large_body_streams_through_both_ways() {
    let a = instance("a").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/\"\nupstream = \"svc\"\n{}",
        pool("svc", &[&a], "")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let body = vec![b'x'; 8 * 1024 * 1024];
    let answer = reqwest::Client::new()
        .post(format!("{base}/upload"))
        .body(body)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let echoed: Value = answer.json().await.expect("json");
    assert_eq!(echoed["body_len"], 8 * 1024 * 1024);
}

#[tokio::test]
async fn a_dead_instance_is_passed_over_and_its_breaker_opens() {
    let a = instance("a").await;
    let b = instance("b").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool(
            "svc",
            &[&a, &b],
            "[upstreams.svc.breaker]\nconsecutive_failures = 2\nopen_ms = 60000\n\
             [upstreams.svc.health]\ninterval_ms = 3600000\n"
        )
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    get_json(&http, format!("{base}/api/warm")).await;
    b.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // GETs are retried on the live instance.
    for i in 0..20 {
        let (status, body) = get_json(&http, format!("{base}/api/after/{i}")).await;
        assert_eq!(
            (status, &body["instance"]),
            (StatusCode::OK, &json!("a")),
            "{body}"
        );
    }
    // The breaker of b is open: POSTs (never retried) no longer reach it.
    let served = a.served.load(Ordering::Relaxed);
    for _ in 0..10 {
        let answer = http
            .post(format!("{base}/api/order"))
            .json(&json!({ "n": 1 }))
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), StatusCode::OK);
    }
    assert_eq!(a.served.load(Ordering::Relaxed), served + 10);

    // With a dead too, the route fails fast with a coded 503 (both breakers open).
    a.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, body) = get_json(&http, format!("{base}/api/x")).await;
        codes.push((
            status,
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        ));
    }
    assert!(
        codes
            .iter()
            .any(|(s, c)| *s == StatusCode::BAD_GATEWAY && c == "GATEWAY_UPSTREAM_FAILED"),
        "{codes:?}"
    );
    let answer = http
        .get(format!("{base}/api/x"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().contains_key("retry-after"));
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "GATEWAY_UNAVAILABLE", "{body}");
    assert_eq!(body["error"]["details"]["upstream"], "svc", "{body}");
    let (status, body) = get_json(&http, format!("{base}/health/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["error"]["details"]["upstreams"]["svc"], "unavailable",
        "{body}"
    );
}

#[tokio::test]
async fn a_post_that_cannot_connect_goes_to_another_instance_and_is_not_lost() {
    let a = instance("a").await;
    let b = instance("b").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool(
            "svc",
            &[&a, &b],
            "[upstreams.svc.breaker]\nconsecutive_failures = 3\n\
             [upstreams.svc.health]\ninterval_ms = 3600000\n"
        )
    );
    let (base, _shutdown) = gateway(&toml).await;
    // b dies after its first (and, here, only) health check passed and before
    // any request: its breaker is closed, so round-robin still picks it until
    // three refused connections open it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let http = reqwest::Client::new();
    for i in 0..10 {
        let answer = http
            .post(format!("{base}/api/checkout/{i}"))
            .json(&json!({ "n": i }))
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), StatusCode::OK, "POST {i} was lost");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["instance"], "a");
        assert!(body["body_len"].as_u64().is_some_and(|n| n > 0), "{body}");
    }
    assert_eq!(a.served.load(Ordering::Relaxed), 10);
    // A body too large to keep streams once: a refused connection fails it.
    let c = instance("c").await;
    let d = instance("d").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool(
            "svc",
            &[&d, &c],
            "[upstreams.svc.health]\ninterval_ms = 3600000\n"
        )
    );
    let (base, _shutdown) = gateway(&toml).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Round-robin sends one of two uploads to d first: that one fails.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let answer = http
            .post(format!("{base}/api/upload"))
            .body(vec![b'x'; 256 * 1024])
            .send()
            .await
            .expect("an answer");
        statuses.push(answer.status().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(c.served.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_instance_that_hangs_is_a_coded_504_at_the_timeout() {
    let a = instance("a").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool(
            "svc",
            &[&a],
            "request_timeout_ms = 300\n[upstreams.svc.retry]\nattempts = 1\n"
        )
    );
    let (base, _shutdown) = gateway(&toml).await;
    let started = Instant::now();
    let (status, body) = get_json(&reqwest::Client::new(), format!("{base}/api/v1/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"]["code"], "GATEWAY_UPSTREAM_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the client did not wait for the instance"
    );
}

#[tokio::test]
async fn an_instance_failing_its_health_check_is_out_until_it_passes() {
    let a = instance("a").await;
    let b = instance("b").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool(
            "svc",
            &[&a, &b],
            "[upstreams.svc.health]\ninterval_ms = 50\n"
        )
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    b.health.store(503, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let (_, body) = get_json(&http, format!("{base}/api/x")).await;
        assert_eq!(body["instance"], "a");
    }
    b.health.store(200, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (_, body) = get_json(&http, format!("{base}/api/x")).await;
        seen.push(body["instance"].as_str().unwrap_or("").to_owned());
    }
    assert!(seen.iter().any(|i| i == "b"), "b is back: {seen:?}");
}

#[tokio::test]
async fn ip_hash_keeps_a_client_on_one_instance() {
    let a = instance("a").await;
    let b = instance("b").await;
    let c = instance("c").await;
    let toml = format!(
        "trust_forwarded_for = true\n[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool("svc", &[&a, &b, &c], "balance = \"ip_hash\"\n")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    let mut by_client = BTreeMap::new();
    for client in 1..=30 {
        let ip = format!("198.51.100.{client}");
        for _ in 0..3 {
            let answer = http
                .get(format!("{base}/api/x"))
                .header("x-forwarded-for", &ip)
                .send()
                .await
                .expect("an answer");
            let body: Value = answer.json().await.expect("json");
            let instance = body["instance"].as_str().unwrap_or("").to_owned();
            let first = by_client
                .entry(ip.clone())
                .or_insert_with(|| instance.clone());
            assert_eq!(*first, instance, "{ip} moved");
        }
    }
    let used: std::collections::BTreeSet<_> = by_client.values().collect();
    assert!(used.len() >= 2, "30 clients on one instance: {used:?}");
}
