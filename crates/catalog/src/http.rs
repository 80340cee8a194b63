//! The catalog's REST API, under `/api/v1`:
//!
//! | method | path | who |
//! |---|---|---|
//! | GET | /products | anyone (staff also see inactive products) |
//! | POST | /products | staff |
//! | GET | /products/{id} | anyone (inactive: staff) |
//! | PATCH, DELETE | /products/{id} | staff |
//! | GET | /products/{id}/images, /products/{id}/images/{image_id} | anyone (inactive product: staff) |
//! | POST | /products/{id}/images (multipart) | staff |
//! | DELETE | /products/{id}/images/{image_id} | staff |
//! | GET | /categories, /categories/{id} | anyone |
//! | POST | /categories | staff |
//! | PATCH, DELETE | /categories/{id} | staff |
//!
//! Public product reads are served through the catalog's read cache with an
//! `ETag` (`304` on `If-None-Match`, `Cache-Control: public, no-cache`); staff
//! views are `private, no-store`.
//!
//! [`media_router`] serves stored images and renditions at `/media/{key}`,
//! outside the API: keys are content hashes, so an answer never changes and
//! is cached for a year (`immutable`).

use agora_kernel::Permission;
use agora_kernel::access::require::CatalogWrite;
use agora_kernel::error::FieldError;
use agora_kernel::pagination::Limit;
use agora_kernel::validation::Problems;
use agora_kernel::{
    ApiError, ApiResponse, CategoryId, Currency, Cursor, ErrorCode, ImageId, Money, ProductId,
};
use agora_platform::auth::{Authorized, Caller};
use agora_platform::http::{AppJson, AppPath, AppQuery, cacheable};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Deserializer};

use crate::domain::{
    self, Category, CategoryChanges, CategoryDraft, Product, ProductChanges, ProductDraft,
    parse_attributes, parse_description, parse_name, parse_price, parse_sku, parse_slug,
};
use crate::error::CatalogError;
use crate::images::{self, ProductImage};
use crate::service::Catalog;
use crate::store::{ProductCursor, ProductFilter, ProductSort};

/// The catalog's routes, relative to the API root.
pub fn router(catalog: Catalog) -> Router {
    let upload_limit = catalog.max_image_bytes().saturating_add(MULTIPART_OVERHEAD);
    Router::new()
        .route("/products", get(list_products).post(create_product))
        .route(
            "/products/{id}",
            get(get_product)
                .patch(update_product)
                .delete(delete_product),
        )
        .route(
            "/products/{id}/images",
            get(list_images)
                .post(upload_image)
                // The image, its `alt` part and the multipart framing.
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/products/{id}/images/{image_id}",
            get(get_image).delete(delete_image),
        )
        .route("/categories", get(list_categories).post(create_category))
        .route(
            "/categories/{id}",
            get(get_category)
                .patch(update_category)
                .delete(delete_category),
        )
        .with_state(catalog)
}

/// Filters, order and page of a product listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListProductsQuery {
    /// Only products in this category.
    category: Option<CategoryId>,
    /// Only products costing at least this much, in minor units.
    #[param(minimum = 0)]
    min_price: Option<i64>,
    /// Only products costing at most this much, in minor units.
    #[param(minimum = 0)]
    max_price: Option<i64>,
    /// Only products priced in this currency.
    currency: Option<Currency>,
    /// Text to find in the name or description (any case), at most 200 characters.
    q: Option<String>,
    /// `true` for products on sale, `false` for retired ones (staff only). Default:
    /// active only for customers, all for staff.
    active: Option<bool>,
    /// `newest` (default), `oldest`, `price`, `-price`, `name`, `-name`.
    sort: Option<ProductSort>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// `meta.next_cursor` of the previous page.
    cursor: Option<String>,
}

