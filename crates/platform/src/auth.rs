//! Who is calling, and whether they may.
//!
//! People prove who they are with an access token: an EdDSA (Ed25519) JWT issued
//! by the identity module. Any process can check one with the public keys alone
//! (published at `/.well-known/jwks.json`), so verification lives here, beside the
//! edge middleware, and not in the identity module. Service accounts send an API
//! key instead (`Authorization: ApiKey agk_…`), which only its issuer can check: the
//! identity module installs an [`ApiKeyResolver`], and keys that resolved are
//! remembered for [`API_KEY_TTL`].
//!
//! The [`Authenticator`] holds the keys, the resolver and a deny list of disabled
//! accounts; the edge middleware puts it into every request's extensions, and four
//! extractors read it:
//!
//! - [`Caller`]: anyone, anonymous or not (public reads that show more to staff);
//! - [`Authenticated`]: any caller with credentials (`AUTH_REQUIRED` otherwise);
//! - [`SignedInUser`]: a person, not an API key (`AUTH_USER_REQUIRED` otherwise),
//!   for routes that act on the caller's own account, cart or orders;
//! - [`Authorized<P>`]: a caller holding the permission `P`
//!   (`AUTH_FORBIDDEN` otherwise). As the first extractor of a handler it refuses
//!   the caller before the path or body is parsed, so they learn nothing about the
//!   input rules.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, PoisonError, RwLock};

use agora_kernel::access::Requirement;
use agora_kernel::{
    ApiError, ApiKeyId, ErrorCode, Permissions, Principal, Role, SessionId, Subject, UserId,
};
use axum::extract::FromRequestParts;
use http::header::AUTHORIZATION;
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// How many verified tokens are remembered. A token is a few hundred bytes, so
/// this bounds the cache to a few MiB.
const VERIFIED_CAPACITY: u64 = 10_000;

/// How long a verified token is remembered at most (its own expiry still applies).
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a resolved API key is remembered. A key revoked on this node stops
/// working at once; one revoked on another node, within this time.
pub const API_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "agk_";

/// What an API key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyGrant {
    /// The key.
    pub id: ApiKeyId,
    /// What the key may do.
    pub permissions: Permissions,
    /// When the key stops working, if ever.
    pub expires_at: Option<agora_kernel::Timestamp>,
}

/// Looks up API keys by the hash of their secret ([`secret_hash`]); implemented
/// by the module that issues them.
#[async_trait::async_trait]
pub trait ApiKeyResolver: Send + Sync + 'static {
    /// The grant of the live (not revoked, not expired) key whose hash is `hash`.
    async fn resolve(&self, hash: &str) -> Result<Option<ApiKeyGrant>, ApiError>;
}

/// A fresh secret: `prefix` followed by 256 random bits in base64url (refresh
/// tokens, API keys, challenge and cart tokens, OIDC state, nonce and verifier).
pub fn random_secret(prefix: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What is stored of a high-entropy secret (refresh token, API key): its SHA-256,
/// hex. The secrets carry 256 random bits, so a fast hash is enough: no salt or
/// stretching is needed to stop guessing.
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer (`auth.issuer`).
    pub iss: String,
    /// Audience (`auth.audience`).
    pub aud: String,
    /// The user, as a wire id (`usr_…`).
    pub sub: String,
    /// The login session, as a wire id (`ses_…`).
    pub sid: String,
    /// The user's roles when the token was issued.
    pub roles: Vec<Role>,
    /// A unique token id.
    pub jti: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

/// Checks credentials. Cheap to clone; clones share keys and the deny list.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    validation: Validation,
    /// Public keys by key id. Replaced whole on rotation.
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// Disabled accounts: their access tokens are refused until they expire.
    denied: RwLock<HashSet<UserId>>,
    /// Who checks API keys; none until the identity module starts.
    api_keys: RwLock<Option<Arc<dyn ApiKeyResolver>>>,
    /// API keys that resolved recently, by the hash of their secret.
    resolved_keys: moka::sync::Cache<String, ApiKeyGrant>,
    /// Keys revoked through this process: refused even if a lookup that raced
    /// with the revocation remembered them again.
    revoked_keys: RwLock<HashSet<ApiKeyId>>,
    /// Tokens whose signature and claims were checked recently, by their exact
    /// text: a client sends the same token for many requests, and the signature
    /// check is most of the cost of authentication. Emptied when the keys change.
    verified: moka::sync::Cache<Box<str>, Arc<Verified>>,
}

