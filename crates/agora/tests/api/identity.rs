//! Accounts, logins, sessions and tokens, through the API.

use agora_kernel::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{As, PASSWORD, TestApp, product_body, spawn_app};

async fn register(app: &TestApp, body: Value) -> crate::helpers::Answer {
    app.call(
        Method::POST,
        "/api/v1/auth/register",
        Some(body),
        As::Anonymous,
    )
    .await
}

async fn refresh(app: &TestApp, token: &str) -> crate::helpers::Answer {
    app.call(
        Method::POST,
        "/api/v1/auth/refresh",
        Some(json!({ "refresh_token": token })),
        As::Anonymous,
    )
    .await
}

fn refresh_token(a: &crate::helpers::Answer) -> String {
    a.data()["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string()
}

#[tokio::test]
async fn a_customer_registers_logs_in_and_sees_their_account() {
    let app = spawn_app().await;
    let a = register(
        &app,
        json!({ "email": "  Ada@Example.COM ", "password": PASSWORD, "name": " Ada " }),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let user = a.data().clone();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["roles"], json!(["customer"]));
    assert!(user["id"].as_str().is_some_and(|id| id.starts_with("usr_")));
    assert!(!a.body.to_string().contains("password"), "{:?}", a.body);

    let login = app.login_answer("ADA@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(login.data()["token_type"], "Bearer");
    assert_eq!(login.data()["expires_in"], 900);
    let token = login.data()["access_token"].as_str().unwrap_or_default();

    let me = app.get_as("/api/v1/users/me", As::Token(token)).await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.body);
    assert_eq!(me.data(), &user);
}

#[tokio::test]
async fn an_email_registers_once_whatever_its_case() {
    let app = spawn_app().await;
    let body = json!({ "email": "bob@example.com", "password": PASSWORD, "name": "Bob" });
    assert_eq!(register(&app, body).await.status, StatusCode::CREATED);
    let again = register(
        &app,
        json!({ "email": "BOB@example.com", "password": PASSWORD, "name": "Bob 2" }),
    )
    .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "IDENTITY_EMAIL_TAKEN")
    );
}

#[tokio::test]
async fn bad_registrations_name_every_field_and_create_nothing() {
    let app = spawn_app().await;
    let a = register(
        &app,
        json!({ "email": "not-an-email", "password": "password123", "name": "" }),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED")
    );
    let fields: Vec<&str> = a.body["error"]["details"]["fields"]
        .as_array()
        .map(|f| f.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["email", "password", "name"], "{:?}", a.body);

    for (password, why) in [
        ("short", "too short"),
        ("Password123", "common"),
        ("carol@example.com", "the email"),
    ] {
        let a = register(
            &app,
            json!({ "email": "carol@example.com", "password": password, "name": "Carol" }),
        )
        .await;
        assert_eq!(a.code(), "VALIDATION_FAILED", "{why}: {:?}", a.body);
    }
    let unknown_field = register(
        &app,
        json!({ "email": "carol@example.com", "password": PASSWORD, "name": "C", "roles": ["admin"] }),
    )
    .await;
    assert_eq!(unknown_field.code(), "REQUEST_INVALID_BODY");
    // Nothing was created: the address is still free.
    let login = app.login_answer("carol@example.com", PASSWORD).await;
    assert_eq!(login.code(), "IDENTITY_INVALID_CREDENTIALS");
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_answer() {
    let app = spawn_app().await;
    app.register_and_login("dan@example.com").await;
    let wrong = app
        .login_answer("dan@example.com", "not the right password")
        .await;
    let unknown = app.login_answer("nobody@example.com", PASSWORD).await;
    let malformed = app.login_answer("not an email", PASSWORD).await;
    for a in [&wrong, &unknown, &malformed] {
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNAUTHORIZED, "IDENTITY_INVALID_CREDENTIALS")
        );
        assert_eq!(a.body["error"]["message"], wrong.body["error"]["message"]);
    }
}

