//! `agora loadgen`: virtual customers against a running Agora.
//!
//! It prepares its own data through the API (customer accounts; stock, when
//! given a staff account), then runs one scenario — `browse`, `shop` or
//! `checkout-only` — either closed loop (each customer starts its next visit
//! when the last one ends) or open loop at a fixed arrival rate (`--rate`),
//! where a request's latency counts from when it was due, so that a server
//! that falls behind cannot hide it. It shows a progress bar while it runs and
//! prints a table per request kind at the end (count, errors by code, req/s,
//! p50/p90/p99/p99.9/max from an HDR histogram); `--json` writes the same to
//! a file. Bounded: it stops at the duration or request count, and talks only
//! to the target it is given (no redirects followed).

pub mod client;
pub mod report;
pub mod scenario;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;

use crate::client::{Client, Request};
use crate::report::{Report, RunInfo, Stats};
pub use crate::scenario::Scenario;
use crate::scenario::{Shop, User, ids_and_names};

/// The environment variable holding the password of `--admin-email`
/// (never a command-line argument: those show in `ps`).
pub const ADMIN_PASSWORD_ENV: &str = "AGORA_LOADGEN_ADMIN_PASSWORD";

/// The most virtual customers a run may have.
pub const MAX_USERS: usize = 10_000;
/// The longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The highest open-loop arrival rate, iterations per second.
pub const MAX_RATE: f64 = 100_000.0;
/// At most this many products are used (and stocked).
const MAX_PRODUCTS: usize = 500;
/// Preparation requests in flight at once (registrations hash passwords: a
/// few at a time keeps the server answering).
const PREPARATION_CONCURRENCY: usize = 8;

/// `agora loadgen`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// The Agora to load: `http://host:port`. The only address it talks to.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Virtual customers, 1 to 10000 (open loop: the most visits at once).
    #[arg(long, default_value_t = 64)]
    pub users: usize,
    /// How long to run, e.g. `30s` or `2m` (at most 24h) [default: 30s, or
    /// until --requests when that is given].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (preparation not counted).
    #[arg(long)]
    pub requests: Option<u64>,
    /// The mix of requests.
    #[arg(long, value_enum, default_value_t = Scenario::Shop)]
    pub scenario: Scenario,
    /// Open loop: start this many visits per second, whatever the server's
    /// pace; latency counts from when each request was due.
    #[arg(long)]
    pub rate: Option<f64>,
    /// A pause before each of a customer's requests, e.g. `200ms` [default: none].
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub think_time: Duration,
    /// A staff account that stocks every product used with --stock units
    /// first (its password in AGORA_LOADGEN_ADMIN_PASSWORD). This overwrites
    /// the target's stock levels: use it against a test deployment. Without
    /// it the run sells what is in stock.
    #[arg(long, value_name = "EMAIL")]
    pub admin_email: Option<String>,
    /// The password of `--admin-email`; read from AGORA_LOADGEN_ADMIN_PASSWORD
    /// when not set here (programs embedding the load generator set it).
    #[arg(skip)]
    pub admin_password: Option<String>,
    /// Units of each product to stock with --admin-email.
    #[arg(long, default_value_t = 1_000_000)]
    pub stock: i64,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Seed of the customers' choices: the same seed makes the same choices.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The longest a request may take before it counts as TRANSPORT_TIMEOUT.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// A run as checked: every parameter within bounds.
#[derive(Debug, Clone)]
struct Plan {
    base: String,
    users: usize,
    duration: Duration,
    requests: u64,
    rate: Option<f64>,
}

