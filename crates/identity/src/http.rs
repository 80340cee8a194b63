//! The identity module's REST routes (under `/api/v1`) and the JWKS document.

use agora_kernel::access::require::{ApiKeysManage, UsersManage};
use agora_kernel::pagination::Limit;
use agora_kernel::validation::Problems;
use agora_kernel::{ApiError, ApiKeyId, ApiResponse, Cursor, Permission, Role, UserId};
use agora_platform::auth::{Authorized, SignedInUser};
use agora_platform::http::{AppJson, AppPath, AppQuery, ClientAddress};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::api_keys::{ApiKey, CreatedApiKey};
use crate::domain::{Email, NewPassword, Password, User, parse_name};
use crate::mfa::{MfaStatus, RecoveryCodes, TotpEnrolment};
use crate::service::{Identity, OidcCallback, Registration, SecondFactor, TokenPair};
use crate::store::CreationCursor;

/// The routes under `/api/v1`.
pub fn router(identity: Identity) -> Router {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/login/mfa", post(login_mfa))
        .route("/auth/oidc/{provider}/start", get(oidc_start))
        .route("/auth/oidc/{provider}/callback", get(oidc_callback))
        .route("/users/me/mfa", get(mfa_status))
        .route("/users/me/mfa/totp", post(start_totp))
        .route("/users/me/mfa/totp/confirm", post(confirm_totp))
        .route("/users/me/mfa/recovery-codes", post(renew_recovery_codes))
        .route("/users/me/mfa/disable", post(disable_mfa))
        .route("/users/me", get(me).patch(update_me))
        .route("/users/me/password", post(change_password))
        .route("/users", get(list_users))
        .route("/users/{id}", get(get_user).patch(update_user))
        .route("/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api-keys/{id}", get(get_api_key).delete(revoke_api_key))
        .with_state(identity)
}

/// The routes outside `/api/v1`: the public keys, where JWT libraries look for them.
pub fn well_known_router(identity: Identity) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(identity)
}

/// A new account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Compared after trimming and lower-casing.
    #[schema(example = "ada@example.com")]
    email: String,
    /// At least `auth.password_min_length` characters (10 by default), not a
    /// common password, not the email.
    #[schema(example = "correct horse battery staple")]
    password: String,
    /// The display name, 1 to 100 characters.
    #[schema(example = "Ada Lovelace")]
    name: String,
}

/// Create a customer account.
#[utoipa::path(
    post, path = "/auth/register", tag = "identity",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account; log in to get tokens.", body = inline(agora_kernel::envelope::Success<User>)),
        (status = 409, description = "`IDENTITY_EMAIL_TAKEN`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED` (email, password rules, name), `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn register(
    State(identity): State<Identity>,
    AppJson(body): AppJson<RegisterRequest>,
) -> Result<ApiResponse<User>, ApiError> {
    let mut p = Problems::default();
    let email = p.check("email", Email::parse(&body.email));
    let password = p.check(
        "password",
        NewPassword::parse(
            body.password,
            identity.password_min_length(),
            email.as_ref(),
        ),
    );
    let name = p.check("name", parse_name(&body.name));
    let registration = p.finish(|| {
        Some(Registration {
            email: email?,
            password: password?,
            name: name?,
        })
    })?;
    let user = identity.register(registration).await?;
    Ok(ApiResponse::created(user, "/api/v1/users/me"))
}

/// Credentials.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "ada@example.com")]
    email: String,
    #[schema(example = "correct horse battery staple")]
    password: String,
}