#[tokio::test]
async fn a_refresh_token_works_once_and_its_reuse_ends_the_session() {
    let app = spawn_app().await;
    app.register_and_login("eve@example.com").await;
    let first = app.login_answer("eve@example.com", PASSWORD).await;
    let r1 = refresh_token(&first);

    let second = refresh(&app, &r1).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    let r2 = refresh_token(&second);
    assert_ne!(r1, r2);
    let access = second.data()["access_token"].as_str().unwrap_or_default();
    assert_eq!(
        app.get_as("/api/v1/users/me", As::Token(access))
            .await
            .status,
        StatusCode::OK
    );

    // The first token again: theft is assumed, and the whole session ends.
    let reused = refresh(&app, &r1).await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::UNAUTHORIZED, "IDENTITY_REFRESH_TOKEN_REUSED")
    );
    let after = refresh(&app, &r2).await;
    assert_eq!(after.code(), "IDENTITY_REFRESH_TOKEN_INVALID");

    // Another session of the same account is not affected.
    let other = app.login_answer("eve@example.com", PASSWORD).await;
    assert_eq!(
        refresh(&app, &refresh_token(&other)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn concurrent_uses_of_one_refresh_token_let_at_most_one_through() {
    let app = spawn_app().await;
    app.register_and_login("fay@example.com").await;
    let login = app.login_answer("fay@example.com", PASSWORD).await;
    let token = refresh_token(&login);
    let attempts = refresh_concurrently(&app, &token, 8).await;
    let ok: Vec<_> = attempts
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .collect();
    // The first to claim the token wins; every other use is reuse.
    assert_eq!(ok.len(), 1, "{attempts:?}");
    for a in attempts.iter().filter(|a| a.status != StatusCode::OK) {
        assert!(
            matches!(
                a.code(),
                "IDENTITY_REFRESH_TOKEN_REUSED" | "IDENTITY_REFRESH_TOKEN_INVALID"
            ),
            "{a:?}"
        );
    }
    // Reuse was detected, so even the winner's new token no longer works.
    assert_eq!(
        refresh(&app, &refresh_token(ok[0])).await.code(),
        "IDENTITY_REFRESH_TOKEN_INVALID"
    );
}

async fn refresh_concurrently(app: &TestApp, token: &str, n: usize) -> Vec<crate::helpers::Answer> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = app.client.clone();
        let url = format!("{}/api/v1/auth/refresh", app.base);
        let body = json!({ "refresh_token": token });
        set.spawn(async move {
            let response = client.post(url).json(&body).send().await.expect("answered");
            TestApp::answer(response).await
        });
    }
    let mut out = Vec::new();
    while let Some(answer) = set.join_next().await {
        out.push(answer.expect("the task ran"));
    }
    out
}

#[tokio::test]
async fn logout_ends_the_session_and_unknown_tokens_are_refused() {
    let app = spawn_app().await;
    app.register_and_login("gus@example.com").await;
    let login = app.login_answer("gus@example.com", PASSWORD).await;
    let r = refresh_token(&login);
    let out = app
        .call(
            Method::POST,
            "/api/v1/auth/logout",
            Some(json!({ "refresh_token": r })),
            As::Anonymous,
        )
        .await;
    assert_eq!(out.status, StatusCode::OK, "{:?}", out.body);
    assert_eq!(
        refresh(&app, &r).await.code(),
        "IDENTITY_REFRESH_TOKEN_INVALID"
    );
    assert_eq!(
        refresh(&app, "rt_made-up").await.code(),
        "IDENTITY_REFRESH_TOKEN_INVALID"
    );
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions_only() {
    let app = spawn_app().await;
    app.register_and_login("hal@example.com").await;
    let here = app.login_answer("hal@example.com", PASSWORD).await;
    let elsewhere = app.login_answer("hal@example.com", PASSWORD).await;
    let access = here.data()["access_token"].as_str().unwrap_or_default();
    let change = |current: &str, new: &str| {
        app.call(
            Method::POST,
            "/api/v1/users/me/password",
            Some(json!({ "current_password": current, "new_password": new })),
            As::Token(access),
        )
    };

    let wrong = change("not the password", "a brand new passphrase").await;
    assert_eq!(wrong.code(), "VALIDATION_FAILED", "{:?}", wrong.body);
    assert_eq!(
        wrong.body["error"]["details"]["fields"][0]["field"],
        "current_password"
    );
    let weak = change(PASSWORD, "12345678").await;
    assert_eq!(
        weak.body["error"]["details"]["fields"][0]["field"],
        "new_password"
    );

    let ok = change(PASSWORD, "a brand new passphrase").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(
        refresh(&app, &refresh_token(&here)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        refresh(&app, &refresh_token(&elsewhere)).await.code(),
        "IDENTITY_REFRESH_TOKEN_INVALID"
    );
    assert_eq!(
        app.login_answer("hal@example.com", PASSWORD).await.code(),
        "IDENTITY_INVALID_CREDENTIALS"
    );
    assert_eq!(
        app.login_answer("hal@example.com", "a brand new passphrase")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_customer_renames_themselves() {
    let app = spawn_app().await;
    let token = app.register_and_login("ivy@example.com").await;
    let a = app
        .call(
            Method::PATCH,
            "/api/v1/users/me",
            Some(json!({ "name": "Ivy L." })),
            As::Token(&token),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.data()["name"], "Ivy L.");
    let bad = app
        .call(
            Method::PATCH,
            "/api/v1/users/me",
            Some(json!({ "name": "\u{0}" })),
            As::Token(&token),
        )
        .await;
    assert_eq!(bad.code(), "VALIDATION_FAILED");
    let roles = app
        .call(
            Method::PATCH,
            "/api/v1/users/me",
            Some(json!({ "roles": ["admin"] })),
            As::Token(&token),
        )
        .await;
    assert_eq!(roles.code(), "REQUEST_INVALID_BODY");
    assert_eq!(
        app.get_as("/api/v1/users/me", As::Token(&token))
            .await
            .data()["roles"],
        json!(["customer"])
    );
}

#[tokio::test]
async fn the_account_routes_need_a_valid_token() {
    let app = spawn_app().await;
    let anonymous = app.get("/api/v1/users/me").await;
    assert_eq!(
        (anonymous.status, anonymous.code()),
        (StatusCode::UNAUTHORIZED, "AUTH_REQUIRED")
    );
    for token in ["garbage", "a.b.c", &app.staff_token.replace('.', "x")] {
        let a = app.get_as("/api/v1/users/me", As::Token(token)).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNAUTHORIZED, "AUTH_INVALID_TOKEN"),
            "{token}"
        );
    }
}

#[tokio::test]
async fn access_tokens_verify_with_the_published_keys() {
    let app = spawn_app().await;
    let jwks = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .expect("answered");
    assert_eq!(jwks.status(), StatusCode::OK);
    let jwks: Value = jwks.json().await.expect("json");
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );

    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = app.staff_token.split('.').next().unwrap_or_default();
    let header: Value =
        serde_json::from_slice(&b64.decode(header).unwrap_or_default()).unwrap_or_default();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], key["kid"]);
    let claims = app.staff_token.split('.').nth(1).unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&b64.decode(claims).unwrap_or_default()).unwrap_or_default();
    assert_eq!(claims["iss"], "agora");
    assert_eq!(claims["aud"], "agora");
    assert_eq!(claims["roles"], json!(["staff"]));
    assert!(
        claims["sub"]
            .as_str()
            .is_some_and(|s| s.starts_with("usr_"))
    );
    assert!(claims["jti"].is_string());
    assert_eq!(
        claims["exp"].as_u64().unwrap_or_default() - claims["iat"].as_u64().unwrap_or_default(),
        900
    );
}

