//! The checkout benchmark's driver: virtual customers that each sign in once, then
//! loop — put 3 products in the cart, check out with `tok_visa` — until the time
//! is up. Prints confirmed orders per second and the latencies of checkouts.
//! `scripts/bench-checkout.sh` runs it against the release server.
//!
//! Usage: `checkout_bench BASE_URL ADMIN_EMAIL ADMIN_PASSWORD CUSTOMERS SECONDS`
//! (the admin stocks the products). Bounded by SECONDS; talks only to BASE_URL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.with_context(|| path.to_string())?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": password })),
                None,
            )
            .await?;
        match body["data"]["access_token"].as_str() {
            Some(t) => Ok(t.to_string()),
            None => bail!("login of {email} failed: {status} {body}"),
        }
    }
}

#[derive(Default)]
struct Tally {
    confirmed: u64,
    errors: BTreeMap<String, u64>,
    checkout_ms: Vec<f64>,
    iteration_ms: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Products stocked for the run; each checkout buys 3 of them, a different three
/// each time, so orders spread over the stock as in a shop (not all on one row).
const PRODUCTS: usize = 30;

/// Customer `token`'s loop until `deadline`: 3 products into the cart, checkout.
async fn run(
    client: std::sync::Arc<Client>,
    token: String,
    products: std::sync::Arc<Vec<String>>,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut next = token.len() * 7;
    while Instant::now() < deadline {
        let started = Instant::now();
        let picks: Vec<&String> = (0..3)
            .map(|i| &products[(next + i * 11) % products.len()])
            .collect();
        next += 1;
        for product in picks {
            let (status, body) = client
                .send(
                    reqwest::Method::POST,
                    "/api/v1/cart/items",
                    Some(&token),
                    Some(json!({ "product_id": product, "quantity": 1 })),
                    None,
                )
                .await?;
            if status != 200 {
                *tally
                    .errors
                    .entry(format!("cart {}", body["error"]["code"]))
                    .or_default() += 1;
            }
        }
        let key = uuid::Uuid::now_v7().to_string();
        let checkout = Instant::now();
        let (status, body) = client
            .send(
                reqwest::Method::POST,
                "/api/v1/checkout",
                Some(&token),
                Some(json!({ "payment_token": "tok_visa" })),
                Some(&key),
            )
            .await?;
        let done = Instant::now();
        tally
            .checkout_ms
            .push((done - checkout).as_secs_f64() * 1000.0);
        tally
            .iteration_ms
            .push((done - started).as_secs_f64() * 1000.0);
        if status == 201 && body["data"]["status"] == "confirmed" {
            tally.confirmed += 1;
        } else {
            *tally
                .errors
                .entry(format!("checkout {status} {}", body["error"]["code"]))
                .or_default() += 1;
        }
    }
    Ok(tally)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, admin_email, admin_password, customers, seconds] = args.as_slice() else {
        bail!("usage: checkout_bench BASE_URL ADMIN_EMAIL ADMIN_PASSWORD CUSTOMERS SECONDS");
    };
    let customers: usize = customers.parse().context("CUSTOMERS")?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    if !(1..=1024).contains(&customers) || !(1..=3600).contains(&seconds) {
        bail!("CUSTOMERS must be 1 to 1024 and SECONDS 1 to 3600");
    }
    let client = std::sync::Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(customers)
            .timeout(Duration::from_secs(30))
            .build()?,
        base: base.trim_end_matches('/').to_string(),
    });
    let admin = client.login(admin_email, admin_password).await?;
    let mut products = Vec::new();
    for i in 0..PRODUCTS {
        let sku = format!("BENCH-{}-{i}", uuid::Uuid::now_v7().simple());
        let (status, body) = client
            .send(
                reqwest::Method::POST,
                "/api/v1/products",
                Some(&admin),
                Some(json!({ "sku": sku, "name": format!("Bench product {sku}"),
                             "price": { "amount": 1000 + i as i64, "currency": "USD" } })),
                None,
            )
            .await?;
        let id = body["data"]["id"]
            .as_str()
            .with_context(|| format!("creating a product: {status} {body}"))?
            .to_string();
        let (status, body) = client
            .send(
                reqwest::Method::PUT,
                &format!("/api/v1/inventory/{id}"),
                Some(&admin),
                Some(json!({ "on_hand": 1_000_000_000, "reason": "benchmark" })),
                None,
            )
            .await?;
        if status != 200 {
            bail!("stocking failed: {status} {body}");
        }
        products.push(id);
    }
    let products = std::sync::Arc::new(products);
    // Sign everyone in first (argon2 is deliberately slow), then start the clock.
    let deadline_after = Duration::from_secs(seconds);
    let gate = std::sync::Arc::new(tokio::sync::Barrier::new(customers + 1));
    let start = std::sync::Arc::new(tokio::sync::OnceCell::<Instant>::new());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..customers {
        let (client, products, gate, start) = (
            client.clone(),
            products.clone(),
            gate.clone(),
            start.clone(),
        );
        tasks.spawn(async move {
            // Everyone registers and signs in before the clock starts.
            let ready = customer_ready(&client, n).await;
            gate.wait().await;
            let began = *start.get_or_init(|| async { Instant::now() }).await;
            match ready {
                Ok(token) => run(client, token, products, began + deadline_after).await,
                Err(e) => Err(e),
            }
        });
    }
    gate.wait().await;
    let began = *start.get_or_init(|| async { Instant::now() }).await;
    let mut all = Tally::default();
    for result in tasks.join_all().await {
        let t = result?;
        all.confirmed += t.confirmed;
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.checkout_ms.extend(t.checkout_ms);
        all.iteration_ms.extend(t.iteration_ms);
    }
    let elapsed = began.elapsed().as_secs_f64();
    all.checkout_ms.sort_by(f64::total_cmp);
    all.iteration_ms.sort_by(f64::total_cmp);
    let c = &all.checkout_ms;
    let it = &all.iteration_ms;
    println!(
        "customers={customers} seconds={elapsed:.1} confirmed={} orders_per_s={:.0} \
         checkout_ms p50={:.1} p90={:.1} p99={:.1} max={:.1} \
         iteration_ms(3 adds + checkout) p50={:.1} p99={:.1} errors={:?}",
        all.confirmed,
        all.confirmed as f64 / elapsed,
        percentile(c, 0.5),
        percentile(c, 0.9),
        percentile(c, 0.99),
        c.last().copied().unwrap_or(0.0),
        percentile(it, 0.5),
        percentile(it, 0.99),
        all.errors,
    );
    Ok(())
}

/// Registers and signs in customer `n`; returns their access token.
async fn customer_ready(client: &Client, n: usize) -> anyhow::Result<String> {
    let email = format!("bench-{n}-{}@example.com", uuid::Uuid::now_v7().simple());
    let password = "correct horse battery staple";
    let (status, body) = client
        .send(
            reqwest::Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({ "email": email, "password": password, "name": format!("Customer {n}") })),
            None,
        )
        .await?;
    if status != 201 {
        bail!("registration failed: {status} {body}");
    }
    client.login(&email, password).await
}
