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
    let cup = product(&catalog, 1).await;
    carts
        .add(&Holder::Customer(ada, None), cup, 1)
        .await
        .expect("added");
    CartPort::remove_products(&carts, ada, &[mug.id])
        .await
        .expect("removed");
    carts
        .remove_products(ada, &[mug.id])
        .await
        .expect("removing twice is a no-op");
    assert_eq!(
        carts.lines(ada).await.expect("lines"),
        vec![CartLine {
            product_id: cup,
            quantity: 1
        }],
        "only the bought lines go"
    );
    carts.clear(ada).await.expect("cleared");
    carts.clear(ada).await.expect("clearing twice is a no-op");
    assert_eq!(carts.lines(ada).await.expect("lines"), vec![]);
}

async fn setup() -> (Carts, Catalog, Arc<ManualClock>, TestDatabase) {
    let db = TestDatabase::new().await.expect("a database");
    for m in [&agora_catalog::MIGRATIONS, &agora_cart::MIGRATIONS] {
        db.db.migrate(m).await.expect("migrations");
    }
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
    let catalog = Catalog::new(CatalogStore::new(db.db.clone()), clock.clone());
    let carts = Carts::new(
        CartStore::new(db.db.clone()),
        Arc::new(catalog.clone()),
        clock.clone(),
    );
    (carts, catalog, clock, db)
}

async fn product(catalog: &Catalog, n: usize) -> agora_kernel::ProductId {
    let request: CreateProduct = serde_json::from_value(serde_json::json!({
        "sku": format!("P-{n}"), "name": format!("Product {n}"), "price": {"amount": 100, "currency": "USD"},
    }))
    .expect("a request");
    catalog
        .create_product(ProductDraft::try_from(request).expect("valid"))
        .await
        .expect("created")
        .id
}

#[tokio::test]
async fn concurrent_merges_of_one_anonymous_cart_add_its_lines_once() {
    let (carts, catalog, _clock, _db) = setup().await;
    let p = product(&catalog, 1).await;
    let view = carts
        .add(&Holder::Visitor(None), p, 2)
        .await
        .expect("added");
    let token = view.cart_token.expect("a new cart's token");
    let ada = UserId::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (carts, token) = (carts.clone(), token.clone());
        tasks.spawn(async move { carts.view(&Holder::Customer(ada, Some(token))).await });
    }
    for result in tasks.join_all().await {
        result.expect("every request answers");
    }
    assert_eq!(
        carts.lines(ada).await.expect("lines"),
        vec![CartLine {
            product_id: p,
            quantity: 2
        }]
    );
}

#[tokio::test]
async fn abandoned_anonymous_carts_are_deleted_and_carts_have_a_line_limit() {
    let (carts, catalog, clock, _db) = setup().await;
    let p = product(&catalog, 0).await;
    let token = carts
        .add(&Holder::Visitor(None), p, 1)
        .await
        .expect("added")
        .cart_token
        .expect("a token");
    let ada = UserId::new();
    carts
        .add(&Holder::Customer(ada, None), p, 1)
        .await
        .expect("added");
    let month = std::time::Duration::from_secs(30 * 24 * 3600);
    assert_eq!(carts.delete_abandoned(month).await.expect("swept"), 0);
    clock.advance(month + std::time::Duration::from_secs(1));
    assert_eq!(carts.delete_abandoned(month).await.expect("swept"), 1);
    let gone = carts
        .view(&Holder::Visitor(Some(token)))
        .await
        .expect("a view");
    assert!(gone.items.is_empty());
    assert_eq!(
        carts.lines(ada).await.expect("lines").len(),
        1,
        "customers' carts stay"
    );

    for n in 1..100 {
        let q = product(&catalog, n).await;
        carts
            .add(&Holder::Customer(ada, None), q, 1)
            .await
            .expect("added");
    }
    let one_more = product(&catalog, 100).await;
    let refused = carts.add(&Holder::Customer(ada, None), one_more, 1).await;
    assert!(
        matches!(refused, Err(agora_cart::error::CartError::Full)),
        "{refused:?}"
    );
    carts
        .add(&Holder::Customer(ada, None), p, 1)
        .await
        .expect("a line already in the cart can still grow");
}
