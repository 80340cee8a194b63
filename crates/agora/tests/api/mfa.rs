//! The TOTP second factor: enrolment, confirmation, logins that ask for a code,
//! replay refusal, recovery codes, and removal.

use agora_identity::mfa::{STEP_SECS, TotpSecret};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Answer, As, PASSWORD, TestApp, spawn_app_with};

async fn app() -> TestApp {
    // Wrong codes count as failed logins; this suite sends many on purpose.
    spawn_app_with(|c| {
        c.auth.login.failures_per_account = 100;
        c.auth.login.lockout_after = 100;
    })
    .await
}

fn current_step() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    i64::try_from(now).expect("fits") / STEP_SECS
}

fn code(secret: &str, step: i64) -> String {
    TotpSecret::from_base32(secret)
        .and_then(|s| s.code_at_step(step))
        .expect("a code")
}

/// The code of the next step: accepted (within the drift allowed) and not used
/// yet, since confirmation used the current one.
fn next_code(secret: &str) -> String {
    code(secret, current_step() + 1)
}

/// A code that is none of the codes the secret accepts now.
fn wrong_code(secret: &str) -> String {
    let step = current_step();
    let taken: Vec<String> = (step - 1..=step + 2).map(|s| code(secret, s)).collect();
    (0..10)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !taken.contains(c))
        .expect("four codes cannot take ten")
}

async fn post(app: &TestApp, path: &str, body: Value, who: As<'_>) -> Answer {
    app.call(Method::POST, path, Some(body), who).await
}

