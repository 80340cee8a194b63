//! The catalog through its REST API.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{As, product_body, spawn_app};

#[tokio::test]
async fn staff_create_a_product_and_anyone_reads_it() {
    let app = spawn_app().await;
    let category = app.create_category("Audio").await;
    let created = app
        .post(
            "/api/v1/products",
            json!({
                "sku": "AUD-1", "name": "  Studio Headphones ", "description": "Closed-back.",
                "price": {"amount": 14999, "currency": "EUR"}, "category_id": category,
                "attributes": {"colour": "black"}
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let p = created.data();
    let id = p["id"].as_str().expect("an id");
    assert!(id.starts_with("prod_"));
    assert_eq!(p["name"], "Studio Headphones");
    assert_eq!(p["slug"], "studio-headphones");
    assert_eq!(p["price"], json!({"amount": 14999, "currency": "EUR"}));
    assert_eq!(p["attributes"], json!({"colour": "black"}));
    assert_eq!(p["active"], true);
    assert_eq!(
        created.headers["location"].to_str().ok(),
        Some(format!("/api/v1/products/{id}").as_str())
    );

    let read = app.get(&format!("/api/v1/products/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.data(), p);
}

#[tokio::test]
async fn writes_without_the_staff_token_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let anonymous = app
        .call(
            Method::POST,
            "/api/v1/products",
            Some(product_body(json!({}))),
            As::Anonymous,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.code(), "AUTH_REQUIRED");

    let wrong = app
        .client
        .post(format!("{}/api/v1/products", app.base))
        .bearer_auth("not-the-token")
        .json(&product_body(json!({})))
        .send()
        .await
        .expect("answered");
    let wrong = crate::helpers::TestApp::answer(wrong).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.code(), "AUTH_INVALID_TOKEN");
    assert!(app.all_products("").await.is_empty());
}

#[tokio::test]
async fn a_duplicate_sku_is_a_conflict_even_when_two_requests_race() {
    let app = spawn_app().await;
    let body = product_body(json!({"sku": "RACE-1"}));
    let mut second = body.clone();
    second["name"] = json!("Another name");
    let (a, b) = tokio::join!(
        app.post("/api/v1/products", body),
        app.post("/api/v1/products", second)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    let loser = if a.status == StatusCode::CONFLICT {
        a
    } else {
        b
    };
    assert_eq!(loser.code(), "CATALOG_SKU_TAKEN");
    assert_eq!(app.all_products("").await.len(), 1);
}

#[tokio::test]
async fn a_taken_slug_is_a_conflict() {
    let app = spawn_app().await;
    app.create_product(json!({"slug": "same"})).await;
    let a = app
        .post("/api/v1/products", product_body(json!({"slug": "same"})))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "CATALOG_SLUG_TAKEN")
    );
}

#[tokio::test]
async fn an_unknown_category_is_refused() {
    let app = spawn_app().await;
    let a = app
        .post(
            "/api/v1/products",
            product_body(json!({"category_id": "cat_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "CATALOG_UNKNOWN_CATEGORY")
    );
    assert!(app.all_products("").await.is_empty());
}

#[tokio::test]
async fn bad_product_bodies_get_coded_errors_and_write_nothing() {
    let app = spawn_app().await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"price": {"amount": -1, "currency": "USD"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"price": {"amount": 10_000_000_001_i64, "currency": "USD"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"price": {"amount": 1e30, "currency": "USD"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"price": {"amount": "12", "currency": "USD"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"price": {"amount": 100, "currency": "usd"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"price": {"amount": 100, "currency": "XAU"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"name": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"name": "x".repeat(201)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"name": 42}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"sku": "has spaces"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"sku": "S".repeat(65)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"slug": "Not A Slug"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"description": "d".repeat(10_001)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"attributes": [1, 2]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
        ),
        (
            json!({"category_id": "prod_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"category_id": "nonsense"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"unknown_field": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            json!({"active": "yes"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
    ];
    for (overrides, status, code) in cases {
        let a = app
            .post("/api/v1/products", product_body(overrides.clone()))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (status, code),
            "{overrides}: {:?}",
            a.body
        );
    }
    let missing = app
        .post(
            "/api/v1/products",
            json!({"name": "No SKU", "price": {"amount": 1, "currency": "USD"}}),
        )
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "REQUEST_INVALID_BODY")
    );
    let validation = app
        .post(
            "/api/v1/products",
            product_body(json!({"name": "", "sku": "bad sku"})),
        )
        .await;
    let fields: Vec<&str> = validation.body["error"]["details"]["fields"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["sku", "name"], "every invalid field is named");
    assert!(app.all_products("").await.is_empty(), "nothing was written");
}

#[tokio::test]
async fn malformed_requests_get_coded_errors() {
    let app = spawn_app().await;
    let url = format!("{}/api/v1/products", app.base);
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = app
            .client
            .post(&url)
            .bearer_auth(&app.staff_token)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move { crate::helpers::TestApp::answer(req.send().await.expect("answered")).await }
    };
    let cases = [
        (
            "{\"sku\": ",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "REQUEST_MALFORMED_JSON",
        ),
        (
            "",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "REQUEST_MALFORMED_JSON",
        ),
        (
            "[]",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "REQUEST_INVALID_BODY",
        ),
        (
            "{}",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "REQUEST_UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "{}",
            Some("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "REQUEST_UNSUPPORTED_MEDIA_TYPE",
        ),
    ];
    for (body, ct, status, code) in cases {
        let a = send(body, ct).await;
        assert_eq!((a.status, a.code()), (status, code), "{body:?} {ct:?}");
    }
    assert!(app.all_products("").await.is_empty());
}

#[tokio::test]
async fn a_huge_body_is_refused_with_413() {
    let app = spawn_app().await;
    let huge = product_body(json!({"description": "x".repeat(2 * 1024 * 1024)}));
    let a = app.post("/api/v1/products", huge).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "REQUEST_BODY_TOO_LARGE")
    );
}

#[tokio::test]
async fn invalid_ids_in_paths_are_400_and_unknown_ones_404() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/products/123",
        "/api/v1/products/cat_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b",
        "/api/v1/products/prod_0193A0B1C2D37E4F8A9B0C1D2E3F4A5B",
        "/api/v1/categories/prod_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b",
    ] {
        let a = app.get(path).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "REQUEST_INVALID_PATH"),
            "{path}"
        );
    }
    let a = app
        .get("/api/v1/products/prod_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b")
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "CATALOG_PRODUCT_NOT_FOUND")
    );
    let a = app
        .get("/api/v1/categories/cat_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b")
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "CATALOG_CATEGORY_NOT_FOUND")
    );
}

