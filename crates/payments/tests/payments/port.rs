//! The port the checkout calls: authorize, capture, cancel and refund, each
//! idempotent by key, against the real database and the simulated provider.

use std::time::Duration;

use agora_contracts::payments::{PaymentError, PaymentStatus, PaymentsPort};
use agora_kernel::{Currency, Money};
use agora_payments::provider::SimulatedBehaviour;
use agora_payments::store::OperationStatus;

use crate::helpers::{Fault, fixture, fixture_with, usd};

#[tokio::test]
async fn an_authorization_is_made_once_per_key() {
    let f = fixture().await;
    let first = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1000))
        .await
        .expect("authorized");
    assert_eq!(first.status, PaymentStatus::Authorized);
    assert_eq!(
        (first.card_brand.as_deref(), first.card_last4.as_deref()),
        (Some("visa"), Some("4242"))
    );
    let again = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1000))
        .await
        .expect("the same answer");
    assert_eq!(again, first);
    for (reference, amount) in [("ord_2", usd(1000)), ("ord_1", usd(999))] {
        let reused = f
            .payments
            .authorize("auth-1", reference, "tok_visa", amount)
            .await;
        assert!(matches!(reused, Err(PaymentError::KeyReused)), "{reused:?}");
    }
    assert_eq!(f.count("payments_payments").await, 1);
    assert_eq!(f.event_kinds().await, ["payments.payment_authorized"]);
    let (_, aggregate, payload) = &f.outbox().await[0];
    assert_eq!(aggregate, &first.id.to_string());
    assert_eq!(payload["reference"], "ord_1");
    assert_eq!(payload["amount"]["amount"], 1000);
}

