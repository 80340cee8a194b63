//! The catalog's errors and their public codes.

use agora_kernel::{ApiError, ErrorCode};
use agora_platform::db::database_failure;
use agora_platform::storage::StorageError;

use crate::images;

/// Everything that can go wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such product (or not visible to this caller).
    #[error("product not found")]
    ProductNotFound,
    /// No such category.
    #[error("category not found")]
    CategoryNotFound,
    /// The body refers to a category that does not exist.
    #[error("unknown category")]
    UnknownCategory,
    /// The SKU belongs to another product.
    #[error("SKU taken")]
    SkuTaken,
    /// The slug belongs to another product.
    #[error("product slug taken")]
    SlugTaken,
    /// The slug belongs to another category.
    #[error("category slug taken")]
    CategorySlugTaken,
    /// The category still has products or children.
    #[error("category in use")]
    CategoryInUse,
    /// The new parent would make a cycle.
    #[error("category cycle")]
    CategoryCycle,
    /// The upload is not a multipart body with a `file` part.
    #[error("no image in the upload: {0}")]
    ImageMissing(String),
    /// The image is over the byte or pixel limits.
    #[error("image too large")]
    ImageTooLarge {
        /// The byte limit in effect.
        max_bytes: usize,
    },
    /// The bytes are not a JPEG, PNG or WebP image.
    #[error("unsupported image type")]
    ImageUnsupported,
    /// The bytes do not decode.
    #[error("invalid image")]
    ImageInvalid,
    /// The product has as many images as it may.
    #[error("too many images")]
    ImageLimit,
    /// No such image on this product.
    #[error("image not found")]
    ImageNotFound,
    /// No such object to serve.
    #[error("media not found")]
    MediaNotFound,
    /// The object storage failed.
    #[error(transparent)]
    Storage(#[from] agora_platform::storage::StorageError),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else unexpected.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let code = match e {
            CatalogError::Database(e) => return database_failure("catalog", &e),
            CatalogError::Unexpected(e) => return ApiError::internal(format!("{e:#}")),
            CatalogError::ProductNotFound => ErrorCode::CatalogProductNotFound,
            CatalogError::CategoryNotFound => ErrorCode::CatalogCategoryNotFound,
            CatalogError::UnknownCategory => ErrorCode::CatalogUnknownCategory,
            CatalogError::SkuTaken => ErrorCode::CatalogSkuTaken,
            CatalogError::SlugTaken => ErrorCode::CatalogSlugTaken,
            CatalogError::CategorySlugTaken => ErrorCode::CatalogCategorySlugTaken,
            CatalogError::CategoryInUse => ErrorCode::CatalogCategoryInUse,
            CatalogError::CategoryCycle => ErrorCode::CatalogCategoryCycle,
            CatalogError::ImageMissing(why) => {
                return ApiError::new(
                    ErrorCode::CatalogImageMissing,
                    format!("send the image as the multipart part `file`: {why}"),
                );
            }
            CatalogError::ImageTooLarge { max_bytes } => {
                return ApiError::from_code(ErrorCode::CatalogImageTooLarge).with_details(
                    serde_json::json!({
                        "max_bytes": max_bytes,
                        "max_side": images::MAX_SIDE,
                        "max_pixels": images::MAX_PIXELS,
                    }),
                );
            }
            CatalogError::ImageUnsupported => ErrorCode::CatalogImageUnsupported,
            CatalogError::ImageInvalid => ErrorCode::CatalogImageInvalid,
            CatalogError::ImageLimit => {
                return ApiError::from_code(ErrorCode::CatalogImageLimit).with_details(
                    serde_json::json!({ "max_images": images::MAX_IMAGES_PER_PRODUCT }),
                );
            }
            CatalogError::ImageNotFound => ErrorCode::CatalogImageNotFound,
            CatalogError::MediaNotFound | CatalogError::Storage(StorageError::NotFound(_)) => {
                ErrorCode::MediaNotFound
            }
            CatalogError::Storage(StorageError::Unavailable(e)) => {
                return ApiError::from_code(ErrorCode::ServiceNotReady)
                    .with_details(serde_json::json!({ "checks": { "storage": "unavailable" } }))
                    .with_cause(format!("catalog: {e:#}"));
            }
        };
        ApiError::from_code(code)
    }
}
