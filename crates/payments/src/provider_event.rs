//! The provider's webhook events: what they say, and how one moves a payment.
//!
//! An event reports the provider's totals for a payment after something happened
//! (`captured_minor`, `refunded_minor`). Deliveries can repeat and arrive in any
//! order, so an event is applied only when it moves the payment forward — more
//! captured or more refunded than we know, or a void of an authorization — and an
//! older report changes nothing. While one of our own refunds is on its way to the
//! provider, refund totals are left to that refund (the provider's total may or
//! may not include it yet).

use agora_contracts::payments::PaymentStatus;
use agora_kernel::Currency;
use serde::Deserialize;

use crate::store::PaymentRecord;

/// The longest event id and provider reference accepted.
const MAX_ID_LEN: usize = 255;

/// What happened at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ProviderEventKind {
    /// An authorization was granted.
    #[serde(rename = "payment.authorized")]
    Authorized,
    /// An authorization was declined.
    #[serde(rename = "payment.declined")]
    Declined,
    /// Money was captured.
    #[serde(rename = "payment.captured")]
    Captured,
    /// An authorization was let go.
    #[serde(rename = "payment.voided")]
    Voided,
    /// Money was given back.
    #[serde(rename = "payment.refunded")]
    Refunded,
}

impl ProviderEventKind {
    /// The type as the provider writes it, e.g. `payment.refunded`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderEventKind::Authorized => "payment.authorized",
            ProviderEventKind::Declined => "payment.declined",
            ProviderEventKind::Captured => "payment.captured",
            ProviderEventKind::Voided => "payment.voided",
            ProviderEventKind::Refunded => "payment.refunded",
        }
    }
}

/// A webhook event of the provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProviderEvent {
    /// The provider's id of the event; deliveries of one event share it.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: ProviderEventKind,
    /// When it happened, Unix seconds.
    pub created: i64,
    /// The payment's totals after it.
    pub data: ProviderEventData,
}

/// The payment an event is about, as the provider sees it after the event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProviderEventData {
    /// The provider's id of the payment.
    pub provider_ref: String,
    /// The amount authorized.
    pub amount_minor: i64,
    /// Its currency.
    pub currency: Currency,
    /// Captured so far.
    pub captured_minor: i64,
    /// Refunded so far.
    pub refunded_minor: i64,
}

impl ProviderEvent {
    /// Reads an event from a webhook body; the error says what is wrong.
    pub fn parse(body: &[u8]) -> Result<ProviderEvent, String> {
        let event: ProviderEvent = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let printable = |s: &str| {
            (1..=MAX_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
        };
        if !printable(&event.id) {
            return Err(format!(
                "`id` must be 1 to {MAX_ID_LEN} printable ASCII characters"
            ));
        }
        if !printable(&event.data.provider_ref) {
            return Err(format!(
                "`data.provider_ref` must be 1 to {MAX_ID_LEN} printable ASCII characters"
            ));
        }
        let d = &event.data;
        if !(d.amount_minor > 0
            && 0 <= d.refunded_minor
            && d.refunded_minor <= d.captured_minor
            && d.captured_minor <= d.amount_minor)
        {
            return Err(
                "amounts must satisfy 0 <= refunded_minor <= captured_minor <= amount_minor".into(),
            );
        }
        Ok(event)
    }
}

/// A payment's state after an event moved it forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// The new status.
    pub status: PaymentStatus,
    /// The new captured total.
    pub captured_minor: i64,
    /// The new refunded total.
    pub refunded_minor: i64,
}

