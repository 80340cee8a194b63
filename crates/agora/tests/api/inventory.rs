//! Stock levels through the API: staff set and adjust them, every change is in
//! the ledger, and bad input changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Answer, As, TestApp, spawn_app};

async fn put(app: &TestApp, id: &str, body: Value) -> Answer {
    app.call(
        Method::PUT,
        &format!("/api/v1/inventory/{id}"),
        Some(body),
        As::Staff,
    )
    .await
}

async fn adjust(app: &TestApp, id: &str, body: Value) -> Answer {
    app.call(
        Method::POST,
        &format!("/api/v1/inventory/{id}/adjustments"),
        Some(body),
        As::Staff,
    )
    .await
}

#[tokio::test]
async fn staff_set_and_adjust_stock_and_the_ledger_keeps_every_change() {
    let app = spawn_app().await;
    let id = app.create_product(json!({})).await["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let empty = app
        .get_as(&format!("/api/v1/inventory/{id}"), As::Staff)
        .await;
    assert_eq!(empty.status, StatusCode::OK, "{:?}", empty.body);
    assert_eq!(empty.data()["on_hand"], 0);
    assert!(empty.data()["updated_at"].is_null());

    let set = put(&app, &id, json!({ "on_hand": 12, "reason": " stocktake " })).await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.body);
    assert_eq!(set.data()["on_hand"], 12);
    assert_eq!(set.data()["available"], 12);
    let adjusted = adjust(&app, &id, json!({ "delta": -2, "reason": "damaged" })).await;
    assert_eq!(adjusted.data()["on_hand"], 10);
    let read = app
        .get_as(&format!("/api/v1/inventory/{id}"), As::Staff)
        .await;
    assert_eq!(
        (
            read.data()["on_hand"].clone(),
            read.data()["reserved"].clone(),
            read.data()["available"].clone()
        ),
        (json!(10), json!(0), json!(10))
    );

    // Newest first, one page at a time.
    let first = app
        .get_as(
            &format!("/api/v1/inventory/{id}/movements?limit=1"),
            As::Staff,
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.data()[0]["kind"], "adjust");
    assert_eq!(first.data()[0]["delta"], -2);
    assert_eq!(first.data()[0]["reason"], "damaged");
    assert!(
        first.data()[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("usr_"))
    );
    let cursor = first.body["meta"]["next_cursor"].as_str().expect("more");
    let second = app
        .get_as(
            &format!("/api/v1/inventory/{id}/movements?limit=1&cursor={cursor}"),
            As::Staff,
        )
        .await;
    assert_eq!(second.data()[0]["kind"], "set");
    assert_eq!(second.data()[0]["delta"], 12);
    assert_eq!(second.data()[0]["reason"], "stocktake");
    assert!(second.body["meta"]["next_cursor"].is_null());
}

#[tokio::test]
async fn bad_stock_changes_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let id = app.create_product(json!({})).await["id"]
        .as_str()
        .expect("an id")
        .to_string();
    put(&app, &id, json!({ "on_hand": 3, "reason": "count" })).await;
    for (answer, status, code) in [
        (
            adjust(&app, &id, json!({ "delta": -4, "reason": "lost" })).await,
            409,
            "INVENTORY_BELOW_RESERVED",
        ),
        (
            put(&app, &id, json!({ "on_hand": -1, "reason": "count" })).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            put(
                &app,
                &id,
                json!({ "on_hand": 1_000_000_001_i64, "reason": "count" }),
            )
            .await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            put(&app, &id, json!({ "on_hand": 1, "reason": "  " })).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            put(&app, &id, json!({ "on_hand": 1, "reason": "a\u{0}b" })).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            put(&app, &id, json!({ "on_hand": "1", "reason": "count" })).await,
            422,
            "REQUEST_INVALID_BODY",
        ),
        (
            put(
                &app,
                &id,
                json!({ "on_hand": 1, "reason": "count", "extra": true }),
            )
            .await,
            422,
            "REQUEST_INVALID_BODY",
        ),
        (
            adjust(&app, &id, json!({ "delta": 0, "reason": "nothing" })).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            put(
                &app,
                "prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b",
                json!({ "on_hand": 1, "reason": "count" }),
            )
            .await,
            404,
            "INVENTORY_UNKNOWN_PRODUCT",
        ),
        (
            put(
                &app,
                "cat_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b",
                json!({ "on_hand": 1, "reason": "count" }),
            )
            .await,
            400,
            "REQUEST_INVALID_PATH",
        ),
    ] {
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (status, code),
            "{:?}",
            answer.body
        );
    }
    let read = app
        .get_as(&format!("/api/v1/inventory/{id}"), As::Staff)
        .await;
    assert_eq!(read.data()["on_hand"], 3);
    let ledger = app
        .get_as(&format!("/api/v1/inventory/{id}/movements"), As::Staff)
        .await;
    assert_eq!(ledger.data().as_array().map(Vec::len), Some(1));
}
