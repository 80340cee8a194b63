//! The orders module's REST routes (under `/api/v1`): checkout, the caller's
//! orders, and staff actions.

use agora_kernel::access::require::OrdersManage;
use agora_kernel::pagination::Limit;
use agora_kernel::validation::{Problems, parse_reason};
use agora_kernel::{
    ApiError, ApiResponse, Cursor, ErrorCode, OrderId, Permission, Principal, UserId,
};
use agora_platform::auth::{Authenticated, Authorized, SignedInUser};
use agora_platform::http::{AppJson, AppPath, AppQuery, IdempotencyKey};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::domain::{Order, OrderStatus};
use crate::error::OrderError;
use crate::service::Orders;
use crate::store::{OrderCursor, OrderFilter, StoredResponse};

/// The longest payment token accepted.
const MAX_TOKEN: usize = 200;

/// The routes under `/api/v1`.
pub fn router(orders: Orders) -> Router {
    Router::new()
        .route("/checkout", post(checkout))
        .route("/orders", get(list))
        .route("/orders/{order_id}", get(show))
        .route("/orders/{order_id}/cancel", post(cancel))
        .route("/orders/{order_id}/refunds", post(refund))
        .route("/orders/{order_id}/fulfil", post(fulfil))
        .with_state(orders)
}

/// What to pay with.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// A token from the payment provider (never a card number); the simulated
    /// provider's test tokens are listed in docs/checkout.md.
    #[schema(example = "tok_visa")]
    payment_token: String,
}

/// Check out the caller's cart.
///
/// Places an order for the cart's lines at today's prices, reserves their stock,
/// authorizes and captures the payment, and confirms the order; or, when a step
/// fails, undoes what was done and cancels the order. Requires an
/// `Idempotency-Key`: sending the same request again with it answers what the
/// first answered, without a second order or charge.
#[utoipa::path(
    post, path = "/checkout", tag = "orders",
    request_body = CheckoutRequest,
    params(("Idempotency-Key" = String, Header, description = "Unique per checkout attempt, 1–255 printable ASCII characters; resend it unchanged when retrying.")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The confirmed order.", body = inline(agora_kernel::envelope::Success<Order>)),
        (status = 400, description = "`REQUEST_IDEMPOTENCY_KEY_MISSING`, `REQUEST_IDEMPOTENCY_KEY_INVALID`", body = agora_kernel::envelope::Failure),
        (status = 401, description = "`AUTH_REQUIRED`", body = agora_kernel::envelope::Failure),
        (status = 402, description = "`ORDERS_PAYMENT_DECLINED`: the order was cancelled", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_USER_REQUIRED`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`ORDERS_OUT_OF_STOCK` (the order was cancelled), `REQUEST_IN_PROGRESS`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`ORDERS_CART_EMPTY`, `ORDERS_PRODUCT_UNAVAILABLE`, `ORDERS_CURRENCY_MISMATCH`, `REQUEST_IDEMPOTENCY_KEY_REUSED`, `VALIDATION_FAILED`", body = agora_kernel::envelope::Failure),
        (status = 502, description = "`ORDERS_PAYMENT_UNAVAILABLE`: the order was cancelled", body = agora_kernel::envelope::Failure),
        (status = 503, description = "`SERVICE_NOT_READY`: the inventory failed (the order was cancelled), or the database is overloaded", body = agora_kernel::envelope::Failure),
    )
)]
async fn checkout(
    State(orders): State<Orders>,
    SignedInUser(user, _): SignedInUser,
    key: IdempotencyKey,
    AppJson(body): AppJson<CheckoutRequest>,
) -> Result<ApiResponse<serde_json::Value>, ApiError> {
    let mut p = Problems::default();
    let token = p.check("payment_token", check_text(&body.payment_token, MAX_TOKEN));
    let token = p.finish(|| token)?;
    let response = orders.checkout(user, &key.0, &token).await?;
    replay(response)
}

/// A stored checkout response, as an answer.
fn replay(response: StoredResponse) -> Result<ApiResponse<serde_json::Value>, ApiError> {
    let StoredResponse { status, mut body } = response;
    if status < 300 {
        let data = body
            .get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or_default();
        let id = data.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        let location = format!("/api/v1/orders/{id}");
        return Ok(ApiResponse::created(data, &location));
    }
    let error = body.get_mut("error").map(serde_json::Value::take);
    let code = error
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .and_then(|c| ErrorCode::ALL.iter().copied().find(|x| x.as_str() == c))
        .unwrap_or(ErrorCode::InternalError);
    let details = error
        .and_then(|mut e| e.get_mut("details").map(serde_json::Value::take))
        .unwrap_or_default();
    Err(ApiError::from_code(code).with_details(details))
}

fn check_text(raw: &str, max: usize) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() || text.chars().count() > max {
        return Err(format!("must have 1 to {max} characters"));
    }
    if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("must be printable ASCII".into());
    }
    Ok(text.to_string())
}

/// Which orders, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// Only orders in this status.
    status: Option<String>,
    /// Only this customer's orders (staff; customers see only their own).
    user_id: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// `meta.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The caller's orders, newest first; staff (`orders:manage`) see everyone's and
/// may filter by customer.
#[utoipa::path(
    get, path = "/orders", tag = "orders",
    params(OrdersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of orders; `meta.next_cursor` when there are more.", body = inline(agora_kernel::envelope::Success<Vec<Order>>)),
        (status = 400, description = "`REQUEST_INVALID_QUERY`, `REQUEST_INVALID_CURSOR`", body = agora_kernel::envelope::Failure),
        (status = 401, description = "`AUTH_REQUIRED`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`: another customer's orders", body = agora_kernel::envelope::Failure),
    )
)]
async fn list(
    State(orders): State<Orders>,
    Authenticated(caller): Authenticated,
    AppQuery(query): AppQuery<OrdersQuery>,
) -> Result<ApiResponse<Vec<Order>>, ApiError> {
    let invalid = |what: &str| ApiError::new(ErrorCode::RequestInvalidQuery, what.to_string());
    let status = query
        .status
        .as_deref()
        .map(|s| OrderStatus::parse(s).ok_or_else(|| invalid("`status` is not an order status")))
        .transpose()?;
    let user_id = query
        .user_id
        .as_deref()
        .map(|u| UserId::parse(u).map_err(|_| invalid("`user_id` is not a user id")))
        .transpose()?;
    let filter = OrderFilter {
        status,
        user_id: scope(&caller, user_id)?,
        ..OrderFilter::default()
    };
    let after: Option<OrderCursor> = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = query.limit.unwrap_or_default();
    let mut page = orders
        .orders(&filter, after.as_ref(), i64::from(limit.get()) + 1)
        .await?;
    let next = if page.len() > limit.get() as usize {
        page.truncate(limit.get() as usize);
        page.last().map(|(_, c)| Cursor::encode(c))
    } else {
        None
    };
    Ok(ApiResponse::ok(page.into_iter().map(|(o, _)| o).collect()).with_next_cursor(next))
}

