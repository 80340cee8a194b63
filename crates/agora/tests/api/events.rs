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

async fn replay(app: &TestApp, body: Value, who: As<'_>) -> crate::helpers::Answer {
    app.call(Method::POST, "/api/v1/admin/events/replay", Some(body), who)
        .await
}

async fn redrive(app: &TestApp, ids: Value, who: As<'_>) -> crate::helpers::Answer {
    let body = json!({ "ids": ids });
    app.call(Method::POST, "/api/v1/admin/dead-letters", Some(body), who)
        .await
}

/// An administrator's token.
async fn admin(app: &TestApp) -> String {
    app.create_user_and_login("ops@agora.test", &[agora_kernel::Role::Admin])
        .await
}

/// A refund's event, replayed to the orders' consumer that already handled
/// it, is delivered and skipped by its inbox: the order is refunded once.
/// Replays to an unknown consumer, by staff, or with bad bodies change nothing.
#[tokio::test]
async fn replays_reach_the_named_consumer_and_repeat_nothing() {
    let app = spawn_app().await;
    let ops = admin(&app).await;
    let ada = app.register_and_login("ada@example.com").await;
    let mug = app.stocked_product(1250, 5).await;
    app.add_to_cart(As::Token(&ada), &mug, 2).await;
    let order = app.checkout(As::Token(&ada), "replay-1", "tok_visa").await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    let id = order.data()["id"].as_str().expect("an id").to_string();
    let refunded = app
        .call_with(
            Method::POST,
            &format!("/api/v1/orders/{id}/refunds"),
            Some(json!({ "amount_minor": 500, "reason": "damaged" })),
            As::Staff,
            &[("idempotency-key", "refund-1")],
        )
        .await;
    assert_eq!(refunded.status, StatusCode::OK, "{:?}", refunded.body);
    let kind = "payments.payment_refunded";
    for _ in 0..300 {
        let page = events(&app, &format!("?kind={kind}")).await;
        if page.data().as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let before = app.get_as(&format!("/api/v1/orders/{id}"), As::Staff).await;
    let done = replay(
        &app,
        json!({ "consumer": "orders.payment_events", "kind": kind }),
        As::Token(&ops),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    assert_eq!(done.data()["replayed"], 1, "{:?}", done.body);
    assert_eq!(done.data()["failed_count"], 0);
    let shown = app.get_as(&format!("/api/v1/orders/{id}"), As::Staff).await;
    assert_eq!(shown.data()["refunded_minor"], 500, "refunded once");
    assert_eq!(
        shown.data()["updated_at"],
        before.data()["updated_at"],
        "the inbox skipped the repeat: the order was not written"
    );

    // Every event to that consumer: the catalog's and orders' are not its kinds.
    let all = replay(
        &app,
        json!({ "consumer": "orders.payment_events" }),
        As::Token(&ops),
    )
    .await;
    assert_eq!(all.data()["replayed"], 1, "{:?}", all.body);
    assert!(
        all.data()["skipped"].as_u64().is_some_and(|n| n > 0),
        "{:?}",
        all.body
    );
    assert_eq!(all.data()["next_offset"], Value::Null);
    let first = replay(
        &app,
        json!({ "consumer": "orders.payment_events", "limit": 1 }),
        As::Token(&ops),
    )
    .await;
    assert!(
        first.data()["next_offset"].as_i64().is_some(),
        "{:?}",
        first.body
    );

    let unknown = replay(&app, json!({ "consumer": "nobody" }), As::Token(&ops)).await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "EVENTS_UNKNOWN_CONSUMER")
    );
    // Also when no event matches.
    let unknown_and_empty = replay(
        &app,
        json!({ "consumer": "nobody", "kind": "no.such_kind" }),
        As::Token(&ops),
    )
    .await;
    assert_eq!(unknown_and_empty.code(), "EVENTS_UNKNOWN_CONSUMER");
    let staff = replay(
        &app,
        json!({ "consumer": "orders.payment_events" }),
        As::Staff,
    )
    .await;
    assert_eq!(staff.code(), "AUTH_FORBIDDEN");
    for bad in [
        json!({}),
        json!({ "consumer": "" }),
        json!({ "consumer": "x", "limit": 0 }),
        json!({ "consumer": "x", "limit": 1001 }),
        json!({ "consumer": "x", "from_offset": 5, "to_offset": 4 }),
        json!({ "consumer": "x", "from_offset": -1 }),
        json!({ "consumer": "x", "colour": "red" }),
    ] {
        let answer = replay(&app, bad.clone(), As::Token(&ops)).await;
        assert!(
            matches!(answer.code(), "VALIDATION_FAILED" | "REQUEST_INVALID_BODY"),
            "{bad}: {:?}",
            answer.body
        );
    }
}

