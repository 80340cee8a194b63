//! Checkout and orders over HTTP: a customer registers, fills a cart, checks out
//! and sees the order; staff refund it; bad requests change nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{As, TestApp, spawn_app};

async fn stock(app: &TestApp, product: &str) -> (i64, i64) {
    let a = app
        .get_as(&format!("/api/v1/inventory/{product}"), As::Staff)
        .await;
    (
        a.data()["on_hand"].as_i64().expect("on hand"),
        a.data()["reserved"].as_i64().expect("reserved"),
    )
}

#[tokio::test]
async fn a_customer_checks_out_and_staff_refund_the_order() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let mug = app.stocked_product(1250, 5).await;
    let cup = app.stocked_product(400, 5).await;
    app.add_to_cart(As::Token(&ada), &mug, 2).await;
    app.add_to_cart(As::Token(&ada), &cup, 1).await;

    let a = app.checkout(As::Token(&ada), "first-try", "tok_visa").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let order = a.data().clone();
    let id = order["id"].as_str().expect("an id").to_string();
    assert!(id.starts_with("ord_"));
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["total"], json!({ "amount": 2900, "currency": "USD" }));
    assert_eq!(
        a.headers["location"].to_str().expect("a location"),
        format!("/api/v1/orders/{id}")
    );
    assert_eq!(stock(&app, &mug).await, (3, 0));
    let cart = app.get_as("/api/v1/cart", As::Token(&ada)).await;
    assert_eq!(
        cart.data()["item_count"],
        0,
        "the bought lines left the cart"
    );

    // The same request again answers the same, without a second order.
    let again = app.checkout(As::Token(&ada), "first-try", "tok_visa").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.data(), &order);
    let mine = app.get_as("/api/v1/orders", As::Token(&ada)).await;
    assert_eq!(mine.data().as_array().map(Vec::len), Some(1));
    let shown = app
        .get_as(&format!("/api/v1/orders/{id}"), As::Token(&ada))
        .await;
    assert_eq!(shown.data()["status"], "confirmed");

    // Another customer neither sees it nor lists it.
    let bob = app.register_and_login("bob@example.com").await;
    let hidden = app
        .get_as(&format!("/api/v1/orders/{id}"), As::Token(&bob))
        .await;
    assert_eq!(hidden.code(), "ORDERS_ORDER_NOT_FOUND");
    let theirs = app.get_as("/api/v1/orders", As::Token(&bob)).await;
    assert_eq!(theirs.data().as_array().map(Vec::len), Some(0));

    // Staff see everyone's, filtered, and refund in two parts.
    let all = app
        .get_as("/api/v1/orders?status=confirmed", As::Staff)
        .await;
    assert_eq!(all.data().as_array().map(Vec::len), Some(1));
    let refund = |amount: i64, key: &'static str| {
        let app = &app;
        let path = format!("/api/v1/orders/{id}/refunds");
        async move {
            app.call_with(
                Method::POST,
                &path,
                Some(json!({ "amount_minor": amount, "reason": "damaged" })),
                As::Staff,
                &[("idempotency-key", key)],
            )
            .await
        }
    };
    let part = refund(900, "refund-1").await;
    assert_eq!(part.status, StatusCode::OK, "{:?}", part.body);
    assert_eq!(part.data()["refunded_minor"], 900);
    assert_eq!(part.data()["status"], "confirmed");
    let too_much = refund(2001, "refund-2").await;
    assert_eq!(too_much.code(), "ORDERS_REFUND_EXCEEDS_PAID");
    let rest = refund(2000, "refund-3").await;
    assert_eq!(rest.data()["status"], "refunded", "{:?}", rest.body);
    assert_eq!(rest.data()["refunded_minor"], 2900);
    let payment = rest.data()["payment_id"].as_str().expect("a payment");
    let shown = app
        .get_as(&format!("/api/v1/payments/{payment}"), As::Staff)
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{:?}", shown.body);
    let text = shown.body.to_string();
    assert!(text.contains("\"refunded\""), "{text}");
    assert!(!text.contains("tok_visa"), "the token is never shown");
    let cancel = app
        .call(
            Method::POST,
            &format!("/api/v1/orders/{id}/cancel"),
            Some(json!({ "reason": "too late" })),
            As::Staff,
        )
        .await;
    assert_eq!(cancel.code(), "ORDERS_INVALID_TRANSITION");
}

