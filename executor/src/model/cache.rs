//! The embedding cache (`model.cache_bytes`): a text a model has already embedded in this
//! executor is not computed again. A product catalog re-sent every night, most of it unchanged,
//! costs the model only what changed.
//!
//! - [`EmbeddingCache`]: vectors by the SHA-256 of the exact text fed to the model, bounded in
//!   bytes, least recently used out first. One per model (so a key is the model and the text's
//!   hash), shared by every task and Arrow Flight call of the executor.
//! - [`Cached`]: an [`Embed`] in front of the model's own: hits are copied out, misses (each
//!   distinct text once) go to the model, and their vectors are stored as the model gave them,
//!   so a vector from the cache is bit for bit the one computed.
//!
//! A text's vector does not depend on the batch it ran in (the attention mask hides the
//! padding; `tests/workers.rs` checks token-budget batches against fixed ones), which is what
//! makes caching a vector sound.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};
use sha2::{Digest, Sha256};

use super::{Embed, Embedded, ModelError};

/// A text's key: the SHA-256 of its UTF-8 bytes (a collision is not a practical concern).
type Key = [u8; 32];

/// What an entry costs beyond its vector: its key twice (map and order) and the maps' slots.
const ENTRY_OVERHEAD: usize = 128;

/// Hits and misses of one call (a window's texts, a Flight call), for the task's progress.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCount {
    pub hits: u64,
    pub misses: u64,
}

impl std::ops::AddAssign for CacheCount {
    fn add_assign(&mut self, other: CacheCount) {
        self.hits += other.hits;
        self.misses += other.misses;
    }
}

/// The cache's Prometheus series for one model.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub evictions: IntCounter,
    pub bytes: IntGauge,
    pub entries: IntGauge,
}

struct Entry {
    vector: Arc<[f32]>,
    /// Its place in `Lru::order`: when it was last used.
    used: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Key, Entry>,
    /// Keys by last use, oldest first.
    order: BTreeMap<u64, Key>,
    clock: u64,
    bytes: usize,
}

/// Vectors by text, at most `capacity` bytes of them.
pub struct EmbeddingCache {
    lru: Mutex<Lru>,
    capacity: usize,
    metrics: CacheMetrics,
}

impl EmbeddingCache {
    pub fn new(capacity: usize, metrics: CacheMetrics) -> EmbeddingCache {
        EmbeddingCache { lru: Mutex::new(Lru::default()), capacity, metrics }
    }

    pub fn key(text: &str) -> Key {
        Sha256::digest(text.as_bytes()).into()
    }

    /// Each key's vector where the cache has it (now the most recently used).
    fn get_all(&self, keys: &[Key]) -> Vec<Option<Arc<[f32]>>> {
        let mut lru = self.lru.lock().expect("the cache's lock is not poisoned");
        keys.iter().map(|k| lru.touch(k)).collect()
    }

    /// Stores vectors, then drops the least recently used until the cache fits.
    fn put_all(&self, entries: impl IntoIterator<Item = (Key, Arc<[f32]>)>) {
        let mut lru = self.lru.lock().expect("the cache's lock is not poisoned");
        for (key, vector) in entries {
            lru.insert(key, vector);
        }
        let mut evicted = 0;
        while lru.bytes > self.capacity && lru.evict_oldest() {
            evicted += 1;
        }
        self.metrics.evictions.inc_by(evicted);
        self.metrics.bytes.set(lru.bytes as i64);
        self.metrics.entries.set(lru.entries.len() as i64);
    }
}

impl Lru {
    fn cost(vector: &[f32]) -> usize {
        std::mem::size_of_val(vector) + ENTRY_OVERHEAD
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn touch(&mut self, key: &Key) -> Option<Arc<[f32]>> {
        let now = self.tick();
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.used);
        entry.used = now;
        self.order.insert(now, *key);
        Some(entry.vector.clone())
    }

    fn insert(&mut self, key: Key, vector: Arc<[f32]>) {
        let now = self.tick();
        self.bytes += Lru::cost(&vector);
        if let Some(old) = self.entries.insert(key, Entry { vector, used: now }) {
            self.order.remove(&old.used);
            self.bytes -= Lru::cost(&old.vector);
        }
        self.order.insert(now, key);
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_first() else { return false };
        let entry = self.entries.remove(&key).expect("order and entries agree");
        self.bytes -= Lru::cost(&entry.vector);
        true
    }
}

/// A model's [`Embed`] with the cache in front of it.
pub struct Cached {
    inner: Arc<dyn Embed>,
    cache: EmbeddingCache,
}

/// What [`Cached::embed_counted`] gives: the vectors as [`Embed::embed`] does, and the hits and
/// misses.
pub struct CountedVectors {
    pub vectors: Vec<f32>,
    pub batch_sizes: Vec<usize>,
    pub count: CacheCount,
}

impl Cached {
    pub fn new(inner: Arc<dyn Embed>, cache: EmbeddingCache) -> Cached {
        Cached { inner, cache }
    }

