//! The two-tier cache: this process's memory in front of the shared Redis.
//!
//! A read is answered from memory when it can, else from Redis (and kept in
//! memory for next time), else it misses. A write goes to both. Deleting a
//! tag deletes it in Redis and forgets **everything** in memory (the memory
//! tier does not know the tags of what it copied from Redis; the catalog, the
//! one user, has one tag anyway). Other nodes hear of a change through the
//! bus (`Bus::subscribe_each_node`) and delete the tag themselves, so their
//! memory tier forgets it too, a moment after the writer's. A copy from Redis
//! that was read before such a deletion is not kept after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;

use super::{Cache, MemoryCache, RedisCache};

/// Reads answered by each tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TierStats {
    /// From this process's memory.
    pub memory_hits: u64,
    /// From Redis (then copied to memory).
    pub shared_hits: u64,
    /// By neither.
    pub misses: u64,
}

/// Memory in front of Redis.
pub struct TwoTierCache {
    memory: MemoryCache,
    shared: RedisCache,
    /// How long a copy from Redis stays in memory at most.
    memory_ttl: Duration,
    /// Bumped by every deletion: a copy read from Redis before it is not kept.
    epoch: AtomicU64,
    /// Held shared while a copy checks the epoch and is stored, exclusively
    /// while a deletion bumps it.
    storing: tokio::sync::RwLock<()>,
    memory_hits: AtomicU64,
    shared_hits: AtomicU64,
    misses: AtomicU64,
}

/// The tag every memory entry carries, so that one deletion forgets them all.
const EVERYTHING: &str = "\u{0}two-tier";

impl TwoTierCache {
    /// `memory` in front of `shared`; copies from `shared` stay in memory for
    /// at most `memory_ttl`.
    pub fn new(memory: MemoryCache, shared: RedisCache, memory_ttl: Duration) -> Self {
        Self {
            memory,
            shared,
            memory_ttl,
            epoch: AtomicU64::new(0),
            storing: tokio::sync::RwLock::new(()),
            memory_hits: AtomicU64::new(0),
            shared_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The reads each tier answered so far.
    pub fn stats(&self) -> TierStats {
        TierStats {
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            shared_hits: self.shared_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Whether the shared tier's last command failed.
    pub fn is_degraded(&self) -> bool {
        self.shared.is_degraded()
    }
}

#[async_trait]
impl Cache for TwoTierCache {
    async fn get(&self, key: &str) -> Option<Bytes> {
        if let Some(value) = self.memory.get(key).await {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Some(value);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(value) = self.shared.get(key).await else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.shared_hits.fetch_add(1, Ordering::Relaxed);
        let _storing = self.storing.read().await;
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.memory
                .set(key, value.clone(), self.memory_ttl, &[EVERYTHING])
                .await;
        }
        Some(value)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration, tags: &[&str]) {
        self.shared.set(key, value.clone(), ttl, tags).await;
        self.memory
            .set(key, value, ttl.min(self.memory_ttl), &[EVERYTHING])
            .await;
    }

    async fn delete(&self, key: &str) {
        self.shared.delete(key).await;
        self.memory.delete(key).await;
    }

    async fn delete_tag(&self, tag: &str) {
        // Redis first: a copy made after the memory tier forgot must not
        // come from the entries being deleted.
        self.shared.delete_tag(tag).await;
        let _storing = self.storing.write().await;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.memory.delete_tag(EVERYTHING).await;
    }

    async fn check(&self) -> bool {
        self.shared.check().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cache::CacheAside;

    const HOUR: Duration = Duration::from_secs(3600);

    fn redis(prefix: &str) -> RedisCache {
        let url = std::env::var("AGORA_TEST_REDIS_URL")
            .expect("AGORA_TEST_REDIS_URL names the Redis to test against");
        RedisCache::new(&url, prefix, Duration::from_secs(2)).expect("a Redis URL")
    }

    fn node(prefix: &str) -> Arc<TwoTierCache> {
        Arc::new(TwoTierCache::new(
            MemoryCache::new(1 << 20),
            redis(prefix),
            HOUR,
        ))
    }

    /// A value stored by one node is read by another from Redis, then from
    /// its memory; a tag deleted on one node is gone from Redis at once, and
    /// from the other node's memory when that node deletes it too (as the
    /// bus has every node do).
    #[tokio::test]
    #[ignore = "needs Redis: set AGORA_TEST_REDIS_URL (see docs/operations.md)"]
    async fn nodes_share_through_redis_and_forget_through_their_own_deletion() {
        let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
        let (a, b) = (node(&prefix), node(&prefix));
        a.set("p:1", Bytes::from_static(b"one"), HOUR, &["catalog"])
            .await;
        assert_eq!(b.get("p:1").await.as_deref(), Some(&b"one"[..]));
        assert_eq!(b.get("p:1").await.as_deref(), Some(&b"one"[..]));
        assert_eq!(
            b.stats(),
            TierStats {
                memory_hits: 1,
                shared_hits: 1,
                misses: 0
            }
        );

        a.delete_tag("catalog").await;
        assert_eq!(a.get("p:1").await, None, "the writer forgot");
        // b still has its memory copy until it hears of the change.
        assert_eq!(b.get("p:1").await.as_deref(), Some(&b"one"[..]));
        b.delete_tag("catalog").await;
        assert_eq!(b.get("p:1").await, None);
        assert_eq!(b.stats().misses, 1);
    }

    /// With Redis down the memory tier still answers what it holds, and
    /// reads through cache-aside go to the loader: nothing fails.
    #[tokio::test]
    async fn with_redis_down_the_memory_tier_still_answers() {
        // Nothing listens on this port.
        let down = RedisCache::new("redis://127.0.0.1:1", "x", Duration::from_millis(200))
            .expect("a Redis URL");
        let cache = Arc::new(TwoTierCache::new(MemoryCache::new(1 << 20), down, HOUR));
        cache.set("k", Bytes::from_static(b"v"), HOUR, &["t"]).await;
        assert_eq!(cache.get("k").await.as_deref(), Some(&b"v"[..]));
        assert!(!cache.check().await);
        assert!(cache.is_degraded());
        let aside = CacheAside::new(cache.clone());
        let loaded = aside
            .get_or_load("other", HOUR, &["t"], async {
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"loaded"))
            })
            .await
            .expect("loaded");
        assert_eq!(&loaded[..], b"loaded");
        cache.delete_tag("t").await;
        assert_eq!(cache.get("k").await, None, "forgotten though Redis is down");
    }

    /// A copy read from Redis before a deletion is not kept after it.
    #[tokio::test]
    #[ignore = "needs Redis: set AGORA_TEST_REDIS_URL (see docs/operations.md)"]
    async fn a_copy_read_before_a_deletion_is_not_kept() {
        let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
        let (a, b) = (node(&prefix), node(&prefix));
        a.set("p:1", Bytes::from_static(b"old"), HOUR, &["catalog"])
            .await;
        // b's read and its deletion race; whatever the order, b does not
        // keep the old value after the deletion.
        let (read, ()) = tokio::join!(b.get("p:1"), b.delete_tag("catalog"));
        assert!(read.is_none() || read.as_deref() == Some(&b"old"[..]));
        assert_eq!(b.get("p:1").await, None);
    }
}