impl ListProductsQuery {
    fn into_filter(self, caller: Caller) -> Result<ProductFilter, ApiError> {
        let mut problems = Problems::default();
        for (field, value) in [("min_price", self.min_price), ("max_price", self.max_price)] {
            if value.is_some_and(|v| v < 0) {
                problems.add(field, "must not be negative");
            }
        }
        if let (Some(min), Some(max)) = (self.min_price, self.max_price)
            && min > max
        {
            problems.add("min_price", "must not be greater than max_price");
        }
        let text = self
            .q
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty());
        if text
            .as_ref()
            .is_some_and(|q| q.chars().count() > domain::MAX_QUERY_CHARS)
        {
            problems.add(
                "q",
                format!("must be at most {} characters", domain::MAX_QUERY_CHARS),
            );
        }
        if text
            .as_deref()
            .is_some_and(|q| q.chars().any(char::is_control))
        {
            problems.add("q", "must not contain control characters");
        }
        problems.into_result().map_err(|fields| {
            ApiError::new(ErrorCode::RequestInvalidQuery, "the query is out of range")
                .with_details(serde_json::json!({ "fields": fields }))
        })?;
        let active = match (self.active, caller.can(Permission::CatalogWrite)) {
            (active, true) => active,
            (Some(false), false) => {
                return Err(ApiError::new(
                    ErrorCode::AuthRequired,
                    "only staff may list inactive products",
                ));
            }
            (_, false) => Some(true),
        };
        let sort = self.sort.unwrap_or_default();
        let after = match self.cursor {
            Some(c) => {
                let cursor: ProductCursor = Cursor::decode(&c)?;
                if !cursor.fits(sort) {
                    return Err(ApiError::from_code(ErrorCode::RequestInvalidCursor));
                }
                Some(cursor)
            }
            None => None,
        };
        Ok(ProductFilter {
            category: self.category,
            min_price: self.min_price,
            max_price: self.max_price,
            currency: self.currency,
            text,
            active,
            sort,
            after,
            limit: self.limit.unwrap_or_default(),
        })
    }
}

/// List products.
#[utoipa::path(
    get, path = "/products", tag = "catalog",
    params(ListProductsQuery),
    responses(
        (status = 200, description = "A page of products; `meta.next_cursor` is present when there are more.", body = inline(agora_kernel::envelope::Success<Vec<Product>>)),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag` (public reads only)."),
        (status = 400, description = "`REQUEST_INVALID_QUERY`, `REQUEST_INVALID_CURSOR`", body = agora_kernel::envelope::Failure),
    )
)]
async fn list_products(
    State(catalog): State<Catalog>,
    caller: Caller,
    headers: HeaderMap,
    AppQuery(query): AppQuery<ListProductsQuery>,
) -> Result<Response, ApiError> {
    let staff = caller.can(Permission::CatalogWrite);
    let filter = query.into_filter(caller)?;
    if staff {
        // Staff may see inactive products: their answer is theirs alone.
        let page = catalog.list_products(filter).await?;
        return Ok(ApiResponse::ok(page.items)
            .with_next_cursor(page.next_cursor)
            .with_header(header::CACHE_CONTROL, cacheable::PRIVATE)
            .into_response());
    }
    Ok(cacheable::respond(
        &headers,
        &catalog.public_products(filter).await?,
    ))
}

/// Get a product.
#[utoipa::path(
    get, path = "/products/{id}", tag = "catalog",
    params(("id" = ProductId, Path, description = "The product's id")),
    responses(
        (status = 200, description = "The product.", body = inline(agora_kernel::envelope::Success<Product>)),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag` (public reads only)."),
        (status = 400, description = "`REQUEST_INVALID_PATH`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`CATALOG_PRODUCT_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn get_product(
    State(catalog): State<Catalog>,
    caller: Caller,
    headers: HeaderMap,
    AppPath(id): AppPath<ProductId>,
) -> Result<Response, ApiError> {
    if caller.can(Permission::CatalogWrite) {
        // Staff may see an inactive product: their answer is theirs alone.
        return Ok(private(catalog.product(id, true).await?));
    }
    Ok(cacheable::respond(
        &headers,
        &catalog.public_product(id).await?,
    ))
}

/// A new product.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Unique stock-keeping unit: 1–64 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "AUD-HEADPHONES-01")]
    sku: String,
    /// 1–200 characters.
    #[schema(example = "Studio Headphones")]
    name: String,
    /// Unique; derived from the name when absent.
    slug: Option<String>,
    /// Up to 10,000 characters.
    description: Option<String>,
    /// Unit price: 0 to 10,000,000,000 minor units.
    price: Money,
    /// An existing category.
    category_id: Option<CategoryId>,
    /// A JSON object of at most 64 keys and 16 KiB.
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
    /// For sale? Default `true`.
    active: Option<bool>,
}

