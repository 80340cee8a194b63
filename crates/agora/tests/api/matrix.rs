//! The access matrix: every route of every module, called by every kind of
//! caller, gets exactly the status its policy says.
//!
//! One table, [`ROUTES`], names each route's policy; the expected status of each
//! caller follows from the policy and the documented role → permission table
//! (docs/security.md), written out again here in [`holds`] so that a change to
//! the roles in code that the documentation does not follow fails. A test checks
//! that the table and the OpenAPI document list the same routes, so a new route
//! cannot be added without deciding its policy here.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{As, PASSWORD, TestApp, product_body, spawn_app};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    Customer,
    /// A second customer: for routes on someone's own resources, the one who
    /// does not own them.
    OtherCustomer,
    Staff,
    Admin,
    /// An API key holding the route's permission (for public and personal
    /// routes: some permission).
    KeyWith,
    /// An API key holding another permission.
    KeyWithout,
}

const EVERYONE: [Who; 7] = [
    Who::Anonymous,
    Who::Customer,
    Who::OtherCustomer,
    Who::Staff,
    Who::Admin,
    Who::KeyWith,
    Who::KeyWithout,
];

/// Who may call a route.
#[derive(Debug, Clone, Copy)]
enum Policy {
    /// Anyone, with or without credentials.
    Public,
    /// A signed-in person acting on their own account (never an API key).
    OwnAccount,
    /// A person's own resource that anonymous visitors have too (the cart, by
    /// its token): never an API key.
    Personal,
    /// Holders of this permission (people by their roles, or API keys).
    Needs(&'static str),
    /// Every person, for their own things; holders of this permission (people or
    /// API keys) for everyone's.
    Mine(&'static str),
    /// The fixture's owner (the customer), and holders of this permission; to
    /// anyone else it does not exist (404 with this code).
    Owner(&'static str, &'static str),
}

/// The permissions each role holds, as docs/security.md documents them.
fn holds(who: Who, permission: &str) -> bool {
    match who {
        Who::Staff => matches!(
            permission,
            "catalog:write"
                | "inventory:manage"
                | "orders:manage"
                | "payments:manage"
                | "events:read"
        ),
        Who::Admin => true,
        _ => false,
    }
}

/// What the path's `{id}` stands for; a fresh one is made for every call.
#[derive(Debug, Clone, Copy)]
enum Fixture {
    None,
    Product,
    Category,
    User,
    ApiKey,
    /// A confirmed order of the customer's.
    Order,
    /// The payment of a confirmed order of the customer's.
    Payment,
    /// An image of a product: `{id}` is the product, `{image_id}` the image.
    Image,
}

struct Route {
    method: &'static str,
    path: &'static str,
    policy: Policy,
    fixture: Fixture,
    body: fn() -> Option<Value>,
    /// The status an allowed caller gets with this body. Routes whose outcome
    /// the body decides (a bogus refresh token) say so here: what matters is
    /// that the caller's identity does not change it.
    ok: u16,
}

fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_string()
}

fn no_body() -> Option<Value> {
    None
}

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    // Meta.
    Route { method: "GET", path: "/api/v1/errors", policy: Policy::Public, fixture: Fixture::None, body: no_body, ok: 200 },
    // Identity: logins and tokens.
    Route { method: "POST", path: "/api/v1/auth/register", policy: Policy::Public, fixture: Fixture::None,
        body: || Some(json!({ "email": format!("new-{}@example.com", unique()), "password": PASSWORD, "name": "New" })), ok: 201 },
    Route { method: "POST", path: "/api/v1/auth/login", policy: Policy::Public, fixture: Fixture::None,
        body: || Some(json!({ "email": "staff@agora.test", "password": PASSWORD })), ok: 200 },
    Route { method: "POST", path: "/api/v1/auth/login/mfa", policy: Policy::Public, fixture: Fixture::None,
        body: || Some(json!({ "challenge_token": "mfa_bogus", "code": "123456" })), ok: 401 },
    Route { method: "POST", path: "/api/v1/auth/refresh", policy: Policy::Public, fixture: Fixture::None,
        body: || Some(json!({ "refresh_token": "rt_bogus" })), ok: 401 },
    Route { method: "POST", path: "/api/v1/auth/logout", policy: Policy::Public, fixture: Fixture::None,
        body: || Some(json!({ "refresh_token": "rt_bogus" })), ok: 200 },
    // No provider is configured here: whoever calls, the provider is unknown.
    Route { method: "GET", path: "/api/v1/auth/oidc/{provider}/start", policy: Policy::Public, fixture: Fixture::None, body: no_body, ok: 404 },
    Route { method: "GET", path: "/api/v1/auth/oidc/{provider}/callback", policy: Policy::Public, fixture: Fixture::None, body: no_body, ok: 404 },
    // Identity: one's own account.
    Route { method: "GET", path: "/api/v1/users/me", policy: Policy::OwnAccount, fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "PATCH", path: "/api/v1/users/me", policy: Policy::OwnAccount, fixture: Fixture::None,
        body: || Some(json!({ "name": "Renamed" })), ok: 200 },
    Route { method: "POST", path: "/api/v1/users/me/password", policy: Policy::OwnAccount, fixture: Fixture::None,
        body: || Some(json!({ "current_password": "not the password", "new_password": "a new long password" })), ok: 422 },
    Route { method: "GET", path: "/api/v1/users/me/mfa", policy: Policy::OwnAccount, fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/users/me/mfa/totp", policy: Policy::OwnAccount, fixture: Fixture::None, body: no_body, ok: 201 },
    Route { method: "POST", path: "/api/v1/users/me/mfa/totp/confirm", policy: Policy::OwnAccount, fixture: Fixture::None,
        body: || Some(json!({ "code": "abcdef" })), ok: 422 },
    Route { method: "POST", path: "/api/v1/users/me/mfa/recovery-codes", policy: Policy::OwnAccount, fixture: Fixture::None,
        body: || Some(json!({ "current_password": "not the password" })), ok: 422 },
    Route { method: "POST", path: "/api/v1/users/me/mfa/disable", policy: Policy::OwnAccount, fixture: Fixture::None,
        body: || Some(json!({ "current_password": "not the password" })), ok: 422 },
    // Identity: administration.
    Route { method: "GET", path: "/api/v1/users", policy: Policy::Needs("users:manage"), fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "GET", path: "/api/v1/users/{id}", policy: Policy::Needs("users:manage"), fixture: Fixture::User, body: no_body, ok: 200 },
    Route { method: "PATCH", path: "/api/v1/users/{id}", policy: Policy::Needs("users:manage"), fixture: Fixture::User,
        body: || Some(json!({ "roles": ["customer"] })), ok: 200 },
    Route { method: "POST", path: "/api/v1/api-keys", policy: Policy::Needs("api_keys:manage"), fixture: Fixture::None,
        body: || Some(json!({ "name": "matrix", "permissions": ["api_keys:manage"] })), ok: 201 },
    Route { method: "GET", path: "/api/v1/api-keys", policy: Policy::Needs("api_keys:manage"), fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "GET", path: "/api/v1/api-keys/{id}", policy: Policy::Needs("api_keys:manage"), fixture: Fixture::ApiKey, body: no_body, ok: 200 },
    Route { method: "DELETE", path: "/api/v1/api-keys/{id}", policy: Policy::Needs("api_keys:manage"), fixture: Fixture::ApiKey, body: no_body, ok: 200 },
    // Catalog.
    Route { method: "GET", path: "/api/v1/products", policy: Policy::Public, fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/products", policy: Policy::Needs("catalog:write"), fixture: Fixture::None,
        body: || Some(product_body(json!({}))), ok: 201 },
    Route { method: "GET", path: "/api/v1/products/{id}", policy: Policy::Public, fixture: Fixture::Product, body: no_body, ok: 200 },
    Route { method: "PATCH", path: "/api/v1/products/{id}", policy: Policy::Needs("catalog:write"), fixture: Fixture::Product,
        body: || Some(json!({ "name": "Renamed product" })), ok: 200 },
    Route { method: "DELETE", path: "/api/v1/products/{id}", policy: Policy::Needs("catalog:write"), fixture: Fixture::Product, body: no_body, ok: 200 },
    // The literal `{key}` is no stored object's key: anyone gets MEDIA_NOT_FOUND.
    Route { method: "GET", path: "/media/{key}", policy: Policy::Public, fixture: Fixture::None, body: no_body, ok: 404 },
    Route { method: "GET", path: "/api/v1/products/{id}/images", policy: Policy::Public, fixture: Fixture::Product, body: no_body, ok: 200 },
    // Without a multipart body an allowed caller gets CATALOG_IMAGE_MISSING.
    Route { method: "POST", path: "/api/v1/products/{id}/images", policy: Policy::Needs("catalog:write"), fixture: Fixture::Product, body: no_body, ok: 400 },
    Route { method: "GET", path: "/api/v1/products/{id}/images/{image_id}", policy: Policy::Public, fixture: Fixture::Image, body: no_body, ok: 200 },
    Route { method: "DELETE", path: "/api/v1/products/{id}/images/{image_id}", policy: Policy::Needs("catalog:write"), fixture: Fixture::Image, body: no_body, ok: 200 },
    // Inventory.
    Route { method: "GET", path: "/api/v1/inventory/{product_id}", policy: Policy::Needs("inventory:manage"), fixture: Fixture::Product, body: no_body, ok: 200 },
    Route { method: "PUT", path: "/api/v1/inventory/{product_id}", policy: Policy::Needs("inventory:manage"), fixture: Fixture::Product,
        body: || Some(json!({ "on_hand": 5, "reason": "count" })), ok: 200 },
    Route { method: "POST", path: "/api/v1/inventory/{product_id}/adjustments", policy: Policy::Needs("inventory:manage"), fixture: Fixture::Product,
        body: || Some(json!({ "delta": 1, "reason": "found one" })), ok: 200 },
    Route { method: "GET", path: "/api/v1/inventory/{product_id}/movements", policy: Policy::Needs("inventory:manage"), fixture: Fixture::Product, body: no_body, ok: 200 },
    // Cart: everyone's own; adding needs a product for sale; the other routes
    // find no line in a fresh caller's cart.
    // Orders. (Routes needing an Idempotency-Key answer its absence once allowed.)
    Route { method: "POST", path: "/api/v1/checkout", policy: Policy::OwnAccount, fixture: Fixture::None,
        body: || Some(json!({ "payment_token": "tok_visa" })), ok: 400 },
    Route { method: "GET", path: "/api/v1/orders", policy: Policy::Mine("orders:manage"), fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "GET", path: "/api/v1/orders/{order_id}", policy: Policy::Owner("orders:manage", "ORDERS_ORDER_NOT_FOUND"), fixture: Fixture::Order, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/orders/{order_id}/cancel", policy: Policy::Needs("orders:manage"), fixture: Fixture::Order,
        body: || Some(json!({ "reason": "customer asked" })), ok: 200 },
    Route { method: "POST", path: "/api/v1/orders/{order_id}/refunds", policy: Policy::Needs("orders:manage"), fixture: Fixture::Order,
        body: || Some(json!({ "amount_minor": 100, "reason": "scratched" })), ok: 400 },
    Route { method: "POST", path: "/api/v1/orders/{order_id}/fulfil", policy: Policy::Needs("orders:manage"), fixture: Fixture::Order, body: no_body, ok: 200 },
    // Payments.
    Route { method: "GET", path: "/api/v1/payments", policy: Policy::Needs("payments:manage"), fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "GET", path: "/api/v1/payments/{payment_id}", policy: Policy::Needs("payments:manage"), fixture: Fixture::Payment, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/payments/{payment_id}/refunds", policy: Policy::Needs("payments:manage"), fixture: Fixture::Payment,
        body: || Some(json!({ "amount_minor": 100, "reason": "scratched" })), ok: 400 },
    Route { method: "POST", path: "/api/v1/webhooks/payments/{provider}", policy: Policy::Public, fixture: Fixture::None, body: || Some(json!({})), ok: 404 },
    // Operations.
    Route { method: "GET", path: "/api/v1/admin/events", policy: Policy::Needs("events:read"), fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/admin/events/replay", policy: Policy::Needs("events:manage"), fixture: Fixture::None,
        body: || Some(json!({ "consumer": "orders.payment_events" })), ok: 200 },
    Route { method: "GET", path: "/api/v1/admin/dead-letters", policy: Policy::Needs("events:read"), fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/admin/dead-letters", policy: Policy::Needs("events:manage"), fixture: Fixture::None,
        body: || Some(json!({ "ids": [1] })), ok: 200 },
    Route { method: "GET", path: "/api/v1/cart", policy: Policy::Personal, fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "DELETE", path: "/api/v1/cart", policy: Policy::Personal, fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/cart/items", policy: Policy::Personal, fixture: Fixture::Product,
        body: || Some(json!({ "product_id": "{id}", "quantity": 1 })), ok: 200 },
    Route { method: "PATCH", path: "/api/v1/cart/items/{product_id}", policy: Policy::Personal, fixture: Fixture::Product,
        body: || Some(json!({ "quantity": 2 })), ok: 404 },
    Route { method: "DELETE", path: "/api/v1/cart/items/{product_id}", policy: Policy::Personal, fixture: Fixture::Product, body: no_body, ok: 404 },
    Route { method: "GET", path: "/api/v1/categories", policy: Policy::Public, fixture: Fixture::None, body: no_body, ok: 200 },
    Route { method: "POST", path: "/api/v1/categories", policy: Policy::Needs("catalog:write"), fixture: Fixture::None,
        body: || Some(json!({ "name": format!("Category {}", unique()) })), ok: 201 },
    Route { method: "GET", path: "/api/v1/categories/{id}", policy: Policy::Public, fixture: Fixture::Category, body: no_body, ok: 200 },
    Route { method: "PATCH", path: "/api/v1/categories/{id}", policy: Policy::Needs("catalog:write"), fixture: Fixture::Category,
        body: || Some(json!({ "name": format!("Renamed {}", unique()) })), ok: 200 },
    Route { method: "DELETE", path: "/api/v1/categories/{id}", policy: Policy::Needs("catalog:write"), fixture: Fixture::Category, body: no_body, ok: 200 },
];

/// Routes outside the OpenAPI document (served beside the API): public.
const UNDOCUMENTED: &[&str] = &[
    "/api/v1/openapi.json",
    "/.well-known/jwks.json",
    "/health/live",
    "/health/ready",
    "/docs/",
];

/// What `who` must get from a route under `policy`: the route's own answer
/// (`ok`), or a refusal with its status and code.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Allowed(u16),
    Refused(u16, &'static str),
}

fn expected(policy: Policy, ok: u16, who: Who) -> Outcome {
    let allowed = Outcome::Allowed(ok);
    let forbidden = Outcome::Refused(403, "AUTH_FORBIDDEN");
    match (policy, who) {
        (Policy::Public, _) => allowed,
        (Policy::Personal, Who::KeyWith | Who::KeyWithout) => {
            Outcome::Refused(403, "AUTH_USER_REQUIRED")
        }
        (Policy::Personal, _) => allowed,
        (_, Who::Anonymous) => Outcome::Refused(401, "AUTH_REQUIRED"),
        (Policy::OwnAccount, Who::KeyWith | Who::KeyWithout) => {
            Outcome::Refused(403, "AUTH_USER_REQUIRED")
        }
        (Policy::OwnAccount, _) => allowed,
        (Policy::Needs(_), Who::KeyWith) => allowed,
        (Policy::Needs(_), Who::KeyWithout) => forbidden,
        (Policy::Needs(permission), who) if holds(who, permission) => allowed,
        (Policy::Needs(_), _) => forbidden,
        (Policy::Mine(_), Who::KeyWithout) => forbidden,
        (Policy::Mine(_), _) => allowed,
        (Policy::Owner(_, _), Who::Customer | Who::KeyWith) => allowed,
        (Policy::Owner(permission, _), who) if holds(who, permission) => allowed,
        (Policy::Owner(_, hidden), _) => Outcome::Refused(404, hidden),
    }
}

/// Whether an answer is the expected outcome. An allowed caller's answer may be
/// an error the body causes (a bogus refresh token), never an `AUTH_*` refusal.
fn matches(outcome: &Outcome, status: u16, code: &str) -> bool {
    match outcome {
        Outcome::Allowed(ok) => status == *ok && !code.starts_with("AUTH_"),
        Outcome::Refused(s, c) => status == *s && code == *c,
    }
}

/// The callers' credentials.
struct Callers {
    customer: String,
    other_customer: String,
    admin: String,
    /// API keys by the one permission each holds.
    keys: Vec<(&'static str, String)>,
}

impl Callers {
    async fn new(app: &TestApp) -> Self {
        let admin = app
            .create_user_and_login("admin@agora.test", &[agora_kernel::Role::Admin])
            .await;
        let mut keys = Vec::new();
        for permission in agora_kernel::Permission::ALL {
            let key = app
                .create_api_key(As::Token(&admin), &[permission.as_str()])
                .await;
            keys.push((permission.as_str(), key));
        }
        Callers {
            customer: app.register_and_login("customer@example.com").await,
            other_customer: app.register_and_login("other@example.com").await,
            admin,
            keys,
        }
    }

