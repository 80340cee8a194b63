//! What every request meets: request ids, versions, unknown routes, shutdown.

use reqwest::{Method, StatusCode};

use crate::helpers::{As, spawn_app};

#[tokio::test]
async fn a_request_id_is_echoed_or_made() {
    let app = spawn_app().await;
    let given = app
        .client
        .get(format!("{}/api/v1/products", app.base))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .expect("answered");
    let given = crate::helpers::TestApp::answer(given).await;
    assert_eq!(given.headers["x-request-id"], "trace-me-123");
    assert_eq!(given.body["meta"]["request_id"], "trace-me-123");
    assert_eq!(given.body["meta"]["api_version"], "1");

    let made = app.get("/api/v1/products/nonsense").await;
    let id = made.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        made.body["meta"]["request_id"],
        id.as_str(),
        "errors carry it too"
    );
}

#[tokio::test]
async fn the_api_version_header_selects_and_guards_the_version() {
    let app = spawn_app().await;
    let by_header = app
        .client
        .get(format!("{}/api/products", app.base))
        .header("api-version", "1")
        .send()
        .await
        .expect("answered");
    assert_eq!(by_header.status(), StatusCode::OK);
    assert_eq!(by_header.headers()["api-version"], "1");
    let wrong = app
        .client
        .get(format!("{}/api/v1/products", app.base))
        .header("api-version", "2")
        .send()
        .await
        .expect("answered");
    let wrong = crate::helpers::TestApp::answer(wrong).await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::BAD_REQUEST, "API_VERSION_UNSUPPORTED")
    );
    let v2 = app.get("/api/v2/products").await;
    assert_eq!(v2.code(), "API_VERSION_UNSUPPORTED");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_coded_errors() {
    let app = spawn_app().await;
    let a = app.get("/api/v1/nope").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND")
    );
    let a = app.get("/nope").await;
    assert_eq!(a.code(), "ROUTE_NOT_FOUND");
    let a = app
        .call(Method::PUT, "/api/v1/products", None, As::Staff)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live").await.status, StatusCode::OK);
    app.shutdown.trigger();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), app.server)
        .await
        .expect("the server stops in time")
        .expect("the task ends");
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(
        app.client
            .get(format!("{}/health/live", app.base))
            .send()
            .await
            .is_err()
    );
}