/// Log in with email and password.
#[utoipa::path(
    post, path = "/auth/login", tag = "identity",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "An access token and a refresh token.", body = inline(agora_kernel::envelope::Success<TokenPair>)),
        (status = 401, description = "`IDENTITY_INVALID_CREDENTIALS` (the same whether or not the email exists); `IDENTITY_MFA_REQUIRED` with `details.challenge_token` when the account has a second factor", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_ACCOUNT_DISABLED`", body = agora_kernel::envelope::Failure),
        (status = 429, description = "`IDENTITY_LOGIN_THROTTLED`, `IDENTITY_ACCOUNT_LOCKED`; wait `Retry-After` seconds", body = agora_kernel::envelope::Failure),
    )
)]
async fn login(
    State(identity): State<Identity>,
    ClientAddress(client): ClientAddress,
    AppJson(body): AppJson<LoginRequest>,
) -> Result<ApiResponse<TokenPair>, ApiError> {
    let password = Password::new(body.password);
    Ok(ApiResponse::ok(
        identity.login(&body.email, &password, client).await?,
    ))
}

/// The second step of a login with a second factor: exactly one of `code` and
/// `recovery_code`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginMfaRequest {
    /// `details.challenge_token` of the `IDENTITY_MFA_REQUIRED` answer.
    challenge_token: String,
    /// The authenticator app's current 6-digit code.
    #[schema(example = "123456")]
    code: Option<String>,
    /// One of the recovery codes, instead of `code`.
    #[schema(example = "abcd-efgh-ijkl-mnop")]
    recovery_code: Option<String>,
}

/// Finish a login with a TOTP or recovery code.
#[utoipa::path(
    post, path = "/auth/login/mfa", tag = "identity",
    request_body = LoginMfaRequest,
    responses(
        (status = 200, description = "An access token and a refresh token.", body = inline(agora_kernel::envelope::Success<TokenPair>)),
        (status = 401, description = "`IDENTITY_MFA_CODE_INVALID` (wrong or replayed), `IDENTITY_MFA_CHALLENGE_INVALID` (unknown, expired, used, or too many wrong codes)", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`: neither or both of `code` and `recovery_code`", body = agora_kernel::envelope::Failure),
        (status = 429, description = "`IDENTITY_LOGIN_THROTTLED`, `IDENTITY_ACCOUNT_LOCKED`", body = agora_kernel::envelope::Failure),
    )
)]
async fn login_mfa(
    State(identity): State<Identity>,
    ClientAddress(client): ClientAddress,
    AppJson(body): AppJson<LoginMfaRequest>,
) -> Result<ApiResponse<TokenPair>, ApiError> {
    let factor = match (body.code, body.recovery_code) {
        (Some(code), None) => SecondFactor::Totp(code),
        (None, Some(code)) => SecondFactor::RecoveryCode(code),
        _ => {
            return Err(ApiError::validation(vec![
                agora_kernel::error::FieldError::new(
                    "code",
                    "send exactly one of `code` and `recovery_code`",
                ),
            ]));
        }
    };
    Ok(ApiResponse::ok(
        identity
            .login_second_factor(&body.challenge_token, factor, client)
            .await?,
    ))
}

/// The cookie that binds an OpenID Connect login to the browser that started it.
const OIDC_COOKIE: &str = "agora_oidc";

/// Start a login with an OpenID Connect provider: redirects the browser to the
/// provider (authorization code flow with PKCE), and sets a short-lived cookie
/// that the callback checks.
#[utoipa::path(
    get, path = "/auth/oidc/{provider}/start", tag = "identity",
    params(("provider" = String, Path, description = "A provider name from `auth.oidc`")),
    responses(
        (status = 302, description = "To the provider's authorization endpoint; sets the `agora_oidc` cookie (10 minutes)."),
        (status = 404, description = "`IDENTITY_OIDC_PROVIDER_UNKNOWN`", body = agora_kernel::envelope::Failure),
        (status = 502, description = "`IDENTITY_OIDC_PROVIDER_FAILED`", body = agora_kernel::envelope::Failure),
    )
)]
async fn oidc_start(
    State(identity): State<Identity>,
    AppPath(provider): AppPath<String>,
) -> Result<axum::response::Response, ApiError> {
    let started = identity.oidc_start(&provider).await?;
    // Secure whenever the provider sends the browser back over HTTPS.
    let secure = if identity.oidc_redirect_is_https(&provider) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{OIDC_COOKIE}={}; Path=/api; Max-Age=600; HttpOnly; SameSite=Lax{secure}",
        started.browser_binding
    );
    Ok((
        http::StatusCode::FOUND,
        [
            (http::header::LOCATION, started.location),
            (http::header::SET_COOKIE, cookie),
            (http::header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response())
}

/// What the provider sends back. Providers add parameters of their own, so
/// unknown ones are ignored here.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OidcCallbackQuery {
    /// The authorization code.
    code: Option<String>,
    /// The state sent with the authorization request.
    state: Option<String>,
    /// The provider's error code, when it did not authorize the login.
    error: Option<String>,
}

/// Finish a login with an OpenID Connect provider (the provider redirects the
/// browser here). The first login with a provider account links it to the
/// account with the same verified email, or creates a customer account.
#[utoipa::path(
    get, path = "/auth/oidc/{provider}/callback", tag = "identity",
    params(("provider" = String, Path, description = "A provider name from `auth.oidc`"), OidcCallbackQuery),
    responses(
        (status = 200, description = "An access token and a refresh token.", body = inline(agora_kernel::envelope::Success<TokenPair>)),
        (status = 400, description = "`IDENTITY_OIDC_STATE_INVALID`", body = agora_kernel::envelope::Failure),
        (status = 401, description = "`IDENTITY_OIDC_NONCE_MISMATCH`, `IDENTITY_OIDC_ID_TOKEN_INVALID`, `IDENTITY_OIDC_DENIED`, `IDENTITY_MFA_REQUIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`IDENTITY_OIDC_EMAIL_UNVERIFIED`, `AUTH_ACCOUNT_DISABLED`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`IDENTITY_OIDC_PROVIDER_UNKNOWN`", body = agora_kernel::envelope::Failure),
        (status = 502, description = "`IDENTITY_OIDC_PROVIDER_FAILED`", body = agora_kernel::envelope::Failure),
    )
)]
async fn oidc_callback(
    State(identity): State<Identity>,
    AppPath(provider): AppPath<String>,
    headers: http::HeaderMap,
    AppQuery(query): AppQuery<OidcCallbackQuery>,
) -> Result<ApiResponse<TokenPair>, ApiError> {
    let binding = cookie(&headers, OIDC_COOKIE);
    let callback = OidcCallback {
        code: query.code,
        state: query.state,
        error: query.error,
    };
    let tokens = identity
        .oidc_callback(&provider, callback, binding.as_deref())
        .await?;
    Ok(ApiResponse::ok(tokens))
}