/// A fixture whose provider takes 20 ms a call: long enough for concurrent
/// repeats to overlap.
async fn slow_provider() -> crate::helpers::Fixture {
    fixture_with(
        SimulatedBehaviour {
            latency: Duration::from_millis(20),
            ..SimulatedBehaviour::default()
        },
        agora_kernel::Timestamp::from_millis(crate::helpers::START),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_authorizations_make_one_payment() {
    let f = slow_provider().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let payments = f.payments.clone();
        tasks.spawn(async move {
            payments
                .authorize("saga-1:authorize", "ord_1", "tok_visa", usd(2500))
                .await
        });
    }
    let ids: std::collections::HashSet<_> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| {
            let p = r.expect("every call answers with the one payment");
            assert_eq!(p.status, PaymentStatus::Authorized);
            p.id
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(f.count("payments_payments").await, 1);
    assert_eq!(f.event_kinds().await, ["payments.payment_authorized"]);
}

#[tokio::test]
async fn a_decline_is_a_declined_payment_not_an_error() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_insufficient_funds", usd(1000))
        .await
        .expect("a decline is an answer");
    assert_eq!(p.status, PaymentStatus::Declined);
    assert_eq!(p.decline_reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(
        f.payments
            .authorize("auth-1", "ord_1", "tok_insufficient_funds", usd(1000))
            .await
            .expect("repeated")
            .status,
        PaymentStatus::Declined
    );
    assert!(matches!(
        f.payments.capture("cap-1", p.id).await,
        Err(PaymentError::InvalidState(PaymentStatus::Declined))
    ));
    let cancelled = f.payments.cancel("cancel-1", p.id).await.expect("a no-op");
    assert_eq!(cancelled.status, PaymentStatus::Declined);
    assert_eq!(f.event_kinds().await, ["payments.payment_failed"]);
    let (_, _, payload) = &f.outbox().await[0];
    assert_eq!(payload["reason"], "insufficient_funds");
}

#[tokio::test]
async fn an_unanswered_authorization_stays_processing_and_a_repeat_settles_it() {
    let f = fixture().await;
    for fault in [Fault::Unavailable, Fault::LostAnswer] {
        let key = format!("auth-{fault:?}");
        f.provider.fail_next(&[fault]);
        let first = f
            .payments
            .authorize(&key, "ord_1", "tok_visa", usd(700))
            .await;
        let first = first.expect("the payment, not yet settled");
        assert_eq!(first.status, PaymentStatus::Processing);
        let stored = f
            .payments
            .store()
            .payment_by_key(&key)
            .await
            .expect("read")
            .expect("the payment exists before the provider answers");
        assert_eq!(stored.status, PaymentStatus::Processing);
        let settled = f
            .payments
            .authorize(&key, "ord_1", "tok_visa", usd(700))
            .await
            .expect("the repeat settles it");
        assert_eq!(settled.status, PaymentStatus::Authorized);
        assert_eq!(settled.id, stored.id);
        let attempts = f
            .payments
            .store()
            .attempts_of(settled.id)
            .await
            .expect("attempts");
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.as_str()).collect();
        let expected = if fault == Fault::Unavailable {
            "unavailable"
        } else {
            "timeout"
        };
        assert_eq!(outcomes, [expected, "approved"]);
    }
    assert_eq!(
        f.event_kinds().await,
        ["payments.payment_authorized", "payments.payment_authorized"]
    );
}

#[tokio::test]
async fn a_provider_that_never_answers_leaves_the_payment_processing() {
    let f = fixture().await;
    for _ in 0..2 {
        let r = f
            .payments
            .authorize("auth-1", "ord_1", "tok_timeout", usd(700))
            .await;
        assert_eq!(
            r.expect("the payment, not yet settled").status,
            PaymentStatus::Processing
        );
    }
    let p = f
        .payments
        .store()
        .payment_by_key("auth-1")
        .await
        .expect("read");
    assert_eq!(p.map(|p| p.status), Some(PaymentStatus::Processing));
    assert!(f.outbox().await.is_empty());
}

#[tokio::test]
async fn a_capture_takes_the_whole_amount_once() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1200))
        .await
        .expect("authorized");
    for key in ["cap-1", "cap-1", "cap-2"] {
        let c = f.payments.capture(key, p.id).await.expect("captured");
        assert_eq!(
            (c.status, c.captured_minor),
            (PaymentStatus::Captured, 1200)
        );
    }
    assert!(matches!(
        f.payments.cancel("cap-1", p.id).await,
        Err(PaymentError::KeyReused)
    ));
    assert_eq!(
        f.count("payments_operations").await,
        1,
        "the no-op repeat stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_captures_with_one_key_capture_once() {
    let f = slow_provider().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1200))
        .await
        .expect("authorized");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let payments = f.payments.clone();
        tasks.spawn(async move { payments.capture("saga-1:capture", p.id).await });
    }
    for result in tasks.join_all().await {
        let c = result.expect("every call answers with the captured payment");
        assert_eq!(
            (c.status, c.captured_minor),
            (PaymentStatus::Captured, 1200)
        );
    }
    assert_eq!(
        f.count("payments_operations").await,
        1,
        "one capture operation"
    );
    let done: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM payments_operations WHERE kind = 'capture' AND status = 'succeeded'",
    )
    .fetch_one(f.db.db.reader())
    .await
    .expect("count");
    assert_eq!(done, 1);
}

#[tokio::test]
async fn a_capture_whose_answer_was_lost_is_settled_by_its_repeat() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1200))
        .await
        .expect("authorized");
    f.provider.fail_next(&[Fault::LostAnswer]);
    assert!(matches!(
        f.payments.capture("cap-1", p.id).await,
        Err(PaymentError::ProviderUnavailable(_))
    ));
    let op = f.payments.store().operation("cap-1").await.expect("read");
    assert_eq!(op.map(|o| o.status), Some(OperationStatus::Pending));
    assert_eq!(
        f.payments
            .payment(p.id)
            .await
            .expect("read")
            .map(|p| p.status),
        Some(PaymentStatus::Authorized)
    );
    let c = f.payments.capture("cap-1", p.id).await.expect("settled");
    assert_eq!(c.status, PaymentStatus::Captured);
}

