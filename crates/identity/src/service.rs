//! The identity module's operations: accounts, logins, sessions and tokens.

use std::net::IpAddr;
use std::sync::Arc;

use agora_kernel::{
    ApiKeyId, Clock, Limit, Page, Permission, Permissions, Principal, Role, SessionId, Timestamp,
    UserId,
};
use agora_platform::auth::{
    API_KEY_PREFIX, AccessClaims, Authenticator, random_secret, secret_hash,
};
use agora_platform::config::AuthConfig;
use anyhow::anyhow;
use serde::Serialize;

use crate::api_keys::{ApiKey, CreatedApiKey, SHOWN_PREFIX_LEN, StoredApiKeys};
use crate::domain::{Email, NewPassword, Password, User, parse_name};
use crate::error::IdentityError;
use crate::keys::KeyRing;
use crate::mfa::{
    CHALLENGE_TTL_SECS, MfaStatus, RecoveryCodes, TotpEnrolment, TotpSecret, new_recovery_codes,
    recovery_code_hash,
};
use crate::oidc::OidcProviders;
use crate::password::PasswordHasher;
use crate::store::{CreationCursor, IdentityStore, NewRefreshToken, RevokeReason, Rotation};
use crate::throttle::{FailureState, LoginThrottle, ceil_secs};

/// What a successful login or refresh returns.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// An EdDSA JWT to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// An opaque token for `POST /api/v1/auth/refresh`; single use.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// A new account's fields, parsed.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The normalised email.
    pub email: Email,
    /// The password, which passed the rules.
    pub password: NewPassword,
    /// The display name.
    pub name: String,
}

/// The identity module. Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    store: IdentityStore,
    hasher: PasswordHasher,
    keys: Arc<KeyRing>,
    /// The edge's authenticator: told at once when an account is disabled.
    authenticator: Authenticator,
    clock: Arc<dyn Clock>,
    settings: Arc<AuthConfig>,
    throttle: Arc<LoginThrottle>,
    oidc: OidcProviders,
}

/// A started OpenID Connect login.
#[derive(Debug)]
pub struct OidcStart {
    /// Where to send the browser.
    pub location: String,
    /// The value of the cookie that binds the login to this browser.
    pub browser_binding: String,
}

/// What the provider sent back to the callback.
#[derive(Debug, Default)]
pub struct OidcCallback {
    /// The authorization code.
    pub code: Option<String>,
    /// The state sent with the authorization request.
    pub state: Option<String>,
    /// The provider's error code, when it did not authorize.
    pub error: Option<String>,
}

impl Identity {
    /// The module over `store`, signing with `keys`. The `authenticator` is the one
    /// the edge uses: this module gives it the verification keys now, and tells it
    /// about disabled accounts.
    pub async fn start(
        store: IdentityStore,
        keys: KeyRing,
        authenticator: Authenticator,
        clock: Arc<dyn Clock>,
        settings: &AuthConfig,
    ) -> Result<Identity, IdentityError> {
        authenticator.set_keys(keys.verification_keys()?);
        authenticator.set_api_key_resolver(Arc::new(StoredApiKeys {
            store: store.clone(),
            clock: clock.clone(),
        }));
        for user in store.disabled_users().await? {
            authenticator.deny(user);
        }
        Ok(Identity {
            store,
            hasher: PasswordHasher::new(&settings.argon2)?,
            keys: Arc::new(keys),
            authenticator,
            clock,
            settings: Arc::new(settings.clone()),
            throttle: Arc::new(LoginThrottle::new(&settings.login)),
            oidc: OidcProviders::new(&settings.oidc)?,
        })
    }

    /// The shortest password accepted.
    pub fn password_min_length(&self) -> usize {
        self.settings.password_min_length
    }