#[tokio::test]
async fn patch_changes_only_what_is_sent_and_null_clears_the_category() {
    let app = spawn_app().await;
    let category = app.create_category("Kitchen").await;
    let p = app
        .create_product(json!({"category_id": category, "description": "Keep me"}))
        .await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));

    let a = app
        .patch(
            &path,
            json!({"price": {"amount": 2500, "currency": "USD"}, "active": false}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.data()["price"]["amount"], 2500);
    assert_eq!(a.data()["active"], false);
    assert_eq!(a.data()["description"], "Keep me");
    assert_eq!(a.data()["category_id"], json!(category));

    let a = app.patch(&path, json!({"category_id": null})).await;
    assert_eq!(a.data()["category_id"], Value::Null);

    for (body, code) in [
        (json!({}), "VALIDATION_FAILED"),
        (
            json!({"price": {"amount": -5, "currency": "USD"}}),
            "VALIDATION_FAILED",
        ),
        (json!({"sku": 5}), "REQUEST_INVALID_BODY"),
        (
            json!({"id": "prod_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b"}),
            "REQUEST_INVALID_BODY",
        ),
    ] {
        let a = app.patch(&path, body.clone()).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
            "{body}"
        );
    }
    let unchanged = app.get_as(&path, As::Staff).await;
    assert_eq!(unchanged.data()["price"]["amount"], 2500);

    let other = app.create_product(json!({})).await;
    let a = app.patch(&path, json!({"sku": other["sku"]})).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "CATALOG_SKU_TAKEN")
    );
    let a = app
        .patch(
            "/api/v1/products/prod_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b",
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "CATALOG_PRODUCT_NOT_FOUND")
    );
}