/// How `event` moves `ours` forward, if it does. An event about another amount
/// or currency is not about this payment as we know it and moves nothing.
pub fn advance(ours: &PaymentRecord, event: &ProviderEvent) -> Option<Advance> {
    let d = &event.data;
    if d.currency != ours.amount.currency() || d.amount_minor != ours.amount.amount_minor() {
        return None;
    }
    match ours.status {
        // The provider's answer to our own call settles these; a report about a
        // finished payment is old news.
        PaymentStatus::Processing
        | PaymentStatus::Declined
        | PaymentStatus::Voided
        | PaymentStatus::Refunded => None,
        PaymentStatus::Authorized => {
            if event.kind == ProviderEventKind::Voided && d.captured_minor == 0 {
                return Some(Advance {
                    status: PaymentStatus::Voided,
                    captured_minor: 0,
                    refunded_minor: 0,
                });
            }
            (d.captured_minor > 0).then(|| Advance {
                status: status_for(d.captured_minor, d.refunded_minor),
                captured_minor: d.captured_minor,
                refunded_minor: d.refunded_minor,
            })
        }
        PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => {
            let more_refunded = d.refunded_minor > ours.refunded_minor
                && d.refunded_minor <= ours.captured_minor
                && d.captured_minor == ours.captured_minor;
            (ours.refund_pending_minor == 0 && more_refunded).then(|| Advance {
                status: status_for(ours.captured_minor, d.refunded_minor),
                captured_minor: ours.captured_minor,
                refunded_minor: d.refunded_minor,
            })
        }
    }
}