/// A token that passed verification.
struct Verified {
    principal: Principal,
    /// The token's `exp`, seconds since the epoch.
    exp: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys();
        f.debug_struct("Authenticator")
            .field("key_ids", &keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for tokens of the configured issuer and audience. It knows
    /// no key yet: until [`Self::set_keys`] runs, every token is refused.
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self {
            inner: Arc::new(Inner {
                validation,
                keys: RwLock::new(Arc::new(HashMap::new())),
                denied: RwLock::new(HashSet::new()),
                api_keys: RwLock::new(None),
                resolved_keys: moka::sync::Cache::builder()
                    .max_capacity(VERIFIED_CAPACITY)
                    .time_to_live(API_KEY_TTL)
                    .support_invalidation_closures()
                    .build(),
                revoked_keys: RwLock::new(HashSet::new()),
                verified: moka::sync::Cache::builder()
                    .max_capacity(VERIFIED_CAPACITY)
                    .time_to_live(VERIFIED_TTL)
                    .build(),
            }),
        }
    }

    /// Replaces the public keys tokens may be signed with, by key id.
    pub fn set_keys(&self, keys: HashMap<String, DecodingKey>) {
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        // A key that is gone must not keep vouching for its tokens.
        self.inner.verified.invalidate_all();
    }

    fn keys(&self) -> Arc<HashMap<String, DecodingKey>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Refuses the access tokens of `user` from now on (a disabled account).
    pub fn deny(&self, user: UserId) {
        self.inner
            .denied
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user);
    }

    /// Accepts the access tokens of `user` again (a re-enabled account).
    pub fn allow(&self, user: UserId) {
        self.inner
            .denied
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&user);
    }

    /// Checks API keys with `resolver` from now on.
    pub fn set_api_key_resolver(&self, resolver: Arc<dyn ApiKeyResolver>) {
        *self
            .inner
            .api_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(resolver);
    }

    /// Forgets a revoked API key at once (other nodes forget it within
    /// [`API_KEY_TTL`]).
    pub fn forget_api_key(&self, id: ApiKeyId) {
        self.inner
            .revoked_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        // Only fails when closures are not supported, which the builder enables.
        let _ = self
            .inner
            .resolved_keys
            .invalidate_entries_if(move |_, grant| grant.id == id);
    }

    fn is_denied(&self, user: UserId) -> bool {
        self.inner
            .denied
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&user)
    }

    /// Who sent `authorization` (the header's value, if any).
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
        let Some(value) = authorization else {
            return Ok(Caller::Anonymous);
        };
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        if let Some(token) = strip_scheme(value, b"bearer ") {
            let token = std::str::from_utf8(token).map_err(|_| invalid())?;
            return self.verify(token).map(Caller::Authenticated);
        }
        if let Some(key) = strip_scheme(value, b"apikey ") {
            let key = std::str::from_utf8(key).map_err(|_| invalid_api_key())?;
            return self.verify_api_key(key).await.map(Caller::Authenticated);
        }
        Err(invalid())
    }

    /// Checks an API key with the installed resolver.
    pub async fn verify_api_key(&self, key: &str) -> Result<Principal, ApiError> {
        // `agk_` and 43 base64url characters (32 bytes): anything else is refused
        // without a lookup.
        let well_formed = key.strip_prefix(API_KEY_PREFIX).is_some_and(|rest| {
            rest.len() == 43
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !well_formed {
            return Err(invalid_api_key());
        }
        let hash = secret_hash(key);
        let now = agora_kernel::Timestamp::from_millis(
            i64::try_from(now_secs())
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        );
        let grant = match self.inner.resolved_keys.get(&hash) {
            Some(grant) if grant.expires_at.is_none_or(|at| now < at) => grant,
            Some(_) => return Err(invalid_api_key()),
            None => {
                let resolver = self
                    .inner
                    .api_keys
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .ok_or_else(invalid_api_key)?;
                let grant = resolver.resolve(&hash).await?.ok_or_else(invalid_api_key)?;
                self.inner.resolved_keys.insert(hash, grant.clone());
                grant
            }
        };
        if self
            .inner
            .revoked_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&grant.id)
        {
            return Err(invalid_api_key());
        }
        Ok(Principal::api_key(grant.id, grant.permissions))
    }

    /// Checks an access token: signature by a known key, algorithm, issuer,
    /// audience, expiry, and that the account is not disabled.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let principal = match self.inner.verified.get(token) {
            Some(seen) if now_secs() < seen.exp + LEEWAY_SECS => seen.principal.clone(),
            _ => {
                let (principal, exp) = self.verify_signature_and_claims(token)?;
                let verified = Arc::new(Verified {
                    principal: principal.clone(),
                    exp,
                });
                self.inner.verified.insert(token.into(), verified);
                principal
            }
        };
        if principal.user_id().is_some_and(|user| self.is_denied(user)) {
            return Err(ApiError::from_code(ErrorCode::AuthAccountDisabled));
        }
        Ok(principal)
    }

    fn verify_signature_and_claims(&self, token: &str) -> Result<(Principal, u64), ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        // Only EdDSA: an `alg: none` or HS256 header never reaches a key.
        if header.alg != Algorithm::EdDSA {
            return Err(invalid());
        }
        let keys = self.keys();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| keys.get(kid))
            .ok_or_else(invalid)?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.inner.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::from_code(ErrorCode::AuthTokenExpired),
                _ => invalid(),
            })?
            .claims;
        let user_id = UserId::parse(&claims.sub).map_err(|_| invalid())?;
        let session_id = SessionId::parse(&claims.sid).map_err(|_| invalid())?;
        Ok((
            Principal::user(user_id, Some(session_id), claims.roles),
            claims.exp,
        ))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn invalid() -> ApiError {
    ApiError::from_code(ErrorCode::AuthInvalidToken)
}

