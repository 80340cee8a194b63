//! The payments module: payment intents against a provider, and the provider's
//! signed webhooks.
//!
//! Built in parts (issue 4). Here so far:
//! - [`provider`]: the `PaymentProvider` trait and the built-in simulated
//!   provider (test tokens, card-number rules, latency, error rate, timeouts).
//! - [`webhook`]: the signature scheme of provider webhooks — HMAC-SHA256 over the
//!   timestamped body, checked within a tolerance window.

pub mod provider;
pub mod webhook;
