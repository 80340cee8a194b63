//! `agora up --services`: a development fleet on this machine. The gateway and
//! `--replicas N` processes per module on loopback, against the
//! local PostgreSQL (a database per module), Redis and NATS; the demo catalog
//! loaded and stocked; everything stopped on Ctrl-C.
//!
//! The fleet's files live under `<data_dir>/up`: the generated gateway
//! configuration, the secrets every service shares (kept, so that tokens stay
//! valid across restarts), and each module's data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{AnyConnection, AssertSqlSafe, Connection};
use tokio::process::{Child, Command};

use crate::app::Module;

/// What `agora up --services` is told.
#[derive(Debug, Clone)]
pub struct UpSettings {
    /// Processes per module.
    pub replicas: u32,
    /// Where the gateway listens.
    pub gateway_addr: SocketAddr,
    /// The PostgreSQL server (a database `<database_prefix>_<module>` is made
    /// for each).
    pub postgres_url: String,
    /// The prefix of the databases' names: `agora_up` by default.
    pub database_prefix: String,
    /// The Redis the catalog's cache and the gateway's rate limits use.
    pub redis_url: String,
    /// The NATS server of the bus.
    pub nats_url: String,
    /// Where the fleet keeps its files.
    pub data_dir: PathBuf,
}

/// How long the fleet may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the processes get to stop before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One process of the fleet.
struct Process {
    name: String,
    /// The module it runs; `None` for the gateway.
    module: Option<Module>,
    rest: SocketAddr,
    grpc: Option<SocketAddr>,
    child: Child,
}

/// The gateway's routes: path prefix → module.
const ROUTES: [(&str, Module); 17] = [
    ("/api/v1/auth", Module::Identity),
    ("/api/v1/users", Module::Identity),
    ("/api/v1/api-keys", Module::Identity),
    ("/api/v1/errors", Module::Identity),
    ("/api/v1/openapi.json", Module::Identity),
    ("/.well-known", Module::Identity),
    ("/docs", Module::Identity),
    ("/api/v1/products", Module::Catalog),
    ("/api/v1/categories", Module::Catalog),
    ("/media", Module::Catalog),
    ("/api/v1/inventory", Module::Inventory),
    ("/api/v1/cart", Module::Cart),
    ("/api/v1/checkout", Module::Orders),
    ("/api/v1/orders", Module::Orders),
    ("/api/v1/admin", Module::Orders),
    ("/api/v1/payments", Module::Payments),
    ("/api/v1/webhooks", Module::Payments),
];

/// The routes the gateway refuses without a good access token: every
/// endpoint under them needs a signed-in user or staff.
const REQUIRE_AUTH: [&str; 3] = ["/api/v1/checkout", "/api/v1/orders", "/api/v1/admin"];

