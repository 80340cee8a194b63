//! The payment provider behind the payments module, and the simulated one that
//! development and tests use.
//!
//! The client never sends card numbers, only a token its provider issued. The
//! simulated provider knows a few documented test tokens (docs/checkout.md) and
//! behaves like a real one: calls are idempotent by key, amounts are checked
//! against what was authorized and captured, and it can be made slow, flaky or
//! silent to exercise the checkout's failure paths.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use agora_kernel::Money;
use async_trait::async_trait;

/// An authorization the provider granted or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// The amount is held on the card.
    Approved {
        /// The provider's id of the payment, for capture, void and refund.
        provider_ref: String,
        /// The card's brand, as the provider reports it.
        brand: String,
        /// The card's last four digits: the only card data ever stored.
        last4: String,
    },
    /// The card was declined; `reason` is the provider's code.
    Declined {
        /// E.g. `card_declined`, `insufficient_funds`, `invalid_number`.
        reason: String,
    },
}

/// Why a provider call did not give an answer (as opposed to a decline).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider failed; retrying with the same key is safe.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// No answer in time; the call may or may not have taken effect, and
    /// retrying with the same key settles it.
    #[error("provider timed out")]
    Timeout,
    /// The provider refused the call itself (capturing more than authorized,
    /// refunding more than captured, an unknown payment).
    #[error("provider refused: {0}")]
    Refused(String),
}