impl TryFrom<CreateProduct> for ProductDraft {
    type Error = ApiError;

    fn try_from(body: CreateProduct) -> Result<Self, Self::Error> {
        body.parse()
    }
}

impl CreateProduct {
    fn parse(self) -> Result<ProductDraft, ApiError> {
        let mut p = Problems::default();
        let sku = p.check("sku", parse_sku(&self.sku));
        let name = p.check("name", parse_name(&self.name));
        let slug = domain::slug_or_derived(&mut p, self.slug.as_deref(), name.as_deref());
        let description = p.check(
            "description",
            parse_description(self.description.as_deref().unwrap_or("")),
        );
        let price = p.check("price", parse_price(self.price));
        let attributes = match &self.attributes {
            Some(a) => p.check("attributes", parse_attributes(a)),
            None => Some(domain::empty_attributes()),
        };
        let (category_id, active) = (self.category_id, self.active.unwrap_or(true));
        p.finish(|| {
            Some(ProductDraft {
                sku: sku?,
                slug: slug?,
                name: name?,
                description: description?,
                price: price?,
                category_id,
                attributes: attributes?,
                active,
            })
        })
    }
}

/// Create a product (staff).
#[utoipa::path(
    post, path = "/products", tag = "catalog",
    request_body = CreateProduct,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `Location` names it.", body = inline(agora_kernel::envelope::Success<Product>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`CATALOG_SKU_TAKEN`, `CATALOG_SLUG_TAKEN`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`, `CATALOG_UNKNOWN_CATEGORY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn create_product(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppJson(body): AppJson<CreateProduct>,
) -> Result<ApiResponse<Product>, ApiError> {
    let product = catalog
        .create_product(ProductDraft::try_from(body)?)
        .await?;
    let location = format!("/api/v1/products/{}", product.id);
    Ok(ApiResponse::created(product, &location))
}

/// Changes to a product; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    sku: Option<String>,
    name: Option<String>,
    slug: Option<String>,
    description: Option<String>,
    price: Option<Money>,
    /// `null` removes the product from its category.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CategoryId>)]
    category_id: Option<Option<CategoryId>>,
    /// Replaces all attributes.
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
    active: Option<bool>,
}

impl TryFrom<UpdateProduct> for ProductChanges {
    type Error = ApiError;

    fn try_from(body: UpdateProduct) -> Result<Self, Self::Error> {
        body.parse()
    }
}

impl UpdateProduct {
    fn parse(self) -> Result<ProductChanges, ApiError> {
        let mut p = Problems::default();
        let changes = ProductChanges {
            sku: self.sku.and_then(|s| p.check("sku", parse_sku(&s))),
            name: self.name.and_then(|s| p.check("name", parse_name(&s))),
            slug: self.slug.and_then(|s| p.check("slug", parse_slug(&s))),
            description: self
                .description
                .and_then(|s| p.check("description", parse_description(&s))),
            price: self.price.and_then(|m| p.check("price", parse_price(m))),
            category_id: self.category_id,
            attributes: self
                .attributes
                .and_then(|a| p.check("attributes", parse_attributes(&a))),
            active: self.active,
        };
        p.into_result().map_err(ApiError::validation)?;
        if changes.is_empty() {
            return Err(nothing_to_change());
        }
        Ok(changes)
    }
}

