//! The HTTP side: one connection pool to the one target, and what an answer
//! means (a success, or an error code).

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The answer to one request, read as Agora's envelope.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status; `None` when no answer came.
    pub status: Option<StatusCode>,
    /// The parsed body (`Null` when it was not JSON or there was none).
    pub body: Value,
    /// The error code when the request failed: the envelope's `error.code`,
    /// `HTTP_<status>` for a failure without one, `TRANSPORT_TIMEOUT`,
    /// `TRANSPORT_CONNECT` or `TRANSPORT_ERROR` when no answer came.
    pub error: Option<String>,
}

impl Answer {
    /// `data` of a successful answer.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// Whether the request succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// The error's `details` (for the product that ran out).
    pub fn details(&self) -> &Value {
        &self.body["error"]["details"]
    }
}

/// A request to send: where, as whom, with what.
#[derive(Debug)]
pub struct Request<'a> {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) token: Option<&'a str>,
    pub(crate) body: Option<Value>,
    pub(crate) idempotency_key: Option<String>,
}

impl<'a> Request<'a> {
    /// A `GET` of `path`.
    pub fn get(path: impl Into<String>) -> Request<'a> {
        Request::new(Method::GET, path)
    }

    /// A request without a body or credentials.
    pub fn new(method: Method, path: impl Into<String>) -> Request<'a> {
        Request {
            method,
            path: path.into(),
            token: None,
            body: None,
            idempotency_key: None,
        }
    }

    /// As the holder of this access token.
    pub fn token(mut self, token: &'a str) -> Request<'a> {
        self.token = Some(token);
        self
    }

    /// With this JSON body.
    pub fn json(mut self, body: Value) -> Request<'a> {
        self.body = Some(body);
        self
    }

    /// With an `Idempotency-Key`.
    pub fn idempotency_key(mut self, key: String) -> Request<'a> {
        self.idempotency_key = Some(key);
        self
    }
}

/// The client of the one target.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of `base` (`http://host:port`, no path) with room for `users`
    /// connections, each request bounded by `timeout`. It never follows
    /// redirects: it talks to the address it is given and no other.
    pub fn new(base: &str, users: usize, timeout: Duration) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(users)
            .connect_timeout(Duration::from_secs(3).min(timeout))
            .timeout(timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("agora-loadgen/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Sends `request`; never fails: what went wrong is in the answer's `error`.
    pub async fn send(&self, request: Request<'_>) -> Answer {
        let mut builder = self
            .http
            .request(request.method, format!("{}{}", self.base, request.path));
        if let Some(token) = request.token {
            builder = builder.bearer_auth(token);
        }
        if let Some(key) = request.idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => return transport_failure(&e),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(e) => return transport_failure(&e),
        };
        let error = if status.is_success() || status == StatusCode::NOT_MODIFIED {
            None
        } else {
            Some(match body["error"]["code"].as_str() {
                Some(code) => code.to_string(),
                None => format!("HTTP_{}", status.as_u16()),
            })
        };
        Answer {
            status: Some(status),
            body,
            error,
        }
    }

    /// Checks that the target is a running Agora: its readiness check answers
    /// in Agora's envelope. A clear error otherwise.
    pub async fn check_agora(&self) -> anyhow::Result<()> {
        let answer = self.send(Request::get("/health/ready")).await;
        let Some(status) = answer.status else {
            bail!(
                "cannot reach {} ({}): is `agora serve` running there?",
                self.base,
                answer.error.as_deref().unwrap_or("no answer")
            );
        };
        let envelope =
            answer.body["meta"]["api_version"].is_string() && answer.body["success"].is_boolean();
        if !envelope {
            bail!(
                "{} is not an Agora server: GET /health/ready answered {status} without Agora's envelope",
                self.base
            );
        }
        if !answer.ok() {
            bail!(
                "the Agora at {} is not ready: GET /health/ready answered {status} {}",
                self.base,
                answer.error.as_deref().unwrap_or_default()
            );
        }
        Ok(())
    }
}

fn transport_failure(e: &reqwest::Error) -> Answer {
    let code = if e.is_timeout() {
        "TRANSPORT_TIMEOUT"
    } else if e.is_connect() {
        "TRANSPORT_CONNECT"
    } else {
        "TRANSPORT_ERROR"
    };
    Answer {
        status: None,
        body: Value::String(e.to_string()),
        error: Some(code.to_string()),
    }
}
