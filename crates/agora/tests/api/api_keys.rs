//! API keys for service accounts: created by administrators, shown once, stored
//! hashed, sent as `Authorization: ApiKey …`, revocable.

use agora_kernel::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{As, TestApp, product_body, spawn_app};

async fn admin(app: &TestApp) -> String {
    app.create_user_and_login("admin@agora.test", &[Role::Admin])
        .await
}

#[tokio::test]
async fn an_admin_creates_a_key_that_works_until_it_is_revoked() {
    let app = spawn_app().await;
    let admin = admin(&app).await;
    let a = app
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(json!({ "name": "warehouse sync", "permissions": ["catalog:write"], "expires_in_days": 30 })),
            As::Token(&admin),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let created = a.data().clone();
    let key = created["key"].as_str().expect("the key, this once");
    let id = created["id"].as_str().expect("an id");
    assert!(key.starts_with("agk_") && key.len() == 47, "{key}");
    assert!(id.starts_with("key_"));
    assert_eq!(created["prefix"], &key[..12]);
    assert_eq!(created["permissions"], json!(["catalog:write"]));
    assert!(
        created["created_by"]
            .as_str()
            .is_some_and(|c| c.starts_with("usr_"))
    );
    assert!(created["expires_at"].is_string());
    assert!(created["revoked_at"].is_null());
    assert_eq!(
        a.headers["location"].to_str().ok(),
        Some(format!("/api/v1/api-keys/{id}").as_str())
    );

    // It acts with its permissions and nothing more.
    let product = app
        .call(
            Method::POST,
            "/api/v1/products",
            Some(product_body(json!({}))),
            As::ApiKey(key),
        )
        .await;
    assert_eq!(product.status, StatusCode::CREATED, "{:?}", product.body);
    let users = app.get_as("/api/v1/users", As::ApiKey(key)).await;
    assert_eq!(users.status, StatusCode::FORBIDDEN);
    assert_eq!(users.code(), "AUTH_FORBIDDEN");
    assert_eq!(users.body["error"]["details"]["permission"], "users:manage");
    let me = app.get_as("/api/v1/users/me", As::ApiKey(key)).await;
    assert_eq!(me.status, StatusCode::FORBIDDEN);
    assert_eq!(me.code(), "AUTH_USER_REQUIRED");

    // Listed and read back, never with the key itself.
    let list = app.get_as("/api/v1/api-keys", As::Token(&admin)).await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    assert_eq!(list.data().as_array().map(Vec::len), Some(1));
    let one = app
        .get_as(&format!("/api/v1/api-keys/{id}"), As::Token(&admin))
        .await;
    assert_eq!(one.status, StatusCode::OK);
    for body in [&list.body, &one.body] {
        assert!(!body.to_string().contains(key), "{body:?}");
        assert!(body.to_string().contains(&key[..12]));
    }

    // Revoked: refused from the next request; revoking again changes nothing.
    let revoke = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            None,
            As::Token(&admin),
        )
        .await;
    assert_eq!(revoke.status, StatusCode::OK, "{:?}", revoke.body);
    let revoked_at = revoke.data()["revoked_at"].clone();
    assert!(revoked_at.is_string());
    let after = app
        .call(
            Method::POST,
            "/api/v1/products",
            Some(product_body(json!({}))),
            As::ApiKey(key),
        )
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.code(), "AUTH_API_KEY_INVALID");
    let again = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            None,
            As::Token(&admin),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.data()["revoked_at"], revoked_at);
}

#[tokio::test]
async fn only_the_hash_of_a_key_is_stored() {
    let app = spawn_app().await;
    let admin = admin(&app).await;
    let key = app
        .create_api_key(As::Token(&admin), &["catalog:write"])
        .await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT prefix, key_hash FROM identity_api_keys")
            .fetch_all(app.db.db.reader())
            .await
            .expect("the keys");
    assert_eq!(rows.len(), 1);
    let (prefix, hash) = &rows[0];
    assert_eq!(prefix, &key[..12]);
    assert_eq!(hash, &agora_platform::auth::secret_hash(&key));
    assert!(!hash.contains(&key[4..]));
}

