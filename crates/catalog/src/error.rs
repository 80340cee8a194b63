//! The catalog's errors and their public codes.

use agora_kernel::{ApiError, ErrorCode};
use agora_platform::db::database_failure;

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
        };
        ApiError::from_code(code)
    }
}
