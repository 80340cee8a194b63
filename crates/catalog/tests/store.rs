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
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .expect("the migrations")
        .count();
    assert!(files >= 5, "{files} files");
    assert_eq!(
        usize::try_from(applied).ok(),
        Some(files),
        "one row per migration file"
    );
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
    assert_eq!(a.products.len() + b.products.len(), 200, "{a:?} {b:?}");
    assert_eq!(catalog.categories().await.expect("listed").len(), 10);
}

/// A catalog with its reads cached in memory for a minute.
async fn cached_catalog() -> (Catalog, TestDatabase) {
    use agora_platform::cache::{CacheAside, MemoryCache};
    let (catalog, db) = catalog().await;
    let catalog = catalog.with_cache(
        Arc::new(CacheAside::new(Arc::new(MemoryCache::new(1 << 20)))),
        std::time::Duration::from_secs(60),
    );
    (catalog, db)
}

/// Public reads through the read cache: the second read of a product is a hit,
/// a write makes the next one a miss, and a deleted product is not served.
#[tokio::test]
async fn public_reads_are_counted_as_hits_and_misses_of_the_read_cache() {
    use agora_platform::cache::CacheStats;
    let (catalog, _db) = cached_catalog().await;
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

/// Other modules' product snapshots come through the read cache too: a
/// repeat is a hit, only the missing ids are read (in one query), unknown ids
/// stay absent, and a price change is seen by the very next call.
#[tokio::test]
async fn port_snapshots_are_cached_and_forgotten_on_a_write() {
    use agora_platform::cache::CacheStats;
    let (catalog, _db) = cached_catalog().await;
    let a = catalog
        .create_product(draft("SNAP-1", 500, true))
        .await
        .expect("created");
    let b = catalog
        .create_product(draft("SNAP-2", 700, false))
        .await
        .expect("created");
    let unknown = ProductId::new();
    let price = |snaps: &[agora_contracts::catalog::ProductSnapshot], id: ProductId| {
        snaps
            .iter()
            .find(|s| s.id == id)
            .map(|s| (s.unit_price.amount_minor(), s.active))
    };
    let first = catalog.products_by_ids(&[a.id]).await.expect("read");
    assert_eq!(price(&first, a.id), Some((500, true)));
    let both = catalog
        .products_by_ids(&[a.id, b.id, unknown])
        .await
        .expect("read");
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(price(&both, b.id), Some((700, false)), "inactive ones too");
    assert_eq!(
        catalog.cache_stats(),
        Some(CacheStats {
            hits: 1,
            misses: 3,
            loads: 2
        }),
        "a hit for a; one load for b and the unknown id"
    );
    catalog
        .update_product(
            a.id,
            changes(serde_json::json!({ "price": {"amount": 450, "currency": "USD"} })),
        )
        .await
        .expect("repriced");
    let after = catalog.products_by_ids(&[a.id, b.id]).await.expect("read");
    assert_eq!(price(&after, a.id), Some((450, true)));
    assert_eq!(price(&after, b.id), Some((700, false)));
    let twice = catalog.products_by_ids(&[a.id, a.id]).await.expect("read");
    assert_eq!(twice.len(), 1, "a repeated id is answered once");

    // A change this node has not heard of (another node's, its event not yet
    // here): the cached snapshot lags, the current one does not.
    sqlx::query("UPDATE catalog_products SET price_minor = 999 WHERE id = $1")
        .bind(a.id.to_db())
        .execute(catalog.store().db().writer())
        .await
        .expect("written");
    let cached = catalog.products_by_ids(&[a.id]).await.expect("read");
    assert_eq!(price(&cached, a.id), Some((450, true)));
    let current = catalog
        .current_products_by_ids(&[a.id, a.id])
        .await
        .expect("read");
    assert_eq!(current.len(), 1);
    assert_eq!(price(&current, a.id), Some((999, true)));
}

/// The kinds and products in the catalog's outbox, oldest first.
async fn outbox(catalog: &Catalog) -> Vec<(String, String)> {
    sqlx::query_as("SELECT kind, aggregate_id FROM catalog_outbox ORDER BY seq")
        .fetch_all(catalog.store().db().reader())
        .await
        .expect("the outbox reads")
}

fn changes(body: serde_json::Value) -> agora_catalog::domain::ProductChanges {
    let request: agora_catalog::http::UpdateProduct =
        serde_json::from_value(body).expect("a well-formed request");
    agora_catalog::domain::ProductChanges::try_from(request).expect("a valid request")
}

/// Every product write puts one ProductChanged in the outbox, in the same
/// transaction: a write that fails, or finds nothing to change, puts none.
#[tokio::test]
async fn product_writes_and_only_they_leave_a_product_changed_event() {
    let (catalog, _db) = catalog().await;
    let p = catalog
        .create_product(draft("EV-1", 100, true))
        .await
        .expect("created");
    let duplicate = catalog.create_product(draft("EV-1", 100, true)).await;
    assert!(
        // The same draft: its slug is taken too, and either refusal is first.
        matches!(
            duplicate,
            Err(CatalogError::SkuTaken | CatalogError::SlugTaken)
        ),
        "{duplicate:?}"
    );
    catalog
        .update_product(p.id, changes(serde_json::json!({ "name": "Renamed" })))
        .await
        .expect("updated");
    let missing = catalog
        .update_product(
            ProductId::new(),
            changes(serde_json::json!({ "name": "x" })),
        )
        .await;
    assert!(matches!(missing, Err(CatalogError::ProductNotFound)));
    catalog.delete_product(p.id).await.expect("deleted");
    assert!(catalog.delete_product(p.id).await.is_err());
    let id = p.id.to_string();
    assert_eq!(
        outbox(&catalog).await,
        [
            ("catalog.product_changed".to_string(), id.clone()),
            ("catalog.product_changed".to_string(), id.clone()),
            ("catalog.product_changed".to_string(), id),
        ]
    );
    let payload: String =
        sqlx::query_scalar("SELECT payload FROM catalog_outbox ORDER BY seq DESC LIMIT 1")
            .fetch_one(catalog.store().db().reader())
            .await
            .expect("the outbox reads");
    let event: agora_contracts::events::ProductChanged =
        serde_json::from_str(&payload).expect("a ProductChanged payload");
    assert_eq!(event.product_id, p.id);
    assert_eq!(
        event.change,
        agora_contracts::events::CatalogChange::Deleted
    );
}

/// A node whose cache holds a product forgets it when it hears that another
/// node changed the catalog (the write here goes past this node's service, as
/// another node's would).
#[tokio::test]
async fn a_product_changed_event_makes_every_node_forget_its_cached_reads() {
    use agora_platform::bus::{Event, Handler};
    let (catalog, _db) = cached_catalog().await;
    let p = catalog
        .create_product(draft("NODE-1", 100, true))
        .await
        .expect("created");
    let cached = catalog.public_product(p.id).await.expect("read");
    sqlx::query("UPDATE catalog_products SET name = 'Changed elsewhere' WHERE id = $1")
        .bind(p.id.to_db())
        .execute(catalog.store().db().writer())
        .await
        .expect("written");
    assert_eq!(catalog.public_product(p.id).await.expect("read"), cached);
    let other_kind = Event::new(
        "orders.order_placed",
        "x",
        &serde_json::json!({}),
        catalog.now(),
    )
    .expect("an event");
    catalog.handle(&other_kind).await.expect("ignored");
    assert_eq!(catalog.public_product(p.id).await.expect("read"), cached);
    let changed = Event::new(
        "catalog.product_changed",
        p.id,
        &agora_contracts::events::ProductChanged {
            product_id: p.id,
            change: agora_contracts::events::CatalogChange::Updated,
        },
        catalog.now(),
    )
    .expect("an event");
    catalog.handle(&changed).await.expect("handled");
    let fresh = catalog.public_product(p.id).await.expect("read");
    assert!(
        String::from_utf8_lossy(&fresh).contains("Changed elsewhere"),
        "{}",
        String::from_utf8_lossy(&fresh)
    );
}
