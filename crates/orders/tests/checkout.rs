//! The checkout's guarantees, against a real database (SQLite, or PostgreSQL when
//! `AGORA_TEST_POSTGRES_URL` is set) and the real catalog, cart, inventory and
//! payments modules with the simulated provider: no overselling, no double
//! charge, no lost order, whatever fails, repeats or crashes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use agora_cart::Carts;
use agora_cart::service::Holder;
use agora_cart::store::CartStore;
use agora_catalog::Catalog;
use agora_catalog::domain::ProductDraft;
use agora_catalog::http::CreateProduct;
use agora_catalog::store::CatalogStore;
use agora_contracts::cart::CartPort;
use agora_contracts::payments::{PaymentStatus, PaymentsPort};
use agora_inventory::Inventory;
use agora_inventory::store::{Change, InventoryStore};
use agora_kernel::{ManualClock, Money, OrderId, ProductId, Timestamp, UserId};
use agora_orders::domain::OrderStatus;
use agora_orders::saga::{CrashPoint, SagaSettings, Step};
use agora_orders::store::{OrdersStore, StoredResponse};
use agora_orders::{Orders, Participants};
use agora_payments::Payments;
use agora_payments::provider::SimulatedBehaviour;
use agora_payments::service::WebhookSettings;
use agora_payments::store::PaymentStore;
use agora_payments::testing::{Call, Fault, FaultyProvider};
use agora_platform::bus::Outbox;
use agora_platform::config::Secret;
use agora_platform::testing::TestDatabase;

const START: i64 = 1_700_000_000_000;

struct Shop {
    orders: Orders,
    catalog: Catalog,
    carts: Carts,
    inventory: Inventory,
    payments: Payments,
    provider: Arc<FaultyProvider>,
    clock: Arc<ManualClock>,
    db: TestDatabase,
}

fn settings() -> SagaSettings {
    SagaSettings {
        retry_pause: Duration::from_millis(1),
        replay_wait: Duration::from_millis(200),
        ..SagaSettings::default()
    }
}

async fn shop() -> Shop {
    let db = TestDatabase::new().await.expect("a database");
    for m in [
        &agora_platform::bus::MIGRATIONS,
        &agora_catalog::MIGRATIONS,
        &agora_inventory::MIGRATIONS,
        &agora_cart::MIGRATIONS,
        &agora_payments::MIGRATIONS,
        &agora_orders::MIGRATIONS,
    ] {
        db.db.migrate(m).await.expect("migrations");
    }
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(START)));
    let catalog = Catalog::new(CatalogStore::new(db.db.clone()), clock.clone());
    let inventory = Inventory::new(
        InventoryStore::new(db.db.clone()),
        Arc::new(catalog.clone()),
        clock.clone(),
    );
    let carts = Carts::new(
        CartStore::new(db.db.clone()),
        Arc::new(catalog.clone()),
        clock.clone(),
    );
    let provider = Arc::new(FaultyProvider::new(
        SimulatedBehaviour::default(),
        db.db.clone(),
    ));
    let payments = Payments::new(
        PaymentStore::new(
            db.db.clone(),
            Arc::new(Outbox::new(agora_payments::OUTBOX_TABLE)),
        ),
        provider.clone(),
        clock.clone(),
        WebhookSettings {
            secret: Secret::new("test-secret"),
            tolerance_secs: 300,
        },
    );
    let orders = orders(&db, &catalog, &carts, &inventory, &payments, &clock);
    Shop {
        orders,
        catalog,
        carts,
        inventory,
        payments,
        provider,
        clock,
        db,
    }
}

/// An orders module over the shop's database and participants: a second one is
/// a restarted process.
fn orders(
    db: &TestDatabase,
    catalog: &Catalog,
    carts: &Carts,
    inventory: &Inventory,
    payments: &Payments,
    clock: &Arc<ManualClock>,
) -> Orders {
    Orders::new(
        OrdersStore::new(db.db.clone()),
        Participants {
            catalog: Arc::new(catalog.clone()),
            cart: Arc::new(carts.clone()),
            inventory: Arc::new(inventory.clone()),
            payments: Arc::new(payments.clone()),
        },
        Arc::new(Outbox::new(agora_orders::service::OUTBOX)),
        clock.clone(),
        settings(),
    )
}

static SKU: AtomicI64 = AtomicI64::new(0);

