//! The event log and its admin routes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{As, TestApp, product_body, spawn_app};

/// The event log's page at `query`, as staff.
async fn events(app: &TestApp, query: &str) -> crate::helpers::Answer {
    app.get_as(&format!("/api/v1/admin/events{query}"), As::Staff)
        .await
}

/// Waits until the log holds at least `n` events, and returns them.
async fn logged(app: &TestApp, n: usize) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..300 {
        let page = events(app, "?limit=100").await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        last = page.data().as_array().cloned().unwrap_or_default();
        if last.len() >= n {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the log holds {} events, not {n}: {last:?}", last.len());
}

/// Staff writes reach the log once published; the log reads back by kind and
/// aggregate, page by page in offset order.
#[tokio::test]
async fn published_events_are_listed_filtered_and_paged() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for sku in ["LOG-1", "LOG-2"] {
        let created = app
            .call(
                Method::POST,
                "/api/v1/products",
                Some(product_body(json!({ "sku": sku }))),
                As::Staff,
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        ids.push(created.data()["id"].as_str().expect("an id").to_string());
    }
    let renamed = app
        .call(
            Method::PATCH,
            &format!("/api/v1/products/{}", ids[0]),
            Some(json!({ "name": "Renamed" })),
            As::Staff,
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);

    let all = logged(&app, 3).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let aggregates: Vec<&str> = all
        .iter()
        .map(|e| e["aggregate_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(aggregates, [&ids[0], &ids[1], &ids[0]]);
    assert!(all.iter().all(|e| e["kind"] == "catalog.product_changed"));
    assert!(
        all.iter()
            .all(|e| e["id"].as_str().is_some_and(|id| id.starts_with("evt_")))
    );
    let offsets: Vec<i64> = all.iter().filter_map(|e| e["offset"].as_i64()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    let about_first = events(&app, &format!("?aggregate_id={}", ids[0])).await;
    assert_eq!(about_first.data().as_array().map(Vec::len), Some(2));
    let other_kind = events(&app, "?kind=orders.order_confirmed").await;
    assert_eq!(other_kind.data(), &json!([]));
    let from_second = events(&app, &format!("?from_offset={}", offsets[1])).await;
    assert_eq!(from_second.data().as_array().map(Vec::len), Some(2));
    let future = events(&app, "?from=2999-01-01T00:00:00Z").await;
    assert_eq!(future.data(), &json!([]));

    // Page by page: every event once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".to_string(),
        };
        let page = events(&app, &query).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        seen.extend(page.data().as_array().cloned().unwrap_or_default());
        match page.body["meta"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, all);
}

#[tokio::test]
async fn bad_event_queries_get_coded_errors() {
    let app = spawn_app().await;
    for (query, status, code) in [
        (
            "?from=yesterday",
            StatusCode::BAD_REQUEST,
            "REQUEST_INVALID_QUERY",
        ),
        ("?limit=0", StatusCode::BAD_REQUEST, "REQUEST_INVALID_QUERY"),
        (
            "?limit=101",
            StatusCode::BAD_REQUEST,
            "REQUEST_INVALID_QUERY",
        ),
        (
            "?colour=red",
            StatusCode::BAD_REQUEST,
            "REQUEST_INVALID_QUERY",
        ),
        (
            "?from_offset=x",
            StatusCode::BAD_REQUEST,
            "REQUEST_INVALID_QUERY",
        ),
        (
            "?cursor=bm9wZQ",
            StatusCode::BAD_REQUEST,
            "REQUEST_INVALID_CURSOR",
        ),
        (
            "?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            "?from_offset=-1",
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            "?kind=",
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
    ] {
        let answer = events(&app, query).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{query}: {:?}",
            answer.body
        );
    }
    let long = "k".repeat(201);
    let answer = events(&app, &format!("?aggregate_id={long}")).await;
    assert_eq!(answer.code(), "VALIDATION_FAILED");
}
