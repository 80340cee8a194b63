//! What the virtual customers do: one iteration of each scenario is one visit
//! to the shop.

use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{Answer, Client, Request};
use crate::report::{Kind, Stats};

/// Which mix of requests the virtual customers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Anonymous visitors: product lists, searches, products, categories.
    Browse,
    /// Signed-in customers: browse, add to the cart, change quantities, check
    /// out, look at their orders, sign in again now and then.
    Shop,
    /// Signed-in customers that only fill a cart with 3 products and check out.
    CheckoutOnly,
}

impl Scenario {
    /// Whether its customers need accounts.
    pub fn signs_in(self) -> bool {
        self != Scenario::Browse
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Browse => "browse",
            Scenario::Shop => "shop",
            Scenario::CheckoutOnly => "checkout-only",
        }
    }
}

/// What every customer shares: the shop as prepared, and the run's limits.
#[derive(Debug)]
pub struct Shop {
    pub(crate) client: Client,
    /// Active products' ids.
    pub(crate) products: Vec<String>,
    /// Category ids.
    pub(crate) categories: Vec<String>,
    /// Words from product names, to search for.
    pub(crate) words: Vec<String>,
    /// Products that answered "out of stock": customers stop choosing them
    /// (as a shop shows "sold out") until every product is sold out.
    pub(crate) sold_out: RwLock<HashSet<String>>,
    /// Requests sent and failed so far, for the progress bar and the limit.
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Stop after this many requests.
    pub(crate) max_requests: u64,
    /// Stop starting requests at this instant.
    pub(crate) deadline: Instant,
    pub(crate) think_time: Duration,
}

impl Shop {
    /// Whether the run is over: no new requests.
    pub(crate) fn over(&self) -> bool {
        Instant::now() >= self.deadline || self.sent.load(Ordering::Relaxed) >= self.max_requests
    }

    fn sold_out(&self, product: &str) {
        if let Ok(mut sold_out) = self.sold_out.write() {
            sold_out.insert(product.to_string());
        }
    }

    /// A product to buy: one not known to be sold out, while there is one.
    fn pick_in_stock(&self, rng: &mut fastrand::Rng) -> Option<String> {
        if self.products.is_empty() {
            return None;
        }
        let sold_out = self.sold_out.read().ok();
        let everything_gone = sold_out
            .as_ref()
            .is_some_and(|s| s.len() >= self.products.len());
        for _ in 0..8 {
            let p = &self.products[rng.usize(..self.products.len())];
            if everything_gone || !sold_out.as_ref().is_some_and(|s| s.contains(p)) {
                return Some(p.clone());
            }
        }
        let remaining = self
            .products
            .iter()
            .find(|p| !sold_out.as_ref().is_some_and(|s| s.contains(*p)));
        remaining.or_else(|| self.products.first()).cloned()
    }
}

/// One virtual customer: their account, their measurements and their dice.
#[derive(Debug)]
pub struct User {
    pub(crate) email: String,
    pub(crate) password: String,
    pub(crate) token: String,
    pub(crate) stats: Stats,
    pub(crate) rng: fastrand::Rng,
    /// When the next request was due, in an open-loop run: its latency counts
    /// from then, so a server that falls behind shows it (no coordinated
    /// omission).
    pub(crate) due: Option<Instant>,
    /// Products in the cart now (the shop scenario keeps carts across visits).
    pub(crate) cart: Vec<String>,
    visits: u64,
}

impl User {
    /// A customer; `email` and `token` are empty for anonymous ones.
    pub fn new(email: String, password: String, token: String, seed: u64) -> User {
        User {
            email,
            password,
            token,
            stats: Stats::default(),
            rng: fastrand::Rng::with_seed(seed),
            due: None,
            cart: Vec::new(),
            visits: 0,
        }
    }

