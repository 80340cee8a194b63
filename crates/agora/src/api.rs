//! Routes that belong to no module: the error catalogue, the OpenAPI document and
//! the Swagger UI.

use std::sync::OnceLock;

use agora_kernel::{ApiResponse, ErrorCode};
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_swagger_ui::{Config, SwaggerUi};

/// One entry of the error catalogue.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorCodeEntry {
    /// The code.
    #[schema(example = "CATALOG_SKU_TAKEN")]
    code: &'static str,
    /// The HTTP status that always comes with it.
    #[schema(example = 409)]
    status: u16,
    /// What it means.
    description: &'static str,
}

/// The API-root routes (relative to `/api/v1`).
pub fn router() -> Router {
    Router::new()
        .route("/errors", get(list_errors))
        .route("/openapi.json", get(openapi_json))
}

/// Swagger UI at `/docs`, reading `/api/v1/openapi.json`. Its assets are compiled
/// into the binary (the `vendored` feature): nothing is fetched at build or run time.
pub fn docs_router() -> Router {
    SwaggerUi::new("/docs")
        .config(Config::new(["/api/v1/openapi.json"]))
        .into()
}

/// List every error code.
#[utoipa::path(
    get, path = "/errors", tag = "meta",
    responses((status = 200, description = "The error catalogue.", body = inline(agora_kernel::envelope::Success<Vec<ErrorCodeEntry>>)))
)]
async fn list_errors() -> ApiResponse<Vec<ErrorCodeEntry>> {
    ApiResponse::ok(
        ErrorCode::ALL
            .iter()
            .map(|c| ErrorCodeEntry {
                code: c.as_str(),
                status: c.status().as_u16(),
                description: c.description(),
            })
            .collect(),
    )
}

/// The OpenAPI document (served bare, not in the envelope, so tools can read it).
async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| openapi().to_pretty_json().unwrap_or_default());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.as_str(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(paths(list_errors), components(schemas(ErrorCodeEntry)), tags((name = "meta", description = "About the API itself")))]
struct MetaApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Agora",
        description = "A commerce backend: accounts, catalog, inventory, carts, orders and payments.\n\n\
            Every response is an envelope: `{\"success\":true,\"data\":…,\"meta\":{…}}` or \
            `{\"success\":false,\"error\":{\"code\":…,\"message\":…,\"details\":…},\"meta\":{…}}`. \
            Error codes: `GET /api/v1/errors`. Lists page with `limit` and `cursor` (`meta.next_cursor`). \
            The version is in the path (`/api/v1`); an `Api-Version: 1` header selects it for `/api/…` paths too.",
    ),
    modifiers(&Security)
)]
struct RootApi;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from `POST /api/v1/auth/login`. Public keys: `/.well-known/jwks.json`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut v1 = MetaApi::openapi();
    v1.merge(agora_identity::http::IdentityApi::openapi());
    v1.merge(agora_catalog::http::CatalogApi::openapi());
    v1.merge(agora_inventory::http::InventoryApi::openapi());
    v1.merge(agora_cart::http::CartApi::openapi());
    v1.merge(agora_orders::http::OrdersApi::openapi());
    v1.merge(agora_payments::http::PaymentsApi::openapi());
    v1.merge(crate::admin::AdminApi::openapi());
    let mut doc = RootApi::openapi().nest("/api/v1", v1);
    doc.merge(agora_catalog::http::MediaApi::openapi());
    doc
}