/// Enrols and confirms TOTP for the holder of `token`; returns the secret and the
/// recovery codes.
async fn enable_totp(app: &TestApp, token: &str) -> (String, Vec<String>) {
    let a = app
        .call(
            Method::POST,
            "/api/v1/users/me/mfa/totp",
            None,
            As::Token(token),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let secret = a.data()["secret"].as_str().expect("a secret").to_string();
    let uri = a.data()["otpauth_uri"].as_str().expect("a uri");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(uri.contains("issuer=agora"), "{uri}");

    let confirmed = post(
        app,
        "/api/v1/users/me/mfa/totp/confirm",
        json!({ "code": code(&secret, current_step()) }),
        As::Token(token),
    )
    .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let codes: Vec<String> = confirmed.data()["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

/// Logs in with the password and expects to be asked for a code; returns the
/// challenge token.
async fn challenge(app: &TestApp, email: &str) -> String {
    let a = app.login_answer(email, PASSWORD).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    assert_eq!(a.code(), "IDENTITY_MFA_REQUIRED");
    assert!(a.data().is_null(), "no tokens before the second factor");
    assert_eq!(a.body["error"]["details"]["expires_in"], 300);
    a.body["error"]["details"]["challenge_token"]
        .as_str()
        .expect("a challenge token")
        .to_string()
}

async fn second_factor(app: &TestApp, challenge: &str, factor: Value) -> Answer {
    let mut body = json!({ "challenge_token": challenge });
    if let (Some(b), Some(f)) = (body.as_object_mut(), factor.as_object()) {
        b.extend(f.clone());
    }
    post(app, "/api/v1/auth/login/mfa", body, As::Anonymous).await
}

#[tokio::test]
async fn a_login_with_totp_needs_a_fresh_code_and_refuses_a_replayed_one() {
    let app = app().await;
    let token = app.register_and_login("ada@example.com").await;
    let status = app.get_as("/api/v1/users/me/mfa", As::Token(&token)).await;
    assert_eq!(
        status.data(),
        &json!({ "enabled": false, "pending": false, "recovery_codes_left": 0 })
    );
    let (secret, _) = enable_totp(&app, &token).await;

    // The code that confirmed the enrolment is spent; the next step's works.
    let c = challenge(&app, "ada@example.com").await;
    let next = next_code(&secret);
    let ok = second_factor(&app, &c, json!({ "code": next })).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let access = ok.data()["access_token"].as_str().expect("a token");
    let me = app.get_as("/api/v1/users/me", As::Token(access)).await;
    assert_eq!(me.data()["email"], "ada@example.com");

    // The same code again, with a new challenge: a replay.
    let c2 = challenge(&app, "ada@example.com").await;
    let replay = second_factor(&app, &c2, json!({ "code": next })).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.code(), "IDENTITY_MFA_CODE_INVALID");
    // A completed challenge cannot be used again.
    let reuse = second_factor(&app, &c, json!({ "code": next_code(&secret) })).await;
    assert_eq!(reuse.code(), "IDENTITY_MFA_CHALLENGE_INVALID");
    // Garbage in either field, and neither or both fields.
    for factor in [
        json!({ "code": "12345" }),
        json!({ "code": "abcdef" }),
        json!({ "recovery_code": "nope" }),
    ] {
        let a = second_factor(&app, &c2, factor.clone()).await;
        assert_eq!(a.code(), "IDENTITY_MFA_CODE_INVALID", "{factor}");
    }
    for factor in [
        json!({}),
        json!({ "code": "123456", "recovery_code": "abcd" }),
    ] {
        let a = second_factor(&app, &c2, factor.clone()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{factor}");
        assert_eq!(a.code(), "VALIDATION_FAILED");
    }
    let unknown = second_factor(&app, "mfa_unknown", json!({ "code": "123456" })).await;
    assert_eq!(unknown.code(), "IDENTITY_MFA_CHALLENGE_INVALID");
}

#[tokio::test]
async fn a_challenge_is_spent_after_five_wrong_codes() {
    let app = app().await;
    let token = app.register_and_login("ada@example.com").await;
    let (secret, _) = enable_totp(&app, &token).await;
    let c = challenge(&app, "ada@example.com").await;
    let wrong = wrong_code(&secret);
    for _ in 0..5 {
        let a = second_factor(&app, &c, json!({ "code": wrong })).await;
        assert_eq!(a.code(), "IDENTITY_MFA_CODE_INVALID");
    }
    let right = second_factor(&app, &c, json!({ "code": next_code(&secret) })).await;
    assert_eq!(right.code(), "IDENTITY_MFA_CHALLENGE_INVALID");
}

#[tokio::test]
async fn recovery_codes_work_once_and_can_be_renewed() {
    let app = app().await;
    let token = app.register_and_login("ada@example.com").await;
    let (_, codes) = enable_totp(&app, &token).await;

    let c = challenge(&app, "ada@example.com").await;
    // Typed loosely: upper case, spaces for dashes.
    let typed = codes[0].replace('-', " ").to_uppercase();
    let ok = second_factor(&app, &c, json!({ "recovery_code": typed })).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let c = challenge(&app, "ada@example.com").await;
    let again = second_factor(&app, &c, json!({ "recovery_code": codes[0] })).await;
    assert_eq!(again.code(), "IDENTITY_MFA_CODE_INVALID");
    let status = app.get_as("/api/v1/users/me/mfa", As::Token(&token)).await;
    assert_eq!(
        status.data(),
        &json!({ "enabled": true, "pending": false, "recovery_codes_left": 9 })
    );

    // Renewal needs the password and replaces every code.
    let wrong = post(
        &app,
        "/api/v1/users/me/mfa/recovery-codes",
        json!({ "current_password": "not my password" }),
        As::Token(&token),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    let renewed = post(
        &app,
        "/api/v1/users/me/mfa/recovery-codes",
        json!({ "current_password": PASSWORD }),
        As::Token(&token),
    )
    .await;
    assert_eq!(renewed.status, StatusCode::OK, "{:?}", renewed.body);
    let new_codes = renewed.data()["recovery_codes"]
        .as_array()
        .expect("codes")
        .clone();
    assert_eq!(new_codes.len(), 10);
    let old = second_factor(&app, &c, json!({ "recovery_code": codes[1] })).await;
    assert_eq!(old.code(), "IDENTITY_MFA_CODE_INVALID");
    let new = second_factor(&app, &c, json!({ "recovery_code": new_codes[0] })).await;
    assert_eq!(new.status, StatusCode::OK, "{:?}", new.body);
    let rows: Vec<(String,)> = sqlx::query_as("SELECT code_hash FROM identity_recovery_codes")
        .fetch_all(app.db.db.reader())
        .await
        .expect("codes");
    assert_eq!(rows.len(), 10);
    for (hash,) in &rows {
        assert_eq!(hash.len(), 64, "stored hashed");
        assert!(new_codes.iter().all(|c| c.as_str() != Some(hash.as_str())));
    }
}

#[tokio::test]
async fn enrolment_rules_and_removal() {
    let app = app().await;
    let token = app.register_and_login("ada@example.com").await;
    let confirm = |body: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            post(
                app,
                "/api/v1/users/me/mfa/totp/confirm",
                body,
                As::Token(&token),
            )
            .await
        }
    };
    let nothing = confirm(json!({ "code": "123456" })).await;
    assert_eq!(nothing.status, StatusCode::CONFLICT);
    assert_eq!(nothing.code(), "IDENTITY_MFA_NOT_ENABLED");

    // A pending enrolment changes nothing until confirmed, and a wrong code
    // does not confirm it.
    let started = app
        .call(
            Method::POST,
            "/api/v1/users/me/mfa/totp",
            None,
            As::Token(&token),
        )
        .await;
    let secret = started.data()["secret"]
        .as_str()
        .expect("a secret")
        .to_string();
    app.login("ada@example.com").await;
    let wrong = confirm(json!({ "code": wrong_code(&secret) })).await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong.body["error"]["details"]["fields"][0]["field"], "code");
    let status = app.get_as("/api/v1/users/me/mfa", As::Token(&token)).await;
    assert_eq!(status.data()["pending"], true);
    assert_eq!(status.data()["enabled"], false);

    let (_, _) = enable_totp(&app, &token).await;
    let twice = app
        .call(
            Method::POST,
            "/api/v1/users/me/mfa/totp",
            None,
            As::Token(&token),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert_eq!(twice.code(), "IDENTITY_MFA_ALREADY_ENABLED");

    // Removal needs the password; afterwards the password alone logs in.
    let refused = post(
        &app,
        "/api/v1/users/me/mfa/disable",
        json!({ "current_password": "not my password" }),
        As::Token(&token),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.body["error"]["details"]["fields"][0]["field"],
        "current_password"
    );
    let removed = post(
        &app,
        "/api/v1/users/me/mfa/disable",
        json!({ "current_password": PASSWORD }),
        As::Token(&token),
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);
    app.login("ada@example.com").await;
    let again = post(
        &app,
        "/api/v1/users/me/mfa/disable",
        json!({ "current_password": PASSWORD }),
        As::Token(&token),
    )
    .await;
    assert_eq!(again.code(), "IDENTITY_MFA_NOT_ENABLED");
}

#[tokio::test]
async fn wrong_codes_count_as_failed_logins_and_a_right_password_does_not_clear_them() {
    let app = spawn_app_with(|c| {
        c.auth.login.failures_per_account = 3;
        c.auth.login.lockout_after = 100;
    })
    .await;
    let token = app.register_and_login("ada@example.com").await;
    let (secret, _) = enable_totp(&app, &token).await;
    for _ in 0..2 {
        let a = app.login_answer("ada@example.com", "wrong password!").await;
        assert_eq!(a.code(), "IDENTITY_INVALID_CREDENTIALS");
    }
    // The right password: asked for a code; the two failures still count.
    let c = challenge(&app, "ada@example.com").await;
    let wrong = wrong_code(&secret);
    let a = second_factor(&app, &c, json!({ "code": wrong })).await;
    assert_eq!(a.code(), "IDENTITY_MFA_CODE_INVALID");
    // Three failures for the email: the right code is not even looked at.
    let a = second_factor(&app, &c, json!({ "code": next_code(&secret) })).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", a.body);
    assert_eq!(a.code(), "IDENTITY_LOGIN_THROTTLED");
    let a = app.login_answer("ada@example.com", PASSWORD).await;
    assert_eq!(a.code(), "IDENTITY_LOGIN_THROTTLED");
}

#[tokio::test]
async fn parallel_guesses_on_one_challenge_get_no_more_than_its_allowance() {
    let app = app().await;
    let token = app.register_and_login("ada@example.com").await;
    let (secret, _) = enable_totp(&app, &token).await;
    let c = challenge(&app, "ada@example.com").await;
    let right = next_code(&secret);
    // Wrong codes that cannot collide with the right one.
    let guesses = (0..12)
        .map(|i| {
            let guess = (right.parse::<u32>().unwrap_or(0) + 1 + i) % 1_000_000;
            json!({ "challenge_token": c, "code": format!("{guess:06}") })
        })
        .collect();
    let codes = app
        .post_concurrently("/api/v1/auth/login/mfa", guesses, "192.0.2.1")
        .await;
    let count = |code: &str| codes.iter().filter(|c| c.as_str() == code).count();
    assert_eq!(count("IDENTITY_MFA_CODE_INVALID"), 5, "{codes:?}");
    assert_eq!(count("IDENTITY_MFA_CHALLENGE_INVALID"), 7, "{codes:?}");
    let late = second_factor(&app, &c, json!({ "code": right })).await;
    assert_eq!(late.code(), "IDENTITY_MFA_CHALLENGE_INVALID");
}
