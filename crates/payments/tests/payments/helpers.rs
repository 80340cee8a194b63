//! The harness: payments over a fresh database, a provider that fails on
//! request, and the payments routes served on port 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agora_kernel::{
    ApiError, ApiKeyId, Clock, Currency, ManualClock, Money, Permission, Permissions, Timestamp,
};
use agora_payments::provider::SimulatedBehaviour;
use agora_payments::{PaymentStore, Payments, WebhookSettings};
use agora_platform::Shutdown;
use agora_platform::auth::{ApiKeyGrant, ApiKeyResolver, Authenticator, secret_hash};
use agora_platform::bus::Outbox;
use agora_platform::config::{AuthConfig, Secret};
use agora_platform::http::edge::Edge;
use agora_platform::http::{build_router, serve};
use agora_platform::testing::TestDatabase;
use async_trait::async_trait;
use axum::Router;
use reqwest::StatusCode;
use serde_json::Value;

/// The fixed start of the manual clock: 2023-11-14T22:13:20Z.
pub(crate) const START: i64 = 1_700_000_000_000;
/// The secret webhooks are signed with in the tests.
pub(crate) const SECRET: &str = "whsec_test_secret_for_the_suite";
/// An API key holding `payments:manage`.
pub(crate) const STAFF_KEY: &str = "agk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// An API key holding no permission.
pub(crate) const NOBODY_KEY: &str = "agk_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

pub(crate) fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD")).expect("in range")
}

pub(crate) use agora_payments::testing::{Fault, FaultyProvider};

/// The payments module over a fresh database.
pub(crate) struct Fixture {
    pub(crate) payments: Payments,
    pub(crate) provider: Arc<FaultyProvider>,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) db: TestDatabase,
}

pub(crate) async fn fixture() -> Fixture {
    fixture_with(SimulatedBehaviour::default(), Timestamp::from_millis(START)).await
}

/// A fixture whose provider behaves as `behaviour` says, on a clock stopped at
/// `now`.
pub(crate) async fn fixture_with(behaviour: SimulatedBehaviour, now: Timestamp) -> Fixture {
    let db = TestDatabase::new().await.expect("a database");
    db.db
        .migrate(&agora_payments::MIGRATIONS)
        .await
        .expect("payments migrations");
    let clock = Arc::new(ManualClock::new(now));
    let provider = Arc::new(FaultyProvider::new(behaviour, db.db.clone()));
    let outbox = Arc::new(Outbox::new(agora_payments::OUTBOX_TABLE));
    let payments = Payments::new(
        PaymentStore::new(db.db.clone(), outbox),
        provider.clone(),
        clock.clone(),
        WebhookSettings {
            secret: Secret::new(SECRET),
            tolerance_secs: 300,
        },
    );
    Fixture {
        payments,
        provider,
        clock,
        db,
    }
}

impl Fixture {
    /// The events in the outbox, in order: (kind, aggregate id, payload).
    pub(crate) async fn outbox(&self) -> Vec<(String, String, Value)> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT kind, aggregate_id, payload FROM payments_outbox ORDER BY seq")
                .fetch_all(self.db.db.writer())
                .await
                .expect("the outbox");
        rows.into_iter()
            .map(|(kind, id, payload)| {
                (
                    kind,
                    id,
                    serde_json::from_str(&payload).expect("JSON payload"),
                )
            })
            .collect()
    }

    /// The kinds of the events in the outbox, in order.
    pub(crate) async fn event_kinds(&self) -> Vec<String> {
        self.outbox().await.into_iter().map(|(k, _, _)| k).collect()
    }

    /// How many rows `table` has.
    /// The payment as stored, with its amounts and reservations.
    pub(crate) async fn stored(
        &self,
        id: agora_kernel::PaymentId,
    ) -> agora_payments::store::PaymentRecord {
        self.payments
            .store()
            .payment(id)
            .await
            .expect("read")
            .expect("the payment exists")
    }

    /// Where the operation of `key` stands, if there is one.
    pub(crate) async fn operation_status(
        &self,
        key: &str,
    ) -> Option<agora_payments::store::OperationStatus> {
        let op = self.payments.store().operation(key).await.expect("read");
        op.map(|o| o.status)
    }

    pub(crate) async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.db.db.writer())
            .await
            .expect("a count")
    }

    /// A captured payment of `minor` USD.
    pub(crate) async fn captured(&self, key: &str, minor: i64) -> agora_kernel::PaymentId {
        let p = self
            .payments
            .authorize_payment(key, &format!("ord_{key}"), "tok_visa", usd(minor))
            .await
            .expect("authorized");
        self.payments
            .capture_payment(&format!("{key}:capture"), p.id)
            .await
            .expect("captured");
        p.id
    }

    /// Serves the payments routes, as the monolith does (edge middleware, API
    /// keys for staff), on port 0.
    pub(crate) async fn serve(&self) -> Server {
        serve_router(agora_payments::http::router(self.payments.clone())).await
    }

    /// The current time in Unix seconds, by the fixture's clock.
    pub(crate) fn now_secs(&self) -> i64 {
        self.clock.now().as_millis() / 1000
    }
}

