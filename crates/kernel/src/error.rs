//! Public error codes and the API error type.
//!
//! Every failure a client can see carries one code from [`ErrorCode`]. The table is
//! the single source of truth: `GET /api/v1/errors` serves it and `docs/errors.md`
//! is generated from it (a test keeps the two in step). Codes are never renamed or
//! reused; a retired code stays in the table.

use std::borrow::Cow;
use std::fmt;

use axum_core::response::{IntoResponse, Response};
use http::StatusCode;

use crate::envelope;

macro_rules! error_codes {
    ($( $variant:ident = ($code:literal, $status:literal, $desc:literal); )*) => {
        /// A stable, documented error code. See `docs/errors.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                #[doc = $desc]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as clients see it, e.g. `CATALOG_SKU_TAKEN`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status every response with this code has.
            pub fn status(self) -> StatusCode {
                let status: u16 = match self { $(ErrorCode::$variant => $status,)* };
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }

            /// What the code means and what the client can do about it.
            pub const fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $desc,)* }
            }
        }
    };
}

error_codes! {
    // Request shape: the API layer refuses these before any business logic runs.
    RequestMalformedJson = ("REQUEST_MALFORMED_JSON", 400, "The request body is not well-formed JSON. Nothing was changed.");
    RequestInvalidBody = ("REQUEST_INVALID_BODY", 422, "The JSON body does not match the expected shape: a field is missing, has the wrong type, or is not known. `details` names it. Nothing was changed.");
    RequestUnsupportedMediaType = ("REQUEST_UNSUPPORTED_MEDIA_TYPE", 415, "The request needs a body with `Content-Type: application/json`.");
    RequestBodyTooLarge = ("REQUEST_BODY_TOO_LARGE", 413, "The request body is larger than the server accepts (`server.body_limit_bytes`).");
    RequestInvalidQuery = ("REQUEST_INVALID_QUERY", 400, "A query-string parameter is malformed, out of range or unknown. `details` names it.");
    RequestInvalidPath = ("REQUEST_INVALID_PATH", 400, "A path parameter is malformed, for example an id of the wrong kind or shape.");
    RequestInvalidCursor = ("REQUEST_INVALID_CURSOR", 400, "The pagination cursor was not issued by this endpoint for this sort order. Start again without a cursor.");
    RequestIdempotencyKeyMissing = ("REQUEST_IDEMPOTENCY_KEY_MISSING", 400, "This endpoint changes money or stock and needs an `Idempotency-Key` header: a value unique to this attempt (a UUID will do), sent again unchanged when retrying it.");
    RequestIdempotencyKeyInvalid = ("REQUEST_IDEMPOTENCY_KEY_INVALID", 400, "The `Idempotency-Key` header is empty, longer than 255 characters, or not printable ASCII.");
    RequestIdempotencyKeyReused = ("REQUEST_IDEMPOTENCY_KEY_REUSED", 422, "This `Idempotency-Key` was already used with a different request (another body or endpoint). Use a new key for a new request. Nothing was changed.");
    RequestInProgress = ("REQUEST_IN_PROGRESS", 409, "A request with this `Idempotency-Key` is still being processed. Wait the `Retry-After` seconds and send it again unchanged to get its answer.");
    ValidationFailed = ("VALIDATION_FAILED", 422, "The request is well-formed but breaks a rule: `details.fields` lists each field and what is wrong with it. Nothing was changed.");
    RouteNotFound = ("ROUTE_NOT_FOUND", 404, "No endpoint has this path. See `/api/v1/openapi.json`.");
    MethodNotAllowed = ("METHOD_NOT_ALLOWED", 405, "The endpoint exists but does not accept this HTTP method.");
    ApiVersionUnsupported = ("API_VERSION_UNSUPPORTED", 400, "The `Api-Version` header names a version this server does not serve, or contradicts the version in the path. Supported: `1`.");
    // Authentication and authorization.
    AuthRequired = ("AUTH_REQUIRED", 401, "This operation needs credentials: send `Authorization: Bearer <token>` (or `Authorization: ApiKey <key>` for a service account).");
    AuthInvalidToken = ("AUTH_INVALID_TOKEN", 401, "The credentials sent are not valid: malformed, signed by an unknown key, for another issuer or audience, or not yet valid.");
    AuthTokenExpired = ("AUTH_TOKEN_EXPIRED", 401, "The access token has expired. Get a new one with `POST /api/v1/auth/refresh`.");
    AuthForbidden = ("AUTH_FORBIDDEN", 403, "The caller is authenticated but may not do this: the operation needs the permission in `details.permission`, or the resource belongs to someone else.");
    AuthAccountDisabled = ("AUTH_ACCOUNT_DISABLED", 403, "An administrator has disabled the account. Its tokens no longer work and it cannot log in.");
    AuthApiKeyInvalid = ("AUTH_API_KEY_INVALID", 401, "The API key sent as `Authorization: ApiKey <key>` is unknown, revoked or expired.");
    AuthUserRequired = ("AUTH_USER_REQUIRED", 403, "The operation acts for a signed-in person (their own account, cart or orders); an API key cannot call it.");
    // Server side. A 5xx body never contains internal detail: quote `meta.request_id` to the operator, who finds the cause in the logs.
    InternalError = ("INTERNAL_ERROR", 500, "An unexpected fault on the server. The request id in `meta.request_id` finds it in the logs.");
    ServerTimeout = ("SERVER_TIMEOUT", 503, "The server could not finish the request in time (`server.request_timeout_ms`). It may or may not have taken effect; retry only idempotent requests.");
    ServiceNotReady = ("SERVICE_NOT_READY", 503, "A dependency the service needs (such as the database) is not answering. `details` says which.");
    // The gateway (`agora gateway`), in front of the services.
    GatewayUpstreamFailed = ("GATEWAY_UPSTREAM_FAILED", 502, "The gateway could not get an answer from the service behind this route: the connection was refused or reset, or the answer was not valid HTTP. A request with a body may or may not have taken effect; retry it only with its `Idempotency-Key`.");
    GatewayUpstreamTimeout = ("GATEWAY_UPSTREAM_TIMEOUT", 504, "The service behind this route did not answer within the gateway's timeout for it (`upstreams.<name>.request_timeout_ms`). The request may or may not have taken effect; retry only idempotent requests.");
    GatewayUnavailable = ("GATEWAY_UNAVAILABLE", 503, "Every instance of the service behind this route is failing its health checks or has its circuit breaker open: the gateway answers at once instead of waiting. Retry after the `Retry-After` seconds.");
    GatewayRequestIncomplete = ("GATEWAY_REQUEST_INCOMPLETE", 400, "The request's body did not arrive in full: the client stopped sending it, or sent it slower than the route's `request_timeout_ms`. Nothing was forwarded.");
    GatewayRateLimited = ("GATEWAY_RATE_LIMITED", 429, "Too many requests from this client address or, with a token checked at the gateway, from this account (`rate_limit.per_client`, `rate_limit.per_subject` in the gateway's configuration). Nothing was forwarded. Wait the `Retry-After` seconds (also in `details.retry_after_secs`); `details.limit` says which limit it was.");
    GatewayAuthUnavailable = ("GATEWAY_AUTH_UNAVAILABLE", 503, "The gateway checks access tokens against the identity service's published keys and has not been able to read them (`auth.jwks_url` in its configuration). Only routes that require a token (`require_auth`) are refused; nothing was forwarded. Retry after the `Retry-After` seconds.");
    // Identity.
    IdentityEmailTaken = ("IDENTITY_EMAIL_TAKEN", 409, "An account with this email already exists. Emails are compared after trimming and lower-casing.");
    IdentityInvalidCredentials = ("IDENTITY_INVALID_CREDENTIALS", 401, "The email and password do not match an account. The answer is the same whether or not the email exists.");
    IdentityRefreshTokenInvalid = ("IDENTITY_REFRESH_TOKEN_INVALID", 401, "The refresh token is unknown or expired, or its session has ended (logout, password change, disabled account). Log in again.");
    IdentityUserNotFound = ("IDENTITY_USER_NOT_FOUND", 404, "No account has this id (or the signed-in account no longer exists).");
    IdentityRefreshTokenReused = ("IDENTITY_REFRESH_TOKEN_REUSED", 401, "The refresh token was already used once. As a precaution against theft its whole session has been revoked: log in again.");
    IdentityApiKeyNotFound = ("IDENTITY_API_KEY_NOT_FOUND", 404, "No API key has this id.");
    IdentityMfaRequired = ("IDENTITY_MFA_REQUIRED", 401, "The password was right and the account has a second factor: send `details.challenge_token` with a TOTP or recovery code to `POST /api/v1/auth/login/mfa` within `details.expires_in` seconds.");
    IdentityMfaChallengeInvalid = ("IDENTITY_MFA_CHALLENGE_INVALID", 401, "The MFA challenge token is unknown, expired, already used, or spent by too many wrong codes. Log in again with the password.");
    IdentityMfaCodeInvalid = ("IDENTITY_MFA_CODE_INVALID", 401, "The second-factor code is wrong or was already used: a TOTP code works once (a replay of the same 30-second step is refused) and within one step of clock drift; a recovery code works once.");
    IdentityMfaAlreadyEnabled = ("IDENTITY_MFA_ALREADY_ENABLED", 409, "The account already has a confirmed second factor. Disable it first to enrol a new one.");
    IdentityMfaNotEnabled = ("IDENTITY_MFA_NOT_ENABLED", 409, "The account has no second factor in that state: nothing is waiting for confirmation, or nothing is enabled to disable or renew codes for.");
    IdentityOidcProviderUnknown = ("IDENTITY_OIDC_PROVIDER_UNKNOWN", 404, "No OpenID Connect provider has this name. The configured ones are the keys of `auth.oidc`.");
    IdentityOidcStateInvalid = ("IDENTITY_OIDC_STATE_INVALID", 400, "The callback's `state` is unknown, expired (after 10 minutes) or already used, or belongs to another provider or another browser (the `agora_oidc` cookie set by `/start` is missing or different). Start the login again.");
    IdentityOidcNonceMismatch = ("IDENTITY_OIDC_NONCE_MISMATCH", 401, "The provider's ID token does not carry the nonce this login sent: it was issued for another login, and is refused.");
    IdentityOidcIdTokenInvalid = ("IDENTITY_OIDC_ID_TOKEN_INVALID", 401, "The provider's ID token is not valid: not signed by one of the provider's published keys, for another issuer or client, expired, or signed with a symmetric algorithm.");
    IdentityOidcEmailUnverified = ("IDENTITY_OIDC_EMAIL_UNVERIFIED", 403, "The provider gave no verified email for this account, so it can be neither linked to an account nor used to create one.");
    IdentityOidcDenied = ("IDENTITY_OIDC_DENIED", 401, "The provider did not authorize the login (the user declined or the provider refused), or refused the authorization code (expired or already used: `invalid_grant`); `details.error` holds the provider's error code.");
    IdentityOidcProviderFailed = ("IDENTITY_OIDC_PROVIDER_FAILED", 502, "The OpenID Connect provider could not be reached, or answered something unusable (discovery document, keys or token exchange). Try again later.");
    IdentityLoginThrottled = ("IDENTITY_LOGIN_THROTTLED", 429, "Too many failed logins recently from this address or for this email. Wait the `Retry-After` seconds (also in `details.retry_after_secs`), then try again.");
    IdentityAccountLocked = ("IDENTITY_ACCOUNT_LOCKED", 429, "After repeated failed logins this email is locked for a while (`auth.login.lockout_secs`), even with the right password. Wait the `Retry-After` seconds. The answer is the same whether or not an account has this email.");
    // Inventory.
    InventoryUnknownProduct = ("INVENTORY_UNKNOWN_PRODUCT", 404, "No product has this id, so it has no stock.");
    InventoryInsufficientStock = ("INVENTORY_INSUFFICIENT_STOCK", 409, "Not enough units are available (on hand minus reserved) for a line; `details` names the product, what is available and what was asked. Nothing was reserved.");
    InventoryBelowReserved = ("INVENTORY_BELOW_RESERVED", 409, "The change would leave fewer units on hand than are reserved for checkouts in progress (or fewer than zero). Nothing was changed.");
    InventoryReservationNotFound = ("INVENTORY_RESERVATION_NOT_FOUND", 404, "No reservation has this key.");
    InventoryReservationConflict = ("INVENTORY_RESERVATION_CONFLICT", 409, "The reservation key is already used with other lines, or the reservation is in a state that does not allow this (committing a released one, releasing a committed one).");
    // Orders.
    OrdersCartEmpty = ("ORDERS_CART_EMPTY", 422, "The cart has nothing to check out. Nothing was changed.");
    OrdersProductUnavailable = ("ORDERS_PRODUCT_UNAVAILABLE", 422, "A cart line is for a product that no longer exists or is not for sale; `details.product_ids` lists them. Remove them from the cart and check out again. Nothing was changed.");
    OrdersCurrencyMismatch = ("ORDERS_CURRENCY_MISMATCH", 422, "The cart's products are priced in more than one currency, and an order is paid in one. `details.currencies` lists them. Nothing was changed.");
    OrdersOutOfStock = ("ORDERS_OUT_OF_STOCK", 409, "Not enough units were available for a line; `details` names the product, what is available and what was asked. The order was cancelled and nothing was charged; `details.order_id` names it.");
    OrdersPaymentDeclined = ("ORDERS_PAYMENT_DECLINED", 402, "The payment provider declined the payment; `details.reason` holds its code (e.g. `card_declined`, `insufficient_funds`). The order was cancelled and its stock released; `details.order_id` names it.");
    OrdersPaymentUnavailable = ("ORDERS_PAYMENT_UNAVAILABLE", 502, "The payment provider failed or did not answer in time, even after retries. The order was cancelled, nothing was charged and its stock was released; `details.order_id` names it. Try again later with a new `Idempotency-Key`.");
    OrdersOrderNotFound = ("ORDERS_ORDER_NOT_FOUND", 404, "No order has this id, or it is not the caller's.");
    OrdersInvalidTransition = ("ORDERS_INVALID_TRANSITION", 409, "The order's status does not allow this (e.g. cancelling a fulfilled or refunded order, refunding an unpaid one); `details` names the status. Nothing was changed.");
    OrdersRefundExceedsPaid = ("ORDERS_REFUND_EXCEEDS_PAID", 422, "The refund is larger than what is left to refund of the order (`details.refundable_minor`). Nothing was changed.");
    // Payments.
    PaymentsPaymentNotFound = ("PAYMENTS_PAYMENT_NOT_FOUND", 404, "No payment has this id.");
    PaymentsInvalidState = ("PAYMENTS_INVALID_STATE", 409, "The payment's status does not allow this (capturing a voided payment, voiding a captured one, refunding an uncaptured one); `details.status` names it. Nothing was changed.");
    PaymentsRefundExceedsCaptured = ("PAYMENTS_REFUND_EXCEEDS_CAPTURED", 422, "The refund is larger than what was captured and not yet refunded (`details.refundable_minor`), or in another currency. Nothing was changed.");
    PaymentsProviderUnavailable = ("PAYMENTS_PROVIDER_UNAVAILABLE", 502, "The payment provider failed or did not answer in time. Retrying with the same `Idempotency-Key` is safe: the provider does the work at most once.");
    PaymentsUnknownProvider = ("PAYMENTS_UNKNOWN_PROVIDER", 404, "No payment provider has this name.");
    PaymentsWebhookSignatureInvalid = ("PAYMENTS_WEBHOOK_SIGNATURE_INVALID", 400, "The webhook's `Agora-Signature` header is missing, malformed, does not match the body, or its timestamp is outside the tolerance window. The event was not stored.");
    PaymentsWebhookInvalid = ("PAYMENTS_WEBHOOK_INVALID", 400, "The webhook is signed correctly but its body is not an event this server understands. The event was not stored.");
    // Cart.
    CartItemNotFound = ("CART_ITEM_NOT_FOUND", 404, "The cart has no line for this product.");
    CartProductUnavailable = ("CART_PRODUCT_UNAVAILABLE", 422, "The product does not exist or is not for sale, so it cannot be added. Nothing was changed.");
    CartQuantityLimit = ("CART_QUANTITY_LIMIT", 422, "A cart line holds at most 99 units; adding these would exceed it. Nothing was changed.");
    CartFull = ("CART_FULL", 422, "A cart holds at most 100 different products. Nothing was changed.");
    CartConflict = ("CART_CONFLICT", 409, "The cart changed while the request ran (it was merged into a customer's cart, or deleted as abandoned). Read the cart again and retry.");
    // Catalog.
    CatalogProductNotFound = ("CATALOG_PRODUCT_NOT_FOUND", 404, "No product has this id (or it is inactive and the caller is not staff).");
    CatalogCategoryNotFound = ("CATALOG_CATEGORY_NOT_FOUND", 404, "No category has this id.");
    CatalogUnknownCategory = ("CATALOG_UNKNOWN_CATEGORY", 422, "The `category_id` (or `parent_id`) in the body names no existing category. Nothing was changed.");
    CatalogSkuTaken = ("CATALOG_SKU_TAKEN", 409, "Another product already has this SKU. SKUs are unique.");
    CatalogSlugTaken = ("CATALOG_SLUG_TAKEN", 409, "Another product already has this slug. Send a different `slug`.");
    CatalogCategorySlugTaken = ("CATALOG_CATEGORY_SLUG_TAKEN", 409, "Another category already has this slug.");
    CatalogCategoryInUse = ("CATALOG_CATEGORY_IN_USE", 409, "The category still has products or subcategories; move or delete them first.");
    CatalogCategoryCycle = ("CATALOG_CATEGORY_CYCLE", 422, "The new `parent_id` would make the category its own ancestor.");
    CatalogImageMissing = ("CATALOG_IMAGE_MISSING", 400, "The upload is not a `multipart/form-data` body with the image in a part named `file` (and at most an `alt` text part beside it). Nothing was stored.");
    CatalogImageTooLarge = ("CATALOG_IMAGE_TOO_LARGE", 413, "The image is larger than the server accepts: more bytes than `details.max_bytes` (`storage.max_image_bytes`), or more than `details.max_side` pixels a side or `details.max_pixels` pixels. Nothing was stored.");
    CatalogImageUnsupported = ("CATALOG_IMAGE_UNSUPPORTED", 415, "The file is not a JPEG, PNG or WebP image. The type is read from the bytes themselves, never from the file name or the declared content type. Nothing was stored.");
    CatalogImageInvalid = ("CATALOG_IMAGE_INVALID", 422, "The file starts like a JPEG, PNG or WebP image but does not decode: it is truncated or corrupt. Nothing was stored.");
    CatalogImageLimit = ("CATALOG_IMAGE_LIMIT", 409, "The product already has the most images it may have (`details.max_images`). Delete one first. Nothing was stored.");
    CatalogImageNotFound = ("CATALOG_IMAGE_NOT_FOUND", 404, "The product has no image with this id.");
    MediaNotFound = ("MEDIA_NOT_FOUND", 404, "No stored image or rendition has this key.");
    // Events (operations).
    EventsUnknownConsumer = ("EVENTS_UNKNOWN_CONSUMER", 404, "No consumer of this name is subscribed (in this process for the in-process bus; on the server for NATS). Nothing was replayed.");
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Renders the table as the Markdown page `docs/errors.md`.
pub fn render_error_catalogue_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\n\
         <!-- Generated from crates/kernel/src/error.rs by `agora errors --markdown`. Do not edit by hand: a test fails when this file and the table differ. -->\n\n\
         Every failed response has the shape\n\n\
         ```json\n{\"success\":false,\"error\":{\"code\":\"…\",\"message\":\"…\",\"details\":…},\"meta\":{\"request_id\":\"…\",\"api_version\":\"1\"}}\n```\n\n\
         and one of the codes below. A code always comes with the same HTTP status. Codes are never renamed or reused.\n\
         The same table is served at `GET /api/v1/errors`.\n\n\
         | code | HTTP status | meaning |\n|---|---|---|\n",
    );
    for code in ErrorCode::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            code.as_str(),
            code.status().as_u16(),
            code.description().replace('|', "\\|")
        ));
    }
    out
}

