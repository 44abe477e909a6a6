//! The cache's storage seam: what a cache store is asked and answers.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::BackendError;

/// A cache value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub version: u64,
    /// Remaining time to live; `None` when the entry never expires.
    pub ttl: Option<Duration>,
}

pub use crate::kit::Condition;

/// A cache write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub value: Bytes,
    /// `None`: never expires.
    pub ttl: Option<Duration>,
    /// Replaces the tags of the previous value.
    pub tags: Vec<String>,
    pub condition: Condition,
    /// With a `ttl`: how long after expiring the value is still handed to
    /// `GetOrLease` callers that accept a stale value. Deletes and
    /// invalidations remove it at once.
    pub stale: Option<Duration>,
}

/// A `GetOrLease` as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    /// How long the lease, if granted, keeps others waiting.
    pub lease: Duration,
    /// Until when to wait for another caller's lease to be filled.
    pub deadline: tokio::time::Instant,
    /// Whether a stale value is an acceptable answer while a lease is held.
    pub stale_ok: bool,
    /// Longest to wait between looks, should the fill's notice be lost
    /// (`cache.lease_poll`).
    pub poll: Duration,
}

/// What a `GetOrLease` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRead {
    /// The value, found at once or filled by the lease holder meanwhile.
    Hit(Entry),
    /// The key is missing and this caller holds the lease: compute the
    /// value and `Set` it (any write of the key ends the lease). `stale` is
    /// the expired value, if it was written with a stale window.
    Lease { stale: Option<Entry> },
    /// Another caller holds the lease; this is the expired value.
    Stale(Entry),
    /// Another caller holds the lease and did not fill the key before the
    /// deadline.
    Pending,
}

/// One look at a key for `GetOrLease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    Hit(Entry),
    Granted {
        stale: Option<Entry>,
    },
    /// Another caller holds the lease, for `retry_in` at most.
    Held {
        stale: Option<Entry>,
        retry_in: Duration,
    },
}

/// Notice of writes, for `GetOrLease` waiters.
pub(crate) trait Changes: Send {
    /// Returns when the key waited for may have been written, or after
    /// `limit`.
    fn changed(&mut self, limit: Duration) -> impl Future<Output = ()> + Send + '_;
}

impl Changes for tokio::sync::broadcast::Receiver<()> {
    async fn changed(&mut self, limit: Duration) {
        // A lagged receiver means writes happened, which is as good.
        let _ = tokio::time::timeout(limit, self.recv()).await;
    }
}

/// The waiting part of `GetOrLease`, shared by the backends: looks with
/// `attempt` until there is an answer or the deadline passes, and between
/// looks waits for `changes`. Callers subscribe to changes before the
/// first look, so no write between a look and the wait goes unnoticed.
pub(crate) async fn wait_for_lease<A, AF>(
    req: &LeaseRequest,
    mut attempt: A,
    changes: &mut impl Changes,
) -> Result<LeaseRead, BackendError>
where
    A: FnMut() -> AF,
    AF: Future<Output = Result<LeaseAttempt, BackendError>>,
{
    loop {
        match attempt().await? {
            LeaseAttempt::Hit(entry) => return Ok(LeaseRead::Hit(entry)),
            LeaseAttempt::Granted { stale } => return Ok(LeaseRead::Lease { stale }),
            LeaseAttempt::Held {
                stale: Some(stale), ..
            } if req.stale_ok => return Ok(LeaseRead::Stale(stale)),
            LeaseAttempt::Held { retry_in, .. } => {
                let now = tokio::time::Instant::now();
                if now >= req.deadline {
                    return Ok(LeaseRead::Pending);
                }
                // Also look again when the lease runs out: its holder may
                // have given up, and the lease is then ours to take.
                let nap = (req.deadline - now)
                    .min(retry_in + Duration::from_millis(1))
                    .min(req.poll);
                changes.changed(nap).await;
            }
        }
    }
}

/// What a [`Write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Written { version: u64 },
    ConditionFailed,
}

/// What an operator sees of an entry: all but its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub version: u64,
    /// Remaining time to live; `None` when the entry never expires.
    pub ttl: Option<Duration>,
    /// Sorted.
    pub tags: Vec<String>,
    /// The value's bytes.
    pub size: u64,
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
    /// The store's in-process copy of what it read (the Redis backend's
    /// near cache), when it keeps one.
    pub near: Option<NearStats>,
}

/// What a store's in-process copy of its reads (a near cache) has done
/// since start, for `Admin.Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NearStats {
    /// Whether it is in use: the invalidation channel is live.
    pub live: bool,
    pub entries: u64,
    pub bytes: u64,
    /// Reads answered from L1.
    pub hits: u64,
    /// Entries kept after a read from Redis.
    pub fills: u64,
    /// Reads whose entry was not kept because an invalidation raced them.
    pub raced: u64,
    /// Entries evicted by invalidations.
    pub invalidations: u64,
    /// Times everything was dropped (channel lost, failover).
    pub flushes: u64,
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

    /// Reads `key`; if it is missing, grants this caller a lease to fill it
    /// unless another caller holds one, in which case waits (until
    /// `req.deadline`) for it to be filled. See [`LeaseRead`].
    async fn get_or_lease(&self, key: &str, req: LeaseRequest) -> Result<LeaseRead, BackendError>;

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

    /// Everything about `key` but its value, for operators (the near cache
    /// is not asked: it keeps no tags); `None` when it is absent.
    async fn describe(&self, key: &str) -> Result<Option<Described>, BackendError>;

    fn stats(&self) -> StoreStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes that never come: a lost notice.
    struct Silence;

    impl Changes for Silence {
        async fn changed(&mut self, limit: Duration) {
            tokio::time::sleep(limit).await;
        }
    }

    fn entry() -> Entry {
        Entry {
            value: Bytes::from_static(b"filled"),
            version: 1,
            ttl: None,
        }
    }

    #[tokio::test]
    async fn a_waiter_whose_notice_is_lost_finds_the_fill_by_polling() {
        let req = LeaseRequest {
            lease: Duration::from_secs(30),
            deadline: tokio::time::Instant::now() + Duration::from_secs(10),
            stale_ok: false,
            poll: Duration::from_millis(20),
        };
        let mut looks = 0;
        let mut silence = Silence;
        let read = wait_for_lease(
            &req,
            || {
                looks += 1;
                let look = if looks < 3 {
                    LeaseAttempt::Held {
                        stale: None,
                        retry_in: Duration::from_secs(30),
                    }
                } else {
                    LeaseAttempt::Hit(entry())
                };
                std::future::ready(Ok(look))
            },
            &mut silence,
        );
        // Without the poll the waiter would sleep to its 10 s deadline.
        let read = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the poll to look again");
        assert_eq!(read.unwrap(), LeaseRead::Hit(entry()));
        assert_eq!(looks, 3);
    }
}
