//! `[cache]` and `[memory]`: the near cache, and the memory store's bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The cache primitive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub near: NearCacheConfig,
    /// Longest a `GetOrLease` waiter goes without looking at its key
    /// again. Waiters are woken by the fill itself; this only bounds the
    /// wait should that notice be lost.
    #[serde(with = "crate::duration")]
    pub lease_poll: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            near: NearCacheConfig::default(),
            lease_poll: Duration::from_millis(100),
        }
    }
}

/// The near cache: an in-process copy of values read from Redis, evicted
/// by every write, delete and invalidation made through any sidecar of the
/// namespace (see "Near cache" in the README for what it guarantees).
/// Only with Redis: the memory backend is local already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearCacheConfig {
    pub enabled: bool,
    /// Entries kept; least recently used ones are evicted beyond this.
    pub max_entries: usize,
    /// Keys plus values kept, in bytes; values larger than a sixteenth of
    /// this are never kept.
    pub max_bytes: usize,
    /// Longest an entry is served from the near cache after it was read
    /// from Redis: the bound on staleness if an invalidation never arrives
    /// (a value changed in Redis behind the sidecars' back).
    #[serde(with = "crate::duration")]
    pub max_ttl: Duration,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        NearCacheConfig {
            enabled: false,
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_ttl: Duration::from_secs(5),
        }
    }
}

/// Bounds of the memory backend; least recently used entries are evicted to
/// stay within both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    pub max_entries: usize,
    /// Keys plus values, in bytes.
    pub max_bytes: usize,
}