/// Runs the fleet until Ctrl-C or SIGTERM, or until one of its processes
/// stops by itself.
pub async fn run(settings: UpSettings) -> anyhow::Result<()> {
    if !(1..=8).contains(&settings.replicas) {
        anyhow::bail!("--replicas must be between 1 and 8");
    }
    let prefix_ok = settings.database_prefix.len() <= 40
        && settings
            .database_prefix
            .starts_with(|c: char| c.is_ascii_lowercase())
        && settings
            .database_prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !prefix_ok {
        anyhow::bail!("--databases must be 1-40 of a-z, 0-9 and _, starting with a letter");
    }
    let dir = settings.data_dir.join("up");
    std::fs::create_dir_all(&dir).with_context(|| format!("Failed to create {}", dir.display()))?;
    let secrets = Secrets::load_or_create(&dir.join("secrets.toml"))?;
    let databases = create_databases(&settings.postgres_url, &settings.database_prefix).await?;
    let exe = std::env::current_exe().context("Failed to find the agora executable")?;

    // Every address first: each service is told where the others are. The
    // ports are held until all are chosen, so that no two are the same.
    let mut held = Vec::new();
    let mut layout = Vec::new();
    for module in Module::ALL {
        for replica in 0..settings.replicas {
            let (rest, grpc) = (free_port(&mut held)?, free_port(&mut held)?);
            layout.push((module, replica, rest, grpc));
        }
    }
    drop(held);
    let grpc_of = |module: Module| -> String {
        let addresses: Vec<String> = layout
            .iter()
            .filter(|(m, ..)| *m == module)
            .map(|(.., grpc)| format!("\"http://{grpc}\""))
            .collect();
        format!("[{}]", addresses.join(","))
    };
    let mut processes = Vec::new();
    for (module, replica, rest, grpc) in &layout {
        let name = module.name();
        let mut command = Command::new(&exe);
        command
            .args([
                "service",
                name,
                "--addr",
                &rest.to_string(),
                "--grpc-addr",
                &grpc.to_string(),
            ])
            .env("AGORA_DATA_DIR", dir.join(name))
            .env("AGORA_DATABASE__URL", &databases[module_index(*module)])
            .env("AGORA_BUS__BACKEND", "nats")
            .env("AGORA_BUS__NATS_URL", &settings.nats_url)
            .env("AGORA_CACHE__BACKEND", "two_tier")
            .env("AGORA_CACHE__REDIS_URL", &settings.redis_url)
            .env("AGORA_CACHE__REDIS_PREFIX", "agora-up")
            .env("AGORA_AUTH__SIGNING_KEY", &secrets.signing_key)
            .env("AGORA_SERVICES__TOKEN", &secrets.token)
            .env("AGORA_FUNCTIONS__IN_PROCESS", "false")
            // Behind the gateway: the client is the last X-Forwarded-For entry
            // (login throttling counts clients, not the gateway).
            .env("AGORA_SERVER__TRUST_FORWARDED_FOR", "true")
            .env("AGORA_TELEMETRY__SERVICE_NAME", format!("agora-{name}"))
            .kill_on_drop(true);
        for other in Module::ALL {
            command.env(
                format!("AGORA_SERVICES__{}__GRPC", other.name().to_uppercase()),
                grpc_of(other),
            );
        }
        // Only the first catalog loads the demo catalog (the others find it there).
        if *module != Module::Catalog || *replica > 0 {
            command.arg("--no-demo");
        }
        let child = command
            .spawn()
            .with_context(|| format!("Failed to start {name}"))?;
        processes.push(Process {
            name: format!("{name}-{}", replica + 1),
            module: Some(*module),
            rest: *rest,
            grpc: Some(*grpc),
            child,
        });
    }
    let gateway_file = dir.join("gateway.toml");
    std::fs::write(&gateway_file, gateway_config(&settings, &layout))
        .with_context(|| format!("Failed to write {}", gateway_file.display()))?;
    let gateway = Command::new(&exe)
        .args(["gateway", "--config"])
        .arg(&gateway_file)
        .kill_on_drop(true)
        .spawn()
        .context("Failed to start the gateway")?;
    processes.push(Process {
        name: "gateway".into(),
        module: None,
        rest: settings.gateway_addr,
        grpc: None,
        child: gateway,
    });

    let outcome = async {
        wait_until_ready(&mut processes).await?;
        stock_demo(
            &settings,
            &databases[module_index(Module::Identity)],
            &secrets,
        )
        .await?;
        print_table(&processes, &settings, &dir);
        wait_for_stop(&mut processes).await
    }
    .await;
    stop(&mut processes).await;
    outcome
}

fn module_index(module: Module) -> usize {
    Module::ALL.iter().position(|m| *m == module).unwrap_or(0)
}

/// A free loopback port (the kernel's choice), held in `held` until the
/// caller releases them all for the children to take.
fn free_port(held: &mut Vec<std::net::TcpListener>) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    let addr = listener.local_addr()?;
    held.push(listener);
    Ok(addr)
}

/// The signing key, the services' token, and the password of the fleet's
/// staff account.
struct Secrets {
    signing_key: String,
    token: String,
    admin_password: String,
}

impl Secrets {
    fn load_or_create(path: &Path) -> anyhow::Result<Secrets> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct File {
            signing_key: String,
            token: String,
            admin_password: String,
        }
        if path.exists() {
            let text = std::fs::read_to_string(path)?;
            let file: File = toml::from_str(&text)
                .with_context(|| format!("{} is not a secrets file of agora up", path.display()))?;
            return Ok(Secrets {
                signing_key: file.signing_key,
                token: file.token,
                admin_password: file.admin_password,
            });
        }
        let file = File {
            signing_key: agora_identity::keys::KeyRing::new_config_key()?,
            token: agora_platform::auth::random_secret("svc_")?,
            admin_password: agora_platform::auth::random_secret("pw_")?,
        };
        std::fs::write(path, toml::to_string(&file)?)
            .with_context(|| format!("Failed to write {}", path.display()))?;
        restrict_to_owner(path)?;
        Ok(Secrets {
            signing_key: file.signing_key,
            token: file.token,
            admin_password: file.admin_password,
        })
    }
}