impl Plan {
    fn new(args: &LoadgenArgs) -> anyhow::Result<Plan> {
        let base = args.target.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .with_context(|| format!("--target {base:?} is not a URL: give http://host:port"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("--target {base:?} must be an http:// or https:// address with a host");
        }
        if url.path() != "/" || url.query().is_some() {
            bail!("--target {base:?} must be the server's root (no path or query)");
        }
        if !(1..=MAX_USERS).contains(&args.users) {
            bail!("--users must be 1 to {MAX_USERS}, not {}", args.users);
        }
        let duration = match (args.duration, args.requests) {
            (Some(d), _) => d,
            (None, Some(_)) => MAX_DURATION,
            (None, None) => Duration::from_secs(30),
        };
        if duration.is_zero() || duration > MAX_DURATION {
            bail!("--duration must be more than 0 and at most 24h");
        }
        if args.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE)
        {
            bail!("--rate must be more than 0 and at most {MAX_RATE} visits per second");
        }
        if args.think_time > Duration::from_secs(60) {
            bail!("--think-time must be at most 60s");
        }
        if args.timeout.is_zero() || args.timeout > Duration::from_secs(300) {
            bail!("--timeout must be more than 0 and at most 300s");
        }
        if !(1..=1_000_000_000).contains(&args.stock) {
            bail!("--stock must be 1 to 1000000000");
        }
        Ok(Plan {
            base,
            users: args.users,
            duration,
            requests: args.requests.unwrap_or(u64::MAX),
            rate: args.rate,
        })
    }
}

/// Runs `args` to the end and returns what it measured; writes `--json` too.
/// Fails, with a message saying why, when the arguments are out of bounds,
/// the target is not a reachable Agora, or the preparation fails.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    let plan = Plan::new(&args)?;
    let admin_password = match (&args.admin_email, &args.admin_password) {
        (Some(_), Some(password)) => Some(password.clone()),
        (Some(_), None) => Some(std::env::var(ADMIN_PASSWORD_ENV).with_context(|| {
            format!("--admin-email needs the account's password in {ADMIN_PASSWORD_ENV}")
        })?),
        (None, _) => None,
    };
    if let Some(json) = &args.json {
        // Refuse an unwritable file now, not after the run.
        std::fs::write(json, b"{}")
            .with_context(|| format!("--json {}: cannot write it", json.display()))?;
    }
    let client = Client::new(&plan.base, plan.users, args.timeout)?;
    client.check_agora().await?;
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let catalog = load_catalog(&client).await?;
    if let (Some(email), Some(password)) = (&args.admin_email, &admin_password) {
        stock(&client, email, password, &catalog.products, args.stock).await?;
    }
    let users = if args.scenario.signs_in() {
        register(&client, plan.users, seed, args.quiet).await?
    } else {
        (0..plan.users)
            .map(|n| User::new(String::new(), String::new(), String::new(), seed ^ n as u64))
            .collect()
    };

    let shop = Arc::new(Shop {
        client,
        products: catalog.products,
        categories: catalog.categories,
        words: catalog.words,
        sold_out: RwLock::new(HashSet::new()),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        max_requests: plan.requests,
        deadline: Instant::now() + plan.duration,
        think_time: args.think_time,
    });
    let progress = Progress::start(&shop, &plan, args.quiet);
    let began = Instant::now();
    let stats = match plan.rate {
        None => closed_loop(&shop, users, args.scenario).await,
        Some(rate) => open_loop(&shop, users, args.scenario, rate).await,
    };
    let elapsed = began.elapsed();
    progress.finish();
    let report = stats.report(
        RunInfo {
            target: plan.base.clone(),
            scenario: args.scenario.name().to_string(),
            users: plan.users,
            rate: plan.rate,
        },
        elapsed,
    );
    if let Some(json) = &args.json {
        let text = serde_json::to_vec_pretty(&report).context("the JSON report")?;
        std::fs::write(json, text).with_context(|| format!("writing {}", json.display()))?;
    }
    Ok(report)
}

/// Each customer runs visits back to back until the run is over.
async fn closed_loop(shop: &Arc<Shop>, users: Vec<User>, scenario: Scenario) -> Stats {
    let mut tasks = tokio::task::JoinSet::new();
    for mut user in users {
        let shop = shop.clone();
        tasks.spawn(async move {
            while user.visit(&shop, scenario).await {}
            user.stats
        });
    }
    let mut all = Stats::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(stats) = done {
            all.merge(stats);
        }
    }
    all
}

