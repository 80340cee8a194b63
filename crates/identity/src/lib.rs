//! The identity module: accounts, credentials, sessions and access tokens.
//!
//! Owns the tables `identity_users`, `identity_sessions`,
//! `identity_refresh_tokens` and `identity_api_keys`, and the token signing keys. Customers register and
//! log in here; every other module learns who is calling from the access token
//! alone, checked by `agora_platform::auth` against the public keys this module
//! publishes at `/.well-known/jwks.json`. Publishes no events yet (UserRegistered
//! arrives with the message bus). See `docs/security.md` for the token model.
//!
//! # Layout
//! - [`api_keys`]: API keys of service accounts, and their resolution at the edge.
//! - [`domain`]: `User`, and the rules for emails, names and passwords.
//! - [`mfa`]: the TOTP second factor, recovery codes and login challenges.
//! - [`oidc`]: login through OpenID Connect providers (code flow with PKCE).
//! - [`password`]: argon2id hashing off the async threads.
//! - [`keys`]: Ed25519 signing keys, their rotation and the JWKS.
//! - [`store`]: SQL for accounts, sessions and refresh tokens.
//! - [`throttle`]: limits on failed logins (rate limits and lockout).
//! - [`service`]: the operations: register, login, refresh, logout, profile.
//! - [`http`]: the REST routes and their OpenAPI description.
//! - [`error`]: `IdentityError` and its public codes.

pub mod api_keys;
pub mod domain;
pub mod error;
pub mod http;
pub mod keys;
pub mod mfa;
pub mod oidc;
pub mod password;
pub mod service;
pub mod store;
pub mod throttle;

use agora_platform::db::ModuleMigrations;
use sqlx::migrate::Migrator;

pub use error::IdentityError;
pub use service::Identity;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The identity module's migrations.
pub static MIGRATIONS: ModuleMigrations = ModuleMigrations {
    module: "identity",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
