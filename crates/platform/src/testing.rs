//! Test support: a fresh, isolated database per test.
//!
//! Without `AGORA_TEST_POSTGRES_URL`, each test gets a SQLite file in its own
//! temporary directory. With it, each test gets its own schema in that PostgreSQL
//! database (`CREATE SCHEMA t_<uuid>` and `search_path` set on every connection),
//! which is much cheaper than a database per test. The schemas are left behind;
//! point the variable at a scratch database and drop it afterwards (`.ci/run`
//! does).

use std::path::Path;

use anyhow::Context;
use sqlx::{AnyConnection, AssertSqlSafe, Connection};
use tempfile::TempDir;

use crate::config::Config;
use crate::db::Database;

/// The variable that selects PostgreSQL for the test suites.
pub const POSTGRES_URL_VAR: &str = "AGORA_TEST_POSTGRES_URL";

/// An isolated database and the configuration that points at it.
#[derive(Debug)]
pub struct TestDatabase {
    /// A configuration whose `data_dir` is a fresh directory and whose database
    /// URL is the fresh database.
    pub config: Config,
    /// Connected, not yet migrated.
    pub db: Database,
    dir: TempDir,
}

impl TestDatabase {
    /// A fresh database: SQLite, or PostgreSQL when `AGORA_TEST_POSTGRES_URL` is set.
    pub async fn new() -> anyhow::Result<TestDatabase> {
        let dir = tempfile::tempdir().context("Failed to create a temporary directory")?;
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.seed.demo = false;
        config.database.url = match std::env::var(POSTGRES_URL_VAR) {
            Ok(url) if !url.is_empty() => Some(fresh_postgres_schema(&url).await?),
            _ => None,
        };
        let db = Database::connect(&config).await?;
        Ok(TestDatabase { config, db, dir })
    }

    /// The configuration of an application under test on this database: it
    /// listens on a free loopback port, loads no demo catalog, and hashes
    /// passwords cheaply (suites log in hundreds of times; the real cost is
    /// measured in docs/security.md).
    pub fn app_config(&self) -> Config {
        let mut config = self.config.clone();
        config.server.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.seed.demo = false;
        config.auth.argon2.memory_kib = 64;
        config.auth.argon2.iterations = 1;
        config
    }

    /// The test's own directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

async fn fresh_postgres_schema(url: &str) -> anyhow::Result<String> {
    sqlx::any::install_default_drivers();
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = AnyConnection::connect(url)
        .await
        .with_context(|| format!("Failed to connect to {POSTGRES_URL_VAR}"))?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .context("Failed to create the test schema")?;
    conn.close().await.ok();
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    ))
}
