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
//! - [`RedisCache`] keeps entries in Redis, shared by every node, and degrades
//!   to misses while Redis is unreachable.
//! - [`TwoTierCache`] puts this process's memory in front of Redis; each
//!   node's memory tier forgets what changed when the bus tells it.
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

mod redis;
mod two_tier;

pub use self::redis::RedisCache;
pub use self::two_tier::{TierStats, TwoTierCache};

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

    /// Whether the cache answers now: a shared backend is asked, one in this
    /// process always does.
    async fn check(&self) -> bool {
        true
    }
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

/// The in-process cache, bounded by the bytes of its keys and values.
pub struct MemoryCache {
    entries: moka::sync::Cache<String, Entry>,
    /// The current generation of each tag ever deleted (absent: 0).
    generations: RwLock<HashMap<Arc<str>, u64>>,
}

impl MemoryCache {
    /// A cache of at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, entry: &Entry| {
                    u32::try_from(key.len() + entry.value.len()).unwrap_or(u32::MAX)
                })
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

/// The loads in flight, by key and epoch.
type Inflight = Mutex<HashMap<(String, u64), Arc<OnceCell<Bytes>>>>;

impl CacheStats {
    /// Sets the metrics of the cache `name` to these counts
    /// (`agora_cache_{hits,misses,loads}_total`).
    pub fn record(&self, name: &'static str) {
        ::metrics::counter!("agora_cache_hits_total", "cache" => name).absolute(self.hits);
        ::metrics::counter!("agora_cache_misses_total", "cache" => name).absolute(self.misses);
        ::metrics::counter!("agora_cache_loads_total", "cache" => name).absolute(self.loads);
    }
}

/// Read-through caching in front of a store, with single-flight loading.
pub struct CacheAside {
    cache: Arc<dyn Cache>,
    /// One cell per key and epoch being loaded; callers that miss the same key
    /// in the same epoch wait on it. A caller that comes after an invalidation
    /// is in a later epoch, so it never waits for a load that may have read the
    /// data from before the change.
    inflight: Inflight,
    /// Bumped by every invalidation: a load that saw it move does not store
    /// what it loaded.
    epoch: AtomicU64,
    /// Held shared while a load checks the epoch and stores, exclusively while an
    /// invalidation bumps it: no store lands after an invalidation it missed.
    storing: tokio::sync::RwLock<()>,
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
            storing: tokio::sync::RwLock::new(()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }
    }

    /// The value under `key`, from the cache or else from `load` (run once for
    /// all concurrent callers of the same key), then stored for `ttl` with
    /// `tags`. A failed load is not stored; each waiting caller then loads in
    /// turn.
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
        use tracing::Instrument as _;
        let span = if crate::telemetry::tracing_here() {
            tracing::debug_span!("cache.get", key, hit = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        let hit = span.clone();
        async move {
            if let Some(value) = self.cache.get(key).await {
                self.hits.fetch_add(1, Ordering::Relaxed);
                hit.record("hit", true);
                return Ok(value);
            }
            hit.record("hit", false);
            self.misses.fetch_add(1, Ordering::Relaxed);
            let epoch = self.epoch.load(Ordering::Acquire);
            let waiting = Waiting::join(&self.inflight, (key.to_string(), epoch));
            let mut ran = false;
            let loaded = waiting
                .cell
                .get_or_try_init(|| async {
                    // A load that finished between the miss above and joining
                    // stored its value before leaving the cell (unless an
                    // invalidation came first, or the cache has already evicted
                    // it): a value found now is that one, or newer, so use it.
                    if let Some(value) = self.cache.get(key).await {
                        return Ok(value);
                    }
                    ran = true;
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    load.await
                })
                .await
                .cloned();
            if ran && let Ok(value) = &loaded {
                self.store_unless_invalidated(epoch, &[(key, value.clone())], ttl, tags)
                    .await;
            }
            loaded
        }
        .instrument(span)
        .await
    }

    /// The values under `keys`, in their order: those the cache holds, and the
    /// others from one run of `load`, given the positions of the missing keys
    /// and answering for each a value or `None` (nothing there, so nothing
    /// stored). What it loads is stored for `ttl` with `tags`, unless an
    /// invalidation came first. Concurrent misses are not merged (each caller
    /// loads): this is for reads of several keys at once, where one query for
    /// all the missing ones beats one load per key.
    pub async fn get_many_or_load<E, F, Fut>(
        &self,
        keys: &[String],
        ttl: Duration,
        tags: &[&str],
        load: F,
    ) -> Result<Vec<Option<Bytes>>, E>
    where
        F: FnOnce(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<Option<Bytes>>, E>>,
    {
        // All at once: one round trip's wait on Redis, not one per key.
        let mut values =
            futures_util::future::join_all(keys.iter().map(|key| self.cache.get(key))).await;
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
        self.hits
            .fetch_add((keys.len() - missing.len()) as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return Ok(values);
        }
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        self.loads.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Acquire);
        let loaded = load(missing.clone()).await?;
        let found: Vec<_> = missing
            .iter()
            .zip(loaded)
            .filter_map(|(&i, value)| value.map(|v| (i, v)))
            .collect();
        let entries: Vec<(&str, Bytes)> = found
            .iter()
            .map(|(i, value)| (keys[*i].as_str(), value.clone()))
            .collect();
        self.store_unless_invalidated(epoch, &entries, ttl, tags)
            .await;
        for (i, value) in found {
            values[i] = Some(value);
        }
        Ok(values)
    }

    /// Stores `entries`, loaded in `epoch`, unless an invalidation has moved
    /// the epoch since (their source may have changed after they were read).
    async fn store_unless_invalidated(
        &self,
        epoch: u64,
        entries: &[(&str, Bytes)],
        ttl: Duration,
        tags: &[&str],
    ) {
        let _storing = self.storing.read().await;
        if self.epoch.load(Ordering::Acquire) == epoch {
            futures_util::future::join_all(
                entries
                    .iter()
                    .map(|(key, value)| self.cache.set(key, value.clone(), ttl, tags)),
            )
            .await;
        }
    }

    /// Forgets `key`.
    pub async fn invalidate(&self, key: &str) {
        let _storing = self.storing.write().await;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.delete(key).await;
    }

    /// Forgets every entry tagged `tag`.
    pub async fn invalidate_tag(&self, tag: &str) {
        let _storing = self.storing.write().await;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.delete_tag(tag).await;
    }

    /// An invalidation of `tag` to make after a write: [`Invalidation::now`]
    /// once the write is done, or, if the caller is dropped before (a cancelled
    /// request whose write may have taken effect), in the background.
    pub fn invalidation(self: &Arc<Self>, tag: &'static str) -> Invalidation {
        Invalidation {
            aside: Some(Arc::clone(self)),
            tag,
        }
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

/// A caller waiting on a key's load; the last one to leave removes the cell, so
/// loads that were all cancelled leave nothing behind.
struct Waiting<'a> {
    inflight: &'a Inflight,
    key: Option<(String, u64)>,
    cell: Arc<OnceCell<Bytes>>,
}

impl<'a> Waiting<'a> {
    fn join(inflight: &'a Inflight, key: (String, u64)) -> Self {
        let cell = Arc::clone(
            inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_default(),
        );
        Self {
            inflight,
            key: Some(key),
            cell,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = self.key.take()
            && inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &self.cell))
            // The map's reference and this one: nobody else waits.
            && Arc::strong_count(&self.cell) == 2
        {
            inflight.remove(&key);
        }
    }
}