fn restrict_to_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A database `<prefix>_<module>` per module on the PostgreSQL server at
/// `url` (made if missing); their URLs in the order of [`Module::ALL`].
async fn create_databases(url: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    sqlx::any::install_default_drivers();
    let base = url.trim_end_matches('/');
    let mut admin = AnyConnection::connect(&format!("{base}/postgres"))
        .await
        .with_context(|| format!("Failed to connect to PostgreSQL at {base} (--postgres)"))?;
    let mut urls = Vec::new();
    for module in Module::ALL {
        let name = format!("{prefix}_{}", module.name());
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut admin)
                .await?;
        if exists.is_none() {
            // The prefix was checked (a-z, 0-9, _) and the module names are
            // a fixed list: no quoting needed.
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .with_context(|| format!("Failed to create the database {name}"))?;
        }
        urls.push(format!("{base}/{name}"));
    }
    admin.close().await.ok();
    Ok(urls)
}

/// The gateway's configuration for the fleet.
fn gateway_config(
    settings: &UpSettings,
    layout: &[(Module, u32, SocketAddr, SocketAddr)],
) -> String {
    let mut toml = format!(
        "# Generated by `agora up --services`; rewritten at every start.\nlisten = \"{}\"\n\n",
        settings.gateway_addr
    );
    // Tokens checked at the edge against the identity service's keys, and
    // rate limits shared through Redis: generous, as one developer's load
    // generator is one client address.
    let identity = layout
        .iter()
        .find(|(m, ..)| *m == Module::Identity)
        .map(|(_, _, rest, _)| *rest)
        .unwrap_or(settings.gateway_addr);
    toml.push_str(&format!(
        "[auth]\njwks_url = \"http://{identity}/.well-known/jwks.json\"\n\n\
         [rate_limit]\nredis_url = \"{}\"\n\
         per_client = {{ per_second = 10000, burst = 20000 }}\n\
         per_subject = {{ per_second = 1000, burst = 2000 }}\n\n",
        settings.redis_url
    ));
    for (prefix, module) in ROUTES {
        toml.push_str(&format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{}\"\nrequire_auth = {}\n\n",
            module.name(),
            REQUIRE_AUTH.contains(&prefix)
        ));
    }
    for module in Module::ALL {
        let addresses: Vec<String> = layout
            .iter()
            .filter(|(m, ..)| *m == module)
            .map(|(_, _, rest, _)| format!("\"http://{rest}\""))
            .collect();
        toml.push_str(&format!(
            "[upstreams.{}]\naddresses = [{}]\nbalance = \"{}\"\n\n",
            module.name(),
            addresses.join(", "),
            if module == Module::Catalog {
                "peak_ewma"
            } else {
                "least_connections"
            }
        ));
    }
    toml
}