/// A poison event (a refund event whose payload the orders' consumer cannot
/// read) ends in the dead letters after its attempts instead of looping, and
/// the events behind it still flow; re-driving it fails again and keeps it.
#[tokio::test]
async fn poison_events_end_in_the_dead_letters_over_http() {
    let app = crate::helpers::spawn_app_with(|c| c.bus.max_attempts = 2).await;
    let ops = admin(&app).await;
    let poison = agora_platform::bus::Event::new(
        "payments.payment_refunded",
        "pay_x",
        &json!({ "not": "a refund" }),
        agora_kernel::Timestamp::from_millis(1),
    )
    .expect("an event");
    // Written as the payments module writes its events: in its outbox.
    let outbox = agora_platform::bus::Outbox::new(agora_payments::OUTBOX_TABLE);
    let mut tx = app.db.db.begin().await.expect("a transaction");
    outbox.append(&mut tx, &poison).await.expect("a poison row");
    tx.commit().await.expect("committed");
    let mut letters = Value::Null;
    for _ in 0..600 {
        let page = app.get_as("/api/v1/admin/dead-letters", As::Staff).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        letters = page.data().clone();
        if letters.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let letter = &letters[0];
    assert_eq!(letter["consumer"], "orders.payment_events", "{letters:?}");
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["event"]["id"], poison.id.to_string());
    // Parked, the publication succeeds and the relay marks the row (in its
    // own transaction, a moment after the parking).
    let mut published: Option<i64> = None;
    for _ in 0..500 {
        published = sqlx::query_scalar("SELECT published_at FROM payments_outbox WHERE id = $1")
            .bind(poison.id.to_db())
            .fetch_one(app.db.db.reader())
            .await
            .expect("the row");
        if published.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(published.is_some(), "the outbox moved on");

    let id = letter["id"].as_u64().expect("an id");
    let again = redrive(&app, json!([id, 999_999]), As::Token(&ops)).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.data()[0]["outcome"], "failed");
    assert_eq!(again.data()[1]["outcome"], "not_found");
    let kept = app.get_as("/api/v1/admin/dead-letters", As::Staff).await;
    assert_eq!(kept.data()[0]["attempts"], 3, "{:?}", kept.body);
    assert_eq!(
        redrive(&app, json!([id]), As::Staff).await.code(),
        "AUTH_FORBIDDEN"
    );
    for bad in [
        json!([]),
        json!((0..101).collect::<Vec<u64>>()),
        json!(["x"]),
    ] {
        let answer = redrive(&app, bad.clone(), As::Token(&ops)).await;
        assert!(
            matches!(answer.code(), "VALIDATION_FAILED" | "REQUEST_INVALID_BODY"),
            "{bad}: {:?}",
            answer.body
        );
    }
}

/// The request id of the request that made a change travels with its
/// events: the log shows it, and a consumer's own events (here the saga's,
/// run by the checkout request) carry it on.
#[tokio::test]
async fn events_carry_the_request_id_of_the_request_that_made_them() {
    let app = spawn_app().await;
    let created = app
        .create_product_with(json!({}), &[("x-request-id", "trace-create-1")])
        .await;
    let id = created["id"].as_str().expect("an id").to_string();
    let ada = app.register_and_login("ada@example.com").await;
    let stocked = app
        .call(
            Method::PUT,
            &format!("/api/v1/inventory/{id}"),
            Some(json!({ "on_hand": 3, "reason": "test stock" })),
            As::Staff,
        )
        .await;
    assert_eq!(stocked.status, StatusCode::OK, "{:?}", stocked.body);
    app.add_to_cart(As::Token(&ada), &id, 1).await;
    let order = app
        .call_with(
            Method::POST,
            "/api/v1/checkout",
            Some(json!({ "payment_token": "tok_visa" })),
            As::Token(&ada),
            &[
                ("idempotency-key", "k1"),
                ("x-request-id", "trace-checkout-1"),
            ],
        )
        .await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    let order_id = order.data()["id"].as_str().expect("an id").to_string();

    let mut found = Value::Null;
    for _ in 0..300 {
        let page = events(&app, "?kind=orders.order_confirmed").await;
        if let Some(first) = page.data().as_array().and_then(|a| a.first()) {
            found = first.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(found["aggregate_id"], order_id.as_str(), "{found}");
    assert_eq!(found["request_id"], "trace-checkout-1", "{found}");
    let product_events = events(&app, &format!("?aggregate_id={id}")).await;
    let changed = product_events
        .data()
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "catalog.product_changed"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        changed["request_id"], "trace-create-1",
        "{product_events:?}"
    );
}

/// The caller's W3C trace context travels with the events its request made:
/// they continue its trace (same trace id) from the request's own span (a new
/// parent id). A request without one, or with an invalid one, starts a trace.
#[tokio::test]
async fn events_continue_the_callers_trace() {
    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let app = spawn_app().await;
    let create = async |headers: &[(&str, &str)]| {
        let created = app.create_product_with(json!({}), headers).await;
        let id = created["id"].as_str().expect("an id").to_string();
        // The relay logs the event once it published it.
        for _ in 0..300 {
            let logged = events(&app, &format!("?aggregate_id={id}")).await;
            if let Some(first) = logged.data().as_array().and_then(|a| a.first()) {
                return first["traceparent"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a traceparent: {first}"))
                    .to_string();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the product's event was not logged")
    };
    let parts = |t: &str| -> (String, String) {
        let fields: Vec<&str> = t.split('-').collect();
        assert_eq!(fields.len(), 4, "{t}");
        assert_eq!((fields[0], fields[3]), ("00", "01"), "{t}");
        (fields[1].to_string(), fields[2].to_string())
    };

    let continued = create(&[("traceparent", CALLER)]).await;
    let (trace, parent) = parts(&continued);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parent, "00f067aa0ba902b7", "the request's own span");

    let (fresh, _) = parts(&create(&[]).await);
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, trace);
    let (other, _) = parts(&create(&[("traceparent", "00-not-a-trace-01")]).await);
    assert_ne!(other, trace);
    assert_ne!(other, fresh);
}
