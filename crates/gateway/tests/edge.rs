//! The gateway's edge duties in front of real HTTP services on loopback:
//! access tokens checked against a JWKS, rate limits (in this process and in
//! Redis), reloads, and TLS termination.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_gateway::{Gateway, GatewayConfig};
use agora_identity::keys::KeyRing;
use agora_kernel::{Role, SessionId, UserId};
use agora_platform::Shutdown;
use agora_platform::auth::AccessClaims;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod support;

use support::{gateway, get_json, instance, pool, serve_gateway};

/// An identity service's key set, which the test can rotate, and how many
/// times it was read.
#[derive(Clone)]
struct Jwks {
    keys: Arc<RwLock<Arc<KeyRing>>>,
    reads: Arc<AtomicUsize>,
    url: String,
    shutdown: Shutdown,
}

impl Jwks {
    async fn start() -> Jwks {
        let keys = Arc::new(RwLock::new(Arc::new(new_keys())));
        let reads = Arc::new(AtomicUsize::new(0));
        let (served_keys, counted) = (keys.clone(), reads.clone());
        let router = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let ring = served_keys.read().expect("keys").clone();
                async move { axum::Json(ring.jwks()) }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("an address")
        );
        let shutdown = Shutdown::new();
        tokio::spawn(agora_platform::http::serve(
            listener,
            router,
            shutdown.clone(),
            Duration::ZERO,
        ));
        Jwks {
            keys,
            reads,
            url,
            shutdown,
        }
    }

    fn current(&self) -> Arc<KeyRing> {
        self.keys.read().expect("keys").clone()
    }

    fn rotate(&self) -> Arc<KeyRing> {
        let ring = Arc::new(new_keys());
        *self.keys.write().expect("keys") = ring.clone();
        ring
    }
}