/// The answer to a PATCH that changes nothing.
fn nothing_to_change() -> ApiError {
    ApiError::validation(vec![agora_kernel::error::FieldError::new(
        "body",
        "must change at least one field",
    )])
}

/// Distinguishes a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Change a product (staff).
#[utoipa::path(
    patch, path = "/products/{id}", tag = "catalog",
    params(("id" = ProductId, Path, description = "The product's id")),
    request_body = UpdateProduct,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The product as it is now.", body = inline(agora_kernel::envelope::Success<Product>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`CATALOG_PRODUCT_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`CATALOG_SKU_TAKEN`, `CATALOG_SLUG_TAKEN`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`, `CATALOG_UNKNOWN_CATEGORY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn update_product(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppPath(id): AppPath<ProductId>,
    AppJson(body): AppJson<UpdateProduct>,
) -> Result<ApiResponse<Product>, ApiError> {
    Ok(ApiResponse::ok(
        catalog.update_product(id, body.parse()?).await?,
    ))
}

/// Delete a product (staff).
#[utoipa::path(
    delete, path = "/products/{id}", tag = "catalog",
    params(("id" = ProductId, Path, description = "The product's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted; `data` is null."),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`CATALOG_PRODUCT_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn delete_product(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppPath(id): AppPath<ProductId>,
) -> Result<ApiResponse<()>, ApiError> {
    catalog.delete_product(id).await?;
    Ok(ApiResponse::ok(()))
}

/// List every category, by name.
#[utoipa::path(
    get, path = "/categories", tag = "catalog",
    responses((status = 200, description = "All categories.", body = inline(agora_kernel::envelope::Success<Vec<Category>>)))
)]
async fn list_categories(
    State(catalog): State<Catalog>,
) -> Result<ApiResponse<Vec<Category>>, ApiError> {
    Ok(ApiResponse::ok(catalog.categories().await?))
}

/// Get a category.
#[utoipa::path(
    get, path = "/categories/{id}", tag = "catalog",
    params(("id" = CategoryId, Path, description = "The category's id")),
    responses(
        (status = 200, description = "The category.", body = inline(agora_kernel::envelope::Success<Category>)),
        (status = 404, description = "`CATALOG_CATEGORY_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn get_category(
    State(catalog): State<Catalog>,
    AppPath(id): AppPath<CategoryId>,
) -> Result<ApiResponse<Category>, ApiError> {
    Ok(ApiResponse::ok(catalog.category(id).await?))
}

/// A new category.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCategory {
    /// 1–200 characters.
    #[schema(example = "Audio")]
    name: String,
    /// Unique; derived from the name when absent.
    slug: Option<String>,
    /// Up to 10,000 characters.
    description: Option<String>,
    /// An existing category to nest under.
    parent_id: Option<CategoryId>,
}

/// Create a category (staff).
#[utoipa::path(
    post, path = "/categories", tag = "catalog",
    request_body = CreateCategory,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created.", body = inline(agora_kernel::envelope::Success<Category>)),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`CATALOG_CATEGORY_SLUG_TAKEN`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `CATALOG_UNKNOWN_CATEGORY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn create_category(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppJson(body): AppJson<CreateCategory>,
) -> Result<ApiResponse<Category>, ApiError> {
    let category = catalog.create_category(body.parse()?).await?;
    let location = format!("/api/v1/categories/{}", category.id);
    Ok(ApiResponse::created(category, &location))
}

impl CreateCategory {
    fn parse(self) -> Result<CategoryDraft, ApiError> {
        let mut p = Problems::default();
        let name = p.check("name", parse_name(&self.name));
        let slug = domain::slug_or_derived(&mut p, self.slug.as_deref(), name.as_deref());
        let description = p.check(
            "description",
            parse_description(self.description.as_deref().unwrap_or("")),
        );
        let parent_id = self.parent_id;
        p.finish(|| {
            Some(CategoryDraft {
                name: name?,
                slug: slug?,
                description: description?,
                parent_id,
            })
        })
    }
}

