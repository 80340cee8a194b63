//! Configuration.
//!
//! Sources, later overriding earlier: defaults in code → the TOML file given with
//! `--config` → environment variables `AGORA_SECTION__KEY` (for example
//! `AGORA_DATABASE__URL`, `AGORA_SERVER__ADDR`, `AGORA_DATA_DIR`) → command-line
//! flags. Unknown keys and invalid values stop start-up with a message naming the
//! key. Variables starting `AGORA_TEST_` belong to the test suites and are ignored.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration of a process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the process keeps its files: the SQLite database, keys, media.
    pub data_dir: PathBuf,
    /// The HTTP server.
    pub server: ServerConfig,
    /// The database.
    pub database: DatabaseConfig,
    /// Logging.
    pub log: LogConfig,
    /// Metrics (and, later, trace export).
    pub telemetry: TelemetryConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Demo data.
    pub seed: SeedConfig,
    /// Payments: the provider and its webhooks.
    pub payments: PaymentsConfig,
    /// The cache in front of public reads.
    pub cache: CacheConfig,
    /// The message bus between modules.
    pub bus: BusConfig,
    /// Object storage: product images, their renditions, exports.
    pub storage: StorageConfig,
    /// The event-triggered functions.
    pub functions: FunctionsConfig,
    /// Outgoing mail (receipts).
    pub mail: MailConfig,
    /// Where each module runs when this process runs only one of them
    /// (`agora service`), and its own database.
    pub services: ServicesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("agora-data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            seed: SeedConfig::default(),
            payments: PaymentsConfig::default(),
            cache: CacheConfig::default(),
            bus: BusConfig::default(),
            storage: StorageConfig::default(),
            functions: FunctionsConfig::default(),
            mail: MailConfig::default(),
            services: ServicesConfig::default(),
        }
    }
}

/// The HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// A request that takes longer is answered `SERVER_TIMEOUT` (503).
    pub request_timeout_ms: u64,
    /// Larger request bodies are refused with `REQUEST_BODY_TOO_LARGE` (413).
    pub body_limit_bytes: usize,
    /// On SIGTERM or Ctrl-C, in-flight requests get this long to finish.
    pub shutdown_timeout_ms: u64,
    /// Take the client's address from the last `X-Forwarded-For` entry, as a
    /// trusted proxy in front (the gateway, a load balancer) appends it. Off: the
    /// TCP peer's address, which is the only one a client cannot forge.
    pub trust_forwarded_for: bool,
    /// Where `agora service` serves its module's port over gRPC (the monolith
    /// serves none).
    pub grpc_addr: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            request_timeout_ms: 15_000,
            body_limit_bytes: 1024 * 1024,
            shutdown_timeout_ms: 10_000,
            trust_forwarded_for: false,
        }
    }
}

/// The database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`. When absent: the SQLite file
    /// `<data_dir>/agora.db`.
    pub url: Option<String>,
    /// The most idle read connections kept (SQLite), or the size of the only
    /// pool (PostgreSQL).
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
            acquire_timeout_ms: 5_000,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (readable, the default) or `json` (one object a line, for collectors).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,agora_catalog=debug`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Metrics and traces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Whether requests, sagas, the bus and the caches are counted and timed,
    /// and served in Prometheus' text format at `/metrics` (on by default).
    pub metrics: bool,
    /// Where to send traces over OTLP/HTTP (protobuf), e.g.
    /// `http://127.0.0.1:4318/v1/traces`; unset (the default), no spans are
    /// exported, nor made beyond the request's.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the exported spans carry.
    pub service_name: String,
    /// The share of new traces exported, 0.0 to 1.0; a trace the caller
    /// samples (`traceparent` flag) is followed whatever this says.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            otlp_endpoint: None,
            service_name: "agora".into(),
            sample_ratio: 1.0,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "`{other}` is not a log format: use `text` or `json`"
            )),
        }
    }
}

/// Authentication: tokens and passwords. See `docs/security.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The `iss` claim of access tokens, checked on every request.
    pub issuer: String,
    /// The `aud` claim of access tokens, checked on every request.
    pub audience: String,
    /// How long an access token is valid.
    pub access_token_ttl_secs: u64,
    /// How long a refresh token is valid if it is not used.
    pub refresh_token_ttl_secs: u64,
    /// The Ed25519 signing key as base64 of its PKCS#8 DER form
    /// (`openssl genpkey -algorithm ed25519 -outform DER | base64 -w0`). When absent,
    /// keys are generated and kept in `<data_dir>/identity-signing-keys.json`.
    pub signing_key: Option<Secret>,
    /// The shortest password accepted at registration and password change.
    pub password_min_length: usize,
    /// argon2id cost parameters for password hashes.
    pub argon2: Argon2Config,
    /// Limits on failed logins.
    pub login: LoginLimits,
    /// OpenID Connect providers to log in with, by name (the `{provider}` of
    /// `/api/v1/auth/oidc/{provider}/start`).
    pub oidc: std::collections::BTreeMap<String, OidcProvider>,
}

/// An OpenID Connect provider (docs/security.md, "Login with an OpenID provider").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// The issuer URL; its `/.well-known/openid-configuration` is read at the
    /// first login.
    pub issuer: String,
    /// The client id registered with the provider.
    pub client_id: String,
    /// The client secret registered with the provider; never printed.
    pub client_secret: Secret,
    /// Where the provider sends the browser back: this server's
    /// `/api/v1/auth/oidc/{provider}/callback`, as registered with the provider.
    pub redirect_uri: String,
    /// The scopes asked for; `openid` and `email` are needed.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
}