    /// Sends `request` as `kind` and records it; `None` once the run is over
    /// (nothing was sent).
    async fn send(&mut self, shop: &Shop, kind: Kind, request: Request<'_>) -> Option<Answer> {
        if shop.over() {
            return None;
        }
        if shop.sent.fetch_add(1, Ordering::Relaxed) >= shop.max_requests {
            return None;
        }
        if !shop.think_time.is_zero() && self.due.is_none() {
            tokio::time::sleep(shop.think_time).await;
        }
        let started = self.due.take().unwrap_or_else(Instant::now);
        let answer = shop.client.send(request).await;
        if answer.error.is_some() {
            shop.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .record(kind, started.elapsed(), answer.error.as_deref());
        Some(answer)
    }

    /// One visit of `scenario`. Returns `false` when the run ended during it.
    pub async fn visit(&mut self, shop: &Shop, scenario: Scenario) -> bool {
        self.visits += 1;
        let finished = match scenario {
            Scenario::Browse => self.browse(shop).await.map(drop),
            Scenario::Shop => self.shop(shop).await,
            Scenario::CheckoutOnly => self.checkout_only(shop).await,
        };
        finished.is_some()
    }

    /// Lists, maybe searches, views one to three products; returns the ids
    /// viewed. Public reads, sent without the token (as a shop's pages are).
    async fn browse(&mut self, shop: &Shop) -> Option<Vec<String>> {
        let mut seen = Vec::new();
        let list = self.list_path(shop);
        let answer = self
            .send(shop, Kind::ListProducts, Request::get(list.clone()))
            .await?;
        collect_ids(&answer, &mut seen);
        // The next page: the same query (a cursor belongs to its sort and
        // filters) with the cursor.
        if let Some(cursor) = answer.body["meta"]["next_cursor"].as_str()
            && self.rng.u8(..10) < 3
        {
            let path = format!("{list}&cursor={cursor}");
            let answer = self
                .send(shop, Kind::ListProducts, Request::get(path))
                .await?;
            collect_ids(&answer, &mut seen);
        }
        if self.rng.u8(..10) < 4 && !shop.words.is_empty() {
            let word = &shop.words[self.rng.usize(..shop.words.len())];
            let path = format!("/api/v1/products?q={word}&limit=20");
            let answer = self.send(shop, Kind::Search, Request::get(path)).await?;
            collect_ids(&answer, &mut seen);
        }
        if self.rng.u8(..10) == 0 {
            self.send(shop, Kind::Categories, Request::get("/api/v1/categories"))
                .await?;
        }
        if seen.is_empty() {
            seen.extend(shop.products.iter().take(3).cloned());
        }
        let mut viewed = Vec::new();
        for _ in 0..self.rng.usize(1..=3) {
            let Some(id) = seen.get(self.rng.usize(..seen.len().max(1))).cloned() else {
                break;
            };
            let path = format!("/api/v1/products/{id}");
            self.send(shop, Kind::ViewProduct, Request::get(path))
                .await?;
            viewed.push(id);
        }
        Some(viewed)
    }

    /// A product list request: a random sort, now and then one category.
    fn list_path(&mut self, shop: &Shop) -> String {
        const SORTS: [&str; 4] = ["newest", "price", "-price", "name"];
        let sort = SORTS[self.rng.usize(..SORTS.len())];
        match shop
            .categories
            .get(self.rng.usize(..shop.categories.len().max(1)))
        {
            Some(category) if self.rng.bool() => {
                format!("/api/v1/products?limit=20&sort={sort}&category={category}")
            }
            _ => format!("/api/v1/products?limit=20&sort={sort}"),
        }
    }

    /// A signed-in visit: browse, fill the cart, maybe change a quantity,
    /// check out more often than not, look at orders.
    async fn shop(&mut self, shop: &Shop) -> Option<()> {
        if self.visits.is_multiple_of(10) {
            self.sign_in(shop).await?;
        }
        let viewed = self.browse(shop).await?;
        for _ in 0..self.rng.usize(1..=3) {
            let product = match viewed.get(self.rng.usize(..viewed.len().max(1))) {
                Some(p) if !shop.sold_out.read().is_ok_and(|s| s.contains(p)) => p.clone(),
                _ => match shop.pick_in_stock(&mut self.rng) {
                    Some(p) => p,
                    None => break,
                },
            };
            let quantity = self.rng.i64(1..=2);
            self.add(shop, &product, quantity).await?;
        }
        if let Some(product) = self
            .cart
            .get(self.rng.usize(..self.cart.len().max(1)))
            .cloned()
            && self.rng.u8(..10) < 3
        {
            let path = format!("/api/v1/cart/items/{product}");
            let body = json!({ "quantity": self.rng.i64(1..=3) });
            let token = self.token.clone();
            let request = Request::new(Method::PATCH, path).token(&token).json(body);
            self.send(shop, Kind::CartUpdate, request).await?;
        }
        let token = self.token.clone();
        self.send(
            shop,
            Kind::ViewCart,
            Request::get("/api/v1/cart").token(&token),
        )
        .await?;
        if (self.rng.u8(..10) < 6 || self.cart.len() >= 6)
            && let Some(order) = self.checkout(shop).await?
            && self.rng.u8(..10) < 3
        {
            let path = format!("/api/v1/orders/{order}");
            self.send(shop, Kind::ViewOrder, Request::get(path).token(&token))
                .await?;
        }
        if self.rng.u8(..10) < 2 {
            let request = Request::get("/api/v1/orders?limit=10").token(&token);
            self.send(shop, Kind::ListOrders, request).await?;
        }
        Some(())
    }

    /// Three products into the cart, then check out.
    async fn checkout_only(&mut self, shop: &Shop) -> Option<()> {
        for _ in 0..3 {
            let Some(product) = shop.pick_in_stock(&mut self.rng) else {
                break;
            };
            self.add(shop, &product, 1).await?;
        }
        self.checkout(shop).await?;
        Some(())
    }

    /// Signs in again with the account's password (a new session).
    pub(crate) async fn sign_in(&mut self, shop: &Shop) -> Option<()> {
        let body = json!({ "email": self.email, "password": self.password });
        let request = Request::new(Method::POST, "/api/v1/auth/login").json(body);
        let answer = self.send(shop, Kind::Login, request).await?;
        if let Some(token) = answer.data()["access_token"].as_str() {
            self.token = token.to_string();
        }
        Some(())
    }

    async fn add(&mut self, shop: &Shop, product: &str, quantity: i64) -> Option<()> {
        let token = self.token.clone();
        let body = json!({ "product_id": product, "quantity": quantity });
        let request = Request::new(Method::POST, "/api/v1/cart/items")
            .token(&token)
            .json(body);
        let answer = self.send(shop, Kind::CartAdd, request).await?;
        if answer.ok() && !self.cart.iter().any(|p| p == product) {
            self.cart.push(product.to_string());
        }
        Some(())
    }

    /// Checks the cart out with the simulated provider's approving token.
    /// `Some(Some(order id))` when confirmed. On "out of stock" the customer
    /// takes the sold-out product out of the cart; on any other failure they
    /// empty it, so the next visit starts afresh.
    async fn checkout(&mut self, shop: &Shop) -> Option<Option<String>> {
        let token = self.token.clone();
        let request = Request::new(Method::POST, "/api/v1/checkout")
            .token(&token)
            .json(json!({ "payment_token": "tok_visa" }))
            .idempotency_key(uuid::Uuid::now_v7().to_string());
        let answer = self.send(shop, Kind::Checkout, request).await?;
        if answer.ok() {
            self.cart.clear();
            return Some(answer.data()["id"].as_str().map(str::to_string));
        }
        match answer.details()["product_id"].as_str() {
            Some(product) if answer.error.as_deref() == Some("ORDERS_OUT_OF_STOCK") => {
                let product = product.to_string();
                shop.sold_out(&product);
                self.cart.retain(|p| *p != product);
                let path = format!("/api/v1/cart/items/{product}");
                let request = Request::new(Method::DELETE, path).token(&token);
                self.send(shop, Kind::CartRemove, request).await?;
            }
            _ => {
                self.cart.clear();
                let request = Request::new(Method::DELETE, "/api/v1/cart").token(&token);
                self.send(shop, Kind::CartClear, request).await?;
            }
        }
        Some(None)
    }
}

/// The ids of the products in a list answer.
fn collect_ids(answer: &Answer, into: &mut Vec<String>) {
    if let Some(products) = answer.data().as_array() {
        into.extend(
            products
                .iter()
                .filter_map(|p| p["id"].as_str().map(str::to_string)),
        );
    }
}

/// `Value` of a product list page, for the preparation.
pub(crate) fn ids_and_names(page: &Value) -> Vec<(String, String)> {
    page["data"]
        .as_array()
        .map(|products| {
            products
                .iter()
                .filter(|p| p["active"] != false)
                .filter_map(|p| {
                    Some((
                        p["id"].as_str()?.to_string(),
                        p["name"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}
