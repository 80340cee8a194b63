//! The payment provider behind the payments module, and the simulated one that
//! development and tests use.
//!
//! The client never sends card numbers, only a token its provider issued. The
//! simulated provider knows a few documented test tokens (docs/checkout.md) and
//! behaves like a real one: calls are idempotent by key, amounts are checked
//! against what was authorized and captured, and it can be made slow, flaky or
//! silent to exercise the checkout's failure paths. Given a [`WebhookTarget`], it
//! also tells the shop what happened the way real providers do: after each
//! operation that took effect it POSTs a signed event ([`crate::webhook`]) in the
//! background, retrying a few times.

use std::time::Duration;

use agora_kernel::Money;
use agora_platform::Database;
use agora_platform::config::{PaymentsConfig, Secret};
use async_trait::async_trait;

use crate::simulator::{Answer, Books, Change, Held};

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
    /// The provider's name: stored with each payment, and the `{provider}` of its
    /// webhook route.
    fn name(&self) -> &str;

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

    /// Makes sure the authorization sent with `key` never holds money, whether
    /// or not it reached the provider: voids it if it was granted, and makes any
    /// later authorization with `key` a decline (`canceled`). For authorizations
    /// whose answer was lost (like cancelling a payment intent by its id).
    async fn cancel_authorization(&self, key: &str) -> Result<(), ProviderError>;

    /// Gives back `amount` (in total at most what was captured).
    async fn refund(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError>;
}

/// The simulated provider's name.
pub const SIMULATED: &str = "simulated";

/// How the simulated provider behaves besides its token rules.
#[derive(Debug, Clone, Default)]
pub struct SimulatedBehaviour {
    /// Added to every call.
    pub latency: Duration,
    /// The share of calls, 0 to 1, that fail with `Unavailable` before doing
    /// anything.
    pub error_rate: f64,
    /// Where to send webhooks; none are sent without one.
    pub webhook: Option<WebhookTarget>,
}

impl SimulatedBehaviour {
    /// The behaviour the configuration asks for (`payments.simulated.*`); webhooks
    /// are signed with `payments.webhook_secret`.
    pub fn from_config(config: &PaymentsConfig) -> Self {
        Self {
            latency: Duration::from_millis(config.simulated.latency_ms),
            error_rate: config.simulated.error_rate,
            webhook: config
                .simulated
                .webhook_url
                .as_ref()
                .map(|url| WebhookTarget {
                    url: url.clone(),
                    secret: config.effective_webhook_secret(),
                }),
        }
    }
}

/// Where the simulated provider sends its webhooks, and the secret it signs them
/// with.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// The endpoint, e.g. `http://127.0.0.1:8080/api/v1/webhooks/payments/simulated`.
    pub url: String,
    /// The shared signing secret (masked when printed).
    pub secret: Secret,
}

/// Deliveries of one webhook event before the provider gives up on it.
const WEBHOOK_DELIVERIES: u32 = 4;
/// The pause before the first redelivery; it doubles after each failure.
const WEBHOOK_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long one delivery may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a webhook event reports: its type and the payment's totals after it.
#[derive(Debug, Clone)]
struct Notice {
    kind: &'static str,
    provider_ref: String,
    amount: Money,
    captured: i64,
    refunded: i64,
}

impl Held {
    fn notice(&self, kind: &'static str, provider_ref: &str) -> Notice {
        Notice {
            kind,
            provider_ref: provider_ref.to_string(),
            amount: self.authorized,
            captured: self.captured,
            refunded: self.refunded,
        }
    }
}

/// The built-in simulated provider. Its books (the payments it holds and the
/// answer to each key) are in the payments database ([`crate::simulator`]),
/// so every payments process shares them and a restart forgets nothing.
pub struct SimulatedProvider {
    behaviour: SimulatedBehaviour,
    books: Books,
    /// Sends webhooks; built only when there is a target.
    client: Option<reqwest::Client>,
}

impl std::fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProvider")
            .field("behaviour", &self.behaviour)
            .finish_non_exhaustive()
    }
}

impl SimulatedProvider {
    /// A simulated provider behaving as `behaviour` says, keeping its books in
    /// `db` (the payments database, migrated).
    pub fn new(behaviour: SimulatedBehaviour, db: Database) -> Self {
        let client = behaviour.webhook.as_ref().and_then(|_| {
            reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .build()
                .map_err(
                    |e| tracing::warn!(error = %e, "no HTTP client: simulated webhooks are off"),
                )
                .ok()
        });
        Self {
            behaviour,
            books: Books::new(db),
            client,
        }
    }

