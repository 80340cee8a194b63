//! The ports over gRPC (agora-grpc), against the modules' real implementations
//! on the test database: what a client answers is what the module answers in
//! process, refusals included; a checkout whose participants are all remote
//! ends as one whose participants are local; the metadata (contract version,
//! request id, trace context, deadline) travels; replicas that are down are
//! passed over; peers that speak another version or send garbage get coded
//! errors, and nothing changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora::app;
use agora_cart::Carts;
use agora_cart::service::Holder;
use agora_catalog::Catalog;
use agora_contracts::PortError;
use agora_contracts::cart::CartPort;
use agora_contracts::catalog::CatalogPort;
use agora_contracts::identity::{AccountsPort, Contact};
use agora_contracts::inventory::{InventoryError, InventoryPort, ReservationStatus, StockLine};
use agora_contracts::orders::OrdersPort;
use agora_contracts::payments::{PaymentError, PaymentStatus, PaymentsPort};
use agora_grpc::client::{
    AccountsClient, CartClient, CatalogClient, InventoryClient, OrdersClient, PaymentsClient,
    RemoteSettings, Replicas,
};
use agora_grpc::{PortServer, pb};
use agora_identity::store::IdentityStore;
use agora_inventory::Inventory;
use agora_inventory::store::Change;
use agora_kernel::{
    Clock, Currency, Money, OrderId, PaymentId, ProductId, RequestContext, SystemClock, Timestamp,
    TraceContext, UserId,
};
use agora_orders::Orders;
use agora_payments::Payments;
use agora_platform::Shutdown;
use agora_platform::storage::ObjectStorage;
use agora_platform::testing::TestDatabase;
use async_trait::async_trait;
use tokio::net::TcpListener;

/// The modules on a fresh database, their ports served over gRPC on a
/// loopback port, and clients of that server.
struct Fleet {
    address: String,
    shutdown: Shutdown,
    catalog: Catalog,
    inventory: Inventory,
    payments: Payments,
    carts: Carts,
    orders: Orders,
    products: Vec<ProductId>,
    test: TestDatabase,
}

const STOCK: i64 = 10;

async fn fleet() -> Fleet {
    let test = TestDatabase::new().await.expect("a test database");
    let config = test.app_config();
    app::migrate_only(&config).await.expect("migrations");
    let db = test.db.clone();
    let storage = ObjectStorage::from_config(&config).expect("storage");
    let catalog = app::catalog(&config, &db, None, storage);
    let inventory = app::inventory(&db, Arc::new(catalog.clone()));
    let carts = app::carts(&db, Arc::new(catalog.clone()));
    let payments = app::payments(&config, &db);
    let orders = app::orders(
        &db,
        app::local_participants(&catalog, &carts, &inventory, &payments),
    );
    let products = agora_catalog::seed::seed_demo(&catalog)
        .await
        .expect("the demo catalog")
        .products;
    for product in &products[..3] {
        inventory
            .store()
            .change(
                *product,
                Change::Set(STOCK),
                "test",
                "test",
                SystemClock.now(),
            )
            .await
            .expect("stock");
    }
    let server = PortServer::new(None)
        .catalog(Arc::new(catalog.clone()))
        .cart(Arc::new(carts.clone()))
        .inventory(Arc::new(inventory.clone()))
        .payments(Arc::new(payments.clone()))
        .orders(Arc::new(orders.clone()))
        .accounts(Arc::new(IdentityStore::new(db.clone())));
    let (address, shutdown) = serve(server).await;
    Fleet {
        address,
        shutdown,
        catalog,
        inventory,
        payments,
        carts,
        orders,
        products,
        test,
    }
}

/// Serves `server` on a free loopback port until the returned signal fires.
async fn serve(server: PortServer) -> (String, Shutdown) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("an address"));
    let shutdown = Shutdown::new();
    tokio::spawn(server.serve(listener, shutdown.clone(), Duration::from_secs(1)));
    (address, shutdown)
}

impl Fleet {
    fn replicas(&self, module: &'static str) -> Replicas {
        Replicas::new(
            module,
            std::slice::from_ref(&self.address),
            RemoteSettings::default(),
        )
        .expect("replicas")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD")).expect("money")
}

fn sorted<T: Clone, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort_by_key(key);
    items
}