/// The internal cause of a server-side failure, attached to the response so the
/// logging middleware can record it (once, inside the request's span). It never
/// reaches the client.
#[derive(Debug, Clone)]
pub struct ErrorReport(pub String);

/// An error answer of the API: a code, a human-readable message and optional
/// structured details.
pub struct ApiError {
    code: ErrorCode,
    message: Cow<'static, str>,
    details: Option<serde_json::Value>,
    cause: Option<String>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with `code` and a message for the client.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            cause: None,
            retry_after_secs: None,
        }
    }

    /// An error whose message is the code's description.
    pub fn from_code(code: ErrorCode) -> Self {
        Self::new(code, code.description())
    }

    /// An unexpected server fault. The cause chain is logged, never shown.
    pub fn internal(cause: impl fmt::Display) -> Self {
        Self {
            cause: Some(format!("{cause:#}")),
            ..Self::from_code(ErrorCode::InternalError)
        }
    }

    /// A `VALIDATION_FAILED` error listing each field and what is wrong with it.
    pub fn validation(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [one] => format!("`{}` {}", one.field, one.message),
            _ => format!("{} fields are invalid", fields.len()),
        };
        Self::new(ErrorCode::ValidationFailed, message)
            .with_details(serde_json::json!({ "fields": fields }))
    }

    /// Adds structured details for the client.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Tells the client when to try again: the `Retry-After` header and
    /// `details.retry_after_secs` (at least one second).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        let secs = secs.max(1);
        self.retry_after_secs = Some(secs);
        self.with_details(serde_json::json!({ "retry_after_secs": secs }))
    }

    /// Adds an internal cause for the log (never shown to the client).
    pub fn with_cause(mut self, cause: impl fmt::Display) -> Self {
        self.cause = Some(format!("{cause:#}"));
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The client-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("code", &self.code)
            .field("message", &self.message)
            .field("cause", &self.cause)
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The field's name as the client sent it (dotted for nested fields).
    pub field: Cow<'static, str>,
    /// What is wrong with it.
    pub message: Cow<'static, str>,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        // A server fault shows only the code's description; its cause goes to the log.
        let (message, details) =
            if status.is_server_error() && self.code == ErrorCode::InternalError {
                (self.code.description(), None)
            } else {
                (&*self.message, self.details.as_ref())
            };
        let body = ErrorBody {
            code: self.code,
            message,
            details,
        };
        let mut response = envelope::render(status, envelope::Payload::Error(&body), None);
        response.extensions_mut().insert(self.code);
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorReport(cause));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_is_unique_upper_snake_case_and_described() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} is listed twice");
            assert!(
                s.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{s} is not UPPER_SNAKE_CASE"
            );
            assert!(
                code.description().ends_with('.'),
                "{s} needs a full-sentence description"
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    #[test]
    fn docs_errors_md_is_generated_from_the_table() {
        // Regenerate with `AGORA_BLESS=1 cargo test -p agora-kernel` (or
        // `agora errors --markdown > docs/errors.md`).
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/errors.md");
        let expected = render_error_catalogue_markdown();
        if std::env::var_os("AGORA_BLESS").is_some() {
            std::fs::write(&path, &expected).unwrap_or_else(|e| panic!("{e}"));
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "docs/errors.md differs from the error table: run `AGORA_BLESS=1 cargo test -p agora-kernel`"
        );
    }

    #[test]
    fn an_internal_error_hides_its_cause_from_the_client() {
        let response =
            ApiError::internal("connection refused to 10.0.0.5: password=hunter2").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let report = response
            .extensions()
            .get::<ErrorReport>()
            .map(|r| r.0.clone());
        assert_eq!(
            report.as_deref(),
            Some("connection refused to 10.0.0.5: password=hunter2")
        );
    }

    #[test]
    fn a_validation_error_names_its_fields() {
        let e = ApiError::validation(vec![FieldError::new("name", "must not be empty")]);
        assert_eq!(e.code(), ErrorCode::ValidationFailed);
        assert_eq!(e.message(), "`name` must not be empty");
    }
}
