//! The services shape: each module as its own `agora service`, with its own
//! database, reaching the others over gRPC and sharing events over NATS. A
//! customer registers with identity, fills a cart at the cart service (which
//! checks products with the catalog over gRPC), and checks out at the orders
//! service, whose saga reserves, charges and confirms through the inventory,
//! payments and cart services' ports.
//!
//! The fleet runs on NATS (ignored without `AGORA_TEST_NATS_URL`); what a
//! service refuses at start-up is checked without it.

use std::time::Duration;

use agora::app::{Application, Module};
use agora_platform::Shutdown;
use agora_platform::config::{BusBackend, Config, Secret};
use agora_platform::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// One service of the fleet.
struct Service {
    base: String,
    grpc: String,
    shutdown: Shutdown,
    _db: TestDatabase,
}

/// The configuration every service of one fleet shares: the bus, the signing
/// key, cheap password hashes, and no demo catalog.
fn fleet_config(nats_url: &str, unique: &str, signing_key: &str) -> Config {
    let mut config = Config::default();
    config.bus.backend = BusBackend::Nats;
    config.bus.nats_url = nats_url.to_owned();
    config.bus.nats_stream = format!("TEST_{unique}");
    config.bus.nats_subject_prefix = format!("t{unique}");
    config.auth.signing_key = Some(Secret::new(signing_key));
    config.services.token = Some(Secret::new(format!("token-{unique}")));
    config.functions.in_process = false;
    config
}

