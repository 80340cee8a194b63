//! Access tokens checked at the edge, against the identity service's published
//! keys (its JSON Web Key Set).
//!
//! The check is the services' own ([`Authenticator::verify`]: EdDSA only, a
//! known key id, issuer, audience, expiry), so a token the gateway lets
//! through is one the services accept, and a bad one is refused before it
//! costs an upstream anything. The keys are read at start, every
//! `refresh_secs`, and again when a token names a key id not seen yet (at
//! most once per [`UNKNOWN_KID_REFRESH`]), which is how a rotated key is
//! picked up before the next scheduled read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_kernel::{ApiError, ErrorCode, Principal};
use agora_platform::Shutdown;
use agora_platform::auth::{Authenticator, Caller};
use agora_platform::config::AuthConfig;
use anyhow::{Context as _, anyhow};
use arc_swap::ArcSwap;
use axum::body::Body;
use http::HeaderMap;
use http_body_util::{BodyExt as _, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;

use crate::config::EdgeAuthConfig;

/// The least time between two reads of the keys caused by unknown key ids, so
/// that tokens with made-up key ids cannot turn the gateway against the
/// identity service.
pub(crate) const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(10);

/// How long reading the keys may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest key set read.
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// The keys and the checker of one gateway configuration.
pub(crate) struct EdgeAuth {
    config: EdgeAuthConfig,
    uri: http::Uri,
    client: Client<HttpConnector, Body>,
    authenticator: Authenticator,
    /// The keys in force, by key id; empty until the first read succeeds.
    keys: ArcSwap<HashMap<String, DecodingKey>>,
    /// When a token with an unknown key id last made the keys be read.
    last_forced_read: tokio::sync::Mutex<Option<Instant>>,
}

impl EdgeAuth {
    pub(crate) fn new(config: EdgeAuthConfig, client: Client<HttpConnector, Body>) -> EdgeAuth {
        let authenticator = Authenticator::new(&AuthConfig {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ..AuthConfig::default()
        });
        EdgeAuth {
            // Validated with the configuration.
            uri: config.jwks_url.parse().unwrap_or_default(),
            config,
            client,
            authenticator,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_forced_read: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads the keys now; returns how many there are.
    async fn read_keys(&self) -> anyhow::Result<usize> {
        let request = http::Request::get(self.uri.clone()).body(Body::empty())?;
        let answer = tokio::time::timeout(JWKS_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| anyhow!("no answer within {JWKS_TIMEOUT:?}"))??;
        if !answer.status().is_success() {
            return Err(anyhow!("answered {}", answer.status()));
        }
        let body = tokio::time::timeout(
            JWKS_TIMEOUT,
            Limited::new(answer.into_body(), JWKS_MAX_BYTES).collect(),
        )
        .await
        .map_err(|_| anyhow!("the body did not arrive within {JWKS_TIMEOUT:?}"))?
        .map_err(|e| anyhow!("reading the body: {e}"))?
        .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).context("not a JSON Web Key Set")?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                Err(e) => tracing::warn!(%kid, error = %e, "a published key is unusable"),
            }
        }
        if keys.is_empty() {
            return Err(anyhow!("the set holds no usable key"));
        }
        let count = keys.len();
        self.install(keys);
        Ok(count)
    }

    fn install(&self, keys: HashMap<String, DecodingKey>) {
        self.authenticator.set_keys(keys.clone());
        self.keys.store(Arc::new(keys));
    }

    /// Takes the keys `old` (the generation before a reload) holds, when it
    /// reads them from the same place for the same issuer and audience: a
    /// reload while the identity service is down loses nothing.
    pub(crate) fn keep_keys_of(&self, old: &EdgeAuth) {
        let same = old.config.jwks_url == self.config.jwks_url
            && old.config.issuer == self.config.issuer
            && old.config.audience == self.config.audience;
        let keys = old.keys.load_full();
        if same && !keys.is_empty() {
            self.install(HashMap::clone(&keys));
        }
    }

    /// Reads the keys, logging the outcome.
    async fn read_keys_logged(&self) {
        match self.read_keys().await {
            Ok(count) => tracing::debug!(url = %self.uri, keys = count, "read the token keys"),
            Err(e) => tracing::warn!(url = %self.uri, error = %e, "could not read the token keys"),
        }
    }

    /// Reads the keys for a token naming an unknown key id, unless such a
    /// token did so less than `min_gap` ago (waiting for a read in progress).
    async fn read_keys_unless_recent(&self, min_gap: Duration) {
        let mut last = self.last_forced_read.lock().await;
        if last.is_some_and(|at| at.elapsed() < min_gap) {
            return;
        }
        *last = Some(Instant::now());
        self.read_keys_logged().await;
    }

    /// Reads the keys at once, then every `refresh_secs` (every 2 seconds
    /// while there are none), until `stop`.
    pub(crate) async fn keep_keys(&self, stop: Shutdown) {
        let every = Duration::from_secs(self.config.refresh_secs);
        loop {
            self.read_keys_logged().await;
            let wait = if self.keys.load().is_empty() {
                every.min(Duration::from_secs(2))
            } else {
                every
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.wait() => return,
            }
        }
    }

    /// Who sent the request: anonymous, a user whose token is good, or an API
    /// key (not checked here). A bad token is an error with the services'
    /// code; with no keys read yet, `GATEWAY_AUTH_UNAVAILABLE`.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<EdgeCaller, ApiError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(EdgeCaller::Anonymous);
        };
        let bytes = value.as_bytes();
        if bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"apikey ") {
            return Ok(EdgeCaller::ApiKey);
        }
        match self.check(bytes).await {
            Err(e) if e.code() == ErrorCode::AuthInvalidToken && self.names_unknown_key(bytes) => {
                if self.keys.load().is_empty() {
                    self.read_keys_unless_recent(Duration::from_secs(1)).await;
                } else {
                    self.read_keys_unless_recent(UNKNOWN_KID_REFRESH).await;
                }
                if self.keys.load().is_empty() {
                    return Err(ApiError::from_code(ErrorCode::GatewayAuthUnavailable));
                }
                self.check(bytes).await
            }
            outcome => outcome,
        }
    }

    async fn check(&self, authorization: &[u8]) -> Result<EdgeCaller, ApiError> {
        match self.authenticator.authenticate(Some(authorization)).await? {
            Caller::Anonymous => Ok(EdgeCaller::Anonymous),
            Caller::Authenticated(principal) => Ok(EdgeCaller::User(principal)),
        }
    }

    /// Whether the bearer token in `authorization` names a key id not in force.
    fn names_unknown_key(&self, authorization: &[u8]) -> bool {
        let token = authorization
            .get(7..)
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or_default();
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|header| header.kid)
            .is_some_and(|kid| !self.keys.load().contains_key(&kid))
    }
}

/// Who a request comes from, as far as the edge can tell.
#[derive(Debug)]
pub(crate) enum EdgeCaller {
    /// No credentials.
    Anonymous,
    /// An API key: only the identity service can check it.
    ApiKey,
    /// A user with a good access token.
    User(Principal),
}