/// Whose orders the caller may list: staff anyone's, a customer only their own.
fn scope(caller: &Principal, asked: Option<UserId>) -> Result<Option<UserId>, ApiError> {
    if caller.can(Permission::OrdersManage) {
        return Ok(asked);
    }
    let me = caller
        .user_id()
        .ok_or_else(|| ApiError::from_code(ErrorCode::AuthForbidden))?;
    match asked {
        Some(other) if other != me => Err(ApiError::from_code(ErrorCode::AuthForbidden)),
        _ => Ok(Some(me)),
    }
}

/// One order: the caller's own, or any for staff.
#[utoipa::path(
    get, path = "/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "The order's id, `ord_…`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order.", body = inline(agora_kernel::envelope::Success<Order>)),
        (status = 401, description = "`AUTH_REQUIRED`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`ORDERS_ORDER_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn show(
    State(orders): State<Orders>,
    Authenticated(caller): Authenticated,
    AppPath(order_id): AppPath<OrderId>,
) -> Result<ApiResponse<Order>, ApiError> {
    let order = orders.order(order_id).await?;
    if !caller.may_act_for(order.user_id, Permission::OrdersManage) {
        // Someone else's order is answered as if it did not exist.
        return Err(OrderError::NotFound.into());
    }
    Ok(ApiResponse::ok(order))
}

/// Why staff cancel an order.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelRequest {
    /// Why, 1 to 200 characters (kept on the order and in its event).
    #[schema(example = "customer asked before shipping")]
    reason: String,
}