fn default_oidc_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "agora".into(),
            audience: "agora".into(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 60 * 60,
            signing_key: None,
            password_min_length: 10,
            argon2: Argon2Config::default(),
            login: LoginLimits::default(),
            oidc: std::collections::BTreeMap::new(),
        }
    }
}

/// Limits on failed logins (docs/security.md, "Abuse"). Failures are counted per
/// client address and per email, whether or not an account has that email.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    /// The window the two rate limits count failures in.
    pub window_secs: u64,
    /// Failed logins (or second-factor codes) from one address within the window
    /// before further attempts are refused with `IDENTITY_LOGIN_THROTTLED`.
    pub failures_per_address: u32,
    /// Failed logins for one email within the window before further attempts
    /// are refused with `IDENTITY_LOGIN_THROTTLED`.
    pub failures_per_account: u32,
    /// Consecutive failed logins for one email that lock it
    /// (`IDENTITY_ACCOUNT_LOCKED`), even for the right password.
    pub lockout_after: u32,
    /// How long a lock lasts; failures older than this are forgotten.
    pub lockout_secs: u64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            window_secs: 300,
            failures_per_address: 50,
            failures_per_account: 5,
            lockout_after: 10,
            lockout_secs: 900,
        }
    }
}

/// argon2id cost parameters. The defaults are OWASP's recommended minimum
/// (19 MiB, 2 passes, 1 lane); `docs/security.md` has the measured hash time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Which cache serves public reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// In this process (moka).
    Memory,
    /// In Redis at `cache.redis_url`, shared by every node.
    Redis,
    /// This process's memory in front of Redis.
    #[serde(rename = "two_tier")]
    TwoTier,
    /// No cache: every read goes to the database.
    None,
}

/// The cache in front of public reads (products and product lists). See
/// `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `memory`, `redis` or `none`.
    pub backend: CacheBackend,
    /// The Redis server of the `redis` backend.
    pub redis_url: String,
    /// What this deployment's keys in Redis start with: deployments that share
    /// a Redis need different ones.
    pub redis_prefix: String,
    /// The most a Redis command may take before it counts as failed (and the
    /// read goes to the database), in milliseconds.
    pub redis_timeout_ms: u64,
    /// How long an entry is served at most, in seconds; writes through this
    /// process invalidate at once.
    pub ttl_secs: u64,
    /// About the most bytes of keys and values kept.
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: CacheBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".to_string(),
            redis_prefix: "agora".to_string(),
            redis_timeout_ms: 250,
            ttl_secs: 60,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Which bus carries events between modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusBackend {
    /// In this process: events reach this process's consumers only.
    InProcess,
    /// NATS JetStream at `bus.nats_url`, shared by every process.
    Nats,
    /// RabbitMQ at `bus.rabbitmq_url`, shared by every process.
    Rabbitmq,
}

impl BusBackend {
    /// Whether every process on the bus shares its events (not in-process).
    pub fn is_shared(self) -> bool {
        self != BusBackend::InProcess
    }
}

/// The message bus. See `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `in_process`, `nats` or `rabbitmq`.
    pub backend: BusBackend,
    /// The NATS server of the `nats` backend.
    pub nats_url: String,
    /// The JetStream stream holding every event (and `<stream>_DEAD`, the
    /// dead letters).
    pub nats_stream: String,
    /// The first token of every subject: `<prefix>.<module>.<event>.<partition>`.
    pub nats_subject_prefix: String,
    /// Partitions of each shared consumer on NATS (1-256): the events of one
    /// aggregate stay in one, in order; the partitions are handled in
    /// parallel. Change it only with every process stopped and the stream
    /// drained.
    pub nats_partitions: u32,
    /// The RabbitMQ server of the `rabbitmq` backend,
    /// `amqp://user:password@host:5672/vhost` (or `amqps://`).
    pub rabbitmq_url: String,
    /// The topic exchange every event is published to (queues are named
    /// `<exchange>.<consumer>`).
    pub rabbitmq_exchange: String,
    /// Failed deliveries of a message to a consumer before it is parked as a
    /// dead letter.
    pub max_attempts: i64,
    /// The pause before the first redelivery, in milliseconds; it doubles with
    /// each attempt, up to a minute.
    pub retry_pause_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: BusBackend::InProcess,
            nats_url: "nats://127.0.0.1:4222".to_string(),
            nats_stream: "AGORA".to_string(),
            nats_subject_prefix: "agora".to_string(),
            nats_partitions: 8,
            rabbitmq_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
            rabbitmq_exchange: "agora".to_string(),
            max_attempts: 10,
            retry_pause_ms: 1000,
        }
    }
}

/// Where objects are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Files under `storage.path` (default `<data_dir>/objects`).
    Local,
    /// A bucket of an S3-compatible service.
    S3,
}

/// Object storage. See `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `local` or `s3`.
    pub backend: StorageBackend,
    /// The directory of the `local` backend; `<data_dir>/objects` when absent.
    pub path: Option<PathBuf>,
    /// The bucket of the `s3` backend (it must exist).
    pub s3_bucket: String,
    /// Its region.
    pub s3_region: String,
    /// The service's URL, for S3-compatible services other than AWS
    /// (MinIO, Garage, moto); AWS's when absent.
    pub s3_endpoint: Option<String>,
    /// The access key; with the secret key absent too, the usual `AWS_*`
    /// environment variables and instance credentials are used.
    pub s3_access_key_id: Option<String>,
    /// The secret key.
    pub s3_secret_access_key: Option<Secret>,
    /// Allow a plain `http://` endpoint (a local service).
    pub s3_allow_http: bool,
    /// The largest product image accepted, in bytes.
    pub max_image_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            path: None,
            s3_bucket: String::new(),
            s3_region: "us-east-1".to_string(),
            s3_endpoint: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_allow_http: false,
            max_image_bytes: 10 * 1024 * 1024,
        }
    }
}