#[tokio::test]
async fn the_catalog_answers_over_grpc_as_in_process() {
    let fleet = fleet().await;
    let remote = CatalogClient::new(fleet.replicas("catalog"));
    let mut ids = fleet.products[..4].to_vec();
    ids.push(ProductId::new());
    let local = fleet.catalog.products_by_ids(&ids).await.expect("local");
    assert_eq!(local.len(), 4, "the unknown id is absent");
    let over_grpc = remote.products_by_ids(&ids).await.expect("remote");
    assert_eq!(sorted(&over_grpc, |p| p.id), sorted(&local, |p| p.id));
    let current = remote.current_products_by_ids(&ids).await.expect("remote");
    assert_eq!(sorted(&current, |p| p.id), sorted(&local, |p| p.id));
    let missing_image = agora_kernel::ImageId::new();
    assert!(
        !remote
            .attach_renditions(missing_image, &[])
            .await
            .expect("an answer"),
        "no such image"
    );
}

#[tokio::test]
async fn reservations_and_their_refusals_cross_over_grpc() {
    let fleet = fleet().await;
    let remote = InventoryClient::new(fleet.replicas("inventory"));
    let product = fleet.products[0];
    let expires = SystemClock.now().plus(Duration::from_secs(600));
    let line = |quantity| {
        vec![StockLine {
            product_id: product,
            quantity,
        }]
    };

    match remote.reserve("too-many", &line(STOCK + 1), expires).await {
        Err(InventoryError::Insufficient {
            product_id,
            available,
            requested,
        }) => {
            assert_eq!(
                (product_id, available, requested),
                (product, STOCK, STOCK + 1)
            );
        }
        other => panic!("expected Insufficient, got {other:?}"),
    }
    let held = remote.reserve("k1", &line(3), expires).await.expect("held");
    assert_eq!(held.status, ReservationStatus::Held);
    assert_eq!(held.lines, line(3));
    assert_eq!(held.expires_at, expires);
    let again = remote
        .reserve("k1", &line(3), expires)
        .await
        .expect("the same");
    assert_eq!(again, held, "a repeat answers the same reservation");
    assert!(matches!(
        remote.reserve("k1", &line(4), expires).await,
        Err(InventoryError::KeyReused)
    ));
    assert!(matches!(
        remote.reserve("bad", &line(0), expires).await,
        Err(InventoryError::InvalidLines(_))
    ));
    let level = fleet.inventory.stock(product).await.expect("stock");
    assert_eq!((level.on_hand, level.reserved), (STOCK, 3));

    let committed = remote.commit("k1").await.expect("committed");
    assert_eq!(committed.status, ReservationStatus::Committed);
    assert!(matches!(
        remote.release("k1").await,
        Err(InventoryError::WrongState(ReservationStatus::Committed))
    ));
    assert!(matches!(
        remote.commit("no-such-key").await,
        Err(InventoryError::NotFound)
    ));
    let level = fleet.inventory.stock(product).await.expect("stock");
    assert_eq!((level.on_hand, level.reserved), (STOCK - 3, 0));
}

#[tokio::test]
async fn payments_and_their_refusals_cross_over_grpc() {
    let fleet = fleet().await;
    let remote = PaymentsClient::new(fleet.replicas("payments"));
    let authorized = remote
        .authorize("a1", "order-1", "tok_visa", usd(2500))
        .await
        .expect("authorized");
    assert_eq!(authorized.status, PaymentStatus::Authorized);
    assert_eq!(authorized.card_last4.as_deref(), Some("4242"));
    assert_eq!(authorized.amount, usd(2500));
    let again = remote
        .authorize("a1", "order-1", "tok_visa", usd(2500))
        .await
        .expect("the same");
    assert_eq!(again.id, authorized.id, "a repeat is the same payment");

    let captured = remote.capture("c1", authorized.id).await.expect("captured");
    assert_eq!(
        (captured.status, captured.captured_minor),
        (PaymentStatus::Captured, 2500)
    );
    match remote
        .refund("r1", authorized.id, usd(9999), "too much")
        .await
    {
        Err(PaymentError::ExceedsRefundable { refundable_minor }) => {
            assert_eq!(refundable_minor, 2500)
        }
        other => panic!("expected ExceedsRefundable, got {other:?}"),
    }
    let refunded = remote
        .refund("r2", authorized.id, usd(1000), "one item back")
        .await
        .expect("refunded");
    assert_eq!(
        (refunded.status, refunded.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 1000)
    );
    let local = fleet
        .payments
        .payment(authorized.id)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(
        remote.payment(authorized.id).await.expect("read"),
        Some(local)
    );
    assert_eq!(remote.payment(PaymentId::new()).await.expect("read"), None);
    assert!(matches!(
        remote.capture("c2", PaymentId::new()).await,
        Err(PaymentError::NotFound)
    ));

    let declined = remote
        .authorize("a2", "order-2", "tok_declined", usd(100))
        .await
        .expect("an answer");
    assert_eq!(declined.status, PaymentStatus::Declined);
    assert_eq!(declined.decline_reason.as_deref(), Some("card_declined"));
    assert!(matches!(
        remote.capture("c3", declined.id).await,
        Err(PaymentError::InvalidState(PaymentStatus::Declined))
    ));
}

