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
//!
//! [auth]                         # verify access tokens at the edge
//! jwks_url = "http://127.0.0.1:8081/.well-known/jwks.json"
//!
//! [rate_limit]                   # token buckets; in Redis when redis_url is set
//! per_client = { per_second = 100, burst = 200 }
//! per_subject = { per_second = 50, burst = 100 }
//!
//! [tls]                          # terminate TLS
//! cert = "/etc/agora/gateway.crt"
//! key = "/etc/agora/gateway.key"
//! ```
//!
//! A request goes to the route with the longest matching prefix (a prefix
//! matches a path equal to it or continuing with `/`). Invalid settings are
//! refused with the key named: at start-up nothing starts, and on a reload
//! (SIGHUP) the configuration in force stays.

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
    /// Terminate TLS with this certificate; plain HTTP without it.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Verify access tokens at the edge; without it tokens pass unchecked to
    /// the services (which check them anyway).
    #[serde(default)]
    pub auth: Option<EdgeAuthConfig>,
    /// Token-bucket rate limits; none without it.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
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
    /// Refuse requests without an access token here (`AUTH_REQUIRED`), before
    /// they reach the service. Needs `[auth]`.
    #[serde(default)]
    pub require_auth: bool,
}

/// The certificate the gateway presents. Both files are PEM and read again on
/// every reload, so a renewed certificate is taken up with SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// Access-token verification at the edge: the signature against the identity
/// service's published keys, the issuer, the audience and the expiry. A good
/// token goes on with its subject in `X-Agora-Subject` (and its roles in
/// `X-Agora-Roles`), and counts against `rate_limit.per_subject`. On a route
/// with `require_auth`, a request without a good token is refused here
/// (`AUTH_REQUIRED`, `AUTH_INVALID_TOKEN`, `AUTH_TOKEN_EXPIRED`); elsewhere it
/// goes on unchanged and the service decides. API keys
/// (`Authorization: ApiKey …`) only their issuer can check: they pass
/// through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeAuthConfig {
    /// The JSON Web Key Set, `http://host:port/.well-known/jwks.json`.
    pub jwks_url: String,
    /// The `iss` tokens must carry (`auth.issuer` of the services).
    #[serde(default = "default_token_party")]
    pub issuer: String,
    /// The `aud` tokens must carry (`auth.audience` of the services).
    #[serde(default = "default_token_party")]
    pub audience: String,
    /// How often the keys are read again; a token naming a key not seen yet
    /// also reads them again, at most once per 10 seconds.
    #[serde(default = "default_jwks_refresh_secs")]
    pub refresh_secs: u64,
}

/// Token buckets per client address and per authenticated subject. A request
/// over either answers `GATEWAY_RATE_LIMITED` (429) with `Retry-After`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Keep the buckets in Redis, shared by every gateway instance
    /// (`redis://host:port/db`); in this process without it. While Redis
    /// cannot be reached each instance counts on its own.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The Redis keys' prefix.
    #[serde(default = "default_rate_key_prefix")]
    pub key_prefix: String,
    /// Per client address (see `trust_forwarded_for`).
    #[serde(default)]
    pub per_client: Option<Bucket>,
    /// Per subject of a token verified at the edge (needs `[auth]`).
    #[serde(default)]
    pub per_subject: Option<Bucket>,
}