/// The event-triggered functions (thumbnails). See `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    /// Run them inside `agora serve`. Turn off where `agora functions`
    /// workers run them on a shared bus.
    pub in_process: bool,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        Self { in_process: true }
    }
}

/// Outgoing mail. See `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// The sender of every message, `Name <address>` or an address.
    pub from: String,
    /// The SMTP server: `smtps://host:465` (TLS from the start),
    /// `smtp://host:587?tls=required` (STARTTLS, refused without it),
    /// `smtp://host:25?tls=opportunistic`, or plain `smtp://host:25` (a relay
    /// on the same host). Absent: messages are written to `mail.dir` instead.
    pub smtp_url: Option<String>,
    /// The SMTP user name.
    pub smtp_username: Option<String>,
    /// Its password.
    pub smtp_password: Option<Secret>,
    /// The most an SMTP exchange may take, in milliseconds.
    pub smtp_timeout_ms: u64,
    /// Where messages go as `.eml` files when no SMTP server is set;
    /// `<data_dir>/mail` when absent.
    pub dir: Option<PathBuf>,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            from: "Agora <receipts@agora.localhost>".to_string(),
            smtp_url: None,
            smtp_username: None,
            smtp_password: None,
            smtp_timeout_ms: 10_000,
            dir: None,
        }
    }
}

/// Demo data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedConfig {
    /// Load the demo catalog into an empty database at start-up.
    pub demo: bool,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self { demo: true }
    }
}

/// The webhook secret used when `payments.webhook_secret` is not set. For
/// development and tests only: anyone who reads this source can sign webhooks
/// with it, so a deployment that receives real webhooks must set its own.
pub const DEVELOPMENT_WEBHOOK_SECRET: &str = "whsec_agora_development_only";

/// Payments: the payment provider and its signed webhooks. See
/// `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// The built-in simulated provider.
    pub simulated: SimulatedProviderConfig,
    /// The secret webhooks are signed with (`Agora-Signature`). When absent, the
    /// development secret [`DEVELOPMENT_WEBHOOK_SECRET`]: set one in any
    /// deployment that receives real webhooks. Never printed.
    pub webhook_secret: Option<Secret>,
    /// How far a webhook's signed time may be from the server's clock before it
    /// is refused as a replay, in seconds.
    pub webhook_tolerance_secs: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            simulated: SimulatedProviderConfig::default(),
            webhook_secret: None,
            webhook_tolerance_secs: 300,
        }
    }
}

impl PaymentsConfig {
    /// The webhook secret in effect: the configured one, or the development one.
    pub fn effective_webhook_secret(&self) -> Secret {
        self.webhook_secret
            .clone()
            .unwrap_or_else(|| Secret::new(DEVELOPMENT_WEBHOOK_SECRET))
    }
}

/// The simulated payment provider: how slow and flaky it is, and where it sends
/// its webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedProviderConfig {
    /// Added to every provider call.
    pub latency_ms: u64,
    /// The share of provider calls, 0 to 1, that fail as unavailable.
    pub error_rate: f64,
    /// Where the provider POSTs its signed webhook events, e.g.
    /// `http://127.0.0.1:8080/api/v1/webhooks/payments/simulated`. None: no webhooks.
    pub webhook_url: Option<String>,
}

impl Default for SimulatedProviderConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            webhook_url: None,
        }
    }
}

/// A value that must never be printed: `Debug` and `Display` show `********`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that must compare or use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl Serialize for Secret {
    /// Serialized masked, so an effective configuration printed or logged never
    /// shows it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
}

/// The modules, as `agora service` processes see each other.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// The identity module (accounts).
    pub identity: ServiceConfig,
    /// The catalog.
    pub catalog: ServiceConfig,
    /// The inventory.
    pub inventory: ServiceConfig,
    /// The carts.
    pub cart: ServiceConfig,
    /// The orders (and the checkout saga).
    pub orders: ServiceConfig,
    /// The payments.
    pub payments: ServiceConfig,
    /// How long a call to another module's service may take, retries on
    /// other replicas included; it travels as the call's deadline. 0: 10 s.
    pub deadline_ms: u64,
    /// How long connecting to a replica may take. 0: 1 s.
    pub connect_timeout_ms: u64,
    /// The secret the services of one deployment share: every gRPC call
    /// carries it and every port checks it. `agora service` needs it.
    pub token: Option<Secret>,
}

/// One module as a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// The gRPC addresses (`http://host:port`) of its replicas, for the
    /// services that call it. Needed where another module depends on it.
    pub grpc: Vec<String>,
    /// Its own database (`postgres://…/agora_catalog`, or a schema through
    /// `?options=-csearch_path%3D…`), used instead of `database.url` when it
    /// runs as a service; it runs only its own migrations there.
    pub database_url: Option<String>,
}