/// The value of cookie `name`, if the request sent it.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A refresh token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Exchange a refresh token for new tokens. Each refresh token works once.
#[utoipa::path(
    post, path = "/auth/refresh", tag = "identity",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and a new refresh token.", body = inline(agora_kernel::envelope::Success<TokenPair>)),
        (status = 401, description = "`IDENTITY_REFRESH_TOKEN_INVALID`, `IDENTITY_REFRESH_TOKEN_REUSED` (the session is now revoked)", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_ACCOUNT_DISABLED`", body = agora_kernel::envelope::Failure),
    )
)]
async fn refresh(
    State(identity): State<Identity>,
    AppJson(body): AppJson<RefreshRequest>,
) -> Result<ApiResponse<TokenPair>, ApiError> {
    Ok(ApiResponse::ok(
        identity.refresh(&body.refresh_token).await?,
    ))
}

/// End the session of a refresh token (all its successors stop working).
#[utoipa::path(
    post, path = "/auth/logout", tag = "identity",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "The session has ended (or had already); `data` is null."),
    )
)]
async fn logout(
    State(identity): State<Identity>,
    AppJson(body): AppJson<RefreshRequest>,
) -> Result<ApiResponse<()>, ApiError> {
    identity.logout(&body.refresh_token).await?;
    Ok(ApiResponse::ok(()))
}

/// The caller's account.
#[utoipa::path(
    get, path = "/users/me", tag = "identity",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account.", body = inline(agora_kernel::envelope::Success<User>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
    )
)]
async fn me(
    State(identity): State<Identity>,
    SignedInUser(user, _): SignedInUser,
) -> Result<ApiResponse<User>, ApiError> {
    Ok(ApiResponse::ok(identity.user(user).await?))
}

/// Changes to the caller's account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    /// The display name, 1 to 100 characters.
    name: String,
}

/// Change the caller's account.
#[utoipa::path(
    patch, path = "/users/me", tag = "identity",
    security(("bearer" = [])),
    request_body = UpdateMe,
    responses(
        (status = 200, description = "The account as it is now.", body = inline(agora_kernel::envelope::Success<User>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn update_me(
    State(identity): State<Identity>,
    SignedInUser(user, _): SignedInUser,
    AppJson(body): AppJson<UpdateMe>,
) -> Result<ApiResponse<User>, ApiError> {
    let mut p = Problems::default();
    let name = p.check("name", parse_name(&body.name));
    let name = p.finish(|| name)?;
    Ok(ApiResponse::ok(identity.rename(user, &name).await?))
}

/// A password change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    current_password: String,
    /// Follows the same rules as at registration.
    new_password: String,
}

/// Change the caller's password; every other session of the account ends.
#[utoipa::path(
    post, path = "/users/me/password", tag = "identity",
    security(("bearer" = [])),
    request_body = ChangePassword,
    responses(
        (status = 200, description = "Changed; `data` is null. This session goes on."),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`: the current password is wrong, or the new one breaks a rule", body = agora_kernel::envelope::Failure),
    )
)]
async fn change_password(
    State(identity): State<Identity>,
    SignedInUser(user, who): SignedInUser,
    AppJson(body): AppJson<ChangePassword>,
) -> Result<ApiResponse<()>, ApiError> {
    identity
        .change_password(
            user,
            who.session_id,
            &Password::new(body.current_password),
            body.new_password,
        )
        .await?;
    Ok(ApiResponse::ok(()))
}

