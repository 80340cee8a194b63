//! The services shape end to end, as an operator runs it: `agora up --services
//! --replicas 2` on the machine's PostgreSQL, Redis and NATS, driven only
//! through the gateway with `agora loadgen`, the same black-box client that
//! measures the monolith. Under a bounded checkout load one orders replica, one
//! catalog replica and one payments replica are killed (SIGKILL); afterwards every order has ended
//! and the checkout invariants hold across the six databases: nothing
//! oversold, nobody charged twice or charged for a cancelled order, no stock
//! left reserved, and failed requests no more than the requests in flight at
//! the kill.
//!
//! Ignored unless `AGORA_TEST_POSTGRES_URL`, `AGORA_TEST_REDIS_URL` and
//! `AGORA_TEST_NATS_URL` are set (`.ci/run` sets them).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{AnyConnection, Connection as _, Row as _};

/// Customers of the checkout load: also the most requests in flight at once.
const USERS: u64 = 12;

/// One process of the fleet, as `agora up` prints it.
#[derive(Debug, Clone)]
struct Process {
    name: String,
    pid: u32,
}

/// A running `agora up`; stopped (and its processes with it) when dropped.
struct Fleet {
    up: Child,
    processes: Vec<Process>,
    gateway: String,
    data: tempfile::TempDir,
}

