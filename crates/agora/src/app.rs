//! The composition root: turns a configuration into a running process.
//!
//! Which implementation stands behind each port, and which modules run here, is
//! decided in this file only; modules never construct each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_catalog::Catalog;
use agora_catalog::store::CatalogStore;
use agora_kernel::SystemClock;
use agora_platform::auth::Authenticator;
use agora_platform::http::edge::Edge;
use agora_platform::http::{build_router, health};
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
    shutdown: Shutdown,
    grace: Duration,
}

impl Application {
    /// Connects the database, runs migrations, seeds the demo catalog into an empty
    /// database (unless `seed.demo` is off), wires the modules and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let started = Instant::now();
        let db = Database::connect(&config).await?;
        migrate(&db).await?;
        let catalog = catalog(&db);
        if config.seed.demo {
            agora_catalog::seed::seed_demo(&catalog)
                .await
                .context("Failed to load the demo catalog")?;
        }
        let router = router(&config, &db, catalog);
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
        let outcome =
            agora_platform::http::serve(self.listener, self.router, self.shutdown, self.grace)
                .await;
        self.db.close().await;
        tracing::info!("agora stopped");
        outcome
    }
}

/// The catalog over `db`, on the system clock.
pub fn catalog(db: &Database) -> Catalog {
    Catalog::new(CatalogStore::new(db.clone()), Arc::new(SystemClock))
}

/// Every module's migrations, in dependency order.
async fn migrate(db: &Database) -> anyhow::Result<()> {
    db.migrate(&agora_catalog::MIGRATIONS).await
}

/// Builds the full router of the monolith.
fn router(config: &Config, db: &Database, catalog: Catalog) -> Router {
    let api = Router::new()
        .merge(api::router())
        .merge(agora_catalog::http::router(catalog));
    let root = health::routes(db.clone()).merge(api::docs_router());
    let edge = Edge {
        authenticator: Authenticator::new(&config.auth),
        request_timeout: Duration::from_millis(config.server.request_timeout_ms),
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
    let report = agora_catalog::seed::seed_demo(&catalog(&db)).await?;
    db.close().await;
    if report.products == 0 {
        println!("the catalog is not empty: nothing loaded");
    } else {
        println!(
            "loaded {} categories and {} products",
            report.categories, report.products
        );
    }
    Ok(())
}
