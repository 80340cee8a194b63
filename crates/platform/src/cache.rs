//! The cache: a [`Cache`] of byte values with a time to live and tags, and
//! [`CacheAside`], the read-through pattern every module uses in front of its
//! store.
//!
//! - [`MemoryCache`] (the default) keeps entries in this process, in moka.
//!   Deleting a tag bumps the tag's generation; an entry remembers the
//!   generations of its tags when it was stored, and one whose tag has moved on
//!   is a miss. So invalidating every list page of the catalog is one counter,
//!   not a scan.
//! - [`CacheAside::get_or_load`] answers from the cache, or runs the loader once
//!   however many callers miss the same key together (single flight), and stores
//!   what it loaded — unless something was invalidated while it loaded, since the
//!   loaded value may then be older than the invalidation.
//!
//! Values are bytes (rendered JSON, typically), so that a shared backend such as
//! Redis can hold them too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use tokio::sync::OnceCell;

/// A cache of byte values by key.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value stored under `key`, unless it expired or one of its tags was
    /// deleted since.
    async fn get(&self, key: &str) -> Option<Bytes>;

    /// Stores `value` under `key` for `ttl`, tagged with `tags`.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration, tags: &[&str]);

    /// Forgets `key`.
    async fn delete(&self, key: &str);

    /// Forgets every entry tagged with `tag`.
    async fn delete_tag(&self, tag: &str);
}

/// An entry of the memory cache.
#[derive(Clone)]
struct Entry {
    value: Bytes,
    ttl: Duration,
    /// Each tag with its generation when the entry was stored.
    tags: Arc<[(Arc<str>, u64)]>,
}

/// Expires each entry after its own time to live.
struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, entry: &Entry, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The in-process cache, bounded by its number of entries.
pub struct MemoryCache {
    entries: moka::sync::Cache<String, Entry>,
    /// The current generation of each tag ever deleted (absent: 0).
    generations: RwLock<HashMap<Arc<str>, u64>>,
}

impl MemoryCache {
    /// A cache of at most `max_entries` entries.
    pub fn new(max_entries: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            generations: RwLock::new(HashMap::new()),
        }
    }

    fn generation(&self, tag: &str) -> u64 {
        self.generations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tag)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Option<Bytes> {
        let entry = self.entries.get(key)?;
        if entry
            .tags
            .iter()
            .any(|(tag, generation)| self.generation(tag) != *generation)
        {
            self.entries.invalidate(key);
            return None;
        }
        Some(entry.value)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration, tags: &[&str]) {
        let tags = tags
            .iter()
            .map(|t| (Arc::<str>::from(*t), self.generation(t)))
            .collect();
        self.entries
            .insert(key.to_string(), Entry { value, ttl, tags });
    }

    async fn delete(&self, key: &str) {
        self.entries.invalidate(key);
    }

    async fn delete_tag(&self, tag: &str) {
        let mut generations = self
            .generations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *generations.entry(Arc::from(tag)).or_insert(0) += 1;
    }
}

/// What a [`CacheAside`] has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads the cache could not answer.
    pub misses: u64,
    /// Loader runs (at most one per key at a time, however many missed).
    pub loads: u64,
}

/// Read-through caching in front of a store, with single-flight loading.
pub struct CacheAside {
    cache: Arc<dyn Cache>,
    /// One cell per key being loaded; callers that miss while it loads wait on it.
    inflight: Mutex<HashMap<String, Arc<OnceCell<Bytes>>>>,
    /// Bumped by every invalidation through this value: a load that saw it move
    /// does not store what it loaded.
    epoch: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
}

