//! Cache storage in memory: a bounded, TTL-aware LRU.
//!
//! Bounded twice, by entry count and by
//! bytes (key + value); the least recently used entries are evicted first.
//! Expired entries are dropped when touched and by a background sweep, and
//! take their tag index entries with them, so nothing grows without bound.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use tokio::time::Instant;

use super::config::MemoryConfig;
use super::store::{
    CacheStore, Condition, Described, Entry, KeyPage, LeaseAttempt, LeaseRead, LeaseRequest,
    SetOutcome, StoreStats, Write, wait_for_lease,
};
use crate::backend::{BackendError, glob};

/// Cache storage in local memory.
pub struct MemoryStore {
    /// A plain mutex: every critical section is short, synchronous map work
    /// with no `.await` inside, which is what `std::sync::Mutex` is for.
    inner: Mutex<Inner>,
    bounds: MemoryConfig,
    /// Ticks on every write, to wake `GetOrLease` waiters.
    written: tokio::sync::broadcast::Sender<()>,
}

struct Inner {
    entries: LruCache<String, MemEntry>,
    /// tag -> keys carrying it; kept exact under the same lock as `entries`.
    tags: HashMap<String, HashSet<String>>,
    /// (expiry, key) for every entry with a TTL, so a sweep finds expired
    /// entries without walking the whole map.
    expiries: BTreeSet<(Instant, String)>,
    bytes: usize,
    /// Source of versions: one counter for the whole store, so a key that is
    /// deleted and written again never reuses a version.
    last_version: u64,
    evictions: u64,
    /// Values written with a stale window, kept for `GetOrLease` until the
    /// window closes (the value is shared with the entry, not copied).
    stale: HashMap<String, StaleCopy>,
    /// `GetOrLease` leases: key -> when the lease runs out.
    leases: HashMap<String, Instant>,
}

struct StaleCopy {
    value: Bytes,
    version: u64,
    until: Instant,
    /// The entry's tags: tag invalidation removes the copy too.
    tags: Vec<String>,
}

struct MemEntry {
    value: Bytes,
    version: u64,
    /// The TTL the value was written with, for sliding refreshes.
    ttl: Option<Duration>,
    expires_at: Option<Instant>,
    tags: Vec<String>,
}

impl MemEntry {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    fn to_entry(&self, now: Instant) -> Entry {
        Entry {
            value: self.value.clone(),
            version: self.version,
            ttl: self.expires_at.map(|at| at.saturating_duration_since(now)),
        }
    }
}

fn footprint(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

impl MemoryStore {
    /// Creates the store and, inside a Tokio runtime, its background sweep
    /// (which stops when the store is dropped).
    pub fn new(bounds: MemoryConfig) -> Arc<Self> {
        let store = Arc::new(MemoryStore {
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                tags: HashMap::new(),
                expiries: BTreeSet::new(),
                bytes: 0,
                last_version: 0,
                evictions: 0,
                stale: HashMap::new(),
                leases: HashMap::new(),
            }),
            bounds,
            written: tokio::sync::broadcast::channel(16).0,
        });
        crate::backend::memory::spawn_sweep(Arc::downgrade(&store), |s| {
            s.sweep_expired();
        });
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later calls would trip over worse than the panic itself.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.entries.len();
        inner.entries.clear();
        inner.tags.clear();
        inner.expiries.clear();
        inner.stale.clear();
        inner.leases.clear();
        inner.bytes = 0;
        n
    }

    /// Drops every expired entry now; returns how many.
    pub fn sweep_expired(&self) -> usize {
        self.lock().sweep(Instant::now())
    }

    /// How many keys the tag index holds for `tag` (for tests: proves that
    /// expiry and deletion leave no index garbage behind).
    pub fn tag_index_len(&self, tag: &str) -> usize {
        self.lock().tags.get(tag).map_or(0, HashSet::len)
    }
}

impl Inner {
    fn remove(&mut self, key: &str) -> Option<MemEntry> {
        let entry = self.entries.pop(key)?;
        self.bytes -= footprint(key, &entry.value);
        if let Some(at) = entry.expires_at {
            self.expiries.remove(&(at, key.to_string()));
        }
        for tag in &entry.tags {
            if let Some(keys) = self.tags.get_mut(tag) {
                keys.remove(key);
                if keys.is_empty() {
                    self.tags.remove(tag);
                }
            }
        }
        Some(entry)
    }

