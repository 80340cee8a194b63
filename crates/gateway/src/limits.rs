//! Token-bucket rate limits per client address and per authenticated subject.
//!
//! Each limit is a generic cell rate algorithm (GCRA), the token bucket kept
//! as one timestamp per key: in this process (governor's keyed limiter), or
//! with `redis_url` in Redis, where one script reads and moves the timestamp
//! atomically on Redis' own clock, so every gateway instance draws from the
//! same buckets. A Redis that fails or is slow (over [`REDIS_TIMEOUT`]) does
//! not fail requests: the instance counts on its own, asks Redis again only
//! after a pause that doubles while it keeps failing ([`REDIS_RETRY_FIRST`]
//! to [`REDIS_RETRY_MAX`]; one request asks, the others count locally
//! meanwhile), and says so once in the log each way.
//!
//! A client address is an IPv4 address, or an IPv6 address's /64 prefix: one
//! host's share of a network, which can take any address in it at will.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agora_kernel::{ApiError, ErrorCode};
use axum::response::{IntoResponse as _, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{Bucket, GatewayConfigError, RateLimitConfig};

/// How long a bucket check in Redis may take before the local one is used.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed check, how long until Redis is asked again; the pause
/// doubles with each failure after it, up to [`REDIS_RETRY_MAX`].
pub(crate) const REDIS_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest pause between asks of a failing Redis.
pub(crate) const REDIS_RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// While degraded: when Redis may be asked again, and the pause after
    /// the next failure.
    backoff: Mutex<Backoff>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    retry_at: Option<Instant>,
    next_pause: Duration,
    /// One request was let through to ask after a pause: its failure starts
    /// the next pause (others failing meanwhile were sent before the pause).
    probing: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            retry_at: None,
            next_pause: REDIS_RETRY_FIRST,
            probing: false,
        }
    }
}

impl Shared {
    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        // Two instants and a flag: a panic elsewhere cannot leave them half-written.
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this check may ask Redis: yes unless a failure's pause runs.
    /// The first to ask once it is over takes the next ask for itself (the
    /// pause goes on for the others until its answer), so a Redis that hangs
    /// costs one request [`REDIS_TIMEOUT`], not every request.
    fn may_ask(&self, now: Instant) -> bool {
        // Answering Redis, no pause: no lock on the way of every request.
        if !self.degraded.load(Ordering::Relaxed) {
            return true;
        }
        let mut backoff = self.backoff();
        match backoff.retry_at {
            Some(at) if now < at => false,
            Some(_) => {
                backoff.retry_at = Some(now + REDIS_TIMEOUT * 2);
                backoff.probing = true;
                true
            }
            None => true,
        }
    }

    fn answered(&self) {
        if !self.degraded.load(Ordering::Relaxed) {
            return;
        }
        *self.backoff() = Backoff::default();
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again: rate limits are shared again");
        }
    }

    /// A check failed: the first failure, or the probe's, starts a pause
    /// (each one twice the last); the other checks that were already asking
    /// when it began change nothing.
    fn failed(&self, now: Instant, error: &str) {
        let pause = {
            let mut backoff = self.backoff();
            if backoff.retry_at.is_some() && !backoff.probing {
                return;
            }
            let pause = backoff.next_pause;
            backoff.retry_at = Some(now + pause);
            backoff.next_pause = (pause * 2).min(REDIS_RETRY_MAX);
            backoff.probing = false;
            pause
        };
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error, retry_in = ?pause, "the rate limits' Redis failed: this instance counts on its own");
        }
    }
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
                    backoff: Mutex::new(Backoff::default()),
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
        let client = client_key(client);
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
        if !shared.may_ask(Instant::now()) {
            return None;
        }
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
                shared.answered();
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
                shared.failed(Instant::now(), &e);
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

/// The bucket a client address draws from: an IPv4 address (or an IPv4
/// address mapped into IPv6) as it is, an IPv6 address by its /64.
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn config(per_second: u32, burst: u32, redis_url: Option<String>) -> RateLimitConfig {
        RateLimitConfig {
            redis_url,
            key_prefix: "test".to_string(),
            per_client: Some(Bucket { per_second, burst }),
            per_subject: None,
        }
    }

    #[test]
    fn ipv6_clients_share_their_64s_bucket() {
        let key = |s: &str| client_key(s.parse().expect("an address")).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), "2001:db8:1:2::");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    }

    /// Five addresses of one /64, each asking once, empty a bucket of 3.
    #[tokio::test]
    async fn one_64_draws_from_one_bucket() {
        let limits = Limits::new(&config(1, 3, None)).expect("limits");
        let mut admitted = 0;
        for host in 1..=5 {
            let address: IpAddr = format!("2001:db8::{host}").parse().expect("an address");
            admitted += usize::from(limits.admit_client(address).await.is_ok());
        }
        assert_eq!(admitted, 3);
    }

    /// A Redis that accepts connections and never answers: the first check
    /// waits for it and falls back to the local bucket; the checks during
    /// the pause after it do not ask it at all.
    #[tokio::test]
    async fn a_hanging_redis_is_asked_once_per_pause() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("its address");
        // Each ask opens a connection (the client's greeting is never
        // answered, so none gets further): counting them counts the asks.
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&asked);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        let limits =
            Limits::new(&config(1000, 1000, Some(format!("redis://{address}")))).expect("limits");
        let client: IpAddr = "192.0.2.1".parse().expect("an address");
        for _ in 0..20 {
            assert!(limits.admit_client(client).await.is_ok(), "counted locally");
        }
        let shared = limits.shared.as_ref().expect("shared");
        assert!(shared.degraded.load(Ordering::Relaxed));
        assert!(shared.backoff().retry_at.is_some(), "a pause runs");
        assert!(asked.load(Ordering::SeqCst) <= 2, "asked {asked:?} times");
    }

    #[tokio::test]
    async fn the_pause_doubles_while_redis_fails_and_ends_when_it_answers() {
        let limits =
            Limits::new(&config(1, 1, Some("redis://127.0.0.1:1".to_string()))).expect("limits");
        let shared = limits.shared.as_ref().expect("shared");
        let retry_at = || shared.backoff().retry_at;
        let t0 = Instant::now();
        assert!(shared.may_ask(t0));
        shared.failed(t0, "down");
        let first = retry_at().expect("paused");
        // Checks that were asking when it failed change nothing.
        for _ in 0..5 {
            shared.failed(t0 + Duration::from_millis(10), "down");
        }
        assert_eq!(retry_at(), Some(first));
        let mut now = first;
        let mut pauses = vec![first - t0];
        for _ in 0..6 {
            assert!(
                !shared.may_ask(now - Duration::from_millis(1)),
                "still paused"
            );
            assert!(shared.may_ask(now), "the pause is over");
            assert!(!shared.may_ask(now), "one ask at a time");
            shared.failed(now, "down");
            let at = retry_at().expect("paused");
            pauses.push(at - now);
            now = at;
        }
        assert_eq!(
            pauses.iter().map(Duration::as_secs).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 30, 30]
        );
        shared.answered();
        assert!(shared.may_ask(now));
        assert!(!shared.degraded.load(Ordering::Relaxed));
    }
}