#[tokio::test]
async fn inactive_products_are_hidden_from_customers() {
    let app = spawn_app().await;
    let p = app.create_product(json!({"active": false})).await;
    app.create_product(json!({})).await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));

    assert_eq!(app.get(&path).await.code(), "CATALOG_PRODUCT_NOT_FOUND");
    assert_eq!(app.get_as(&path, As::Staff).await.status, StatusCode::OK);

    let public = app.get("/api/v1/products").await;
    assert_eq!(public.data().as_array().map(Vec::len), Some(1));
    let asked = app.get("/api/v1/products?active=false").await;
    assert_eq!(
        (asked.status, asked.code()),
        (StatusCode::UNAUTHORIZED, "AUTH_REQUIRED")
    );
    let staff = app.get_as("/api/v1/products?active=false", As::Staff).await;
    assert_eq!(staff.data().as_array().map(Vec::len), Some(1));
    assert_eq!(app.all_products("").await.len(), 2);
}

#[tokio::test]
async fn delete_removes_a_product() {
    let app = spawn_app().await;
    let p = app.create_product(json!({})).await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));
    let a = app.call(Method::DELETE, &path, None, As::Anonymous).await;
    assert_eq!(a.code(), "AUTH_REQUIRED");
    let a = app.delete(&path).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["success"], true);
    assert_eq!(app.get(&path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&path).await.code(), "CATALOG_PRODUCT_NOT_FOUND");
}

