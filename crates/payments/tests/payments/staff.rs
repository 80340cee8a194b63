//! The staff routes over HTTP: listing, details, and refunds with an
//! `Idempotency-Key`.

use agora_contracts::payments::PaymentsPort;
use agora_kernel::PaymentId;
use serde_json::json;

use crate::helpers::{NOBODY_KEY, STAFF_KEY, fixture, usd};

#[tokio::test]
async fn staff_list_payments_newest_first_with_filters_and_pages() {
    let f = fixture().await;
    let server = f.serve().await;
    for (key, reference, token) in [
        ("a", "ord_a", "tok_visa"),
        ("b", "ord_b", "tok_declined"),
        ("c", "ord_b", "tok_visa"),
    ] {
        f.payments
            .authorize(key, reference, token, usd(100))
            .await
            .expect("answered");
        f.clock.advance(std::time::Duration::from_millis(10));
    }
    let first = server.get("/payments?limit=2", Some(STAFF_KEY)).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let refs: Vec<_> = first
        .data()
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["reference"].clone())
        .collect();
    assert_eq!(refs, [json!("ord_b"), json!("ord_b")]);
    let cursor = first.body["meta"]["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let second = server
        .get(
            &format!("/payments?limit=2&cursor={cursor}"),
            Some(STAFF_KEY),
        )
        .await;
    assert_eq!(second.data().as_array().map(Vec::len), Some(1));
    assert_eq!(second.data()[0]["reference"], "ord_a");
    assert!(second.body["meta"]["next_cursor"].is_null());

    let by_reference = server
        .get("/payments?reference=ord_b", Some(STAFF_KEY))
        .await;
    assert_eq!(by_reference.data().as_array().map(Vec::len), Some(2));
    let declined = server
        .get("/payments?status=declined", Some(STAFF_KEY))
        .await;
    assert_eq!(declined.data().as_array().map(Vec::len), Some(1));
    assert_eq!(declined.data()[0]["decline_reason"], "card_declined");

    for (query, code) in [
        ("?status=lost", "REQUEST_INVALID_QUERY"),
        ("?limit=0", "REQUEST_INVALID_QUERY"),
        ("?colour=red", "REQUEST_INVALID_QUERY"),
        ("?cursor=garbage", "REQUEST_INVALID_CURSOR"),
    ] {
        let answer = server
            .get(&format!("/payments{query}"), Some(STAFF_KEY))
            .await;
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (400, code),
            "{query}"
        );
    }
    let forbidden = server.get("/payments", Some(NOBODY_KEY)).await;
    assert_eq!(
        (forbidden.status.as_u16(), forbidden.code()),
        (403, "AUTH_FORBIDDEN")
    );
    let anonymous = server.get("/payments", None).await;
    assert_eq!(
        (anonymous.status.as_u16(), anonymous.code()),
        (401, "AUTH_REQUIRED")
    );
}