/// Changes to a category; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCategory {
    name: Option<String>,
    slug: Option<String>,
    description: Option<String>,
    /// `null` makes it a top-level category.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CategoryId>)]
    parent_id: Option<Option<CategoryId>>,
}

impl UpdateCategory {
    fn parse(self) -> Result<CategoryChanges, ApiError> {
        let mut p = Problems::default();
        let changes = CategoryChanges {
            name: self.name.and_then(|s| p.check("name", parse_name(&s))),
            slug: self.slug.and_then(|s| p.check("slug", parse_slug(&s))),
            description: self
                .description
                .and_then(|s| p.check("description", parse_description(&s))),
            parent_id: self.parent_id,
        };
        p.into_result().map_err(ApiError::validation)?;
        if changes.is_empty() {
            return Err(nothing_to_change());
        }
        Ok(changes)
    }
}

/// Change a category (staff).
#[utoipa::path(
    patch, path = "/categories/{id}", tag = "catalog",
    params(("id" = CategoryId, Path, description = "The category's id")),
    request_body = UpdateCategory,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The category as it is now.", body = inline(agora_kernel::envelope::Success<Category>)),
        (status = 404, description = "`CATALOG_CATEGORY_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`CATALOG_CATEGORY_SLUG_TAKEN`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `CATALOG_UNKNOWN_CATEGORY`, `CATALOG_CATEGORY_CYCLE`", body = agora_kernel::envelope::Failure),
    )
)]
async fn update_category(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppPath(id): AppPath<CategoryId>,
    AppJson(body): AppJson<UpdateCategory>,
) -> Result<ApiResponse<Category>, ApiError> {
    Ok(ApiResponse::ok(
        catalog.update_category(id, body.parse()?).await?,
    ))
}

/// Delete a category that has no products and no subcategories (staff).
#[utoipa::path(
    delete, path = "/categories/{id}", tag = "catalog",
    params(("id" = CategoryId, Path, description = "The category's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted; `data` is null."),
        (status = 404, description = "`CATALOG_CATEGORY_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`CATALOG_CATEGORY_IN_USE`", body = agora_kernel::envelope::Failure),
    )
)]
async fn delete_category(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppPath(id): AppPath<CategoryId>,
) -> Result<ApiResponse<()>, ApiError> {
    catalog.delete_category(id).await?;
    Ok(ApiResponse::ok(()))
}

/// The catalog's part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_products, create_product, get_product, update_product, delete_product,
        list_categories, create_category, get_category, update_category, delete_category,
        list_images, get_image, upload_image, delete_image
    ),
    components(schemas(Product, Category, CreateProduct, UpdateProduct, CreateCategory, UpdateCategory, ProductSort, ProductImage, images::RenditionView)),
    tags((name = "catalog", description = "Products, categories and product images"))
)]
pub struct CatalogApi;

/// The media route's part of the OpenAPI document (at the root).
#[derive(utoipa::OpenApi)]
#[openapi(paths(get_media))]
pub struct MediaApi;

/// What an upload may carry beside the image: the `alt` part and the framing.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// The longest `alt` part, in bytes.
const MAX_ALT_BYTES: usize = 4 * images::MAX_ALT_CHARS;

/// The routes of `/media/{key}`, at the root (not under the API).
pub fn media_router(catalog: Catalog) -> Router {
    Router::new()
        .route("/media/{*key}", get(get_media))
        .with_state(catalog)
}

