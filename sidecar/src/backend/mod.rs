//! The storage seam.
//!
//! Each primitive is written once against a narrow async trait ([`CacheStore`]
//! for the cache) with one implementation per backend:
//!
//! - [`memory`]: bounded local memory, the default when no Redis is
//!   configured;
//! - [`redis`]: Redis through a managed, multiplexed connection, one Lua
//!   script per multi-step operation, a deadline on every call.
//!
//! Both must agree on semantics; `tests/cache_conformance.rs` runs one suite
//! against each. Nothing Redis-specific crosses this module's boundary:
//! implementations return [`BackendError`], and callers see domain types only.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub mod glob;
pub mod memory;
pub mod redis;

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The call did not finish within the configured deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The backend refused or lost the connection, or reported an error.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this code does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A listing cursor that this backend never handed out.
    #[error("invalid cursor")]
    InvalidCursor,
}

/// A cache value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub version: u64,
    /// Remaining time to live; `None` when the entry never expires.
    pub ttl: Option<Duration>,
}

/// When a [`Write`] may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    #[default]
    None,
    IfAbsent,
    IfPresent,
    /// The key exists with exactly this version (compare-and-set).
    IfVersion(u64),
}

/// A cache write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub value: Bytes,
    /// `None`: never expires.
    pub ttl: Option<Duration>,
    /// Replaces the tags of the previous value.
    pub tags: Vec<String>,
    pub condition: Condition,
}

/// What a [`Write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Written { version: u64 },
    ConditionFailed,
}

/// One page of a key listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// `None` when the listing is complete.
    pub next_cursor: Option<String>,
}

/// What a store can tell about itself cheaply; `None` where it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub keys: Option<u64>,
    pub bytes: Option<u64>,
    pub evictions: Option<u64>,
}

/// Cache storage. Keys are the caller's keys: the namespace is the store's
/// business. Inputs arrive validated (lengths, limits, glob syntax).
///
/// Versions: every write returns a version greater than any version the key
/// had before, including before it was deleted, so a version is a safe
/// compare-and-set token.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// Short name for status and metrics: "memory", "redis".
    fn kind(&self) -> &'static str;

    /// Reads a key; with `refresh_ttl`, restarts its TTL from the TTL it was
    /// written with (sliding expiration).
    async fn get(&self, key: &str, refresh_ttl: bool) -> Result<Option<Entry>, BackendError>;

    /// Reads many keys; the result has one slot per key, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, BackendError>;

    async fn set(&self, key: &str, write: Write) -> Result<SetOutcome, BackendError>;

    /// Returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, BackendError>;

    /// Deletes every key carrying any of `tags`; returns how many.
    async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, BackendError>;

    /// Deletes every key matching the glob; returns how many.
    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, BackendError>;

    /// One page of keys matching the glob. `cursor` is empty for the first
    /// page, then the previous page's `next_cursor`.
    async fn list_keys(
        &self,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<KeyPage, BackendError>;

    fn stats(&self) -> StoreStats;
}
