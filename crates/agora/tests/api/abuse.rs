//! Failed-login limits: per email and per client address (429 with
//! `Retry-After`), and the lock after repeated failures; none of it tells whether
//! an email has an account.

use agora_platform::Config;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Answer, PASSWORD, TestApp, spawn_app_with};

fn limits(per_account: u32, per_address: u32, lockout_after: u32) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.auth.login.failures_per_account = per_account;
        c.auth.login.failures_per_address = per_address;
        c.auth.login.lockout_after = lockout_after;
        c.auth.login.window_secs = 120;
        c.auth.login.lockout_secs = 600;
        c.server.trust_forwarded_for = true;
    }
}

/// A login attempt from `address` (the test server trusts `X-Forwarded-For`).
async fn login_from(app: &TestApp, address: &str, email: &str, password: &str) -> Answer {
    let response = app
        .client
        .post(format!("{}/api/v1/auth/login", app.base))
        .header("x-forwarded-for", address)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("an answer");
    TestApp::answer(response).await
}

async fn register(app: &TestApp, email: &str) {
    let a = app
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/register",
            Some(json!({ "email": email, "password": PASSWORD, "name": "Bob" })),
            crate::helpers::As::Anonymous,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
}

/// Many wrong passwords at once: the limit holds, because each attempt takes
/// its slot before the password is checked.
#[tokio::test]
async fn a_burst_of_parallel_attempts_gets_no_more_than_the_limit() {
    let app = spawn_app_with(limits(3, 100, 100)).await;
    register(&app, "ada@example.com").await;
    let wrong = json!({ "email": "ada@example.com", "password": "wrong password!" });
    let codes = app
        .post_concurrently("/api/v1/auth/login", vec![wrong; 12], "192.0.2.1")
        .await;
    let count = |code: &str| codes.iter().filter(|c| c.as_str() == code).count();
    assert_eq!(
        (
            count("IDENTITY_INVALID_CREDENTIALS"),
            count("IDENTITY_LOGIN_THROTTLED")
        ),
        (3, 9),
        "{codes:?}"
    );
}

fn retry_after(a: &Answer) -> u64 {
    let header: u64 = a.headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert_eq!(a.body["error"]["details"]["retry_after_secs"], header);
    header
}

#[tokio::test]
async fn failures_for_one_email_are_throttled_alike_whether_or_not_it_has_an_account() {
    let app = spawn_app_with(limits(3, 100, 100)).await;
    app.register_and_login("ada@example.com").await;
    for email in ["ada@example.com", "nobody@example.com"] {
        for _ in 0..3 {
            let a = login_from(&app, "192.0.2.1", email, "wrong password!").await;
            assert_eq!(a.code(), "IDENTITY_INVALID_CREDENTIALS", "{email}");
        }
        // The fourth attempt is refused before the password is looked at.
        let a = login_from(&app, "192.0.2.1", email, PASSWORD).await;
        assert_eq!(
            a.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{email}: {:?}",
            a.body
        );
        assert_eq!(a.code(), "IDENTITY_LOGIN_THROTTLED");
        assert!((1..=120).contains(&retry_after(&a)));
        // From another address too: the limit is the email's.
        let a = login_from(&app, "192.0.2.2", email, PASSWORD).await;
        assert_eq!(a.code(), "IDENTITY_LOGIN_THROTTLED");
    }
    // Other emails from the same address are not affected.
    register(&app, "bob@example.com").await;
    let bob = login_from(&app, "192.0.2.1", "bob@example.com", PASSWORD).await;
    assert_eq!(bob.status, StatusCode::OK, "{:?}", bob.body);
}

#[tokio::test]
async fn failures_from_one_address_are_throttled_across_emails() {
    let app = spawn_app_with(limits(100, 3, 100)).await;
    app.register_and_login("ada@example.com").await;
    for email in ["a@example.com", "b@example.com", "not an email"] {
        let a = login_from(&app, "198.51.100.7", email, "wrong password!").await;
        assert_eq!(a.code(), "IDENTITY_INVALID_CREDENTIALS");
    }
    let a = login_from(&app, "198.51.100.7", "ada@example.com", PASSWORD).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.code(), "IDENTITY_LOGIN_THROTTLED");
    retry_after(&a);
    let a = login_from(&app, "198.51.100.8", "ada@example.com", PASSWORD).await;
    assert_eq!(a.status, StatusCode::OK, "another address: {:?}", a.body);
}

#[tokio::test]
async fn repeated_failures_lock_an_email_even_against_the_right_password() {
    let app = spawn_app_with(limits(100, 100, 3)).await;
    app.register_and_login("ada@example.com").await;

    // A success in between starts the count again.
    for _ in 0..2 {
        login_from(&app, "192.0.2.1", "ada@example.com", "wrong password!").await;
    }
    let a = login_from(&app, "192.0.2.1", "ada@example.com", PASSWORD).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);

    for email in ["ada@example.com", "nobody@example.com"] {
        for attempt in 0..3 {
            let a = login_from(&app, "192.0.2.1", email, "wrong password!").await;
            assert_eq!(
                a.code(),
                "IDENTITY_INVALID_CREDENTIALS",
                "{email} #{attempt}"
            );
        }
        let a = login_from(&app, "192.0.2.9", email, PASSWORD).await;
        assert_eq!(
            a.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{email}: {:?}",
            a.body
        );
        assert_eq!(a.code(), "IDENTITY_ACCOUNT_LOCKED");
        assert!((590..=600).contains(&retry_after(&a)), "{:?}", a.headers);
    }
    // The lock is kept in the database, so every replica and a restart see it.
    let locked: Vec<(String,)> = sqlx::query_as(
        "SELECT email FROM identity_login_failures WHERE locked_until IS NOT NULL ORDER BY email",
    )
    .fetch_all(app.db.db.reader())
    .await
    .expect("the failures");
    assert_eq!(
        locked,
        vec![
            ("ada@example.com".to_string(),),
            ("nobody@example.com".to_string(),)
        ]
    );
    // Another email from the same address is not affected.
    register(&app, "bob@example.com").await;
    let bob = login_from(&app, "192.0.2.1", "bob@example.com", PASSWORD).await;
    assert_eq!(bob.status, StatusCode::OK, "{:?}", bob.body);
}
