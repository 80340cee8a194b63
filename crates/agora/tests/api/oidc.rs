//! Login through an OpenID Connect provider, end to end against a small provider
//! this suite runs on loopback: discovery, authorization with PKCE, the token
//! endpoint, RS256-signed ID tokens and a JWKS — and the ways a login must fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Answer, PASSWORD, TestApp, spawn_app_with};

/// The provider's signing key: a 2048-bit RSA key made for these tests only
/// (PKCS#1 DER), and its public modulus for the JWKS.
const PROVIDER_KEY: &[u8] = include_bytes!("fixtures/oidc-provider-rsa.der");
const PROVIDER_N: &str = "lcSpSQSOqvq5NPjawib6rSP6jFizlv-2tDUuuh4AqsVZfiK7YITz3HCOlhy-VEnkTYvb4FPYP_qEQMcFTy9A5gYHIZgBIGeODahC3WwDBW0dJoXH_-Ggl8dJNkK8rkEnPBSpBTIh8yrncP0LonlD2Qcjmshin9MGjjdf3fD5Yt30Djp41pV-i8uMVuqlXyom10Q5dQVAILXz2za6SYEpmt_GFGMhUxPJ9-kM1_pUovdB_zHUMw4lf5gHr1-9qa3kDzbV6UaYtJxsypovXN2z5OvlwvnHqi3zWQibh2x72emDCknZaL5zJqFgOhUh7ylbeSYGwn3o10UUJkcXtOQvww";
/// Another key, for forged tokens.
const OTHER_KEY: &[u8] = include_bytes!("fixtures/other-rsa.der");

const CLIENT_ID: &str = "agora-test";
const CLIENT_SECRET: &str = "s3cret:with/odd&chars";
/// Where the provider sends the browser back; the test plays the browser and
/// delivers the parameters to the running app.
const REDIRECT_URI: &str = "https://shop.example/api/v1/auth/oidc/test/callback";

/// The person who signs in at the provider.
#[derive(Clone)]
struct ProviderUser {
    sub: String,
    email: String,
    email_verified: bool,
    name: String,
}

/// How the provider misbehaves, for the failure tests.
#[derive(Clone, Default)]
struct Tamper {
    wrong_nonce: bool,
    other_key: bool,
    /// Sign the ID token with HS256 keyed by the client secret.
    hs256: bool,
    /// Refuse the code at the token endpoint (`invalid_grant`).
    refuse_grant: bool,
    deny: Option<String>,
}

struct Grant {
    redirect_uri: String,
    challenge: String,
    nonce: String,
}

struct ProviderState {
    issuer: String,
    user: ProviderUser,
    tamper: Tamper,
    codes: HashMap<String, Grant>,
    /// The query of the last authorization request, to check what Agora sent.
    last_authorize: HashMap<String, String>,
}

type Shared = Arc<Mutex<ProviderState>>;

/// A running loopback provider.
struct Provider {
    issuer: String,
    state: Shared,
}

impl Provider {
    async fn start() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let issuer = format!("http://{}", listener.local_addr().expect("an address"));
        let state = Arc::new(Mutex::new(ProviderState {
            issuer: issuer.clone(),
            user: ProviderUser {
                sub: "provider-user-1".into(),
                email: "ola@example.com".into(),
                email_verified: true,
                name: "Ola Nordmann".into(),
            },
            tamper: Tamper::default(),
            codes: HashMap::new(),
            last_authorize: HashMap::new(),
        }));
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Provider { issuer, state }
    }

    fn set_user(&self, user: ProviderUser) {
        self.state.lock().expect("lock").user = user;
    }

    fn set_tamper(&self, tamper: Tamper) {
        self.state.lock().expect("lock").tamper = tamper;
    }
}

