//! The cart's port against a real database (SQLite, or PostgreSQL when
//! `AGORA_TEST_POSTGRES_URL` is set), pricing through the real catalog.

use std::sync::Arc;

use agora_cart::Carts;
use agora_cart::service::Holder;
use agora_cart::store::CartStore;
use agora_catalog::Catalog;
use agora_catalog::domain::ProductDraft;
use agora_catalog::http::CreateProduct;
use agora_catalog::store::CatalogStore;
use agora_contracts::cart::{CartLine, CartPort};
use agora_kernel::{ManualClock, Timestamp, UserId};
use agora_platform::testing::TestDatabase;

#[tokio::test]
async fn the_port_reads_and_clears_a_customers_cart() {
    let db = TestDatabase::new().await.expect("a database");
    for m in [&agora_catalog::MIGRATIONS, &agora_cart::MIGRATIONS] {
        db.db.migrate(m).await.expect("migrations");
    }
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
    let catalog = Catalog::new(CatalogStore::new(db.db.clone()), clock.clone());
    let carts = Carts::new(
        CartStore::new(db.db.clone()),
        Arc::new(catalog.clone()),
        clock,
    );
    let request: CreateProduct = serde_json::from_value(serde_json::json!({
        "sku": "MUG-1", "name": "Mug", "price": {"amount": 900, "currency": "EUR"},
    }))
    .expect("a request");
    let mug = catalog
        .create_product(ProductDraft::try_from(request).expect("valid"))
        .await
        .expect("created");
    let ada = UserId::new();
    assert_eq!(carts.lines(ada).await.expect("lines"), vec![]);
    carts
        .add(&Holder::Customer(ada, None), mug.id, 3)
        .await
        .expect("added");
    assert_eq!(
        carts.lines(ada).await.expect("lines"),
        vec![CartLine {
            product_id: mug.id,
            quantity: 3
        }]
    );
    assert_eq!(carts.lines(UserId::new()).await.expect("lines"), vec![]);
    carts.clear(ada).await.expect("cleared");
    carts.clear(ada).await.expect("clearing twice is a no-op");
    assert_eq!(carts.lines(ada).await.expect("lines"), vec![]);
}
