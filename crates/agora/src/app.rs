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
use agora_contracts::cart::CartPort;
use agora_contracts::catalog::CatalogPort;
use agora_contracts::identity::AccountsPort;
use agora_contracts::inventory::InventoryPort;
use agora_contracts::orders::OrdersPort;
use agora_contracts::payments::PaymentsPort;
use agora_functions::{Export, Receipts, Thumbnails};
use agora_grpc::PortServer;
use agora_grpc::client::{
    CartClient, CatalogClient, InventoryClient, PaymentsClient, RemoteSettings, Replicas,
};
use agora_identity::Identity;
use agora_identity::keys::KeyRing;
use agora_identity::store::IdentityStore;
use agora_inventory::Inventory;
use agora_inventory::store::InventoryStore;
use agora_kernel::{Clock, SystemClock};
use agora_orders::saga::SagaSettings;
use agora_orders::store::OrdersStore;
use agora_orders::{Orders, Participants};
use agora_payments::Payments;
use agora_payments::provider::{SimulatedBehaviour, SimulatedProvider};
use agora_payments::store::PaymentStore;
use agora_platform::auth::Authenticator;
use agora_platform::bus::nats::{NatsBus, NatsSettings};
use agora_platform::bus::rabbit::{RabbitBus, RabbitSettings};
use agora_platform::bus::{Bus, EventLog, InProcessBus, Outbox, OutboxBacklog, Relay};
use agora_platform::cache::{Cache, CacheAside, MemoryCache, RedisCache, TwoTierCache};
use agora_platform::config::{BusBackend, CacheBackend, ServiceConfig};
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

/// A module of Agora, as `agora service <module>` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Module {
    /// Accounts, sign-in, tokens.
    Identity,
    /// Products, categories, images.
    Catalog,
    /// Stock levels and reservations.
    Inventory,
    /// Carts.
    Cart,
    /// Orders and the checkout saga.
    Orders,
    /// Payments and the provider's webhooks.
    Payments,
}

impl Module {
    /// Every module.
    pub const ALL: [Module; 6] = [
        Module::Identity,
        Module::Catalog,
        Module::Inventory,
        Module::Cart,
        Module::Orders,
        Module::Payments,
    ];

    /// Its name, as in `services.<name>` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Module::Identity => "identity",
            Module::Catalog => "catalog",
            Module::Inventory => "inventory",
            Module::Cart => "cart",
            Module::Orders => "orders",
            Module::Payments => "payments",
        }
    }
}

/// What a process runs: every module (`agora serve`) or one (`agora service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Monolith,
    Service(Module),
}

impl Shape {
    fn runs(self, module: Module) -> bool {
        match self {
            Shape::Monolith => true,
            Shape::Service(only) => only == module,
        }
    }
}

