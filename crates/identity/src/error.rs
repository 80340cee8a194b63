//! The identity module's errors and their public codes.

use agora_kernel::{ApiError, ErrorCode};
use agora_platform::db::database_failure;

/// Everything that can go wrong in the identity module.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Another account has this email.
    #[error("email taken")]
    EmailTaken,
    /// Unknown email or wrong password (deliberately not told apart).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The refresh token is unknown, expired, or its session has ended.
    #[error("refresh token invalid")]
    RefreshTokenInvalid,
    /// The refresh token was used before: its session has been revoked.
    #[error("refresh token reused")]
    RefreshTokenReused,
    /// The account is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// The account behind valid credentials no longer exists.
    #[error("account not found")]
    UserNotFound,
    /// The new password breaks a password rule (the message says which).
    #[error("weak new password")]
    WeakPassword(String),
    /// The current password given for a change is wrong.
    #[error("current password wrong")]
    CurrentPasswordWrong,
    /// Too many failed logins from the address or for the email: wait this many
    /// seconds.
    #[error("login throttled")]
    LoginThrottled(u64),
    /// The email is locked after repeated failures: wait this many seconds.
    #[error("account locked")]
    AccountLocked(u64),
    /// The password was right; a second factor is needed to finish the login.
    #[error("second factor required")]
    MfaRequired {
        /// The token to send with the code.
        challenge_token: String,
        /// Seconds the challenge waits.
        expires_in: u64,
    },
    /// The MFA challenge is unknown, expired, used or spent.
    #[error("MFA challenge invalid")]
    MfaChallengeInvalid,
    /// The second-factor code is wrong or replayed.
    #[error("MFA code invalid")]
    MfaCodeInvalid,
    /// The code that should confirm an enrolment is wrong.
    #[error("MFA confirmation code wrong")]
    MfaConfirmationWrong,
    /// The account already has a confirmed second factor.
    #[error("MFA already enabled")]
    MfaAlreadyEnabled,
    /// Nothing pending to confirm, or nothing enabled to change.
    #[error("MFA not enabled")]
    MfaNotEnabled,
    /// No OpenID Connect provider has this name.
    #[error("unknown OIDC provider")]
    OidcProviderUnknown,
    /// The callback's state is unknown, expired, used, or from another browser.
    #[error("OIDC state invalid")]
    OidcStateInvalid,
    /// The ID token's nonce is not the one sent.
    #[error("OIDC nonce mismatch")]
    OidcNonceMismatch,
    /// The ID token failed verification.
    #[error("OIDC ID token invalid")]
    OidcIdTokenInvalid,
    /// The provider gave no verified email.
    #[error("OIDC email unverified")]
    OidcEmailUnverified,
    /// The provider answered the authorization request with this error.
    #[error("OIDC login denied: {0}")]
    OidcDenied(String),
    /// The provider could not be used (the reason is logged, not shown).
    #[error("OIDC provider failed: {0}")]
    OidcProviderFailed(String),
    /// No API key has this id.
    #[error("API key not found")]
    ApiKeyNotFound,
    /// The caller tried to grant an API key a permission they do not hold.
    #[error("cannot grant {0}")]
    CannotGrant(agora_kernel::Permission),
    /// An administrator tried to disable or demote their own account.
    #[error("self lockout")]
    SelfLockout,
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else unexpected.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let code = match e {
            IdentityError::Database(e) => return database_failure("identity", &e),
            IdentityError::Unexpected(e) => return ApiError::internal(format!("{e:#}")),
            IdentityError::CurrentPasswordWrong => {
                return ApiError::validation(vec![agora_kernel::error::FieldError::new(
                    "current_password",
                    "is not the account's password",
                )]);
            }
            IdentityError::WeakPassword(why) => {
                return ApiError::validation(vec![agora_kernel::error::FieldError::new(
                    "new_password",
                    why,
                )]);
            }
            IdentityError::SelfLockout => {
                return ApiError::validation(vec![agora_kernel::error::FieldError::new(
                    "id",
                    "is your own account: another administrator must disable or demote it",
                )]);
            }
            IdentityError::CannotGrant(permission) => {
                return agora_platform::auth::forbidden(permission);
            }
            IdentityError::LoginThrottled(secs) => {
                return ApiError::from_code(ErrorCode::IdentityLoginThrottled)
                    .with_retry_after(secs);
            }
            IdentityError::AccountLocked(secs) => {
                return ApiError::from_code(ErrorCode::IdentityAccountLocked)
                    .with_retry_after(secs);
            }
            IdentityError::MfaRequired {
                challenge_token,
                expires_in,
            } => {
                return ApiError::from_code(ErrorCode::IdentityMfaRequired).with_details(
                    serde_json::json!({
                        "challenge_token": challenge_token,
                        "expires_in": expires_in,
                        "methods": ["totp", "recovery_code"],
                    }),
                );
            }
            IdentityError::MfaConfirmationWrong => {
                return ApiError::validation(vec![agora_kernel::error::FieldError::new(
                    "code",
                    "is not the current code of the new secret: check the app's clock",
                )]);
            }
            IdentityError::MfaChallengeInvalid => ErrorCode::IdentityMfaChallengeInvalid,
            IdentityError::MfaCodeInvalid => ErrorCode::IdentityMfaCodeInvalid,
            IdentityError::MfaAlreadyEnabled => ErrorCode::IdentityMfaAlreadyEnabled,
            IdentityError::MfaNotEnabled => ErrorCode::IdentityMfaNotEnabled,
            IdentityError::OidcDenied(error) => {
                return ApiError::from_code(ErrorCode::IdentityOidcDenied)
                    .with_details(serde_json::json!({ "error": error }));
            }
            IdentityError::OidcProviderFailed(why) => {
                return ApiError::from_code(ErrorCode::IdentityOidcProviderFailed).with_cause(why);
            }
            IdentityError::OidcProviderUnknown => ErrorCode::IdentityOidcProviderUnknown,
            IdentityError::OidcStateInvalid => ErrorCode::IdentityOidcStateInvalid,
            IdentityError::OidcNonceMismatch => ErrorCode::IdentityOidcNonceMismatch,
            IdentityError::OidcIdTokenInvalid => ErrorCode::IdentityOidcIdTokenInvalid,
            IdentityError::OidcEmailUnverified => ErrorCode::IdentityOidcEmailUnverified,
            IdentityError::ApiKeyNotFound => ErrorCode::IdentityApiKeyNotFound,
            IdentityError::EmailTaken => ErrorCode::IdentityEmailTaken,
            IdentityError::InvalidCredentials => ErrorCode::IdentityInvalidCredentials,
            IdentityError::RefreshTokenInvalid => ErrorCode::IdentityRefreshTokenInvalid,
            IdentityError::RefreshTokenReused => ErrorCode::IdentityRefreshTokenReused,
            IdentityError::AccountDisabled => ErrorCode::AuthAccountDisabled,
            IdentityError::UserNotFound => ErrorCode::IdentityUserNotFound,
        };
        ApiError::from_code(code)
    }
}

impl From<IdentityError> for agora_contracts::PortError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Database(sqlx::Error::PoolTimedOut) => {
                agora_contracts::PortError::Unavailable {
                    module: "identity",
                    reason: "database pool timed out".into(),
                }
            }
            other => agora_contracts::PortError::Internal {
                module: "identity",
                reason: format!("{other:#}"),
            },
        }
    }
}
