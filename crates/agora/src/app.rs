//! The composition root: turns a configuration into a running process.
//!
//! Which implementation stands behind each port, and which modules run here, is
//! decided in this file only; modules never construct each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin;
use agora_cart::Carts;
use agora_cart::store::CartStore;
use agora_catalog::Catalog;
use agora_catalog::store::CatalogStore;
use agora_contracts::catalog::CatalogPort;
use agora_contracts::identity::AccountsPort;
use agora_contracts::orders::OrdersPort;
use agora_functions::{Export, Receipts, Thumbnails};
use agora_identity::Identity;
use agora_identity::keys::KeyRing;
use agora_identity::store::IdentityStore;
use agora_inventory::Inventory;
use agora_inventory::store::InventoryStore;
use agora_kernel::{Clock, SystemClock};
use agora_orders::Orders;
use agora_orders::saga::SagaSettings;
use agora_orders::store::OrdersStore;
use agora_payments::Payments;
use agora_payments::provider::{SimulatedBehaviour, SimulatedProvider};
use agora_payments::store::PaymentStore;
use agora_platform::auth::Authenticator;
use agora_platform::bus::nats::{NatsBus, NatsSettings};
use agora_platform::bus::rabbit::{RabbitBus, RabbitSettings};
use agora_platform::bus::{Bus, EventLog, InProcessBus, Outbox, OutboxBacklog, Relay};
use agora_platform::cache::{Cache, CacheAside, MemoryCache, RedisCache, TwoTierCache};
use agora_platform::config::{BusBackend, CacheBackend};
use agora_platform::http::edge::Edge;
use agora_platform::http::{build_router, health};
use agora_platform::mail::Mailer;
use agora_platform::metrics::{self, Gauges};
use agora_platform::storage::ObjectStorage;
use agora_platform::{Config, Database, Shutdown};
use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;

use crate::api;

/// The monolith, built and bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    db: Database,
    inventory: Inventory,
    carts: Carts,
    orders: Orders,
    payments: Payments,
    relays: Vec<Relay>,
    export: Option<Export>,
    metrics: Option<metrics::Endpoint>,
    shutdown: Shutdown,
    grace: Duration,
}

