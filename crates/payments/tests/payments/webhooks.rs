//! The provider's webhooks over HTTP: signatures, deduplication, order, and the
//! simulated provider's own deliveries.

use std::time::Duration;

use agora_contracts::payments::{PaymentStatus, PaymentsPort};
use agora_kernel::{Clock, SystemClock};
use agora_payments::provider::{SimulatedBehaviour, WebhookTarget};
use agora_payments::webhook::sign;
use agora_platform::config::Secret;
use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use serde_json::json;

use crate::helpers::{SECRET, bind, fixture, fixture_with, provider_event, serve_on, usd};

#[tokio::test]
async fn a_signed_event_is_applied_once_and_a_duplicate_changes_nothing() {
    let f = fixture().await;
    let server = f.serve().await;
    let id = f.captured("a", 1000).await;
    let payment = f.payments.payment_record(id).await.expect("read");
    let provider_ref = payment.provider_ref.expect("a provider reference");
    let body = provider_event("evt_1", "payment.refunded", &provider_ref, 1000, 1000, 400);
    let signature = sign(SECRET.as_bytes(), f.now_secs(), body.as_bytes());
    let first = server.webhook("simulated", &body, Some(&signature)).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(
        first.data(),
        &json!({ "received": true, "duplicate": false })
    );
    let p = f.payments.payment_record(id).await.expect("read");
    assert_eq!(
        (p.status, p.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 400)
    );
    let again = server.webhook("simulated", &body, Some(&signature)).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.data(),
        &json!({ "received": true, "duplicate": true })
    );
    assert_eq!(f.payments.payment_record(id).await.expect("read"), p);
    assert_eq!(f.count("payments_provider_events").await, 1);
    let refunded: Vec<_> = f
        .outbox()
        .await
        .into_iter()
        .filter(|(k, _, _)| k == "payments.payment_refunded")
        .map(|(_, _, payload)| payload)
        .collect();
    assert_eq!(
        refunded.len(),
        1,
        "the refund the provider reported is published once"
    );
    assert_eq!(refunded[0]["amount"]["amount"], 400);
    assert_eq!(refunded[0]["refunded_total_minor"], 400);
}

#[tokio::test]
async fn an_older_event_arriving_late_changes_nothing() {
    let f = fixture().await;
    let server = f.serve().await;
    let id = f.captured("a", 1000).await;
    let provider_ref = f
        .payments
        .payment_record(id)
        .await
        .expect("read")
        .provider_ref
        .expect("a provider reference");
    let newer = provider_event("evt_2", "payment.refunded", &provider_ref, 1000, 1000, 600);
    let older = provider_event("evt_1", "payment.refunded", &provider_ref, 1000, 1000, 300);
    let stale_capture = provider_event("evt_0", "payment.captured", &provider_ref, 1000, 1000, 0);
    for body in [&newer, &older, &stale_capture] {
        let signature = sign(SECRET.as_bytes(), f.now_secs(), body.as_bytes());
        let answer = server.webhook("simulated", body, Some(&signature)).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.data()["duplicate"], false);
    }
    let p = f.payments.payment_record(id).await.expect("read");
    assert_eq!(
        (p.status, p.captured_minor, p.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 1000, 600)
    );
    let events = f
        .payments
        .store()
        .provider_events_of(id)
        .await
        .expect("events");
    let mut applied: Vec<_> = events
        .iter()
        .map(|e| (e.event_id.as_str(), e.applied))
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        [("evt_0", false), ("evt_1", false), ("evt_2", true)]
    );
}

#[tokio::test]
async fn a_capture_reported_first_makes_our_own_capture_a_no_op() {
    let f = fixture().await;
    let server = f.serve().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(900))
        .await
        .expect("authorized");
    let provider_ref = f
        .payments
        .payment_record(p.id)
        .await
        .expect("read")
        .provider_ref
        .expect("a provider reference");
    let body = provider_event("evt_c", "payment.captured", &provider_ref, 900, 900, 0);
    let signature = sign(SECRET.as_bytes(), f.now_secs(), body.as_bytes());
    assert_eq!(
        server
            .webhook("simulated", &body, Some(&signature))
            .await
            .status,
        200
    );
    assert_eq!(
        f.payments.payment_record(p.id).await.expect("read").status,
        PaymentStatus::Captured
    );
    let c = f.payments.capture("cap-1", p.id).await.expect("a no-op");
    assert_eq!((c.status, c.captured_minor), (PaymentStatus::Captured, 900));
}

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_are_refused_and_nothing_is_stored() {
    let f = fixture().await;
    let server = f.serve().await;
    let body = provider_event("evt_1", "payment.captured", "sim_x", 1000, 1000, 0);
    let now = f.now_secs();
    let tampered = body.replace("1000,", "999,");
    let good_for_other_body = sign(SECRET.as_bytes(), now, tampered.as_bytes());
    let cases = [
        ("missing", None),
        ("garbage", Some("garbage".to_string())),
        (
            "another secret",
            Some(sign(b"not the secret", now, body.as_bytes())),
        ),
        ("another body", Some(good_for_other_body)),
        (
            "stale",
            Some(sign(SECRET.as_bytes(), now - 301, body.as_bytes())),
        ),
        (
            "from the future",
            Some(sign(SECRET.as_bytes(), now + 301, body.as_bytes())),
        ),
    ];
    for (case, signature) in cases {
        let answer = server
            .webhook("simulated", &body, signature.as_deref())
            .await;
        assert_eq!(answer.status, 400, "{case}");
        assert_eq!(
            answer.code(),
            "PAYMENTS_WEBHOOK_SIGNATURE_INVALID",
            "{case}"
        );
    }
    assert_eq!(f.count("payments_provider_events").await, 0);
}

