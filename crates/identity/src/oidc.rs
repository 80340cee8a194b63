//! Login through OpenID Connect providers: the authorization code flow with PKCE
//! (RFC 7636, S256), state and nonce, and ID tokens checked against the
//! provider's published keys.
//!
//! A provider is configured by issuer URL, client id and secret
//! (`auth.oidc.<name>`); its endpoints and keys come from its discovery document
//! (`<issuer>/.well-known/openid-configuration`), read at the first login and
//! kept, with the keys read again when a token names a key not seen before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_kernel::{Timestamp, UserId};
use agora_platform::auth::{random_secret, secret_hash};
use agora_platform::config::OidcProvider;
use anyhow::anyhow;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::RwLock;

use crate::error::IdentityError;
use crate::store::{IdentityStore, corrupt};

/// How long a started login waits for its callback.
pub const LOGIN_TTL_SECS: i64 = 600;

/// How long a provider's discovery document is kept before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// How often, at most, a provider's keys are read again for an unknown key id.
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(60);

/// ID-token algorithms accepted: asymmetric only, so a provider's client secret
/// can never be used to forge one (no HS256).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The parts of a discovery document used here.
#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// What is known of a provider, read from it.
struct Known {
    metadata: Metadata,
    read_at: Instant,
    keys: JwkSet,
    keys_read_at: Instant,
}

/// One configured provider.
struct Provider {
    config: OidcProvider,
    known: RwLock<Option<Known>>,
}

/// The configured providers and an HTTP client to reach them.
#[derive(Clone)]
pub struct OidcProviders {
    providers: Arc<BTreeMap<String, Provider>>,
    http: reqwest::Client,
}

/// A login just started: where to send the browser, and what to remember.
#[derive(Debug)]
pub struct StartedLogin {
    /// The provider's authorization URL with every parameter.
    pub authorization_url: String,
    /// The `state` parameter.
    pub state: String,
    /// The PKCE code verifier.
    pub code_verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
}

/// The claims of an ID token that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct IdClaims {
    /// The provider's id of the user.
    pub sub: String,
    /// The nonce sent with the authorization request.
    #[serde(default)]
    pub nonce: Option<String>,
    /// The user's email.
    #[serde(default)]
    pub email: Option<String>,
    /// Whether the provider verified the email (some send it as a string).
    #[serde(default)]
    pub email_verified: Option<serde_json::Value>,
    /// The user's name.
    #[serde(default)]
    pub name: Option<String>,
}

impl IdClaims {
    /// The email, if the provider says it verified it.
    pub fn verified_email(&self) -> Option<&str> {
        let verified = match &self.email_verified {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s == "true",
            _ => false,
        };
        self.email.as_deref().filter(|_| verified)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

impl OidcProviders {
    /// The providers of `auth.oidc`.
    pub fn new(config: &BTreeMap<String, OidcProvider>) -> Result<Self, IdentityError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow!("HTTP client: {e}"))?;
        let providers = config
            .iter()
            .map(|(name, config)| {
                (
                    name.clone(),
                    Provider {
                        config: config.clone(),
                        known: RwLock::new(None),
                    },
                )
            })
            .collect();
        Ok(Self {
            providers: Arc::new(providers),
            http,
        })
    }

    /// `Ok` when a provider has this name.
    pub fn ensure_known(&self, name: &str) -> Result<(), IdentityError> {
        self.provider(name).map(drop)
    }

    fn provider(&self, name: &str) -> Result<&Provider, IdentityError> {
        self.providers
            .get(name)
            .ok_or(IdentityError::OidcProviderUnknown)
    }

    /// Starts a login with provider `name`: fresh state, nonce and PKCE
    /// verifier, and the URL to send the browser to.
    pub async fn start(&self, name: &str) -> Result<StartedLogin, IdentityError> {
        let provider = self.provider(name)?;
        let metadata = self.metadata(provider).await?;
        let state = random_secret("")?;
        let nonce = random_secret("")?;
        let code_verifier = random_secret("")?;
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(code_verifier.as_bytes()));
        let scope = provider.config.scopes.join(" ");
        let url = reqwest::Url::parse_with_params(
            &metadata.authorization_endpoint,
            [
                ("response_type", "code"),
                ("client_id", provider.config.client_id.as_str()),
                ("redirect_uri", provider.config.redirect_uri.as_str()),
                ("scope", scope.as_str()),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|_| provider_failed("its authorization_endpoint is not a URL"))?;
        Ok(StartedLogin {
            authorization_url: url.into(),
            state,
            code_verifier,
            nonce,
        })
    }