/// An Agora process (the monolith, or one module as a service), built and
/// bound to its ports, not yet serving.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    grpc: Option<(TcpListener, PortServer)>,
    grpc_addr: Option<SocketAddr>,
    db: Database,
    inventory: Option<Inventory>,
    carts: Option<Carts>,
    orders: Option<Orders>,
    payments: Option<Payments>,
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
    /// The monolith: connects the database, runs migrations, seeds the demo
    /// catalog into an empty database (unless `seed.demo` is off), wires the
    /// modules and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::assemble(config, Shape::Monolith).await
    }

    /// One module as its own service (`agora service <module>`): its own
    /// database (`services.<module>.database_url`, else `database.url`) with
    /// only its migrations, its REST routes on `server.addr`, its port over
    /// gRPC on `server.grpc_addr`, its loops and consumers; the modules it calls
    /// are reached at `services.<module>.grpc`. Needs a shared bus (events
    /// cross processes) and `auth.signing_key` (every service verifies the
    /// tokens identity signs with it).
    pub async fn service(config: Config, module: Module) -> anyhow::Result<Application> {
        if !config.bus.backend.is_shared() {
            anyhow::bail!(
                "`agora service` needs a shared bus: set `bus.backend` to `nats` or `rabbitmq` \
                 (events cross processes)"
            );
        }
        if config.auth.signing_key.is_none() {
            anyhow::bail!(
                "`agora service` needs `auth.signing_key`, the same in every service: identity \
                 signs tokens with it and the others verify them"
            );
        }
        if config.services.token.is_none() {
            anyhow::bail!(
                "`agora service` needs `services.token`, a secret the same in every service: \
                 every gRPC call carries it and every port refuses calls without it"
            );
        }
        Self::assemble(config, Shape::Service(module)).await
    }

    async fn assemble(config: Config, shape: Shape) -> anyhow::Result<Application> {
        let started = Instant::now();
        let db = match shape {
            Shape::Monolith => Database::connect(&config).await?,
            Shape::Service(module) => {
                let own = service_config(&config, module).database_url.clone();
                let mut config = config.clone();
                if own.is_some() {
                    config.database.url = own;
                }
                Database::connect(&config).await?
            }
        };
        match shape {
            Shape::Monolith => migrate(&db).await?,
            Shape::Service(module) => migrate_module(&db, module).await?,
        }
        let authenticator = Authenticator::new(&config.auth);
        let remote = Remote { config: &config };
        let identity = if shape.runs(Module::Identity) {
            Some(identity(&config, &db, authenticator.clone()).await?)
        } else {
            verify_with_signing_key(&config, &authenticator)?;
            None
        };
        let cache = read_cache(&config)?;
        let storage = ObjectStorage::from_config(&config)?;
        let catalog = shape
            .runs(Module::Catalog)
            .then(|| catalog(&config, &db, cache.clone(), storage.clone()));
        let catalog_port = || -> anyhow::Result<Arc<dyn CatalogPort>> {
            match &catalog {
                Some(catalog) => Ok(Arc::new(catalog.clone())),
                None => remote.catalog(),
            }
        };
        let inventory = match shape.runs(Module::Inventory) {
            true => Some(inventory(&db, catalog_port()?)),
            false => None,
        };
        if config.seed.demo {
            match (&catalog, &inventory) {
                (Some(catalog), Some(inventory)) => {
                    load_demo(catalog, inventory).await?;
                }
                // As a service the catalog loads its demo products; their
                // stock lives in the inventory's database (set it through the
                // API, as `agora up` does).
                (Some(catalog), None) => {
                    agora_catalog::seed::seed_demo(catalog)
                        .await
                        .context("Failed to load the demo catalog")?;
                }
                _ => {}
            }
        }
        let carts = match shape.runs(Module::Cart) {
            true => Some(carts(&db, catalog_port()?)),
            false => None,
        };
        let payments = shape.runs(Module::Payments).then(|| payments(&config, &db));
        let orders = match shape.runs(Module::Orders) {
            true => Some(orders(
                &db,
                Participants {
                    catalog: catalog_port()?,
                    cart: match &carts {
                        Some(carts) => Arc::new(carts.clone()),
                        None => remote.cart()?,
                    },
                    inventory: match &inventory {
                        Some(inventory) => Arc::new(inventory.clone()),
                        None => remote.inventory()?,
                    },
                    payments: match &payments {
                        Some(payments) => Arc::new(payments.clone()),
                        None => remote.payments()?,
                    },
                },
            )),
            false => None,
        };
        let local = LocalModules {
            identity,
            catalog,
            inventory,
            carts,
            orders,
            payments,
        };
        let (bus, relays) = messaging(&config, &db, &local).await?;
        let export = match (shape, &local) {
            (
                Shape::Monolith,
                LocalModules {
                    catalog: Some(catalog),
                    orders: Some(orders),
                    ..
                },
            ) if config.functions.in_process => {
                let ports = FunctionPorts {
                    catalog: Arc::new(catalog.clone()),
                    orders: Arc::new(orders.clone()),
                    accounts: Arc::new(IdentityStore::new(db.clone())),
                    storage: storage.clone(),
                    mailer: Mailer::from_config(&config)?,
                };
                Some(functions(&*bus, &db, ports))
            }
            _ => {
                // `agora functions` workers run them: their events wait for
                // them even while none runs.
                bus.retain_for(
                    agora_functions::thumbnails::CONSUMER,
                    &agora_functions::thumbnails::KINDS,
                );
                bus.retain_for(
                    agora_functions::receipts::CONSUMER,
                    &agora_functions::receipts::KINDS,
                );
                None
            }
        };
        let metrics = if config.telemetry.metrics {
            let outboxes = local.outboxes();
            let mut gauges: Vec<Arc<dyn Gauges>> = vec![
                Arc::new(OutboxBacklog::new(
                    db.clone(),
                    &outboxes.iter().map(|o| &**o).collect::<Vec<_>>(),
                    Arc::new(SystemClock),
                )),
                Arc::new(db.clone()),
            ];
            if let Some(catalog) = &local.catalog {
                gauges.push(Arc::new(CatalogCacheGauges(catalog.clone())));
            }
            Some(metrics::Endpoint::new(metrics::install()?, gauges))
        } else {
            None
        };
        let grpc = match shape {
            Shape::Monolith => None,
            Shape::Service(_) => {
                let listener = TcpListener::bind(config.server.grpc_addr)
                    .await
                    .with_context(|| {
                        format!(
                            "Failed to listen on {} (`server.grpc_addr`)",
                            config.server.grpc_addr
                        )
                    })?;
                let token = config.services.token.as_ref().map(|t| t.expose());
                Some((listener, local.port_server(&db, token)))
            }
        };
        let grpc_addr = match &grpc {
            Some((listener, _)) => Some(listener.local_addr()?),
            None => None,
        };
        let inventory = local.inventory.clone();
        let carts = local.carts.clone();
        let orders = local.orders.clone();
        let payments = local.payments.clone();
        let router = router(
            &config,
            &db,
            cache,
            authenticator,
            local,
            bus,
            metrics.as_ref(),
        );
        let listener = TcpListener::bind(config.server.addr)
            .await
            .with_context(|| {
                format!("Failed to listen on {} (`server.addr`)", config.server.addr)
            })?;
        let local_addr = listener.local_addr()?;
        match shape {
            Shape::Monolith => tracing::info!(
                addr = %local_addr,
                database = ?db.backend(),
                startup_ms = started.elapsed().as_millis() as u64,
                "agora is ready: http://{local_addr}/api/v1/products — API docs at http://{local_addr}/docs"
            ),
            Shape::Service(module) => tracing::info!(
                module = module.name(),
                addr = %local_addr,
                grpc_addr = ?grpc_addr,
                database = ?db.backend(),
                startup_ms = started.elapsed().as_millis() as u64,
                "agora service {} is ready: REST on http://{local_addr}, gRPC on {}",
                module.name(),
                grpc_addr.map_or_else(String::new, |a| format!("http://{a}"))
            ),
        }
        Ok(Application {
            listener,
            local_addr,
            router,
            grpc,
            grpc_addr,
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

    /// The gRPC address actually bound, for a service.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The signal that stops the application.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until the shutdown signal, lets in-flight requests finish (bounded by
    /// `server.shutdown_timeout_ms`), then closes the database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut sweepers = tokio::task::JoinSet::new();
        if let Some(inventory) = self.inventory {
            sweepers.spawn(inventory.run_sweeper(RESERVATION_SWEEP, self.shutdown.clone()));
        }
        if let Some(carts) = self.carts {
            sweepers.spawn(carts.run_sweeper(
                CART_SWEEP,
                ABANDONED_CART_AGE,
                self.shutdown.clone(),
            ));
        }
        if let Some(orders) = self.orders {
            sweepers.spawn(orders.run_recovery(SAGA_RECOVERY, self.shutdown.clone()));
        }
        if let Some(payments) = self.payments {
            sweepers.spawn(payments.run_resolver(PAYMENT_RESOLVER, self.shutdown.clone()));
        }
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
        let grace = self.grace;
        let grpc = self.grpc.map(|(listener, server)| {
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let outcome = server.serve(listener, shutdown.clone(), grace).await;
                // A gRPC server that fails stops the service, as the HTTP one does.
                shutdown.trigger();
                outcome
            })
        });
        let outcome = agora_platform::http::serve(
            self.listener,
            self.router,
            self.shutdown.clone(),
            self.grace,
        )
        .await;
        // The server stops only once shutdown fired, which also ends the sweepers.
        self.shutdown.trigger();
        let grpc_outcome = match grpc {
            Some(task) => task.await.map_err(anyhow::Error::from).and_then(|r| r),
            None => Ok(()),
        };
        sweepers.join_all().await;
        self.db.close().await;
        tracing::info!("agora stopped");
        outcome.and(grpc_outcome)
    }
}