/// Whether the caller's account has a second factor.
#[utoipa::path(
    get, path = "/users/me/mfa", tag = "identity",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The second factor's state.", body = inline(agora_kernel::envelope::Success<MfaStatus>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
    )
)]
async fn mfa_status(
    State(identity): State<Identity>,
    SignedInUser(user, _): SignedInUser,
) -> Result<ApiResponse<MfaStatus>, ApiError> {
    Ok(ApiResponse::ok(identity.mfa_status(user).await?))
}

/// Start a TOTP enrolment: a new secret for an authenticator app, which takes
/// effect once confirmed with its first code. Starting again replaces a pending
/// secret.
#[utoipa::path(
    post, path = "/users/me/mfa/totp", tag = "identity",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The secret and its `otpauth://` URI.", body = inline(agora_kernel::envelope::Success<TotpEnrolment>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`IDENTITY_MFA_ALREADY_ENABLED`", body = agora_kernel::envelope::Failure),
    )
)]
async fn start_totp(
    State(identity): State<Identity>,
    SignedInUser(user, _): SignedInUser,
) -> Result<ApiResponse<TotpEnrolment>, ApiError> {
    Ok(ApiResponse::created(
        identity.start_totp(user).await?,
        "/api/v1/users/me/mfa",
    ))
}

/// A code from the authenticator app.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotp {
    #[schema(example = "123456")]
    code: String,
}

/// Confirm a TOTP enrolment with the app's current code. From now on logins ask
/// for a code. The answer holds ten recovery codes, shown this once.
#[utoipa::path(
    post, path = "/users/me/mfa/totp/confirm", tag = "identity",
    request_body = ConfirmTotp,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The recovery codes.", body = inline(agora_kernel::envelope::Success<RecoveryCodes>)),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`IDENTITY_MFA_ALREADY_ENABLED`, `IDENTITY_MFA_NOT_ENABLED` (no enrolment started)", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`: the code is not the secret's current code", body = agora_kernel::envelope::Failure),
    )
)]
async fn confirm_totp(
    State(identity): State<Identity>,
    SignedInUser(user, _): SignedInUser,
    AppJson(body): AppJson<ConfirmTotp>,
) -> Result<ApiResponse<RecoveryCodes>, ApiError> {
    Ok(ApiResponse::ok(
        identity.confirm_totp(user, &body.code).await?,
    ))
}

/// The caller's password, to confirm a sensitive change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordConfirmation {
    current_password: String,
}

/// Replace the recovery codes (the old ones stop working).
#[utoipa::path(
    post, path = "/users/me/mfa/recovery-codes", tag = "identity",
    request_body = PasswordConfirmation,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new recovery codes, shown this once.", body = inline(agora_kernel::envelope::Success<RecoveryCodes>)),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`IDENTITY_MFA_NOT_ENABLED`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`: the password is wrong", body = agora_kernel::envelope::Failure),
    )
)]
async fn renew_recovery_codes(
    State(identity): State<Identity>,
    SignedInUser(user, _): SignedInUser,
    AppJson(body): AppJson<PasswordConfirmation>,
) -> Result<ApiResponse<RecoveryCodes>, ApiError> {
    let password = Password::new(body.current_password);
    Ok(ApiResponse::ok(
        identity.renew_recovery_codes(user, &password).await?,
    ))
}

