//! What the gateway's test binaries share: service instances on loopback and
//! a gateway in front of them.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use agora_gateway::{Gateway, GatewayConfig};
use agora_platform::Shutdown;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{any, get};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A service instance: answers `/health/ready` with a status the test sets,
/// echoes every other request (its name, path, headers, body length), and
/// answers its name after 400 ms on `/api/v1/wait` and sleeps on
/// `/api/v1/slow`.
pub struct Instance {
    pub address: String,
    pub health: Arc<AtomicU16>,
    pub served: Arc<AtomicUsize>,
    pub shutdown: Shutdown,
}

#[derive(Clone)]
struct Echo {
    name: String,
    health: Arc<AtomicU16>,
    served: Arc<AtomicUsize>,
}

async fn echo(
    State(echo): State<Echo>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    echo.served.fetch_add(1, Ordering::Relaxed);
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    axum::Json(json!({
        "instance": echo.name,
        "path": uri.path_and_query().map(|p| p.as_str()),
        "headers": headers,
        "body_len": body.len(),
    }))
}

pub async fn instance(name: &str) -> Instance {
    let health = Arc::new(AtomicU16::new(200));
    let served = Arc::new(AtomicUsize::new(0));
    let state = Echo {
        name: name.to_owned(),
        health: health.clone(),
        served: served.clone(),
    };
    let router = Router::new()
        .route(
            "/health/ready",
            get(|State(s): State<Echo>| async move {
                StatusCode::from_u16(s.health.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK)
            }),
        )
        .route(
            "/api/v1/wait",
            get(|State(s): State<Echo>| async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                s.name
            }),
        )
        .route(
            "/api/v1/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .fallback(any(echo))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("an address"));
    let shutdown = Shutdown::new();
    tokio::spawn(agora_platform::http::serve(
        listener,
        router,
        shutdown.clone(),
        Duration::ZERO,
    ));
    Instance {
        address,
        health,
        served,
        shutdown,
    }
}

/// Starts a gateway from `toml`; returns its base URL.
pub async fn gateway(toml: &str) -> (String, Shutdown) {
    let (address, shutdown, _) = serve_gateway(toml).await;
    (format!("http://{address}"), shutdown)
}

/// Starts a gateway from `toml` on a free port; returns its address and a
/// handle to reload it.
pub async fn serve_gateway(toml: &str) -> (std::net::SocketAddr, Shutdown, Gateway) {
    let config = GatewayConfig::parse(toml).expect("a valid configuration");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address");
    let shutdown = Shutdown::new();
    let gateway = Gateway::new(config).expect("a gateway");
    tokio::spawn(gateway.clone().serve(listener, shutdown.clone()));
    (address, shutdown, gateway)
}

pub fn pool(name: &str, instances: &[&Instance], extra: &str) -> String {
    let addresses: Vec<String> = instances
        .iter()
        .map(|i| format!("\"{}\"", i.address))
        .collect();
    format!(
        "[upstreams.{name}]\naddresses = [{}]\n{extra}\n",
        addresses.join(", ")
    )
}

pub async fn get_json(client: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let answer = client.get(url).send().await.expect("an answer");
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}