impl Shop {
    /// A product at `price` cents with `on_hand` units.
    async fn product(&self, price: i64, on_hand: i64) -> ProductId {
        let n = SKU.fetch_add(1, Ordering::Relaxed);
        let request: CreateProduct = serde_json::from_value(serde_json::json!({
            "sku": format!("SKU-{n}"),
            "name": format!("Thing {n}"),
            "price": {"amount": price, "currency": "USD"},
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

    /// A customer with `lines` in their cart.
    async fn customer(&self, lines: &[(ProductId, i64)]) -> UserId {
        let user = UserId::new();
        for (product, quantity) in lines {
            self.carts
                .add(&Holder::Customer(user, None), *product, *quantity)
                .await
                .expect("added to the cart");
        }
        user
    }

    /// On hand, reserved.
    async fn stock(&self, p: ProductId) -> (i64, i64) {
        let s = self.inventory.stock(p).await.expect("stock");
        (s.on_hand, s.reserved)
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.db.db.writer())
            .await
            .expect("a count")
    }

    /// The order a stored response names.
    fn order_id(response: &StoredResponse) -> OrderId {
        let id = response.body["data"]["id"]
            .as_str()
            .or_else(|| response.body["error"]["details"]["order_id"].as_str())
            .expect("an order id");
        OrderId::parse(id).expect("an order id")
    }

    /// Asserts the end state every finished saga must reach: confirmed, captured
    /// and sold; or cancelled, with nothing charged and the stock back.
    async fn assert_settled(&self, order_id: OrderId) -> OrderStatus {
        let order = self.orders.order(order_id).await.expect("the order");
        let held = self
            .count("SELECT COUNT(*) FROM inventory_reservations WHERE status = 'held'")
            .await;
        assert_eq!(held, 0, "no reservation is left held");
        let payment = match order.payment_id {
            Some(p) => self.payments.payment(p).await.expect("payments"),
            None => None,
        };
        match order.status {
            OrderStatus::Confirmed => {
                let payment = payment.expect("a confirmed order has a payment");
                assert_eq!(payment.status, PaymentStatus::Captured);
                assert_eq!(payment.captured_minor, order.total.amount_minor());
            }
            OrderStatus::Cancelled => {
                assert!(order.cancel_reason.is_some());
                if let Some(payment) = payment {
                    assert!(
                        matches!(
                            payment.status,
                            PaymentStatus::Voided
                                | PaymentStatus::Declined
                                | PaymentStatus::Refunded
                        ),
                        "{payment:?}"
                    );
                    assert_eq!(payment.captured_minor, payment.refunded_minor);
                }
            }
            other => panic!("order {order_id} ended {other:?}"),
        }
        order.status
    }
}

fn error_code(response: &StoredResponse) -> &str {
    response.body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_checkout_confirms_the_order_takes_the_money_and_sells_the_stock() {
    let s = shop().await;
    let (mug, cup) = (s.product(1200, 5).await, s.product(300, 5).await);
    let ada = s.customer(&[(mug, 2), (cup, 1)]).await;
    let response = s
        .orders
        .checkout(ada, "k1", "tok_visa")
        .await
        .expect("checkout");
    assert_eq!(response.status, 201, "{response:?}");
    let order = &response.body["data"];
    assert_eq!(order["status"], "confirmed");
    assert_eq!(
        order["total"],
        serde_json::json!({"amount": 2700, "currency": "USD"})
    );
    assert_eq!(order["lines"].as_array().map(Vec::len), Some(2));
    let id = Shop::order_id(&response);
    assert_eq!(s.assert_settled(id).await, OrderStatus::Confirmed);
    assert_eq!(s.stock(mug).await, (3, 0));
    assert_eq!(s.stock(cup).await, (4, 0));
    assert_eq!(s.carts.lines(ada).await.expect("cart"), vec![]);
    // Every step recorded before and after, in order: the clock stands still,
    // so the order is the ids' within and across the multi-row inserts.
    let log = s.orders.store().saga_log(id).await.expect("log");
    let entries: Vec<_> = log
        .iter()
        .map(|(step, phase, _)| format!("{step}:{phase}"))
        .collect();
    let expected: Vec<_> = [
        "reserve",
        "authorize",
        "capture",
        "commit_stock",
        "clear_cart",
    ]
    .iter()
    .flat_map(|step| [format!("{step}:started"), format!("{step}:succeeded")])
    .collect();
    assert_eq!(entries, expected);
    assert_eq!(
        s.count("SELECT COUNT(*) FROM orders_outbox").await,
        2,
        "OrderPlaced and OrderConfirmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_checkouts_for_ten_units_confirm_exactly_ten() {
    let s = Arc::new(shop().await);
    let p = s.product(500, 10).await;
    let mut customers = Vec::new();
    for _ in 0..50 {
        customers.push(s.customer(&[(p, 1)]).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in customers.into_iter().enumerate() {
        let orders = s.orders.clone();
        tasks.spawn(async move { orders.checkout(user, &format!("k{i}"), "tok_visa").await });
    }
    let responses: Vec<StoredResponse> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("every checkout gets an answer"))
        .collect();
    let confirmed = responses.iter().filter(|r| r.status == 201).count();
    let short = responses
        .iter()
        .filter(|r| r.status == 409 && error_code(r) == "ORDERS_OUT_OF_STOCK")
        .count();
    assert_eq!((confirmed, short), (10, 40));
    assert_eq!(s.stock(p).await, (0, 0));
    for r in &responses {
        s.assert_settled(Shop::order_id(r)).await;
    }
    assert_eq!(
        s.count("SELECT COUNT(*) FROM payments_payments WHERE status = 'captured'")
            .await,
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twenty_times_makes_one_order_and_one_charge() {
    let s = shop().await;
    let p = s.product(700, 10).await;
    let ada = s.customer(&[(p, 2)]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let orders = s.orders.clone();
        tasks.spawn(async move { orders.checkout(ada, "same-key", "tok_visa").await });
    }
    let responses: Vec<StoredResponse> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("an answer"))
        .collect();
    assert!(responses.iter().all(|r| *r == responses[0]), "one answer");
    assert_eq!(responses[0].status, 201);
    assert_eq!(s.count("SELECT COUNT(*) FROM orders_orders").await, 1);
    assert_eq!(s.count("SELECT COUNT(*) FROM payments_payments").await, 1);
    assert_eq!(s.provider.calls(Call::Authorize), 1);
    assert_eq!(s.provider.calls(Call::Capture), 1);
    assert_eq!(s.stock(p).await, (8, 0));
    // The same key with another body is refused, and changes nothing.
    let other = s.orders.checkout(ada, "same-key", "tok_mastercard").await;
    assert!(
        matches!(other, Err(agora_orders::error::OrderError::KeyReused)),
        "{other:?}"
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM orders_orders").await, 1);
}

#[tokio::test]
async fn a_declined_card_cancels_the_order_and_releases_the_stock() {
    let s = shop().await;
    let p = s.product(700, 3).await;
    let ada = s.customer(&[(p, 2)]).await;
    let response = s
        .orders
        .checkout(ada, "k", "tok_declined")
        .await
        .expect("an answer");
    assert_eq!(response.status, 402);
    assert_eq!(error_code(&response), "ORDERS_PAYMENT_DECLINED");
    assert_eq!(response.body["error"]["details"]["reason"], "card_declined");
    let id = Shop::order_id(&response);
    assert_eq!(s.assert_settled(id).await, OrderStatus::Cancelled);
    let order = s.orders.order(id).await.expect("order");
    assert_eq!(order.cancel_reason.as_deref(), Some("payment_declined"));
    assert_eq!(s.stock(p).await, (3, 0));
    assert_eq!(
        s.carts.lines(ada).await.expect("cart").len(),
        1,
        "the cart is kept for another try"
    );
}

#[tokio::test]
async fn provider_failures_at_each_step_leave_everything_consistent() {
    use Fault::{LostAnswer as Lost, Unavailable as Down};
    // (the faults, in order, and the order's expected end)
    type Case = (&'static [(Call, Fault, u32)], OrderStatus);
    let cases: [Case; 8] = [
        (&[(Call::Authorize, Down, 1)], OrderStatus::Confirmed),
        (&[(Call::Authorize, Lost, 1)], OrderStatus::Confirmed),
        (&[(Call::Authorize, Down, 100)], OrderStatus::Cancelled),
        (
            &[(Call::Authorize, Lost, 1), (Call::Authorize, Down, 100)],
            OrderStatus::Cancelled,
        ),
        (&[(Call::Capture, Down, 2)], OrderStatus::Confirmed),
        (&[(Call::Capture, Lost, 1)], OrderStatus::Confirmed),
        // A capture is never given up on: the saga retries after the request
        // (the recovery loop) until the provider is back.
        (&[(Call::Capture, Down, 7)], OrderStatus::Confirmed),
        (
            &[(Call::Capture, Lost, 1), (Call::Capture, Down, 7)],
            OrderStatus::Confirmed,
        ),
    ];
    for (faults, expected) in cases {
        let s = shop().await;
        let p = s.product(900, 5).await;
        let ada = s.customer(&[(p, 1)]).await;
        for (op, fault, count) in faults {
            s.provider.fail(*op, *fault, *count);
        }
        let case = format!("{faults:?}");
        let mut response = s.orders.checkout(ada, "k", "tok_visa").await;
        for _ in 0..5 {
            if !matches!(response, Err(agora_orders::error::OrderError::InProgress)) {
                break;
            }
            // Later, the recovery loop resumes it; then the replay answers.
            s.clock.advance(Duration::from_secs(60));
            s.orders.recover().await.expect("recovery");
            response = s.orders.checkout(ada, "k", "tok_visa").await;
        }
        let response = match response {
            Ok(r) => r,
            Err(e) => panic!("{case}: {e:?}"),
        };
        let id = Shop::order_id(&response);
        assert_eq!(s.assert_settled(id).await, expected, "{case}");
        match expected {
            OrderStatus::Confirmed => {
                assert_eq!(response.status, 201, "{case}");
                assert_eq!(s.stock(p).await, (4, 0), "{case}");
            }
            _ => {
                assert_eq!(response.status, 502, "{case}");
                assert_eq!(error_code(&response), "ORDERS_PAYMENT_UNAVAILABLE");
                assert_eq!(s.stock(p).await, (5, 0), "{case}");
            }
        }
        assert!(
            s.count("SELECT COUNT(*) FROM payments_payments").await <= 1,
            "{case}: one payment at most"
        );
        assert_eq!(
            s.count("SELECT COUNT(*) FROM orders_sagas WHERE state = 'done'")
                .await,
            1,
            "{case}: the saga is over"
        );
    }
}

#[tokio::test]
async fn a_crash_between_any_two_steps_is_recovered() {
    let points = [
        (CrashPoint::Before(Step::Reserve), "tok_visa"),
        (CrashPoint::After(Step::Reserve), "tok_visa"),
        (CrashPoint::Before(Step::Authorize), "tok_visa"),
        (CrashPoint::After(Step::Authorize), "tok_visa"),
        (CrashPoint::Before(Step::Capture), "tok_visa"),
        (CrashPoint::After(Step::Capture), "tok_visa"),
        (CrashPoint::Before(Step::CommitStock), "tok_visa"),
        (CrashPoint::After(Step::CommitStock), "tok_visa"),
        (CrashPoint::Before(Step::ClearCart), "tok_visa"),
        (CrashPoint::After(Step::ClearCart), "tok_visa"),
        (CrashPoint::Before(Step::CancelPayment), "tok_declined"),
        (CrashPoint::After(Step::CancelPayment), "tok_declined"),
        (CrashPoint::Before(Step::ReleaseStock), "tok_declined"),
        (CrashPoint::After(Step::ReleaseStock), "tok_declined"),
    ];
    for (point, token) in points {
        let s = shop().await;
        let p = s.product(400, 5).await;
        let ada = s.customer(&[(p, 1)]).await;
        s.orders.crash_at_point(Some(point));
        assert!(
            s.orders.checkout(ada, "k", token).await.is_err(),
            "{point:?}: the process died"
        );
        // The customer puts something else in the cart meanwhile: a checkout
        // takes out only what it bought.
        let other = s.product(100, 5).await;
        s.carts
            .add(&Holder::Customer(ada, None), other, 1)
            .await
            .expect("added");
        // A new process on the same database, once the dead one's lease ran out.
        let restarted = orders(
            &s.db,
            &s.catalog,
            &s.carts,
            &s.inventory,
            &s.payments,
            &s.clock,
        );
        assert_eq!(
            restarted.recover().await.expect("recovery"),
            0,
            "{point:?}: the lease still holds"
        );
        s.clock.advance(Duration::from_secs(31));
        assert_eq!(restarted.recover().await.expect("recovery"), 1, "{point:?}");
        let id: String = sqlx::query_scalar("SELECT id FROM orders_orders")
            .fetch_one(s.db.db.writer())
            .await
            .expect("the order");
        let id = OrderId::from_db(&id).expect("an id");
        let status = s.assert_settled(id).await;
        let expected = if token == "tok_visa" {
            OrderStatus::Confirmed
        } else {
            OrderStatus::Cancelled
        };
        assert_eq!(status, expected, "{point:?}");
        let sold = if expected == OrderStatus::Confirmed {
            1
        } else {
            0
        };
        assert_eq!(s.stock(p).await, (5 - sold, 0), "{point:?}");
        let cart = s.carts.lines(ada).await.expect("cart");
        assert!(cart.iter().any(|l| l.product_id == other), "{point:?}");
        assert_eq!(cart.len() as i64, 2 - sold, "{point:?}");
        assert!(s.provider.calls(Call::Capture) <= 2, "{point:?}");
        // The replay of the request answers as the saga ended.
        let replay = restarted.checkout(ada, "k", token).await.expect("a replay");
        assert_eq!(
            replay.status,
            if sold == 1 { 201 } else { 402 },
            "{point:?}"
        );
    }
}

/// The database refuses to end the saga (a trigger raises on its last
/// update): the checkout, whose response was recorded a step before, still
/// answers it, and recovery finishes the saga once the fault is gone.
#[tokio::test]
async fn a_failure_after_the_answer_still_answers_and_is_recovered() {
    let s = shop().await;
    let p = s.product(400, 5).await;
    let ada = s.customer(&[(p, 1)]).await;
    let (fault, mend) = match s.db.db.backend() {
        agora_platform::db::Backend::Sqlite => (
            "CREATE TRIGGER saga_fault BEFORE UPDATE ON orders_sagas WHEN NEW.state = 'done' \
             BEGIN SELECT RAISE(ABORT, 'disk trouble'); END",
            "DROP TRIGGER saga_fault",
        ),
        agora_platform::db::Backend::Postgres => (
            "CREATE FUNCTION saga_fault() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'disk trouble'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER saga_fault BEFORE UPDATE ON orders_sagas FOR EACH ROW \
             WHEN (NEW.state = 'done') EXECUTE FUNCTION saga_fault()",
            "DROP TRIGGER saga_fault ON orders_sagas; DROP FUNCTION saga_fault()",
        ),
    };
    sqlx::raw_sql(fault)
        .execute(s.db.db.writer())
        .await
        .expect("the fault");
    let response = s
        .orders
        .checkout(ada, "k", "tok_visa")
        .await
        .expect("the recorded answer");
    assert_eq!(response.status, 201);
    let id = Shop::order_id(&response);
    assert_eq!(
        s.count("SELECT COUNT(*) FROM orders_sagas WHERE state = 'done'")
            .await,
        0,
        "the saga could not end"
    );
    assert_eq!(
        s.carts.lines(ada).await.expect("cart").len(),
        0,
        "the cart step ran"
    );

    sqlx::raw_sql(mend)
        .execute(s.db.db.writer())
        .await
        .expect("mended");
    s.clock.advance(Duration::from_secs(31));
    assert_eq!(s.orders.recover().await.expect("recovery"), 1);
    assert_eq!(s.assert_settled(id).await, OrderStatus::Confirmed);
    assert_eq!(s.stock(p).await, (4, 0));
    let replay = s
        .orders
        .checkout(ada, "k", "tok_visa")
        .await
        .expect("a replay");
    assert_eq!((replay.status, replay.body), (201, response.body));
}

#[tokio::test]
async fn staff_refunds_are_partial_or_full_and_never_exceed_the_payment() {
    let s = shop().await;
    let p = s.product(1000, 5).await;
    let ada = s.customer(&[(p, 1)]).await;
    let response = s
        .orders
        .checkout(ada, "k", "tok_visa")
        .await
        .expect("checkout");
    let id = Shop::order_id(&response);
    let order = s
        .orders
        .refund(id, 400, "scratched", "r1")
        .await
        .expect("refund");
    assert_eq!(
        (order.status, order.refunded_minor),
        (OrderStatus::Confirmed, 400)
    );
    let again = s
        .orders
        .refund(id, 400, "scratched", "r1")
        .await
        .expect("a repeat");
    assert_eq!(again.refunded_minor, 400, "a repeat refunds nothing more");
    let too_much = s.orders.refund(id, 601, "more", "r2").await;
    assert!(
        matches!(
            too_much,
            Err(agora_orders::error::OrderError::RefundExceedsPaid {
                refundable_minor: 600
            })
        ),
        "{too_much:?}"
    );
    let order = s
        .orders
        .refund(id, 600, "the rest", "r3")
        .await
        .expect("refund");
    assert_eq!(
        (order.status, order.refunded_minor),
        (OrderStatus::Refunded, 1000)
    );
    let after = s.orders.cancel(id, "late").await;
    assert!(
        matches!(
            after,
            Err(agora_orders::error::OrderError::InvalidTransition(
                OrderStatus::Refunded
            ))
        ),
        "{after:?}"
    );
}

#[tokio::test]
async fn bad_checkouts_are_refused_and_change_nothing() {
    let s = shop().await;
    let p = s.product(1000, 5).await;
    let empty = s.customer(&[]).await;
    let r = s.orders.checkout(empty, "k", "tok_visa").await;
    assert!(
        matches!(r, Err(agora_orders::error::OrderError::CartEmpty)),
        "{r:?}"
    );
    let ada = s.customer(&[(p, 1)]).await;
    s.catalog
        .delete_product(p)
        .await
        .expect("the product is deleted");
    let r = s.orders.checkout(ada, "k2", "tok_visa").await;
    assert!(
        matches!(
            r,
            Err(agora_orders::error::OrderError::ProductsUnavailable(_))
        ),
        "{r:?}"
    );
    // Nothing to pay cannot be authorized: refused before anything is placed.
    let free = s.product(0, 5).await;
    let bob = s.customer(&[(free, 1)]).await;
    let r = s.orders.checkout(bob, "k3", "tok_visa").await;
    assert!(
        matches!(r, Err(agora_orders::error::OrderError::TotalOutOfRange)),
        "{r:?}"
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM orders_orders").await, 0);
    assert_eq!(s.count("SELECT COUNT(*) FROM orders_idempotency").await, 0);
    // Refused requests store nothing: the same key works once the cart is fixed.
    let ok = s.product(100, 5).await;
    s.carts
        .remove(&Holder::Customer(ada, None), p)
        .await
        .expect("removed");
    s.carts
        .add(&Holder::Customer(ada, None), ok, 1)
        .await
        .expect("added");
    let r = s
        .orders
        .checkout(ada, "k2", "tok_visa")
        .await
        .expect("checkout");
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn refunds_made_in_payments_reach_the_order_once_through_the_bus() {
    use agora_contracts::events::{EventPayload, PaymentRefunded};
    use agora_platform::bus::{Bus, InProcessBus, Relay};

    let s = shop().await;
    let p = s.product(1000, 5).await;
    let ada = s.customer(&[(p, 1)]).await;
    let response = s
        .orders
        .checkout(ada, "k", "tok_visa")
        .await
        .expect("checkout");
    let id = Shop::order_id(&response);
    let payment = s
        .orders
        .order(id)
        .await
        .expect("order")
        .payment_id
        .expect("a payment");
    let bus = Arc::new(InProcessBus::new());
    bus.subscribe(
        agora_orders::service::PAYMENT_EVENTS_CONSUMER,
        &[PaymentRefunded::KIND],
        Arc::new(s.orders.clone()),
    );
    let relay = Relay::new(
        s.db.db.clone(),
        s.payments.store().outbox().clone(),
        bus,
        s.clock.clone(),
    );
    // Staff refund through the payments module (not the order): the order
    // learns of it from the event.
    let usd = |minor| Money::new(minor, agora_kernel::Currency::parse("USD").expect("USD"));
    s.payments
        .refund(
            "staff-refund-1",
            payment,
            usd(1000).expect("money"),
            "damaged",
        )
        .await
        .expect("refunded");
    assert!(relay.deliver().await.expect("relayed") >= 1);
    let order = s.orders.order(id).await.expect("order");
    assert_eq!(
        (order.status, order.refunded_minor),
        (OrderStatus::Refunded, 1000)
    );
    // The same events again (the relay crashed before marking them published)
    // change nothing: the inbox has them.
    sqlx::query("UPDATE payments_outbox SET published_at = NULL")
        .execute(s.db.db.writer())
        .await
        .expect("unpublished");
    sqlx::query("UPDATE orders_orders SET refunded_minor = 0 WHERE id = $1")
        .bind(id.to_db())
        .execute(s.db.db.writer())
        .await
        .expect("tampered");
    assert!(relay.deliver().await.expect("relayed again") >= 1);
    let order = s.orders.order(id).await.expect("order");
    assert_eq!(
        order.refunded_minor, 0,
        "a repeat is skipped, not applied again"
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM orders_inbox").await, 1);
}