/// Starts `module` on its own fresh database with `shared` settings and the
/// gRPC addresses of the services started so far.
async fn start(module: Module, shared: &Config, started: &[(Module, &Service)]) -> Service {
    let db = TestDatabase::new().await.expect("a test database");
    let mut config = db.app_config();
    config.bus = shared.bus.clone();
    config.auth.signing_key = shared.auth.signing_key.clone();
    config.services.token = shared.services.token.clone();
    config.functions.in_process = false;
    config.server.grpc_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    for (other, service) in started {
        let grpc = vec![service.grpc.clone()];
        match other {
            Module::Identity => config.services.identity.grpc = grpc,
            Module::Catalog => config.services.catalog.grpc = grpc,
            Module::Inventory => config.services.inventory.grpc = grpc,
            Module::Cart => config.services.cart.grpc = grpc,
            Module::Orders => config.services.orders.grpc = grpc,
            Module::Payments => config.services.payments.grpc = grpc,
        }
    }
    let app = Application::service(config, module)
        .await
        .unwrap_or_else(|e| panic!("{} starts: {e:#}", module.name()));
    let base = format!("http://{}", app.local_addr());
    let grpc = format!("http://{}", app.grpc_addr().expect("a gRPC address"));
    let shutdown = app.shutdown_handle();
    tokio::spawn(app.run_until_stopped());
    Service {
        base,
        grpc,
        shutdown,
        _db: db,
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

struct Client(reqwest::Client);

impl Client {
    async fn call(
        &self,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self.0.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("an answer");
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, identity: &Service, email: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                format!("{}/api/v1/auth/login", identity.base),
                None,
                Some(json!({ "email": email, "password": PASSWORD })),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["access_token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }
}

#[tokio::test]
#[ignore = "needs NATS: set AGORA_TEST_NATS_URL (see docs/operations.md)"]
async fn a_checkout_crosses_the_services_and_each_keeps_its_own_database() {
    let nats_url = std::env::var("AGORA_TEST_NATS_URL").expect("AGORA_TEST_NATS_URL");
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let key = agora_identity::keys::KeyRing::new_config_key().expect("a key");
    let shared = fleet_config(&nats_url, &unique, &key);

    let identity = start(Module::Identity, &shared, &[]).await;
    let catalog = start(Module::Catalog, &shared, &[]).await;
    let payments = start(Module::Payments, &shared, &[]).await;
    let with_catalog = [(Module::Catalog, &catalog)];
    let inventory = start(Module::Inventory, &shared, &with_catalog).await;
    let cart = start(Module::Cart, &shared, &with_catalog).await;
    let orders = start(
        Module::Orders,
        &shared,
        &[
            (Module::Catalog, &catalog),
            (Module::Inventory, &inventory),
            (Module::Cart, &cart),
            (Module::Payments, &payments),
        ],
    )
    .await;
    let http = Client(reqwest::Client::new());

    // Staff, created in identity's database; its token is honoured by every
    // service (they verify it with the shared signing key).
    let mut identity_config = shared.clone();
    identity_config.services.identity.database_url = Some(identity._db.config.database_url());
    agora::app::create_user(
        &identity_config,
        "staff@agora.test",
        "Staff",
        PASSWORD.into(),
        vec![agora_kernel::Role::Staff],
    )
    .await
    .expect("the staff account");
    let staff = http.login(&identity, "staff@agora.test").await;

    let (status, product) = http
        .call(
            Method::POST,
            format!("{}/api/v1/products", catalog.base),
            Some(&staff),
            Some(json!({
                "sku": "SVC-1", "name": "Service mug",
                "price": { "amount": 1250, "currency": "USD" }
            })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    let product_id = product["data"]["id"].as_str().expect("an id").to_owned();
    // The inventory checks the product with the catalog, over gRPC.
    let (status, body) = http
        .call(
            Method::PUT,
            format!("{}/api/v1/inventory/{product_id}", inventory.base),
            Some(&staff),
            Some(json!({ "on_hand": 5, "reason": "first delivery" })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = http
        .call(
            Method::POST,
            format!("{}/api/v1/auth/register", identity.base),
            None,
            Some(json!({ "email": "ada@example.com", "password": PASSWORD, "name": "Ada" })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ada = http.login(&identity, "ada@example.com").await;
    let (status, body) = http
        .call(
            Method::POST,
            format!("{}/api/v1/cart/items", cart.base),
            Some(&ada),
            Some(json!({ "product_id": product_id, "quantity": 2 })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["items"][0]["unit_price"]["amount"], 1250,
        "{body}"
    );

    let (status, body) = http
        .call(
            Method::POST,
            format!("{}/api/v1/checkout", orders.base),
            Some(&ada),
            Some(json!({ "payment_token": "tok_visa" })),
            &[("idempotency-key", "svc-checkout-1")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["status"], "confirmed", "{body}");
    assert_eq!(body["data"]["total"]["amount"], 2500, "{body}");
    let order_id = body["data"]["id"].as_str().expect("an id").to_owned();

    let (status, body) = http
        .call(
            Method::GET,
            format!("{}/api/v1/orders/{order_id}", orders.base),
            Some(&ada),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (StatusCode::OK, &json!("confirmed"))
    );
    let (_, stock) = http
        .call(
            Method::GET,
            format!("{}/api/v1/inventory/{product_id}", inventory.base),
            Some(&staff),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (&stock["data"]["on_hand"], &stock["data"]["reserved"]),
        (&json!(3), &json!(0)),
        "{stock}"
    );
    let (_, basket) = http
        .call(
            Method::GET,
            format!("{}/api/v1/cart", cart.base),
            Some(&ada),
            None,
            &[],
        )
        .await;
    assert_eq!(
        basket["data"]["items"],
        json!([]),
        "the cart was cleared: {basket}"
    );

    // Each service has only its own routes and its own tables.
    let (status, _) = http
        .call(
            Method::GET,
            format!("{}/api/v1/products", orders.base),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for service in [&identity, &catalog, &inventory, &cart, &orders, &payments] {
        let (status, body) = http
            .call(
                Method::GET,
                format!("{}/health/ready", service.base),
                None,
                None,
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let tables = |db: &TestDatabase| {
        let db = db.db.clone();
        async move {
            let names: Vec<String> = sqlx::query_scalar(match db.backend() {
                agora_platform::db::Backend::Sqlite => {
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                }
                agora_platform::db::Backend::Postgres => {
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()"
                }
            })
            .fetch_all(db.reader())
            .await
            .expect("the tables");
            names
        }
    };
    let prefixes = [
        "identity_",
        "catalog_",
        "inventory_",
        "cart_",
        "orders_",
        "payments_",
    ];
    for (service, own) in [
        (&identity, "identity_"),
        (&catalog, "catalog_"),
        (&inventory, "inventory_"),
        (&cart, "cart_"),
        (&orders, "orders_"),
        (&payments, "payments_"),
    ] {
        let names = tables(&service._db).await;
        assert!(names.iter().any(|t| t.starts_with(own)), "{own}: {names:?}");
        let foreign: Vec<_> = names
            .iter()
            .filter(|t| prefixes.iter().any(|p| *p != own && t.starts_with(p)))
            .collect();
        assert!(foreign.is_empty(), "the {own} database holds {foreign:?}");
    }

    drop((identity, catalog, payments, inventory, cart, orders));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.expect("NATS"));
    let stream = shared.bus.nats_stream.clone();
    for name in [stream.clone(), format!("{stream}_DEAD")] {
        let _ = js.delete_stream(&name).await;
    }
}

#[tokio::test]
async fn a_service_refuses_to_start_without_what_it_needs() {
    let db = TestDatabase::new().await.expect("a test database");
    let mut config = db.app_config();
    config.server.grpc_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));

    let refused = |config: Config, module| async move {
        match Application::service(config, module).await {
            Ok(_) => panic!("{} started", module.name()),
            Err(e) => format!("{e:#}"),
        }
    };
    let no_bus = refused(config.clone(), Module::Catalog).await;
    assert!(no_bus.contains("bus.backend"), "{no_bus}");

    config.bus.backend = BusBackend::Nats;
    let no_key = refused(config.clone(), Module::Catalog).await;
    assert!(no_key.contains("auth.signing_key"), "{no_key}");

    config.auth.signing_key = Some(Secret::new(
        agora_identity::keys::KeyRing::new_config_key().expect("a key"),
    ));
    let no_token = refused(config.clone(), Module::Catalog).await;
    assert!(no_token.contains("services.token"), "{no_token}");

    config.services.token = Some(Secret::new("a-shared-secret"));
    // The orders call the catalog, cart, inventory and payments: each must be
    // reachable at a configured address. (The bus is not reached before.)
    let no_catalog = refused(config.clone(), Module::Orders).await;
    assert!(no_catalog.contains("services.catalog.grpc"), "{no_catalog}");
}
