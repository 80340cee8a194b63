//! The payments module: payment intents against a provider, and the provider's
//! signed webhooks.
//!
//! Built in parts (issue 4). Here so far:
//! - [`webhook`]: the signature scheme of provider webhooks — HMAC-SHA256 over the
//!   timestamped body, checked within a tolerance window.

pub mod webhook;
