//! The catalog's store and port against a real database (SQLite, or PostgreSQL
//! when `AGORA_TEST_POSTGRES_URL` is set).

use std::sync::Arc;

use agora_catalog::Catalog;
use agora_catalog::domain::ProductDraft;
use agora_catalog::error::CatalogError;
use agora_catalog::http::CreateProduct;
use agora_catalog::store::CatalogStore;
use agora_contracts::catalog::CatalogPort;
use agora_kernel::{ManualClock, ProductId, Timestamp};
use agora_platform::testing::TestDatabase;

async fn catalog() -> (Catalog, TestDatabase) {
    let test_db = TestDatabase::new().await.expect("a database");
    test_db
        .db
        .migrate(&agora_catalog::MIGRATIONS)
        .await
        .expect("migrations run");
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
    (
        Catalog::new(CatalogStore::new(test_db.db.clone()), clock),
        test_db,
    )
}

fn draft(sku: &str, amount: i64, active: bool) -> ProductDraft {
    // Drafts are made only by parsing a request, as the API does.
    let request: CreateProduct = serde_json::from_value(serde_json::json!({
        "sku": sku,
        "name": format!("Product {sku}"),
        "price": {"amount": amount, "currency": "USD"},
        "active": active,
    }))
    .expect("a well-formed request");
    ProductDraft::try_from(request).expect("a valid request")
}

#[tokio::test]
async fn migrations_are_recorded_per_module_and_run_once() {
    let (catalog, test_db) = catalog().await;
    test_db
        .db
        .migrate(&agora_catalog::MIGRATIONS)
        .await
        .expect("a second run is a no-op");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM catalog_schema_migrations")
        .fetch_one(catalog.store().db().reader())
        .await
        .expect("the catalog has its own history table");
    assert_eq!(applied, 1);
}

#[tokio::test]
async fn the_port_returns_price_snapshots_for_existing_ids_only() {
    let (catalog, _db) = catalog().await;
    let a = catalog
        .create_product(draft("A-1", 1250, true))
        .await
        .expect("created");
    let b = catalog
        .create_product(draft("B-2", 990, false))
        .await
        .expect("created");
    let missing = ProductId::new();
    let mut snapshots = catalog
        .products_by_ids(&[a.id, b.id, missing])
        .await
        .expect("answered");
    snapshots.sort_by_key(|s| s.sku.clone());
    assert_eq!(snapshots.len(), 2);
    assert_eq!(snapshots[0].id, a.id);
    assert_eq!(snapshots[0].unit_price.amount_minor(), 1250);
    assert!(snapshots[0].active);
    assert!(
        !snapshots[1].active,
        "inactive products are returned, flagged"
    );
    assert!(
        catalog
            .products_by_ids(&[])
            .await
            .expect("answered")
            .is_empty()
    );
    let too_many: Vec<ProductId> = (0..1001).map(|_| ProductId::new()).collect();
    assert!(catalog.products_by_ids(&too_many).await.is_err());
}

#[tokio::test]
async fn the_database_enforces_unique_skus() {
    let (catalog, _db) = catalog().await;
    catalog
        .create_product(draft("DUP-1", 100, true))
        .await
        .expect("created");
    // Same SKU, different name and so a different slug.
    let request: CreateProduct = serde_json::from_value(serde_json::json!({
        "sku": "DUP-1", "name": "Another product", "price": {"amount": 100, "currency": "USD"}
    }))
    .expect("a well-formed request");
    let again = ProductDraft::try_from(request).expect("a valid request");
    let err = catalog.create_product(again).await.err();
    assert!(matches!(err, Some(CatalogError::SkuTaken)), "{err:?}");
}

#[tokio::test]
async fn the_database_refuses_negative_prices_even_past_the_api() {
    let (catalog, _db) = catalog().await;
    let result = sqlx::query(
        "INSERT INTO catalog_products (id, sku, slug, name, price_minor, currency, created_at, updated_at) \
         VALUES ('x', 'S', 's', 'n', -1, 'USD', 0, 0)",
    )
    .execute(catalog.store().db().writer())
    .await;
    let violation = result
        .as_ref()
        .err()
        .and_then(agora_platform::db::violation);
    assert!(
        matches!(violation, Some(agora_platform::db::Violation::Check(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn two_processes_seeding_at_once_load_the_demo_catalog_once() {
    let (catalog, test_db) = catalog().await;
    let other = Catalog::new(
        CatalogStore::new(
            agora_platform::Database::connect(&test_db.config)
                .await
                .expect("a second connection"),
        ),
        Arc::new(agora_kernel::SystemClock),
    );
    let (a, b) = tokio::join!(
        agora_catalog::seed::seed_demo(&catalog),
        agora_catalog::seed::seed_demo(&other)
    );
    let (a, b) = (
        a.expect("first seeding succeeds"),
        b.expect("second seeding succeeds"),
    );
    assert_eq!(a.products + b.products, 200, "{a:?} {b:?}");
    assert_eq!(catalog.categories().await.expect("listed").len(), 10);
}

/// Public reads through the read cache: the second read of a product is a hit,
/// a write makes the next one a miss, and a deleted product is not served.
#[tokio::test]
async fn public_reads_are_counted_as_hits_and_misses_of_the_read_cache() {
    use agora_platform::cache::{CacheAside, CacheStats, MemoryCache};
    let (catalog, _db) = catalog().await;
    let catalog = catalog.with_cache(
        Arc::new(CacheAside::new(Arc::new(MemoryCache::new(1 << 20)))),
        std::time::Duration::from_secs(60),
    );
    let p = catalog
        .create_product(draft("HIT-1", 500, true))
        .await
        .expect("created");
    let first = catalog.public_product(p.id).await.expect("read");
    assert_eq!(catalog.public_product(p.id).await.expect("read"), first);
    assert_eq!(
        catalog.cache_stats(),
        Some(CacheStats {
            hits: 1,
            misses: 1,
            loads: 1
        })
    );
    catalog.delete_product(p.id).await.expect("deleted");
    assert!(matches!(
        catalog.public_product(p.id).await,
        Err(CatalogError::ProductNotFound)
    ));
    assert_eq!(catalog.cache_stats().map(|s| s.misses), Some(2));
}