#[tokio::test]
async fn the_signing_key_survives_a_restart() {
    let app = spawn_app().await;
    let config = app.config.clone();
    let token = app.staff_token.clone();
    app.shutdown.trigger();
    let _ = app.server.await;
    let again = agora::app::Application::build(config)
        .await
        .expect("builds");
    let base = format!("http://{}", again.local_addr());
    let stop = again.shutdown_handle();
    let server = tokio::spawn(again.run_until_stopped());
    let a = reqwest::Client::new()
        .get(format!("{base}/api/v1/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answered");
    assert_eq!(a.status(), StatusCode::OK);
    stop.trigger();
    let _ = server.await;
}

#[tokio::test]
async fn catalog_writes_need_the_catalog_write_permission() {
    let app = spawn_app().await;
    let customer = app.register_and_login("jon@example.com").await;
    let a = app
        .call(
            Method::POST,
            "/api/v1/products",
            Some(product_body(json!({}))),
            As::Token(&customer),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "AUTH_FORBIDDEN")
    );
    assert_eq!(a.body["error"]["details"]["permission"], "catalog:write");

    let admin = app
        .create_user_and_login("root@example.com", &[Role::Admin])
        .await;
    let a = app
        .call(
            Method::POST,
            "/api/v1/products",
            Some(product_body(json!({}))),
            As::Token(&admin),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
}

#[tokio::test]
async fn the_first_administrator_is_created_from_the_command_line() {
    use std::io::Write as _;
    let app = spawn_app().await;
    let run = |password: &'static str| {
        let mut child = crate::cli::agora()
            .args([
                "admin",
                "create-user",
                "--email",
                "Boss@Example.com",
                "--role",
                "admin",
            ])
            .args(["--role", "staff", "--password-stdin"])
            .arg("--data-dir")
            .arg(&app.config.data_dir)
            .env("AGORA_DATABASE__URL", app.config.database_url())
            .env("AGORA_AUTH__ARGON2__MEMORY_KIB", "64")
            .env("AGORA_AUTH__ARGON2__ITERATIONS", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{password}\n").as_bytes())
                .expect("writes");
        }
        child.wait_with_output().expect("finishes")
    };

    let weak = run("short");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("password"));

    let out = run(PASSWORD);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("boss@example.com"), "{stdout}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));

    let again = run(PASSWORD);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let token = app.login("boss@example.com").await;
    let me = app.get_as("/api/v1/users/me", As::Token(&token)).await;
    assert_eq!(me.data()["roles"], json!(["staff", "admin"]));
}