#[tokio::test]
async fn a_checkout_whose_participants_are_all_remote_confirms_the_order() {
    let fleet = fleet().await;
    let catalog: Arc<dyn CatalogPort> = Arc::new(CatalogClient::new(fleet.replicas("catalog")));
    let cart: Arc<dyn CartPort> = Arc::new(CartClient::new(fleet.replicas("cart")));
    // The orders module as its own service would have it: every participant
    // over gRPC, its own tables local.
    let orders = app::orders(
        &fleet.test.db,
        agora_orders::Participants {
            catalog: catalog.clone(),
            cart: cart.clone(),
            inventory: Arc::new(InventoryClient::new(fleet.replicas("inventory"))),
            payments: Arc::new(PaymentsClient::new(fleet.replicas("payments"))),
        },
    );
    // And a cart module that checks products with the remote catalog.
    let carts = app::carts(&fleet.test.db, catalog);
    let user = UserId::new();
    let holder = Holder::Customer(user, None);
    carts
        .add(&holder, fleet.products[0], 2)
        .await
        .expect("added");
    carts
        .add(&holder, fleet.products[1], 1)
        .await
        .expect("added");
    assert_eq!(cart.lines(user).await.expect("lines").len(), 2);

    let answer = orders
        .checkout(user, "checkout-1", "tok_visa")
        .await
        .expect("an answer");
    assert_eq!(answer.status, 201, "{}", answer.body);
    let order = &answer.body["data"];
    assert_eq!(order["status"], "confirmed", "{order}");
    let id = OrderId::parse(order["id"].as_str().expect("an id")).expect("an order id");

    // Every module agrees, read in process.
    let record = OrdersPort::order(&fleet.orders, id)
        .await
        .expect("read")
        .expect("the order");
    assert_eq!(record.status, "confirmed");
    assert!(
        cart.lines(user).await.expect("lines").is_empty(),
        "the cart was cleared"
    );
    let level = fleet
        .inventory
        .stock(fleet.products[0])
        .await
        .expect("stock");
    assert_eq!((level.on_hand, level.reserved), (STOCK - 2, 0));
    let payment =
        PaymentId::parse(order["payment_id"].as_str().expect("a payment")).expect("a payment id");
    let payment = fleet
        .payments
        .payment(payment)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(payment.status, PaymentStatus::Captured);
    assert_eq!(payment.captured_minor, record.total.amount_minor());
    // The orders' own port, over gRPC, reads the same order.
    let remote_orders = OrdersClient::new(fleet.replicas("orders"));
    assert_eq!(
        remote_orders.order(id).await.expect("read"),
        Some(record.clone())
    );
    let page = remote_orders
        .placed_between(
            Timestamp::from_millis(0),
            SystemClock.now().plus(Duration::from_secs(60)),
            None,
            10,
        )
        .await
        .expect("a page");
    assert_eq!(page, vec![record]);
    assert_eq!(
        remote_orders.order(OrderId::new()).await.expect("read"),
        None
    );
}

#[tokio::test]
async fn the_cart_and_accounts_answer_over_grpc() {
    let fleet = fleet().await;
    let remote = CartClient::new(fleet.replicas("cart"));
    let user = UserId::new();
    assert!(remote.lines(user).await.expect("lines").is_empty());
    remote
        .clear(user)
        .await
        .expect("clearing nothing is a no-op");
    let holder = Holder::Customer(user, None);
    for product in &fleet.products[..3] {
        fleet.carts.add(&holder, *product, 1).await.expect("added");
    }
    remote
        .remove_products(user, &fleet.products[..1])
        .await
        .expect("removed");
    let lines = remote.lines(user).await.expect("lines");
    assert_eq!(
        lines.iter().map(|l| l.product_id).collect::<Vec<_>>(),
        fleet.products[1..3].to_vec()
    );
    remote.clear(user).await.expect("cleared");
    assert!(remote.lines(user).await.expect("lines").is_empty());

    let accounts = AccountsClient::new(fleet.replicas("identity"));
    assert_eq!(accounts.contact(UserId::new()).await.expect("read"), None);
}