#[tokio::test]
async fn only_holders_of_api_keys_manage_may_create_list_or_revoke_keys() {
    let app = spawn_app().await;
    let customer = app.register_and_login("ada@example.com").await;
    let body = json!({ "name": "k", "permissions": ["catalog:write"] });
    for (who, status, code) in [
        (As::Anonymous, StatusCode::UNAUTHORIZED, "AUTH_REQUIRED"),
        (
            As::Token(&customer),
            StatusCode::FORBIDDEN,
            "AUTH_FORBIDDEN",
        ),
        (As::Staff, StatusCode::FORBIDDEN, "AUTH_FORBIDDEN"),
        (
            As::ApiKey("agk_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"),
            StatusCode::UNAUTHORIZED,
            "AUTH_API_KEY_INVALID",
        ),
    ] {
        let a = app
            .call(Method::POST, "/api/v1/api-keys", Some(body.clone()), who)
            .await;
        assert_eq!((a.status, a.code()), (status, code), "{who:?}");
        let a = app.get_as("/api/v1/api-keys", who).await;
        assert_eq!((a.status, a.code()), (status, code), "{who:?}");
    }
}

#[tokio::test]
async fn a_key_may_only_grant_what_its_creator_holds() {
    let app = spawn_app().await;
    let admin = admin(&app).await;
    let manager = app
        .create_api_key(As::Token(&admin), &["api_keys:manage", "catalog:write"])
        .await;
    let refused = app
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(json!({ "name": "escalation", "permissions": ["catalog:write", "users:manage"] })),
            As::ApiKey(&manager),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert_eq!(
        refused.body["error"]["details"]["permission"],
        "users:manage"
    );
    let allowed = app
        .create_api_key(As::ApiKey(&manager), &["catalog:write"])
        .await;
    assert!(allowed.starts_with("agk_"));
    let list = app.get_as("/api/v1/api-keys", As::Token(&admin)).await;
    let created_by: Vec<&str> = list
        .data()
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["created_by"].as_str())
        .collect();
    assert_eq!(created_by.len(), 2);
    assert!(created_by[1].starts_with("key_"), "{created_by:?}");
}

#[tokio::test]
async fn bad_key_requests_are_refused_and_create_nothing() {
    let app = spawn_app().await;
    let admin = admin(&app).await;
    for (body, fields) in [
        (
            json!({ "name": "k", "permissions": [] }),
            vec!["permissions"],
        ),
        (
            json!({ "name": "k", "permissions": ["catalog:*"] }),
            vec!["permissions"],
        ),
        (
            json!({ "name": "", "permissions": ["catalog:write"], "expires_in_days": 0 }),
            vec!["name", "expires_in_days"],
        ),
        (
            json!({ "name": "k", "permissions": ["catalog:write"], "expires_in_days": 4000 }),
            vec!["expires_in_days"],
        ),
    ] {
        let a = app
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(body.clone()),
                As::Token(&admin),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(a.code(), "VALIDATION_FAILED");
        let got: Vec<&str> = a.body["error"]["details"]["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .filter_map(|f| f["field"].as_str())
            .collect();
        assert_eq!(got, fields, "{body}");
    }
    let a = app
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(json!({ "name": "k", "permissions": "catalog:write" })),
            As::Token(&admin),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.code(), "REQUEST_INVALID_BODY");
    let missing = app
        .get_as(
            "/api/v1/api-keys/key_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b",
            As::Token(&admin),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "IDENTITY_API_KEY_NOT_FOUND");
    let list = app.get_as("/api/v1/api-keys", As::Token(&admin)).await;
    assert_eq!(list.data(), &json!([]));
}

#[tokio::test]
async fn a_key_that_manages_users_cannot_make_anyone_an_administrator() {
    let app = spawn_app().await;
    let admin = admin(&app).await;
    let key = app
        .create_api_key(As::Token(&admin), &["users:manage"])
        .await;
    let customer = app.register_and_login("mallory@example.com").await;
    let me = app.get_as("/api/v1/users/me", As::Token(&customer)).await;
    let id = me.data()["id"].as_str().expect("an id").to_string();
    let a = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(json!({ "roles": ["admin"] })),
            As::ApiKey(&key),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    assert_eq!(a.code(), "AUTH_FORBIDDEN");
    assert_eq!(a.body["error"]["details"]["permission"], "catalog:write");
    let unchanged = app
        .get_as(&format!("/api/v1/users/{id}"), As::ApiKey(&key))
        .await;
    assert_eq!(unchanged.data()["roles"], json!(["customer"]));
    // What it holds, it may still do: disable the account.
    let a = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(json!({ "disabled": true })),
            As::ApiKey(&key),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}