/// API keys by the hash of their secret.
struct Keys(HashMap<String, ApiKeyGrant>);

#[async_trait]
impl ApiKeyResolver for Keys {
    async fn resolve(&self, hash: &str) -> Result<Option<ApiKeyGrant>, ApiError> {
        Ok(self.0.get(hash).cloned())
    }
}

/// A running server and a client for it.
pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A listener on a free port of 127.0.0.1.
pub(crate) async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

/// Serves `api` under `/api/v1` with the edge middleware, on port 0.
pub(crate) async fn serve_router(api: Router) -> Server {
    serve_on(bind().await, api)
}

/// Serves `api` under `/api/v1` with the edge middleware, on `listener`.
pub(crate) fn serve_on(listener: tokio::net::TcpListener, api: Router) -> Server {
    let authenticator = Authenticator::new(&AuthConfig::default());
    let grant = |permissions| ApiKeyGrant {
        id: ApiKeyId::new(),
        permissions,
        expires_at: None,
    };
    authenticator.set_api_key_resolver(Arc::new(Keys(HashMap::from([
        (
            secret_hash(STAFF_KEY),
            grant(Permissions::of(&[Permission::PaymentsManage])),
        ),
        (secret_hash(NOBODY_KEY), grant(Permissions::EMPTY)),
    ]))));
    let edge = Edge {
        authenticator,
        request_timeout: Duration::from_secs(30),
        trust_forwarded_for: false,
    };
    let router = build_router(api, Router::new(), edge, 1024 * 1024);
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    tokio::spawn(serve(
        listener,
        router,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    Server {
        base,
        client: reqwest::Client::new(),
        shutdown,
    }
}

/// An answer: status and JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Answer {
    /// The error code of a failure envelope.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// `data`.
    pub(crate) fn data(&self) -> &Value {
        &self.body["data"]
    }
}

impl Server {
    async fn answer(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("an answer");
        let status = response.status();
        let text = response.text().await.expect("a body");
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    /// POSTs `body` to the webhook route of `provider` with `signature`.
    pub(crate) async fn webhook(
        &self,
        provider: &str,
        body: &str,
        signature: Option<&str>,
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}/api/v1/webhooks/payments/{provider}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(signature) = signature {
            request = request.header("agora-signature", signature);
        }
        self.answer(request).await
    }

    /// GETs `path` (under `/api/v1`) as the holder of `key`.
    pub(crate) async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        let mut request = self.client.get(format!("{}/api/v1{path}", self.base));
        if let Some(key) = key {
            request = request.header("authorization", format!("ApiKey {key}"));
        }
        self.answer(request).await
    }

    /// POSTs `body` to `path` (under `/api/v1`) as staff, with an
    /// `Idempotency-Key` when given.
    pub(crate) async fn post_as_staff(
        &self,
        path: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}/api/v1{path}", self.base))
            .header("authorization", format!("ApiKey {STAFF_KEY}"))
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.answer(request).await
    }
}

/// A provider event as the simulated provider writes it.
pub(crate) fn provider_event(
    id: &str,
    kind: &str,
    provider_ref: &str,
    amount: i64,
    captured: i64,
    refunded: i64,
) -> String {
    serde_json::json!({
        "id": id,
        "type": kind,
        "created": START / 1000,
        "data": {
            "provider_ref": provider_ref,
            "amount_minor": amount,
            "currency": "USD",
            "captured_minor": captured,
            "refunded_minor": refunded,
        }
    })
    .to_string()
}