    /// The live entry for `key`, dropping it first if it has expired.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut MemEntry> {
        if self.entries.peek(key).is_some_and(|e| e.is_expired(now)) {
            self.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn insert(&mut self, key: String, entry: MemEntry) {
        self.remove(&key);
        self.bytes += footprint(&key, &entry.value);
        if let Some(at) = entry.expires_at {
            self.expiries.insert((at, key.clone()));
        }
        for tag in &entry.tags {
            self.tags
                .entry(tag.clone())
                .or_default()
                .insert(key.clone());
        }
        self.entries.put(key, entry);
    }

    fn evict_to(&mut self, bounds: &MemoryConfig, now: Instant) {
        if self.entries.len() <= bounds.max_entries && self.bytes <= bounds.max_bytes {
            return;
        }
        // Expired entries go before live ones.
        self.sweep(now);
        while self.entries.len() > bounds.max_entries || self.bytes > bounds.max_bytes {
            let Some((key, _)) = self.entries.peek_lru() else {
                break;
            };
            let key = key.clone();
            self.remove(&key);
            self.stale.remove(&key);
            self.evictions += 1;
        }
    }

    fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.expiries.pop_first().expect("checked non-empty");
            self.remove(&key);
            dropped += 1;
        }
        self.stale.retain(|_, copy| copy.until > now);
        self.leases.retain(|_, until| *until > now);
        dropped
    }

    /// Removes a key for good: its stale copy goes with it.
    fn delete(&mut self, key: &str, now: Instant) -> bool {
        self.stale.remove(key);
        self.remove(key).is_some_and(|e| !e.is_expired(now))
    }

    fn lease_attempt(&mut self, key: &str, lease: Duration, now: Instant) -> LeaseAttempt {
        if let Some(entry) = self.live(key, now) {
            return LeaseAttempt::Hit(entry.to_entry(now));
        }
        let stale = self
            .stale
            .get(key)
            .filter(|copy| copy.until > now)
            .map(|copy| Entry {
                value: copy.value.clone(),
                version: copy.version,
                ttl: None,
            });
        match self.leases.get(key) {
            Some(until) if *until > now => LeaseAttempt::Held {
                stale,
                retry_in: *until - now,
            },
            _ => {
                self.leases.insert(key.to_string(), now + lease);
                LeaseAttempt::Granted { stale }
            }
        }
    }

    /// As on Redis: `max(last + 1, the clock in µs)`, so the versions the
    /// fallback hands out while Redis is down never go back from Redis'
    /// (nor Redis' after it from the fallback's).
    fn next_version(&mut self) -> u64 {
        self.last_version = crate::backend::memory::next_after(self.last_version);
        self.last_version
    }
}

/// The keys `pattern` matches. Matching is the CPU-heavy part of a listing
/// or an invalidation (a glob over every key: up to `limits.max_key_bytes`
/// squared steps each), so it runs off the store's lock and on the blocking
/// pool: other requests, and the probes, go on meanwhile.
async fn matching(pattern: &str, keys: Vec<String>) -> Result<Vec<String>, BackendError> {
    let pattern = pattern.to_string();
    tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .filter(|key| glob::matches(&pattern, key))
            .collect()
    })
    .await
    .map_err(|err| BackendError::Protocol(format!("matching keys: {err}")))
}