/// Remove the second factor and its recovery codes.
#[utoipa::path(
    post, path = "/users/me/mfa/disable", tag = "identity",
    request_body = PasswordConfirmation,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed; `data` is null. Logins ask for the password only."),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`IDENTITY_MFA_NOT_ENABLED`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`: the password is wrong", body = agora_kernel::envelope::Failure),
    )
)]
async fn disable_mfa(
    State(identity): State<Identity>,
    SignedInUser(user, _): SignedInUser,
    AppJson(body): AppJson<PasswordConfirmation>,
) -> Result<ApiResponse<()>, ApiError> {
    let password = Password::new(body.current_password);
    identity.disable_mfa(user, &password).await?;
    Ok(ApiResponse::ok(()))
}

/// A page of the user list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsersQuery {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// `meta.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List accounts, oldest first (`users:manage`).
#[utoipa::path(
    get, path = "/users", tag = "identity",
    params(ListUsersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of accounts; `meta.next_cursor` when there are more.", body = inline(agora_kernel::envelope::Success<Vec<User>>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
    )
)]
async fn list_users(
    State(identity): State<Identity>,
    _admin: Authorized<UsersManage>,
    AppQuery(query): AppQuery<ListUsersQuery>,
) -> Result<ApiResponse<Vec<User>>, ApiError> {
    let after: Option<CreationCursor> = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page = identity
        .list_users(after, query.limit.unwrap_or_default())
        .await?;
    Ok(ApiResponse::ok(page.items).with_next_cursor(page.next_cursor))
}

/// One account (`users:manage`).
#[utoipa::path(
    get, path = "/users/{id}", tag = "identity",
    params(("id" = String, Path, description = "The account's id, `usr_…`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account.", body = inline(agora_kernel::envelope::Success<User>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`IDENTITY_USER_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn get_user(
    State(identity): State<Identity>,
    _admin: Authorized<UsersManage>,
    AppPath(id): AppPath<UserId>,
) -> Result<ApiResponse<User>, ApiError> {
    Ok(ApiResponse::ok(identity.user(id).await?))
}

/// An administrator's changes to an account; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// Replaces the account's roles: `customer`, `staff`, `admin`; at least one.
    #[schema(value_type = Option<Vec<String>>, example = json!(["staff"]))]
    roles: Option<Vec<Role>>,
    /// `true` ends every session at once and refuses the account's tokens.
    disabled: Option<bool>,
}

/// Change an account's roles, or disable or enable it (`users:manage`).
#[utoipa::path(
    patch, path = "/users/{id}", tag = "identity",
    params(("id" = String, Path, description = "The account's id, `usr_…`")),
    request_body = UpdateUser,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account as it is now.", body = inline(agora_kernel::envelope::Success<User>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`IDENTITY_USER_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`: no roles, or disabling or demoting yourself", body = agora_kernel::envelope::Failure),
    )
)]
async fn update_user(
    State(identity): State<Identity>,
    Authorized(admin, _): Authorized<UsersManage>,
    AppPath(id): AppPath<UserId>,
    AppJson(body): AppJson<UpdateUser>,
) -> Result<ApiResponse<User>, ApiError> {
    let mut p = Problems::default();
    if body.roles.as_ref().is_some_and(Vec::is_empty) {
        p.add("roles", "must name at least one role");
    }
    p.into_result().map_err(ApiError::validation)?;
    Ok(ApiResponse::ok(
        identity
            .update_account(&admin, id, body.roles, body.disabled)
            .await?,
    ))
}

/// A new API key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What the key is for, 1 to 100 characters.
    #[schema(example = "warehouse sync")]
    name: String,
    /// What the key may do: permission names, at least one, each held by the
    /// caller (see docs/security.md).
    #[schema(example = json!(["catalog:write"]))]
    permissions: Vec<String>,
    /// Days until the key stops working by itself, 1 to 3650; never if absent.
    #[schema(minimum = 1, maximum = 3650)]
    expires_in_days: Option<u32>,
}

/// Create an API key for a service account (`api_keys:manage`). The key is in
/// this answer only: store it now.
#[utoipa::path(
    post, path = "/api-keys", tag = "identity",
    request_body = CreateApiKey,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The key's record and, this once, the key.", body = inline(agora_kernel::envelope::Success<CreatedApiKey>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`, `AUTH_API_KEY_INVALID`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`: the caller lacks `api_keys:manage`, or a permission it tries to grant (`details.permission`)", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn create_api_key(
    State(identity): State<Identity>,
    Authorized(by, _): Authorized<ApiKeysManage>,
    AppJson(body): AppJson<CreateApiKey>,
) -> Result<ApiResponse<CreatedApiKey>, ApiError> {
    let mut p = Problems::default();
    let name = p.check("name", parse_name(&body.name));
    let mut permissions = Vec::new();
    if body.permissions.is_empty() {
        p.add("permissions", "must name at least one permission");
    }
    for name in &body.permissions {
        match Permission::parse(name) {
            Some(permission) if !permissions.contains(&permission) => permissions.push(permission),
            Some(_) => {}
            None => p.add("permissions", format!("`{name}` is not a permission")),
        }
    }
    if body
        .expires_in_days
        .is_some_and(|d| !(1..=3650).contains(&d))
    {
        p.add("expires_in_days", "must be between 1 and 3650");
    }
    let name = p.finish(|| name)?;
    let created = identity
        .create_api_key(&by, name, permissions, body.expires_in_days)
        .await?;
    let location = format!("/api/v1/api-keys/{}", created.api_key.id);
    Ok(ApiResponse::created(created, &location))
}

/// List API keys, oldest first, revoked ones included (`api_keys:manage`).
#[utoipa::path(
    get, path = "/api-keys", tag = "identity",
    params(ListUsersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of keys (never the keys themselves); `meta.next_cursor` when there are more.", body = inline(agora_kernel::envelope::Success<Vec<ApiKey>>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`, `AUTH_API_KEY_INVALID`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
    )
)]
async fn list_api_keys(
    State(identity): State<Identity>,
    _admin: Authorized<ApiKeysManage>,
    AppQuery(query): AppQuery<ListUsersQuery>,
) -> Result<ApiResponse<Vec<ApiKey>>, ApiError> {
    let after: Option<CreationCursor> = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page = identity
        .list_api_keys(after, query.limit.unwrap_or_default())
        .await?;
    Ok(ApiResponse::ok(page.items).with_next_cursor(page.next_cursor))
}