    /// Embeds `texts`, computing only those the cache does not hold (each distinct one once).
    pub async fn embed_counted(self: Arc<Self>, texts: Vec<String>) -> Result<CountedVectors, ModelError> {
        let dim = self.inner.dim();
        let keys: Vec<Key> = texts.iter().map(|t| EmbeddingCache::key(t)).collect();
        let found = self.cache.get_all(&keys);
        // The texts to compute, each distinct one once, and the rows that wait for each.
        let mut missing: Vec<String> = Vec::new();
        let mut first_of: HashMap<Key, usize> = HashMap::new();
        let mut waiting: Vec<(usize, usize)> = Vec::new();
        for (row, (text, hit)) in texts.into_iter().zip(&found).enumerate() {
            if hit.is_none() {
                let next = missing.len();
                let at = *first_of.entry(keys[row]).or_insert(next);
                if at == next {
                    missing.push(text);
                }
                waiting.push((row, at));
            }
        }
        let count = CacheCount { hits: (keys.len() - waiting.len()) as u64, misses: waiting.len() as u64 };
        self.cache.metrics.hits.inc_by(count.hits);
        self.cache.metrics.misses.inc_by(count.misses);
        let (computed, batch_sizes) = match missing.is_empty() {
            true => (Vec::new(), Vec::new()),
            false => self.inner.clone().embed(missing).await?,
        };
        let computed: Vec<Arc<[f32]>> = computed.chunks_exact(dim).map(Arc::from).collect();
        let mut vectors = vec![0f32; keys.len() * dim];
        for (row, hit) in found.iter().enumerate() {
            if let Some(v) = hit {
                vectors[row * dim..(row + 1) * dim].copy_from_slice(v);
            }
        }
        for &(row, at) in &waiting {
            vectors[row * dim..(row + 1) * dim].copy_from_slice(&computed[at]);
        }
        let stored = first_of.into_iter().map(|(key, at)| (key, computed[at].clone()));
        self.cache.put_all(stored);
        Ok(CountedVectors { vectors, batch_sizes, count })
    }
}

impl Embed for Cached {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn embed(self: Arc<Self>, texts: Vec<String>) -> Embedded {
        Box::pin(async move { self.embed_counted(texts).await.map(|c| (c.vectors, c.batch_sizes)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::testing::Lengths;

    fn metrics() -> CacheMetrics {
        let counter = |n: &str| IntCounter::new(n, n).unwrap();
        let gauge = |n: &str| IntGauge::new(n, n).unwrap();
        CacheMetrics {
            hits: counter("hits"),
            misses: counter("misses"),
            evictions: counter("evictions"),
            bytes: gauge("bytes"),
            entries: gauge("entries"),
        }
    }

    fn cached(capacity: usize) -> Arc<Cached> {
        Arc::new(Cached::new(Arc::new(Lengths), EmbeddingCache::new(capacity, metrics())))
    }

    fn texts(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_text_seen_before_is_not_computed_again() {
        let c = cached(1 << 20);
        let first = c.clone().embed_counted(texts(&["red hat", "blue", "red hat"])).await.unwrap();
        // A text twice in one call is computed once.
        assert_eq!(first.batch_sizes, [2]);
        assert_eq!(first.count, CacheCount { hits: 0, misses: 3 });
        assert_eq!(first.vectors, [7.0, 1.0, 4.0, 1.0, 7.0, 1.0]);
        let second = c.clone().embed_counted(texts(&["blue", "green", "red hat"])).await.unwrap();
        assert_eq!(second.batch_sizes, [1], "only green is computed");
        assert_eq!(second.count, CacheCount { hits: 2, misses: 1 });
        assert_eq!(second.vectors, [4.0, 1.0, 5.0, 1.0, 7.0, 1.0]);
        assert_eq!(c.cache.metrics.hits.get(), 2);
        assert_eq!(c.cache.metrics.misses.get(), 4);
    }

    #[tokio::test]
    async fn the_least_recently_used_text_leaves_first() {
        // Room for two vectors of 2 floats.
        let c = cached(2 * (8 + ENTRY_OVERHEAD));
        c.clone().embed_counted(texts(&["a", "bb"])).await.unwrap();
        // "a" is used again, so "bb" is the oldest when "ccc" comes.
        c.clone().embed_counted(texts(&["a"])).await.unwrap();
        c.clone().embed_counted(texts(&["ccc"])).await.unwrap();
        assert_eq!(c.cache.metrics.evictions.get(), 1);
        assert_eq!(c.cache.metrics.entries.get(), 2);
        let again = c.clone().embed_counted(texts(&["a", "bb", "ccc"])).await.unwrap();
        assert_eq!(again.count, CacheCount { hits: 2, misses: 1 }, "bb was evicted");
        assert!(c.cache.metrics.bytes.get() as usize <= 2 * (8 + ENTRY_OVERHEAD));
    }
}