#[tokio::test]
async fn listing_filters_combine() {
    let app = spawn_app().await;
    let audio = app.create_category("Audio").await;
    let books = app.create_category("Books").await;
    for (name, amount, currency, category) in [
        ("Red Speaker", 5000, "USD", &audio),
        ("Blue Speaker", 9000, "USD", &audio),
        ("Speaker Stand", 3000, "EUR", &audio),
        ("Speaking Book", 1500, "USD", &books),
        ("Cookbook", 2500, "USD", &books),
    ] {
        app.create_product(json!({"name": name, "price": {"amount": amount, "currency": currency}, "category_id": category}))
            .await;
    }
    let names = |a: crate::helpers::Answer| -> Vec<String> {
        let mut v: Vec<String> = a
            .data()
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["name"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(app.get(&format!("/api/v1/products?category={audio}")).await),
        ["Blue Speaker", "Red Speaker", "Speaker Stand"]
    );
    assert_eq!(
        names(
            app.get("/api/v1/products?min_price=2500&max_price=5000")
                .await
        ),
        ["Cookbook", "Red Speaker", "Speaker Stand"]
    );
    assert_eq!(
        names(app.get("/api/v1/products?currency=EUR").await),
        ["Speaker Stand"]
    );
    assert_eq!(
        names(app.get("/api/v1/products?q=SPEAK").await),
        [
            "Blue Speaker",
            "Red Speaker",
            "Speaker Stand",
            "Speaking Book"
        ]
    );
    assert_eq!(
        names(
            app.get(&format!(
                "/api/v1/products?q=speak&category={books}&max_price=2000"
            ))
            .await
        ),
        ["Speaking Book"]
    );
    assert_eq!(
        names(app.get("/api/v1/products?q=100%25").await),
        Vec::<String>::new(),
        "wildcards in q are literal"
    );
}

#[tokio::test]
async fn pages_follow_the_sort_order_without_gaps_or_repeats() {
    let app = spawn_app().await;
    for i in 0..23 {
        // Equal prices in groups of three exercise the id tie-breaker.
        app.create_product(json!({"name": format!("item {:02}", (i * 7) % 23), "price": {"amount": 100 + (i / 3) * 10, "currency": "USD"}}))
            .await;
    }
    for sort in ["newest", "oldest", "price", "-price", "name", "-name"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/products?limit=5&sort={sort}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let a = app.get(&path).await;
            assert_eq!(a.status, StatusCode::OK, "{sort}: {:?}", a.body);
            let items = a.data().as_array().expect("array").clone();
            assert!(items.len() <= 5);
            seen.extend(items);
            match a.body["meta"]["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 23, "{sort}");
        let mut ids: Vec<&str> = seen.iter().filter_map(|p| p["id"].as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 23, "{sort}: no repeats");
        let key = |p: &Value| -> (i64, String, String) {
            match sort.trim_start_matches('-') {
                "price" => (
                    p["price"]["amount"].as_i64().unwrap_or(0),
                    String::new(),
                    p["id"].as_str().unwrap_or("").into(),
                ),
                "name" => (
                    0,
                    p["name"].as_str().unwrap_or("").into(),
                    p["id"].as_str().unwrap_or("").into(),
                ),
                _ => (
                    0,
                    p["created_at"].as_str().unwrap_or("").into(),
                    p["id"].as_str().unwrap_or("").into(),
                ),
            }
        };
        let keys: Vec<_> = seen.iter().map(key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        if sort.starts_with('-') || sort == "newest" {
            sorted.reverse();
        }
        assert_eq!(keys, sorted, "{sort}");
    }
}

#[tokio::test]
async fn bad_listing_parameters_get_coded_errors() {
    let app = spawn_app().await;
    let first = app.get("/api/v1/products?limit=1&sort=price").await;
    app.create_product(json!({})).await;
    app.create_product(json!({})).await;
    let page = app.get("/api/v1/products?limit=1&sort=price").await;
    let cursor = page.body["meta"]["next_cursor"]
        .as_str()
        .expect("a cursor")
        .to_string();
    assert_eq!(first.status, StatusCode::OK);
    for (query, code) in [
        ("limit=0", "REQUEST_INVALID_QUERY"),
        ("limit=101", "REQUEST_INVALID_QUERY"),
        ("limit=abc", "REQUEST_INVALID_QUERY"),
        ("min_price=-1", "REQUEST_INVALID_QUERY"),
        ("min_price=10&max_price=5", "REQUEST_INVALID_QUERY"),
        ("sort=random", "REQUEST_INVALID_QUERY"),
        ("currency=usd", "REQUEST_INVALID_QUERY"),
        (
            "category=prod_0193a0b1c2d37e4f8a9b0c1d2e3f4a5b",
            "REQUEST_INVALID_QUERY",
        ),
        ("colour=red", "REQUEST_INVALID_QUERY"),
        ("active=maybe", "REQUEST_INVALID_QUERY"),
        ("cursor=garbage", "REQUEST_INVALID_CURSOR"),
        ("cursor=", "REQUEST_INVALID_CURSOR"),
        (
            &format!("sort=name&cursor={cursor}"),
            "REQUEST_INVALID_CURSOR",
        ),
    ] {
        let a = app.get(&format!("/api/v1/products?{query}")).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, code),
            "{query}: {:?}",
            a.body
        );
    }
    let long_q = format!("/api/v1/products?q={}", "a".repeat(201));
    assert_eq!(app.get(&long_q).await.code(), "REQUEST_INVALID_QUERY");
    let ok = app
        .get(&format!(
            "/api/v1/products?sort=price&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn categories_nest_refuse_cycles_and_cannot_be_deleted_while_used() {
    let app = spawn_app().await;
    let parent = app.create_category("Outdoor").await;
    let child = app
        .post(
            "/api/v1/categories",
            json!({"name": "Tents", "parent_id": parent}),
        )
        .await;
    assert_eq!(child.status, StatusCode::CREATED, "{:?}", child.body);
    let child = child.data()["id"].as_str().expect("id").to_string();

    let cycle = app
        .patch(
            &format!("/api/v1/categories/{parent}"),
            json!({"parent_id": child}),
        )
        .await;
    assert_eq!(
        (cycle.status, cycle.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "CATALOG_CATEGORY_CYCLE")
    );
    let own = app
        .patch(
            &format!("/api/v1/categories/{parent}"),
            json!({"parent_id": parent}),
        )
        .await;
    assert_eq!(own.code(), "CATALOG_CATEGORY_CYCLE");

    let dup = app
        .post("/api/v1/categories", json!({"name": "Outdoor"}))
        .await;
    assert_eq!(
        (dup.status, dup.code()),
        (StatusCode::CONFLICT, "CATALOG_CATEGORY_SLUG_TAKEN")
    );

    let in_use = app.delete(&format!("/api/v1/categories/{parent}")).await;
    assert_eq!(
        (in_use.status, in_use.code()),
        (StatusCode::CONFLICT, "CATALOG_CATEGORY_IN_USE")
    );
    let p = app.create_product(json!({"category_id": child})).await;
    let in_use = app.delete(&format!("/api/v1/categories/{child}")).await;
    assert_eq!(in_use.code(), "CATALOG_CATEGORY_IN_USE");

    app.delete(&format!(
        "/api/v1/products/{}",
        p["id"].as_str().expect("id")
    ))
    .await;
    assert_eq!(
        app.delete(&format!("/api/v1/categories/{child}"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&format!("/api/v1/categories/{parent}"))
            .await
            .status,
        StatusCode::OK
    );
    let all = app.get("/api/v1/categories").await;
    assert_eq!(all.data(), &json!([]));
}

#[tokio::test]
async fn the_demo_catalog_loads_once_into_an_empty_database() {
    let app = crate::helpers::spawn_app_with(|c| c.seed.demo = true).await;
    let categories = app.get("/api/v1/categories").await;
    assert_eq!(categories.data().as_array().map(Vec::len), Some(10));
    let products = app.all_products("").await;
    assert_eq!(products.len(), 200);
    assert!(products.iter().any(|p| p["active"] == false));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = agora_platform::storage::ObjectStorage::local(dir.path()).expect("storage");
    let report = agora_catalog::seed::seed_demo(&agora::app::catalog(
        &agora_platform::Config::default(),
        &app.db.db,
        None,
        storage,
    ))
    .await
    .expect("seeding runs");
    assert!(report.products.is_empty(), "a second run adds nothing");
}

#[tokio::test]
async fn nul_bytes_and_control_characters_are_refused_not_stored() {
    // PostgreSQL TEXT cannot hold NUL: without a rule this is a 500 there.
    let app = spawn_app().await;
    let a = app
        .post(
            "/api/v1/products",
            product_body(json!({"description": "a\u{0}b"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED")
    );
    let ok = app
        .post(
            "/api/v1/products",
            product_body(json!({"description": "line one\nline\ttwo\r\n"})),
        )
        .await;
    assert_eq!(
        ok.status,
        StatusCode::CREATED,
        "newlines and tabs are fine: {:?}",
        ok.body
    );
    let a = app
        .post(
            "/api/v1/categories",
            json!({"name": "Tools", "description": "\u{0}"}),
        )
        .await;
    assert_eq!(a.code(), "VALIDATION_FAILED");
    let a = app.get("/api/v1/products?q=a%00b").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "REQUEST_INVALID_QUERY")
    );
    assert_eq!(app.all_products("").await.len(), 1);
}

#[tokio::test]
async fn forged_cursors_are_refused_with_their_code() {
    let app = spawn_app().await;
    app.create_product(json!({})).await;
    let id = "0193a0b1-c2d3-7e4f-8a9b-0c1d2e3f4a5b";
    for (sort, forged) in [
        ("name", json!({"s": "name", "k": "a\u{0}", "i": id})),
        (
            "price",
            json!({"s": "price", "k": "text where a number belongs", "i": id}),
        ),
        ("name", json!({"s": "name", "k": 42, "i": id})),
        ("newest", json!({"s": "newest", "k": 1, "i": "not-a-uuid"})),
    ] {
        let cursor = agora_kernel::Cursor::encode(&forged);
        let a = app
            .get(&format!("/api/v1/products?sort={sort}&cursor={cursor}"))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "REQUEST_INVALID_CURSOR"),
            "{forged}"
        );
    }
}

#[tokio::test]
async fn anonymous_writes_are_refused_before_their_input_is_read() {
    let app = spawn_app().await;
    let url = format!("{}/api/v1/products", app.base);
    let malformed = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("answered");
    let malformed = crate::helpers::TestApp::answer(malformed).await;
    assert_eq!(
        (malformed.status, malformed.code()),
        (StatusCode::UNAUTHORIZED, "AUTH_REQUIRED")
    );
    let bad_path = app
        .call(
            Method::PATCH,
            "/api/v1/products/not-an-id",
            Some(json!({"name": "x"})),
            As::Anonymous,
        )
        .await;
    assert_eq!(
        (bad_path.status, bad_path.code()),
        (StatusCode::UNAUTHORIZED, "AUTH_REQUIRED")
    );
    let lower = app
        .client
        .post(&url)
        .header("authorization", format!("bearer {}", app.staff_token))
        .json(&product_body(json!({})))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        lower.status(),
        StatusCode::CREATED,
        "the auth scheme is case-insensitive"
    );
}

#[tokio::test]
async fn concurrent_reparenting_never_makes_a_cycle() {
    let app = spawn_app().await;
    for round in 0..10 {
        let a = app.create_category(&format!("Left {round}")).await;
        let b = app.create_category(&format!("Right {round}")).await;
        let (path_a, path_b) = (
            format!("/api/v1/categories/{a}"),
            format!("/api/v1/categories/{b}"),
        );
        let (x, y) = tokio::join!(
            app.patch(&path_a, json!({"parent_id": b})),
            app.patch(&path_b, json!({"parent_id": a})),
        );
        let refused = [&x, &y]
            .iter()
            .filter(|r| r.code() == "CATALOG_CATEGORY_CYCLE")
            .count();
        assert_eq!(refused, 1, "round {round}: {:?} / {:?}", x.body, y.body);
    }
}

#[tokio::test]
async fn names_sort_the_same_on_every_engine() {
    let app = spawn_app().await;
    for name in ["banana", "Apple", "cherry", "Banana split", "apple pie"] {
        app.create_product(json!({"name": name})).await;
    }
    let a = app.get("/api/v1/products?sort=name").await;
    let names: Vec<&str> = a
        .data()
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    // Byte order (upper case first), as SQLite compares text.
    assert_eq!(
        names,
        ["Apple", "Banana split", "apple pie", "banana", "cherry"]
    );
}

#[tokio::test]
async fn error_messages_do_not_echo_unbounded_input() {
    let app = spawn_app().await;
    let a = app
        .post(
            "/api/v1/products",
            product_body(json!({"active": "y".repeat(5_000)})),
        )
        .await;
    assert_eq!(a.code(), "REQUEST_INVALID_BODY");
    let message = a.body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.chars().count() <= 300,
        "{} characters",
        message.chars().count()
    );
}

/// A public GET with `If-None-Match: tag`.
async fn revalidate(
    app: &crate::helpers::TestApp,
    path: &str,
    tag: &str,
) -> crate::helpers::Answer {
    app.call_with(
        Method::GET,
        path,
        None,
        As::Anonymous,
        &[("if-none-match", tag)],
    )
    .await
}

/// How many products the public list shows.
async fn public_listed(app: &crate::helpers::TestApp) -> Option<usize> {
    app.get("/api/v1/products")
        .await
        .data()
        .as_array()
        .map(Vec::len)
}

fn etag(answer: &crate::helpers::Answer) -> String {
    answer.headers["etag"]
        .to_str()
        .expect("an ASCII ETag")
        .to_string()
}

#[tokio::test]
async fn public_reads_carry_an_etag_and_answer_304_while_it_still_matches() {
    let app = spawn_app().await;
    let p = app
        .create_product(json!({"price": {"amount": 1000, "currency": "USD"}}))
        .await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));
    for read in [&path, "/api/v1/products?limit=5"] {
        let first = app.get(read).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.headers["cache-control"], "public, no-cache");
        let tag = etag(&first);
        let again = revalidate(&app, read, &tag).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{read}");
        assert_eq!(etag(&again), tag);
        assert_eq!(again.body, Value::Null, "no body");
        // A request id is per request, not part of the representation.
        let third = app.get(read).await;
        assert_eq!(etag(&third), tag);
        assert_ne!(
            third.body["meta"]["request_id"],
            first.body["meta"]["request_id"]
        );
    }

    // A change shows at once, under a new tag, however the read was cached.
    let old_product = etag(&app.get(&path).await);
    let old_list = etag(&app.get("/api/v1/products?limit=5").await);
    let changed = app
        .patch(&path, json!({"price": {"amount": 1250, "currency": "USD"}}))
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    let read = revalidate(&app, &path, &old_product).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.data()["price"]["amount"], 1250);
    assert_ne!(etag(&read), old_product);
    let list = revalidate(&app, "/api/v1/products?limit=5", &old_list).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.data()[0]["price"]["amount"], 1250);
}