#[tokio::test]
async fn the_health_service_reports_each_port_serving() {
    let fleet = fleet().await;
    let channel = tonic::transport::Endpoint::from_shared(fleet.address.clone())
        .expect("an endpoint")
        .connect()
        .await
        .expect("connected");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in [
        "",
        "agora.v1.Catalog",
        "agora.v1.Cart",
        "agora.v1.Inventory",
        "agora.v1.Payments",
        "agora.v1.Orders",
        "agora.v1.Accounts",
    ] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("an answer")
            .into_inner();
        assert_eq!(
            answer.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "agora.v1.Nothing".into(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn peers_of_another_contract_and_malformed_messages_are_refused_and_change_nothing() {
    let fleet = fleet().await;
    let channel = tonic::transport::Endpoint::from_shared(fleet.address.clone())
        .expect("an endpoint")
        .connect()
        .await
        .expect("connected");
    let mut raw = pb::inventory_client::InventoryClient::new(channel);
    let product = fleet.products[0];
    let reserve = |product_id: String, version: Option<&'static str>| {
        let mut request = tonic::Request::new(pb::ReserveRequest {
            key: "raw".into(),
            lines: vec![pb::StockLine {
                product_id,
                quantity: 1,
            }],
            expires_at_ms: SystemClock.now().plus(Duration::from_secs(60)).as_millis(),
        });
        if let Some(version) = version {
            request
                .metadata_mut()
                .insert("agora-contract", version.parse().expect("metadata"));
        }
        request
    };

    let no_version = raw
        .reserve(reserve(product.to_string(), None))
        .await
        .expect_err("refused");
    assert_eq!(no_version.code(), tonic::Code::FailedPrecondition);
    let other_version = raw
        .reserve(reserve(product.to_string(), Some("2")))
        .await
        .expect_err("refused");
    assert_eq!(other_version.code(), tonic::Code::FailedPrecondition);
    assert!(
        other_version.message().contains("contract 1"),
        "{}",
        other_version.message()
    );
    let malformed = raw
        .reserve(reserve("not-an-id".into(), Some("1")))
        .await
        .expect_err("refused");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    assert!(
        malformed.message().contains("product_id"),
        "{}",
        malformed.message()
    );
    let no_outcome = raw
        .commit({
            let mut request = tonic::Request::new(pb::ReservationKey { key: "raw".into() });
            request
                .metadata_mut()
                .insert("agora-contract", "1".parse().expect("metadata"));
            request
        })
        .await
        .expect("an answer")
        .into_inner();
    assert!(
        matches!(
            no_outcome.outcome,
            Some(pb::reservation_outcome::Outcome::Refused(_))
        ),
        "nothing was reserved under the key"
    );
    let level = fleet.inventory.stock(product).await.expect("stock");
    assert_eq!(
        (level.on_hand, level.reserved),
        (STOCK, 0),
        "nothing changed"
    );
}

/// A port that answers with what reached it: the request id and trace of the
/// call; for the nil user it works for a second first, and notes when it
/// finished.
#[derive(Default)]
struct Probe {
    finished_slow_call: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl AccountsPort for Probe {
    async fn contact(&self, user: UserId) -> Result<Option<Contact>, PortError> {
        if user.as_uuid().is_nil() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.finished_slow_call
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let trace = RequestContext::current_trace().map(|t| t.trace_id());
        Ok(Some(Contact {
            email: RequestContext::current_request_id()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            name: trace.unwrap_or_default(),
        }))
    }
}

#[tokio::test]
async fn the_request_id_trace_and_deadline_travel_with_the_call() {
    let probe = Probe::default();
    let finished = probe.finished_slow_call.clone();
    let (address, shutdown) = serve(PortServer::new(None).accounts(Arc::new(probe))).await;
    let settings = RemoteSettings {
        deadline: Duration::from_millis(300),
        ..RemoteSettings::default()
    };
    let client =
        AccountsClient::new(Replicas::new("identity", &[address], settings).expect("replicas"));
    let caller = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("a traceparent");
    let seen = RequestContext::new(Arc::from("req-grpc-1"), Some(caller))
        .scope(client.contact(UserId::new()))
        .await
        .expect("an answer")
        .expect("a contact");
    assert_eq!(seen.email, "req-grpc-1", "the request id");
    assert_eq!(
        seen.name, "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace"
    );

    let started = Instant::now();
    let nil = UserId::from_db("00000000-0000-0000-0000-000000000000").expect("the nil id");
    match client.contact(nil).await {
        Err(PortError::Unavailable { reason, .. }) => {
            assert!(reason.contains("deadline (300 ms)"), "{reason}")
        }
        other => panic!("expected the deadline to pass, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the call ended at its deadline, not when the callee finished"
    );
    // The deadline travelled: the server dropped the call when it passed,
    // so the callee never finished its work.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!finished.load(std::sync::atomic::Ordering::SeqCst));
    shutdown.trigger();
}

/// A free loopback address where nothing listens.
async fn nothing_listening() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("an address"));
    drop(listener);
    address
}

/// A loopback address that accepts connections and closes them at once,
/// counting them.
async fn closing_at_once() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("an address"));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn calls_go_to_the_replicas_that_answer_and_a_failing_one_is_passed_over() {
    let (live, shutdown) = serve(PortServer::new(None).accounts(Arc::new(Probe::default()))).await;
    let dead = nothing_listening().await;
    let (flaky, accepted) = closing_at_once().await;
    let replicas = Replicas::new(
        "identity",
        &[dead.clone(), live, flaky],
        RemoteSettings::default(),
    )
    .expect("replicas");
    let client = AccountsClient::new(replicas);
    for _ in 0..12 {
        client
            .contact(UserId::new())
            .await
            .expect("a live replica answers every call");
    }
    // In turn, the flaky replica would have been tried four times; after its
    // first failure it is passed over.
    let tries = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&tries),
        "the failing replica was tried {tries} times"
    );
    shutdown.trigger();

    let none = AccountsClient::new(
        Replicas::new("identity", &[dead], RemoteSettings::default()).expect("replicas"),
    );
    assert!(matches!(
        none.contact(UserId::new()).await,
        Err(PortError::Unavailable {
            module: "identity",
            ..
        })
    ));
    assert!(Replicas::new("identity", &[], RemoteSettings::default()).is_err());
    assert!(
        Replicas::new(
            "identity",
            &["127.0.0.1:1".into()],
            RemoteSettings::default()
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_port_with_a_token_refuses_calls_without_it() {
    let (address, shutdown) =
        serve(PortServer::new(Some("s3cret-token")).accounts(Arc::new(Probe::default()))).await;
    let with = |token: Option<&str>| {
        let settings = RemoteSettings {
            token: token.map(str::to_owned),
            ..RemoteSettings::default()
        };
        AccountsClient::new(
            Replicas::new("identity", std::slice::from_ref(&address), settings).expect("replicas"),
        )
    };
    for token in [None, Some("wrong-token!")] {
        match with(token).contact(UserId::new()).await {
            Err(PortError::Internal { reason, .. }) => {
                assert!(reason.contains("Unauthenticated"), "{reason}")
            }
            other => panic!("expected a refusal with {token:?}, got {other:?}"),
        }
    }
    assert!(
        with(Some("s3cret-token"))
            .contact(UserId::new())
            .await
            .expect("an answer")
            .is_some()
    );
    // The health service asks for no token (probes have none).
    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .expect("an endpoint")
        .connect()
        .await
        .expect("connected");
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "agora.v1.Accounts".into(),
        })
        .await
        .expect("an answer");
    assert_eq!(
        answer.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    shutdown.trigger();
}

#[tokio::test]
async fn a_peer_that_answers_garbage_is_a_coded_error_not_a_crash() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .await;
        }
    });
    let settings = RemoteSettings {
        deadline: Duration::from_secs(2),
        ..RemoteSettings::default()
    };
    let client =
        AccountsClient::new(Replicas::new("identity", &[address], settings).expect("replicas"));
    let started = Instant::now();
    let failed = client.contact(UserId::new()).await;
    assert!(
        matches!(failed, Err(PortError::Unavailable { .. })),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "refused at once, not at the deadline"
    );
}