#[tokio::test]
async fn cancel_voids_an_authorization_and_repeats_are_no_ops() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(500))
        .await
        .expect("authorized");
    for key in ["cancel-1", "cancel-1", "cancel-2"] {
        let c = f.payments.cancel(key, p.id).await.expect("voided");
        assert_eq!(c.status, PaymentStatus::Voided);
    }
    assert!(matches!(
        f.payments.capture("cap-1", p.id).await,
        Err(PaymentError::InvalidState(PaymentStatus::Voided))
    ));
    assert!(matches!(
        f.payments.refund("ref-1", p.id, usd(1), "why").await,
        Err(PaymentError::InvalidState(PaymentStatus::Voided))
    ));
    assert_eq!(f.event_kinds().await, ["payments.payment_authorized"]);
}

#[tokio::test]
async fn cancel_of_a_captured_payment_refunds_what_is_left() {
    let f = fixture().await;
    let id = f.captured("a", 1000).await;
    f.payments
        .refund("ref-1", id, usd(300), "one broken")
        .await
        .expect("refunded");
    for _ in 0..2 {
        let c = f.payments.cancel("cancel-1", id).await.expect("cancelled");
        assert_eq!(
            (c.status, c.captured_minor, c.refunded_minor),
            (PaymentStatus::Refunded, 1000, 1000)
        );
    }
    let refunds: Vec<_> = f
        .outbox()
        .await
        .into_iter()
        .filter(|(k, _, _)| k == "payments.payment_refunded")
        .map(|(_, _, p)| {
            (
                p["amount"]["amount"].as_i64(),
                p["refunded_total_minor"].as_i64(),
                p["fully_refunded"].as_bool(),
            )
        })
        .collect();
    assert_eq!(
        refunds,
        [
            (Some(300), Some(300), Some(false)),
            (Some(700), Some(1000), Some(true))
        ]
    );
    let again = f.payments.cancel("cancel-2", id).await.expect("a no-op");
    assert_eq!(again.status, PaymentStatus::Refunded);
}

#[tokio::test]
async fn cancel_of_a_processing_payment_learns_its_outcome_first() {
    let f = fixture().await;
    f.provider.fail_next(&[Fault::LostAnswer]);
    assert_eq!(
        f.payments
            .authorize("auth-1", "ord_1", "tok_visa", usd(800))
            .await
            .expect("the payment, unsettled")
            .status,
        PaymentStatus::Processing
    );
    let p = f
        .payments
        .store()
        .payment_by_key("auth-1")
        .await
        .expect("read")
        .expect("stored");
    let c = f.payments.cancel("cancel-1", p.id).await.expect("voided");
    assert_eq!(c.status, PaymentStatus::Voided);
    assert_eq!(f.event_kinds().await, ["payments.payment_authorized"]);

    f.provider.fail_next(&[Fault::Unavailable]);
    assert_eq!(
        f.payments
            .authorize("auth-2", "ord_2", "tok_declined", usd(800))
            .await
            .expect("the payment, unsettled")
            .status,
        PaymentStatus::Processing
    );
    let p = f
        .payments
        .store()
        .payment_by_key("auth-2")
        .await
        .expect("read")
        .expect("stored");
    let c = f.payments.cancel("cancel-2", p.id).await.expect("declined");
    assert_eq!(c.status, PaymentStatus::Declined);
}

#[tokio::test]
async fn cancel_voids_an_authorization_the_provider_never_took() {
    let f = fixture().await;
    f.provider
        .fail_next(&[Fault::Unavailable, Fault::Unavailable]);
    assert_eq!(
        f.payments
            .authorize("auth-1", "ord_1", "tok_visa", usd(800))
            .await
            .expect("the payment, unsettled")
            .status,
        PaymentStatus::Processing
    );
    let p = f
        .payments
        .store()
        .payment_by_key("auth-1")
        .await
        .expect("read")
        .expect("stored");
    let c = f.payments.cancel("cancel-1", p.id).await.expect("voided");
    assert_eq!(c.status, PaymentStatus::Voided);
    // The provider is back: a late repeat of the authorization asks it nothing.
    let again = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(800))
        .await
        .expect("the voided payment");
    assert_eq!(again.status, PaymentStatus::Voided);
    assert!(f.outbox().await.is_empty());
}

