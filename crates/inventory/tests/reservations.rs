//! Stock and reservations against a real database (SQLite, or PostgreSQL when
//! `AGORA_TEST_POSTGRES_URL` is set), through the real catalog: the guarantees
//! the checkout relies on.

use std::sync::Arc;

use agora_catalog::Catalog;
use agora_catalog::domain::ProductDraft;
use agora_catalog::http::CreateProduct;
use agora_catalog::store::CatalogStore;
use agora_contracts::inventory::{InventoryError, InventoryPort, ReservationStatus, StockLine};
use agora_inventory::Inventory;
use agora_inventory::error::StockError;
use agora_inventory::store::{Change, InventoryStore};
use agora_kernel::{ManualClock, ProductId, Timestamp};
use agora_platform::testing::TestDatabase;

const START: i64 = 1_700_000_000_000;

struct Fixture {
    inventory: Inventory,
    catalog: Catalog,
    clock: Arc<ManualClock>,
    _db: TestDatabase,
}

async fn fixture() -> Fixture {
    let db = TestDatabase::new().await.expect("a database");
    db.db
        .migrate(&agora_platform::bus::MIGRATIONS)
        .await
        .expect("bus migrations");
    db.db
        .migrate(&agora_catalog::MIGRATIONS)
        .await
        .expect("catalog migrations");
    db.db
        .migrate(&agora_inventory::MIGRATIONS)
        .await
        .expect("inventory migrations");
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(START)));
    let catalog = Catalog::new(CatalogStore::new(db.db.clone()), clock.clone());
    let inventory = Inventory::new(
        InventoryStore::new(db.db.clone()),
        Arc::new(catalog.clone()),
        clock.clone(),
    );
    Fixture {
        inventory,
        catalog,
        clock,
        _db: db,
    }
}

impl Fixture {
    /// A product with `on_hand` units.
    async fn product(&self, on_hand: i64) -> ProductId {
        let n = uuid::Uuid::now_v7().simple().to_string();
        let request: CreateProduct = serde_json::from_value(serde_json::json!({
            "sku": format!("SKU-{}", &n[20..]),
            "name": format!("Thing {}", &n[20..]),
            "price": {"amount": 500, "currency": "USD"},
        }))
        .expect("a request");
        let product = self
            .catalog
            .create_product(ProductDraft::try_from(request).expect("valid"))
            .await
            .expect("created");
        self.inventory
            .change(product.id, Change::Set(on_hand), "initial count", "test")
            .await
            .expect("stocked");
        product.id
    }

    fn later(&self, ms: i64) -> Timestamp {
        Timestamp::from_millis(START + ms)
    }

    async fn available(&self, p: ProductId) -> (i64, i64, i64) {
        let s = self.inventory.stock(p).await.expect("stock");
        (s.on_hand, s.reserved, s.available)
    }
}

fn line(product_id: ProductId, quantity: i64) -> StockLine {
    StockLine {
        product_id,
        quantity,
    }
}

#[tokio::test]
async fn concurrent_reservations_never_oversell() {
    let f = fixture().await;
    let p = f.product(10).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let inventory = f.inventory.clone();
        let expires = f.later(60_000);
        tasks.spawn(async move {
            inventory
                .reserve(&format!("k{i}"), &[line(p, 1)], expires)
                .await
        });
    }
    let results = tasks.join_all().await;
    let held = results.iter().filter(|r| r.is_ok()).count();
    let short = results
        .iter()
        .filter(|r| matches!(r, Err(InventoryError::Insufficient { .. })))
        .count();
    assert_eq!((held, short), (10, 40));
    assert_eq!(f.available(p).await, (10, 10, 0));
}

#[tokio::test]
async fn a_reservation_takes_every_line_or_none() {
    let f = fixture().await;
    let (a, b) = (f.product(5).await, f.product(1).await);
    let refused = f
        .inventory
        .reserve("order-1", &[line(a, 2), line(b, 2)], f.later(60_000))
        .await;
    let Err(InventoryError::Insufficient {
        product_id,
        available,
        requested,
    }) = refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!((product_id, available, requested), (b, 1, 2));
    assert_eq!(f.available(a).await, (5, 0, 5), "nothing reserved");
    assert_eq!(f.available(b).await, (1, 0, 1));
}