#[tokio::test]
async fn unknown_providers_and_unreadable_events_get_their_codes() {
    let f = fixture().await;
    let server = f.serve().await;
    let body = provider_event("evt_1", "payment.captured", "sim_x", 1000, 1000, 0);
    let signature = sign(SECRET.as_bytes(), f.now_secs(), body.as_bytes());
    let unknown = server.webhook("stripe", &body, Some(&signature)).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.code()),
        (404, "PAYMENTS_UNKNOWN_PROVIDER")
    );
    for garbage in [
        "not json".to_string(),
        json!({"id": "evt_1", "type": "payment.exploded"}).to_string(),
        body.replace("\"refunded_minor\":0", "\"refunded_minor\":2000"),
    ] {
        let signature = sign(SECRET.as_bytes(), f.now_secs(), garbage.as_bytes());
        let answer = server
            .webhook("simulated", &garbage, Some(&signature))
            .await;
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (400, "PAYMENTS_WEBHOOK_INVALID"),
            "{garbage}"
        );
    }
    // An event about a payment we do not know is stored, and changes nothing.
    let answer = server.webhook("simulated", &body, Some(&signature)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(f.count("payments_provider_events").await, 1);
}

#[tokio::test]
async fn the_simulated_providers_webhooks_reach_the_endpoint_and_verify() {
    // The monolith's loop: the provider sends its webhooks to this very module.
    let listener = bind().await;
    let url = format!(
        "http://{}/api/v1/webhooks/payments/simulated",
        listener.local_addr().expect("addr")
    );
    // Signed with the real time, so the receiving side reads the real time too.
    let f = fixture_with(
        SimulatedBehaviour {
            webhook: Some(WebhookTarget {
                url,
                secret: Secret::new(SECRET),
            }),
            ..SimulatedBehaviour::default()
        },
        SystemClock.now(),
    )
    .await;
    // Each delivery the endpoint answers is reported here, with its status.
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel::<u16>();
    let report = move |request: Request, next: Next| {
        let tx = tx.clone();
        async move {
            let response = next.run(request).await;
            let _ = tx.send(response.status().as_u16());
            response
        }
    };
    let _server = serve_on(
        listener,
        agora_payments::http::router(f.payments.clone()).layer(from_fn(report)),
    );
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1000))
        .await
        .expect("authorized");
    f.payments.capture("cap-1", p.id).await.expect("captured");
    f.payments
        .refund("ref-1", p.id, usd(300), "one broken")
        .await
        .expect("refunded");
    f.payments
        .authorize("auth-2", "ord_2", "tok_declined", usd(50))
        .await
        .expect("declined");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let status = tokio::time::timeout(Duration::from_secs(20), delivered.recv())
            .await
            .expect("a webhook arrives")
            .expect("the channel is open");
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200],
        "each verified and was stored"
    );
    let mut kinds: Vec<String> = sqlx::query_scalar("SELECT type FROM payments_provider_events")
        .fetch_all(f.db.db.writer())
        .await
        .expect("events");
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "payment.authorized",
            "payment.captured",
            "payment.declined",
            "payment.refunded"
        ]
    );
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM payments_provider_events")
        .fetch_all(f.db.db.writer())
        .await
        .expect("payloads");
    let refunded = payloads
        .iter()
        .map(|p| serde_json::from_str::<serde_json::Value>(p).expect("JSON"))
        .find(|e| e["type"] == "payment.refunded")
        .expect("the refund event");
    assert!(
        refunded["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_sim_"))
    );
    assert_eq!(refunded["data"]["captured_minor"], 1000);
    assert_eq!(refunded["data"]["refunded_minor"], 300);
    assert_eq!(refunded["data"]["currency"], "USD");
    // Whichever came first, our answer or the provider's webhook, the payment and
    // its events are the same.
    let now = f.payments.payment_record(p.id).await.expect("read");
    assert_eq!(
        (
            now.status,
            now.captured_minor,
            now.refunded_minor,
            now.refund_pending_minor
        ),
        (PaymentStatus::PartiallyRefunded, 1000, 300, 0)
    );
    assert_eq!(
        f.event_kinds().await,
        [
            "payments.payment_authorized",
            "payments.payment_refunded",
            "payments.payment_failed"
        ]
    );
}