#[tokio::test]
async fn cancel_after_a_timed_out_authorization_cancels_it_at_the_provider() {
    let f = fixture().await;
    // The provider authorized, but its answer was lost; then it goes down for
    // the repeat and the first cancellation.
    f.provider
        .fail_next(&[Fault::LostAnswer, Fault::Unavailable, Fault::Unavailable]);
    assert_eq!(
        f.payments
            .authorize("auth-1", "ord_1", "tok_visa", usd(800))
            .await
            .expect("the payment, unsettled")
            .status,
        PaymentStatus::Processing
    );
    let p = f
        .payments
        .store()
        .payment_by_key("auth-1")
        .await
        .expect("read")
        .expect("stored");
    let unsure = f.payments.cancel("cancel-1", p.id).await;
    assert!(
        matches!(unsure, Err(PaymentError::ProviderUnavailable(_))),
        "the hold may exist: {unsure:?}"
    );
    // Back up: the authorization's outcome is learned, then let go.
    let c = f.payments.cancel("cancel-1", p.id).await.expect("voided");
    assert_eq!(c.status, PaymentStatus::Voided);
    assert_eq!(
        c.card_last4.as_deref(),
        Some("4242"),
        "it was authorized, then voided"
    );
    assert_eq!(f.event_kinds().await, ["payments.payment_authorized"]);
}

#[tokio::test]
async fn a_provider_that_never_answers_is_told_to_cancel_the_authorization() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_timeout", usd(800))
        .await
        .expect("the payment, unsettled");
    assert_eq!(p.status, PaymentStatus::Processing);
    let c = f
        .payments
        .cancel("cancel-1", p.id)
        .await
        .expect("cancelled");
    assert_eq!(c.status, PaymentStatus::Voided);
    // Whatever the provider did, that authorization is now a decline there.
    let again = f
        .payments
        .authorize("auth-1", "ord_1", "tok_timeout", usd(800))
        .await
        .expect("the voided payment");
    assert_eq!(again.status, PaymentStatus::Voided);
}

#[tokio::test]
async fn refunds_are_idempotent_partial_and_bounded() {
    let f = fixture().await;
    let authorized = f
        .payments
        .authorize("auth-x", "ord_x", "tok_visa", usd(1000))
        .await
        .expect("authorized");
    assert!(matches!(
        f.payments
            .refund("r0", authorized.id, usd(100), "why")
            .await,
        Err(PaymentError::InvalidState(PaymentStatus::Authorized))
    ));
    let id = f.captured("a", 1000).await;
    for _ in 0..2 {
        let r = f
            .payments
            .refund("r1", id, usd(400), "damaged")
            .await
            .expect("refunded once");
        assert_eq!(
            (r.status, r.refunded_minor),
            (PaymentStatus::PartiallyRefunded, 400)
        );
    }
    for (amount, reason) in [(usd(401), "damaged"), (usd(400), "other reason")] {
        assert!(matches!(
            f.payments.refund("r1", id, amount, reason).await,
            Err(PaymentError::KeyReused)
        ));
    }
    let too_much = f.payments.refund("r2", id, usd(601), "more").await;
    assert!(
        matches!(
            too_much,
            Err(PaymentError::ExceedsRefundable {
                refundable_minor: 600
            })
        ),
        "{too_much:?}"
    );
    let euros = Money::new(100, Currency::parse("EUR").expect("EUR")).expect("money");
    assert!(matches!(
        f.payments.refund("r3", id, euros, "wrong currency").await,
        Err(PaymentError::ExceedsRefundable { .. })
    ));
    let rest = f
        .payments
        .refund("r4", id, usd(600), "the rest")
        .await
        .expect("refunded");
    assert_eq!(
        (rest.status, rest.refunded_minor),
        (PaymentStatus::Refunded, 1000)
    );
    assert!(matches!(
        f.payments.refund("r5", id, usd(1), "more").await,
        Err(PaymentError::ExceedsRefundable {
            refundable_minor: 0
        })
    ));
    assert_eq!(
        f.event_kinds().await,
        [
            "payments.payment_authorized",
            "payments.payment_authorized",
            "payments.payment_refunded",
            "payments.payment_refunded"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_exceed_the_capture() {
    let f = fixture_with(
        SimulatedBehaviour {
            latency: Duration::from_millis(10),
            ..SimulatedBehaviour::default()
        },
        agora_kernel::Timestamp::from_millis(crate::helpers::START),
    )
    .await;
    let id = f.captured("a", 1000).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let payments = f.payments.clone();
        tasks.spawn(async move {
            payments
                .refund(&format!("refund-{i}"), id, usd(300), "30%")
                .await
        });
    }
    let results = tasks.join_all().await;
    let done = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(PaymentError::ExceedsRefundable { .. })))
        .count();
    assert_eq!((done, refused), (3, 7), "{results:?}");
    let p = f.payments.payment(id).await.expect("read").expect("exists");
    assert_eq!(
        (p.status, p.captured_minor, p.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 1000, 900)
    );
    let refunded_events = f
        .event_kinds()
        .await
        .iter()
        .filter(|k| *k == "payments.payment_refunded")
        .count();
    assert_eq!(refunded_events, 3);
}

