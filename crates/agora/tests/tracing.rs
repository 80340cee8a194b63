//! Traces, exported to an in-process exporter: one checkout is one trace,
//! from the caller's `traceparent` through the request, its saga steps and
//! database transactions, the outbox relay and the consumers of its events.
//!
//! A test binary of its own: the exporter is part of the process's one global
//! subscriber.

use std::time::Duration;

use agora::app::Application;
use agora_kernel::Role;
use agora_platform::config::LogConfig;
use agora_platform::testing::TestDatabase;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("an answer");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn login(&self, email: &str) -> String {
        let body = json!({ "email": email, "password": PASSWORD });
        let answer = self
            .send(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(body),
                &[],
            )
            .await;
        answer["data"]["access_token"]
            .as_str()
            .expect("a token")
            .to_string()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn in_trace<'s>(spans: &'s [SpanData], trace: TraceId, name: &str) -> Vec<&'s SpanData> {
    spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace && s.name == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_across_the_relay_and_the_consumers() {
    let exporter = InMemorySpanExporter::default();
    let telemetry = agora_platform::telemetry::init_with_exporter(
        &LogConfig {
            filter: "warn".into(),
            ..LogConfig::default()
        },
        exporter.clone(),
    )
    .expect("the exporter is installed");

    let db = TestDatabase::new().await.expect("a test database");
    let config = db.app_config();
    let app = Application::build(config.clone())
        .await
        .expect("the application builds");
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", app.local_addr()),
    };
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run_until_stopped());

    agora::app::create_user(
        &config,
        "staff@agora.test",
        "Staff",
        PASSWORD.into(),
        vec![Role::Staff],
    )
    .await
    .expect("staff");
    let staff = client.login("staff@agora.test").await;
    let product = client
        .send(
            reqwest::Method::POST,
            "/api/v1/products",
            Some(&staff),
            Some(json!({ "sku": "TRACE-1", "name": "Traced mug",
                         "price": { "amount": 1299, "currency": "USD" } })),
            &[],
        )
        .await;
    let product = product["data"]["id"].as_str().expect("an id").to_string();
    let stock = json!({ "on_hand": 5, "reason": "delivery" });
    let path = format!("/api/v1/inventory/{product}");
    client
        .send(reqwest::Method::PUT, &path, Some(&staff), Some(stock), &[])
        .await;
    let register = json!({ "email": "ada@example.com", "password": PASSWORD, "name": "Ada" });
    client
        .send(
            reqwest::Method::POST,
            "/api/v1/auth/register",
            None,
            Some(register),
            &[],
        )
        .await;
    let ada = client.login("ada@example.com").await;
    // Read twice: a miss that loads, then a hit; both are cache calls.
    let path = format!("/api/v1/products/{product}");
    for _ in 0..2 {
        client
            .send(reqwest::Method::GET, &path, None, None, &[])
            .await;
    }
    let line = json!({ "product_id": product, "quantity": 2 });
    client
        .send(
            reqwest::Method::POST,
            "/api/v1/cart/items",
            Some(&ada),
            Some(line),
            &[],
        )
        .await;

    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let order = client
        .send(
            reqwest::Method::POST,
            "/api/v1/checkout",
            Some(&ada),
            Some(json!({ "payment_token": "tok_visa" })),
            &[
                ("traceparent", &caller),
                ("idempotency-key", "trace-checkout-1"),
            ],
        )
        .await;
    assert_eq!(order["data"]["status"], "confirmed", "{order}");

    // The consumers of OrderConfirmed (the receipt among them) run after the
    // relay has published it.
    let trace = TraceId::from_hex(CALLER_TRACE).expect("a trace id");
    let mut spans = Vec::new();
    for _ in 0..500 {
        spans = exporter.get_finished_spans().expect("the spans");
        let handled = in_trace(&spans, trace, "bus.handle");
        if handled
            .iter()
            .any(|s| attribute(s, "kind").as_deref() == Some("orders.order_confirmed"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names = |list: &[&SpanData]| list.iter().map(|s| s.name.to_string()).collect::<Vec<_>>();
    let everything: Vec<&SpanData> = spans.iter().collect();

    // The request continues the caller's span.
    let requests = in_trace(&spans, trace, "request");
    assert_eq!(requests.len(), 1, "{:?}", names(&everything));
    let request = requests[0];
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(CALLER_SPAN).expect("a span id")
    );
    assert!(request.parent_span_is_remote);

    // Its saga steps and database transactions are in it, under the request.
    let steps = in_trace(&spans, trace, "saga.step");
    let step_names: Vec<String> = steps.iter().filter_map(|s| attribute(s, "step")).collect();
    for step in ["reserve", "authorize", "capture"] {
        assert!(step_names.iter().any(|s| s == step), "{step_names:?}");
    }
    assert!(!in_trace(&spans, trace, "db.transaction").is_empty());
    assert!(
        steps
            .iter()
            .all(|s| s.parent_span_id == request.span_context.span_id()),
        "saga steps are children of the request"
    );

    // The events it wrote carry the request span's context: the relay's and
    // the consumers' spans are its children, in the same trace.
    let published = in_trace(&spans, trace, "bus.publish");
    let published_kinds: Vec<String> = published
        .iter()
        .filter_map(|s| attribute(s, "kind"))
        .collect();
    assert!(
        published_kinds
            .iter()
            .any(|k| k == "orders.order_confirmed"),
        "{published_kinds:?}"
    );
    let handled = in_trace(&spans, trace, "bus.handle");
    assert!(
        handled
            .iter()
            .any(|s| attribute(s, "kind").as_deref() == Some("orders.order_confirmed")),
        "{:?}",
        names(&everything)
    );
    for span in published.iter().chain(&handled) {
        assert_eq!(
            span.parent_span_id,
            request.span_context.span_id(),
            "{} {:?}",
            span.name,
            attribute(span, "kind")
        );
    }

    // The stored event says the same, as its traceparent.
    let events = client
        .send(
            reqwest::Method::GET,
            "/api/v1/admin/events?kind=orders.order_confirmed",
            Some(&staff),
            None,
            &[],
        )
        .await;
    let expected = format!("00-{CALLER_TRACE}-{}-01", request.span_context.span_id());
    assert_eq!(
        events["data"][0]["traceparent"],
        expected.as_str(),
        "{events}"
    );

    // A request without a traceparent starts a trace of its own, and the
    // product reads went through the cache: a miss, then a hit.
    let cache_calls: Vec<&SpanData> = spans.iter().filter(|s| s.name == "cache.get").collect();
    let hits: Vec<Option<String>> = cache_calls.iter().map(|s| attribute(s, "hit")).collect();
    assert!(hits.contains(&Some("true".into())), "{hits:?}");
    assert!(hits.contains(&Some("false".into())), "{hits:?}");
    for call in &cache_calls {
        let parent = spans
            .iter()
            .find(|s| s.span_context.span_id() == call.parent_span_id)
            .expect("the cache call's parent is exported");
        assert_eq!(parent.name, "request");
        assert_ne!(parent.span_context.trace_id(), trace);
        assert_eq!(parent.parent_span_id, SpanId::INVALID, "a root span");
    }

    // A caller that does not sample its trace: nothing of it is exported.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let header = format!("00-{unsampled}-b7ad6b7169203331-00");
    let path = format!("/api/v1/products/{product}");
    client
        .send(
            reqwest::Method::GET,
            &path,
            None,
            None,
            &[("traceparent", &header)],
        )
        .await;
    let unsampled = TraceId::from_hex(unsampled).expect("a trace id");
    let exported = exporter.get_finished_spans().expect("the spans");
    assert!(
        exported
            .iter()
            .all(|s| s.span_context.trace_id() != unsampled),
        "an unsampled trace is not exported"
    );

    shutdown.trigger();
    let _ = server.await;
    telemetry.shutdown();
}
