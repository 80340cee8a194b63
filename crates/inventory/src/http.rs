//! The inventory's REST routes (under `/api/v1`), for staff.

use agora_kernel::access::require::InventoryManage;
use agora_kernel::pagination::Limit;
use agora_kernel::validation::{Problems, parse_reason};
use agora_kernel::{ApiError, ApiResponse, Cursor, Principal, ProductId};
use agora_platform::auth::Authorized;
use agora_platform::http::{AppJson, AppPath, AppQuery};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::service::Inventory;
use crate::store::{Change, Movement, MovementCursor, StockLevel};

/// The largest stock count staff may set, and the largest single adjustment.
const MAX_STOCK: i64 = 1_000_000_000;

/// The routes under `/api/v1`.
pub fn router(inventory: Inventory) -> Router {
    Router::new()
        .route("/inventory/{product_id}", get(stock).put(set_stock))
        .route("/inventory/{product_id}/adjustments", post(adjust_stock))
        .route("/inventory/{product_id}/movements", get(movements))
        .with_state(inventory)
}

/// A product's stock (`inventory:manage`).
#[utoipa::path(
    get, path = "/inventory/{product_id}", tag = "inventory",
    params(("product_id" = String, Path, description = "The product's id, `prod_…`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "On hand, reserved and available units.", body = inline(agora_kernel::envelope::Success<StockLevel>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`INVENTORY_UNKNOWN_PRODUCT`", body = agora_kernel::envelope::Failure),
    )
)]
async fn stock(
    State(inventory): State<Inventory>,
    _staff: Authorized<InventoryManage>,
    AppPath(product_id): AppPath<ProductId>,
) -> Result<ApiResponse<StockLevel>, ApiError> {
    Ok(ApiResponse::ok(inventory.stock(product_id).await?))
}

/// A stocktake: the count on hand.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    /// Units on hand, 0 to 1,000,000,000; not below the reserved units.
    on_hand: i64,
    /// Why, 1 to 200 characters (kept in the ledger).
    #[schema(example = "stocktake 2026-11")]
    reason: String,
}

/// Set a product's stock on hand (`inventory:manage`).
#[utoipa::path(
    put, path = "/inventory/{product_id}", tag = "inventory",
    params(("product_id" = String, Path, description = "The product's id, `prod_…`")),
    request_body = SetStock,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stock as it is now.", body = inline(agora_kernel::envelope::Success<StockLevel>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`INVENTORY_UNKNOWN_PRODUCT`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`INVENTORY_BELOW_RESERVED`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn set_stock(
    State(inventory): State<Inventory>,
    Authorized(staff, _): Authorized<InventoryManage>,
    AppPath(product_id): AppPath<ProductId>,
    AppJson(body): AppJson<SetStock>,
) -> Result<ApiResponse<StockLevel>, ApiError> {
    let change = if (0..=MAX_STOCK).contains(&body.on_hand) {
        Ok(Change::Set(body.on_hand))
    } else {
        Err(format!("must be between 0 and {MAX_STOCK}"))
    };
    apply(
        &inventory,
        &staff,
        product_id,
        ("on_hand", change),
        &body.reason,
    )
    .await
}

/// A correction of the stock on hand.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    /// Units to add (negative: remove), not zero; on hand may not fall below the
    /// reserved units.
    #[schema(example = -2)]
    delta: i64,
    /// Why, 1 to 200 characters (kept in the ledger).
    #[schema(example = "damaged in transit")]
    reason: String,
}

/// Adjust a product's stock on hand (`inventory:manage`).
#[utoipa::path(
    post, path = "/inventory/{product_id}/adjustments", tag = "inventory",
    params(("product_id" = String, Path, description = "The product's id, `prod_…`")),
    request_body = AdjustStock,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stock as it is now.", body = inline(agora_kernel::envelope::Success<StockLevel>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`INVENTORY_UNKNOWN_PRODUCT`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`INVENTORY_BELOW_RESERVED`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn adjust_stock(
    State(inventory): State<Inventory>,
    Authorized(staff, _): Authorized<InventoryManage>,
    AppPath(product_id): AppPath<ProductId>,
    AppJson(body): AppJson<AdjustStock>,
) -> Result<ApiResponse<StockLevel>, ApiError> {
    let change = if body.delta != 0 && (-MAX_STOCK..=MAX_STOCK).contains(&body.delta) {
        Ok(Change::Adjust(body.delta))
    } else {
        Err(format!(
            "must be between -{MAX_STOCK} and {MAX_STOCK}, not 0"
        ))
    };
    apply(
        &inventory,
        &staff,
        product_id,
        ("delta", change),
        &body.reason,
    )
    .await
}

/// A page of the ledger.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MovementsQuery {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// `meta.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A product's stock ledger, newest first (`inventory:manage`).
#[utoipa::path(
    get, path = "/inventory/{product_id}/movements", tag = "inventory",
    params(("product_id" = String, Path, description = "The product's id, `prod_…`"), MovementsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of movements; `meta.next_cursor` when there are more.", body = inline(agora_kernel::envelope::Success<Vec<Movement>>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`INVENTORY_UNKNOWN_PRODUCT`", body = agora_kernel::envelope::Failure),
    )
)]
async fn movements(
    State(inventory): State<Inventory>,
    _staff: Authorized<InventoryManage>,
    AppPath(product_id): AppPath<ProductId>,
    AppQuery(query): AppQuery<MovementsQuery>,
) -> Result<ApiResponse<Vec<Movement>>, ApiError> {
    let after: Option<MovementCursor> = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page = inventory
        .movements(product_id, after, query.limit.unwrap_or_default())
        .await?;
    Ok(ApiResponse::ok(page.items).with_next_cursor(page.next_cursor))
}

/// Checks a staff change and its reason (every problem at once), then applies it
/// with the caller as the ledger's actor.
async fn apply(
    inventory: &Inventory,
    staff: &Principal,
    product_id: ProductId,
    (field, change): (&'static str, Result<Change, String>),
    reason: &str,
) -> Result<ApiResponse<StockLevel>, ApiError> {
    let mut p = Problems::default();
    let change = p.check(field, change);
    let reason = p.check("reason", parse_reason(reason));
    let (change, reason) = p.finish(|| Some((change?, reason?)))?;
    let actor = staff.subject.to_string();
    Ok(ApiResponse::ok(
        inventory
            .change(product_id, change, &reason, &actor)
            .await?,
    ))
}

/// The inventory's part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(stock, set_stock, adjust_stock, movements),
    components(schemas(StockLevel, Movement, SetStock, AdjustStock)),
    tags((name = "inventory", description = "Stock levels and their ledger (staff)"))
)]
pub struct InventoryApi;