    /// Makes `change` to `provider_ref` once per `key`, announcing it when
    /// this call made it.
    async fn once(
        &self,
        key: &str,
        provider_ref: &str,
        change: Change,
        kind: &'static str,
    ) -> Result<(), ProviderError> {
        if let Some(held) = self.books.change(key, provider_ref, change).await? {
            self.announce(held.notice(kind, provider_ref));
        }
        Ok(())
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

    /// Sends `notice` to the webhook target, if any, in the background: signed
    /// afresh for each delivery, redelivered after a failure with a doubling
    /// pause, abandoned after [`WEBHOOK_DELIVERIES`].
    fn announce(&self, notice: Notice) {
        let (Some(target), Some(client)) = (self.behaviour.webhook.clone(), self.client.clone())
        else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let event = serde_json::json!({
            "id": format!("evt_sim_{}", uuid::Uuid::now_v7().simple()),
            "type": notice.kind,
            "created": unix_secs(),
            "data": {
                "provider_ref": notice.provider_ref,
                "amount_minor": notice.amount.amount_minor(),
                "currency": notice.amount.currency().code(),
                "captured_minor": notice.captured,
                "refunded_minor": notice.refunded,
            }
        });
        let body = event.to_string();
        runtime.spawn(async move {
            let mut pause = WEBHOOK_RETRY_PAUSE;
            for delivery in 1..=WEBHOOK_DELIVERIES {
                let signature = crate::webhook::sign(
                    target.secret.expose().as_bytes(),
                    unix_secs(),
                    body.as_bytes(),
                );
                let sent = client
                    .post(&target.url)
                    .header("content-type", "application/json")
                    .header(crate::webhook::SIGNATURE_HEADER, signature)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => return,
                    Ok(response) => tracing::warn!(
                        url = %target.url, status = response.status().as_u16(), delivery,
                        "a simulated webhook was refused"
                    ),
                    Err(e) => tracing::warn!(
                        url = %target.url, error = %e, delivery,
                        "a simulated webhook could not be delivered"
                    ),
                }
                if delivery < WEBHOOK_DELIVERIES {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        });
    }
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
    fn name(&self) -> &str {
        SIMULATED
    }

    async fn authorize(
        &self,
        key: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<Authorization, ProviderError> {
        match self.books.answer(key).await? {
            Some(Answer::Authorized(first)) => return Ok(first),
            Some(Answer::Failed(e)) => return Err(e),
            Some(Answer::Done) => {
                return Err(ProviderError::Refused(
                    "the key was used for another call".into(),
                ));
            }
            None => {}
        }
        self.weather().await?;
        let answer = match decide(payment_token) {
            Err(ProviderError::Timeout) => {
                // A timeout the caller sees; the provider never answered.
                return Err(ProviderError::Timeout);
            }
            Err(e) => Err(e),
            Ok(Err(reason)) => Ok(Authorization::Declined { reason }),
            Ok(Ok((brand, last4))) => Ok(Authorization::Approved {
                provider_ref: provider_ref(key),
                brand,
                last4,
            }),
        };
        // A concurrent repeat may have answered first: then its answer stands.
        let (answer, first) = self.books.authorize(key, answer, amount).await?;
        if first {
            let held = Held {
                authorized: amount,
                captured: 0,
                refunded: 0,
                voided: false,
            };
            match &answer {
                Ok(Authorization::Approved { provider_ref, .. }) => {
                    self.announce(held.notice("payment.authorized", provider_ref));
                }
                Ok(Authorization::Declined { .. }) => {
                    self.announce(held.notice("payment.declined", &provider_ref(key)));
                }
                Err(_) => {}
            }
        }
        answer
    }

    async fn capture(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError> {
        self.weather().await?;
        self.once(
            key,
            provider_ref,
            Change::Capture(amount),
            "payment.captured",
        )
        .await
    }

    async fn void(&self, key: &str, provider_ref: &str) -> Result<(), ProviderError> {
        self.weather().await?;
        self.once(key, provider_ref, Change::Void, "payment.voided")
            .await
    }

    async fn cancel_authorization(&self, key: &str) -> Result<(), ProviderError> {
        self.weather().await?;
        if let Some((provider_ref, held)) = self.books.cancel_authorization(key).await? {
            self.announce(held.notice("payment.voided", &provider_ref));
        }
        Ok(())
    }

    async fn refund(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError> {
        self.weather().await?;
        self.once(
            key,
            provider_ref,
            Change::Refund(amount),
            "payment.refunded",
        )
        .await
    }
}

/// The provider's id of the payment authorized with `key`: short and stable.
fn provider_ref(key: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sim_{}",
        hex::encode(&sha2::Sha256::digest(key.as_bytes())[..12])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_kernel::Currency;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::parse("USD").expect("USD")).expect("in range")
    }

    /// A migrated payments database for the provider's books, kept alive
    /// with the provider.
    async fn books() -> agora_platform::testing::TestDatabase {
        let db = agora_platform::testing::TestDatabase::new()
            .await
            .expect("a database");
        db.db
            .migrate(&crate::MIGRATIONS)
            .await
            .expect("payments migrations");
        db
    }

    async fn provider() -> (SimulatedProvider, agora_platform::testing::TestDatabase) {
        let db = books().await;
        (
            SimulatedProvider::new(SimulatedBehaviour::default(), db.db.clone()),
            db,
        )
    }

    #[tokio::test]
    async fn test_tokens_approve_decline_fail_or_time_out() {
        let (p, _db) = provider().await;
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
        let (p, _db) = provider().await;
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
        let db = books().await;
        let p = SimulatedProvider::new(
            SimulatedBehaviour {
                error_rate: 1.0,
                ..SimulatedBehaviour::default()
            },
            db.db.clone(),
        );
        assert!(matches!(
            p.authorize("k", "tok_visa", usd(1)).await,
            Err(ProviderError::Unavailable(_))
        ));
        assert_eq!(p.books.answer("k").await, Ok(None), "nothing was recorded");
    }

    #[tokio::test]
    async fn the_books_are_shared_by_every_process_and_survive_a_restart() {
        let db = books().await;
        let first = SimulatedProvider::new(SimulatedBehaviour::default(), db.db.clone());
        let Ok(Authorization::Approved { provider_ref, .. }) =
            first.authorize("auth", "tok_visa", usd(700)).await
        else {
            panic!("approved")
        };
        drop(first);
        // Another process (or this one restarted) knows the payment.
        let second = SimulatedProvider::new(SimulatedBehaviour::default(), db.db.clone());
        let third = SimulatedProvider::new(SimulatedBehaviour::default(), db.db.clone());
        assert_eq!(
            second.authorize("auth", "tok_declined", usd(1)).await,
            Ok(Authorization::Approved {
                provider_ref: provider_ref.clone(),
                brand: "visa".into(),
                last4: "4242".into(),
            })
        );
        // The same capture from two processes at once takes effect once; a
        // capture under another key finds nothing left to take.
        let (a, b) = tokio::join!(
            second.capture("cap", &provider_ref, usd(700)),
            third.capture("cap", &provider_ref, usd(700)),
        );
        assert_eq!((a, b), (Ok(()), Ok(())));
        let held = second
            .books
            .held(&provider_ref)
            .await
            .expect("books")
            .expect("held");
        assert_eq!(held.captured, 700);
        assert!(matches!(
            third.capture("cap-2", &provider_ref, usd(1)).await,
            Err(ProviderError::Refused(_))
        ));
        // A refusal is an answer too: the key repeats it.
        assert!(matches!(
            second.void("void", &provider_ref).await,
            Err(ProviderError::Refused(_))
        ));
        assert!(matches!(
            third.void("void", &provider_ref).await,
            Err(ProviderError::Refused(_))
        ));
        // An authorization cancelled before it answered cannot approve later.
        assert_eq!(third.cancel_authorization("never").await, Ok(()));
        assert_eq!(
            second.authorize("never", "tok_visa", usd(5)).await,
            Ok(Authorization::Declined {
                reason: "canceled".into()
            })
        );
    }

    #[test]
    fn luhn_accepts_test_cards_and_refuses_typos() {
        assert!(luhn("4242424242424242"));
        assert!(luhn("4000000000000002"));
        assert!(!luhn("4242424242424241"));
    }
}
