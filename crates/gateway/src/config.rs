//! The gateway's configuration: `agora gateway --config gateway.toml`.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//!
//! [[routes]]
//! prefix = "/api/v1/products"
//! upstream = "catalog"
//!
//! [upstreams.catalog]
//! addresses = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
//! balance = "peak_ewma"          # round_robin (default), least_connections, ip_hash
//! request_timeout_ms = 15000
//! ```
//!
//! A request goes to the route with the longest matching prefix (a prefix
//! matches a path equal to it or continuing with `/`). Invalid settings are
//! refused with the key named, and nothing starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the gateway listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Take the client's address from the last `X-Forwarded-For` entry (a
    /// trusted load balancer in front of the gateway appends it); otherwise
    /// the TCP peer's.
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// How long in-flight requests may finish after SIGTERM or Ctrl-C.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Path prefixes and the pool each goes to.
    pub routes: Vec<RouteConfig>,
    /// The pools, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

/// One route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A path prefix, starting with `/`: `/api/v1/products`.
    pub prefix: String,
    /// The name of the pool in `upstreams`.
    pub upstream: String,
}

/// How a pool picks the instance for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest requests in flight.
    LeastConnections,
    /// Of two instances drawn at random, the one whose peak-sensitive moving
    /// average of latency, times its requests in flight, is lower.
    PeakEwma,
    /// The instance the client's address hashes to on a consistent-hash ring:
    /// the same client stays on the same instance, and adding or removing an
    /// instance moves only the clients of that instance.
    IpHash,
}

/// One pool of instances of a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The instances, `http://host:port`.
    pub addresses: Vec<String>,
    /// How an instance is picked.
    #[serde(default)]
    pub balance: Balance,
    /// How long connecting to an instance may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long an instance has to start answering (the response head).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// The circuit breaker of each instance.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Retries of idempotent requests.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Active health checks: `GET <address><path>` every `interval_ms`; an
/// instance that fails one is taken out of the pool until one succeeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The path asked; a 2xx answer is healthy.
    pub path: String,
    /// How often.
    pub interval_ms: u64,
    /// How long a check may take.
    pub timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/health/ready".into(),
            interval_ms: 2_000,
            timeout_ms: 1_000,
        }
    }
}

/// An instance's circuit breaker: closed while it answers; open (passed over,
/// and when every instance is, the route fails fast with
/// `GATEWAY_UNAVAILABLE`) after `consecutive_failures` failed requests in a
/// row; half-open after `open_ms`, when one request is let through as a
/// probe: success closes it, failure opens it again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failed requests in a row that open the breaker.
    pub consecutive_failures: u32,
    /// How long it stays open before a probe.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 3,
            open_ms: 5_000,
        }
    }
}

/// Retries: only of requests that are idempotent by their method (`GET`,
/// `HEAD`, `OPTIONS`, `PUT`, `DELETE`) and carry no body, on another
/// instance, within a budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries in all, the first included (1: no retry).
    pub attempts: u32,
    /// Retries allowed per request sent, over time (0.2: one retry per five
    /// requests), so that retries cannot multiply the load on a failing
    /// service; a burst of up to 10 retries is allowed.
    pub budget_ratio: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            budget_ratio: 0.2,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_request_timeout_ms() -> u64 {
    15_000
}

/// Why a gateway configuration was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid gateway configuration: {0}")]
pub struct GatewayConfigError(String);