#[tokio::test]
async fn a_retired_product_leaves_cached_reads_at_once() {
    let app = spawn_app().await;
    let p = app.create_product(json!({})).await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));
    // Fill the cache with the product and a page that lists it.
    assert_eq!(app.get(&path).await.status, StatusCode::OK);
    assert_eq!(public_listed(&app).await, Some(1));

    assert_eq!(
        app.patch(&path, json!({"active": false})).await.status,
        StatusCode::OK
    );
    assert_eq!(app.get(&path).await.code(), "CATALOG_PRODUCT_NOT_FOUND");
    assert_eq!(public_listed(&app).await, Some(0));

    assert_eq!(app.delete(&path).await.status, StatusCode::OK);
    assert_eq!(
        app.get_as(&path, As::Staff).await.code(),
        "CATALOG_PRODUCT_NOT_FOUND"
    );
}

#[tokio::test]
async fn staff_views_are_private_and_never_from_the_public_cache() {
    let app = spawn_app().await;
    let p = app.create_product(json!({"active": false})).await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));
    let staff = app.get_as(&path, As::Staff).await;
    assert_eq!(staff.status, StatusCode::OK);
    assert_eq!(staff.headers["cache-control"], "private, no-store");
    assert!(staff.headers.get("etag").is_none());
    // What staff saw is not served to the public.
    assert_eq!(app.get(&path).await.code(), "CATALOG_PRODUCT_NOT_FOUND");
    let list = app.get_as("/api/v1/products", As::Staff).await;
    assert_eq!(list.headers["cache-control"], "private, no-store");
    assert_eq!(list.data().as_array().map(Vec::len), Some(1));
    assert_eq!(public_listed(&app).await, Some(0));
}