fn invalid_api_key() -> ApiError {
    ApiError::from_code(ErrorCode::AuthApiKeyInvalid)
}

/// The credentials after `scheme` (lowercase, with its space), if `value` starts
/// with it in any case.
fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    match value.split_at_checked(scheme.len()) {
        Some((found, rest)) if found.eq_ignore_ascii_case(scheme) => Some(rest),
        _ => None,
    }
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials.
    Anonymous,
    /// Valid credentials.
    Authenticated(Principal),
}

impl Caller {
    /// Whether the caller holds `permission`.
    pub fn can(&self, permission: agora_kernel::Permission) -> bool {
        matches!(self, Caller::Authenticated(p) if p.can(permission))
    }

    /// The principal, or `AUTH_REQUIRED`.
    pub fn require_authenticated(self) -> Result<Principal, ApiError> {
        match self {
            Caller::Authenticated(p) => Ok(p),
            Caller::Anonymous => Err(ApiError::from_code(ErrorCode::AuthRequired)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let authenticator = parts
            .extensions
            .get::<Authenticator>()
            .ok_or_else(|| ApiError::internal("no Authenticator in the request extensions"))?;
        authenticator
            .authenticate(parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()))
            .await
    }
}

/// A caller with valid credentials: a person or an API key.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_authenticated().map(Authenticated)
    }
}

/// A signed-in person (not an API key), for routes that act on the caller's own
/// resources.
#[derive(Debug, Clone)]
pub struct SignedInUser(pub UserId, pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for SignedInUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        match principal.subject {
            Subject::User(user) => Ok(SignedInUser(user, principal)),
            Subject::ApiKey(_) => Err(ApiError::from_code(ErrorCode::AuthUserRequired)),
        }
    }
}

/// A caller holding the permission `P` (from [`agora_kernel::access::require`]).
#[derive(Debug, Clone)]
pub struct Authorized<P>(pub Principal, pub PhantomData<P>);

impl<S: Send + Sync, P: Requirement> FromRequestParts<S> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        if !principal.can(P::PERMISSION) {
            return Err(forbidden(P::PERMISSION));
        }
        Ok(Authorized(principal, PhantomData))
    }
}

