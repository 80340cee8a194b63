//! The payments' REST routes (under `/api/v1`): the provider's webhook, and the
//! staff routes that list, show and refund payments. No route ever shows a
//! provider token: of the card, only its brand and last four digits.

use agora_contracts::payments::PaymentStatus;
use agora_kernel::access::require::PaymentsManage;
use agora_kernel::pagination::Limit;
use agora_kernel::validation::{Problems, has_control_characters, parse_reason};
use agora_kernel::{ApiError, ApiResponse, Cursor, ErrorCode, Money, PaymentId};
use agora_platform::auth::Authorized;
use agora_platform::http::{AppJson, AppPath, AppQuery, IdempotencyKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::routing::{get, post};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::service::{PaymentDetails, Payments};
use crate::store::{
    AttemptRecord, Operation, OperationKind, OperationStatus, PaymentCursor, PaymentFilter,
    PaymentRecord, ProviderEventRecord,
};
use crate::webhook::SIGNATURE_HEADER;

/// The longest reference to filter by, in characters.
const MAX_REFERENCE: usize = 255;

/// The routes under `/api/v1`. The webhook route is public (the signature is
/// its credential); the others need `payments:manage`.
pub fn router(payments: Payments) -> Router {
    Router::new()
        .route("/webhooks/payments/{provider}", post(receive_webhook))
        .route("/payments", get(list_payments))
        .route("/payments/{payment_id}", get(payment_details))
        .route("/payments/{payment_id}/refunds", post(refund))
        .with_state(payments)
}

/// How a webhook was taken.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct WebhookReceipt {
    /// Always true: the event is stored.
    pub received: bool,
    /// The event was delivered before; nothing was changed.
    pub duplicate: bool,
}

/// Receive a payment provider's webhook (public; signed).
#[utoipa::path(
    post, path = "/webhooks/payments/{provider}", tag = "payments",
    params(
        ("provider" = String, Path, description = "The provider's name, e.g. `simulated`"),
        ("Agora-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">`"),
    ),
    request_body(content = String, content_type = "application/json", description = "The event: `{\"id\",\"type\":\"payment.authorized|declined|captured|voided|refunded\",\"created\",\"data\":{\"provider_ref\",\"amount_minor\",\"currency\",\"captured_minor\",\"refunded_minor\"}}`"),
    responses(
        (status = 200, description = "Stored (and applied when it moves the payment forward); `duplicate` when it was delivered before.", body = inline(agora_kernel::envelope::Success<WebhookReceipt>)),
        (status = 400, description = "`PAYMENTS_WEBHOOK_SIGNATURE_INVALID`, `PAYMENTS_WEBHOOK_INVALID`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`PAYMENTS_UNKNOWN_PROVIDER`", body = agora_kernel::envelope::Failure),
    )
)]
async fn receive_webhook(
    State(payments): State<Payments>,
    AppPath(provider): AppPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<ApiResponse<WebhookReceipt>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::from_code(ErrorCode::RequestBodyTooLarge)
        } else {
            ApiError::from_code(ErrorCode::PaymentsWebhookInvalid).with_cause(rejection)
        }
    })?;
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let receipt = payments
        .receive_webhook(&provider, signature, &body)
        .await?;
    Ok(ApiResponse::ok(WebhookReceipt {
        received: true,
        duplicate: receipt.duplicate,
    }))
}

/// Which payments to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListPaymentsQuery {
    /// Only payments in this status: `processing`, `authorized`, `declined`,
    /// `voided`, `captured`, `partially_refunded` or `refunded`.
    #[param(value_type = Option<String>)]
    status: Option<PaymentStatus>,
    /// Only payments for this reference (e.g. an order id), exactly.
    reference: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// `meta.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List payments, newest first (`payments:manage`).
#[utoipa::path(
    get, path = "/payments", tag = "payments",
    params(ListPaymentsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of payments; `meta.next_cursor` when there are more.", body = inline(agora_kernel::envelope::Success<Vec<PaymentRecord>>)),
        (status = 400, description = "`REQUEST_INVALID_QUERY`, `REQUEST_INVALID_CURSOR`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
    )
)]
async fn list_payments(
    State(payments): State<Payments>,
    _staff: Authorized<PaymentsManage>,
    AppQuery(query): AppQuery<ListPaymentsQuery>,
) -> Result<ApiResponse<Vec<PaymentRecord>>, ApiError> {
    let reference = query.reference.map(|r| r.trim().to_string());
    if let Some(r) = &reference
        && (r.is_empty() || r.chars().count() > MAX_REFERENCE || has_control_characters(r))
    {
        return Err(
            ApiError::new(ErrorCode::RequestInvalidQuery, "the query is out of range")
                .with_details(serde_json::json!({ "fields": [{
                    "field": "reference",
                    "message": format!("must have 1 to {MAX_REFERENCE} characters and no control characters"),
                }] })),
        );
    }
    let after = match query.cursor.as_deref() {
        Some(c) => {
            let cursor: PaymentCursor = Cursor::decode(c)?;
            if !cursor.is_valid() {
                return Err(ApiError::from_code(ErrorCode::RequestInvalidCursor));
            }
            Some(cursor)
        }
        None => None,
    };
    let filter = PaymentFilter {
        status: query.status,
        reference,
    };
    let page = payments
        .list(&filter, after, query.limit.unwrap_or_default())
        .await?;
    Ok(ApiResponse::ok(page.items).with_next_cursor(page.next_cursor))
}

