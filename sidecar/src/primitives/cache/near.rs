//! The near cache: an in-process copy (L1) of entries read from Redis.
//!
//! Correctness rests on four rules:
//!
//! 1. **Every change is announced.** The scripts that write, delete or
//!    invalidate an entry publish its key on the namespace's invalidation
//!    channel `ns:inv` in the same atomic step (pattern invalidations
//!    publish the pattern once every matching key is gone). Every sidecar
//!    evicts what it hears, and a sidecar evicts its own writes locally
//!    before it answers them.
//! 2. **No fill races an invalidation.** Keys hash to one of
//!    [`STRIPES`] counters, bumped by every eviction; a read notes its
//!    key's counter (and the flush generation) before asking Redis and
//!    fills L1 only if neither moved by the time the reply arrives, checked
//!    under the same lock that evictions take. An invalidation delivered
//!    before the read was sent cannot race it at all: Redis published it
//!    after the write, so the read sees the write.
//! 3. **Nothing is served while the channel may have lost a message.** L1
//!    is used only while the invalidation subscription is confirmed live;
//!    it is flushed when the pub/sub connection drops, when its PING goes
//!    unanswered (within `PING_INTERVAL` plus `redis.timeout`), when the
//!    listener falls behind, and when the failover backend leaves or
//!    returns to Redis.
//! 4. **Every entry has a hard age limit.** An entry is served at most
//!    `cache.near.max_ttl` after it was read (and never past the key's own
//!    TTL), so even a change made behind the sidecars' back (a script
//!    writing the hash directly) is seen within that bound.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::broadcast;

use super::config::NearCacheConfig;
use super::store::Entry;
use crate::backend::glob;
use crate::backend::redis::subscriber::{self, Subscriber, Topic};

/// Invalidation counters; a collision only costs a skipped fill.
const STRIPES: usize = 1024;

/// Bytes counted per entry on top of its key and value.
const ENTRY_OVERHEAD: usize = 64;

pub use super::store::NearStats;

/// Prefix of a message naming one key.
pub(super) const KEY_PREFIX: &str = "k:";
/// Prefix of a message carrying a glob pattern of keys.
pub(super) const PATTERN_PREFIX: &str = "p:";

struct Slot {
    entry: Entry,
    /// When it stops being served: the earlier of `max_ttl` after the read
    /// and the key's own expiry.
    until: Instant,
    /// The key's own expiry, to report the remaining TTL.
    expires: Option<Instant>,
}

struct Entries {
    map: LruCache<String, Slot>,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) -> bool {
        match self.map.pop(key) {
            Some(slot) => {
                self.bytes -= cost(key, &slot.entry.value);
                true
            }
            None => false,
        }
    }
}

fn cost(key: &str, value: &Bytes) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// Proof that a read started before any invalidation it could race.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    stripe: usize,
    seq: u64,
    generation: u64,
}

/// The L1 itself. Cheap to share: everything inside is atomic or behind one
/// short-held lock.
pub struct NearCache {
    config: NearCacheConfig,
    entries: Mutex<Entries>,
    stripes: Box<[AtomicU64]>,
    /// Bumped by every flush and pattern invalidation.
    generation: AtomicU64,
    /// Pattern invalidations still matching (off the lock): while any is,
    /// nothing is served from L1, since what they will evict is still in it.
    matching: AtomicU64,
    live: AtomicBool,
    hits: AtomicU64,
    fills: AtomicU64,
    raced: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

fn stripe(key: &str) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % STRIPES
}

impl NearCache {
    pub fn new(config: NearCacheConfig) -> NearCache {
        let capacity = NonZeroUsize::new(config.max_entries).unwrap_or(NonZeroUsize::MIN);
        NearCache {
            config,
            entries: Mutex::new(Entries {
                map: LruCache::new(capacity),
                bytes: 0,
            }),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            matching: AtomicU64::new(0),
            live: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            raced: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry, if L1 holds it and may serve it.
    pub fn get(&self, key: &str) -> Option<Entry> {
        if !self.live.load(Ordering::Acquire) || self.matching.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        let slot = entries.map.get(key)?;
        if slot.until <= now {
            entries.remove(key);
            return None;
        }
        let mut entry = slot.entry.clone();
        entry.ttl = slot.expires.map(|at| at.saturating_duration_since(now));
        drop(entries);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry)
    }

    /// Notes where invalidations stand before a read from Redis; `None`
    /// while L1 is not in use.
    pub fn ticket(&self, key: &str) -> Option<Ticket> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let stripe = stripe(key);
        Some(Ticket {
            stripe,
            seq: self.stripes[stripe].load(Ordering::Acquire),
            generation: self.generation.load(Ordering::Acquire),
        })
    }