async fn discovery(State(s): State<Shared>) -> Json<Value> {
    let issuer = s.lock().expect("lock").issuer.clone();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks() -> Json<Value> {
    Json(json!({ "keys": [
        { "kty": "RSA", "kid": "test-key", "use": "sig", "alg": "RS256", "n": PROVIDER_N, "e": "AQAB" }
    ] }))
}

fn redirect(to: String) -> Response {
    (StatusCode::FOUND, [(reqwest::header::LOCATION, to)]).into_response()
}

/// The user "signs in and consents" at once; the browser is sent back.
async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut s = s.lock().expect("lock");
    s.last_authorize = q.clone();
    let param = |k: &str| q.get(k).cloned().unwrap_or_default();
    if param("client_id") != CLIENT_ID
        || param("response_type") != "code"
        || param("code_challenge_method") != "S256"
        || !param("scope").split(' ').any(|s| s == "openid")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let redirect_uri = param("redirect_uri");
    let state = param("state");
    if let Some(error) = s.tamper.deny.clone() {
        return redirect(format!("{redirect_uri}?error={error}&state={state}"));
    }
    let code = uuid::Uuid::now_v7().simple().to_string();
    s.codes.insert(
        code.clone(),
        Grant {
            redirect_uri: redirect_uri.clone(),
            challenge: param("code_challenge"),
            nonce: param("nonce"),
        },
    );
    redirect(format!(
        "{redirect_uri}?code={code}&state={state}&iss=ignored"
    ))
}

