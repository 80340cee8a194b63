//! `spawn_app` and `TestApp`: the harness every API test uses.

use agora::app::Application;
use agora_platform::testing::TestDatabase;
use agora_platform::{Config, Shutdown};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The password of every account the harness creates.
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// A running application and a client for it.
pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) shutdown: Shutdown,
    pub(crate) server: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub(crate) db: TestDatabase,
    pub(crate) config: Config,
    /// An access token of a staff account made for this app.
    pub(crate) staff_token: String,
}

/// An answer: status, headers and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    /// The error code of a failure envelope.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// `data`.
    pub(crate) fn data(&self) -> &Value {
        &self.body["data"]
    }
}

/// Starts the application with the default test configuration.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the application after `configure` has adjusted its configuration.
pub(crate) async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    // `TEST_LOG=1 cargo test …` shows the application's logs (debug and up).
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = agora_platform::telemetry::init(
            &agora_platform::config::LogConfig {
                filter: "debug,sqlx=warn,hyper=info".into(),
                ..Default::default()
            },
            &agora_platform::config::TelemetryConfig::default(),
        );
    }
    let db = TestDatabase::new().await.expect("a fresh test database");
    let mut config = db.app_config();
    configure(&mut config);
    let app = Application::build(config.clone())
        .await
        .expect("the application builds");
    let base = format!("http://{}", app.local_addr());
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run_until_stopped());
    let mut app = TestApp {
        base,
        client: reqwest::Client::new(),
        shutdown,
        server,
        db,
        config,
        staff_token: String::new(),
    };
    app.staff_token = app
        .create_user_and_login("staff@agora.test", &[agora_kernel::Role::Staff])
        .await;
    app
}

/// Starts the application with its cache in a Redis that is down (nothing
/// listens on the port it names).
pub(crate) async fn spawn_app_with_redis_down() -> TestApp {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    spawn_app_with_redis_at(format!("redis://127.0.0.1:{port}")).await
}

/// Starts the application with its cache in the Redis `AGORA_TEST_REDIS_URL`
/// names, under keys of its own (its ids and lists are its own).
pub(crate) async fn spawn_app_with_redis() -> TestApp {
    spawn_app_with_redis_at(std::env::var("AGORA_TEST_REDIS_URL").expect("AGORA_TEST_REDIS_URL"))
        .await
}

/// Starts the application with its cache in this process's memory in front
/// of the Redis `AGORA_TEST_REDIS_URL` names, under keys of its own.
pub(crate) async fn spawn_app_with_two_tier_cache() -> TestApp {
    let url = std::env::var("AGORA_TEST_REDIS_URL").expect("AGORA_TEST_REDIS_URL");
    spawn_app_with_cache_at(agora_platform::config::CacheBackend::TwoTier, url).await
}

async fn spawn_app_with_redis_at(url: String) -> TestApp {
    spawn_app_with_cache_at(agora_platform::config::CacheBackend::Redis, url).await
}

