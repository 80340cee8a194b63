//! The shared cache: entries in Redis, seen by every node.
//!
//! Keys are `<prefix>:v:<key>`; each tag is a set `<prefix>:t:<tag>` of the keys
//! stored with it, and deleting a tag deletes its members and the set in one
//! script. The connection is made lazily and remade after failures (redis'
//! connection manager), every command is bounded by a timeout, and a failing
//! Redis never fails a request: a read is a miss, a write is skipped, and the
//! cache says it is degraded until a command succeeds again. An invalidation
//! that fails while Redis is unreachable is lost; the entries it meant expire
//! after their time to live.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisResult};

use super::Cache;

/// Deletes the members of a tag's set, then the set.
const DELETE_TAG: &str = r"
local keys = redis.call('SMEMBERS', KEYS[1])
for i = 1, #keys, 500 do
  redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return #keys
";

/// A cache in Redis.
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    delete_tag: redis::Script,
    /// The last command failed: reads go to the database until one succeeds.
    degraded: AtomicBool,
}

impl RedisCache {
    /// A cache at `url` (`redis://host:port/db`), its keys under `prefix`, each
    /// command given at most `timeout`. Connects on first use.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Self {
            conn: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: prefix.to_string(),
            delete_tag: redis::Script::new(DELETE_TAG),
            degraded: AtomicBool::new(false),
        })
    }

    /// Whether the last command failed (reads are going to the database).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}:v:{key}", self.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}:t:{tag}", self.prefix)
    }

    /// The command's value, or `None` after logging its failure once per outage.
    fn outcome<T>(&self, what: &str, result: RedisResult<T>) -> Option<T> {
        match result {
            Ok(value) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("the Redis cache answers again");
                }
                Some(value)
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, what, "the Redis cache failed: reads go to the database");
                }
                None
            }
        }
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Option<Bytes> {
        let mut conn = self.conn.clone();
        let found: RedisResult<Option<Vec<u8>>> = conn.get(self.entry_key(key)).await;
        self.outcome("get", found).flatten().map(Bytes::from)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration, tags: &[&str]) {
        let entry = self.entry_key(key);
        let ttl = millis(ttl);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&entry)
            .arg(value.as_ref())
            .arg("PX")
            .arg(ttl)
            .ignore();
        for tag in tags {
            let set = self.tag_key(tag);
            // The set lives as long as its longest-lived member.
            pipe.cmd("SADD").arg(&set).arg(&entry).ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl).arg("GT").ignore();
        }
        let mut conn = self.conn.clone();
        let stored: RedisResult<()> = pipe.query_async(&mut conn).await;
        self.outcome("set", stored);
    }

    async fn delete(&self, key: &str) {
        let mut conn = self.conn.clone();
        let deleted: RedisResult<()> = conn.del(self.entry_key(key)).await;
        self.outcome("delete", deleted);
    }

    async fn delete_tag(&self, tag: &str) {
        let mut conn = self.conn.clone();
        let deleted: RedisResult<i64> = self
            .delete_tag
            .key(self.tag_key(tag))
            .invoke_async(&mut conn)
            .await;
        self.outcome("delete_tag", deleted);
    }

    async fn check(&self) -> bool {
        let mut conn = self.conn.clone();
        let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        self.outcome("ping", pong).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cache::CacheAside;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A cache on the server named by `AGORA_TEST_REDIS_URL`, under a prefix of
    /// its own so that tests never see each other's keys.
    fn test_cache() -> RedisCache {
        let url = std::env::var("AGORA_TEST_REDIS_URL")
            .expect("AGORA_TEST_REDIS_URL names the Redis to test against");
        let prefix = format!("agora-test-{}", uuid::Uuid::now_v7().simple());
        RedisCache::new(&url, &prefix, Duration::from_secs(2)).expect("a Redis URL")
    }

    #[tokio::test]
    #[ignore = "needs a Redis server: set AGORA_TEST_REDIS_URL and pass --ignored"]
    async fn entries_are_stored_expired_and_deleted_by_key_and_tag() {
        let cache = test_cache();
        cache
            .set("a", Bytes::from_static(b"A"), HOUR, &["lists"])
            .await;
        cache
            .set("b", Bytes::from_static(b"B"), HOUR, &["lists", "products"])
            .await;
        cache
            .set("c", Bytes::from_static(b"C"), HOUR, &["products"])
            .await;
        cache
            .set(
                "brief",
                Bytes::from_static(b"x"),
                Duration::from_secs(60),
                &[],
            )
            .await;
        assert_eq!(cache.get("a").await, Some(Bytes::from_static(b"A")));
        assert!(!cache.is_degraded());

        cache.delete_tag("lists").await;
        assert_eq!(cache.get("a").await, None);
        assert_eq!(cache.get("b").await, None);
        assert_eq!(cache.get("c").await, Some(Bytes::from_static(b"C")));
        cache.delete("c").await;
        assert_eq!(cache.get("c").await, None);
        // Redis expires it: the entry carries its time to live.
        let mut conn = cache.conn.clone();
        let left: i64 = conn.pttl(cache.entry_key("brief")).await.expect("PTTL");
        assert!((1..=60_000).contains(&left), "{left} ms left");
        assert!(!cache.is_degraded());
    }

    #[tokio::test]
    #[ignore = "needs a Redis server: set AGORA_TEST_REDIS_URL and pass --ignored"]
    async fn two_nodes_share_entries_and_invalidations() {
        let one = test_cache();
        let other = RedisCache::new(
            &std::env::var("AGORA_TEST_REDIS_URL").expect("set"),
            &one.prefix,
            Duration::from_secs(2),
        )
        .expect("a Redis URL");
        let (one, other) = (
            Arc::new(CacheAside::new(Arc::new(one))),
            Arc::new(CacheAside::new(Arc::new(other))),
        );
        let loaded = one
            .get_or_load("p1", HOUR, &["products"], async {
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"v1"))
            })
            .await;
        assert_eq!(loaded.ok(), Some(Bytes::from_static(b"v1")));
        let seen = other
            .get_or_load("p1", HOUR, &["products"], async {
                Err::<Bytes, _>("the other node must not load")
            })
            .await;
        assert_eq!(seen, Ok(Bytes::from_static(b"v1")));
        other.invalidate_tag("products").await;
        let reloaded = one
            .get_or_load("p1", HOUR, &["products"], async {
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"v2"))
            })
            .await;
        assert_eq!(reloaded.ok(), Some(Bytes::from_static(b"v2")));
    }

    /// Redis down (nothing listens on the port): reads are misses answered by
    /// the loader, writes are skipped, nothing fails or hangs.
    #[tokio::test]
    async fn with_redis_down_reads_go_to_the_loader_and_nothing_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("an address").port();
        drop(listener);
        let down = Arc::new(
            RedisCache::new(
                &format!("redis://127.0.0.1:{port}"),
                "agora-test",
                Duration::from_millis(200),
            )
            .expect("a Redis URL"),
        );
        let aside = CacheAside::new(Arc::clone(&down) as Arc<dyn Cache>);
        for round in 0..3 {
            let value = aside
                .get_or_load("p1", HOUR, &["products"], async {
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(b"from the database"))
                })
                .await;
            assert_eq!(
                value.ok(),
                Some(Bytes::from_static(b"from the database")),
                "round {round}"
            );
            assert!(down.is_degraded());
        }
        aside.invalidate_tag("products").await;
        aside.invalidate("p1").await;
        assert_eq!(aside.stats().loads, 3, "every read went to the loader");
    }
}