/// The configuration of `module` as a service.
fn service_config(config: &Config, module: Module) -> &ServiceConfig {
    let services = &config.services;
    match module {
        Module::Identity => &services.identity,
        Module::Catalog => &services.catalog,
        Module::Inventory => &services.inventory,
        Module::Cart => &services.cart,
        Module::Orders => &services.orders,
        Module::Payments => &services.payments,
    }
}

/// The modules that run elsewhere, reached over gRPC at
/// `services.<module>.grpc`.
struct Remote<'a> {
    config: &'a Config,
}

impl Remote<'_> {
    fn replicas(&self, module: Module) -> anyhow::Result<Replicas> {
        let addresses = &service_config(self.config, module).grpc;
        let name = module.name();
        if addresses.is_empty() {
            anyhow::bail!(
                "`services.{name}.grpc` is not set: this service calls the {name} module, which \
                 runs elsewhere; give the gRPC addresses of its replicas"
            );
        }
        let services = &self.config.services;
        let defaults = RemoteSettings::default();
        let settings = RemoteSettings {
            deadline: match services.deadline_ms {
                0 => defaults.deadline,
                ms => Duration::from_millis(ms),
            },
            connect_timeout: match services.connect_timeout_ms {
                0 => defaults.connect_timeout,
                ms => Duration::from_millis(ms),
            },
            token: services.token.as_ref().map(|t| t.expose().to_owned()),
            ..defaults
        };
        Replicas::new(name, addresses, settings).with_context(|| format!("`services.{name}.grpc`"))
    }

    fn catalog(&self) -> anyhow::Result<Arc<dyn CatalogPort>> {
        Ok(Arc::new(CatalogClient::new(
            self.replicas(Module::Catalog)?,
        )))
    }

    fn cart(&self) -> anyhow::Result<Arc<dyn CartPort>> {
        Ok(Arc::new(CartClient::new(self.replicas(Module::Cart)?)))
    }

    fn inventory(&self) -> anyhow::Result<Arc<dyn InventoryPort>> {
        Ok(Arc::new(InventoryClient::new(
            self.replicas(Module::Inventory)?,
        )))
    }

    fn payments(&self) -> anyhow::Result<Arc<dyn PaymentsPort>> {
        Ok(Arc::new(PaymentsClient::new(
            self.replicas(Module::Payments)?,
        )))
    }
}