#[tokio::test]
async fn with_the_cache_off_public_reads_answer_the_same() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.cache.backend = agora_platform::config::CacheBackend::None;
    })
    .await;
    let p = app.create_product(json!({})).await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));
    let read = app.get(&path).await;
    assert_eq!(read.data(), &p);
    let tag = etag(&read);
    let again = revalidate(&app, &path, &tag).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        app.patch(&path, json!({"name": "Renamed"})).await.status,
        StatusCode::OK
    );
    assert_eq!(app.get(&path).await.data()["name"], "Renamed");
}

/// Reads and a write through the shared Redis cache (when a Redis is named).
#[tokio::test]
#[ignore = "needs a Redis server: set AGORA_TEST_REDIS_URL and pass --ignored"]
async fn public_reads_go_through_redis_and_see_writes_at_once() {
    reads_see_writes_at_once(crate::helpers::spawn_app_with_redis().await).await;
}

/// The same through memory in front of Redis.
#[tokio::test]
#[ignore = "needs a Redis server: set AGORA_TEST_REDIS_URL and pass --ignored"]
async fn public_reads_go_through_both_tiers_and_see_writes_at_once() {
    reads_see_writes_at_once(crate::helpers::spawn_app_with_two_tier_cache().await).await;
}

async fn reads_see_writes_at_once(app: crate::helpers::TestApp) {
    let p = app.create_product(json!({})).await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));
    let first = app.get(&path).await;
    assert_eq!(first.data(), &p);
    assert_eq!(
        revalidate(&app, &path, &etag(&first)).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        app.patch(&path, json!({"name": "Renamed"})).await.status,
        StatusCode::OK
    );
    assert_eq!(app.get(&path).await.data()["name"], "Renamed");
}