#[async_trait]
impl CacheStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn describe(&self, key: &str) -> Result<Option<Described>, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(inner.live(key, now).map(|e| {
            let mut tags = e.tags.clone();
            tags.sort();
            Described {
                version: e.version,
                ttl: e.expires_at.map(|at| at.saturating_duration_since(now)),
                tags,
                size: e.value.len() as u64,
            }
        }))
    }

    async fn get(&self, key: &str, refresh_ttl: bool) -> Result<Option<Entry>, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(entry) = inner.live(key, now) else {
            return Ok(None);
        };
        let (old_expiry, ttl) = (entry.expires_at, entry.ttl);
        if refresh_ttl && let Some(ttl) = ttl {
            let at = now + ttl;
            entry.expires_at = Some(at);
            let read = entry.to_entry(now);
            if let Some(old) = old_expiry {
                inner.expiries.remove(&(old, key.to_string()));
            }
            inner.expiries.insert((at, key.to_string()));
            return Ok(Some(read));
        }
        Ok(Some(entry.to_entry(now)))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(keys
            .iter()
            .map(|key| inner.live(key, now).map(|e| e.to_entry(now)))
            .collect())
    }

    async fn set(&self, key: &str, write: Write) -> Result<SetOutcome, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let current = inner.live(key, now).map(|e| e.version);
        let allowed = match write.condition {
            Condition::None => true,
            Condition::IfAbsent => current.is_none(),
            Condition::IfPresent => current.is_some(),
            Condition::IfVersion(v) => current == Some(v),
        };
        if !allowed {
            return Ok(SetOutcome::ConditionFailed);
        }
        let version = inner.next_version();
        let mut tags = write.tags;
        tags.sort();
        tags.dedup();
        match (write.ttl, write.stale) {
            (Some(ttl), Some(stale)) if !stale.is_zero() => {
                let copy = StaleCopy {
                    value: write.value.clone(),
                    version,
                    until: now + ttl + stale,
                    tags: tags.clone(),
                };
                inner.stale.insert(key.to_string(), copy);
            }
            _ => {
                inner.stale.remove(key);
            }
        }
        inner.leases.remove(key);
        inner.insert(
            key.to_string(),
            MemEntry {
                value: write.value,
                version,
                ttl: write.ttl,
                expires_at: write.ttl.map(|ttl| now + ttl),
                tags,
            },
        );
        inner.evict_to(&self.bounds, now);
        drop(inner);
        let _ = self.written.send(());
        Ok(SetOutcome::Written { version })
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(inner.delete(key, now))
    }

    async fn get_or_lease(&self, key: &str, req: LeaseRequest) -> Result<LeaseRead, BackendError> {
        let mut written = self.written.subscribe();
        wait_for_lease(
            &req,
            || {
                let look = self.lock().lease_attempt(key, req.lease, Instant::now());
                std::future::ready(Ok(look))
            },
            // Any write may be the fill.
            &mut written,
        )
        .await
    }

    async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut deleted = 0;
        for tag in tags {
            let keys: Vec<String> = inner
                .tags
                .get(tag)
                .map(|keys| keys.iter().cloned().collect())
                .unwrap_or_default();
            for key in keys {
                if inner.delete(&key, now) {
                    deleted += 1;
                }
            }
            // Stale copies of entries that have expired since.
            inner.stale.retain(|_, copy| !copy.tags.contains(tag));
        }
        Ok(deleted)
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        let keys: Vec<String> = {
            let inner = self.lock();
            inner
                .entries
                .iter()
                .map(|(key, _)| key)
                .chain(inner.stale.keys())
                .cloned()
                .collect()
        };
        let keys = matching(pattern, keys).await?;
        let now = Instant::now();
        let mut inner = self.lock();
        let mut deleted = 0;
        for key in keys {
            if inner.delete(&key, now) {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn list_keys(
        &self,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<KeyPage, BackendError> {
        // The cursor is the last key of the previous page: keys are listed in
        // byte order, so a page resumes exactly after it whatever was written
        // or deleted in between.
        let after = match cursor {
            "" => None,
            c => Some(c.strip_prefix('k').ok_or(BackendError::InvalidCursor)?),
        };
        let now = Instant::now();
        let keys: Vec<String> = {
            let inner = self.lock();
            inner
                .entries
                .iter()
                .filter(|(key, e)| !e.is_expired(now) && after.is_none_or(|a| key.as_str() > a))
                .map(|(key, _)| key.clone())
                .collect()
        };
        let mut keys = matching(pattern, keys).await?;
        keys.sort_unstable();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next_cursor = match (more, keys.last()) {
            (true, Some(last)) => Some(format!("k{last}")),
            _ => None,
        };
        Ok(KeyPage { keys, next_cursor })
    }

    fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            keys: Some(inner.entries.len() as u64),
            bytes: Some(inner.bytes as u64),
            evictions: Some(inner.evictions),
            near: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: usize, max_bytes: usize) -> Arc<MemoryStore> {
        MemoryStore::new(MemoryConfig {
            max_entries,
            max_bytes,
        })
    }

    fn write(value: &'static [u8]) -> Write {
        Write {
            value: Bytes::from_static(value),
            ttl: None,
            tags: vec![],
            condition: Condition::None,
            stale: None,
        }
    }

    #[tokio::test]
    async fn evicts_least_recently_used_by_count() {
        let s = store(2, 1 << 20);
        s.set("a", write(b"1")).await.unwrap();
        s.set("b", write(b"2")).await.unwrap();
        s.get("a", false).await.unwrap().expect("a present");
        s.set("c", write(b"3")).await.unwrap();
        assert!(s.get("b", false).await.unwrap().is_none(), "b was LRU");
        assert!(s.get("a", false).await.unwrap().is_some());
        assert!(s.get("c", false).await.unwrap().is_some());
        assert_eq!(s.stats().evictions, Some(1));
    }

    #[tokio::test]
    async fn evicts_by_bytes_and_keeps_accounting_exact() {
        let s = store(100, 10);
        s.set("a", write(b"1234")).await.unwrap(); // 5 bytes
        s.set("b", write(b"1234")).await.unwrap(); // 10 bytes
        s.set("c", write(b"1")).await.unwrap(); // 12 > 10: evict a
        assert!(s.get("a", false).await.unwrap().is_none());
        assert_eq!(s.stats().bytes, Some(7));
        s.delete("b").await.unwrap();
        assert_eq!(s.stats().bytes, Some(2));
        assert_eq!(s.stats().keys, Some(1));
    }

    #[tokio::test]
    async fn sweep_drops_expired_entries_and_their_tags() {
        let s = store(100, 1 << 20);
        let mut w = write(b"v");
        w.ttl = Some(Duration::from_millis(50));
        w.tags = vec!["t".into()];
        s.set("k", w).await.unwrap();
        assert_eq!(s.tag_index_len("t"), 1);
        assert_eq!(s.sweep_expired(), 0, "not expired yet");
        // Real time: tokio's paused clock would need its `test-util`
        // feature, which would make `cargo test` and `cargo build` compile
        // tokio (and everything above it) twice.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(s.sweep_expired(), 1);
        assert_eq!(s.tag_index_len("t"), 0);
        assert_eq!(s.stats().keys, Some(0));
        assert_eq!(s.stats().bytes, Some(0));
    }
}