#[tokio::test]
async fn the_same_key_reserves_once_even_concurrently() {
    let f = fixture().await;
    // Exactly the units asked for: a retry must find its own reservation, not
    // compete with it for the stock.
    let p = f.product(3).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let inventory = f.inventory.clone();
        let expires = f.later(60_000);
        tasks.spawn(async move { inventory.reserve("saga-1", &[line(p, 3)], expires).await });
    }
    for result in tasks.join_all().await {
        let r = result.expect("every call answers with the one reservation");
        assert_eq!(r.status, ReservationStatus::Held);
    }
    assert_eq!(f.available(p).await, (3, 3, 0));
    let other = f
        .inventory
        .reserve("saga-1", &[line(p, 4)], f.later(60_000))
        .await;
    assert!(matches!(other, Err(InventoryError::KeyReused)), "{other:?}");
}

#[tokio::test]
async fn commit_sells_once_and_release_gives_back_once() {
    let f = fixture().await;
    let p = f.product(10).await;
    f.inventory
        .reserve("a", &[line(p, 3)], f.later(60_000))
        .await
        .expect("held");
    f.inventory
        .reserve("b", &[line(p, 2)], f.later(60_000))
        .await
        .expect("held");
    for _ in 0..2 {
        let r = f.inventory.commit("a").await.expect("committed");
        assert_eq!(r.status, ReservationStatus::Committed);
    }
    assert_eq!(f.available(p).await, (7, 2, 5));
    for _ in 0..2 {
        let r = f.inventory.release("b").await.expect("released");
        assert_eq!(r.status, ReservationStatus::Released);
    }
    assert_eq!(f.available(p).await, (7, 0, 7));
    assert!(matches!(
        f.inventory.release("a").await,
        Err(InventoryError::WrongState(ReservationStatus::Committed))
    ));
    assert!(matches!(
        f.inventory.commit("b").await,
        Err(InventoryError::WrongState(ReservationStatus::Released))
    ));
    assert!(matches!(
        f.inventory.commit("nope").await,
        Err(InventoryError::NotFound)
    ));
    // The sale is in the ledger.
    let sales: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT delta, on_hand_after, actor FROM inventory_movements WHERE kind = 'sale'",
    )
    .fetch_all(f.inventory.store().db().reader())
    .await
    .expect("movements");
    assert_eq!(sales, vec![(-3, 7, "a".to_string())]);
}

#[tokio::test]
async fn a_sale_of_several_lines_is_one_movement_each_and_a_late_repeat_changes_nothing() {
    let f = fixture().await;
    let ps = [
        f.product(10).await,
        f.product(10).await,
        f.product(10).await,
    ];
    let lines: Vec<_> = ps.iter().zip(1..).map(|(&p, q)| line(p, q)).collect();
    f.inventory
        .reserve("m", &lines, f.later(60_000))
        .await
        .expect("held");
    f.inventory.commit("m").await.expect("committed");
    // A repeat of the reservation after its commit (a saga step retried late)
    // answers with the committed reservation and takes nothing more.
    let repeat = f
        .inventory
        .reserve("m", &lines, f.later(60_000))
        .await
        .expect("the same reservation");
    assert_eq!(repeat.status, ReservationStatus::Committed);
    for (p, sold) in ps.iter().zip(1..) {
        assert_eq!(f.available(*p).await, (10 - sold, 0, 10 - sold));
    }
    let mut sales: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT product_id, delta, on_hand_after, actor FROM inventory_movements WHERE kind = 'sale'",
    )
    .fetch_all(f.inventory.store().db().reader())
    .await
    .expect("movements");
    sales.sort_by_key(|sale| -sale.1);
    let expected: Vec<_> = ps
        .iter()
        .zip(1..)
        .map(|(p, sold)| (p.to_db(), -sold, 10 - sold, "m".to_string()))
        .collect();
    assert_eq!(sales, expected);
}

#[tokio::test]
async fn lapsed_reservations_are_released_and_cannot_be_committed() {
    let f = fixture().await;
    let p = f.product(4).await;
    f.inventory
        .reserve("slow", &[line(p, 2)], f.later(1_000))
        .await
        .expect("held");
    f.inventory
        .reserve("slower", &[line(p, 2)], f.later(1_000))
        .await
        .expect("held");
    assert_eq!(f.available(p).await, (4, 4, 0));
    f.clock.advance(std::time::Duration::from_millis(1_000));
    // Committing a lapsed one releases it instead.
    assert!(matches!(
        f.inventory.commit("slow").await,
        Err(InventoryError::WrongState(ReservationStatus::Released))
    ));
    assert_eq!(f.inventory.release_lapsed().await.expect("swept"), 1);
    // A retry of the lapsed reservation is no success.
    assert!(matches!(
        f.inventory
            .reserve("slower", &[line(p, 2)], f.later(60_000))
            .await,
        Err(InventoryError::WrongState(ReservationStatus::Released))
    ));
    assert_eq!(f.available(p).await, (4, 0, 4));
    assert_eq!(f.inventory.release_lapsed().await.expect("swept"), 0);
}