/// A product's images, oldest first.
#[utoipa::path(
    get, path = "/products/{id}/images", tag = "catalog",
    params(("id" = ProductId, Path, description = "The product's id")),
    responses(
        (status = 200, description = "Its images, each with its `url` and, once made, its renditions.", body = inline(agora_kernel::envelope::Success<Vec<ProductImage>>)),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag` (public reads only)."),
        (status = 404, description = "`CATALOG_PRODUCT_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn list_images(
    State(catalog): State<Catalog>,
    caller: Caller,
    headers: HeaderMap,
    AppPath(id): AppPath<ProductId>,
) -> Result<Response, ApiError> {
    if caller.can(Permission::CatalogWrite) {
        return Ok(private(catalog.images(id, true).await?));
    }
    Ok(cacheable::respond(
        &headers,
        &catalog.public_images(id).await?,
    ))
}

/// One image of a product.
#[utoipa::path(
    get, path = "/products/{id}/images/{image_id}", tag = "catalog",
    params(
        ("id" = ProductId, Path, description = "The product's id"),
        ("image_id" = ImageId, Path, description = "The image's id"),
    ),
    responses(
        (status = 200, description = "The image.", body = inline(agora_kernel::envelope::Success<ProductImage>)),
        (status = 404, description = "`CATALOG_PRODUCT_NOT_FOUND`, `CATALOG_IMAGE_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn get_image(
    State(catalog): State<Catalog>,
    caller: Caller,
    AppPath((id, image_id)): AppPath<(ProductId, ImageId)>,
) -> Result<ApiResponse<ProductImage>, ApiError> {
    let staff = caller.can(Permission::CatalogWrite);
    let image = catalog
        .images(id, staff)
        .await?
        .into_iter()
        .find(|i| i.id == image_id)
        .ok_or(CatalogError::ImageNotFound)?;
    Ok(ApiResponse::ok(image))
}

/// The body of an image upload (`multipart/form-data`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documents the form; the handler reads the parts itself.
struct ImageUpload {
    /// The image: JPEG, PNG or WebP, read from its bytes; at most
    /// `storage.max_image_bytes`, 8,000 px a side and 40 megapixels.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Alternative text, up to 300 characters.
    alt: Option<String>,
}

/// Add an image to a product (staff).
///
/// The image is checked whole before anything is stored, then kept under the
/// SHA-256 of its bytes; the thumbnails function adds 128 and 512 px
/// renditions shortly after. Uploading bytes the product already shows
/// answers 200 with that image.
#[utoipa::path(
    post, path = "/products/{id}/images", tag = "catalog",
    params(("id" = ProductId, Path, description = "The product's id")),
    request_body(content = inline(ImageUpload), content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Added; `Location` names it.", body = inline(agora_kernel::envelope::Success<ProductImage>)),
        (status = 200, description = "The product already had these bytes: that image.", body = inline(agora_kernel::envelope::Success<ProductImage>)),
        (status = 400, description = "`CATALOG_IMAGE_MISSING`", body = agora_kernel::envelope::Failure),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`CATALOG_PRODUCT_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 409, description = "`CATALOG_IMAGE_LIMIT`", body = agora_kernel::envelope::Failure),
        (status = 413, description = "`CATALOG_IMAGE_TOO_LARGE`", body = agora_kernel::envelope::Failure),
        (status = 415, description = "`CATALOG_IMAGE_UNSUPPORTED`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`CATALOG_IMAGE_INVALID`, `VALIDATION_FAILED` (`alt`)", body = agora_kernel::envelope::Failure),
    )
)]
async fn upload_image(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppPath(id): AppPath<ProductId>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|e| CatalogError::ImageMissing(e.body_text()))?;
    let max = catalog.max_image_bytes();
    let (mut file, mut alt) = (None, None);
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| part_error(e, max))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let limit = match name.as_str() {
            "file" if file.is_none() => max,
            "alt" if alt.is_none() => MAX_ALT_BYTES,
            _ => {
                return Err(CatalogError::ImageMissing(format!(
                    "unexpected part `{name}`: send one `file` and at most one `alt`"
                ))
                .into());
            }
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| part_error(e, max))? {
            if bytes.len() + chunk.len() > limit {
                return Err(match name.as_str() {
                    "file" => CatalogError::ImageTooLarge { max_bytes: max }.into(),
                    _ => alt_invalid(format!(
                        "must be at most {} characters",
                        images::MAX_ALT_CHARS
                    )),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if name == "file" {
            file = Some(Bytes::from(bytes));
        } else {
            let text =
                String::from_utf8(bytes).map_err(|_| alt_invalid("must be UTF-8 text".into()))?;
            alt = Some(images::parse_alt(&text).map_err(alt_invalid)?);
        }
    }
    let file = file.ok_or_else(|| CatalogError::ImageMissing("no part named `file`".into()))?;
    let (image, created) = catalog.add_image(id, file, alt.unwrap_or_default()).await?;
    if created {
        let location = format!("/api/v1/products/{id}/images/{}", image.id);
        Ok(ApiResponse::created(image, &location).into_response())
    } else {
        Ok(ApiResponse::ok(image).into_response())
    }
}

fn part_error(e: MultipartError, max_bytes: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        CatalogError::ImageTooLarge { max_bytes }.into()
    } else {
        CatalogError::ImageMissing(e.body_text()).into()
    }
}

fn alt_invalid(why: String) -> ApiError {
    ApiError::validation(vec![FieldError::new("alt", why)])
}

/// Remove an image from a product (staff). The stored bytes stay (another
/// product may show the same ones).
#[utoipa::path(
    delete, path = "/products/{id}/images/{image_id}", tag = "catalog",
    params(
        ("id" = ProductId, Path, description = "The product's id"),
        ("image_id" = ImageId, Path, description = "The image's id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed; `data` is null."),
        (status = 401, description = "`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`CATALOG_IMAGE_NOT_FOUND`", body = agora_kernel::envelope::Failure),
    )
)]
async fn delete_image(
    State(catalog): State<Catalog>,
    _staff: Authorized<CatalogWrite>,
    AppPath((id, image_id)): AppPath<(ProductId, ImageId)>,
) -> Result<ApiResponse<()>, ApiError> {
    catalog.delete_image(id, image_id).await?;
    Ok(ApiResponse::ok(()))
}