    /// The public keys, as a JSON Web Key Set.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
    }

    /// Creates a customer account.
    pub async fn register(&self, registration: Registration) -> Result<User, IdentityError> {
        self.create_user(registration, vec![Role::Customer]).await
    }

    /// Creates an account with `roles` (the first administrator, from the CLI).
    pub async fn create_user(
        &self,
        registration: Registration,
        roles: Vec<Role>,
    ) -> Result<User, IdentityError> {
        let password = registration.password.into_password();
        let hash = self.hasher.hash(&password).await?;
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            email: registration.email.as_str().to_string(),
            name: registration.name,
            roles,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_user(&user, Some(&hash)).await?;
        tracing::info!(user_id = %user.id, "account created");
        Ok(user)
    }

    /// Checks an email and password from `client` and starts a session. An
    /// unknown email, a malformed one and a wrong password all get the same
    /// answer, after the same amount of hashing, and count alike towards the
    /// failed-login limits.
    pub async fn login(
        &self,
        email: &str,
        password: &Password,
        client: IpAddr,
    ) -> Result<TokenPair, IdentityError> {
        let now = self.clock.now();
        let email = Email::parse(email).ok();
        let key = email.as_ref().map(Email::as_str);
        self.throttle
            .attempt(client, key, now)
            .map_err(IdentityError::LoginThrottled)?;
        if let Some(key) = key {
            self.refuse_if_locked(client, key, now).await?;
        }
        let found = match &email {
            Some(email) => self.store.user_by_email(email).await?,
            None => None,
        };
        let hash = found.as_ref().and_then(|(_, hash)| hash.as_deref());
        let matches = self.hasher.verify(password, hash).await?;
        let Some((user, _)) = found.filter(|_| matches) else {
            self.login_failed(client, key, now).await?;
            return Err(IdentityError::InvalidCredentials);
        };
        // The password was right: this attempt is not a failure. Earlier failures
        // stay counted until the whole login (second factor included) succeeds.
        self.throttle.release(client, key, now);
        self.finish_first_factor(&user, now).await
    }

    /// `IDENTITY_ACCOUNT_LOCKED` when `email` is locked, giving back the slot the
    /// attempt took.
    async fn refuse_if_locked(
        &self,
        client: IpAddr,
        email: &str,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        if let FailureState::LockedUntil(until) = self.store.login_failures(email, now).await? {
            self.throttle.release(client, Some(email), now);
            let wait = ceil_secs(until.as_millis() - now.as_millis());
            return Err(IdentityError::AccountLocked(wait));
        }
        Ok(())
    }

    /// After a first factor (password, provider): a session, or a challenge for
    /// the second factor when the account has one.
    async fn finish_first_factor(
        &self,
        user: &User,
        now: Timestamp,
    ) -> Result<TokenPair, IdentityError> {
        if user.disabled {
            return Err(IdentityError::AccountDisabled);
        }
        if self.store.mfa(user.id).await?.is_some_and(|m| m.confirmed) {
            let challenge_token = random_secret("mfa_")?;
            let expires_at = Timestamp::from_millis(
                now.as_millis() + i64::try_from(CHALLENGE_TTL_SECS).unwrap_or(300) * 1000,
            );
            self.store
                .create_challenge(user.id, &secret_hash(&challenge_token), expires_at, now)
                .await?;
            return Err(IdentityError::MfaRequired {
                challenge_token,
                expires_in: CHALLENGE_TTL_SECS,
            });
        }
        self.start_session(user, now).await
    }

    /// Starts a login with OpenID Connect provider `provider`.
    pub async fn oidc_start(&self, provider: &str) -> Result<OidcStart, IdentityError> {
        let started = self.oidc.start(provider).await?;
        let browser_binding = random_secret("")?;
        self.store
            .insert_oidc_login(provider, &started, &browser_binding, self.clock.now())
            .await?;
        Ok(OidcStart {
            location: started.authorization_url,
            browser_binding,
        })
    }

    /// Whether `provider` sends browsers back to an `https://` address (its
    /// cookie is then marked `Secure`).
    pub fn oidc_redirect_is_https(&self, provider: &str) -> bool {
        self.settings
            .oidc
            .get(provider)
            .is_some_and(|p| p.redirect_uri.starts_with("https://"))
    }

    /// Finishes a login with `provider`: checks the state against the login
    /// started in this browser (`browser_binding`, its cookie), redeems the code
    /// with the PKCE verifier, checks the ID token and its nonce, then finds the
    /// account linked to the provider's subject, or links the account with the
    /// provider's verified email, or creates one.
    pub async fn oidc_callback(
        &self,
        provider: &str,
        callback: OidcCallback,
        browser_binding: Option<&str>,
    ) -> Result<TokenPair, IdentityError> {
        let now = self.clock.now();
        self.oidc.ensure_known(provider)?;
        let state = callback.state.ok_or(IdentityError::OidcStateInvalid)?;
        let pending = self
            .store
            .oidc_login(&state)
            .await?
            .filter(|p| p.provider == provider && !p.used && now < p.expires_at)
            .filter(|p| {
                browser_binding.map(secret_hash).as_deref() == Some(p.browser_hash.as_str())
            })
            .ok_or(IdentityError::OidcStateInvalid)?;
        if !self.store.use_oidc_login(&pending.id, now).await? {
            return Err(IdentityError::OidcStateInvalid);
        }
        if let Some(error) = callback.error {
            return Err(IdentityError::OidcDenied(error));
        }
        let code = callback
            .code
            .ok_or_else(|| IdentityError::OidcDenied("missing_code".into()))?;
        let claims = self
            .oidc
            .redeem(provider, &code, &pending.code_verifier)
            .await?;
        if claims.nonce.as_deref() != Some(pending.nonce.as_str()) {
            tracing::warn!(
                provider,
                "an ID token with another login's nonce was refused"
            );
            return Err(IdentityError::OidcNonceMismatch);
        }
        let user = match self.store.oidc_link(provider, &claims.sub).await? {
            Some(id) => self.user(id).await?,
            None => {
                let email = claims
                    .verified_email()
                    .and_then(|e| Email::parse(e).ok())
                    .ok_or(IdentityError::OidcEmailUnverified)?;
                let user = match self.store.user_by_email(&email).await? {
                    // An account registered with a password never proved it owns
                    // the email; the provider just did. Whatever the registrant
                    // set up (password, second factor, sessions) is dropped, so a
                    // squatter who registered the email first keeps nothing.
                    Some((user, Some(_))) => {
                        self.store.take_over_for_provider(user.id, now).await?;
                        tracing::warn!(user_id = %user.id, provider, "password account claimed by a provider's verified email: password, second factor and sessions removed");
                        user
                    }
                    Some((user, None)) => user,
                    None => {
                        self.create_provider_account(&email, claims.name.as_deref())
                            .await?
                    }
                };
                self.store
                    .link_oidc(provider, &claims.sub, user.id, email.as_str(), now)
                    .await?;
                tracing::info!(user_id = %user.id, provider, "provider account linked");
                user
            }
        };
        self.finish_first_factor(&user, now).await
    }

    /// A customer account for a provider's verified email, without a password.
    /// When a concurrent login created it first, that one is used.
    async fn create_provider_account(
        &self,
        email: &Email,
        name: Option<&str>,
    ) -> Result<User, IdentityError> {
        let local_part = email.as_str().split('@').next().unwrap_or("customer");
        let name = name
            .and_then(|n| parse_name(n).ok())
            .or_else(|| parse_name(local_part).ok())
            .unwrap_or_else(|| "Customer".to_string());
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            email: email.as_str().to_string(),
            name,
            roles: vec![Role::Customer],
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        match self.store.insert_user(&user, None).await {
            Ok(()) => {
                tracing::info!(user_id = %user.id, "account created through a provider");
                Ok(user)
            }
            Err(IdentityError::EmailTaken) => self
                .store
                .user_by_email(email)
                .await?
                .map(|(user, _)| user)
                .ok_or(IdentityError::UserNotFound),
            Err(e) => Err(e),
        }
    }

    /// Finishes a login that was asked for its second factor: `challenge_token`
    /// from `IDENTITY_MFA_REQUIRED`, and a TOTP or recovery code. Wrong codes
    /// count as failed logins, and a challenge takes a few at most.
    pub async fn login_second_factor(
        &self,
        challenge_token: &str,
        factor: SecondFactor,
        client: IpAddr,
    ) -> Result<TokenPair, IdentityError> {
        let now = self.clock.now();
        let challenge = self
            .store
            .challenge(&secret_hash(challenge_token))
            .await?
            .filter(|c| c.is_open(now))
            .ok_or(IdentityError::MfaChallengeInvalid)?;
        let user = self
            .store
            .user(challenge.user_id)
            .await?
            .ok_or(IdentityError::MfaChallengeInvalid)?;
        self.throttle
            .attempt(client, Some(&user.email), now)
            .map_err(IdentityError::LoginThrottled)?;
        self.refuse_if_locked(client, &user.email, now).await?;
        // Counted before the code is checked, so parallel guesses on one
        // challenge cannot exceed its allowance.
        if !self
            .store
            .reserve_challenge_attempt(&challenge.id, now)
            .await?
        {
            self.throttle.release(client, Some(&user.email), now);
            return Err(IdentityError::MfaChallengeInvalid);
        }
        let accepted = match factor {
            SecondFactor::Totp(code) => match self.store.mfa(user.id).await? {
                Some(mfa) if mfa.confirmed => match mfa.secret.matching_step(&code, now) {
                    // Refused when this step (or a later one) was used: a replay.
                    Some(step) => self.store.use_totp_step(user.id, step).await?,
                    None => false,
                },
                _ => false,
            },
            SecondFactor::RecoveryCode(code) => {
                self.store
                    .use_recovery_code(user.id, &recovery_code_hash(&code), now)
                    .await?
            }
        };
        if !accepted {
            self.login_failed(client, Some(&user.email), now).await?;
            return Err(IdentityError::MfaCodeInvalid);
        }
        self.throttle.release(client, Some(&user.email), now);
        if !self.store.complete_challenge(&challenge.id, now).await? {
            return Err(IdentityError::MfaChallengeInvalid);
        }
        if user.disabled {
            return Err(IdentityError::AccountDisabled);
        }
        self.start_session(&user, now).await
    }

    /// Starts a session after a complete login, which also clears the email's
    /// failed attempts.
    async fn start_session(&self, user: &User, now: Timestamp) -> Result<TokenPair, IdentityError> {
        self.throttle.forget_email(&user.email);
        if self.store.login_failures(&user.email, now).await? != FailureState::Clean {
            self.store.clear_login_failures(&user.email).await?;
        }
        let (refresh_token, stored) = self.new_refresh_token(now)?;
        let session = self.store.start_session(user.id, &stored, now).await?;
        tracing::info!(user_id = %user.id, session_id = %session, "logged in");
        self.token_pair(user, session, refresh_token, now)
    }

    /// Whether the account has a second factor.
    pub async fn mfa_status(&self, user: UserId) -> Result<MfaStatus, IdentityError> {
        let row = self.store.mfa(user).await?;
        Ok(MfaStatus {
            enabled: row.as_ref().is_some_and(|m| m.confirmed),
            pending: row.as_ref().is_some_and(|m| !m.confirmed),
            recovery_codes_left: self.store.recovery_codes_left(user).await?,
        })
    }

    /// Starts a TOTP enrolment (again, if one was pending): a new secret, which
    /// works once confirmed by its first code.
    pub async fn start_totp(&self, user: UserId) -> Result<TotpEnrolment, IdentityError> {
        let account = self.user(user).await?;
        let secret = TotpSecret::generate()?;
        if !self
            .store
            .start_totp_enrolment(user, &secret, self.clock.now())
            .await?
        {
            return Err(IdentityError::MfaAlreadyEnabled);
        }
        Ok(TotpEnrolment {
            otpauth_uri: secret.otpauth_uri(&self.settings.issuer, &account.email)?,
            secret: secret.to_base32(),
        })
    }

    /// Confirms a pending enrolment with the app's current code; from then on
    /// logins ask for a code. Returns the recovery codes, shown this once.
    pub async fn confirm_totp(
        &self,
        user: UserId,
        code: &str,
    ) -> Result<RecoveryCodes, IdentityError> {
        let now = self.clock.now();
        let pending = match self.store.mfa(user).await? {
            Some(mfa) if mfa.confirmed => return Err(IdentityError::MfaAlreadyEnabled),
            Some(mfa) => mfa,
            None => return Err(IdentityError::MfaNotEnabled),
        };
        let step = pending
            .secret
            .matching_step(code, now)
            .ok_or(IdentityError::MfaConfirmationWrong)?;
        let (codes, hashes) = recovery_codes()?;
        if !self.store.confirm_totp(user, step, &hashes, now).await? {
            return Err(IdentityError::MfaNotEnabled);
        }
        tracing::info!(user_id = %user, "second factor enabled");
        Ok(RecoveryCodes {
            recovery_codes: codes,
        })
    }

    /// Replaces the recovery codes, after checking the password.
    pub async fn renew_recovery_codes(
        &self,
        user: UserId,
        password: &Password,
    ) -> Result<RecoveryCodes, IdentityError> {
        self.check_password(user, password).await?;
        let (codes, hashes) = recovery_codes()?;
        if !self
            .store
            .renew_recovery_codes(user, &hashes, self.clock.now())
            .await?
        {
            return Err(IdentityError::MfaNotEnabled);
        }
        Ok(RecoveryCodes {
            recovery_codes: codes,
        })
    }

    /// Removes the second factor (confirmed or pending), after checking the
    /// password.
    pub async fn disable_mfa(
        &self,
        user: UserId,
        password: &Password,
    ) -> Result<(), IdentityError> {
        self.check_password(user, password).await?;
        if !self.store.remove_mfa(user).await? {
            return Err(IdentityError::MfaNotEnabled);
        }
        tracing::info!(user_id = %user, "second factor removed");
        Ok(())
    }

    async fn check_password(&self, user: UserId, password: &Password) -> Result<(), IdentityError> {
        let (_, hash) = self
            .store
            .user_with_hash(user)
            .await?
            .ok_or(IdentityError::UserNotFound)?;
        if self.hasher.verify(password, hash.as_deref()).await? {
            Ok(())
        } else {
            Err(IdentityError::CurrentPasswordWrong)
        }
    }

    /// Counts a failed login from `client` for `email` towards the lock (the
    /// rate limits counted it when it was attempted).
    async fn login_failed(
        &self,
        client: IpAddr,
        email: Option<&str>,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        let Some(email) = email else {
            return Ok(());
        };
        let limits = &self.settings.login;
        let lockout_ms = i64::try_from(limits.lockout_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        if let Some(until) = self
            .store
            .record_login_failure(email, now, limits.lockout_after, lockout_ms)
            .await?
        {
            // The email, not the account: it may have none. Never the password.
            tracing::warn!(%client, locked_until = %until.to_rfc3339(), "repeated failed logins: email locked");
        }
        Ok(())
    }

    /// Exchanges a refresh token for a new pair. A token used twice ends its
    /// session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, IdentityError> {
        let now = self.clock.now();
        let (next_token, next) = self.new_refresh_token(now)?;
        match self
            .store
            .rotate_refresh_token(&secret_hash(refresh_token), &next, now)
            .await?
        {
            Rotation::Rotated { user, session_id } => {
                self.token_pair(&user, session_id, next_token, now)
            }
            Rotation::Invalid => Err(IdentityError::RefreshTokenInvalid),
            Rotation::Reused => {
                tracing::warn!("a rotated refresh token was used again: its session is revoked");
                Err(IdentityError::RefreshTokenReused)
            }
            Rotation::Disabled => Err(IdentityError::AccountDisabled),
        }
    }

    /// Ends the session of `refresh_token`. Unknown or already ended: nothing to do.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), IdentityError> {
        self.store
            .end_session_of_token(
                &secret_hash(refresh_token),
                RevokeReason::Logout,
                self.clock.now(),
            )
            .await
    }

    /// Renames an account.
    pub async fn rename(&self, id: UserId, name: &str) -> Result<User, IdentityError> {
        self.store
            .update_name(id, name, self.clock.now())
            .await?
            .ok_or(IdentityError::UserNotFound)
    }

    /// Changes a user's password after checking the new one against the
    /// password rules and the current one against the account, and ends every
    /// session of the account but `keep` (the caller's).
    pub async fn change_password(
        &self,
        id: UserId,
        keep: Option<SessionId>,
        current: &Password,
        new: String,
    ) -> Result<(), IdentityError> {
        let (user, hash) = self
            .store
            .user_with_hash(id)
            .await?
            .ok_or(IdentityError::UserNotFound)?;
        let email = Email::parse(&user.email).ok();
        let new = NewPassword::parse(new, self.settings.password_min_length, email.as_ref())
            .map_err(IdentityError::WeakPassword)?;
        if !self.hasher.verify(current, hash.as_deref()).await? {
            return Err(IdentityError::CurrentPasswordWrong);
        }
        let new_hash = self.hasher.hash(&new.into_password()).await?;
        let changed = self
            .store
            .change_password(id, &new_hash, keep, self.clock.now())
            .await?;
        if !changed {
            return Err(IdentityError::UserNotFound);
        }
        tracing::info!(user_id = %id, "password changed; other sessions ended");
        Ok(())
    }

    /// A page of accounts, oldest first (administrators).
    pub async fn list_users(
        &self,
        after: Option<CreationCursor>,
        limit: Limit,
    ) -> Result<Page<User>, IdentityError> {
        let rows = self
            .store
            .list_users(after.as_ref(), i64::from(limit.get()) + 1)
            .await?;
        Ok(Page::from_overfetch(rows, limit, |u| CreationCursor {
            created_at: u.created_at.as_millis(),
            id: u.id.to_db(),
        }))
    }

    /// One account.
    pub async fn user(&self, id: UserId) -> Result<User, IdentityError> {
        self.store
            .user(id)
            .await?
            .ok_or(IdentityError::UserNotFound)
    }

    /// Changes an account's roles or disables it (administrators). A disabled
    /// account's sessions end at once and its access tokens are refused from the
    /// next request. An administrator cannot disable or demote themselves, so the
    /// last one cannot lock everyone out by accident.
    pub async fn update_account(
        &self,
        by: &Principal,
        id: UserId,
        roles: Option<Vec<Role>>,
        disabled: Option<bool>,
    ) -> Result<User, IdentityError> {
        if by.user_id() == Some(id)
            && (disabled == Some(true) || roles.as_ref().is_some_and(|r| !r.contains(&Role::Admin)))
        {
            return Err(IdentityError::SelfLockout);
        }
        // Nobody grants what they do not hold (an API key with `users:manage`
        // cannot make an account an administrator).
        if let Some(missing) = roles
            .as_deref()
            .and_then(|r| Permissions::of_roles(r).iter().find(|p| !by.can(*p)))
        {
            return Err(IdentityError::CannotGrant(missing));
        }
        let user = self
            .store
            .update_account(id, roles.as_deref(), disabled, self.clock.now())
            .await?
            .ok_or(IdentityError::UserNotFound)?;
        match disabled {
            Some(true) => self.authenticator.deny(id),
            Some(false) => self.authenticator.allow(id),
            None => {}
        }
        tracing::info!(user_id = %id, by = %by.subject, roles = ?user.roles, disabled = user.disabled, "account changed");
        Ok(user)
    }

    /// Creates an API key for a service account. The creator may only grant
    /// permissions they hold themselves.
    pub async fn create_api_key(
        &self,
        by: &Principal,
        name: String,
        permissions: Vec<Permission>,
        expires_in_days: Option<u32>,
    ) -> Result<CreatedApiKey, IdentityError> {
        if let Some(missing) = permissions.iter().find(|p| !by.can(**p)) {
            return Err(IdentityError::CannotGrant(*missing));
        }
        let now = self.clock.now();
        let key = random_secret(API_KEY_PREFIX)?;
        let api_key = ApiKey {
            id: ApiKeyId::new(),
            name,
            prefix: key.chars().take(SHOWN_PREFIX_LEN).collect(),
            permissions,
            created_by: by.subject.to_string(),
            created_at: now,
            expires_at: expires_in_days.map(|days| {
                Timestamp::from_millis(
                    now.as_millis()
                        .saturating_add(i64::from(days).saturating_mul(86_400_000)),
                )
            }),
            revoked_at: None,
        };
        self.store
            .insert_api_key(&api_key, &secret_hash(&key))
            .await?;
        tracing::info!(api_key_id = %api_key.id, by = %by.subject, permissions = ?api_key.permissions, "API key created");
        Ok(CreatedApiKey { api_key, key })
    }

    /// A page of API keys, oldest first, revoked ones included.
    pub async fn list_api_keys(
        &self,
        after: Option<CreationCursor>,
        limit: Limit,
    ) -> Result<Page<ApiKey>, IdentityError> {
        let rows = self
            .store
            .list_api_keys(after.as_ref(), i64::from(limit.get()) + 1)
            .await?;
        Ok(Page::from_overfetch(rows, limit, |k| CreationCursor {
            created_at: k.created_at.as_millis(),
            id: k.id.to_db(),
        }))
    }

    /// One API key.
    pub async fn api_key(&self, id: ApiKeyId) -> Result<ApiKey, IdentityError> {
        self.store
            .api_key(id)
            .await?
            .ok_or(IdentityError::ApiKeyNotFound)
    }

    /// Revokes an API key: it stops working at once on this node, and within
    /// [`agora_platform::auth::API_KEY_TTL`] on others. Revoking twice is harmless.
    pub async fn revoke_api_key(
        &self,
        by: &Principal,
        id: ApiKeyId,
    ) -> Result<ApiKey, IdentityError> {
        let key = self
            .store
            .revoke_api_key(id, self.clock.now())
            .await?
            .ok_or(IdentityError::ApiKeyNotFound)?;
        self.authenticator.forget_api_key(id);
        tracing::info!(api_key_id = %id, by = %by.subject, "API key revoked");
        Ok(key)
    }

    fn new_refresh_token(
        &self,
        now: Timestamp,
    ) -> Result<(String, NewRefreshToken), IdentityError> {
        let token = random_secret("rt_")?;
        let ttl_ms = i64::try_from(self.settings.refresh_token_ttl_secs)
            .map_err(|e| anyhow!("refresh ttl: {e}"))?
            * 1000;
        let stored = NewRefreshToken {
            hash: secret_hash(&token),
            expires_at: Timestamp::from_millis(now.as_millis().saturating_add(ttl_ms)),
        };
        Ok((token, stored))
    }

    fn token_pair(
        &self,
        user: &User,
        session: SessionId,
        refresh_token: String,
        now: Timestamp,
    ) -> Result<TokenPair, IdentityError> {
        let iat = u64::try_from(now.as_millis() / 1000).unwrap_or_default();
        let ttl = self.settings.access_token_ttl_secs;
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: user.id.to_string(),
            sid: session.to_string(),
            roles: user.roles.clone(),
            jti: uuid::Uuid::now_v7().simple().to_string(),
            iat,
            exp: iat + ttl,
        };
        Ok(TokenPair {
            access_token: self.keys.sign(&claims)?,
            refresh_token,
            token_type: "Bearer",
            expires_in: ttl,
        })
    }
}

/// A second factor sent to finish a login.
#[derive(Debug, Clone)]
pub enum SecondFactor {
    /// A code from the authenticator app.
    Totp(String),
    /// One of the recovery codes.
    RecoveryCode(String),
}

/// Fresh recovery codes and their hashes.
fn recovery_codes() -> Result<(Vec<String>, Vec<String>), IdentityError> {
    let codes = new_recovery_codes()?;
    let hashes = codes.iter().map(|c| recovery_code_hash(c)).collect();
    Ok((codes, hashes))
}