/// An invalidation that happens even when its caller is dropped; see
/// [`CacheAside::invalidation`].
#[must_use = "call now() after the write"]
pub struct Invalidation {
    aside: Option<Arc<CacheAside>>,
    tag: &'static str,
}

impl Invalidation {
    /// Invalidates now, and returns once done.
    pub async fn now(mut self) {
        if let Some(aside) = &self.aside {
            aside.invalidate_tag(self.tag).await;
        }
        // Only once done: dropped half-way, it is made again in the background.
        self.aside = None;
    }
}

impl Drop for Invalidation {
    fn drop(&mut self) {
        if let Some(aside) = self.aside.take() {
            let tag = self.tag;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { aside.invalidate_tag(tag).await });
                }
                Err(_) => tracing::warn!(tag, "no runtime to invalidate cached reads on"),
            }
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
        CacheAside::new(Arc::new(MemoryCache::new(1 << 20)))
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
    async fn a_caller_after_an_invalidation_does_not_wait_for_an_older_load() {
        let aside = Arc::new(aside());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        // A load that read the product before it changed, and is slow to finish.
        let old = tokio::spawn({
            let aside = Arc::clone(&aside);
            async move {
                aside
                    .get_or_load("p1", HOUR, &["products"], async {
                        let _ = started.send(());
                        let _ = released.await;
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"old"))
                    })
                    .await
            }
        });
        has_started.await.expect("the old load starts");
        aside.invalidate_tag("products").await;
        let runs = AtomicU64::new(0);
        assert_eq!(load_counting(&aside, "p1", "new", &runs).await, "new");
        let _ = release.send(());
        assert_eq!(
            old.await.expect("joined").ok(),
            Some(Bytes::from_static(b"old"))
        );
        assert_eq!(
            load_counting(&aside, "p1", "newer", &runs).await,
            "new",
            "the new value is the one kept"
        );
    }

    /// Keys `k0`… and their loads' answers: `v{i}`, or nothing for `absent`.
    async fn many(
        aside: &CacheAside,
        n: usize,
        absent: usize,
        loaded: &std::sync::Mutex<Vec<Vec<usize>>>,
        invalidate_in_load: bool,
    ) -> Vec<Option<Bytes>> {
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        aside
            .get_many_or_load(&keys, HOUR, &["products"], |missing| async move {
                if invalidate_in_load {
                    aside.invalidate_tag("products").await;
                }
                let answers = missing
                    .iter()
                    .map(|&i| (i != absent).then(|| Bytes::from(format!("v{i}"))))
                    .collect();
                loaded.lock().expect("the list").push(missing);
                Ok::<_, std::convert::Infallible>(answers)
            })
            .await
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test]
    async fn many_keys_load_only_the_missing_ones_in_one_load() {
        let aside = aside();
        let loaded = std::sync::Mutex::new(Vec::new());
        let v = |i: usize| Some(Bytes::from(format!("v{i}")));
        assert_eq!(many(&aside, 2, 9, &loaded, false).await, vec![v(0), v(1)]);
        // k0 and k1 are cached; k3 has nothing, so it is loaded every time.
        let all = vec![v(0), v(1), v(2), None];
        assert_eq!(many(&aside, 4, 3, &loaded, false).await, all);
        assert_eq!(many(&aside, 4, 3, &loaded, false).await, all);
        assert_eq!(
            *loaded.lock().expect("the list"),
            vec![vec![0, 1], vec![2, 3], vec![3]]
        );
        let stats = aside.stats();
        assert_eq!((stats.hits, stats.misses, stats.loads), (5, 5, 3));
        // Nothing missing: no load at all.
        assert_eq!(many(&aside, 3, 9, &loaded, false).await, all[..3].to_vec());
        assert_eq!(loaded.lock().expect("the list").len(), 3);
    }

    #[tokio::test]
    async fn many_keys_loaded_across_an_invalidation_are_not_stored() {
        let aside = aside();
        let loaded = std::sync::Mutex::new(Vec::new());
        let first = many(&aside, 2, 9, &loaded, true).await;
        assert_eq!(first.iter().flatten().count(), 2, "answered all the same");
        many(&aside, 2, 9, &loaded, false).await;
        assert_eq!(
            *loaded.lock().expect("the list"),
            vec![vec![0, 1], vec![0, 1]],
            "nothing was kept from the load the invalidation overtook"
        );
    }

    #[tokio::test]
    async fn loads_whose_callers_all_left_leave_nothing_in_flight() {
        let aside = aside();
        let never = aside.get_or_load("p1", HOUR, &[], std::future::pending::<Result<Bytes, ()>>());
        let cut = tokio::time::timeout(Duration::from_millis(1), never).await;
        assert!(cut.is_err(), "the load never finishes");
        assert!(aside.inflight.lock().expect("the map").is_empty());
        let runs = AtomicU64::new(0);
        assert_eq!(load_counting(&aside, "p1", "v1", &runs).await, "v1");
        assert!(aside.inflight.lock().expect("the map").is_empty());
    }

    #[tokio::test]
    async fn an_invalidation_dropped_before_it_ran_still_happens() {
        let aside = Arc::new(aside());
        let runs = AtomicU64::new(0);
        load_counting(&aside, "p1", "v1", &runs).await;
        drop(aside.invalidation("products"));
        // The invalidation runs in the background; this task yields until it
        // has (a bound turns a lost invalidation into a failure, not a hang).
        let ran = tokio::time::timeout(Duration::from_secs(5), async {
            while aside.epoch.load(Ordering::Acquire) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(ran.is_ok(), "the dropped invalidation never ran");
        assert_eq!(load_counting(&aside, "p1", "v2", &runs).await, "v2");
        aside.invalidation("products").now().await;
        assert_eq!(load_counting(&aside, "p1", "v3", &runs).await, "v3");
    }

    #[tokio::test]
    async fn deleting_a_tag_leaves_entries_without_it() {
        let cache = MemoryCache::new(1 << 20);
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
        let cache = MemoryCache::new(1 << 20);
        cache
            .set("gone", Bytes::from_static(b"x"), Duration::ZERO, &[])
            .await;
        cache.set("kept", Bytes::from_static(b"y"), HOUR, &[]).await;
        assert_eq!(cache.get("gone").await, None);
        assert_eq!(cache.get("kept").await, Some(Bytes::from_static(b"y")));
    }
}