#[tokio::test]
async fn administrators_list_accounts_page_by_page_and_others_may_not() {
    let app = spawn_app().await;
    let admin = app
        .create_user_and_login("admin@example.com", &[Role::Admin])
        .await;
    let customer = app.register_and_login("kim@example.com").await;

    let first = app.get_as("/api/v1/users?limit=2", As::Token(&admin)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let emails: Vec<&str> = first
        .data()
        .as_array()
        .map(|a| a.iter().filter_map(|u| u["email"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(emails, ["staff@agora.test", "admin@example.com"]);
    let cursor = first.body["meta"]["next_cursor"]
        .as_str()
        .unwrap_or_default();
    let second = app
        .get_as(
            &format!("/api/v1/users?limit=2&cursor={cursor}"),
            As::Token(&admin),
        )
        .await;
    assert_eq!(second.data()[0]["email"], "kim@example.com");
    assert!(second.body["meta"]["next_cursor"].is_null());

    for token in [customer.as_str(), app.staff_token.as_str()] {
        let a = app.get_as("/api/v1/users", As::Token(token)).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::FORBIDDEN, "AUTH_FORBIDDEN")
        );
        assert_eq!(a.body["error"]["details"]["permission"], "users:manage");
    }
    let forged = app
        .get_as("/api/v1/users?cursor=not-a-cursor", As::Token(&admin))
        .await;
    assert_eq!(forged.code(), "REQUEST_INVALID_CURSOR");
}

#[tokio::test]
async fn a_disabled_account_loses_its_tokens_and_sessions_at_once() {
    let app = spawn_app().await;
    let admin = app
        .create_user_and_login("admin@example.com", &[Role::Admin])
        .await;
    app.register_and_login("lou@example.com").await;
    let login = app.login_answer("lou@example.com", PASSWORD).await;
    let access = login.data()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let me = app.get_as("/api/v1/users/me", As::Token(&access)).await;
    let path = format!(
        "/api/v1/users/{}",
        me.data()["id"].as_str().unwrap_or_default()
    );
    let set = |disabled: bool| {
        app.call(
            Method::PATCH,
            &path,
            Some(json!({ "disabled": disabled })),
            As::Token(&admin),
        )
    };

    let a = set(true).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.data()["disabled"], true);
    let refused = app.get_as("/api/v1/users/me", As::Token(&access)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "AUTH_ACCOUNT_DISABLED")
    );
    assert_eq!(
        refresh(&app, &refresh_token(&login)).await.code(),
        "IDENTITY_REFRESH_TOKEN_INVALID"
    );
    assert_eq!(
        app.login_answer("lou@example.com", PASSWORD).await.code(),
        "AUTH_ACCOUNT_DISABLED"
    );

    assert_eq!(set(false).await.status, StatusCode::OK);
    assert_eq!(
        app.login_answer("lou@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get_as("/api/v1/users/me", As::Token(&access))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn roles_changed_by_an_administrator_take_effect_at_the_next_login() {
    let app = spawn_app().await;
    let admin = app
        .create_user_and_login("admin@example.com", &[Role::Admin])
        .await;
    let before = app.register_and_login("max@example.com").await;
    let id = app
        .get_as("/api/v1/users/me", As::Token(&before))
        .await
        .data()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = format!("/api/v1/users/{id}");

    let empty = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({ "roles": [] })),
            As::Token(&admin),
        )
        .await;
    assert_eq!(empty.code(), "VALIDATION_FAILED");
    let unknown = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({ "roles": ["root"] })),
            As::Token(&admin),
        )
        .await;
    assert_eq!(unknown.code(), "REQUEST_INVALID_BODY");

    let a = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({ "roles": ["staff"] })),
            As::Token(&admin),
        )
        .await;
    assert_eq!(a.data()["roles"], json!(["staff"]));
    let after = app.login("max@example.com").await;
    let created = app
        .call(
            Method::POST,
            "/api/v1/products",
            Some(product_body(json!({}))),
            As::Token(&after),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
}

#[tokio::test]
async fn an_administrator_cannot_lock_themselves_out() {
    let app = spawn_app().await;
    let admin = app
        .create_user_and_login("admin@example.com", &[Role::Admin])
        .await;
    let id = app
        .get_as("/api/v1/users/me", As::Token(&admin))
        .await
        .data()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = format!("/api/v1/users/{id}");
    for body in [json!({ "disabled": true }), json!({ "roles": ["staff"] })] {
        let a = app
            .call(Method::PATCH, &path, Some(body), As::Token(&admin))
            .await;
        assert_eq!(a.code(), "VALIDATION_FAILED", "{:?}", a.body);
    }
    let missing = app
        .get_as(
            "/api/v1/users/usr_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b",
            As::Token(&admin),
        )
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "IDENTITY_USER_NOT_FOUND")
    );
    let wrong_kind = app
        .get_as(
            "/api/v1/users/prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b",
            As::Token(&admin),
        )
        .await;
    assert_eq!(wrong_kind.code(), "REQUEST_INVALID_PATH");
}