/// The status of a captured payment with these totals.
fn status_for(captured_minor: i64, refunded_minor: i64) -> PaymentStatus {
    if refunded_minor == 0 {
        PaymentStatus::Captured
    } else if refunded_minor == captured_minor {
        PaymentStatus::Refunded
    } else {
        PaymentStatus::PartiallyRefunded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_kernel::{Money, PaymentId, Timestamp};
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD")
    }

    fn ours(status: PaymentStatus, captured: i64, refunded: i64, pending: i64) -> PaymentRecord {
        PaymentRecord {
            id: PaymentId::new(),
            authorize_key: "k".into(),
            reference: "ord_1".into(),
            status,
            amount: Money::new(1000, usd()).expect("in range"),
            captured_minor: captured,
            refunded_minor: refunded,
            refund_pending_minor: pending,
            provider: "simulated".into(),
            provider_ref: Some("sim_1".into()),
            card_brand: None,
            card_last4: None,
            decline_reason: None,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    fn event(kind: ProviderEventKind, captured: i64, refunded: i64) -> ProviderEvent {
        ProviderEvent {
            id: "evt_1".into(),
            kind,
            created: 0,
            data: ProviderEventData {
                provider_ref: "sim_1".into(),
                amount_minor: 1000,
                currency: usd(),
                captured_minor: captured,
                refunded_minor: refunded,
            },
        }
    }

    #[test]
    fn a_capture_report_captures_an_authorized_payment_once() {
        let e = event(ProviderEventKind::Captured, 1000, 0);
        let a = advance(&ours(PaymentStatus::Authorized, 0, 0, 0), &e);
        assert_eq!(
            a,
            Some(Advance {
                status: PaymentStatus::Captured,
                captured_minor: 1000,
                refunded_minor: 0
            })
        );
        assert_eq!(
            advance(&ours(PaymentStatus::Captured, 1000, 0, 0), &e),
            None
        );
    }

    #[test]
    fn an_older_refund_report_changes_nothing() {
        let newer = ours(PaymentStatus::PartiallyRefunded, 1000, 600, 0);
        assert_eq!(
            advance(&newer, &event(ProviderEventKind::Refunded, 1000, 300)),
            None
        );
        let a = advance(&newer, &event(ProviderEventKind::Refunded, 1000, 1000));
        assert_eq!(
            a.map(|a| (a.status, a.refunded_minor)),
            Some((PaymentStatus::Refunded, 1000))
        );
    }

    #[test]
    fn refund_totals_wait_while_our_own_refund_is_on_its_way() {
        let busy = ours(PaymentStatus::Captured, 1000, 0, 300);
        assert_eq!(
            advance(&busy, &event(ProviderEventKind::Refunded, 1000, 300)),
            None
        );
    }

    #[test]
    fn a_void_report_voids_only_an_uncaptured_authorization() {
        let e = event(ProviderEventKind::Voided, 0, 0);
        assert_eq!(
            advance(&ours(PaymentStatus::Authorized, 0, 0, 0), &e).map(|a| a.status),
            Some(PaymentStatus::Voided)
        );
        assert_eq!(
            advance(&ours(PaymentStatus::Captured, 1000, 0, 0), &e),
            None
        );
    }

    #[test]
    fn a_report_about_another_amount_or_currency_moves_nothing() {
        let mut e = event(ProviderEventKind::Captured, 500, 0);
        e.data.amount_minor = 500;
        assert_eq!(advance(&ours(PaymentStatus::Authorized, 0, 0, 0), &e), None);
        let mut e = event(ProviderEventKind::Captured, 1000, 0);
        e.data.currency = Currency::parse("EUR").expect("EUR");
        assert_eq!(advance(&ours(PaymentStatus::Authorized, 0, 0, 0), &e), None);
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        for body in [
            &b"not json"[..],
            br#"{"id":"evt_1","type":"payment.exploded","created":1,"data":{"provider_ref":"r","amount_minor":1,"currency":"USD","captured_minor":0,"refunded_minor":0}}"#,
            br#"{"id":"","type":"payment.captured","created":1,"data":{"provider_ref":"r","amount_minor":1,"currency":"USD","captured_minor":1,"refunded_minor":0}}"#,
            br#"{"id":"evt_1","type":"payment.refunded","created":1,"data":{"provider_ref":"r","amount_minor":10,"currency":"USD","captured_minor":5,"refunded_minor":6}}"#,
            br#"{"id":"evt_1","type":"payment.captured","created":1,"data":{"provider_ref":"r","amount_minor":10,"currency":"XXX","captured_minor":5,"refunded_minor":0}}"#,
        ] {
            assert!(ProviderEvent::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let good = br#"{"id":"evt_sim_1","type":"payment.refunded","created":1,"data":{"provider_ref":"sim_1","amount_minor":10,"currency":"USD","captured_minor":10,"refunded_minor":4}}"#;
        assert_eq!(
            ProviderEvent::parse(good).map(|e| (e.kind, e.data.refunded_minor)),
            Ok((ProviderEventKind::Refunded, 4))
        );
    }

    fn any_status() -> impl Strategy<Value = PaymentStatus> {
        prop_oneof![
            Just(PaymentStatus::Processing),
            Just(PaymentStatus::Authorized),
            Just(PaymentStatus::Declined),
            Just(PaymentStatus::Voided),
            Just(PaymentStatus::Captured),
            Just(PaymentStatus::PartiallyRefunded),
            Just(PaymentStatus::Refunded),
        ]
    }

    fn any_kind() -> impl Strategy<Value = ProviderEventKind> {
        prop_oneof![
            Just(ProviderEventKind::Authorized),
            Just(ProviderEventKind::Declined),
            Just(ProviderEventKind::Captured),
            Just(ProviderEventKind::Voided),
            Just(ProviderEventKind::Refunded),
        ]
    }

    proptest! {
        #[test]
        fn events_only_move_a_payment_forward_within_its_rules(
            status in any_status(),
            captured in 0_i64..=1000,
            refunded_share in 0_i64..=100,
            pending_share in 0_i64..=100,
            kind in any_kind(),
            e_captured in 0_i64..=1000,
            e_refunded_share in 0_i64..=100,
        ) {
            // Only captured payments hold captured money.
            let captured = match status {
                PaymentStatus::Captured | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded => captured.max(1),
                _ => 0,
            };
            let refunded = captured * refunded_share / 100;
            let pending = (captured - refunded) * pending_share / 100;
            let before = ours(status, captured, refunded, pending);
            let e = event(kind, e_captured, e_captured * e_refunded_share / 100);
            if let Some(a) = advance(&before, &e) {
                prop_assert!(0 <= a.refunded_minor);
                prop_assert!(a.refunded_minor + before.refund_pending_minor <= a.captured_minor);
                prop_assert!(a.captured_minor <= before.amount.amount_minor());
                prop_assert!(a.captured_minor >= before.captured_minor);
                prop_assert!(a.refunded_minor >= before.refunded_minor);
                // Applying the same event again changes nothing.
                let after = PaymentRecord {
                    status: a.status,
                    captured_minor: a.captured_minor,
                    refunded_minor: a.refunded_minor,
                    ..before
                };
                prop_assert_eq!(advance(&after, &e), None);
            }
        }
    }
}