/// Cancel a confirmed, unshipped order (`orders:manage`): its payment is refunded
/// in full.
#[utoipa::path(
    post, path = "/orders/{order_id}/cancel", tag = "orders",
    params(("order_id" = String, Path, description = "The order's id, `ord_…`")),
    request_body = OrderCancelRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cancelled order.", body = inline(agora_kernel::envelope::Success<Order>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`ORDERS_ORDER_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`ORDERS_INVALID_TRANSITION`, `PAYMENTS_INVALID_STATE`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`", body = agora_kernel::envelope::Failure),
        (status = 502, description = "`PAYMENTS_PROVIDER_UNAVAILABLE`: the refund is pending and completes later; retry to finish the cancellation", body = agora_kernel::envelope::Failure),
    )
)]
async fn cancel(
    State(orders): State<Orders>,
    _staff: Authorized<OrdersManage>,
    AppPath(order_id): AppPath<OrderId>,
    AppJson(body): AppJson<OrderCancelRequest>,
) -> Result<ApiResponse<Order>, ApiError> {
    let mut p = Problems::default();
    let reason = p.check("reason", parse_reason(&body.reason));
    let reason = p.finish(|| reason)?;
    Ok(ApiResponse::ok(orders.cancel(order_id, &reason).await?))
}

/// A refund of part or all of an order's payment.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRefundRequest {
    /// How much, in minor units of the order's currency: more than zero, at most
    /// what is left to refund.
    #[schema(example = 500)]
    amount_minor: i64,
    /// Why, 1 to 200 characters.
    #[schema(example = "damaged in transit")]
    reason: String,
}

/// Refund part or all of a paid order (`orders:manage`). Requires an
/// `Idempotency-Key`: a repeat refunds nothing more.
#[utoipa::path(
    post, path = "/orders/{order_id}/refunds", tag = "orders",
    params(
        ("order_id" = String, Path, description = "The order's id, `ord_…`"),
        ("Idempotency-Key" = String, Header, description = "Unique per refund, 1–255 printable ASCII characters."),
    ),
    request_body = OrderRefundRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order, with its refunded amount (and status `refunded` once all was refunded).", body = inline(agora_kernel::envelope::Success<Order>)),
        (status = 400, description = "`REQUEST_IDEMPOTENCY_KEY_MISSING`, `REQUEST_IDEMPOTENCY_KEY_INVALID`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`ORDERS_ORDER_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`ORDERS_INVALID_TRANSITION`: not paid; `PAYMENTS_INVALID_STATE`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`ORDERS_REFUND_EXCEEDS_PAID`, `REQUEST_IDEMPOTENCY_KEY_REUSED`, `VALIDATION_FAILED`", body = agora_kernel::envelope::Failure),
        (status = 502, description = "`PAYMENTS_PROVIDER_UNAVAILABLE`: retry with the same key", body = agora_kernel::envelope::Failure),
    )
)]
async fn refund(
    State(orders): State<Orders>,
    _staff: Authorized<OrdersManage>,
    AppPath(order_id): AppPath<OrderId>,
    key: IdempotencyKey,
    AppJson(body): AppJson<OrderRefundRequest>,
) -> Result<ApiResponse<Order>, ApiError> {
    let mut p = Problems::default();
    let reason = p.check("reason", parse_reason(&body.reason));
    let amount = p.check(
        "amount_minor",
        Some(body.amount_minor)
            .filter(|a| *a > 0)
            .ok_or_else(|| "must be more than zero".to_string()),
    );
    let (reason, _) = p.finish(|| Some((reason?, amount?)))?;
    Ok(ApiResponse::ok(
        orders
            .refund(order_id, body.amount_minor, &reason, &key.0)
            .await?,
    ))
}

/// Mark a confirmed order shipped (`orders:manage`).
#[utoipa::path(
    post, path = "/orders/{order_id}/fulfil", tag = "orders",
    params(("order_id" = String, Path, description = "The order's id, `ord_…`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The fulfilled order.", body = inline(agora_kernel::envelope::Success<Order>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`ORDERS_ORDER_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`ORDERS_INVALID_TRANSITION`", body = agora_kernel::envelope::Failure),
    )
)]
async fn fulfil(
    State(orders): State<Orders>,
    _staff: Authorized<OrdersManage>,
    AppPath(order_id): AppPath<OrderId>,
) -> Result<ApiResponse<Order>, ApiError> {
    Ok(ApiResponse::ok(orders.fulfil(order_id).await?))
}

/// The orders module's part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(checkout, list, show, cancel, refund, fulfil),
    components(schemas(Order, crate::domain::OrderLine, OrderStatus, CheckoutRequest, OrderCancelRequest, OrderRefundRequest)),
    tags((name = "orders", description = "Checkout and orders"))
)]
pub struct OrdersApi;