    /// Exchanges an authorization `code` for tokens and checks the ID token:
    /// signature by one of the provider's keys, issuer, audience, expiry. The
    /// nonce is left to the caller, who knows which one was sent.
    pub async fn redeem(
        &self,
        name: &str,
        code: &str,
        code_verifier: &str,
    ) -> Result<IdClaims, IdentityError> {
        let provider = self.provider(name)?;
        let metadata = self.metadata(provider).await?;
        let config = &provider.config;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", config.redirect_uri.as_str()),
            ("code_verifier", code_verifier),
        ];
        let mut request = self.http.post(&metadata.token_endpoint);
        // client_secret_basic unless the provider only takes client_secret_post.
        let post_only = metadata
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|m| {
                m.iter().any(|m| m == "client_secret_post")
                    && !m.iter().any(|m| m == "client_secret_basic")
            });
        request = if post_only {
            request.form(
                &form
                    .iter()
                    .copied()
                    .chain([
                        ("client_id", config.client_id.as_str()),
                        ("client_secret", config.client_secret.expose()),
                    ])
                    .collect::<Vec<_>>(),
            )
        } else {
            request
                .basic_auth(
                    form_encode(&config.client_id),
                    Some(form_encode(config.client_secret.expose())),
                )
                .form(&form)
        };
        let response = request
            .send()
            .await
            .map_err(|e| provider_failed(format!("token endpoint unreachable: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            // RFC 6749, section 5.2: a 400 names what was wrong with the grant
            // (a code expired or used twice: `invalid_grant`). Our own client
            // being refused is a configuration fault, not the user's.
            #[derive(Deserialize)]
            struct ErrorResponse {
                error: String,
            }
            let error = response.json::<ErrorResponse>().await.ok().map(|e| e.error);
            return Err(match error {
                Some(error)
                    if status == reqwest::StatusCode::BAD_REQUEST && error != "invalid_client" =>
                {
                    IdentityError::OidcDenied(error)
                }
                _ => provider_failed(format!("token endpoint answered {status}")),
            });
        }
        let tokens: TokenResponse = response
            .json()
            .await
            .map_err(|e| provider_failed(format!("token response: {e}")))?;
        let id_token = tokens
            .id_token
            .ok_or_else(|| provider_failed("the token response has no id_token"))?;
        self.verify_id_token(provider, &metadata, &id_token).await
    }

    async fn verify_id_token(
        &self,
        provider: &Provider,
        metadata: &Metadata,
        id_token: &str,
    ) -> Result<IdClaims, IdentityError> {
        let header =
            jsonwebtoken::decode_header(id_token).map_err(|_| IdentityError::OidcIdTokenInvalid)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(IdentityError::OidcIdTokenInvalid);
        }
        let key = self
            .key(provider, header.kid.as_deref(), header.alg)
            .await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 60;
        validation.set_issuer(&[&metadata.issuer]);
        validation.set_audience(&[&provider.config.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|_| IdentityError::OidcIdTokenInvalid)
    }

    /// The provider's key `kid` (or its only key for `alg` when the token names
    /// none), reading the keys again if it is not known yet.
    async fn key(
        &self,
        provider: &Provider,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, IdentityError> {
        for attempt in 0..2 {
            {
                let known = provider.known.read().await;
                if let Some(known) = known.as_ref() {
                    let jwk = match kid {
                        Some(kid) => known.keys.find(kid),
                        None => known.keys.keys.iter().find(|k| {
                            k.common
                                .key_algorithm
                                .is_none_or(|a| a.to_string() == format!("{alg:?}"))
                        }),
                    };
                    if let Some(jwk) = jwk {
                        return DecodingKey::from_jwk(jwk)
                            .map_err(|_| IdentityError::OidcIdTokenInvalid);
                    }
                    if attempt == 1 || known.keys_read_at.elapsed() < JWKS_REFRESH_MIN {
                        return Err(IdentityError::OidcIdTokenInvalid);
                    }
                }
            }
            let mut known = provider.known.write().await;
            if let Some(known) = known.as_mut() {
                known.keys = self.read_keys(&known.metadata.jwks_uri).await?;
                known.keys_read_at = Instant::now();
            }
        }
        Err(IdentityError::OidcIdTokenInvalid)
    }

    async fn metadata(&self, provider: &Provider) -> Result<Metadata, IdentityError> {
        if let Some(known) = provider.known.read().await.as_ref()
            && known.read_at.elapsed() < METADATA_TTL
        {
            return Ok(known.metadata.clone());
        }
        let mut known = provider.known.write().await;
        let url = format!(
            "{}/.well-known/openid-configuration",
            provider.config.issuer.trim_end_matches('/')
        );
        let metadata: Metadata = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| provider_failed(format!("discovery: {e}")))?
            .json()
            .await
            .map_err(|e| provider_failed(format!("discovery document: {e}")))?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name the
        // issuer it was fetched for.
        if metadata.issuer.trim_end_matches('/') != provider.config.issuer.trim_end_matches('/') {
            return Err(provider_failed(
                "the discovery document names another issuer",
            ));
        }
        let keys = self.read_keys(&metadata.jwks_uri).await?;
        *known = Some(Known {
            metadata: metadata.clone(),
            read_at: Instant::now(),
            keys,
            keys_read_at: Instant::now(),
        });
        Ok(metadata)
    }

    async fn read_keys(&self, jwks_uri: &str) -> Result<JwkSet, IdentityError> {
        self.http
            .get(jwks_uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| provider_failed(format!("keys: {e}")))?
            .json()
            .await
            .map_err(|e| provider_failed(format!("key set: {e}")))
    }
}