impl GatewayConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<GatewayConfig, GatewayConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GatewayConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<GatewayConfig, GatewayConfigError> {
        let config: GatewayConfig =
            toml::from_str(text).map_err(|e| GatewayConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), GatewayConfigError> {
        let fail = |key: String, why: &str| Err(GatewayConfigError(format!("`{key}`: {why}")));
        if self.routes.is_empty() {
            return fail("routes".into(), "at least one route is needed");
        }
        for (i, route) in self.routes.iter().enumerate() {
            let valid_prefix = route.prefix.starts_with('/')
                && route.prefix.len() <= 256
                && route.prefix.parse::<http::uri::PathAndQuery>().is_ok()
                && !route.prefix.contains('?');
            if !valid_prefix {
                return fail(
                    format!("routes[{i}].prefix"),
                    "must be a path starting with /",
                );
            }
            if self.routes[..i]
                .iter()
                .any(|r| prefix_key(&r.prefix) == prefix_key(&route.prefix))
            {
                return fail(format!("routes[{i}].prefix"), "is given twice");
            }
            if !self.upstreams.contains_key(&route.upstream) {
                return fail(
                    format!("routes[{i}].upstream"),
                    "names no pool in `upstreams`",
                );
            }
        }
        for (name, pool) in &self.upstreams {
            if pool.addresses.is_empty() {
                return fail(
                    format!("upstreams.{name}.addresses"),
                    "at least one address is needed",
                );
            }
            for (i, address) in pool.addresses.iter().enumerate() {
                if parse_address(address).is_none() {
                    return fail(
                        format!("upstreams.{name}.addresses[{i}]"),
                        "must be http://host:port with no path",
                    );
                }
            }
            let ms = |key: &str, value: u64, max: u64| {
                if (1..=max).contains(&value) {
                    Ok(())
                } else {
                    Err(GatewayConfigError(format!(
                        "`upstreams.{name}.{key}`: must be between 1 and {max}"
                    )))
                }
            };
            ms("connect_timeout_ms", pool.connect_timeout_ms, 60_000)?;
            ms("request_timeout_ms", pool.request_timeout_ms, 3_600_000)?;
            ms("health.interval_ms", pool.health.interval_ms, 3_600_000)?;
            ms("health.timeout_ms", pool.health.timeout_ms, 60_000)?;
            ms("breaker.open_ms", pool.breaker.open_ms, 3_600_000)?;
            if !pool.health.path.starts_with('/') {
                return fail(format!("upstreams.{name}.health.path"), "must start with /");
            }
            if !(1..=1000).contains(&pool.breaker.consecutive_failures) {
                return fail(
                    format!("upstreams.{name}.breaker.consecutive_failures"),
                    "must be between 1 and 1000",
                );
            }
            if !(1..=10).contains(&pool.retry.attempts) {
                return fail(
                    format!("upstreams.{name}.retry.attempts"),
                    "must be between 1 and 10",
                );
            }
            if !(0.0..=10.0).contains(&pool.retry.budget_ratio) {
                return fail(
                    format!("upstreams.{name}.retry.budget_ratio"),
                    "must be between 0.0 and 10.0",
                );
            }
        }
        if self.shutdown_timeout_ms > 600_000 {
            return fail("shutdown_timeout_ms".into(), "must be at most 600000");
        }
        Ok(())
    }
}

/// A prefix without its trailing slashes: `/a/` and `/a` are the same route.
pub(crate) fn prefix_key(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// The scheme and authority of an `http://host:port` address.
pub(crate) fn parse_address(address: &str) -> Option<http::uri::Authority> {
    let uri: http::Uri = address.parse().ok()?;
    let plain_path = matches!(uri.path(), "" | "/");
    (uri.scheme_str() == Some("http") && plain_path && uri.query().is_none())
        .then_some(uri.authority()?.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [[routes]]
        prefix = "/api/v1/products"
        upstream = "catalog"

        [upstreams.catalog]
        addresses = ["http://127.0.0.1:8081"]
    "#;

    fn error(text: &str) -> String {
        GatewayConfig::parse(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_minimal_configuration_takes_the_defaults() {
        let config = GatewayConfig::parse(VALID).expect("valid");
        assert_eq!(config.listen, default_listen());
        let pool = &config.upstreams["catalog"];
        assert_eq!(pool.balance, Balance::RoundRobin);
        assert_eq!(pool.health.path, "/health/ready");
        assert_eq!(pool.retry.attempts, 2);
    }

    #[test]
    fn each_mistake_is_refused_with_its_key_named() {
        let unknown_pool = VALID.replace("upstream = \"catalog\"", "upstream = \"nope\"");
        assert!(
            error(&unknown_pool).contains("routes[0].upstream"),
            "{}",
            error(&unknown_pool)
        );
        let bad_address = VALID.replace("http://127.0.0.1:8081", "127.0.0.1:8081");
        assert!(error(&bad_address).contains("upstreams.catalog.addresses[0]"));
        let with_path = VALID.replace("http://127.0.0.1:8081", "http://127.0.0.1:8081/api");
        assert!(error(&with_path).contains("upstreams.catalog.addresses[0]"));
        let bad_prefix = VALID.replace("\"/api/v1/products\"", "\"api\"");
        assert!(error(&bad_prefix).contains("routes[0].prefix"));
        let bad_policy = format!("{VALID}balance = \"random\"\n");
        assert!(
            error(&bad_policy).contains("balance"),
            "{}",
            error(&bad_policy)
        );
        let unknown_key = format!("{VALID}weight = 3\n");
        assert!(
            error(&unknown_key).contains("weight"),
            "{}",
            error(&unknown_key)
        );
        let no_timeout = format!("{VALID}request_timeout_ms = 0\n");
        assert!(error(&no_timeout).contains("upstreams.catalog.request_timeout_ms"));
        let twice = format!(
            "{VALID}\n[[routes]]\nprefix = \"/api/v1/products/\"\nupstream = \"catalog\"\n"
        );
        assert!(
            error(&twice).contains("routes[1].prefix"),
            "{}",
            error(&twice)
        );
    }
}