    /// Keeps what a read returned, unless an invalidation of the key (or a
    /// flush) happened since its ticket was taken.
    pub fn fill(&self, key: &str, entry: &Entry, ticket: Ticket) {
        let size = cost(key, &entry.value);
        if size > self.config.max_bytes / 16 {
            return;
        }
        let now = Instant::now();
        let expires = entry.ttl.map(|ttl| now + ttl);
        let until = match expires {
            Some(at) => at.min(now + self.config.max_ttl),
            None => now + self.config.max_ttl,
        };
        let mut entries = self.lock();
        // Under the lock evictions take: an invalidation either moved the
        // counter already, or will remove this entry after we release.
        if !self.live.load(Ordering::Acquire)
            || self.stripes[ticket.stripe].load(Ordering::Acquire) != ticket.seq
            || self.generation.load(Ordering::Acquire) != ticket.generation
        {
            drop(entries);
            self.raced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        entries.remove(key);
        let slot = Slot {
            entry: Entry {
                value: entry.value.clone(),
                version: entry.version,
                ttl: None,
            },
            until,
            expires,
        };
        if let Some((old_key, old)) = entries.map.push(key.to_string(), slot) {
            entries.bytes -= cost(&old_key, &old.entry.value);
        }
        entries.bytes += size;
        while entries.bytes > self.config.max_bytes {
            let Some((old_key, old)) = entries.map.pop_lru() else {
                break;
            };
            entries.bytes -= cost(&old_key, &old.entry.value);
        }
        drop(entries);
        self.fills.fetch_add(1, Ordering::Relaxed);
    }

    /// Evicts one key and fails every read of it in flight.
    pub fn invalidate(&self, key: &str) {
        self.stripes[stripe(key)].fetch_add(1, Ordering::AcqRel);
        if self.lock().remove(key) {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Evicts every key matching a glob, and fails every read in flight.
    /// Matching is the CPU-heavy part (up to `limits.max_key_bytes` squared
    /// steps per key, over up to `max_entries` keys): it runs off the lock,
    /// on the blocking pool, and L1 serves nothing until it is done.
    pub async fn invalidate_pattern(&self, pattern: &str) {
        /// Ends the matching, even if the caller gives up waiting.
        struct Matching<'a>(&'a AtomicU64);
        impl Drop for Matching<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.matching.fetch_add(1, Ordering::AcqRel);
        let _matching = Matching(&self.matching);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<String> = self.lock().map.iter().map(|(key, _)| key.clone()).collect();
        let pattern = pattern.to_string();
        let doomed = tokio::task::spawn_blocking(move || {
            keys.into_iter()
                .filter(|key| glob::matches(&pattern, key))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(doomed) = doomed else {
            self.flush();
            return;
        };
        let mut entries = self.lock();
        for key in &doomed {
            entries.remove(key);
        }
        drop(entries);
        self.invalidations
            .fetch_add(doomed.len() as u64, Ordering::Relaxed);
    }

    /// Drops everything and fails every read in flight.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut entries = self.lock();
        entries.map.clear();
        entries.bytes = 0;
        drop(entries);
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
            self.flush();
        } else {
            // Flush first: what was kept before may have missed messages.
            self.flush();
            self.live.store(true, Ordering::Release);
        }
    }

    /// Applies one message of the invalidation channel.
    async fn apply(&self, message: &[u8]) {
        let Ok(message) = std::str::from_utf8(message) else {
            self.flush();
            return;
        };
        if let Some(key) = message.strip_prefix(KEY_PREFIX) {
            self.invalidate(key);
        } else if let Some(pattern) = message.strip_prefix(PATTERN_PREFIX) {
            self.invalidate_pattern(pattern).await;
        } else {
            // Not ours to understand: be safe.
            self.flush();
        }
    }

    pub fn stats(&self) -> NearStats {
        let entries = self.lock();
        NearStats {
            live: self.live.load(Ordering::Acquire),
            entries: entries.map.len() as u64,
            bytes: entries.bytes as u64,
            hits: self.hits.load(Ordering::Relaxed),
            fills: self.fills.load(Ordering::Relaxed),
            raced: self.raced.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }
}

/// Listens on the invalidation channel for as long as the store lives:
/// applies every message, and keeps L1 in use only while the subscription
/// is known to be live.
pub(super) fn follow(
    near: Arc<NearCache>,
    subscriber: &Arc<Subscriber>,
    channel: String,
) -> tokio::task::AbortHandle {
    let subscriber = subscriber.clone();
    tokio::spawn(async move {
        let mut connection = subscriber.connection();
        // Confirmed once; the subscriber keeps it subscribed across
        // reconnections, and announces each one.
        let mut subscription = loop {
            match subscriber
                .listen(Topic::Channel(channel.clone()), true)
                .await
            {
                Ok(subscription) => {
                    // Subscribed on the current connection if it is up (a
                    // connection made since resubscribed every topic); if
                    // it is not, the next change says when it is.
                    near.set_live(connection.borrow_and_update().up);
                    break subscription;
                }
                Err(_) => {
                    let _ =
                        tokio::time::timeout(subscriber::PING_INTERVAL, connection.changed()).await;
                }
            }
        };
        loop {
            tokio::select! {
                changed = connection.changed() => {
                    if changed.is_err() {
                        near.set_live(false);
                        return;
                    }
                    // A new connection resubscribed every topic before
                    // announcing itself; messages in between were lost,
                    // so set_live flushes either way.
                    let up = connection.borrow_and_update().up;
                    near.set_live(up);
                }
                message = subscription.rx.recv() => match message {
                    Ok(delivery) => near.apply(&delivery.payload).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => near.flush(),
                    Err(broadcast::error::RecvError::Closed) => {
                        near.set_live(false);
                        return;
                    }
                },
            }
        }
    })
    .abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn near() -> NearCache {
        let near = NearCache::new(NearCacheConfig {
            enabled: true,
            max_entries: 3,
            max_bytes: 16 * 1024,
            max_ttl: Duration::from_secs(60),
        });
        near.live.store(true, Ordering::Release);
        near
    }

    fn entry(value: &'static str, version: u64) -> Entry {
        Entry {
            value: Bytes::from_static(value.as_bytes()),
            version,
            ttl: None,
        }
    }

    #[test]
    fn fills_and_serves() {
        let near = near();
        let ticket = near.ticket("a").unwrap();
        near.fill("a", &entry("1", 7), ticket);
        assert_eq!(near.get("a"), Some(entry("1", 7)));
        assert_eq!(near.stats().hits, 1);
    }

    #[tokio::test]
    async fn an_invalidation_during_the_read_prevents_the_fill() {
        let near = near();
        let ticket = near.ticket("a").unwrap();
        near.invalidate("a");
        near.fill("a", &entry("old", 1), ticket);
        assert_eq!(near.get("a"), None);
        assert_eq!(near.stats().raced, 1);
        // A pattern or a flush fails every read in flight.
        let ticket = near.ticket("b").unwrap();
        near.invalidate_pattern("zzz*").await;
        near.fill("b", &entry("old", 1), ticket);
        assert_eq!(near.get("b"), None);
    }

    /// While a pattern invalidation matches off the lock, L1 serves
    /// nothing: what it will evict must not be served meanwhile.
    #[tokio::test]
    async fn nothing_is_served_while_a_pattern_is_matching() {
        let near = near();
        let ticket = near.ticket("user:1").unwrap();
        near.fill("user:1", &entry("v", 1), ticket);
        assert!(near.get("user:1").is_some());
        let matching = near.invalidate_pattern("user:*");
        let mut matching = std::pin::pin!(matching);
        // Polled once: the keys are being matched on the blocking pool.
        assert!(futures::poll!(matching.as_mut()).is_pending());
        assert_eq!(near.get("user:1"), None);
        matching.await;
        assert_eq!(near.get("user:1"), None);
        assert_eq!(near.stats().entries, 0);
    }

    #[tokio::test]
    async fn messages_evict_keys_and_patterns() {
        let near = near();
        for key in ["user:1", "user:2", "feed:1"] {
            let ticket = near.ticket(key).unwrap();
            near.fill(key, &entry("v", 1), ticket);
        }
        near.apply(b"k:feed:1").await;
        assert_eq!(near.get("feed:1"), None);
        assert!(near.get("user:1").is_some());
        near.apply(b"p:user:*").await;
        assert_eq!(near.get("user:1"), None);
        assert_eq!(near.get("user:2"), None);
        assert_eq!(near.stats().entries, 0);
    }

    #[test]
    fn not_live_means_not_used() {
        let near = near();
        let ticket = near.ticket("a").unwrap();
        near.fill("a", &entry("1", 1), ticket);
        near.set_live(false);
        assert_eq!(near.ticket("a").map(|_| ()), None);
        assert_eq!(near.get("a"), None);
        near.set_live(true);
        // Coming back does not bring back what was kept before.
        assert_eq!(near.get("a"), None);
    }

    #[test]
    fn bounded_by_entries_and_bytes_and_age() {
        let near = near();
        for key in ["a", "b", "c", "d"] {
            let ticket = near.ticket(key).unwrap();
            near.fill(key, &entry("v", 1), ticket);
        }
        assert_eq!(near.stats().entries, 3);
        assert_eq!(near.get("a"), None, "least recently used goes first");
        // Too large for L1 (over a sixteenth of max_bytes): never kept.
        let big = Entry {
            value: Bytes::from(vec![0u8; 2048]),
            version: 1,
            ttl: None,
        };
        let ticket = near.ticket("big").unwrap();
        near.fill("big", &big, ticket);
        assert_eq!(near.get("big"), None);
        // The key's own TTL caps the entry, and is reported as remaining.
        let short = Entry {
            ttl: Some(Duration::from_millis(0)),
            ..entry("v", 2)
        };
        let ticket = near.ticket("s").unwrap();
        near.fill("s", &short, ticket);
        assert_eq!(near.get("s"), None);
        let long = Entry {
            ttl: Some(Duration::from_secs(30)),
            ..entry("v", 3)
        };
        let ticket = near.ticket("l").unwrap();
        near.fill("l", &long, ticket);
        let ttl = near.get("l").unwrap().ttl.unwrap();
        assert!(ttl <= Duration::from_secs(30) && ttl > Duration::from_secs(29));
    }
}