#[tokio::test]
async fn a_declined_card_answers_402_and_cancels_the_order() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let mug = app.stocked_product(1250, 5).await;
    app.add_to_cart(As::Token(&ada), &mug, 2).await;
    let a = app.checkout(As::Token(&ada), "k", "tok_declined").await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{:?}", a.body);
    assert_eq!(a.code(), "ORDERS_PAYMENT_DECLINED");
    assert_eq!(a.body["error"]["details"]["reason"], "card_declined");
    let id = a.body["error"]["details"]["order_id"]
        .as_str()
        .expect("the order");
    let order = app
        .get_as(&format!("/api/v1/orders/{id}"), As::Token(&ada))
        .await;
    assert_eq!(order.data()["status"], "cancelled");
    assert_eq!(order.data()["cancel_reason"], "payment_declined");
    assert_eq!(stock(&app, &mug).await, (5, 0));
    // The same key replays the refusal; a new key with a good card succeeds.
    let again = app.checkout(As::Token(&ada), "k", "tok_declined").await;
    assert_eq!(again.body["error"], a.body["error"]);
    let ok = app.checkout(As::Token(&ada), "k2", "tok_visa").await;
    assert_eq!(ok.status, StatusCode::CREATED, "{:?}", ok.body);
}

#[tokio::test]
async fn bad_checkouts_are_refused_with_codes_and_change_nothing() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let who = As::Token(&ada);
    let empty = app.checkout(who, "k1", "tok_visa").await;
    assert_eq!(empty.code(), "ORDERS_CART_EMPTY");
    let mug = app.stocked_product(1250, 5).await;
    app.add_to_cart(who, &mug, 1).await;
    let no_key = app
        .call(
            Method::POST,
            "/api/v1/checkout",
            Some(json!({ "payment_token": "tok_visa" })),
            who,
        )
        .await;
    assert_eq!(no_key.code(), "REQUEST_IDEMPOTENCY_KEY_MISSING");
    let long = "k".repeat(256);
    let bad_key = app.checkout(who, &long, "tok_visa").await;
    assert_eq!(bad_key.code(), "REQUEST_IDEMPOTENCY_KEY_INVALID");
    let bad_token = app.checkout(who, "k2", "").await;
    assert_eq!(bad_token.code(), "VALIDATION_FAILED");
    let card_number = app
        .call_with(
            Method::POST,
            "/api/v1/checkout",
            Some(json!({ "payment_token": "tok_visa", "card_number": "4242424242424242" })),
            who,
            &[("idempotency-key", "k3")],
        )
        .await;
    assert_eq!(card_number.code(), "REQUEST_INVALID_BODY");
    // A product in another currency cannot share the order.
    let euro = app
        .create_product(json!({ "price": { "amount": 100, "currency": "EUR" } }))
        .await;
    app.add_to_cart(who, euro["id"].as_str().expect("an id"), 1)
        .await;
    let mixed = app.checkout(who, "k4", "tok_visa").await;
    assert_eq!(mixed.code(), "ORDERS_CURRENCY_MISMATCH");
    // An API key has no cart to check out.
    let admin = app
        .create_user_and_login("admin@agora.test", &[agora_kernel::Role::Admin])
        .await;
    let key = app
        .create_api_key(As::Token(&admin), &["orders:manage"])
        .await;
    let by_key = app.checkout(As::ApiKey(&key), "k5", "tok_visa").await;
    assert_eq!(by_key.code(), "AUTH_USER_REQUIRED");
    let none = app.get_as("/api/v1/orders", As::Staff).await;
    assert_eq!(
        none.data().as_array().map(Vec::len),
        Some(0),
        "no order was placed"
    );
    assert_eq!(stock(&app, &mug).await, (5, 0));
    let reused = {
        app.call(
            Method::DELETE,
            &format!("/api/v1/cart/items/{}", euro["id"].as_str().expect("an id")),
            None,
            who,
        )
        .await;
        let first = app.checkout(who, "k6", "tok_visa").await;
        assert_eq!(first.status, StatusCode::CREATED);
        app.checkout(who, "k6", "tok_mastercard").await
    };
    assert_eq!(reused.code(), "REQUEST_IDEMPOTENCY_KEY_REUSED");
}