fn new_keys() -> KeyRing {
    KeyRing::from_config(&KeyRing::new_config_key().expect("a key")).expect("a key ring")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// An access token for `user`, expiring `ttl` seconds from now (negative:
/// expired).
fn token(keys: &KeyRing, user: UserId, ttl: i64) -> String {
    let now = now();
    let exp = now.saturating_add_signed(ttl);
    keys.sign(&AccessClaims {
        iss: "agora".into(),
        aud: "agora".into(),
        sub: user.to_string(),
        sid: SessionId::new().to_string(),
        roles: vec![Role::Customer],
        jti: format!("jti-{}", fastrand::u64(..)),
        iat: now,
        exp,
    })
    .expect("a signed token")
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = http.get(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let answer = request.send().await.expect("an answer");
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_are_checked_at_the_edge_and_the_checked_subject_is_forwarded() {
    let service = instance("svc").await;
    let jwks = Jwks::start().await;
    let toml = format!(
        "[auth]\njwks_url = \"{}\"\n\
         [[routes]]\nprefix = \"/api/open\"\nupstream = \"svc\"\n\
         [[routes]]\nprefix = \"/api/private\"\nupstream = \"svc\"\nrequire_auth = true\n{}",
        jwks.url,
        pool("svc", &[&service], "")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();

    let (status, body) = call(&http, &format!("{base}/api/private/x"), None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("AUTH_REQUIRED"))
    );
    let (status, body) = call(
        &http,
        &format!("{base}/api/private/x"),
        Some("Bearer not-a-token"),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("AUTH_INVALID_TOKEN"))
    );
    let user = UserId::new();
    let expired = token(&jwks.current(), user, -120);
    let (status, body) = call(
        &http,
        &format!("{base}/api/private/x"),
        Some(&format!("Bearer {expired}")),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("AUTH_TOKEN_EXPIRED"))
    );
    assert_eq!(
        service.served.load(Ordering::SeqCst),
        0,
        "a refused request was forwarded"
    );
    // Where no token is required, a bad one goes on, unproven, for the service to judge.
    let (status, body) = call(
        &http,
        &format!("{base}/api/open/x"),
        Some(&format!("Bearer {expired}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["headers"].get("x-agora-subject").is_none(), "{body}");
    assert_eq!(
        body["headers"]["authorization"],
        json!(format!("Bearer {expired}"))
    );

    // A good token goes on, with the subject it proves; a client cannot claim one.
    let good = token(&jwks.current(), user, 600);
    let answer = http
        .get(format!("{base}/api/private/x"))
        .header("authorization", format!("Bearer {good}"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(
        body["headers"]["x-agora-subject"],
        json!(user.to_string()),
        "{body}"
    );
    assert_eq!(body["headers"]["x-agora-roles"], json!("customer"));
    assert_eq!(
        body["headers"]["authorization"],
        json!(format!("Bearer {good}"))
    );
    let answer = http
        .get(format!("{base}/api/open/x"))
        .header("x-agora-subject", "usr_someone_else")
        .send()
        .await
        .expect("an answer");
    let body: Value = answer.json().await.expect("json");
    assert!(body["headers"].get("x-agora-subject").is_none(), "{body}");
    // API keys only their issuer can check: they pass, with no subject.
    let (status, body) = call(
        &http,
        &format!("{base}/api/private/x"),
        Some("ApiKey agk_x"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["headers"].get("x-agora-subject").is_none(), "{body}");

    // After a rotation the first token of the new key makes the gateway read
    // the keys again; a made-up key id right after does not.
    let reads = jwks.reads.load(Ordering::SeqCst);
    let rotated = token(&jwks.rotate(), user, 600);
    let (status, _) = call(
        &http,
        &format!("{base}/api/open/x"),
        Some(&format!("Bearer {rotated}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks.reads.load(Ordering::SeqCst), reads + 1);
    let stranger = token(&new_keys(), user, 600);
    let (status, body) = call(
        &http,
        &format!("{base}/api/private/x"),
        Some(&format!("Bearer {stranger}")),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("AUTH_INVALID_TOKEN"))
    );
    assert_eq!(
        jwks.reads.load(Ordering::SeqCst),
        reads + 1,
        "unknown key ids must not hammer the JWKS"
    );
}

#[tokio::test]
async fn without_the_keys_a_route_that_requires_a_token_is_a_coded_503_and_others_pass() {
    let service = instance("svc").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        closed.local_addr().expect("an address")
    );
    drop(closed);
    let toml = format!(
        "[auth]\njwks_url = \"{url}\"\n\
         [[routes]]\nprefix = \"/api/open\"\nupstream = \"svc\"\n\
         [[routes]]\nprefix = \"/api/private\"\nupstream = \"svc\"\nrequire_auth = true\n{}",
        pool("svc", &[&service], "")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", token(&new_keys(), UserId::new(), 600));
    let answer = http
        .get(format!("{base}/api/private/x"))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().contains_key("retry-after"));
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "GATEWAY_AUTH_UNAVAILABLE");
    assert_eq!(service.served.load(Ordering::SeqCst), 0);
    let (status, _) = call(&http, &format!("{base}/api/open/x"), Some(&bearer)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an unprovable token on an open route goes on"
    );
    let (status, _) = call(&http, &format!("{base}/api/open/x"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(service.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_a_coded_429_and_nothing_is_forwarded() {
    let service = instance("svc").await;
    let toml = format!(
        "trust_forwarded_for = true\n\
         [rate_limit]\nper_client = {{ per_second = 1, burst = 3 }}\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool("svc", &[&service], "")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    let from = |ip: &'static str| {
        http.get(format!("{base}/api/x"))
            .header("x-forwarded-for", ip)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            from("198.51.100.1").await.expect("an answer").status(),
            StatusCode::OK
        );
    }
    let refused = from("198.51.100.1").await.expect("an answer");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "GATEWAY_RATE_LIMITED");
    assert_eq!(body["error"]["details"]["limit"], "client");
    assert_eq!(service.served.load(Ordering::SeqCst), 3);
    // Another client has its own bucket.
    assert_eq!(
        from("198.51.100.2").await.expect("an answer").status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn each_account_has_its_own_bucket() {
    let service = instance("svc").await;
    let jwks = Jwks::start().await;
    let toml = format!(
        "[auth]\njwks_url = \"{}\"\n\
         [rate_limit]\nper_client = {{ per_second = 1000, burst = 1000 }}\n\
         per_subject = {{ per_second = 1, burst = 2 }}\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        jwks.url,
        pool("svc", &[&service], "")
    );
    let (base, _shutdown) = gateway(&toml).await;
    let http = reqwest::Client::new();
    let alice = format!("Bearer {}", token(&jwks.current(), UserId::new(), 600));
    let bob = format!("Bearer {}", token(&jwks.current(), UserId::new(), 600));
    for _ in 0..2 {
        let (status, _) = call(&http, &format!("{base}/api/x"), Some(&alice)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body) = call(&http, &format!("{base}/api/x"), Some(&alice)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["details"]["limit"], "subject", "{body}");
    let (status, _) = call(&http, &format!("{base}/api/x"), Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    // Anonymous requests are limited by address only.
    let (status, _) = call(&http, &format!("{base}/api/x"), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
#[ignore = "needs Redis: set AGORA_TEST_REDIS_URL (see docs/operations.md)"]
async fn with_redis_every_gateway_draws_from_the_same_buckets() {
    let url = std::env::var("AGORA_TEST_REDIS_URL")
        .expect("AGORA_TEST_REDIS_URL names the Redis to test against");
    let service = instance("svc").await;
    let prefix = format!("agora-test:gateway:{}", fastrand::u64(..));
    let toml = format!(
        "trust_forwarded_for = true\n\
         [rate_limit]\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n\
         per_client = {{ per_second = 1, burst = 4 }}\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        pool("svc", &[&service], "")
    );
    let (first, _a) = gateway(&toml).await;
    let (second, _b) = gateway(&toml).await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for base in [&first, &second, &first, &second, &first, &second] {
        let answer = http
            .get(format!("{base}/api/x"))
            .header("x-forwarded-for", "192.0.2.9")
            .send()
            .await
            .expect("an answer");
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429],
        "the two gateways did not share the bucket"
    );
    assert_eq!(service.served.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_reload_takes_new_routes_lets_in_flight_requests_finish_and_refuses_what_it_cannot_change()
 {
    let a = instance("a").await;
    let b = instance("b").await;
    let before = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"one\"\n{}",
        pool("one", &[&a], "")
    );
    let (address, _shutdown, gateway) = serve_gateway(&before).await;
    let base = format!("http://{address}");
    let http = reqwest::Client::new();
    let (_, body) = get_json(&http, format!("{base}/api/x")).await;
    assert_eq!(body["instance"], "a");

    let waiting = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/api/v1/wait");
        async move {
            http.get(url)
                .send()
                .await
                .expect("an answer")
                .text()
                .await
                .expect("text")
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"two\"\n\
         [[routes]]\nprefix = \"/extra\"\nupstream = \"one\"\n{}{}",
        pool("two", &[&b], ""),
        pool("one", &[&a], "")
    );
    gateway
        .reload(GatewayConfig::parse(&after).expect("valid"))
        .expect("the reload is taken");
    let (_, body) = get_json(&http, format!("{base}/api/x")).await;
    assert_eq!(body["instance"], "b");
    let (_, body) = get_json(&http, format!("{base}/extra/y")).await;
    assert_eq!(body["instance"], "a");
    assert_eq!(
        waiting.await.expect("the request"),
        "a",
        "the in-flight request did not finish where it began"
    );

    let moved = format!("listen = \"127.0.0.1:1\"\n{before}");
    let refused = gateway
        .reload(GatewayConfig::parse(&moved).expect("valid"))
        .expect_err("listen cannot change");
    assert!(refused.to_string().contains("`listen`"), "{refused}");
    let tls = format!("[tls]\ncert = \"x.crt\"\nkey = \"x.key\"\n{before}");
    let refused = gateway
        .reload(GatewayConfig::parse(&tls).expect("valid"))
        .expect_err("TLS cannot be turned on");
    assert!(refused.to_string().contains("`tls`"), "{refused}");
    let (_, body) = get_json(&http, format!("{base}/api/x")).await;
    assert_eq!(body["instance"], "b", "a refused reload changed the routes");
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn tls_is_terminated_with_the_configured_certificate() {
    let service = instance("svc").await;
    // A test certificate for localhost and 127.0.0.1, signed by a test CA.
    let toml = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\n{}",
        fixture("localhost.crt"),
        fixture("localhost.key"),
        pool("svc", &[&service], "")
    );
    let (address, _shutdown, _gateway) = serve_gateway(&toml).await;
    let pem = std::fs::read(fixture("ca.crt")).expect("the test CA's certificate");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"))
        .build()
        .expect("a client");
    let (status, body) = get_json(&https, format!("https://{address}/api/x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{address}/api/x"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|a| a.status() != StatusCode::OK));

    let missing = toml.replace("localhost.crt", "missing.crt");
    let refused = Gateway::new(GatewayConfig::parse(&missing).expect("valid"))
        .err()
        .expect("a missing certificate is refused");
    assert!(refused.to_string().contains("`tls.cert`"), "{refused}");
    let no_key = toml.replace("localhost.key", "missing.key");
    let refused = Gateway::new(GatewayConfig::parse(&no_key).expect("valid"))
        .err()
        .expect("a missing key is refused");
    assert!(refused.to_string().contains("`tls.key`"), "{refused}");
}

#[tokio::test]
async fn a_reload_keeps_the_keys_while_the_identity_service_is_down() {
    let service = instance("svc").await;
    let jwks = Jwks::start().await;
    let toml = format!(
        "[auth]\njwks_url = \"{}\"\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"svc\"\nrequire_auth = true\n{}",
        jwks.url,
        pool("svc", &[&service], "")
    );
    let (address, _shutdown, gateway) = serve_gateway(&toml).await;
    let base = format!("http://{address}");
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", token(&jwks.current(), UserId::new(), 600));
    let (status, _) = call(&http, &format!("{base}/api/x"), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK);
    jwks.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway
        .reload(GatewayConfig::parse(&toml).expect("valid"))
        .expect("the reload is taken");
    let (status, body) = call(&http, &format!("{base}/api/x"), Some(&bearer)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the keys were lost at the reload: {body}"
    );
}