impl CacheAside {
    /// Read-through caching over `cache`.
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self {
            cache,
            inflight: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }
    }

    /// The value under `key`, from the cache or else from `load` (run once for
    /// all concurrent callers of the same key), then stored for `ttl` with
    /// `tags`. A failed load is not stored; each waiting caller then loads again
    /// (the next one to miss runs its own loader).
    pub async fn get_or_load<E, F>(
        &self,
        key: &str,
        ttl: Duration,
        tags: &[&str],
        load: F,
    ) -> Result<Bytes, E>
    where
        F: Future<Output = Result<Bytes, E>>,
    {
        if let Some(value) = self.cache.get(key).await {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(value);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::clone(
            self.inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.to_string())
                .or_default(),
        );
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut ran = false;
        let loaded = cell
            .get_or_try_init(|| {
                ran = true;
                self.loads.fetch_add(1, Ordering::Relaxed);
                load
            })
            .await
            .cloned();
        if ran {
            {
                let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
                if inflight.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    inflight.remove(key);
                }
            }
            if let Ok(value) = &loaded
                && self.epoch.load(Ordering::Acquire) == epoch
            {
                self.cache.set(key, value.clone(), ttl, tags).await;
            }
        }
        loaded
    }

    /// Forgets `key`.
    pub async fn invalidate(&self, key: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.delete(key).await;
    }

    /// Forgets every entry tagged `tag`.
    pub async fn invalidate_tag(&self, tag: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.delete_tag(tag).await;
    }

    /// Hits, misses and loads so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for CacheAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheAside")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn aside() -> CacheAside {
        CacheAside::new(Arc::new(MemoryCache::new(1_000)))
    }

    async fn load_counting(
        aside: &CacheAside,
        key: &str,
        value: &'static str,
        runs: &AtomicU64,
    ) -> Bytes {
        aside
            .get_or_load(key, HOUR, &["products"], async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<_, std::convert::Infallible>(Bytes::from_static(value.as_bytes()))
            })
            .await
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_of_one_key_load_it_once() {
        let aside = Arc::new(aside());
        let runs = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (aside, runs) = (Arc::clone(&aside), Arc::clone(&runs));
            tasks.spawn(async move { load_counting(&aside, "p1", "one", &runs).await });
        }
        for value in tasks.join_all().await {
            assert_eq!(value, "one");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one load for 50 callers");
        let stats = aside.stats();
        assert_eq!(stats.loads, 1);
        assert_eq!(stats.hits + stats.misses, 50);
    }

    #[tokio::test]
    async fn a_stored_value_is_a_hit_until_its_tag_or_key_is_invalidated() {
        let aside = aside();
        let runs = AtomicU64::new(0);
        assert_eq!(load_counting(&aside, "p1", "v1", &runs).await, "v1");
        assert_eq!(
            load_counting(&aside, "p1", "v2", &runs).await,
            "v1",
            "a hit"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        aside.invalidate_tag("products").await;
        assert_eq!(load_counting(&aside, "p1", "v2", &runs).await, "v2");
        aside.invalidate("p1").await;
        assert_eq!(load_counting(&aside, "p1", "v3", &runs).await, "v3");
        assert_eq!(
            aside.stats(),
            CacheStats {
                hits: 1,
                misses: 3,
                loads: 3
            }
        );
    }

    #[tokio::test]
    async fn a_failed_load_is_not_stored() {
        let aside = aside();
        let failed: Result<Bytes, &str> = aside
            .get_or_load("p1", HOUR, &[], async { Err("database down") })
            .await;
        assert_eq!(failed, Err("database down"));
        let runs = AtomicU64::new(0);
        assert_eq!(load_counting(&aside, "p1", "v1", &runs).await, "v1");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the next caller loads");
    }

    #[tokio::test]
    async fn a_value_loaded_across_an_invalidation_is_not_stored() {
        let aside = aside();
        // The load reads the old row; the row changes and is invalidated before
        // the load finishes: storing the old value would serve it until its TTL.
        let stale = aside
            .get_or_load("p1", HOUR, &["products"], async {
                aside.invalidate_tag("products").await;
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"old"))
            })
            .await;
        assert_eq!(stale.ok(), Some(Bytes::from_static(b"old")));
        let runs = AtomicU64::new(0);
        assert_eq!(load_counting(&aside, "p1", "new", &runs).await, "new");
    }

    #[tokio::test]
    async fn deleting_a_tag_leaves_entries_without_it() {
        let cache = MemoryCache::new(100);
        cache
            .set("a", Bytes::from_static(b"a"), HOUR, &["lists"])
            .await;
        cache
            .set("b", Bytes::from_static(b"b"), HOUR, &["products"])
            .await;
        cache.delete_tag("lists").await;
        assert_eq!(cache.get("a").await, None);
        assert_eq!(cache.get("b").await, Some(Bytes::from_static(b"b")));
        // An entry stored after the deletion is fresh.
        cache
            .set("a", Bytes::from_static(b"a2"), HOUR, &["lists"])
            .await;
        assert_eq!(cache.get("a").await, Some(Bytes::from_static(b"a2")));
    }

    #[tokio::test]
    async fn an_entry_expires_after_its_ttl() {
        let cache = MemoryCache::new(100);
        cache
            .set("gone", Bytes::from_static(b"x"), Duration::ZERO, &[])
            .await;
        cache.set("kept", Bytes::from_static(b"y"), HOUR, &[]).await;
        assert_eq!(cache.get("gone").await, None);
        assert_eq!(cache.get("kept").await, Some(Bytes::from_static(b"y")));
    }
}