/// A token bucket: it refills at `per_second` and holds at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
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
fn default_token_party() -> String {
    "agora".into()
}
fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_rate_key_prefix() -> String {
    "agora:gateway:rate".into()
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

impl GatewayConfigError {
    /// `key` is refused for `why`.
    pub(crate) fn new(key: &str, why: &str) -> GatewayConfigError {
        GatewayConfigError(format!("`{key}`: {why}"))
    }
}

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
        let fail = |key: String, why: &str| Err(GatewayConfigError::new(&key, why));
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
            if route.require_auth && self.auth.is_none() {
                return fail(
                    format!("routes[{i}].require_auth"),
                    "needs an `[auth]` section to check tokens with",
                );
            }
        }
        if let Some(auth) = &self.auth {
            let uri: Option<http::Uri> = auth.jwks_url.parse().ok();
            if !uri.is_some_and(|u| u.scheme_str() == Some("http") && u.authority().is_some()) {
                return fail("auth.jwks_url".into(), "must be an http://host:port/… URL");
            }
            if !(1..=86_400).contains(&auth.refresh_secs) {
                return fail("auth.refresh_secs".into(), "must be between 1 and 86400");
            }
            if auth.issuer.is_empty() || auth.audience.is_empty() {
                return fail(
                    "auth.issuer".into(),
                    "issuer and audience must not be empty",
                );
            }
        }
        if let Some(limits) = &self.rate_limit {
            for (key, bucket) in [
                ("per_client", limits.per_client),
                ("per_subject", limits.per_subject),
            ] {
                let Some(bucket) = bucket else { continue };
                if !(1..=1_000_000).contains(&bucket.per_second) {
                    return fail(
                        format!("rate_limit.{key}.per_second"),
                        "must be between 1 and 1000000",
                    );
                }
                if !(1..=1_000_000).contains(&bucket.burst) {
                    return fail(
                        format!("rate_limit.{key}.burst"),
                        "must be between 1 and 1000000",
                    );
                }
            }
            if limits.per_subject.is_some() && self.auth.is_none() {
                return fail(
                    "rate_limit.per_subject".into(),
                    "needs an `[auth]` section: subjects come from verified tokens",
                );
            }
            if let Some(url) = &limits.redis_url
                && redis_url_invalid(url)
            {
                return fail(
                    "rate_limit.redis_url".into(),
                    "must be redis://host:port[/db]",
                );
            }
            if limits.key_prefix.is_empty() || limits.key_prefix.len() > 100 {
                return fail(
                    "rate_limit.key_prefix".into(),
                    "must be 1 to 100 characters",
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

fn redis_url_invalid(url: &str) -> bool {
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    !scheme_ok || url.parse::<http::Uri>().is_err()
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

    #[test]
    fn edge_settings_are_checked_with_their_keys_named() {
        let cases = [
            (
                VALID.replace(
                    "upstream = \"catalog\"",
                    "upstream = \"catalog\"\nrequire_auth = true",
                ),
                "routes[0].require_auth",
            ),
            (
                format!("[auth]\njwks_url = \"https://idp/jwks\"\n{VALID}"),
                "auth.jwks_url",
            ),
            (
                format!("[auth]\njwks_url = \"http://idp:1/jwks\"\nrefresh_secs = 0\n{VALID}"),
                "auth.refresh_secs",
            ),
            (
                format!("[rate_limit]\nper_client = {{ per_second = 0, burst = 1 }}\n{VALID}"),
                "rate_limit.per_client.per_second",
            ),
            (
                format!("[rate_limit]\nper_client = {{ per_second = 1, burst = 0 }}\n{VALID}"),
                "rate_limit.per_client.burst",
            ),
            (
                format!("[rate_limit]\nper_subject = {{ per_second = 1, burst = 1 }}\n{VALID}"),
                "rate_limit.per_subject",
            ),
            (
                format!("[rate_limit]\nredis_url = \"http://r:6379\"\n{VALID}"),
                "rate_limit.redis_url",
            ),
        ];
        for (text, key) in cases {
            let message = error(&text);
            assert!(message.contains(&format!("`{key}`")), "{key}: {message}");
        }
        let full = format!(
            "[auth]\njwks_url = \"http://127.0.0.1:8081/.well-known/jwks.json\"\n\
             [rate_limit]\nredis_url = \"redis://127.0.0.1:6379\"\n\
             per_client = {{ per_second = 10, burst = 20 }}\n\
             per_subject = {{ per_second = 5, burst = 10 }}\n\
             [tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n{VALID}"
        );
        let config = GatewayConfig::parse(&full).expect("valid");
        assert_eq!(config.auth.expect("auth").issuer, "agora");
        assert_eq!(
            config.rate_limit.expect("limits").key_prefix,
            "agora:gateway:rate"
        );
    }
}