/// A payment provider. Every call carries an idempotency key: the provider does
/// the work once per key and answers repeats with the first answer.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Holds `amount` on the card behind `payment_token`.
    async fn authorize(
        &self,
        key: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<Authorization, ProviderError>;

    /// Takes `amount` (at most what was authorized) of an authorization.
    async fn capture(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError>;

    /// Lets an uncaptured authorization go.
    async fn void(&self, key: &str, provider_ref: &str) -> Result<(), ProviderError>;

    /// Gives back `amount` (in total at most what was captured).
    async fn refund(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError>;
}

/// How the simulated provider behaves besides its token rules.
#[derive(Debug, Clone, Default)]
pub struct SimulatedBehaviour {
    /// Added to every call.
    pub latency: Duration,
    /// The share of calls, 0 to 1, that fail with `Unavailable` before doing
    /// anything.
    pub error_rate: f64,
}

/// A payment the simulated provider holds.
#[derive(Debug, Clone)]
struct Payment {
    authorized: Money,
    captured: i64,
    refunded: i64,
    voided: bool,
}

impl Ledger {
    fn payment(&mut self, provider_ref: &str) -> Result<&mut Payment, ProviderError> {
        self.payments
            .get_mut(provider_ref)
            .ok_or_else(|| ProviderError::Refused("unknown payment".into()))
    }
}

#[derive(Default)]
struct Ledger {
    payments: HashMap<String, Payment>,
    /// Answers by idempotency key: a repeat gets the first answer.
    authorizations: HashMap<String, Result<Authorization, ProviderError>>,
    done: HashMap<String, Result<(), ProviderError>>,
}

/// The built-in simulated provider.
pub struct SimulatedProvider {
    behaviour: SimulatedBehaviour,
    ledger: Mutex<Ledger>,
}

impl SimulatedProvider {
    /// A simulated provider behaving as `behaviour` says.
    pub fn new(behaviour: SimulatedBehaviour) -> Self {
        Self {
            behaviour,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    async fn weather(&self) -> Result<(), ProviderError> {
        if !self.behaviour.latency.is_zero() {
            tokio::time::sleep(self.behaviour.latency).await;
        }
        if self.behaviour.error_rate > 0.0 && chance() < self.behaviour.error_rate {
            return Err(ProviderError::Unavailable("simulated outage".into()));
        }
        Ok(())
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` once per key; repeats get the first answer.
    fn once(
        &self,
        key: &str,
        op: impl FnOnce(&mut Ledger) -> Result<(), ProviderError>,
    ) -> Result<(), ProviderError> {
        let mut ledger = self.ledger();
        if let Some(answer) = ledger.done.get(key) {
            return answer.clone();
        }
        let answer = op(&mut ledger);
        ledger.done.insert(key.to_string(), answer.clone());
        answer
    }
}

/// What a test token does (docs/checkout.md lists them).
fn decide(token: &str) -> Result<Result<(String, String), String>, ProviderError> {
    match token {
        "tok_visa" => Ok(Ok(("visa".into(), "4242".into()))),
        "tok_mastercard" => Ok(Ok(("mastercard".into(), "4444".into()))),
        "tok_declined" => Ok(Err("card_declined".into())),
        "tok_insufficient_funds" => Ok(Err("insufficient_funds".into())),
        "tok_error" => Err(ProviderError::Unavailable(
            "simulated processing error".into(),
        )),
        "tok_timeout" => Err(ProviderError::Timeout),
        _ => match token.strip_prefix("tok_card_") {
            // Card-number rules, as test cards work at real providers.
            Some(number) if number.len() == 16 && number.bytes().all(|b| b.is_ascii_digit()) => {
                if !luhn(number) {
                    Ok(Err("invalid_number".into()))
                } else if number.ends_with("0002") {
                    Ok(Err("card_declined".into()))
                } else if number.ends_with("9995") {
                    Ok(Err("insufficient_funds".into()))
                } else {
                    let brand = if number.starts_with('4') {
                        "visa"
                    } else {
                        "card"
                    };
                    Ok(Ok((brand.into(), number[12..].to_string())))
                }
            }
            _ => Ok(Err("invalid_token".into())),
        },
    }
}

fn luhn(number: &str) -> bool {
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A number in [0, 1).
fn chance() -> f64 {
    let mut bytes = [0_u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 1.0;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        key: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<Authorization, ProviderError> {
        if let Some(answer) = self.ledger().authorizations.get(key) {
            return answer.clone();
        }
        self.weather().await?;
        let answer = match decide(payment_token) {
            Err(ProviderError::Timeout) => {
                // A timeout the caller sees; the provider never answered.
                return Err(ProviderError::Timeout);
            }
            Err(e) => Err(e),
            Ok(Err(reason)) => Ok(Authorization::Declined { reason }),
            Ok(Ok((brand, last4))) => {
                let provider_ref = format!("sim_{}", uuid_like(key));
                Ok(Authorization::Approved {
                    provider_ref,
                    brand,
                    last4,
                })
            }
        };
        let mut ledger = self.ledger();
        // A concurrent repeat may have answered first: keep that answer.
        if let Some(first) = ledger.authorizations.get(key) {
            return first.clone();
        }
        if let Ok(Authorization::Approved { provider_ref, .. }) = &answer {
            ledger.payments.insert(
                provider_ref.clone(),
                Payment {
                    authorized: amount,
                    captured: 0,
                    refunded: 0,
                    voided: false,
                },
            );
        }
        ledger
            .authorizations
            .insert(key.to_string(), answer.clone());
        answer
    }

    async fn capture(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError> {
        self.weather().await?;
        self.once(key, |ledger| {
            let payment = ledger.payment(provider_ref)?;
            if payment.voided {
                return Err(ProviderError::Refused(
                    "the authorization was voided".into(),
                ));
            }
            if amount.currency() != payment.authorized.currency()
                || payment.captured + amount.amount_minor() > payment.authorized.amount_minor()
            {
                return Err(ProviderError::Refused("more than authorized".into()));
            }
            payment.captured += amount.amount_minor();
            Ok(())
        })
    }

    async fn void(&self, key: &str, provider_ref: &str) -> Result<(), ProviderError> {
        self.weather().await?;
        self.once(key, |ledger| {
            let payment = ledger.payment(provider_ref)?;
            if payment.captured > 0 {
                return Err(ProviderError::Refused(
                    "already captured: refund instead".into(),
                ));
            }
            payment.voided = true;
            Ok(())
        })
    }

    async fn refund(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError> {
        self.weather().await?;
        self.once(key, |ledger| {
            let payment = ledger.payment(provider_ref)?;
            if amount.currency() != payment.authorized.currency()
                || payment.refunded + amount.amount_minor() > payment.captured
            {
                return Err(ProviderError::Refused("more than captured".into()));
            }
            payment.refunded += amount.amount_minor();
            Ok(())
        })
    }
}

/// A short, stable reference derived from an idempotency key.
fn uuid_like(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_kernel::Currency;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::parse("USD").expect("USD")).expect("in range")
    }

    fn provider() -> SimulatedProvider {
        SimulatedProvider::new(SimulatedBehaviour::default())
    }

    #[tokio::test]
    async fn test_tokens_approve_decline_fail_or_time_out() {
        let p = provider();
        let Ok(Authorization::Approved { last4, brand, .. }) =
            p.authorize("k1", "tok_visa", usd(500)).await
        else {
            panic!("tok_visa approves")
        };
        assert_eq!((brand.as_str(), last4.as_str()), ("visa", "4242"));
        for (token, reason) in [
            ("tok_declined", "card_declined"),
            ("tok_insufficient_funds", "insufficient_funds"),
            ("tok_card_4000000000000002", "card_declined"),
            ("tok_card_4242424242424241", "invalid_number"),
            ("4242424242424242", "invalid_token"),
        ] {
            assert_eq!(
                p.authorize(token, token, usd(500)).await,
                Ok(Authorization::Declined {
                    reason: reason.into()
                }),
                "{token}"
            );
        }
        let Ok(Authorization::Approved { last4, .. }) = p
            .authorize("k2", "tok_card_4242424242424242", usd(500))
            .await
        else {
            panic!("a valid test card approves")
        };
        assert_eq!(last4, "4242");
        assert!(matches!(
            p.authorize("k3", "tok_error", usd(1)).await,
            Err(ProviderError::Unavailable(_))
        ));
        assert_eq!(
            p.authorize("k4", "tok_timeout", usd(1)).await,
            Err(ProviderError::Timeout)
        );
    }

    #[tokio::test]
    async fn calls_are_idempotent_by_key_and_amounts_are_checked() {
        let p = provider();
        let first = p.authorize("auth-1", "tok_visa", usd(1000)).await;
        assert_eq!(
            p.authorize("auth-1", "tok_declined", usd(1)).await,
            first,
            "a repeat gets the first answer"
        );
        let Ok(Authorization::Approved { provider_ref, .. }) = first else {
            panic!("approved")
        };
        assert!(matches!(
            p.capture("cap-0", &provider_ref, usd(1001)).await,
            Err(ProviderError::Refused(_))
        ));
        assert_eq!(p.capture("cap-1", &provider_ref, usd(1000)).await, Ok(()));
        assert_eq!(
            p.capture("cap-1", &provider_ref, usd(1000)).await,
            Ok(()),
            "captured once"
        );
        assert!(matches!(
            p.void("void-1", &provider_ref).await,
            Err(ProviderError::Refused(_))
        ));
        assert_eq!(p.refund("ref-1", &provider_ref, usd(400)).await, Ok(()));
        assert_eq!(
            p.refund("ref-1", &provider_ref, usd(400)).await,
            Ok(()),
            "refunded once"
        );
        assert_eq!(p.refund("ref-2", &provider_ref, usd(600)).await, Ok(()));
        assert!(matches!(
            p.refund("ref-3", &provider_ref, usd(1)).await,
            Err(ProviderError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn a_flaky_provider_fails_before_doing_anything() {
        let p = SimulatedProvider::new(SimulatedBehaviour {
            error_rate: 1.0,
            ..SimulatedBehaviour::default()
        });
        assert!(matches!(
            p.authorize("k", "tok_visa", usd(1)).await,
            Err(ProviderError::Unavailable(_))
        ));
        assert!(p.ledger().authorizations.is_empty());
    }

    #[test]
    fn luhn_accepts_test_cards_and_refuses_typos() {
        assert!(luhn("4242424242424242"));
        assert!(luhn("4000000000000002"));
        assert!(!luhn("4242424242424241"));
    }
}