#[tokio::test]
async fn an_unanswered_refund_keeps_its_amount_set_aside_until_a_repeat_settles_it() {
    let f = fixture().await;
    let id = f.captured("a", 1000).await;
    f.provider.fail_next(&[Fault::LostAnswer]);
    assert!(matches!(
        f.payments.refund("r1", id, usd(400), "late").await,
        Err(PaymentError::ProviderUnavailable(_))
    ));
    let stored = f
        .payments
        .store()
        .payment(id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (stored.refunded_minor, stored.refund_pending_minor),
        (0, 400)
    );
    assert!(matches!(
        f.payments.refund("r2", id, usd(700), "too much").await,
        Err(PaymentError::ExceedsRefundable {
            refundable_minor: 600
        })
    ));
    let r = f
        .payments
        .refund("r1", id, usd(400), "late")
        .await
        .expect("settled");
    assert_eq!(r.refunded_minor, 400);
    let stored = f
        .payments
        .store()
        .payment(id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(stored.refund_pending_minor, 0);
    let refunded = f
        .event_kinds()
        .await
        .iter()
        .filter(|k| *k == "payments.payment_refunded")
        .count();
    assert_eq!(refunded, 1);
}

#[tokio::test]
async fn a_refused_refund_gives_its_amount_back_and_answers_the_same_on_repeat() {
    let f = fixture().await;
    let id = f.captured("a", 1000).await;
    f.provider.fail_next(&[Fault::Refused]);
    for _ in 0..2 {
        let r = f.payments.refund("r1", id, usd(400), "refused").await;
        assert!(
            matches!(
                r,
                Err(PaymentError::ExceedsRefundable {
                    refundable_minor: 1000
                })
            ),
            "{r:?}"
        );
    }
    let stored = f
        .payments
        .store()
        .payment(id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!((stored.refunded_minor, stored.refund_pending_minor), (0, 0));
    let op = f.payments.store().operation("r1").await.expect("read");
    assert_eq!(op.map(|o| o.status), Some(OperationStatus::Failed));
}

#[tokio::test]
async fn the_resolver_settles_calls_left_unanswered() {
    let f = fixture().await;
    let id = f.captured("a", 1000).await;
    f.provider
        .fail_next(&[Fault::LostAnswer, Fault::Unavailable]);
    assert!(f.payments.refund("r1", id, usd(250), "late").await.is_err());
    assert_eq!(
        f.payments
            .authorize("auth-b", "ord_b", "tok_visa", usd(300))
            .await
            .expect("the payment, unsettled")
            .status,
        PaymentStatus::Processing
    );
    assert_eq!(
        f.payments.resolve_unanswered().await.expect("resolved"),
        0,
        "too fresh: their callers may still be retrying"
    );
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.payments.resolve_unanswered().await.expect("resolved"), 2);
    let p = f.payments.payment(id).await.expect("read").expect("exists");
    assert_eq!(p.refunded_minor, 250);
    let b = f
        .payments
        .store()
        .payment_by_key("auth-b")
        .await
        .expect("read");
    assert_eq!(b.map(|b| b.status), Some(PaymentStatus::Authorized));
    assert_eq!(f.payments.resolve_unanswered().await.expect("resolved"), 0);
}

#[tokio::test]
async fn every_change_writes_its_event_exactly_once() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_mastercard", usd(1000))
        .await
        .expect("authorized");
    for _ in 0..2 {
        f.payments.capture("cap-1", p.id).await.expect("captured");
        f.payments
            .refund("ref-1", p.id, usd(200), "scratched")
            .await
            .expect("refunded");
        f.payments
            .cancel("cancel-1", p.id)
            .await
            .expect("cancelled");
        f.payments
            .authorize("auth-1", "ord_1", "tok_mastercard", usd(1000))
            .await
            .expect("repeat");
    }
    let events = f.outbox().await;
    let kinds: Vec<_> = events.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "payments.payment_authorized",
            "payments.payment_refunded",
            "payments.payment_refunded"
        ]
    );
    assert!(events.iter().all(|(_, id, _)| *id == p.id.to_string()));
    assert_eq!(events[2].2["amount"]["amount"], 800);
    assert_eq!(events[2].2["fully_refunded"], true);
}