/// How long a client may keep a media answer: its key is its content's hash.
const MEDIA_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// A stored image or rendition.
#[utoipa::path(
    get, path = "/media/{key}", tag = "catalog",
    params(("key" = String, Path, description = "The object key, as in an image's `url`: `images/<sha256>.<ext>` or `renditions/<sha256>-<size>.jpg`")),
    responses(
        (status = 200, description = "The bytes, with their `Content-Type`, an `ETag` and `Cache-Control: public, max-age=31536000, immutable`.", content_type = "image/*"),
        (status = 304, description = "Not modified: `If-None-Match` names the `ETag`."),
        (status = 404, description = "`MEDIA_NOT_FOUND`", body = agora_kernel::envelope::Failure),
        (status = 503, description = "`SERVICE_NOT_READY`: the storage is not answering", body = agora_kernel::envelope::Failure),
    )
)]
async fn get_media(
    State(catalog): State<Catalog>,
    headers: HeaderMap,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let (key, object) = catalog.media_object(&key).await?;
    let etag = format!("\"{}\"", key.stem());
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, MEDIA_CACHE_CONTROL);
    let response = if cacheable::matches(&headers, &etag) {
        builder
            .status(axum::http::StatusCode::NOT_MODIFIED)
            .body(Body::empty())
    } else {
        builder = builder
            .header(header::CONTENT_TYPE, key.content_type())
            .header(header::CONTENT_LENGTH, object.size)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        builder.body(Body::from_stream(object.body))
    };
    response.map_err(|e| ApiError::internal(format!("media response: {e}")))
}

/// A staff answer: it may show what the public must not (inactive products),
/// so it is theirs alone and never cached.
fn private<T: serde::Serialize>(data: T) -> Response {
    ApiResponse::ok(data)
        .with_header(header::CACHE_CONTROL, cacheable::PRIVATE)
        .into_response()
}