/// Redis down: public reads answer from the database, as if there were no cache.
#[tokio::test]
async fn with_the_redis_cache_down_public_reads_still_answer() {
    let app = crate::helpers::spawn_app_with_redis_down().await;
    let p = app.create_product(json!({})).await;
    let path = format!("/api/v1/products/{}", p["id"].as_str().expect("id"));
    for _ in 0..3 {
        let read = app.get(&path).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.data(), &p);
    }
    assert_eq!(
        app.patch(&path, json!({"name": "Renamed"})).await.status,
        StatusCode::OK
    );
    assert_eq!(app.get(&path).await.data()["name"], "Renamed");
    let list = app.get("/api/v1/products").await;
    assert_eq!(list.data().as_array().map(Vec::len), Some(1));
}

/// A catalog write is published from the catalog's outbox (so other nodes'
/// caches hear of it), once.
#[tokio::test]
async fn catalog_writes_are_published_from_the_outbox() {
    let app = spawn_app().await;
    let created = app
        .post("/api/v1/products", product_body(json!({ "sku": "PUB-1" })))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.data()["id"].as_str().expect("an id").to_string();
    let mut rows: Vec<(String, String, Option<i64>)> = Vec::new();
    for _ in 0..200 {
        rows = sqlx::query_as(
            "SELECT kind, aggregate_id, published_at FROM catalog_outbox ORDER BY seq",
        )
        .fetch_all(app.db.db.reader())
        .await
        .expect("the outbox reads");
        if rows.iter().all(|r| r.2.is_some()) && !rows.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "catalog.product_changed");
    assert_eq!(rows[0].1, id);
    assert!(rows[0].2.is_some(), "published: {rows:?}");
}
