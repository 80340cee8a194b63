//! The cart's REST routes (under `/api/v1`): the caller's own cart, signed in or
//! anonymous (`Cart-Token`).

use agora_kernel::validation::Problems;
use agora_kernel::{ApiError, ApiResponse, ErrorCode, ProductId, Subject};
use agora_platform::auth::Caller;
use agora_platform::http::{AppJson, AppPath};
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::routing::{get, patch};
use http::HeaderName;
use http::request::Parts;
use serde::Deserialize;

use crate::service::{CartItem, CartView, Carts, Holder, LineStatus};
use crate::store::MAX_LINE_QUANTITY;

/// The header that carries an anonymous cart's token, both ways.
pub static CART_TOKEN: HeaderName = HeaderName::from_static("cart-token");

/// The routes under `/api/v1`.
pub fn router(carts: Carts) -> Router {
    Router::new()
        .route("/cart", get(view).delete(clear))
        .route("/cart/items", axum::routing::post(add))
        .route(
            "/cart/items/{product_id}",
            patch(set_quantity).delete(remove),
        )
        .with_state(carts)
}

/// Whose cart: a signed-in person's (API keys have none), or an anonymous
/// visitor's by `Cart-Token`.
pub struct CartHolder(Holder);

impl<S: Send + Sync> FromRequestParts<S> for CartHolder {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(&CART_TOKEN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match Caller::from_request_parts(parts, state).await? {
            Caller::Anonymous => Ok(CartHolder(Holder::Visitor(token))),
            Caller::Authenticated(p) => match p.subject {
                Subject::User(user) => Ok(CartHolder(Holder::Customer(user, token))),
                Subject::ApiKey(_) => Err(ApiError::from_code(ErrorCode::AuthUserRequired)),
            },
        }
    }
}

fn answer(view: CartView) -> ApiResponse<CartView> {
    let token = view.cart_token.clone();
    let response = ApiResponse::ok(view);
    match token {
        Some(token) => response.with_header(CART_TOKEN.clone(), &token),
        None => response,
    }
}

/// The caller's cart, priced from the catalog now.
#[utoipa::path(
    get, path = "/cart", tag = "cart",
    params(("Cart-Token" = Option<String>, Header, description = "An anonymous cart's token; signed in, it merges that cart into yours")),
    responses(
        (status = 200, description = "The cart; empty when there is none.", body = inline(agora_kernel::envelope::Success<CartView>)),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
    )
)]
async fn view(
    State(carts): State<Carts>,
    CartHolder(holder): CartHolder,
) -> Result<ApiResponse<CartView>, ApiError> {
    Ok(answer(carts.view(&holder).await?))
}

/// Units of a product to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    /// A product for sale.
    #[schema(value_type = String, example = "prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    product_id: String,
    /// 1 to 99; added to the line if the product is already in the cart.
    quantity: i64,
}

/// Add a product to the caller's cart. An anonymous caller without a cart gets
/// one, and its token in `cart_token` and the `Cart-Token` header.
#[utoipa::path(
    post, path = "/cart/items", tag = "cart",
    params(("Cart-Token" = Option<String>, Header, description = "An anonymous cart's token")),
    request_body = AddItem,
    responses(
        (status = 200, description = "The cart as it is now.", body = inline(agora_kernel::envelope::Success<CartView>)),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `CART_PRODUCT_UNAVAILABLE`, `CART_QUANTITY_LIMIT`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn add(
    State(carts): State<Carts>,
    CartHolder(holder): CartHolder,
    AppJson(body): AppJson<AddItem>,
) -> Result<ApiResponse<CartView>, ApiError> {
    let mut p = Problems::default();
    let product = p.check(
        "product_id",
        ProductId::parse(&body.product_id).map_err(|e| e.to_string()),
    );
    let quantity = p.check("quantity", quantity(body.quantity));
    let (product, quantity) = p.finish(|| Some((product?, quantity?)))?;
    Ok(answer(carts.add(&holder, product, quantity).await?))
}

/// A line's new quantity.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuantity {
    /// 1 to 99 (remove the line to have none).
    quantity: i64,
}

/// Change the quantity of a line of the caller's cart.
#[utoipa::path(
    patch, path = "/cart/items/{product_id}", tag = "cart",
    params(("product_id" = String, Path, description = "The product's id, `prod_…`"), ("Cart-Token" = Option<String>, Header, description = "An anonymous cart's token")),
    request_body = SetQuantity,
    responses(
        (status = 200, description = "The cart as it is now.", body = inline(agora_kernel::envelope::Success<CartView>)),
        (status = 404, description = "`CART_ITEM_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`", body = agora_kernel::envelope::Failure),
    )
)]
async fn set_quantity(
    State(carts): State<Carts>,
    CartHolder(holder): CartHolder,
    AppPath(product): AppPath<ProductId>,
    AppJson(body): AppJson<SetQuantity>,
) -> Result<ApiResponse<CartView>, ApiError> {
    let mut p = Problems::default();
    let quantity = p.check("quantity", quantity(body.quantity));
    let quantity = p.finish(|| quantity)?;
    Ok(answer(
        carts.set_quantity(&holder, product, quantity).await?,
    ))
}

/// Remove a line from the caller's cart.
#[utoipa::path(
    delete, path = "/cart/items/{product_id}", tag = "cart",
    params(("product_id" = String, Path, description = "The product's id, `prod_…`"), ("Cart-Token" = Option<String>, Header, description = "An anonymous cart's token")),
    responses(
        (status = 200, description = "The cart as it is now.", body = inline(agora_kernel::envelope::Success<CartView>)),
        (status = 404, description = "`CART_ITEM_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn remove(
    State(carts): State<Carts>,
    CartHolder(holder): CartHolder,
    AppPath(product): AppPath<ProductId>,
) -> Result<ApiResponse<CartView>, ApiError> {
    Ok(answer(carts.remove(&holder, product).await?))
}

/// Empty the caller's cart.
#[utoipa::path(
    delete, path = "/cart", tag = "cart",
    params(("Cart-Token" = Option<String>, Header, description = "An anonymous cart's token")),
    responses(
        (status = 200, description = "The empty cart.", body = inline(agora_kernel::envelope::Success<CartView>)),
        (status = 403, description = "`AUTH_USER_REQUIRED` (an API key)", body = agora_kernel::envelope::Failure),
    )
)]
async fn clear(
    State(carts): State<Carts>,
    CartHolder(holder): CartHolder,
) -> Result<ApiResponse<CartView>, ApiError> {
    Ok(answer(carts.empty(&holder).await?))
}

fn quantity(n: i64) -> Result<i64, String> {
    if (1..=MAX_LINE_QUANTITY).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between 1 and {MAX_LINE_QUANTITY}"))
    }
}

/// The cart's part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(view, add, set_quantity, remove, clear),
    components(schemas(CartView, CartItem, LineStatus, AddItem, SetQuantity)),
    tags((name = "cart", description = "The caller's cart, signed in or anonymous"))
)]
pub struct CartApi;