    fn key(&self, holding: impl Fn(&str) -> bool) -> &str {
        self.keys
            .iter()
            .find(|(p, _)| holding(p))
            .map(|(_, k)| k.as_str())
            .expect("a key")
    }

    fn credentials<'a>(&'a self, app: &'a TestApp, who: Who, policy: Policy) -> As<'a> {
        let needed = match policy {
            Policy::Needs(p) | Policy::Mine(p) | Policy::Owner(p, _) => p,
            _ => "catalog:write",
        };
        match who {
            Who::Anonymous => As::Anonymous,
            Who::Customer => As::Token(&self.customer),
            Who::OtherCustomer => As::Token(&self.other_customer),
            Who::Staff => As::Token(&app.staff_token),
            Who::Admin => As::Token(&self.admin),
            Who::KeyWith => As::ApiKey(self.key(|p| p == needed)),
            Who::KeyWithout => As::ApiKey(self.key(|p| p != needed)),
        }
    }
}

/// A fresh resource for a route's `{id}`.
async fn fixture(app: &TestApp, callers: &Callers, fixture: Fixture) -> Option<String> {
    match fixture {
        Fixture::None => None,
        Fixture::Product => Some(
            app.create_product(json!({})).await["id"]
                .as_str()
                .expect("an id")
                .to_string(),
        ),
        Fixture::Image => {
            let product = app.create_product(json!({})).await["id"]
                .as_str()
                .expect("an id")
                .to_string();
            let uploaded = app.upload_image(&product, crate::images::png(8, 8)).await;
            assert_eq!(uploaded.status, StatusCode::CREATED, "{:?}", uploaded.body);
            let image = uploaded.data()["id"].as_str().expect("an id").to_string();
            Some(format!("{product} {image}"))
        }
        Fixture::Category => Some(app.create_category(&format!("Fixture {}", unique())).await),
        Fixture::User => {
            let a = app
                .call(
                    Method::POST,
                    "/api/v1/auth/register",
                    Some(json!({ "email": format!("u-{}@example.com", unique()), "password": PASSWORD, "name": "U" })),
                    As::Anonymous,
                )
                .await;
            a.data()["id"].as_str().map(str::to_string)
        }
        Fixture::Order | Fixture::Payment => {
            let order = app.place_order(As::Token(&callers.customer)).await;
            let field = if matches!(fixture, Fixture::Order) {
                "id"
            } else {
                "payment_id"
            };
            order[field].as_str().map(str::to_string)
        }
        Fixture::ApiKey => {
            let a = app
                .call(
                    Method::POST,
                    "/api/v1/api-keys",
                    Some(json!({ "name": "fixture", "permissions": ["catalog:write"] })),
                    As::Token(&callers.admin),
                )
                .await;
            a.data()["id"].as_str().map(str::to_string)
        }
    }
}

#[tokio::test]
async fn every_caller_gets_exactly_the_status_the_policy_says() {
    let app = spawn_app().await;
    let callers = Callers::new(&app).await;
    let mut wrong = Vec::new();
    for route in ROUTES {
        for who in EVERYONE {
            let id = fixture(&app, &callers, route.fixture).await;
            let path = match &id {
                Some(id) => {
                    let (id, image) = id.split_once(' ').unwrap_or((id, id));
                    route
                        .path
                        .replace("{image_id}", image)
                        .replace("{id}", id)
                        .replace("{product_id}", id)
                        .replace("{order_id}", id)
                        .replace("{payment_id}", id)
                }
                None => route.path.replace("{provider}", "unconfigured"),
            };
            // A body may name the fixture too, as "{id}".
            let body = (route.body)().map(|b| match &id {
                Some(id) => {
                    serde_json::from_str(&b.to_string().replace("{id}", id)).expect("still JSON")
                }
                None => b,
            });
            let method = Method::from_bytes(route.method.as_bytes()).expect("a method");
            let a = app
                .call(
                    method,
                    &path,
                    body,
                    callers.credentials(&app, who, route.policy),
                )
                .await;
            let want = expected(route.policy, route.ok, who);
            if !matches(&want, a.status.as_u16(), a.code()) {
                wrong.push(format!(
                    "{} {} as {who:?}: {} {} (want {want:?})",
                    route.method,
                    route.path,
                    a.status.as_u16(),
                    a.code()
                ));
            }
        }
    }
    for path in UNDOCUMENTED {
        for who in EVERYONE {
            let mut req = app.client.get(format!("{}{path}", app.base));
            match callers.credentials(&app, who, Policy::Public) {
                As::Token(t) => req = req.bearer_auth(t),
                As::ApiKey(k) => req = req.header("authorization", format!("ApiKey {k}")),
                As::Anonymous | As::Staff => {}
            }
            let status = req.send().await.expect("answered").status();
            if status != StatusCode::OK {
                wrong.push(format!("GET {path} as {who:?}: {status}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn the_table_lists_exactly_the_documented_routes() {
    let app = spawn_app().await;
    let doc = app.get("/api/v1/openapi.json").await;
    let mut documented = BTreeSet::new();
    for (path, methods) in doc.body["paths"].as_object().expect("paths") {
        for method in methods.as_object().expect("methods").keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let tabled: BTreeSet<String> = ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        tabled, documented,
        "every documented route needs a row in ROUTES (tests/api/matrix.rs) with its policy"
    );
}