/// One API key (`api_keys:manage`).
#[utoipa::path(
    get, path = "/api-keys/{id}", tag = "identity",
    params(("id" = String, Path, description = "The key's id, `key_…`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The key's record (never the key itself).", body = inline(agora_kernel::envelope::Success<ApiKey>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`IDENTITY_API_KEY_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn get_api_key(
    State(identity): State<Identity>,
    _admin: Authorized<ApiKeysManage>,
    AppPath(id): AppPath<ApiKeyId>,
) -> Result<ApiResponse<ApiKey>, ApiError> {
    Ok(ApiResponse::ok(identity.api_key(id).await?))
}

/// Revoke an API key (`api_keys:manage`). Revoking a revoked key changes nothing.
#[utoipa::path(
    delete, path = "/api-keys/{id}", tag = "identity",
    params(("id" = String, Path, description = "The key's id, `key_…`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The key's record, with `revoked_at`.", body = inline(agora_kernel::envelope::Success<ApiKey>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`IDENTITY_API_KEY_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn revoke_api_key(
    State(identity): State<Identity>,
    Authorized(by, _): Authorized<ApiKeysManage>,
    AppPath(id): AppPath<ApiKeyId>,
) -> Result<ApiResponse<ApiKey>, ApiError> {
    Ok(ApiResponse::ok(identity.revoke_api_key(&by, id).await?))
}

/// The public keys that verify access tokens (RFC 7517), for any service or gateway.
async fn jwks(State(identity): State<Identity>) -> impl IntoResponse {
    (
        [(http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(identity.jwks()),
    )
}

/// The identity module's part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(register, login, login_mfa, oidc_start, oidc_callback, refresh, logout, me, mfa_status, start_totp, confirm_totp, renew_recovery_codes, disable_mfa, update_me, change_password, list_users, get_user, update_user, create_api_key, list_api_keys, get_api_key, revoke_api_key),
    components(schemas(User, TokenPair, RegisterRequest, LoginRequest, RefreshRequest, UpdateMe, ChangePassword, UpdateUser, ApiKey, CreatedApiKey, CreateApiKey, LoginMfaRequest, MfaStatus, TotpEnrolment, RecoveryCodes, ConfirmTotp, PasswordConfirmation)),
    tags((name = "identity", description = "Accounts, logins and tokens"))
)]
pub struct IdentityApi;