async fn spawn_app_with_cache_at(
    backend: agora_platform::config::CacheBackend,
    url: String,
) -> TestApp {
    spawn_app_with(|c| {
        c.cache.backend = backend;
        c.cache.redis_url = url;
        c.cache.redis_prefix = format!("agora-test-{}", uuid::Uuid::now_v7().simple());
    })
    .await
}

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum As<'t> {
    Anonymous,
    Staff,
    /// Whoever holds this access token.
    Token(&'t str),
    /// A service account with this API key.
    ApiKey(&'t str),
}

impl TestApp {
    /// Sends a request with an optional JSON body.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        who: As<'_>,
    ) -> Answer {
        self.call_with(method, path, body, who, &[]).await
    }

    /// Sends a request with an optional JSON body and extra headers.
    pub(crate) async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        who: As<'_>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        match who {
            As::Anonymous => {}
            As::Staff => req = req.bearer_auth(&self.staff_token),
            As::Token(token) => req = req.bearer_auth(token),
            As::ApiKey(key) => {
                req = req.header(reqwest::header::AUTHORIZATION, format!("ApiKey {key}"));
            }
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.expect("the request is answered");
        Self::answer(response).await
    }

    /// Turns a response into an [`Answer`].
    pub(crate) async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Uploads `bytes` as a staff member to the product's images, as the
    /// multipart part `file`.
    pub(crate) async fn upload_image(&self, product: &str, bytes: Vec<u8>) -> Answer {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("upload.png"),
        );
        let response = self
            .client
            .post(format!("{}/api/v1/products/{product}/images", self.base))
            .bearer_auth(&self.staff_token)
            .multipart(form)
            .send()
            .await
            .expect("the request is answered");
        Self::answer(response).await
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, As::Anonymous).await
    }

    pub(crate) async fn get_as(&self, path: &str, who: As<'_>) -> Answer {
        self.call(Method::GET, path, None, who).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body), As::Staff).await
    }

    pub(crate) async fn patch(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(body), As::Staff).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None, As::Staff).await
    }

    /// Creates an account with `roles` the way an operator does
    /// (`agora admin create-user`) and logs it in; returns the access token.
    pub(crate) async fn create_user_and_login(
        &self,
        email: &str,
        roles: &[agora_kernel::Role],
    ) -> String {
        agora::app::create_user(
            &self.config,
            email,
            "Test User",
            PASSWORD.into(),
            roles.to_vec(),
        )
        .await
        .expect("the account is created");
        self.login(email).await
    }

    /// Posts every body to `path` at once, from client address `from`; returns
    /// each answer's error code ("" for a success), in no particular order.
    pub(crate) async fn post_concurrently(
        &self,
        path: &str,
        bodies: Vec<Value>,
        from: &str,
    ) -> Vec<String> {
        let mut burst = tokio::task::JoinSet::new();
        for body in bodies {
            let request = self
                .client
                .post(format!("{}{path}", self.base))
                .header("x-forwarded-for", from)
                .json(&body);
            burst.spawn(async move {
                let response = request.send().await.expect("an answer");
                Self::answer(response).await.code().to_string()
            });
        }
        burst.join_all().await
    }

    /// Creates an API key with `permissions` as `by`; returns the key.
    pub(crate) async fn create_api_key(&self, by: As<'_>, permissions: &[&str]) -> String {
        let a = self
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(json!({ "name": "test key", "permissions": permissions })),
                by,
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.data()["key"].as_str().expect("a key").to_string()
    }

    /// Registers a customer through the API and logs them in; returns the access token.
    pub(crate) async fn register_and_login(&self, email: &str) -> String {
        let a = self
            .call(
                Method::POST,
                "/api/v1/auth/register",
                Some(json!({ "email": email, "password": PASSWORD, "name": "Customer" })),
                As::Anonymous,
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        self.login(email).await
    }

    /// Logs in with [`PASSWORD`]; returns the access token.
    pub(crate) async fn login(&self, email: &str) -> String {
        let a = self.login_answer(email, PASSWORD).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.data()["access_token"]
            .as_str()
            .expect("an access token")
            .to_string()
    }

    /// The answer to a login attempt.
    pub(crate) async fn login_answer(&self, email: &str, password: &str) -> Answer {
        self.call(
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({ "email": email, "password": password })),
            As::Anonymous,
        )
        .await
    }

    /// Creates a category as staff and returns its id.
    pub(crate) async fn create_category(&self, name: &str) -> String {
        let a = self
            .post("/api/v1/categories", json!({ "name": name }))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.data()["id"].as_str().expect("an id").to_string()
    }

    /// Creates a product as staff from `overrides` on top of a valid body; returns it.
    pub(crate) async fn create_product(&self, overrides: Value) -> Value {
        self.create_product_with(overrides, &[]).await
    }

    /// [`TestApp::create_product`], sending `headers` with the request.
    pub(crate) async fn create_product_with(
        &self,
        overrides: Value,
        headers: &[(&str, &str)],
    ) -> Value {
        let a = self
            .call_with(
                Method::POST,
                "/api/v1/products",
                Some(product_body(overrides)),
                As::Staff,
                headers,
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.data().clone()
    }

    /// A product at `amount` cents with `on_hand` units in stock; returns its id.
    pub(crate) async fn stocked_product(&self, amount: i64, on_hand: i64) -> String {
        let product = self
            .create_product(json!({ "price": { "amount": amount, "currency": "USD" } }))
            .await;
        let id = product["id"].as_str().expect("an id").to_string();
        let a = self
            .call(
                Method::PUT,
                &format!("/api/v1/inventory/{id}"),
                Some(json!({ "on_hand": on_hand, "reason": "test stock" })),
                As::Staff,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        id
    }

    /// Puts `quantity` of `product` in the caller's cart.
    pub(crate) async fn add_to_cart(&self, who: As<'_>, product: &str, quantity: i64) {
        let a = self
            .call(
                Method::POST,
                "/api/v1/cart/items",
                Some(json!({ "product_id": product, "quantity": quantity })),
                who,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    }

    /// Checks out the caller's cart with `payment_token`, under `key`.
    pub(crate) async fn checkout(&self, who: As<'_>, key: &str, payment_token: &str) -> Answer {
        self.call_with(
            Method::POST,
            "/api/v1/checkout",
            Some(json!({ "payment_token": payment_token })),
            who,
            &[("idempotency-key", key)],
        )
        .await
    }

    /// A confirmed order of the caller's (one unit of a fresh product); returns it.
    pub(crate) async fn place_order(&self, who: As<'_>) -> Value {
        let product = self.stocked_product(1500, 10).await;
        self.add_to_cart(who, &product, 1).await;
        let a = self
            .checkout(who, &uuid::Uuid::now_v7().to_string(), "tok_visa")
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.data().clone()
    }

    /// Every product visible to staff, following cursors.
    pub(crate) async fn all_products(&self, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/products?limit=100{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let a = self.get_as(&path, As::Staff).await;
            assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
            out.extend(a.data().as_array().expect("an array").iter().cloned());
            match a.body["meta"]["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

/// A valid product body with `overrides` merged in.
pub(crate) fn product_body(overrides: Value) -> Value {
    let n = uuid::Uuid::now_v7().simple().to_string();
    let mut body = json!({
        "sku": format!("SKU-{}", &n[20..]),
        "name": format!("Product {}", &n[20..]),
        "price": { "amount": 1999, "currency": "USD" },
    });
    if let (Some(b), Some(o)) = (body.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}
