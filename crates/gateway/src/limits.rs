//! Token-bucket rate limits per client address and per authenticated subject.
//!
//! Each limit is a generic cell rate algorithm (GCRA), the token bucket kept
//! as one timestamp per key: in this process (governor's keyed limiter), or
//! with `redis_url` in Redis, where one script reads and moves the timestamp
//! atomically on Redis' own clock, so every gateway instance draws from the
//! same buckets. A Redis that fails or is slow (over [`REDIS_TIMEOUT`]) does
//! not fail requests: the instance counts on its own until Redis answers
//! again, and says so once in the log.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agora_kernel::{ApiError, ErrorCode};
use axum::response::{IntoResponse as _, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{Bucket, GatewayConfigError, RateLimitConfig};

/// How long a bucket check in Redis may take before the local one is used.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// GCRA on one key. ARGV: the emission interval in microseconds (one token's
/// worth of time) and the burst. Returns 0 when admitted (and takes the
/// token), otherwise the microseconds until a token is there.
const TAKE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat + interval - interval * burst
if allow_at > now then return math.ceil(allow_at - now) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
";

/// A request over a limit: which, and how long until it would pass.
#[derive(Debug)]
pub(crate) struct Limited {
    limit: &'static str,
    retry_after: Duration,
}

impl Limited {
    /// `GATEWAY_RATE_LIMITED` with `Retry-After` in whole seconds (at least 1).
    pub(crate) fn response(&self) -> Response {
        let secs = self.retry_after.as_secs_f64().ceil().max(1.0);
        // At most a burst's worth of seconds: far below u64's range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let secs = secs as u64;
        ApiError::from_code(ErrorCode::GatewayRateLimited)
            .with_retry_after(secs)
            .with_details(serde_json::json!({
                "limit": self.limit,
                "retry_after_secs": secs,
            }))
            .into_response()
    }
}

struct Limit<K: std::hash::Hash + Eq + Clone> {
    name: &'static str,
    bucket: Bucket,
    local: DefaultKeyedRateLimiter<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    fn new(name: &'static str, bucket: Bucket) -> Limit<K> {
        let rate = NonZeroU32::new(bucket.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(bucket.burst).unwrap_or(NonZeroU32::MIN);
        Limit {
            name,
            bucket,
            local: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    fn take_local(&self, key: &K) -> Result<(), Limited> {
        self.local.check_key(key).map_err(|not_until| Limited {
            limit: self.name,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }
}

/// The buckets in Redis.
struct Shared {
    conn: ConnectionManager,
    prefix: String,
    take: redis::Script,
    /// The last check failed: counting locally until one succeeds.
    degraded: AtomicBool,
}

/// The rate limits of one gateway configuration.
pub(crate) struct Limits {
    client: Option<Limit<IpAddr>>,
    subject: Option<Limit<String>>,
    shared: Option<Shared>,
}

impl Limits {
    pub(crate) fn new(config: &RateLimitConfig) -> Result<Limits, GatewayConfigError> {
        let shared = match &config.redis_url {
            None => None,
            Some(url) => {
                let invalid = |e: redis::RedisError| {
                    GatewayConfigError::new("rate_limit.redis_url", &e.to_string())
                };
                let client = redis::Client::open(url.as_str()).map_err(invalid)?;
                let settings = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                Some(Shared {
                    conn: ConnectionManager::new_lazy_with_config(client, settings)
                        .map_err(invalid)?,
                    prefix: config.key_prefix.clone(),
                    take: redis::Script::new(TAKE),
                    degraded: AtomicBool::new(false),
                })
            }
        };
        Ok(Limits {
            client: config.per_client.map(|b| Limit::new("client", b)),
            subject: config.per_subject.map(|b| Limit::new("subject", b)),
            shared,
        })
    }

    /// Takes a token from the client address's bucket.
    pub(crate) async fn admit_client(&self, client: IpAddr) -> Result<(), Limited> {
        let Some(limit) = &self.client else {
            return Ok(());
        };
        match self.take_shared(limit, &format!("client:{client}")).await {
            Some(outcome) => outcome,
            None => limit.take_local(&client),
        }
    }

    /// Takes a token from the subject's bucket.
    pub(crate) async fn admit_subject(&self, subject: &str) -> Result<(), Limited> {
        let Some(limit) = &self.subject else {
            return Ok(());
        };
        match self.take_shared(limit, &format!("subject:{subject}")).await {
            Some(outcome) => outcome,
            None => limit.take_local(&subject.to_owned()),
        }
    }

    /// Whether subjects are limited at all.
    pub(crate) fn limits_subjects(&self) -> bool {
        self.subject.is_some()
    }

    /// The check in Redis; `None` without Redis or when it failed.
    async fn take_shared<K: std::hash::Hash + Eq + Clone>(
        &self,
        limit: &Limit<K>,
        key: &str,
    ) -> Option<Result<(), Limited>> {
        let shared = self.shared.as_ref()?;
        let interval_us = (1_000_000 / u64::from(limit.bucket.per_second)).max(1);
        let mut conn = shared.conn.clone();
        let mut invocation = shared.take.key(format!("{}:{key}", shared.prefix));
        invocation.arg(interval_us).arg(limit.bucket.burst);
        let call = invocation.invoke_async::<u64>(&mut conn);
        let outcome = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(wait_us)) => Ok(wait_us),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {REDIS_TIMEOUT:?}")),
        };
        match outcome {
            Ok(wait_us) => {
                if shared.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis answers again: rate limits are shared again");
                }
                Some(if wait_us == 0 {
                    Ok(())
                } else {
                    Err(Limited {
                        limit: limit.name,
                        retry_after: Duration::from_micros(wait_us),
                    })
                })
            }
            Err(e) => {
                if !shared.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the rate limits' Redis failed: this instance counts on its own");
                }
                None
            }
        }
    }

    /// Forgets the local buckets that are full again (their keys have been
    /// quiet long enough), so that memory follows the active clients only.
    pub(crate) fn forget_idle(&self) {
        if let Some(limit) = &self.client {
            limit.local.retain_recent();
            limit.local.shrink_to_fit();
        }
        if let Some(limit) = &self.subject {
            limit.local.retain_recent();
            limit.local.shrink_to_fit();
        }
    }
}