/// Waits for every process's `/health/ready` (the gateway's last).
async fn wait_until_ready(processes: &mut [Process]) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + START_TIMEOUT;
    for process in processes.iter_mut() {
        let url = format!("http://{}/health/ready", process.rest);
        loop {
            if let Some(status) = process.child.try_wait()? {
                anyhow::bail!("{} stopped while starting ({status})", process.name);
            }
            if let Ok(answer) = http.get(&url).send().await
                && answer.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} was not ready within {:?}", process.name, START_TIMEOUT);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Units of each demo product the fleet stocks, as `agora serve` does.
const DEMO_STOCK: i64 = crate::app::DEMO_STOCK;

/// The fleet's staff account (its password is in the secrets file).
pub const ADMIN_EMAIL: &str = "admin@agora.local";

/// Stocks the demo catalog through the gateway, as the fleet's staff account
/// ([`ADMIN_EMAIL`], made in identity's database on the first start).
/// Products that have stock already are left as they are.
async fn stock_demo(
    settings: &UpSettings,
    identity_db: &str,
    secrets: &Secrets,
) -> anyhow::Result<()> {
    let email = ADMIN_EMAIL;
    let password = secrets.admin_password.clone();
    let mut config = agora_platform::Config::default();
    config.services.identity.database_url = Some(identity_db.to_owned());
    config.auth.signing_key = Some(agora_platform::config::Secret::new(
        secrets.signing_key.clone(),
    ));
    config.data_dir = settings.data_dir.join("up").join("identity");
    // Made on the first start; afterwards it exists (and the login below
    // tells whether it works).
    if let Err(e) = crate::app::create_user(
        &config,
        email,
        "agora up",
        password.clone(),
        vec![agora_kernel::Role::Admin],
    )
    .await
    {
        tracing::debug!(error = %e, "the fleet's staff account was not created");
    }
    let base = format!("http://{}", settings.gateway_addr);
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": email, "password": password }))
        .send()
        .await?
        .json()
        .await?;
    let token = login["data"]["access_token"]
        .as_str()
        .context(
            "the fleet's staff account cannot log in (delete the `up` directory to start afresh)",
        )?
        .to_owned();
    let mut cursor: Option<String> = None;
    let mut stocked = 0;
    loop {
        let mut url = format!("{base}/api/v1/products?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = http.get(&url).send().await?.json().await?;
        for product in page["data"].as_array().into_iter().flatten() {
            let Some(id) = product["id"].as_str() else {
                continue;
            };
            let level: serde_json::Value = http
                .get(format!("{base}/api/v1/inventory/{id}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if level["data"]["on_hand"].as_i64().unwrap_or(0) > 0 {
                continue;
            }
            let answer = http
                .put(format!("{base}/api/v1/inventory/{id}"))
                .bearer_auth(&token)
                .json(
                    &serde_json::json!({ "on_hand": DEMO_STOCK, "reason": "agora up demo stock" }),
                )
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "stocking {id}: {}",
                answer.status()
            );
            stocked += 1;
        }
        cursor = page["meta"]["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    if stocked > 0 {
        tracing::info!(
            products = stocked,
            units = DEMO_STOCK,
            "demo catalog stocked"
        );
    }
    Ok(())
}

fn print_table(processes: &[Process], settings: &UpSettings, dir: &Path) {
    println!(
        "\nagora fleet is up: http://{}/api/v1/products\n",
        settings.gateway_addr
    );
    println!("{:<14} {:<24} {:<24} pid", "process", "http", "grpc");
    for p in processes {
        let grpc = p
            .grpc
            .map_or_else(|| "-".to_owned(), |g| format!("http://{g}"));
        let pid = p
            .child
            .id()
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        println!(
            "{:<14} {:<24} {:<24} {pid}",
            p.name,
            format!("http://{}", p.rest),
            grpc
        );
    }
    println!(
        "\nstaff: {ADMIN_EMAIL}, password in {}",
        dir.join("secrets.toml").display()
    );
    println!("files: {} — Ctrl-C stops everything\n", dir.display());
}

/// Until Ctrl-C or SIGTERM. A replica that stops by itself (a crash, a kill)
/// is reported and the fleet goes on without it, as a fleet behind a gateway
/// does; the fleet stops when the gateway stops or when the last process of a
/// module has.
async fn wait_for_stop(processes: &mut [Process]) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut gone = vec![false; processes.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            // A closed terminal stops the fleet, as Ctrl-C does.
            _ = hangup.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, p) in processes.iter_mut().enumerate() {
                    if gone[i] {
                        continue;
                    }
                    if let Some(status) = p.child.try_wait()? {
                        gone[i] = true;
                        tracing::warn!(process = %p.name, %status, "stopped; the fleet goes on without it");
                        if p.module.is_none() {
                            anyhow::bail!("the gateway stopped ({status}): stopping the fleet");
                        }
                    }
                }
                for module in Module::ALL {
                    let mut replicas = processes.iter().zip(&gone).filter(|(p, _)| p.module == Some(module));
                    if replicas.all(|(_, gone)| *gone) {
                        anyhow::bail!("every {} process stopped: stopping the fleet", module.name());
                    }
                }
            }
        }
    }
}

/// Asks every process to stop (SIGTERM), waits, then kills what is left.
async fn stop(processes: &mut [Process]) {
    for p in processes.iter() {
        if let Some(pid) = p
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for p in processes.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, p.child.wait()).await.is_err() {
            tracing::warn!(process = %p.name, "did not stop in time: killed");
            let _ = p.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_gateway_configuration_is_valid_and_checks_tokens() {
        let settings = UpSettings {
            replicas: 2,
            gateway_addr: "127.0.0.1:8080".parse().expect("an address"),
            postgres_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            database_prefix: "agora_up".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            data_dir: PathBuf::from("data"),
        };
        let mut port = 9000;
        let mut layout = Vec::new();
        for module in Module::ALL {
            for replica in 0..2 {
                let rest: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
                let grpc: SocketAddr = format!("127.0.0.1:{}", port + 1)
                    .parse()
                    .expect("an address");
                layout.push((module, replica, rest, grpc));
                port += 2;
            }
        }
        let text = gateway_config(&settings, &layout);
        let config = agora_gateway::GatewayConfig::parse(&text).expect("valid");
        assert_eq!(config.routes.len(), ROUTES.len());
        assert_eq!(config.upstreams["catalog"].addresses.len(), 2);
        let auth = config.auth.expect("tokens are checked at the edge");
        let identity = layout
            .iter()
            .find(|(m, ..)| *m == Module::Identity)
            .map(|(_, _, rest, _)| *rest)
            .expect("an identity process");
        assert_eq!(
            auth.jwks_url,
            format!("http://{identity}/.well-known/jwks.json")
        );
        let required: Vec<&str> = config
            .routes
            .iter()
            .filter(|r| r.require_auth)
            .map(|r| r.prefix.as_str())
            .collect();
        assert_eq!(required, REQUIRE_AUTH);
        assert!(config.rate_limit.expect("limits").redis_url.is_some());
    }
}