/// How often lapsed stock reservations are released.
const RESERVATION_SWEEP: Duration = Duration::from_secs(5);
/// How often abandoned anonymous carts are deleted, and after how long.
const CART_SWEEP: Duration = Duration::from_secs(3600);
const ABANDONED_CART_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often unfinished checkout sagas are looked for (after a crash, or
/// between retries).
const SAGA_RECOVERY: Duration = Duration::from_secs(1);
/// How often provider calls left without an answer are repeated.
const PAYMENT_RESOLVER: Duration = Duration::from_secs(30);

impl Application {
    /// Connects the database, runs migrations, seeds the demo catalog into an empty
    /// database (unless `seed.demo` is off), wires the modules and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let started = Instant::now();
        let db = Database::connect(&config).await?;
        migrate(&db).await?;
        let authenticator = Authenticator::new(&config.auth);
        let identity = identity(&config, &db, authenticator.clone()).await?;
        let cache = read_cache(&config)?;
        let storage = ObjectStorage::from_config(&config)?;
        let catalog = catalog(&config, &db, cache.clone(), storage.clone());
        let inventory = inventory(&db, &catalog);
        if config.seed.demo {
            load_demo(&catalog, &inventory).await?;
        }
        let carts = carts(&db, &catalog);
        let payments = payments(&config, &db);
        let orders = orders(&db, &catalog, &carts, &inventory, &payments);
        let (bus, relays) =
            messaging(&config, &db, &catalog, &inventory, &payments, &orders).await?;
        let export = if config.functions.in_process {
            let ports = FunctionPorts {
                catalog: Arc::new(catalog.clone()),
                orders: Arc::new(orders.clone()),
                accounts: Arc::new(IdentityStore::new(db.clone())),
                storage: storage.clone(),
                mailer: Mailer::from_config(&config)?,
            };
            Some(functions(&*bus, &db, ports))
        } else {
            // `agora functions` workers run them: their events wait for them
            // even while none runs.
            bus.retain_for(
                agora_functions::thumbnails::CONSUMER,
                &agora_functions::thumbnails::KINDS,
            );
            bus.retain_for(
                agora_functions::receipts::CONSUMER,
                &agora_functions::receipts::KINDS,
            );
            None
        };
        let modules = Modules {
            carts: carts.clone(),
            identity,
            catalog,
            inventory: inventory.clone(),
            orders: orders.clone(),
            payments: payments.clone(),
        };
        let metrics = if config.telemetry.metrics {
            let outboxes = [
                modules.catalog.store().outbox(),
                modules.inventory.store().outbox(),
                modules.payments.store().outbox(),
                modules.orders.outbox(),
            ];
            let gauges: Vec<Arc<dyn Gauges>> = vec![
                Arc::new(OutboxBacklog::new(
                    db.clone(),
                    &outboxes.map(|o| &**o),
                    Arc::new(SystemClock),
                )),
                Arc::new(CatalogCacheGauges(modules.catalog.clone())),
                Arc::new(db.clone()),
            ];
            Some(metrics::Endpoint::new(metrics::install()?, gauges))
        } else {
            None
        };
        let router = router(
            &config,
            &db,
            cache,
            authenticator,
            modules,
            bus,
            metrics.as_ref(),
        );
        let listener = TcpListener::bind(config.server.addr)
            .await
            .with_context(|| {
                format!("Failed to listen on {} (`server.addr`)", config.server.addr)
            })?;
        let local_addr = listener.local_addr()?;
        tracing::info!(
            addr = %local_addr,
            database = ?db.backend(),
            startup_ms = started.elapsed().as_millis() as u64,
            "agora is ready: http://{local_addr}/api/v1/products — API docs at http://{local_addr}/docs"
        );
        Ok(Application {
            listener,
            local_addr,
            router,
            db,
            inventory,
            carts,
            orders,
            payments,
            relays,
            export,
            metrics,
            shutdown: Shutdown::new(),
            grace: Duration::from_millis(config.server.shutdown_timeout_ms),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The signal that stops the application.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until the shutdown signal, lets in-flight requests finish (bounded by
    /// `server.shutdown_timeout_ms`), then closes the database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut sweepers = tokio::task::JoinSet::new();
        sweepers.spawn(
            self.inventory
                .clone()
                .run_sweeper(RESERVATION_SWEEP, self.shutdown.clone()),
        );
        sweepers.spawn(self.carts.clone().run_sweeper(
            CART_SWEEP,
            ABANDONED_CART_AGE,
            self.shutdown.clone(),
        ));
        sweepers.spawn(
            self.orders
                .clone()
                .run_recovery(SAGA_RECOVERY, self.shutdown.clone()),
        );
        sweepers.spawn(
            self.payments
                .clone()
                .run_resolver(PAYMENT_RESOLVER, self.shutdown.clone()),
        );
        for relay in self.relays {
            sweepers.spawn(relay.run(self.shutdown.clone()));
        }
        if let Some(metrics) = self.metrics {
            sweepers.spawn(metrics.upkeep(self.shutdown.clone()));
        }
        if let Some(export) = self.export {
            sweepers.spawn(export.run_nightly(
                Arc::new(SystemClock),
                agora_functions::export::NIGHTLY_CHECK,
                self.shutdown.clone(),
            ));
        }
        let outcome = agora_platform::http::serve(
            self.listener,
            self.router,
            self.shutdown.clone(),
            self.grace,
        )
        .await;
        // The server stops only once shutdown fired, which also ends the sweepers.
        self.shutdown.trigger();
        sweepers.join_all().await;
        self.db.close().await;
        tracing::info!("agora stopped");
        outcome
    }
}

/// The identity module over `db`, with its signing keys, on the system clock. It
/// hands the public keys and the disabled accounts to `authenticator`.
pub async fn identity(
    config: &Config,
    db: &Database,
    authenticator: Authenticator,
) -> anyhow::Result<Identity> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let keys = match &config.auth.signing_key {
        Some(key) => KeyRing::from_config(key.expose())?,
        None => KeyRing::load_or_create(&config.data_dir, clock.now(), access_ttl_ms(config))?,
    };
    Identity::start(
        IdentityStore::new(db.clone()),
        keys,
        authenticator,
        clock,
        &config.auth,
    )
    .await
    .context("Failed to start the identity module")
}

fn access_ttl_ms(config: &Config) -> i64 {
    i64::try_from(config.auth.access_token_ttl_secs).unwrap_or(i64::MAX / 1000) * 1000
}

/// The cache of public reads that `config.cache` asks for, if any.
pub fn read_cache(config: &Config) -> anyhow::Result<Option<Arc<dyn Cache>>> {
    let redis = || {
        RedisCache::new(
            &config.cache.redis_url,
            &config.cache.redis_prefix,
            Duration::from_millis(config.cache.redis_timeout_ms),
        )
        .context("`cache.redis_url` is not a usable Redis URL")
    };
    Ok(match config.cache.backend {
        CacheBackend::Memory => Some(Arc::new(MemoryCache::new(config.cache.max_bytes))),
        CacheBackend::Redis => Some(Arc::new(redis()?)),
        CacheBackend::TwoTier => Some(Arc::new(TwoTierCache::new(
            MemoryCache::new(config.cache.max_bytes),
            redis()?,
            Duration::from_secs(config.cache.ttl_secs),
        ))),
        CacheBackend::None => None,
    })
}

/// The catalog over `db`, on the system clock, its public reads cached in
/// `cache` for `cache.ttl_secs`.
pub fn catalog(
    config: &Config,
    db: &Database,
    cache: Option<Arc<dyn Cache>>,
    storage: ObjectStorage,
) -> Catalog {
    let catalog = Catalog::new(CatalogStore::new(db.clone()), Arc::new(SystemClock))
        .with_storage(storage, config.storage.max_image_bytes);
    match cache {
        Some(cache) => catalog.with_cache(
            Arc::new(CacheAside::new(cache)),
            Duration::from_secs(config.cache.ttl_secs),
        ),
        None => catalog,
    }
}

/// The inventory over `db`, checking products with `catalog`, on the system clock.
pub fn inventory(db: &Database, catalog: &Catalog) -> Inventory {
    Inventory::new(
        InventoryStore::new(db.clone()),
        Arc::new(catalog.clone()),
        Arc::new(SystemClock),
    )
}

/// The carts over `db`, priced by `catalog`, on the system clock.
pub fn carts(db: &Database, catalog: &Catalog) -> Carts {
    Carts::new(
        CartStore::new(db.clone()),
        Arc::new(catalog.clone()),
        Arc::new(SystemClock),
    )
}

/// The payments over `db`, with the simulated provider as configured, on the
/// system clock.
pub fn payments(config: &Config, db: &Database) -> Payments {
    Payments::new(
        PaymentStore::new(
            db.clone(),
            Arc::new(Outbox::new(agora_payments::OUTBOX_TABLE)),
        ),
        Arc::new(SimulatedProvider::new(SimulatedBehaviour::from_config(
            &config.payments,
        ))),
        Arc::new(SystemClock),
        agora_payments::WebhookSettings::from_config(&config.payments),
    )
}

/// The orders over `db`, calling the other modules in this process.
pub fn orders(
    db: &Database,
    catalog: &Catalog,
    carts: &Carts,
    inventory: &Inventory,
    payments: &Payments,
) -> Orders {
    Orders::new(
        OrdersStore::new(db.clone()),
        agora_orders::Participants {
            catalog: Arc::new(catalog.clone()),
            cart: Arc::new(carts.clone()),
            inventory: Arc::new(inventory.clone()),
            payments: Arc::new(payments.clone()),
        },
        Arc::new(Outbox::new(agora_orders::service::OUTBOX)),
        Arc::new(SystemClock),
        SagaSettings::default(),
    )
}

/// The bus (in-process or NATS JetStream) with its consumers, and one outbox
/// relay per module that publishes events.
async fn messaging(
    config: &Config,
    db: &Database,
    catalog: &Catalog,
    inventory: &Inventory,
    payments: &Payments,
    orders: &Orders,
) -> anyhow::Result<(Arc<dyn Bus>, Vec<Relay>)> {
    use agora_contracts::events::{EventPayload, PaymentRefunded};
    let bus = bus(config, db).await?;
    bus.subscribe(
        agora_orders::service::PAYMENT_EVENTS_CONSUMER,
        &[PaymentRefunded::KIND],
        Arc::new(orders.clone()),
    );
    // Every node forgets its cached catalog reads when another node changes the
    // catalog. (With the in-process bus there is no other node, and this one
    // forgot them as it wrote.)
    if config.bus.backend.is_shared() {
        bus.subscribe_each_node(
            agora_catalog::service::CACHE_CONSUMER,
            &agora_catalog::service::CHANGE_EVENTS,
            Arc::new(catalog.clone()),
        );
    }
    let relays = [
        catalog.store().outbox().clone(),
        inventory.store().outbox().clone(),
        payments.store().outbox().clone(),
        orders.outbox().clone(),
    ]
    .into_iter()
    .map(|outbox| Relay::new(db.clone(), outbox, bus.clone(), Arc::new(SystemClock)))
    .collect();
    Ok((bus, relays))
}

/// What the functions read and write: the modules through their ports (in
/// this process), the object storage and the mailer.
pub struct FunctionPorts {
    /// Products and their images.
    pub catalog: Arc<dyn CatalogPort>,
    /// Orders.
    pub orders: Arc<dyn OrdersPort>,
    /// Customers' addresses.
    pub accounts: Arc<dyn AccountsPort>,
    /// Originals, renditions, exports.
    pub storage: ObjectStorage,
    /// Receipts.
    pub mailer: Mailer,
}

/// Subscribes the event functions (thumbnails, receipts) to `bus`, and hands
/// back the nightly export for the caller to run.
pub fn functions(bus: &dyn Bus, db: &Database, ports: FunctionPorts) -> Export {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    bus.subscribe(
        agora_functions::thumbnails::CONSUMER,
        &agora_functions::thumbnails::KINDS,
        Arc::new(Thumbnails::new(
            ports.storage.clone(),
            ports.catalog,
            db.clone(),
            clock.clone(),
        )),
    );
    bus.subscribe(
        agora_functions::receipts::CONSUMER,
        &agora_functions::receipts::KINDS,
        Arc::new(Receipts::new(
            ports.orders.clone(),
            ports.accounts,
            ports.mailer,
            db.clone(),
            clock,
        )),
    );
    Export::new(ports.orders, ports.storage)
}

/// The bus `config.bus` asks for.
async fn bus(config: &Config, db: &Database) -> anyhow::Result<Arc<dyn Bus>> {
    Ok(match config.bus.backend {
        BusBackend::InProcess => Arc::new(InProcessBus::with_dead_letters(
            db.clone(),
            config.bus.max_attempts,
            Arc::new(SystemClock),
        )),
        BusBackend::Nats => Arc::new(
            NatsBus::connect(NatsSettings {
                url: config.bus.nats_url.clone(),
                stream: config.bus.nats_stream.clone(),
                subject_prefix: config.bus.nats_subject_prefix.clone(),
                max_attempts: config.bus.max_attempts,
                retry_pause: Duration::from_millis(config.bus.retry_pause_ms),
                ack_wait: Duration::from_secs(30),
                partitions: config.bus.nats_partitions,
            })
            .await
            .with_context(|| format!("Failed to set up the NATS bus at {}", config.bus.nats_url))?,
        ),
        BusBackend::Rabbitmq => Arc::new(RabbitBus::new(
            RabbitSettings {
                url: config.bus.rabbitmq_url.clone(),
                exchange: config.bus.rabbitmq_exchange.clone(),
                max_attempts: config.bus.max_attempts,
                retry_pause: Duration::from_millis(config.bus.retry_pause_ms),
            },
            db.clone(),
            Arc::new(SystemClock),
        )),
    })
}

/// `agora functions`: runs the functions as a worker on the shared bus until
/// a shutdown signal. Their durable consumers keep events while no worker
/// runs, so workers may be scaled to none.
pub async fn run_functions(config: &Config) -> anyhow::Result<()> {
    if !config.bus.backend.is_shared() {
        anyhow::bail!(
            "`agora functions` needs a shared bus: set `bus.backend` to `nats` or `rabbitmq` \
             (with the in-process bus, `agora serve` runs the functions itself)"
        );
    }
    let db = Database::connect(config).await?;
    migrate(&db).await?;
    let storage = ObjectStorage::from_config(config)?;
    let catalog = catalog(config, &db, read_cache(config)?, storage.clone());
    let ports = FunctionPorts {
        catalog: Arc::new(catalog.clone()),
        orders: Arc::new(orders_reader(config, &db, &catalog)),
        accounts: Arc::new(IdentityStore::new(db.clone())),
        storage,
        mailer: Mailer::from_config(config)?,
    };
    let bus = bus(config, &db).await?;
    let export = functions(&*bus, &db, ports);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_os_signals();
    tracing::info!(bus = ?config.bus.backend, "agora functions: running thumbnails, receipts and the nightly export");
    export
        .run_nightly(
            Arc::new(SystemClock),
            agora_functions::export::NIGHTLY_CHECK,
            shutdown,
        )
        .await;
    db.close().await;
    tracing::info!("agora functions stopped");
    Ok(())
}

/// `agora functions run export --date DAY`: exports the orders of one
/// finished UTC day (`YYYY-MM-DD`) now, replacing an earlier export of it.
pub async fn export_day(
    config: &Config,
    day: &str,
) -> anyhow::Result<agora_functions::export::Exported> {
    let day =
        agora_functions::export::Day::parse(day).map_err(|e| anyhow::anyhow!("--date {e}"))?;
    let db = Database::connect(config).await?;
    migrate(&db).await?;
    let storage = ObjectStorage::from_config(config)?;
    let catalog = catalog(config, &db, None, storage.clone());
    let exported = Export::new(Arc::new(orders_reader(config, &db, &catalog)), storage)
        .run(day, SystemClock.now())
        .await;
    db.close().await;
    exported
}

/// The orders module over `db`, for a process that only reads orders through
/// its port (a functions worker): its participants are built but never
/// called, and none of its loops runs.
fn orders_reader(config: &Config, db: &Database, catalog: &Catalog) -> Orders {
    orders(
        db,
        catalog,
        &carts(db, catalog),
        &inventory(db, catalog),
        &payments(config, db),
    )
}

/// Every module's migrations, in dependency order.
async fn migrate(db: &Database) -> anyhow::Result<()> {
    db.migrate(&agora_platform::bus::MIGRATIONS).await?;
    db.migrate(&agora_identity::MIGRATIONS).await?;
    db.migrate(&agora_catalog::MIGRATIONS).await?;
    db.migrate(&agora_inventory::MIGRATIONS).await?;
    db.migrate(&agora_cart::MIGRATIONS).await?;
    db.migrate(&agora_payments::MIGRATIONS).await?;
    db.migrate(&agora_orders::MIGRATIONS).await?;
    db.migrate(&agora_functions::MIGRATIONS).await
}

/// The modules this process runs.
struct Modules {
    identity: Identity,
    catalog: Catalog,
    inventory: Inventory,
    carts: Carts,
    orders: Orders,
    payments: Payments,
}

/// The catalog read cache's counts, for `/metrics`.
struct CatalogCacheGauges(Catalog);

#[async_trait::async_trait]
impl Gauges for CatalogCacheGauges {
    async fn record(&self) {
        if let Some(stats) = self.0.cache_stats() {
            stats.record("catalog");
        }
    }
}

/// Builds the full router of the monolith.
fn router(
    config: &Config,
    db: &Database,
    cache: Option<Arc<dyn Cache>>,
    authenticator: Authenticator,
    modules: Modules,
    bus: Arc<dyn Bus>,
    metrics: Option<&metrics::Endpoint>,
) -> Router {
    let Modules {
        identity,
        catalog,
        inventory,
        carts,
        orders,
        payments,
    } = modules;
    let api = Router::new()
        .merge(api::router())
        .merge(agora_identity::http::router(identity.clone()))
        .merge(agora_catalog::http::router(catalog.clone()))
        .merge(agora_inventory::http::router(inventory))
        .merge(agora_cart::http::router(carts))
        .merge(agora_orders::http::router(orders))
        .merge(agora_payments::http::router(payments))
        .merge(admin::router(admin::Operations {
            log: EventLog::new(db.clone()),
            bus,
        }));
    let mut root = health::routes(db.clone(), cache)
        .merge(agora_catalog::http::media_router(catalog))
        .merge(agora_identity::http::well_known_router(identity))
        .merge(api::docs_router());
    if let Some(metrics) = metrics {
        root = root.merge(metrics.routes());
    }
    let edge = Edge {
        authenticator,
        request_timeout: Duration::from_millis(config.server.request_timeout_ms),
        trust_forwarded_for: config.server.trust_forwarded_for,
    };
    build_router(api, root, edge, config.server.body_limit_bytes)
}

/// `agora migrate`.
pub async fn migrate_only(config: &Config) -> anyhow::Result<()> {
    let db = Database::connect(config).await?;
    migrate(&db).await?;
    db.close().await;
    println!("migrations are up to date");
    Ok(())
}

/// `agora seed --demo`.
pub async fn seed_demo(config: &Config) -> anyhow::Result<()> {
    let db = Database::connect(config).await?;
    migrate(&db).await?;
    let storage = ObjectStorage::from_config(config)?;
    let catalog = catalog(config, &db, read_cache(config)?, storage);
    let report = load_demo(&catalog, &inventory(&db, &catalog)).await?;
    db.close().await;
    if report.products.is_empty() {
        println!("the catalog is not empty: nothing loaded");
    } else {
        println!(
            "loaded {} categories and {} products, {DEMO_STOCK} of each in stock",
            report.categories,
            report.products.len()
        );
    }
    Ok(())
}

/// Units in stock of each demo product, so a demo shop can sell (and, under
/// `agora loadgen`, sell out).
pub const DEMO_STOCK: i64 = 100;

/// Loads the demo catalog into an empty catalog and stocks each of its
/// products with [`DEMO_STOCK`] units. The stock follows the catalog's own
/// transaction: a crash between the two leaves the demo products unstocked
/// (staff stock them through the API), never a half-loaded catalog.
async fn load_demo(
    catalog: &Catalog,
    inventory: &Inventory,
) -> anyhow::Result<agora_catalog::seed::SeedReport> {
    let report = agora_catalog::seed::seed_demo(catalog)
        .await
        .context("Failed to load the demo catalog")?;
    // Concurrently, so that group commit makes them durable together; through
    // the store, which records each in the ledger, without a log line each.
    let mut stocking = tokio::task::JoinSet::new();
    let now = SystemClock.now();
    for product in report.products.iter().copied() {
        let store = inventory.store().clone();
        stocking.spawn(async move {
            let set = agora_inventory::store::Change::Set(DEMO_STOCK);
            store.change(product, set, "demo stock", "seed", now).await
        });
    }
    for stocked in stocking.join_all().await {
        stocked.context("Failed to stock the demo catalog")?;
    }
    if !report.products.is_empty() {
        tracing::info!(
            products = report.products.len(),
            units = DEMO_STOCK,
            "demo catalog stocked"
        );
    }
    Ok(report)
}

/// `agora admin create-user`: an account with `roles`, for the first administrator.
pub async fn create_user(
    config: &Config,
    email: &str,
    name: &str,
    password: String,
    roles: Vec<agora_kernel::Role>,
) -> anyhow::Result<agora_identity::domain::User> {
    use agora_identity::domain::{Email, NewPassword, parse_name};
    use agora_identity::service::Registration;
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email {e}"))?;
    let name = parse_name(name).map_err(|e| anyhow::anyhow!("--name {e}"))?;
    let password = NewPassword::parse(password, config.auth.password_min_length, Some(&email))
        .map_err(|e| anyhow::anyhow!("the password {e}"))?;
    let db = Database::connect(config).await?;
    migrate(&db).await?;
    let identity = identity(config, &db, Authenticator::new(&config.auth)).await?;
    let user = identity
        .create_user(
            Registration {
                email,
                password,
                name,
            },
            roles,
        )
        .await
        .map_err(|e| match e {
            agora_identity::IdentityError::EmailTaken => {
                anyhow::anyhow!("an account with this email already exists")
            }
            other => anyhow::Error::new(other).context("Failed to create the account"),
        });
    db.close().await;
    user
}

/// `agora admin rotate-signing-key`: a new key signs from the next start; the
/// previous one keeps verifying until its tokens have expired.
pub fn rotate_signing_key(config: &Config) -> anyhow::Result<String> {
    if config.auth.signing_key.is_some() {
        anyhow::bail!(
            "`auth.signing_key` is set: rotate by changing it (tokens of the old key stop working)"
        );
    }
    KeyRing::rotate(&config.data_dir, SystemClock.now(), access_ttl_ms(config))
}