/// `AUTH_FORBIDDEN`, naming the permission that was missing.
pub fn forbidden(permission: agora_kernel::Permission) -> ApiError {
    ApiError::from_code(ErrorCode::AuthForbidden)
        .with_details(serde_json::json!({ "permission": permission.as_str() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    // A fixed Ed25519 key pair (RFC 8032, test 1): PKCS#8 DER of the secret key,
    // and the public key as the JWK `x` value.
    const SECRET_PKCS8: &[u8] = &[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20, 0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
        0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c,
        0xae, 0x7f, 0x60,
    ];
    const PUBLIC_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    /// Runs the (here never suspending) authentication to its end.
    fn authenticate(a: &Authenticator, header: Option<&[u8]>) -> Result<Caller, ApiError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(a.authenticate(header))
    }

    fn authenticator() -> Authenticator {
        let a = Authenticator::new(&AuthConfig::default());
        let key = DecodingKey::from_ed_components(PUBLIC_X).expect("valid key");
        a.set_keys(HashMap::from([("k1".to_string(), key)]));
        a
    }

    fn claims(user: UserId) -> AccessClaims {
        AccessClaims {
            iss: "agora".into(),
            aud: "agora".into(),
            sub: user.to_string(),
            sid: SessionId::new().to_string(),
            roles: vec![Role::Staff],
            jti: "j1".into(),
            iat: now_secs(),
            exp: now_secs() + 900,
        }
    }

    fn sign(claims: &AccessClaims, kid: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(SECRET_PKCS8))
            .expect("signs")
    }

    fn code(result: Result<Caller, ApiError>) -> Option<ErrorCode> {
        result.err().map(|e| e.code())
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn no_header_is_anonymous() {
        assert_eq!(
            authenticate(&authenticator(), None).ok(),
            Some(Caller::Anonymous)
        );
    }

    #[test]
    fn a_valid_token_gives_the_user_and_the_permissions_of_their_roles() {
        let user = UserId::new();
        let token = sign(&claims(user), "k1");
        let caller = authenticate(&authenticator(), Some(format!("bEaReR {token}").as_bytes()));
        let Ok(Caller::Authenticated(p)) = caller else {
            panic!("{caller:?}")
        };
        assert_eq!(p.user_id(), Some(user));
        assert!(p.can(agora_kernel::Permission::CatalogWrite));
        assert!(!p.can(agora_kernel::Permission::UsersManage));
    }

    #[test]
    fn an_expired_token_says_so() {
        let mut c = claims(UserId::new());
        c.iat = now_secs() - 3600;
        c.exp = now_secs() - 600;
        let got = authenticate(&authenticator(), Some(&bearer(&sign(&c, "k1"))));
        assert_eq!(code(got), Some(ErrorCode::AuthTokenExpired));
    }

    #[test]
    fn wrong_issuer_audience_key_or_subject_is_invalid() {
        let a = authenticator();
        let mut wrong_iss = claims(UserId::new());
        wrong_iss.iss = "someone-else".into();
        let mut wrong_aud = claims(UserId::new());
        wrong_aud.aud = "another-api".into();
        let mut wrong_sub = claims(UserId::new());
        wrong_sub.sub = "prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b".into();
        for token in [
            sign(&wrong_iss, "k1"),
            sign(&wrong_aud, "k1"),
            sign(&wrong_sub, "k1"),
            sign(&claims(UserId::new()), "unknown-kid"),
        ] {
            assert_eq!(
                code(authenticate(&a, Some(&bearer(&token)))),
                Some(ErrorCode::AuthInvalidToken)
            );
        }
    }

    #[test]
    fn tampered_claims_break_the_signature() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = sign(&claims(UserId::new()), "k1");
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut c = claims(UserId::new());
        c.roles = vec![Role::Admin];
        parts[1] = b64.encode(serde_json::to_vec(&c).expect("json"));
        let forged = parts.join(".");
        assert_eq!(
            code(authenticate(&authenticator(), Some(&bearer(&forged)))),
            Some(ErrorCode::AuthInvalidToken)
        );
    }

    #[test]
    fn alg_none_and_hs256_confusion_are_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = b64.encode(serde_json::to_vec(&claims(UserId::new())).expect("json"));
        let none = format!(
            "{}.{body}.",
            b64.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#)
        );
        // HS256 keyed with the public key: the classic confusion attack.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hs256 = jsonwebtoken::encode(
            &header,
            &claims(UserId::new()),
            &EncodingKey::from_secret(PUBLIC_X.as_bytes()),
        )
        .expect("signs");
        let a = authenticator();
        for token in [none, hs256, "not.a.jwt".into(), String::new()] {
            assert_eq!(
                code(authenticate(&a, Some(&bearer(&token)))),
                Some(ErrorCode::AuthInvalidToken),
                "{token}"
            );
        }
        for header in [&b"Basic abc"[..], b"Bearer", b"\xff\xfe"] {
            assert_eq!(
                code(authenticate(&a, Some(header))),
                Some(ErrorCode::AuthInvalidToken)
            );
        }
    }

    #[test]
    fn a_denied_account_is_refused_until_allowed_again() {
        let a = authenticator();
        let user = UserId::new();
        let token = bearer(&sign(&claims(user), "k1"));
        assert!(
            authenticate(&a, Some(&token)).is_ok(),
            "verified, and remembered"
        );
        a.deny(user);
        assert_eq!(
            code(authenticate(&a, Some(&token))),
            Some(ErrorCode::AuthAccountDisabled)
        );
        a.allow(user);
        assert!(authenticate(&a, Some(&token)).is_ok());
    }

    #[test]
    fn a_remembered_token_is_refused_once_its_key_is_withdrawn() {
        let a = authenticator();
        let token = bearer(&sign(&claims(UserId::new()), "k1"));
        assert!(authenticate(&a, Some(&token)).is_ok());
        a.set_keys(HashMap::new());
        assert_eq!(
            code(authenticate(&a, Some(&token))),
            Some(ErrorCode::AuthInvalidToken)
        );
    }

    #[test]
    fn without_keys_every_token_is_refused() {
        let a = Authenticator::new(&AuthConfig::default());
        let token = bearer(&sign(&claims(UserId::new()), "k1"));
        assert_eq!(
            code(authenticate(&a, Some(&token))),
            Some(ErrorCode::AuthInvalidToken)
        );
        assert_eq!(
            Caller::Anonymous
                .require_authenticated()
                .err()
                .map(|e| e.code()),
            Some(ErrorCode::AuthRequired)
        );
    }

    const GOOD_KEY: &str = "agk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const UNKNOWN_KEY: &str = "agk_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    /// API keys as the identity module stores them: by hash, with a revoked flag.
    /// Counts lookups, to show which requests reach the store.
    #[derive(Default)]
    struct Keys {
        live: RwLock<HashMap<String, ApiKeyGrant>>,
        lookups: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ApiKeyResolver for Keys {
        async fn resolve(&self, hash: &str) -> Result<Option<ApiKeyGrant>, ApiError> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(self.live.read().expect("lock").get(hash).cloned())
        }
    }

    #[test]
    fn an_api_key_resolves_once_and_stops_working_when_forgotten() {
        let a = authenticator();
        let keys = Arc::new(Keys::default());
        let id = ApiKeyId::new();
        let grant = ApiKeyGrant {
            id,
            permissions: Permissions::of(&[agora_kernel::Permission::CatalogWrite]),
            expires_at: None,
        };
        keys.live
            .write()
            .expect("lock")
            .insert(secret_hash(GOOD_KEY), grant);
        a.set_api_key_resolver(keys.clone());
        for scheme in ["ApiKey", "apikey"] {
            let header = format!("{scheme} {GOOD_KEY}");
            let Ok(Caller::Authenticated(p)) = authenticate(&a, Some(header.as_bytes())) else {
                panic!("the key resolves")
            };
            assert_eq!(p.subject, Subject::ApiKey(id));
            assert!(p.can(agora_kernel::Permission::CatalogWrite));
            assert!(!p.can(agora_kernel::Permission::UsersManage));
        }
        assert_eq!(
            keys.lookups.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "the second request is answered from memory"
        );
        keys.live.write().expect("lock").clear();
        a.forget_api_key(id);
        assert_eq!(
            code(authenticate(
                &a,
                Some(format!("ApiKey {GOOD_KEY}").as_bytes())
            )),
            Some(ErrorCode::AuthApiKeyInvalid)
        );
    }

    #[test]
    fn unknown_or_malformed_api_keys_are_refused_without_a_lookup_when_malformed() {
        let a = authenticator();
        let keys = Arc::new(Keys::default());
        a.set_api_key_resolver(keys.clone());
        let unknown = format!("ApiKey {UNKNOWN_KEY}");
        let too_short = format!("ApiKey {}", &UNKNOWN_KEY[..40]);
        let bad_char = format!("ApiKey {}!", &UNKNOWN_KEY[..46]);
        for header in [
            unknown.as_bytes(),
            b"ApiKey not-a-key",
            b"ApiKey \xff",
            too_short.as_bytes(),
            bad_char.as_bytes(),
        ] {
            assert_eq!(
                code(authenticate(&a, Some(header))),
                Some(ErrorCode::AuthApiKeyInvalid)
            );
        }
        assert_eq!(keys.lookups.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(
            code(authenticate(&authenticator(), Some(unknown.as_bytes()))),
            Some(ErrorCode::AuthApiKeyInvalid),
            "no resolver installed"
        );
    }

    #[test]
    fn the_secret_hash_is_sha256_hex() {
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