#[tokio::test]
async fn staff_changes_keep_on_hand_at_or_above_reserved_and_are_in_the_ledger() {
    let f = fixture().await;
    let p = f.product(10).await;
    f.inventory
        .reserve("r", &[line(p, 6)], f.later(60_000))
        .await
        .expect("held");
    for change in [Change::Set(5), Change::Adjust(-5), Change::Set(-1)] {
        let refused = f.inventory.change(p, change, "count", "staff").await;
        assert!(
            matches!(refused, Err(StockError::BelowReserved)),
            "{change:?}: {refused:?}"
        );
    }
    let s = f
        .inventory
        .change(p, Change::Adjust(-4), "damaged", "usr_x")
        .await
        .expect("adjusted");
    assert_eq!((s.on_hand, s.reserved, s.available), (6, 6, 0));
    let s = f
        .inventory
        .change(p, Change::Set(20), "stocktake", "usr_x")
        .await
        .expect("set");
    assert_eq!(s.available, 14);
    let ledger: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT kind, delta, on_hand_after, reason FROM inventory_movements ORDER BY created_at, id",
    )
    .fetch_all(f.inventory.store().db().reader())
    .await
    .expect("movements");
    assert_eq!(
        ledger,
        vec![
            ("set".into(), 10, 10, "initial count".into()),
            ("adjust".into(), -4, 6, "damaged".into()),
            ("set".into(), 14, 20, "stocktake".into()),
        ]
    );
    let unknown = f.inventory.stock(ProductId::new()).await;
    assert!(matches!(unknown, Err(StockError::UnknownProduct)));
}

#[tokio::test]
async fn malformed_lines_are_refused() {
    let f = fixture().await;
    let p = f.product(10).await;
    for lines in [
        vec![],
        vec![line(p, 0)],
        vec![line(p, -1)],
        vec![line(p, 1_000_001)],
        vec![line(p, 1), line(p, 1)],
    ] {
        let r = f.inventory.reserve("k", &lines, f.later(1_000)).await;
        assert!(
            matches!(r, Err(InventoryError::InvalidLines(_))),
            "{lines:?}: {r:?}"
        );
    }
    assert_eq!(f.available(p).await, (10, 0, 10));
}

/// Records the events it is handed.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<agora_platform::bus::Event>>);

#[async_trait::async_trait]
impl agora_platform::bus::Handler for Recorder {
    async fn handle(&self, event: &agora_platform::bus::Event) -> anyhow::Result<()> {
        self.0.lock().expect("lock").push(event.clone());
        Ok(())
    }
}

#[tokio::test]
async fn stock_falling_to_the_threshold_publishes_stock_low_once() {
    use agora_contracts::events::{EventPayload, StockLow};
    use agora_platform::bus::{Bus, InProcessBus, Relay};

    let f = fixture().await;
    let p = f.product(10).await;
    let bus = Arc::new(InProcessBus::new());
    let seen = Arc::new(Recorder::default());
    bus.subscribe("test", &[StockLow::KIND], seen.clone());
    let relay = Relay::new(
        f.inventory.store().db().clone(),
        f.inventory.store().outbox().clone(),
        bus,
        f.clock.clone(),
    );
    // 10 → 6 available: above the threshold (5), no event.
    f.inventory
        .reserve("a", &[line(p, 4)], f.later(60_000))
        .await
        .expect("reserved");
    assert_eq!(relay.deliver().await.expect("relayed"), 0);
    // 6 → 3: crosses it.
    f.inventory
        .reserve("b", &[line(p, 3)], f.later(60_000))
        .await
        .expect("reserved");
    // 3 → 2 by a staff adjustment: already low, no second event.
    f.inventory
        .change(p, Change::Adjust(-1), "broken", "test")
        .await
        .expect("adjusted");
    assert_eq!(relay.deliver().await.expect("relayed"), 1);
    assert_eq!(relay.deliver().await.expect("relayed"), 0, "published once");
    let events = seen.0.lock().expect("lock").clone();
    assert_eq!(events.len(), 1);
    let low: StockLow = events[0].payload().expect("a StockLow");
    assert_eq!(
        low,
        StockLow {
            product_id: p,
            available: 3,
            threshold: 5
        }
    );
    assert_eq!(events[0].aggregate_id, p.to_string());
}