/// A capture that the provider refuses fails cleanly: the operation ends
/// failed and nothing of the payment changes (a failed capture reserved
/// nothing, so it gives nothing back).
#[tokio::test]
async fn a_refused_capture_fails_and_changes_nothing() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1200))
        .await
        .expect("authorized");
    f.provider.fail_next(&[Fault::Refused]);
    let refused = f.payments.capture("cap-1", p.id).await;
    assert!(
        matches!(
            refused,
            Err(PaymentError::InvalidState(PaymentStatus::Authorized))
        ),
        "{refused:?}"
    );
    assert_eq!(
        f.operation_status("cap-1").await,
        Some(OperationStatus::Failed)
    );
    let stored = f.stored(p.id).await;
    assert_eq!(stored.status, PaymentStatus::Authorized);
    assert_eq!((stored.captured_minor, stored.refund_pending_minor), (0, 0));
}

/// A capture left without an answer, then the payment voided: repeating the
/// capture is refused for the voided payment, every time, and the operation
/// ends failed.
#[tokio::test]
async fn a_capture_of_a_payment_voided_meanwhile_fails_cleanly() {
    let f = fixture().await;
    let p = f
        .payments
        .authorize("auth-1", "ord_1", "tok_visa", usd(1200))
        .await
        .expect("authorized");
    f.provider.fail_next(&[Fault::Unavailable]);
    assert!(matches!(
        f.payments.capture("cap-1", p.id).await,
        Err(PaymentError::ProviderUnavailable(_))
    ));
    let voided = f.payments.cancel("cancel-1", p.id).await.expect("voided");
    assert_eq!(voided.status, PaymentStatus::Voided);
    for _ in 0..2 {
        let again = f.payments.capture("cap-1", p.id).await;
        assert!(
            matches!(
                again,
                Err(PaymentError::InvalidState(PaymentStatus::Voided))
            ),
            "{again:?}"
        );
    }
    assert_eq!(
        f.operation_status("cap-1").await,
        Some(OperationStatus::Failed)
    );
    let stored = f.stored(p.id).await;
    assert_eq!((stored.captured_minor, stored.refund_pending_minor), (0, 0));
}