fn token_error(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

/// RFC 6749 token endpoint with client_secret_basic and PKCE (RFC 7636).
async fn token(
    State(s): State<Shared>,
    headers: reqwest::header::HeaderMap,
    body: String,
) -> Response {
    let form: HashMap<String, String> = reqwest::Url::parse(&format!("x:?{body}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", CLIENT_ID, "s3cret%3Awith%2Fodd%26chars"))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let mut s = s.lock().expect("lock");
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("grant_type") != "authorization_code" {
        return token_error("unsupported_grant_type");
    }
    let Some(grant) = s.codes.remove(&field("code")) else {
        return token_error("invalid_grant");
    };
    if s.tamper.refuse_grant {
        return token_error("invalid_grant");
    }
    let verifier_hash = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()));
    if grant.redirect_uri != field("redirect_uri") || grant.challenge != verifier_hash {
        return token_error("invalid_grant");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({
        "iss": s.issuer,
        "aud": CLIENT_ID,
        "sub": s.user.sub,
        "email": s.user.email,
        "email_verified": s.user.email_verified,
        "name": s.user.name,
        "nonce": if s.tamper.wrong_nonce { "another-login".to_string() } else { grant.nonce },
        "iat": now,
        "exp": now + 300,
    });
    let (alg, key) = if s.tamper.hs256 {
        (
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::EncodingKey::from_secret(CLIENT_SECRET.as_bytes()),
        )
    } else if s.tamper.other_key {
        (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_der(OTHER_KEY),
        )
    } else {
        (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_der(PROVIDER_KEY),
        )
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some("test-key".into());
    let id_token = jsonwebtoken::encode(&header, &claims, &key).expect("signed");
    Json(json!({ "access_token": "provider-access", "token_type": "Bearer", "expires_in": 300, "id_token": id_token }))
        .into_response()
}

async fn app_with(provider: &Provider, secret: &str) -> TestApp {
    let issuer = provider.issuer.clone();
    let secret = secret.to_string();
    spawn_app_with(move |c| {
        c.auth.oidc.insert(
            "test".into(),
            agora_platform::config::OidcProvider {
                issuer,
                client_id: CLIENT_ID.into(),
                client_secret: agora_platform::config::Secret::new(secret),
                redirect_uri: REDIRECT_URI.into(),
                scopes: vec!["openid".into(), "email".into(), "profile".into()],
            },
        );
    })
    .await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// What a browser holds after `/start` and the provider: the cookie, and the
/// query the provider sent it back with.
struct Returned {
    cookie: String,
    query: String,
}

async fn start_and_authorize(app: &TestApp) -> Returned {
    let client = no_redirects();
    let start = client
        .get(format!("{}/api/v1/auth/oidc/test/start", app.base))
        .send()
        .await
        .expect("answered");
    assert_eq!(start.status(), StatusCode::FOUND);
    let cookie = start.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Secure"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().expect("a pair").to_string();
    let location = start.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let back = client
        .get(&location)
        .send()
        .await
        .expect("the provider answers");
    assert_eq!(back.status(), StatusCode::FOUND, "{location}");
    let back = back.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let query = back
        .strip_prefix(&format!("{REDIRECT_URI}?"))
        .expect("back to the registered redirect URI")
        .to_string();
    Returned { cookie, query }
}

async fn callback(app: &TestApp, query: &str, cookie: Option<&str>) -> Answer {
    let mut req = app.client.get(format!(
        "{}/api/v1/auth/oidc/test/callback?{query}",
        app.base
    ));
    if let Some(cookie) = cookie {
        req = req.header("cookie", format!("theme=dark; {cookie}"));
    }
    TestApp::answer(req.send().await.expect("answered")).await
}

async fn login(app: &TestApp) -> Answer {
    let r = start_and_authorize(app).await;
    callback(app, &r.query, Some(&r.cookie)).await
}

async fn me(app: &TestApp, tokens: &Answer) -> Value {
    let token = tokens.data()["access_token"].as_str().expect("a token");
    app.get_as("/api/v1/users/me", crate::helpers::As::Token(token))
        .await
        .data()
        .clone()
}

#[tokio::test]
async fn a_first_login_creates_the_account_and_later_ones_find_it() {
    let provider = Provider::start().await;
    let app = app_with(&provider, CLIENT_SECRET).await;
    let first = login(&app).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let user = me(&app, &first).await;
    assert_eq!(user["email"], "ola@example.com");
    assert_eq!(user["name"], "Ola Nordmann");
    assert_eq!(user["roles"], json!(["customer"]));

    // What Agora asked the provider for.
    let sent = provider.state.lock().expect("lock").last_authorize.clone();
    assert_eq!(sent["scope"], "openid email profile");
    assert_eq!(sent["redirect_uri"], REDIRECT_URI);
    assert_eq!(sent["code_challenge_method"], "S256");
    for p in ["state", "nonce", "code_challenge"] {
        assert_eq!(sent[p].len(), 43, "{p}: 256 bits in base64url");
    }

    let second = login(&app).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(me(&app, &second).await["id"], user["id"]);
    // The provider account has no password here.
    let a = app.login_answer("ola@example.com", PASSWORD).await;
    assert_eq!(a.code(), "IDENTITY_INVALID_CREDENTIALS");
}

#[tokio::test]
async fn a_verified_email_links_the_existing_account_and_takes_it_from_whoever_registered_it() {
    let provider = Provider::start().await;
    let app = app_with(&provider, CLIENT_SECRET).await;
    // Someone registered the email with a password (not necessarily its owner).
    app.register_and_login("ada@example.com").await;
    let registered = app.login_answer("ada@example.com", PASSWORD).await;
    let ada = me(&app, &registered).await;
    let squatter_refresh = registered.data()["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string();
    provider.set_user(ProviderUser {
        sub: "ada-at-provider".into(),
        email: "Ada@Example.com".into(),
        email_verified: true,
        name: "Ada L.".into(),
    });
    let a = login(&app).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(me(&app, &a).await["id"], ada["id"]);
    assert_eq!(
        me(&app, &a).await["name"],
        "Customer",
        "the account keeps its own name"
    );
    // The registrant's password and sessions are gone.
    let password = app.login_answer("ada@example.com", PASSWORD).await;
    assert_eq!(password.code(), "IDENTITY_INVALID_CREDENTIALS");
    let refresh = app
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/refresh",
            Some(json!({ "refresh_token": squatter_refresh })),
            crate::helpers::As::Anonymous,
        )
        .await;
    assert_eq!(refresh.code(), "IDENTITY_REFRESH_TOKEN_INVALID");
    // The next login through the provider finds the link.
    let again = login(&app).await;
    assert_eq!(me(&app, &again).await["id"], ada["id"]);
}

#[tokio::test]
async fn an_unverified_email_is_refused_and_creates_nothing() {
    let provider = Provider::start().await;
    let app = app_with(&provider, CLIENT_SECRET).await;
    provider.set_user(ProviderUser {
        sub: "mallory".into(),
        email: "victim@example.com".into(),
        email_verified: false,
        name: "Mallory".into(),
    });
    let a = login(&app).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    assert_eq!(a.code(), "IDENTITY_OIDC_EMAIL_UNVERIFIED");
    let users: Vec<(String,)> =
        sqlx::query_as("SELECT email FROM identity_users WHERE email = 'victim@example.com'")
            .fetch_all(app.db.db.reader())
            .await
            .expect("a query");
    assert!(users.is_empty());
}

#[tokio::test]
async fn the_state_must_be_this_browsers_login_and_works_once() {
    let provider = Provider::start().await;
    let app = app_with(&provider, CLIENT_SECRET).await;
    let r = start_and_authorize(&app).await;
    for cookie in [None, Some("agora_oidc=someone-elses")] {
        let a = callback(&app, &r.query, cookie).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{cookie:?}");
        assert_eq!(a.code(), "IDENTITY_OIDC_STATE_INVALID");
    }
    let forged = r.query.replace("state=", "state=x");
    assert_eq!(
        callback(&app, &forged, Some(&r.cookie)).await.code(),
        "IDENTITY_OIDC_STATE_INVALID"
    );
    let ok = callback(&app, &r.query, Some(&r.cookie)).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let again = callback(&app, &r.query, Some(&r.cookie)).await;
    assert_eq!(again.code(), "IDENTITY_OIDC_STATE_INVALID");
    let none = callback(&app, "code=abc", Some(&r.cookie)).await;
    assert_eq!(none.code(), "IDENTITY_OIDC_STATE_INVALID");
}

#[tokio::test]
async fn tokens_with_another_nonce_or_key_and_refusals_are_reported() {
    let provider = Provider::start().await;
    let app = app_with(&provider, CLIENT_SECRET).await;
    for (tamper, status, code) in [
        (
            Tamper {
                wrong_nonce: true,
                ..Tamper::default()
            },
            StatusCode::UNAUTHORIZED,
            "IDENTITY_OIDC_NONCE_MISMATCH",
        ),
        (
            Tamper {
                other_key: true,
                ..Tamper::default()
            },
            StatusCode::UNAUTHORIZED,
            "IDENTITY_OIDC_ID_TOKEN_INVALID",
        ),
        (
            Tamper {
                hs256: true,
                ..Tamper::default()
            },
            StatusCode::UNAUTHORIZED,
            "IDENTITY_OIDC_ID_TOKEN_INVALID",
        ),
        (
            Tamper {
                refuse_grant: true,
                ..Tamper::default()
            },
            StatusCode::UNAUTHORIZED,
            "IDENTITY_OIDC_DENIED",
        ),
        (
            Tamper {
                deny: Some("access_denied".into()),
                ..Tamper::default()
            },
            StatusCode::UNAUTHORIZED,
            "IDENTITY_OIDC_DENIED",
        ),
    ] {
        provider.set_tamper(tamper);
        let a = login(&app).await;
        assert_eq!((a.status, a.code()), (status, code), "{:?}", a.body);
    }
    provider.set_tamper(Tamper {
        deny: Some("access_denied".into()),
        ..Tamper::default()
    });
    let a = login(&app).await;
    assert_eq!(a.body["error"]["details"]["error"], "access_denied");
    let users: Vec<(String,)> =
        sqlx::query_as("SELECT email FROM identity_users WHERE email = 'ola@example.com'")
            .fetch_all(app.db.db.reader())
            .await
            .expect("a query");
    assert!(users.is_empty(), "no account from a refused login");
}

#[tokio::test]
async fn an_unknown_provider_or_a_failing_one_has_its_code() {
    let provider = Provider::start().await;
    let app = app_with(&provider, "the wrong secret").await;
    let unknown = app.get("/api/v1/auth/oidc/nope/start").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "IDENTITY_OIDC_PROVIDER_UNKNOWN");
    // The provider refuses this client at its token endpoint.
    let a = login(&app).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{:?}", a.body);
    assert_eq!(a.code(), "IDENTITY_OIDC_PROVIDER_FAILED");
    assert!(!a.body.to_string().contains("wrong secret"));
}