/// RFC 6749, section 2.3.1: the client id and secret are form-encoded before
/// they go into the Basic header.
fn form_encode(s: &str) -> String {
    reqwest::Url::parse_with_params("x:", [("v", s)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_string()))
        .unwrap_or_default()
}

fn provider_failed(why: impl Into<String>) -> IdentityError {
    IdentityError::OidcProviderFailed(why.into())
}

/// A login in flight, as stored.
#[derive(Debug)]
pub struct PendingLogin {
    /// Its row id.
    pub id: String,
    /// The provider it was started with.
    pub provider: String,
    /// SHA-256 of the browser binding cookie.
    pub browser_hash: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub code_verifier: String,
    /// When it lapses.
    pub expires_at: Timestamp,
    /// Whether a callback already used it.
    pub used: bool,
}

impl IdentityStore {
    /// Stores a login in flight, and drops lapsed ones.
    pub async fn insert_oidc_login(
        &self,
        provider: &str,
        started: &StartedLogin,
        browser: &str,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        sqlx::query("DELETE FROM identity_oidc_logins WHERE expires_at < $1")
            .bind(now.as_millis())
            .execute(self.db.writer())
            .await?;
        sqlx::query(
            "INSERT INTO identity_oidc_logins \
             (id, provider, state_hash, browser_hash, nonce, code_verifier, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(uuid::Uuid::now_v7().hyphenated().to_string())
        .bind(provider.to_string())
        .bind(secret_hash(&started.state))
        .bind(secret_hash(browser))
        .bind(started.nonce.clone())
        .bind(started.code_verifier.clone())
        .bind(now.as_millis())
        .bind(now.as_millis() + LOGIN_TTL_SECS * 1000)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// The login in flight whose state is `state`.
    pub async fn oidc_login(&self, state: &str) -> Result<Option<PendingLogin>, IdentityError> {
        let row = sqlx::query(
            "SELECT id, provider, browser_hash, nonce, code_verifier, expires_at, used_at \
             FROM identity_oidc_logins WHERE state_hash = $1",
        )
        .bind(secret_hash(state))
        .fetch_optional(self.db.writer())
        .await?;
        row.map(|r| {
            Ok(PendingLogin {
                id: r.try_get(0)?,
                provider: r.try_get(1)?,
                browser_hash: r.try_get(2)?,
                nonce: r.try_get(3)?,
                code_verifier: r.try_get(4)?,
                expires_at: Timestamp::from_millis(r.try_get(5)?),
                used: r.try_get::<Option<i64>, _>(6)?.is_some(),
            })
        })
        .transpose()
    }

    /// Marks a login in flight used; `false` when a callback used it first.
    pub async fn use_oidc_login(&self, id: &str, now: Timestamp) -> Result<bool, IdentityError> {
        let done = sqlx::query(
            "UPDATE identity_oidc_logins SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(id.to_string())
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives an account to the owner of its email as a provider proved it: the
    /// password, the second factor and every session are removed, in one
    /// transaction.
    pub async fn take_over_for_provider(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE identity_users SET password_hash = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now.as_millis())
        .bind(user.to_db())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE identity_sessions SET revoked_at = $1, revoked_reason = 'provider_claimed' \
             WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(user.to_db())
        .execute(&mut *tx)
        .await?;
        for sql in [
            "DELETE FROM identity_recovery_codes WHERE user_id = $1",
            "DELETE FROM identity_mfa_challenges WHERE user_id = $1",
            "DELETE FROM identity_mfa WHERE user_id = $1",
        ] {
            sqlx::query(sql)
                .bind(user.to_db())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user linked to the provider's `subject`.
    pub async fn oidc_link(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<UserId>, IdentityError> {
        let row = sqlx::query(
            "SELECT user_id FROM identity_oidc_links WHERE provider = $1 AND subject = $2",
        )
        .bind(provider.to_string())
        .bind(subject.to_string())
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|r| {
            UserId::from_db(&r.try_get::<String, _>(0)?)
                .map_err(|_| corrupt("identity_oidc_links.user_id"))
        })
        .transpose()
    }

    /// Links the provider's `subject` to `user`. A link made meanwhile by a
    /// concurrent login of the same subject is kept.
    pub async fn link_oidc(
        &self,
        provider: &str,
        subject: &str,
        user: UserId,
        email: &str,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        sqlx::query(
            "INSERT INTO identity_oidc_links (provider, subject, user_id, email, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, subject) DO NOTHING",
        )
        .bind(provider.to_string())
        .bind(subject.to_string())
        .bind(user.to_db())
        .bind(email.to_string())
        .bind(now.as_millis())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }
}