/// A service other than identity verifies the access tokens identity signs
/// with the public half of `auth.signing_key`.
fn verify_with_signing_key(config: &Config, authenticator: &Authenticator) -> anyhow::Result<()> {
    let Some(key) = &config.auth.signing_key else {
        anyhow::bail!("`auth.signing_key` is not set");
    };
    let keys = KeyRing::from_config(key.expose()).context("`auth.signing_key`")?;
    authenticator.set_keys(keys.verification_keys()?);
    Ok(())
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
pub fn inventory(db: &Database, catalog: Arc<dyn CatalogPort>) -> Inventory {
    Inventory::new(
        InventoryStore::new(db.clone()),
        catalog,
        Arc::new(SystemClock),
    )
}

/// The carts over `db`, priced by `catalog`, on the system clock.
pub fn carts(db: &Database, catalog: Arc<dyn CatalogPort>) -> Carts {
    Carts::new(CartStore::new(db.clone()), catalog, Arc::new(SystemClock))
}

/// The payments over `db`, with the simulated provider as configured, on the
/// system clock.
pub fn payments(config: &Config, db: &Database) -> Payments {
    Payments::new(
        PaymentStore::new(
            db.clone(),
            Arc::new(Outbox::new(agora_payments::OUTBOX_TABLE)),
        ),
        Arc::new(SimulatedProvider::new(
            SimulatedBehaviour::from_config(&config.payments),
            db.clone(),
        )),
        Arc::new(SystemClock),
        agora_payments::WebhookSettings::from_config(&config.payments),
    )
}

/// The orders over `db`, calling `participants` (in this process or over gRPC).
pub fn orders(db: &Database, participants: Participants) -> Orders {
    Orders::new(
        OrdersStore::new(db.clone()),
        participants,
        Arc::new(Outbox::new(agora_orders::service::OUTBOX)),
        Arc::new(SystemClock),
        SagaSettings::default(),
    )
}

/// The participants of the checkout when they all run in this process.
pub fn local_participants(
    catalog: &Catalog,
    carts: &Carts,
    inventory: &Inventory,
    payments: &Payments,
) -> Participants {
    Participants {
        catalog: Arc::new(catalog.clone()),
        cart: Arc::new(carts.clone()),
        inventory: Arc::new(inventory.clone()),
        payments: Arc::new(payments.clone()),
    }
}

/// The bus (in-process, NATS JetStream or RabbitMQ) with the consumers of
/// the modules in this process, and one outbox relay per module here that
/// publishes events.
async fn messaging(
    config: &Config,
    db: &Database,
    local: &LocalModules,
) -> anyhow::Result<(Arc<dyn Bus>, Vec<Relay>)> {
    use agora_contracts::events::{EventPayload, PaymentRefunded};
    let bus = bus(config, db).await?;
    if let Some(orders) = &local.orders {
        bus.subscribe(
            agora_orders::service::PAYMENT_EVENTS_CONSUMER,
            &[PaymentRefunded::KIND],
            Arc::new(orders.clone()),
        );
    }
    // Every node forgets its cached catalog reads when another node changes the
    // catalog. (With the in-process bus there is no other node, and this one
    // forgot them as it wrote.)
    if let Some(catalog) = &local.catalog
        && config.bus.backend.is_shared()
    {
        bus.subscribe_each_node(
            agora_catalog::service::CACHE_CONSUMER,
            &agora_catalog::service::CHANGE_EVENTS,
            Arc::new(catalog.clone()),
        );
    }
    let relays = local
        .outboxes()
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
    let carts = carts(db, Arc::new(catalog.clone()));
    let inventory = inventory(db, Arc::new(catalog.clone()));
    orders(
        db,
        local_participants(catalog, &carts, &inventory, &payments(config, db)),
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

/// The migrations of the one module that a service runs, after the
/// platform's (outbox, inbox, event log).
async fn migrate_module(db: &Database, module: Module) -> anyhow::Result<()> {
    db.migrate(&agora_platform::bus::MIGRATIONS).await?;
    db.migrate(match module {
        Module::Identity => &agora_identity::MIGRATIONS,
        Module::Catalog => &agora_catalog::MIGRATIONS,
        Module::Inventory => &agora_inventory::MIGRATIONS,
        Module::Cart => &agora_cart::MIGRATIONS,
        Module::Orders => &agora_orders::MIGRATIONS,
        Module::Payments => &agora_payments::MIGRATIONS,
    })
    .await
}

/// The modules this process runs: all of them in the monolith, one in a
/// service.
struct LocalModules {
    identity: Option<Identity>,
    catalog: Option<Catalog>,
    inventory: Option<Inventory>,
    carts: Option<Carts>,
    orders: Option<Orders>,
    payments: Option<Payments>,
}

impl LocalModules {
    /// The outboxes of the modules here that publish events.
    fn outboxes(&self) -> Vec<Arc<Outbox>> {
        let mut outboxes = Vec::new();
        if let Some(catalog) = &self.catalog {
            outboxes.push(catalog.store().outbox().clone());
        }
        if let Some(inventory) = &self.inventory {
            outboxes.push(inventory.store().outbox().clone());
        }
        if let Some(payments) = &self.payments {
            outboxes.push(payments.store().outbox().clone());
        }
        if let Some(orders) = &self.orders {
            outboxes.push(orders.outbox().clone());
        }
        outboxes
    }

    /// A gRPC server of the ports of the modules here, checking `token`.
    fn port_server(&self, db: &Database, token: Option<&str>) -> PortServer {
        let mut server = PortServer::new(token);
        if self.identity.is_some() {
            server = server.accounts(Arc::new(IdentityStore::new(db.clone())));
        }
        if let Some(catalog) = &self.catalog {
            server = server.catalog(Arc::new(catalog.clone()));
        }
        if let Some(inventory) = &self.inventory {
            server = server.inventory(Arc::new(inventory.clone()));
        }
        if let Some(carts) = &self.carts {
            server = server.cart(Arc::new(carts.clone()));
        }
        if let Some(orders) = &self.orders {
            server = server.orders(Arc::new(orders.clone()));
        }
        if let Some(payments) = &self.payments {
            server = server.payments(Arc::new(payments.clone()));
        }
        server
    }
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

/// Builds the router of the modules here (every module in the monolith).
fn router(
    config: &Config,
    db: &Database,
    cache: Option<Arc<dyn Cache>>,
    authenticator: Authenticator,
    local: LocalModules,
    bus: Arc<dyn Bus>,
    metrics: Option<&metrics::Endpoint>,
) -> Router {
    let LocalModules {
        identity,
        catalog,
        inventory,
        carts,
        orders,
        payments,
    } = local;
    let mut api = Router::new().merge(api::router());
    let mut root = health::routes(db.clone(), cache).merge(api::docs_router());
    if let Some(identity) = identity {
        api = api.merge(agora_identity::http::router(identity.clone()));
        root = root.merge(agora_identity::http::well_known_router(identity));
    }
    if let Some(catalog) = catalog {
        api = api.merge(agora_catalog::http::router(catalog.clone()));
        root = root.merge(agora_catalog::http::media_router(catalog));
    }
    if let Some(inventory) = inventory {
        api = api.merge(agora_inventory::http::router(inventory));
    }
    if let Some(carts) = carts {
        api = api.merge(agora_cart::http::router(carts));
    }
    if let Some(orders) = orders {
        api = api.merge(agora_orders::http::router(orders));
    }
    if let Some(payments) = payments {
        api = api.merge(agora_payments::http::router(payments));
    }
    // The event log of this process's database (in a service, the events its
    // module published) and the bus's dead letters (on NATS the shared
    // `<stream>_DEAD` stream; otherwise parked in this database).
    api = api.merge(admin::router(admin::Operations {
        log: EventLog::new(db.clone()),
        bus,
    }));
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
    let report = load_demo(&catalog, &inventory(&db, Arc::new(catalog.clone()))).await?;
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

/// `agora admin create-user`: an account with `roles`, for the first
/// administrator; in identity's own database when
/// `services.identity.database_url` is set.
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
    // In the services shape, identity's own database (and only its tables).
    let db = match &config.services.identity.database_url {
        Some(url) => {
            let mut own = config.clone();
            own.database.url = Some(url.clone());
            let db = Database::connect(&own).await?;
            migrate_module(&db, Module::Identity).await?;
            db
        }
        None => {
            let db = Database::connect(config).await?;
            migrate(&db).await?;
            db
        }
    };
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
