//! The HTTP foundation end to end: a real server on port 0 with test routes.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::ApiResponse;
use agora_platform::Shutdown;
use agora_platform::auth::Authenticator;
use agora_platform::http::edge::Edge;
use agora_platform::http::{build_router, serve};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::Value;
use tokio::sync::Notify;

/// Told when a handler has started, so tests act on facts, not sleeps.
type Started = Arc<Notify>;

async fn slow(State(started): State<Started>) -> ApiResponse<&'static str> {
    started.notify_one();
    tokio::time::sleep(Duration::from_millis(400)).await;
    ApiResponse::ok("done")
}

async fn hangs(State(started): State<Started>) -> ApiResponse<()> {
    started.notify_one();
    tokio::time::sleep(Duration::from_secs(60)).await;
    ApiResponse::ok(())
}

async fn panics() -> ApiResponse<()> {
    panic!("secret internal detail: password=hunter2")
}

/// Starts the foundation with test routes; returns its base URL, the server task
/// and the signal its slow handlers give when they start.
async fn start(
    timeout: Duration,
    shutdown: Shutdown,
    grace: Duration,
) -> (String, tokio::task::JoinHandle<anyhow::Result<()>>, Started) {
    let started = Started::default();
    let api = Router::new()
        .route("/slow", get(slow))
        .route("/hang", get(hangs))
        .route("/panic", get(panics))
        .with_state(started.clone());
    let edge = Edge {
        authenticator: Authenticator::new(&agora_platform::config::AuthConfig::default()),
        request_timeout: timeout,
        trust_forwarded_for: false,
    };
    let router = build_router(api, Router::new(), edge, 1024 * 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, router, shutdown, grace));
    (base, server, started)
}

#[tokio::test]
async fn in_flight_requests_finish_when_shutdown_begins() {
    let shutdown = Shutdown::new();
    let (base, server, started) = start(
        Duration::from_secs(5),
        shutdown.clone(),
        Duration::from_secs(5),
    )
    .await;
    let request = tokio::spawn(async move { reqwest::get(format!("{base}/api/v1/slow")).await });
    started.notified().await;
    shutdown.trigger();
    let response = request
        .await
        .expect("joined")
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"], "done");
    assert!(server.await.expect("joined").is_ok());
}

#[tokio::test]
async fn shutdown_closes_requests_that_outlive_the_grace_period() {
    let shutdown = Shutdown::new();
    let (base, server, started) = start(
        Duration::from_secs(120),
        shutdown.clone(),
        Duration::from_millis(50),
    )
    .await;
    let request = tokio::spawn(async move { reqwest::get(format!("{base}/api/v1/hang")).await });
    started.notified().await;
    shutdown.trigger();
    // The handler would run for a minute; the server stops after its grace period
    // and closes the connection, so the client sees an error, not a late answer.
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(stopped.is_ok(), "the server waited for the hanging request");
    let answer = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the client is not left hanging")
        .expect("joined");
    assert!(answer.is_err(), "the connection was closed: {answer:?}");
}

#[tokio::test]
async fn a_slow_request_is_answered_with_server_timeout() {
    let (base, _server, _) = start(
        Duration::from_millis(50),
        Shutdown::new(),
        Duration::from_secs(1),
    )
    .await;
    let response = reqwest::get(format!("{base}/api/v1/slow"))
        .await
        .expect("answered");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "SERVER_TIMEOUT");
}

#[tokio::test]
async fn a_panic_is_a_coded_500_without_internal_text() {
    let (base, _server, _) = start(
        Duration::from_secs(5),
        Shutdown::new(),
        Duration::from_secs(1),
    )
    .await;
    let response = reqwest::get(format!("{base}/api/v1/panic"))
        .await
        .expect("answered");
    assert_eq!(response.status(), 500);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let text = response.text().await.expect("body");
    assert!(
        !text.contains("hunter2") && !text.contains("secret"),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["error"]["code"], "INTERNAL_ERROR");
    assert_eq!(body["meta"]["request_id"], request_id.as_str());
    // The server keeps serving after a panic.
    let again = reqwest::get(format!("{base}/api/v1/panic"))
        .await
        .expect("answered");
    assert_eq!(again.status(), 500);
}