#[tokio::test]
async fn a_payments_details_show_its_history_but_never_its_token() {
    let f = fixture().await;
    let server = f.serve().await;
    let id = f.captured("a", 1000).await;
    f.payments
        .refund("r1", id, usd(250), "scratched")
        .await
        .expect("refunded");
    let answer = server
        .get(&format!("/payments/{id}"), Some(STAFF_KEY))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let d = answer.data();
    assert_eq!(d["payment"]["id"], id.to_string());
    assert_eq!(d["payment"]["status"], "partially_refunded");
    assert_eq!(d["payment"]["card_last4"], "4242");
    assert_eq!(d["payment"]["card_brand"], "visa");
    assert_eq!(d["refunds"][0]["amount_minor"], 250);
    assert_eq!(d["refunds"][0]["status"], "succeeded");
    let operations: Vec<_> = d["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["operation"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(operations, ["authorize", "capture", "refund"]);
    let text = answer.body.to_string();
    assert!(!text.contains("tok_visa"), "{text}");
    assert!(!text.contains("payment_token"), "{text}");

    let missing = server
        .get(&format!("/payments/{}", PaymentId::new()), Some(STAFF_KEY))
        .await;
    assert_eq!(
        (missing.status.as_u16(), missing.code()),
        (404, "PAYMENTS_PAYMENT_NOT_FOUND")
    );
    let malformed = server.get("/payments/ord_123", Some(STAFF_KEY)).await;
    assert_eq!(
        (malformed.status.as_u16(), malformed.code()),
        (400, "REQUEST_INVALID_PATH")
    );
}

#[tokio::test]
async fn a_staff_refund_needs_a_key_and_happens_once_per_key() {
    let f = fixture().await;
    let server = f.serve().await;
    let id = f.captured("a", 1000).await;
    let path = format!("/payments/{id}/refunds");
    let body = json!({ "amount": { "amount": 500, "currency": "USD" }, "reason": "returned" });

    let missing = server.post_as_staff(&path, None, &body).await;
    assert_eq!(
        (missing.status.as_u16(), missing.code()),
        (400, "REQUEST_IDEMPOTENCY_KEY_MISSING")
    );
    let too_long = "k".repeat(256);
    for bad in ["", too_long.as_str(), "tab\there"] {
        let answer = server.post_as_staff(&path, Some(bad), &body).await;
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (400, "REQUEST_IDEMPOTENCY_KEY_INVALID"),
            "{bad:?}"
        );
    }
    for _ in 0..2 {
        let answer = server.post_as_staff(&path, Some("refund-1"), &body).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.data()["refunded_minor"], 500);
        assert_eq!(answer.data()["status"], "partially_refunded");
    }
    let other_body = json!({ "amount_minor": 400, "reason": "returned" });
    let reused = server
        .post_as_staff(&path, Some("refund-1"), &other_body)
        .await;
    assert_eq!(
        (reused.status.as_u16(), reused.code()),
        (422, "REQUEST_IDEMPOTENCY_KEY_REUSED")
    );
    let in_minor = server
        .post_as_staff(&path, Some("refund-2"), &other_body)
        .await;
    assert_eq!(in_minor.status, 200, "{:?}", in_minor.body);
    assert_eq!(in_minor.data()["refunded_minor"], 900);

    let too_much = server
        .post_as_staff(
            &path,
            Some("refund-3"),
            &json!({ "amount_minor": 101, "reason": "more" }),
        )
        .await;
    assert_eq!(
        (too_much.status.as_u16(), too_much.code()),
        (422, "PAYMENTS_REFUND_EXCEEDS_CAPTURED")
    );
    assert_eq!(too_much.body["error"]["details"]["refundable_minor"], 100);
    for invalid in [
        json!({ "amount_minor": 0, "reason": "zero" }),
        json!({ "reason": "no amount" }),
        json!({ "amount_minor": 5, "amount": { "amount": 5, "currency": "USD" }, "reason": "both" }),
        json!({ "amount_minor": 5, "reason": "   " }),
    ] {
        let answer = server
            .post_as_staff(&path, Some("refund-4"), &invalid)
            .await;
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (422, "VALIDATION_FAILED"),
            "{invalid}"
        );
    }
    let unknown = server
        .post_as_staff(
            &format!("/payments/{}/refunds", PaymentId::new()),
            Some("refund-5"),
            &body,
        )
        .await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.code()),
        (404, "PAYMENTS_PAYMENT_NOT_FOUND")
    );
    let refunded = f
        .event_kinds()
        .await
        .iter()
        .filter(|k| *k == "payments.payment_refunded")
        .count();
    assert_eq!(refunded, 2);
}

#[tokio::test]
async fn refunding_an_uncaptured_payment_is_an_invalid_state() {
    let f = fixture().await;
    let server = f.serve().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1000))
        .await
        .expect("authorized");
    let answer = server
        .post_as_staff(
            &format!("/payments/{}/refunds", p.id),
            Some("refund-1"),
            &json!({ "amount_minor": 100, "reason": "early" }),
        )
        .await;
    assert_eq!(
        (answer.status.as_u16(), answer.code()),
        (409, "PAYMENTS_INVALID_STATE")
    );
    assert_eq!(answer.body["error"]["details"]["status"], "authorized");
}