impl ServicesConfig {
    /// Each module's name and settings, in the order of the configuration.
    pub fn each(&self) -> [(&'static str, &ServiceConfig); 6] {
        [
            ("identity", &self.identity),
            ("catalog", &self.catalog),
            ("inventory", &self.inventory),
            ("cart", &self.cart),
            ("orders", &self.orders),
            ("payments", &self.payments),
        ]
    }
}

/// Values given on the command line; they override every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--addr`
    pub addr: Option<SocketAddr>,
    /// `--grpc-addr` (`agora service`)
    pub grpc_addr: Option<SocketAddr>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--no-demo`
    pub no_demo: bool,
}

/// The rules for a database URL, wherever it is given.
fn check_database_url(url: &str) -> Result<(), &'static str> {
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return Err("must start with sqlite:, postgres:// or postgresql://");
    }
    if url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory")) {
        // The writer and the read connections would each get a separate empty database.
        return Err("an in-memory SQLite database is not supported: give a file");
    }
    Ok(())
}

/// Why the configuration could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the configuration from every source, then validates it.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_from_env(file, overrides, Env::prefixed("AGORA_"))
    }

    fn load_from_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "the configuration file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env.filter(|key| !key.starts_with("test_")).split("__"));
        if let Some(addr) = overrides.addr {
            figment = figment.merge(Serialized::default("server.addr", addr));
        }
        if let Some(addr) = overrides.grpc_addr {
            figment = figment.merge(Serialized::default("server.grpc_addr", addr));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        if let Some(format) = overrides.log_format {
            figment = figment.merge(Serialized::default("log.format", format));
        }
        if overrides.no_demo {
            figment = figment.merge(Serialized::default("seed.demo", false));
        }
        let config: Config = figment.extract().map_err(|e| {
            // figment names the key and the source (file or environment variable).
            let mut msg = String::new();
            for (i, err) in e.into_iter().enumerate() {
                if i > 0 {
                    msg.push_str("; ");
                }
                let key = err.path.join(".");
                if key.is_empty() {
                    msg.push_str(&err.kind.to_string());
                } else {
                    msg.push_str(&format!("`{key}`: {}", err.kind));
                }
                if let Some(source) = &err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                    msg.push_str(&format!(" (from {source})"));
                }
            }
            ConfigError(msg)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError(format!("`{key}`: {why}")));
        if self.data_dir.as_os_str().is_empty() {
            return fail("data_dir", "must not be empty");
        }
        if !(1..=3_600_000).contains(&self.server.request_timeout_ms) {
            return fail("server.request_timeout_ms", "must be between 1 and 3600000");
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.server.body_limit_bytes) {
            return fail(
                "server.body_limit_bytes",
                "must be between 1024 and 1073741824",
            );
        }
        if self.server.shutdown_timeout_ms > 600_000 {
            return fail("server.shutdown_timeout_ms", "must be at most 600000");
        }
        if let Some(url) = &self.database.url {
            check_database_url(url).map_err(|why| ConfigError(format!("`database.url`: {why}")))?;
        }
        for (module, service) in self.services.each() {
            if let Some(url) = &service.database_url {
                check_database_url(url).map_err(|why| {
                    ConfigError(format!("`services.{module}.database_url`: {why}"))
                })?;
            }
            for address in &service.grpc {
                let valid = address
                    .strip_prefix("http://")
                    .is_some_and(|rest| !rest.is_empty() && address.parse::<http::Uri>().is_ok());
                if !valid {
                    return Err(ConfigError(format!(
                        "`services.{module}.grpc`: `{address}` is not an http://host:port address"
                    )));
                }
            }
        }
        if self.services.deadline_ms > 600_000 {
            return fail("services.deadline_ms", "must be at most 600000");
        }
        if self.services.connect_timeout_ms > 60_000 {
            return fail("services.connect_timeout_ms", "must be at most 60000");
        }
        if !self.cache.redis_url.starts_with("redis://") {
            return fail("cache.redis_url", "must start with redis://");
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return fail(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP over HTTP)",
            );
        }
        if self.telemetry.service_name.is_empty() || self.telemetry.service_name.len() > 128 {
            return fail("telemetry.service_name", "must be 1-128 characters");
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return fail("telemetry.sample_ratio", "must be between 0.0 and 1.0");
        }
        if self.cache.redis_prefix.is_empty()
            || self.cache.redis_prefix.len() > 64
            || !self
                .cache
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return fail("cache.redis_prefix", "must be 1-64 of A-Z a-z 0-9 - _ .");
        }
        if !(1..=60_000).contains(&self.cache.redis_timeout_ms) {
            return fail("cache.redis_timeout_ms", "must be between 1 and 60000");
        }
        if !(1..=86_400).contains(&self.cache.ttl_secs) {
            return fail("cache.ttl_secs", "must be between 1 and 86400");
        }
        if !(1024 * 1024..=64 * 1024 * 1024 * 1024).contains(&self.cache.max_bytes) {
            return fail(
                "cache.max_bytes",
                "must be between 1048576 (1 MiB) and 68719476736 (64 GiB)",
            );
        }
        if !self.bus.nats_url.starts_with("nats://") && !self.bus.nats_url.starts_with("tls://") {
            return fail("bus.nats_url", "must start with nats:// or tls://");
        }
        let name_like = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        };
        if !name_like(&self.bus.nats_stream) {
            return fail("bus.nats_stream", "must be 1-64 of A-Z a-z 0-9 - _");
        }
        if !name_like(&self.bus.nats_subject_prefix) {
            return fail("bus.nats_subject_prefix", "must be 1-64 of A-Z a-z 0-9 - _");
        }
        if !(1..=256).contains(&self.bus.nats_partitions) {
            return fail("bus.nats_partitions", "must be 1-256");
        }
        let amqp = &self.bus.rabbitmq_url;
        if !amqp.starts_with("amqp://") && !amqp.starts_with("amqps://") {
            return fail("bus.rabbitmq_url", "must start with amqp:// or amqps://");
        }
        if !name_like(&self.bus.rabbitmq_exchange) {
            return fail("bus.rabbitmq_exchange", "must be 1-64 of A-Z a-z 0-9 - _");
        }
        if !(1..=100).contains(&self.bus.max_attempts) {
            return fail("bus.max_attempts", "must be between 1 and 100");
        }
        if !(1..=60_000).contains(&self.bus.retry_pause_ms) {
            return fail("bus.retry_pause_ms", "must be between 1 and 60000");
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            return fail("database.max_connections", "must be between 1 and 1000");
        }
        if !(1..=600_000).contains(&self.database.acquire_timeout_ms) {
            return fail(
                "database.acquire_timeout_ms",
                "must be between 1 and 600000",
            );
        }
        for (name, provider) in &self.auth.oidc {
            let key = |field: &str| format!("auth.oidc.{name}.{field}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return fail(
                    &format!("auth.oidc.{name}"),
                    "provider names are a-z, 0-9 and -",
                );
            }
            for (field, url) in [
                ("issuer", &provider.issuer),
                ("redirect_uri", &provider.redirect_uri),
            ] {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return fail(&key(field), "must be an http:// or https:// URL");
                }
            }
            if provider.client_id.is_empty() {
                return fail(&key("client_id"), "must not be empty");
            }
            if !provider.scopes.iter().any(|s| s == "openid") {
                return fail(&key("scopes"), "must include `openid`");
            }
        }
        let login = &self.auth.login;
        if !(1..=86_400).contains(&login.window_secs) {
            return fail("auth.login.window_secs", "must be between 1 and 86400");
        }
        if !(1..=100_000).contains(&login.failures_per_address) {
            return fail(
                "auth.login.failures_per_address",
                "must be between 1 and 100000",
            );
        }
        if !(1..=1000).contains(&login.failures_per_account) {
            return fail(
                "auth.login.failures_per_account",
                "must be between 1 and 1000",
            );
        }
        if !(2..=1000).contains(&login.lockout_after) {
            return fail("auth.login.lockout_after", "must be between 2 and 1000");
        }
        if !(1..=604_800).contains(&login.lockout_secs) {
            return fail(
                "auth.login.lockout_secs",
                "must be between 1 and 604800 (a week)",
            );
        }
        if self.auth.issuer.is_empty() {
            return fail("auth.issuer", "must not be empty");
        }
        if self.auth.audience.is_empty() {
            return fail("auth.audience", "must not be empty");
        }
        if !(60..=86_400).contains(&self.auth.access_token_ttl_secs) {
            return fail("auth.access_token_ttl_secs", "must be between 60 and 86400");
        }
        if !(self.auth.access_token_ttl_secs..=31_536_000)
            .contains(&self.auth.refresh_token_ttl_secs)
        {
            return fail(
                "auth.refresh_token_ttl_secs",
                "must be at least auth.access_token_ttl_secs and at most 31536000 (a year)",
            );
        }
        if !(8..=256).contains(&self.auth.password_min_length) {
            return fail("auth.password_min_length", "must be between 8 and 256");
        }
        let argon2 = &self.auth.argon2;
        if !(1..=16).contains(&argon2.parallelism) {
            return fail("auth.argon2.parallelism", "must be between 1 and 16");
        }
        if !(8 * argon2.parallelism..=4 * 1024 * 1024).contains(&argon2.memory_kib) {
            return fail(
                "auth.argon2.memory_kib",
                "must be at least 8 × parallelism and at most 4194304 (4 GiB)",
            );
        }
        if !(1..=100).contains(&argon2.iterations) {
            return fail("auth.argon2.iterations", "must be between 1 and 100");
        }
        let payments = &self.payments;
        if payments.simulated.latency_ms > 60_000 {
            return fail("payments.simulated.latency_ms", "must be at most 60000");
        }
        if !(0.0..=1.0).contains(&payments.simulated.error_rate) {
            return fail("payments.simulated.error_rate", "must be between 0 and 1");
        }
        if let Some(url) = &payments.simulated.webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return fail(
                "payments.simulated.webhook_url",
                "must be an http:// or https:// URL",
            );
        }
        if payments
            .webhook_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return fail(
                "payments.webhook_secret",
                "must have at least 16 characters",
            );
        }
        if !(1..=3600).contains(&payments.webhook_tolerance_secs) {
            return fail(
                "payments.webhook_tolerance_secs",
                "must be between 1 and 3600",
            );
        }
        let storage = &self.storage;
        if storage.backend == StorageBackend::S3 {
            if storage.s3_bucket.is_empty() {
                return fail("storage.s3_bucket", "must be set for the s3 backend");
            }
            if storage.s3_region.is_empty() {
                return fail("storage.s3_region", "must not be empty");
            }
            if let Some(url) = &storage.s3_endpoint {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return fail("storage.s3_endpoint", "must be an http:// or https:// URL");
                }
                if url.starts_with("http://") && !storage.s3_allow_http {
                    return fail(
                        "storage.s3_endpoint",
                        "is plain http://: set storage.s3_allow_http = true to allow it",
                    );
                }
            }
            if storage.s3_access_key_id.is_some() != storage.s3_secret_access_key.is_some() {
                return fail(
                    "storage.s3_secret_access_key",
                    "must be set together with storage.s3_access_key_id",
                );
            }
        }
        if !(1024..=256 * 1024 * 1024).contains(&storage.max_image_bytes) {
            return fail(
                "storage.max_image_bytes",
                "must be between 1024 and 268435456 (256 MiB)",
            );
        }
        let mail = &self.mail;
        if mail.from.parse::<lettre::message::Mailbox>().is_err() {
            return fail("mail.from", "must be an address, or `Name <address>`");
        }
        if let Some(url) = &mail.smtp_url {
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return fail("mail.smtp_url", "must be an smtp:// or smtps:// URL");
            }
            if url.split_once("://").is_some_and(|(_, rest)| {
                rest.split(['/', '?'])
                    .next()
                    .is_some_and(|a| a.contains('@'))
            }) {
                return fail(
                    "mail.smtp_url",
                    "must not hold credentials: set mail.smtp_username and mail.smtp_password",
                );
            }
            if mail.smtp_username.is_some()
                && url.starts_with("smtp://")
                && !url.contains("tls=required")
            {
                return fail(
                    "mail.smtp_url",
                    "sends the password in the clear: use smtps:// or smtp://…?tls=required",
                );
            }
        }
        if mail.smtp_username.is_some() != mail.smtp_password.is_some() {
            return fail(
                "mail.smtp_password",
                "must be set together with mail.smtp_username",
            );
        }
        if !(1..=300_000).contains(&mail.smtp_timeout_ms) {
            return fail("mail.smtp_timeout_ms", "must be between 1 and 300000");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return fail("log.filter", "is not a valid tracing filter");
        }
        Ok(())
    }

    /// The directory of the local object storage in effect.
    pub fn storage_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("objects"))
    }

    /// The directory mail is written to when no SMTP server is set.
    pub fn mail_dir(&self) -> PathBuf {
        self.mail
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("mail"))
    }

    /// The database URL in effect: the configured one, or the SQLite file in the
    /// data directory.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("agora.db").display()
            ),
        }
    }

    /// The effective configuration as TOML, with secrets masked (including a
    /// password inside the database, Redis, NATS and RabbitMQ URLs). For
    /// `agora config`.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = Some(mask_url_password(&self.database_url()));
        shown.cache.redis_url = mask_url_password(&self.cache.redis_url);
        shown.bus.nats_url = mask_url_password(&self.bus.nats_url);
        shown.bus.rabbitmq_url = mask_url_password(&self.bus.rabbitmq_url);
        let services = &mut shown.services;
        for service in [
            &mut services.identity,
            &mut services.catalog,
            &mut services.inventory,
            &mut services.cart,
            &mut services.orders,
            &mut services.payments,
        ] {
            service.database_url = service.database_url.as_deref().map(mask_url_password);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `postgres://user:pw@host/db` → `postgres://user:********@host/db`.
pub(crate) fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its (large) Error.
mod tests {
    use super::*;
    use figment::Jail;

    fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_from_env(None, overrides, Env::prefixed("AGORA_"))
    }

    #[test]
    fn defaults_are_a_runnable_monolith() {
        Jail::expect_with(|_| {
            let c = load(&Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.server.addr.to_string(), "127.0.0.1:8080");
            assert_eq!(c.database_url(), "sqlite://agora-data/agora.db?mode=rwc");
            assert!(c.seed.demo);
            Ok(())
        });
    }

    #[test]
    fn the_environment_overrides_the_file_and_flags_override_both() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "agora.toml",
                "[server]\naddr = \"127.0.0.1:9000\"\nrequest_timeout_ms = 2000\n",
            )?;
            jail.set_env("AGORA_SERVER__REQUEST_TIMEOUT_MS", "3000");
            jail.set_env("AGORA_DATABASE__URL", "postgres://u:pw@localhost/agora");
            // Not a real suite variable: the jail sets it process-wide, and other
            // tests in this binary read AGORA_TEST_POSTGRES_URL.
            jail.set_env("AGORA_TEST_EXAMPLE_URL", "ignored by the application");
            let flags = Overrides {
                addr: Some(SocketAddr::from(([0, 0, 0, 0], 7000))),
                no_demo: true,
                ..Overrides::default()
            };
            let c = Config::load_from_env(
                Some(Path::new("agora.toml")),
                &flags,
                Env::prefixed("AGORA_"),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(c.server.addr.port(), 7000);
            assert_eq!(c.server.request_timeout_ms, 3000);
            assert!(!c.seed.demo);
            assert_eq!(c.database_url(), "postgres://u:pw@localhost/agora");
            Ok(())
        });
    }

    #[test]
    fn services_take_replica_lists_and_their_own_databases() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "agora.toml",
                "[services.catalog]\ngrpc = [\"http://10.0.0.1:50051\", \"http://10.0.0.2:50051\"]\n\
                 database_url = \"postgres://db/agora_catalog\"\n",
            )?;
            jail.set_env(
                "AGORA_SERVICES__INVENTORY__GRPC",
                "[\"http://127.0.0.1:50053\"]",
            );
            let c = Config::load_from_env(
                Some(Path::new("agora.toml")),
                &Overrides::default(),
                Env::prefixed("AGORA_"),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(c.services.catalog.grpc.len(), 2);
            assert_eq!(
                c.services.catalog.database_url.as_deref(),
                Some("postgres://db/agora_catalog")
            );
            assert_eq!(c.services.inventory.grpc, ["http://127.0.0.1:50053"]);
            assert!(c.services.orders.grpc.is_empty());

            jail.set_env("AGORA_SERVICES__ORDERS__GRPC", "[\"10.0.0.3:50051\"]");
            let err = load(&Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("services.orders.grpc"), "{err}");
            jail.set_env("AGORA_SERVICES__ORDERS__GRPC", "[]");
            jail.set_env("AGORA_SERVICES__CART__DATABASE_URL", "mysql://nope");
            let err = load(&Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("services.cart.database_url"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key() {
        Jail::expect_with(|jail| {
            jail.set_env("AGORA_SERVER__ADDR", "not-an-address");
            let err = load(&Overrides::default()).err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(err.contains("server.addr"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("agora.toml", "[server]\nport = 1\n")?;
            let err = Config::load_from_env(
                Some(Path::new("agora.toml")),
                &Overrides::default(),
                Env::prefixed("AGORA_"),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(err.contains("port"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn rules_beyond_types_name_their_key() {
        Jail::expect_with(|jail| {
            jail.set_env("AGORA_AUTH__ACCESS_TOKEN_TTL_SECS", "5");
            let err = load(&Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("auth.access_token_ttl_secs"), "{err}");
            jail.set_env("AGORA_AUTH__ACCESS_TOKEN_TTL_SECS", "900");
            jail.set_env("AGORA_AUTH__ARGON2__MEMORY_KIB", "4");
            let err = load(&Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("auth.argon2.memory_kib"), "{err}");
            jail.set_env("AGORA_AUTH__ARGON2__MEMORY_KIB", "19456");
            jail.set_env("AGORA_DATABASE__URL", "mysql://x");
            let err = load(&Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("database.url"), "{err}");
            jail.set_env("AGORA_DATABASE__URL", "sqlite://x.db");
            jail.set_env("AGORA_AUTH__LOGIN__LOCKOUT_AFTER", "1");
            let err = load(&Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("auth.login.lockout_after"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn payments_default_to_a_quiet_simulated_provider_and_the_development_secret() {
        Jail::expect_with(|_| {
            let c = load(&Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.payments.simulated.latency_ms, 0);
            assert_eq!(c.payments.simulated.error_rate, 0.0);
            assert_eq!(c.payments.simulated.webhook_url, None);
            assert_eq!(c.payments.webhook_tolerance_secs, 300);
            assert_eq!(
                c.payments.effective_webhook_secret().expose(),
                DEVELOPMENT_WEBHOOK_SECRET
            );
            Ok(())
        });
    }

    #[test]
    fn payments_settings_come_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.set_env("AGORA_PAYMENTS__SIMULATED__LATENCY_MS", "250");
            jail.set_env("AGORA_PAYMENTS__SIMULATED__ERROR_RATE", "0.25");
            jail.set_env(
                "AGORA_PAYMENTS__SIMULATED__WEBHOOK_URL",
                "http://127.0.0.1:8080/api/v1/webhooks/payments/simulated",
            );
            jail.set_env(
                "AGORA_PAYMENTS__WEBHOOK_SECRET",
                "whsec_a_real_secret_value",
            );
            jail.set_env("AGORA_PAYMENTS__WEBHOOK_TOLERANCE_SECS", "60");
            let c = load(&Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.payments.simulated.latency_ms, 250);
            assert_eq!(c.payments.simulated.error_rate, 0.25);
            assert!(c.payments.simulated.webhook_url.is_some());
            assert_eq!(
                c.payments.effective_webhook_secret().expose(),
                "whsec_a_real_secret_value"
            );
            assert_eq!(c.payments.webhook_tolerance_secs, 60);
            Ok(())
        });
    }

    #[test]
    fn bad_payments_settings_name_their_key() {
        Jail::expect_with(|jail| {
            refused_naming_their_key(
                jail,
                &[
                    (
                        "AGORA_PAYMENTS__SIMULATED__ERROR_RATE",
                        "1.5",
                        "payments.simulated.error_rate",
                    ),
                    (
                        "AGORA_PAYMENTS__SIMULATED__ERROR_RATE",
                        "-0.1",
                        "payments.simulated.error_rate",
                    ),
                    (
                        "AGORA_PAYMENTS__SIMULATED__LATENCY_MS",
                        "600000",
                        "payments.simulated.latency_ms",
                    ),
                    (
                        "AGORA_PAYMENTS__SIMULATED__WEBHOOK_URL",
                        "ftp://x",
                        "payments.simulated.webhook_url",
                    ),
                    (
                        "AGORA_PAYMENTS__WEBHOOK_SECRET",
                        "short",
                        "payments.webhook_secret",
                    ),
                    (
                        "AGORA_PAYMENTS__WEBHOOK_TOLERANCE_SECS",
                        "0",
                        "payments.webhook_tolerance_secs",
                    ),
                ],
            );
            Ok(())
        });
    }

    /// Each `(variable, value, key)` alone makes loading fail with an error
    /// that names `key`.
    fn refused_naming_their_key(jail: &mut Jail, cases: &[(&str, &str, &str)]) {
        for (var, value, key) in cases {
            jail.clear_env();
            jail.set_env(var, value);
            let err = load(&Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn bad_bus_settings_name_their_key() {
        Jail::expect_with(|jail| {
            refused_naming_their_key(
                jail,
                &[
                    ("AGORA_BUS__BACKEND", "kafka", "bus.backend"),
                    ("AGORA_BUS__NATS_URL", "http://x", "bus.nats_url"),
                    ("AGORA_BUS__NATS_STREAM", "a.b", "bus.nats_stream"),
                    (
                        "AGORA_BUS__NATS_SUBJECT_PREFIX",
                        "a>",
                        "bus.nats_subject_prefix",
                    ),
                    ("AGORA_BUS__NATS_PARTITIONS", "0", "bus.nats_partitions"),
                    ("AGORA_BUS__NATS_PARTITIONS", "257", "bus.nats_partitions"),
                    ("AGORA_BUS__MAX_ATTEMPTS", "0", "bus.max_attempts"),
                    ("AGORA_BUS__RETRY_PAUSE_MS", "0", "bus.retry_pause_ms"),
                ],
            );
            jail.clear_env();
            jail.set_env("AGORA_BUS__BACKEND", "nats");
            let config = load(&Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.bus.backend, BusBackend::Nats);
            Ok(())
        });
    }

    #[test]
    fn bad_telemetry_settings_name_their_key() {
        Jail::expect_with(|jail| {
            refused_naming_their_key(
                jail,
                &[
                    (
                        "AGORA_TELEMETRY__OTLP_ENDPOINT",
                        "127.0.0.1:4318",
                        "telemetry.otlp_endpoint",
                    ),
                    (
                        "AGORA_TELEMETRY__SERVICE_NAME",
                        "",
                        "telemetry.service_name",
                    ),
                    (
                        "AGORA_TELEMETRY__SAMPLE_RATIO",
                        "1.5",
                        "telemetry.sample_ratio",
                    ),
                    (
                        "AGORA_TELEMETRY__SAMPLE_RATIO",
                        "-0.1",
                        "telemetry.sample_ratio",
                    ),
                ],
            );
            jail.clear_env();
            jail.set_env(
                "AGORA_TELEMETRY__OTLP_ENDPOINT",
                "http://127.0.0.1:4318/v1/traces",
            );
            let config = load(&Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                config.telemetry.otlp_endpoint.as_deref(),
                Some("http://127.0.0.1:4318/v1/traces")
            );
            Ok(())
        });
    }

    #[test]
    fn bad_storage_settings_name_their_key() {
        Jail::expect_with(|jail| {
            refused_naming_their_key(
                jail,
                &[
                    ("AGORA_STORAGE__BACKEND", "ftp", "storage.backend"),
                    ("AGORA_STORAGE__BACKEND", "s3", "storage.s3_bucket"),
                    (
                        "AGORA_STORAGE__MAX_IMAGE_BYTES",
                        "10",
                        "storage.max_image_bytes",
                    ),
                ],
            );
            let s3 = |jail: &mut Jail, extra: &[(&str, &str)]| {
                jail.clear_env();
                jail.set_env("AGORA_STORAGE__BACKEND", "s3");
                jail.set_env("AGORA_STORAGE__S3_BUCKET", "media");
                for (var, value) in extra {
                    jail.set_env(var, value);
                }
                load(&Overrides::default()).map_err(|e| e.to_string())
            };
            let plain = [("AGORA_STORAGE__S3_ENDPOINT", "http://127.0.0.1:9000")];
            let err = s3(jail, &plain).err().unwrap_or_default();
            assert!(err.contains("storage.s3_allow_http"), "{err}");
            let half = [("AGORA_STORAGE__S3_ACCESS_KEY_ID", "key")];
            let err = s3(jail, &half).err().unwrap_or_default();
            assert!(err.contains("storage.s3_secret_access_key"), "{err}");
            let config = s3(
                jail,
                &[
                    plain[0],
                    ("AGORA_STORAGE__S3_ALLOW_HTTP", "true"),
                    half[0],
                    ("AGORA_STORAGE__S3_SECRET_ACCESS_KEY", "secret"),
                ],
            )?;
            assert_eq!(config.storage.backend, StorageBackend::S3);
            assert!(
                config
                    .to_masked_toml()
                    .contains("s3_secret_access_key = \"********\"")
            );
            jail.clear_env();
            let config = load(&Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.storage_path(), config.data_dir.join("objects"));
            Ok(())
        });
    }

    #[test]
    fn bad_mail_settings_name_their_key() {
        Jail::expect_with(|jail| {
            refused_naming_their_key(
                jail,
                &[
                    ("AGORA_MAIL__FROM", "not an address", "mail.from"),
                    ("AGORA_MAIL__SMTP_URL", "http://mail:25", "mail.smtp_url"),
                    (
                        "AGORA_MAIL__SMTP_URL",
                        "smtps://me:hunter2@mail:465",
                        "mail.smtp_url",
                    ),
                    ("AGORA_MAIL__SMTP_USERNAME", "me", "mail.smtp_password"),
                    ("AGORA_MAIL__SMTP_TIMEOUT_MS", "0", "mail.smtp_timeout_ms"),
                ],
            );
            jail.clear_env();
            jail.set_env("AGORA_MAIL__SMTP_URL", "smtps://mail.example.com:465");
            jail.set_env("AGORA_MAIL__SMTP_USERNAME", "me");
            jail.set_env("AGORA_MAIL__SMTP_PASSWORD", "hunter2");
            let config = load(&Overrides::default()).map_err(|e| e.to_string())?;
            let shown = config.to_masked_toml();
            assert!(shown.contains("smtp_password = \"********\""), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            jail.clear_env();
            let config = load(&Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.mail_dir(), config.data_dir.join("mail"));
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = Config::load(
            Some(Path::new("/nonexistent/agora.toml")),
            &Overrides::default(),
        );
        assert!(err.is_err());
    }

    #[test]
    fn printed_configuration_masks_secrets() {
        let mut c = Config::default();
        c.auth.signing_key = Some(Secret::new("super-secret-signing-key"));
        c.database.url = Some("postgres://agora:hunter2@db:5432/agora".into());
        c.payments.webhook_secret = Some(Secret::new("whsec_very_secret_webhook_key"));
        let shown = c.to_masked_toml();
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(!shown.contains("whsec_very_secret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://agora:********@db:5432/agora"),
            "{shown}"
        );
    }
}