/// A payment with its refunds, provider attempts and webhook events
/// (`payments:manage`).
#[utoipa::path(
    get, path = "/payments/{payment_id}", tag = "payments",
    params(("payment_id" = String, Path, description = "The payment's id, `pay_…`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The payment and its history.", body = inline(agora_kernel::envelope::Success<PaymentDetails>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`PAYMENTS_PAYMENT_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn payment_details(
    State(payments): State<Payments>,
    _staff: Authorized<PaymentsManage>,
    AppPath(payment_id): AppPath<PaymentId>,
) -> Result<ApiResponse<PaymentDetails>, ApiError> {
    Ok(ApiResponse::ok(payments.details(payment_id).await?))
}

/// A refund of captured money. Give the amount either as money or in minor
/// units of the payment's currency.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The amount, in the payment's currency.
    amount: Option<Money>,
    /// Or: the amount in minor units of the payment's currency.
    #[schema(example = 500)]
    amount_minor: Option<i64>,
    /// Why, 1 to 200 characters.
    #[schema(example = "damaged in transit")]
    reason: String,
}

/// Refund part or all of a captured payment (`payments:manage`). Needs an
/// `Idempotency-Key`: a retry with the same key and body refunds once.
#[utoipa::path(
    post, path = "/payments/{payment_id}/refunds", tag = "payments",
    params(
        ("payment_id" = String, Path, description = "The payment's id, `pay_…`"),
        ("Idempotency-Key" = String, Header, description = "1 to 255 printable ASCII characters, unique to this refund"),
    ),
    request_body = RefundRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The payment after the refund.", body = inline(agora_kernel::envelope::Success<PaymentRecord>)),
        (status = 400, description = "`REQUEST_IDEMPOTENCY_KEY_MISSING`, `REQUEST_IDEMPOTENCY_KEY_INVALID`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`PAYMENTS_PAYMENT_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`PAYMENTS_INVALID_STATE`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`PAYMENTS_REFUND_EXCEEDS_CAPTURED`, `REQUEST_IDEMPOTENCY_KEY_REUSED`, `VALIDATION_FAILED`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
        (status = 502, description = "`PAYMENTS_PROVIDER_UNAVAILABLE`: retry with the same key", body = agora_kernel::envelope::Failure),
    )
)]
async fn refund(
    State(payments): State<Payments>,
    Authorized(staff, _): Authorized<PaymentsManage>,
    AppPath(payment_id): AppPath<PaymentId>,
    IdempotencyKey(key): IdempotencyKey,
    AppJson(body): AppJson<RefundRequest>,
) -> Result<ApiResponse<PaymentRecord>, ApiError> {
    let mut p = Problems::default();
    let reason = p.check("reason", parse_reason(&body.reason));
    let amount = match (body.amount, body.amount_minor) {
        (Some(_), Some(_)) | (None, None) => {
            p.add("amount", "give exactly one of `amount` and `amount_minor`");
            None
        }
        (Some(m), None) if m.amount_minor() <= 0 => {
            p.add("amount", "must be positive");
            None
        }
        (None, Some(n)) if n <= 0 => {
            p.add("amount_minor", "must be positive");
            None
        }
        (Some(m), None) => Some(Ok(m)),
        (None, Some(n)) => Some(Err(n)),
    };
    let (amount, reason) = p.finish(|| Some((amount?, reason?)))?;
    let payment = payments.payment_record(payment_id).await?;
    let amount = match amount {
        Ok(money) => money,
        Err(minor) => Money::new(minor, payment.amount.currency()).map_err(|e| {
            ApiError::validation(vec![agora_kernel::error::FieldError::new(
                "amount_minor",
                e.to_string(),
            )])
        })?,
    };
    // Keys are the caller's own: another caller's key never collides with it.
    let key = format!("staff:{}:{key}", staff.subject);
    let payment = payments
        .refund_payment(&key, payment_id, amount, &reason)
        .await?;
    Ok(ApiResponse::ok(payment))
}

/// The payments' part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(receive_webhook, list_payments, payment_details, refund),
    components(schemas(
        PaymentRecord,
        PaymentDetails,
        Operation,
        OperationKind,
        OperationStatus,
        AttemptRecord,
        ProviderEventRecord,
        RefundRequest,
        WebhookReceipt
    )),
    tags((name = "payments", description = "Payments and their refunds (staff), and the provider's webhooks"))
)]
pub struct PaymentsApi;