impl Fleet {
    fn pid(&self, name: &str) -> u32 {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name} in {:?}", self.processes))
            .pid
    }

    fn admin_password(&self) -> String {
        let path = self.data.path().join("up/secrets.toml");
        let text = std::fs::read_to_string(&path).expect("the fleet's secrets");
        let secrets: toml::Value = toml::from_str(&text).expect("a secrets file");
        secrets["admin_password"]
            .as_str()
            .expect("admin_password")
            .to_owned()
    }

    /// SIGTERM to `agora up`, which stops its processes; then SIGKILL to
    /// whatever is left.
    fn stop(&mut self) {
        signal("TERM", self.up.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.up.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.up.kill();
        let _ = self.up.wait();
        for process in &self.processes {
            signal("KILL", process.pid);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn agora() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AGORA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The PostgreSQL server of a database URL: the URL without its database.
fn server_of(database_url: &str) -> String {
    let (server, _) = database_url
        .rsplit_once('/')
        .expect("a URL with a database");
    server.to_owned()
}

/// Starts `agora up --services --replicas 2` and reads its table of processes.
fn start_fleet(server: &str, prefix: &str, redis: &str, nats: &str) -> Fleet {
    let data = tempfile::tempdir().expect("a directory");
    let gateway_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let log = std::fs::File::create(data.path().join("fleet.log")).expect("a log file");
    let mut up = agora()
        .args(["--data-dir", data.path().to_str().expect("utf-8")])
        .args(["up", "--services", "--replicas", "2"])
        .args(["--addr", &format!("127.0.0.1:{gateway_port}")])
        .args(["--postgres", server, "--databases", prefix])
        .args(["--redis", redis, "--nats", nats])
        // Inherited by every process of the fleet: a stream and subjects of
        // this run's own, and quiet logs.
        .env("AGORA_BUS__NATS_STREAM", prefix.to_uppercase())
        .env("AGORA_BUS__NATS_SUBJECT_PREFIX", prefix)
        .env("AGORA_LOG__FILTER", "warn")
        // Cheap password hashes, as every test uses: this is a debug build.
        .env("AGORA_AUTH__ARGON2__MEMORY_KIB", "64")
        .env("AGORA_AUTH__ARGON2__ITERATIONS", "1")
        .env("AGORA_AUTH__ARGON2__PARALLELISM", "1")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("agora up starts");
    let stdout = up.stdout.take().expect("its output");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut fleet = Fleet {
        up,
        processes: Vec::new(),
        gateway,
        data,
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match received.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let log = std::fs::read_to_string(fleet.data.path().join("fleet.log"))
                    .unwrap_or_default();
                panic!(
                    "agora up did not print its table; its log ends:\n{}",
                    tail(&log)
                );
            }
        };
        if line.starts_with("files:") {
            break;
        }
        let columns: Vec<&str> = line.split_whitespace().collect();
        if let [name, http, _grpc, pid] = columns[..]
            && http.starts_with("http://")
            && let Ok(pid) = pid.parse()
        {
            fleet.processes.push(Process {
                name: name.to_owned(),
                pid,
            });
        }
    }
    fleet
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A run of `agora loadgen` through the gateway.
struct Load {
    child: Child,
    report: std::path::PathBuf,
}

impl Load {
    /// Starts `scenario` for `duration` with `stock` units of each product.
    fn start(fleet: &Fleet, scenario: &str, duration: &str, stock: u64, seed: u64) -> Load {
        let report = fleet.data.path().join(format!("{scenario}.json"));
        let child = agora()
            .args(["loadgen", "--target", &fleet.gateway, "--quiet"])
            .args(["--users", &USERS.to_string(), "--duration", duration])
            .args(["--scenario", scenario, "--seed", &seed.to_string()])
            .args([
                "--admin-email",
                "admin@agora.local",
                "--stock",
                &stock.to_string(),
            ])
            .args(["--json", report.to_str().expect("utf-8")])
            .env("AGORA_LOADGEN_ADMIN_PASSWORD", fleet.admin_password())
            .stdout(Stdio::null())
            .spawn()
            .expect("loadgen runs");
        Load { child, report }
    }

    /// Waits for the run; its JSON report and whether it exited successfully.
    fn finish(mut self) -> Result<(Value, bool), String> {
        let status = self.child.wait().map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(&self.report)
            .map_err(|e| format!("the {} report: {e}", self.report.display()))?;
        let report = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok((report, status.success()))
    }
}

async fn connect(server: &str, prefix: &str, module: &str) -> AnyConnection {
    AnyConnection::connect(&format!("{server}/{prefix}_{module}"))
        .await
        .unwrap_or_else(|e| panic!("the {module} database: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL, Redis and NATS: set AGORA_TEST_POSTGRES_URL, AGORA_TEST_REDIS_URL and AGORA_TEST_NATS_URL (see docs/operations.md)"]
async fn the_fleet_behind_the_gateway_survives_replica_kills_under_checkout_load() {
    let env = |key: &str| std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"));
    let server = server_of(&env("AGORA_TEST_POSTGRES_URL"));
    let (redis, nats) = (env("AGORA_TEST_REDIS_URL"), env("AGORA_TEST_NATS_URL"));
    sqlx::any::install_default_drivers();
    // Random hex (the end of a v7 UUID): a-z0-9, within --databases' 40 characters.
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("agora_e2e_{}", &unique[20..]);
    let mut fleet = start_fleet(&server, &prefix, &redis, &nats);
    let outcome = exercise(&fleet, &server, &prefix).await;
    fleet.stop();
    drop_databases(&server, &prefix).await;
    if let Err(why) = outcome {
        let log = std::fs::read_to_string(fleet.data.path().join("fleet.log")).unwrap_or_default();
        panic!("{why}\nthe fleet's log ends:\n{}", tail(&log));
    }
}

/// Everything the test checks; an `Err` carries what failed.
async fn exercise(fleet: &Fleet, server: &str, prefix: &str) -> Result<(), String> {
    let names: Vec<&str> = fleet.processes.iter().map(|p| p.name.as_str()).collect();
    for expected in [
        "gateway",
        "catalog-1",
        "catalog-2",
        "orders-1",
        "orders-2",
        "payments-1",
        "payments-2",
    ] {
        if !names.contains(&expected) {
            return Err(format!("no {expected} among {names:?}"));
        }
    }

    // The gateway's own answers.
    let http = reqwest::Client::new();
    expect_code(
        &http,
        &format!("{}/api/v1/nowhere", fleet.gateway),
        404,
        "ROUTE_NOT_FOUND",
    )
    .await?;
    expect_code(
        &http,
        &format!("{}/api/v1/orders", fleet.gateway),
        401,
        "AUTH_REQUIRED",
    )
    .await?;

    // The black-box shop mix through the gateway: browsing, search, accounts,
    // carts, checkouts, orders; no error but stock running out.
    let (shop, passed) = Load::start(fleet, "shop", "8s", 1_000_000, 7).finish()?;
    if !passed || shop["total"]["unexpected_errors"] != 0 {
        return Err(format!("the shop scenario failed: {}", shop["total"]));
    }

    // Checkouts, with an orders, a catalog and a payments replica killed
    // midway. Little stock, so that it runs out and the race for the last
    // units is on.
    let load = Load::start(fleet, "checkout-only", "20s", 150, 11);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // payments-1 too: the sagas it was serving go on at payments-2, whose
    // simulated provider shares its books.
    signal("KILL", fleet.pid("orders-1"));
    signal("KILL", fleet.pid("catalog-1"));
    signal("KILL", fleet.pid("payments-1"));
    let (checkout, _) = tokio::task::spawn_blocking(move || load.finish())
        .await
        .map_err(|e| e.to_string())??;
    let unexpected = checkout["total"]["unexpected_errors"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let confirmed_calls = checkout["kinds"]
        .as_array()
        .and_then(|kinds| kinds.iter().find(|k| k["kind"] == "POST /checkout"))
        .and_then(|k| k["count"].as_u64())
        .unwrap_or(0);
    if unexpected > USERS {
        return Err(format!(
            "{unexpected} requests failed, more than the {USERS} that can be in flight at the kill: {}",
            checkout["total"]["errors"]
        ));
    }
    if confirmed_calls == 0 {
        return Err(format!("no checkout was made: {checkout}"));
    }

    // The gateway took the dead replicas out: it is ready, and reads pass.
    for _ in 0..20 {
        let answer = http
            .get(format!("{}/api/v1/products?limit=5", fleet.gateway))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !answer.status().is_success() {
            return Err(format!(
                "a product list after the kill answered {}",
                answer.status()
            ));
        }
    }

    // Every saga ends: the survivor recovers those the dead replica held.
    let mut orders = connect(server, prefix, "orders").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM orders_sagas WHERE state <> 'done'")
                .fetch_one(&mut orders)
                .await
                .map_err(|e| e.to_string())?;
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{open} sagas did not end within 120 s of the load"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check_invariants(&mut orders, server, prefix).await
}

/// `GET url` answers `status` with the error `code`.
async fn expect_code(
    http: &reqwest::Client,
    url: &str,
    status: u16,
    code: &str,
) -> Result<(), String> {
    let answer = http.get(url).send().await.map_err(|e| e.to_string())?;
    let got = answer.status().as_u16();
    let body: Value = answer.json().await.map_err(|e| e.to_string())?;
    if got != status || body["error"]["code"] != code {
        return Err(format!(
            "GET {url} answered {got} {body}, not {status} {code}"
        ));
    }
    Ok(())
}

/// The checkout invariants across the orders, payments and inventory
/// databases.
async fn check_invariants(
    orders: &mut AnyConnection,
    server: &str,
    prefix: &str,
) -> Result<(), String> {
    let sql = |e: sqlx::Error| e.to_string();
    let rows = sqlx::query("SELECT id, status, total_minor FROM orders_orders")
        .fetch_all(&mut *orders)
        .await
        .map_err(sql)?;
    let mut status_of = BTreeMap::new();
    for row in &rows {
        let id: String = row.try_get("id").map_err(sql)?;
        let status: String = row.try_get("status").map_err(sql)?;
        let total: i64 = row.try_get("total_minor").map_err(sql)?;
        // A payment's reference is the order's wire id (`ord_…`).
        let id = agora_kernel::OrderId::from_db(&id)
            .map_err(|e| format!("order id {id}: {e}"))?
            .to_string();
        status_of.insert(id, (status, total));
    }
    let unfinished: Vec<_> = status_of
        .iter()
        .filter(|(_, (s, _))| s != "confirmed" && s != "cancelled")
        .collect();
    if !unfinished.is_empty() {
        return Err(format!(
            "orders neither confirmed nor cancelled: {unfinished:?}"
        ));
    }
    let confirmed = status_of.values().filter(|(s, _)| s == "confirmed").count();
    if confirmed == 0 {
        return Err("no order was confirmed".into());
    }

    // Payments: each confirmed order captured once for its total; a cancelled
    // one kept no money; no payment left half-way.
    let mut payments = connect(server, prefix, "payments").await;
    let rows = sqlx::query(
        "SELECT reference, status, captured_minor, refunded_minor FROM payments_payments",
    )
    .fetch_all(&mut payments)
    .await
    .map_err(sql)?;
    let mut kept: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for row in &rows {
        let reference: String = row.try_get("reference").map_err(sql)?;
        let status: String = row.try_get("status").map_err(sql)?;
        let captured: i64 = row.try_get("captured_minor").map_err(sql)?;
        let refunded: i64 = row.try_get("refunded_minor").map_err(sql)?;
        if status == "processing" || status == "authorized" {
            return Err(format!("payment for {reference} left {status}"));
        }
        kept.entry(reference)
            .or_default()
            .push((status, captured - refunded));
    }
    for (order, (status, total)) in &status_of {
        let money: i64 = kept
            .get(order)
            .map_or(0, |p| p.iter().map(|(_, m)| m).sum());
        let charges = kept
            .get(order)
            .map_or(0, |p| p.iter().filter(|(_, m)| *m > 0).count());
        match status.as_str() {
            "confirmed" if money != *total || charges != 1 => {
                return Err(format!(
                    "confirmed order {order} of {total} kept {money} in {charges} payments: {:?}",
                    kept.get(order)
                ));
            }
            "cancelled" if money != 0 => {
                return Err(format!(
                    "cancelled order {order} kept {money}: {:?}",
                    kept.get(order)
                ));
            }
            _ => {}
        }
    }

    // The provider's own books agree: no call left half-way, and it holds
    // for each payment what the payments module says it captured and
    // refunded (a double capture at the provider would show here).
    let pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM payments_simulator_answers WHERE outcome = 'pending'",
    )
    .fetch_one(&mut payments)
    .await
    .map_err(sql)?;
    let disagreeing: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM payments_payments p \
         JOIN payments_simulator_payments s ON s.provider_ref = p.provider_ref \
         WHERE s.captured_minor <> p.captured_minor OR s.refunded_minor <> p.refunded_minor",
    )
    .fetch_one(&mut payments)
    .await
    .map_err(sql)?;
    if pending != 0 || disagreeing != 0 {
        return Err(format!(
            "{pending} provider answers pending, {disagreeing} payments whose provider books disagree"
        ));
    }

    // Stock: nothing held, and what was sold is what the confirmed orders hold.
    let mut inventory = connect(server, prefix, "inventory").await;
    let held: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM inventory_reservations WHERE status = 'held'")
            .fetch_one(&mut inventory)
            .await
            .map_err(sql)?;
    let reserved: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(reserved), 0) AS BIGINT) FROM inventory_stock",
    )
    .fetch_one(&mut inventory)
    .await
    .map_err(sql)?;
    if held != 0 || reserved != 0 {
        return Err(format!(
            "{held} reservations still held, {reserved} units reserved"
        ));
    }
    let sold_rows = sqlx::query(
        "SELECT product_id, CAST(SUM(-delta) AS BIGINT) AS sold FROM inventory_movements WHERE kind = 'sale' GROUP BY product_id",
    )
    .fetch_all(&mut inventory)
    .await
    .map_err(sql)?;
    let mut sold = BTreeMap::new();
    for row in &sold_rows {
        let product: String = row.try_get("product_id").map_err(sql)?;
        let units: i64 = row.try_get("sold").map_err(sql)?;
        sold.insert(product_key(&product), units);
    }
    let ordered_rows = sqlx::query(
        "SELECT l.product_id, CAST(SUM(l.quantity) AS BIGINT) AS units FROM orders_lines l \
         JOIN orders_orders o ON o.id = l.order_id WHERE o.status = 'confirmed' GROUP BY l.product_id",
    )
    .fetch_all(&mut *orders)
    .await
    .map_err(sql)?;
    let mut ordered = BTreeMap::new();
    for row in &ordered_rows {
        let product: String = row.try_get("product_id").map_err(sql)?;
        let units: i64 = row.try_get("units").map_err(sql)?;
        ordered.insert(product_key(&product), units);
    }
    if sold != ordered {
        return Err(format!(
            "stock sold {sold:?} but confirmed orders hold {ordered:?}"
        ));
    }
    Ok(())
}

/// A product id as the databases keep it, whichever form a module stores.
fn product_key(id: &str) -> String {
    agora_kernel::ProductId::parse(id).map_or_else(|_| id.to_owned(), |p| p.to_db())
}

async fn drop_databases(server: &str, prefix: &str) {
    let Ok(mut admin) = AnyConnection::connect(&format!("{server}/postgres")).await else {
        return;
    };
    for module in [
        "identity",
        "catalog",
        "inventory",
        "cart",
        "orders",
        "payments",
    ] {
        let statement = format!("DROP DATABASE IF EXISTS {prefix}_{module} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await;
    }
}
