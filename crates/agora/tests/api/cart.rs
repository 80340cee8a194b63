//! Carts through the API: a customer's, an anonymous visitor's by token, merged
//! at login; priced from the catalog when read; unsellable lines flagged.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Answer, As, TestApp, spawn_app};

/// A request as `who`, optionally with an anonymous cart token.
async fn cart_call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    who: As<'_>,
    token: Option<&str>,
) -> Answer {
    let mut req = app.client.request(method, format!("{}{path}", app.base));
    match who {
        As::Token(t) => req = req.bearer_auth(t),
        As::Staff => req = req.bearer_auth(&app.staff_token),
        As::ApiKey(k) => req = req.header("authorization", format!("ApiKey {k}")),
        As::Anonymous => {}
    }
    if let Some(token) = token {
        req = req.header("cart-token", token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    TestApp::answer(req.send().await.expect("answered")).await
}

async fn add(
    app: &TestApp,
    who: As<'_>,
    token: Option<&str>,
    product: &str,
    quantity: i64,
) -> Answer {
    cart_call(
        app,
        Method::POST,
        "/api/v1/cart/items",
        Some(json!({ "product_id": product, "quantity": quantity })),
        who,
        token,
    )
    .await
}

async fn get_cart(app: &TestApp, who: As<'_>, token: Option<&str>) -> Answer {
    cart_call(app, Method::GET, "/api/v1/cart", None, who, token).await
}

async fn set_quantity(app: &TestApp, who: As<'_>, product: &str, quantity: i64) -> Answer {
    let path = format!("/api/v1/cart/items/{product}");
    let body = json!({ "quantity": quantity });
    cart_call(app, Method::PATCH, &path, Some(body), who, None).await
}

async fn remove_item(app: &TestApp, who: As<'_>, product: &str) -> Answer {
    let path = format!("/api/v1/cart/items/{product}");
    cart_call(app, Method::DELETE, &path, None, who, None).await
}

async fn product(app: &TestApp, amount: i64) -> String {
    app.create_product(json!({ "price": { "amount": amount, "currency": "USD" } }))
        .await["id"]
        .as_str()
        .expect("an id")
        .to_string()
}

fn lines(a: &Answer) -> Vec<(String, i64, String)> {
    a.data()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["product_id"].as_str().unwrap_or_default().to_string(),
                i["quantity"].as_i64().unwrap_or_default(),
                i["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_customer_fills_changes_and_empties_their_cart() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let (a, b) = (product(&app, 250).await, product(&app, 1000).await);
    add(&app, As::Token(&ada), None, &a, 2).await;
    let more = add(&app, As::Token(&ada), None, &a, 3).await;
    assert_eq!(more.status, StatusCode::OK, "{:?}", more.body);
    assert!(
        more.headers.get("cart-token").is_none(),
        "a customer's cart has no token"
    );
    let both = add(&app, As::Token(&ada), None, &b, 1).await;
    assert_eq!(
        lines(&both),
        vec![
            (a.clone(), 5, "available".into()),
            (b.clone(), 1, "available".into())
        ]
    );
    assert_eq!(
        both.data()["items"][0]["unit_price"],
        json!({ "amount": 250, "currency": "USD" })
    );
    assert_eq!(
        both.data()["items"][0]["line_total"],
        json!({ "amount": 1250, "currency": "USD" })
    );
    assert_eq!(
        both.data()["subtotals"],
        json!([{ "amount": 2250, "currency": "USD" }])
    );
    assert_eq!(both.data()["item_count"], 6);

    // Someone else's cart is their own.
    let bob = app.register_and_login("bob@example.com").await;
    let theirs = get_cart(&app, As::Token(&bob), None).await;
    assert_eq!(theirs.data()["items"], json!([]));

    let changed = set_quantity(&app, As::Token(&ada), &a, 1).await;
    assert_eq!(lines(&changed)[0].1, 1);
    let removed = remove_item(&app, As::Token(&ada), &b).await;
    assert_eq!(lines(&removed).len(), 1);
    let emptied = cart_call(
        &app,
        Method::DELETE,
        "/api/v1/cart",
        None,
        As::Token(&ada),
        None,
    )
    .await;
    assert_eq!(emptied.data()["items"], json!([]));
    assert_eq!(emptied.data()["subtotals"], json!([]));
}

#[tokio::test]
async fn prices_come_from_the_catalog_when_read_and_unsellable_lines_are_flagged() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let (a, b, c) = (
        product(&app, 100).await,
        product(&app, 200).await,
        product(&app, 300).await,
    );
    for p in [&a, &b, &c] {
        add(&app, As::Token(&ada), None, p, 1).await;
    }
    app.patch(
        &format!("/api/v1/products/{a}"),
        json!({ "price": { "amount": 150, "currency": "USD" } }),
    )
    .await;
    app.patch(&format!("/api/v1/products/{b}"), json!({ "active": false }))
        .await;
    app.delete(&format!("/api/v1/products/{c}")).await;
    let cart = get_cart(&app, As::Token(&ada), None).await;
    assert_eq!(
        lines(&cart),
        vec![
            (a.clone(), 1, "available".into()),
            (b.clone(), 1, "inactive".into()),
            (c.clone(), 1, "deleted".into()),
        ]
    );
    assert_eq!(cart.data()["items"][0]["unit_price"]["amount"], 150);
    assert!(cart.data()["items"][2]["unit_price"].is_null());
    assert_eq!(
        cart.data()["subtotals"],
        json!([{ "amount": 150, "currency": "USD" }])
    );
    // Unsellable products cannot be added.
    for p in [&b, &c, &"prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b".to_string()] {
        let refused = add(&app, As::Token(&ada), None, p, 1).await;
        assert_eq!(refused.code(), "CART_PRODUCT_UNAVAILABLE", "{p}");
    }
}

#[tokio::test]
async fn an_anonymous_cart_lives_by_its_token_and_merges_at_login() {
    let app = spawn_app().await;
    let (a, b) = (product(&app, 100).await, product(&app, 200).await);
    let first = add(&app, As::Anonymous, None, &a, 98).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let token = first.headers["cart-token"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(token.starts_with("crt_"));
    assert_eq!(first.data()["cart_token"], token.as_str());
    let second = add(&app, As::Anonymous, Some(&token), &b, 1).await;
    assert!(second.headers.get("cart-token").is_none(), "the same cart");
    assert_eq!(lines(&second).len(), 2);
    for other in [None, Some("crt_someone-elses"), Some("nonsense")] {
        let a = get_cart(&app, As::Anonymous, other).await;
        assert_eq!(a.data()["items"], json!([]), "{other:?}");
    }

    // Ada already has 5 of `a`; the merge adds, up to the line limit.
    let ada = app.register_and_login("ada@example.com").await;
    add(&app, As::Token(&ada), None, &a, 5).await;
    let merged = get_cart(&app, As::Token(&ada), Some(&token)).await;
    // Lines keep the time they were first added: `b` came with the anonymous
    // cart (added before Ada's `a`).
    assert_eq!(
        lines(&merged),
        vec![
            (b.clone(), 1, "available".into()),
            (a.clone(), 99, "available".into())
        ]
    );
    let gone = get_cart(&app, As::Anonymous, Some(&token)).await;
    assert_eq!(
        gone.data()["items"],
        json!([]),
        "the anonymous cart is gone"
    );
    let again = get_cart(&app, As::Token(&ada), Some(&token)).await;
    assert_eq!(
        lines(&again),
        lines(&merged),
        "merging twice changes nothing"
    );
}

#[tokio::test]
async fn bad_cart_requests_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let a = product(&app, 100).await;
    add(&app, As::Token(&ada), None, &a, 90).await;
    let missing = "prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b";
    for (answer, status, code) in [
        (
            add(&app, As::Token(&ada), None, &a, 10).await,
            422,
            "CART_QUANTITY_LIMIT",
        ),
        (
            add(&app, As::Token(&ada), None, &a, 0).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            add(&app, As::Token(&ada), None, &a, 100).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            add(&app, As::Token(&ada), None, &a, -1).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            add(
                &app,
                As::Token(&ada),
                None,
                "cat_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b",
                1,
            )
            .await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            set_quantity(&app, As::Token(&ada), &a, 0).await,
            422,
            "VALIDATION_FAILED",
        ),
        (
            set_quantity(&app, As::Token(&ada), missing, 1).await,
            404,
            "CART_ITEM_NOT_FOUND",
        ),
        (
            remove_item(&app, As::Token(&ada), missing).await,
            404,
            "CART_ITEM_NOT_FOUND",
        ),
    ] {
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (status, code),
            "{:?}",
            answer.body
        );
    }
    let cart = get_cart(&app, As::Token(&ada), None).await;
    assert_eq!(lines(&cart), vec![(a, 90, "available".into())]);
}