/// A visit starts every `1/rate` seconds, on a free customer; when none is
/// free it waits for one, and the wait counts in its first request's latency.
async fn open_loop(shop: &Arc<Shop>, users: Vec<User>, scenario: Scenario, rate: f64) -> Stats {
    let free = Arc::new(Mutex::new(users));
    let permits = Arc::new(tokio::sync::Semaphore::new(
        free.lock().map(|u| u.len()).unwrap_or(0),
    ));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0u32.. {
        let due = start + interval.mul_f64(f64::from(n));
        tokio::time::sleep_until(due).await;
        if shop.over() {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(mut user) = free.lock().ok().and_then(|mut f| f.pop()) else {
            break;
        };
        let (shop, free) = (shop.clone(), free.clone());
        user.due = Some(due.into_std());
        tasks.spawn(async move {
            user.visit(&shop, scenario).await;
            user.due = None;
            if let Ok(mut free) = free.lock() {
                free.push(user);
            }
            drop(permit);
        });
        // Reap finished visits as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut all = Stats::default();
    if let Ok(mut free) = free.lock() {
        for user in free.drain(..) {
            all.merge(user.stats);
        }
    }
    all
}

/// The shop as the customers will see it.
struct Catalog {
    products: Vec<String>,
    categories: Vec<String>,
    words: Vec<String>,
}

/// Reads the active products (up to [`MAX_PRODUCTS`]) and the categories.
async fn load_catalog(client: &Client) -> anyhow::Result<Catalog> {
    let mut products = Vec::new();
    let mut words = HashSet::new();
    let mut cursor: Option<String> = None;
    while products.len() < MAX_PRODUCTS {
        let path = match &cursor {
            Some(c) => format!("/api/v1/products?limit=100&cursor={c}"),
            None => "/api/v1/products?limit=100".to_string(),
        };
        let page = client.send(Request::get(path)).await;
        if let Some(e) = &page.error {
            bail!("listing the products failed: {e}");
        }
        for (id, name) in ids_and_names(&page.body) {
            if let Some(word) = name.split_whitespace().last() {
                words.insert(word.to_lowercase());
            }
            products.push(id);
        }
        match page.body["meta"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    products.truncate(MAX_PRODUCTS);
    if products.is_empty() {
        bail!(
            "the target has no active products to load: start it with the demo catalog \
             (the default of `agora serve`) or create some"
        );
    }
    let categories = client.send(Request::get("/api/v1/categories")).await;
    let categories = categories
        .data()
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut words: Vec<String> = words.into_iter().collect();
    words.sort();
    Ok(Catalog {
        products,
        categories,
        words,
    })
}

/// Signs in as the staff account and sets every product's stock to `units`.
async fn stock(
    client: &Client,
    email: &str,
    password: &str,
    products: &[String],
    units: i64,
) -> anyhow::Result<()> {
    let body = json!({ "email": email, "password": password });
    let login = client
        .send(Request::new(Method::POST, "/api/v1/auth/login").json(body))
        .await;
    let Some(token) = login.data()["access_token"].as_str().map(str::to_string) else {
        bail!(
            "signing in as {email} failed: {}",
            login
                .error
                .as_deref()
                .unwrap_or("no access token in the answer")
        );
    };
    let mut answers = futures_util::stream::iter(products)
        .map(|product| {
            let path = format!("/api/v1/inventory/{product}");
            let body = json!({ "on_hand": units, "reason": "agora loadgen" });
            client.send(Request::new(Method::PUT, path).token(&token).json(body))
        })
        .buffer_unordered(PREPARATION_CONCURRENCY);
    while let Some(answer) = answers.next().await {
        if let Some(e) = answer.error {
            bail!(
                "stocking a product as {email} failed: {e} (does the account have staff rights?)"
            );
        }
    }
    Ok(())
}

/// Registers and signs in `n` customers of this run.
async fn register(client: &Client, n: usize, seed: u64, quiet: bool) -> anyhow::Result<Vec<User>> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("preparing: {pos}/{len} customers signed up {wide_bar}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut signed_up = futures_util::stream::iter(0..n)
        .map(|i| {
            let email = format!("loadgen-{run}-{i}@example.com");
            sign_up(client, email, seed.wrapping_add(i as u64))
        })
        .buffer_unordered(PREPARATION_CONCURRENCY);
    let mut users = Vec::with_capacity(n);
    while let Some(user) = signed_up.next().await {
        users.push(user?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(users)
}

/// Registers one customer and signs them in.
async fn sign_up(client: &Client, email: String, seed: u64) -> anyhow::Result<User> {
    let password = format!("loadgen {} password", uuid::Uuid::now_v7().simple());
    let body = json!({ "email": email, "password": password, "name": "Loadgen customer" });
    let registered = client
        .send(Request::new(Method::POST, "/api/v1/auth/register").json(body))
        .await;
    if let Some(e) = registered.error {
        bail!("registering a customer failed: {e}");
    }
    let body = json!({ "email": email, "password": password });
    let login = client
        .send(Request::new(Method::POST, "/api/v1/auth/login").json(body))
        .await;
    let Some(token) = login.data()["access_token"].as_str() else {
        bail!(
            "signing in a new customer failed: {}",
            login.error.as_deref().unwrap_or("no access token")
        );
    };
    Ok(User::new(email, password, token.to_string(), seed))
}

/// The live progress bar: elapsed time against the duration (or requests
/// against the count), with the current request rate and errors.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(shop: &Arc<Shop>, plan: &Plan, quiet: bool) -> Progress {
        let by_requests = plan.requests != u64::MAX && plan.duration == MAX_DURATION;
        let len = if by_requests {
            plan.requests
        } else {
            u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX)
        };
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len)
        };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (shop, ticker_bar) = (shop.clone(), bar.clone());
        let began = Instant::now();
        let ticker = tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let sent = shop.sent.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (sent - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, sent);
                ticker_bar.set_position(if by_requests {
                    sent
                } else {
                    u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX)
                });
                ticker_bar.set_message(format!(
                    "{rate:.0} req/s, {sent} requests, {} errors",
                    shop.failed.load(Ordering::Relaxed)
                ));
            }
        });
        Progress { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))?;
        Plan::new(&cli.args)
    }

    fn refused(args: &[&str], says: &str) {
        let e = plan(args).expect_err("refused").to_string();
        assert!(e.contains(says), "{args:?}: {e}");
    }

    #[test]
    fn defaults_are_thirty_seconds_of_shop_at_64_users() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.users, 64);
        assert_eq!(p.duration, Duration::from_secs(30));
        assert_eq!(p.requests, u64::MAX);
        assert_eq!(p.base, "http://127.0.0.1:8080");
        let p = plan(&["--requests", "100"]).unwrap();
        assert_eq!((p.requests, p.duration), (100, MAX_DURATION));
    }

    #[test]
    fn absurd_parameters_are_refused_with_the_flag_named() {
        refused(&["--users", "0"], "--users");
        refused(&["--users", "10001"], "--users");
        refused(&["--users", "-3"], "-3");
        refused(&["--duration", "0s"], "--duration");
        refused(&["--duration", "25h"], "--duration");
        refused(&["--duration", "forever"], "forever");
        refused(&["--requests", "0"], "--requests");
        refused(&["--rate", "0"], "--rate");
        refused(&["--rate", "NaN"], "--rate");
        refused(&["--rate", "1e9"], "--rate");
        refused(&["--think-time", "2h"], "--think-time");
        refused(&["--timeout", "0s"], "--timeout");
        refused(&["--stock", "0"], "--stock");
        refused(&["--scenario", "stampede"], "stampede");
        refused(&["--target", "not a url"], "--target");
        refused(&["--target", "ftp://127.0.0.1"], "http");
        refused(&["--target", "http://127.0.0.1:8080/api"], "root");
    }
}
