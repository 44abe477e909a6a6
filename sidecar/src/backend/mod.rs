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

pub use crate::config::{Algorithm, Limit};
pub use crate::error::BackendError;

pub mod failover;
pub mod glob;
pub mod memory;
pub mod redis;

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

/// Longest a lease waiter goes without looking again, should a change
/// notification be lost.
const LEASE_POLL: Duration = Duration::from_millis(100);

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
                    .min(LEASE_POLL);
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

    fn stats(&self) -> StoreStats;
}

/// What one attempt to take a lock or a permit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Taken. `fence` strictly increases per lock name (0 for permits).
    Acquired { fence: u64 },
    /// Held by someone else; `retry_in` is when the current lease (the
    /// earliest, for a semaphore) runs out, if the backend can tell.
    Held { retry_in: Option<Duration> },
}

/// Lock and semaphore storage. Tokens are generated by the caller and
/// unique per acquisition.
#[async_trait]
pub trait LockStore: Send + Sync + 'static {
    /// One attempt at the lock `name` for `ttl`.
    async fn try_acquire(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Acquire, BackendError>;

    /// Releases the lock if `token` holds it; returns whether it did.
    async fn release(&self, name: &str, token: &str) -> Result<bool, BackendError>;

    /// Restarts the lease with `ttl` if `token` holds it; returns whether
    /// it did.
    async fn extend(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, BackendError>;

    /// One attempt at one of `limit` permits of semaphore `name`.
    async fn try_acquire_permit(
        &self,
        name: &str,
        token: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Acquire, BackendError>;

    /// Returns a permit; returns whether `token` held one.
    async fn release_permit(&self, name: &str, token: &str) -> Result<bool, BackendError>;

    /// Every release (of locks: `lock:<name>`; of permits: `sem:<name>`),
    /// from any sidecar sharing the backend, to wake waiters.
    fn releases(&self) -> tokio::sync::broadcast::Receiver<String>;
}

impl BackendError {
    /// Whether this error means the backend is unreachable or unusable (so
    /// the failover backend should stop sending it requests).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            BackendError::Timeout(_) | BackendError::Unavailable(_)
        )
    }
}

/// One rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// GCRA: the burst; windows: the limit.
    pub limit: u32,
    pub remaining: u32,
    /// Until the whole limit is available again.
    pub reset_after: Duration,
    /// When denied: until the same cost can be allowed.
    pub retry_after: Option<Duration>,
}

/// Rate-limit counters. `cost` arrives validated: 1 ..= what the limit can
/// ever allow (the burst for GCRA, the limit for windows).
#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    async fn check(
        &self,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
    ) -> Result<Decision, BackendError>;
}

/// An item of a live feed: something that happened, or how much a slow
/// reader missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem<T> {
    Item(T),
    /// The reader fell behind; this many items were dropped for it.
    Lagged(u64),
}

/// A live feed. Dropping it ends the subscription behind it.
pub type Feed<T> = std::pin::Pin<Box<dyn futures::Stream<Item = FeedItem<T>> + Send>>;

/// What happened in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Join,
    Leave,
    Timeout,
}

impl PresenceKind {
    pub fn name(self) -> &'static str {
        match self {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
            PresenceKind::Timeout => "timeout",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "join" => Some(PresenceKind::Join),
            "leave" => Some(PresenceKind::Leave),
            "timeout" => Some(PresenceKind::Timeout),
            _ => None,
        }
    }
}

/// A presence event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub kind: PresenceKind,
    pub room: String,
    pub member: String,
    /// The member's metadata (join events; empty otherwise).
    pub metadata: Bytes,
}

/// A member as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub member: String,
    pub metadata: Bytes,
    /// Time left before the member times out.
    pub ttl: Duration,
}

/// One page of a member listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberPage {
    pub members: Vec<MemberInfo>,
    pub next_cursor: Option<String>,
}

/// Presence storage. Rooms and members arrive validated (non-empty, no
/// newline).
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Joins or heartbeats; returns whether the member is new in the room
    /// (and a `join` event was published).
    async fn join(
        &self,
        room: &str,
        member: &str,
        metadata: Bytes,
        ttl: Duration,
    ) -> Result<bool, BackendError>;

    /// Returns whether the member was in the room (and a `leave` event was
    /// published).
    async fn leave(&self, room: &str, member: &str) -> Result<bool, BackendError>;

    /// Live members, one page at a time.
    async fn list(
        &self,
        room: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<MemberPage, BackendError>;

    /// Rooms where `member` is live.
    async fn rooms(&self, member: &str) -> Result<Vec<String>, BackendError>;

    /// Takes out the members of `room` whose TTL ran out and publishes one
    /// `timeout` each. Atomic: of all concurrent reapers, exactly one takes
    /// out (and announces) a given expiry. Returns how many.
    async fn reap(&self, room: &str) -> Result<u64, BackendError>;

    /// Every event of `room` from any sidecar, from the moment this
    /// returns.
    async fn watch(&self, room: &str) -> Result<Feed<PresenceEvent>, BackendError>;
}

/// A pub/sub message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubMessage {
    pub channel: String,
    pub payload: Bytes,
    pub headers: std::collections::BTreeMap<String, String>,
    /// Position in the channel's stream: durable messages only.
    pub offset: Option<Offset>,
}

/// A position in a durable channel: Redis stream ids (`ms-seq`), ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for Offset {
    type Err = ();

    /// `ms-seq`, or `ms` alone (meaning `ms-0`).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(());
        }
        Ok(Offset {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// Pub/sub storage.
#[async_trait]
pub trait PubSubStore: Send + Sync + 'static {
    /// Publishes to every live subscriber (and, when `durable`, appends to
    /// the channel's capped stream). Returns the offset of a durable
    /// message.
    async fn publish(
        &self,
        message: PubMessage,
        durable: bool,
    ) -> Result<Option<Offset>, BackendError>;

    /// A live feed of the channels and patterns, active when this returns:
    /// everything published from then on arrives.
    async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Feed<std::sync::Arc<PubMessage>>, BackendError>;

    /// Up to `count` durable messages of `channel` after `after`, oldest
    /// first.
    async fn replay(
        &self,
        channel: &str,
        after: Offset,
        count: usize,
    ) -> Result<Vec<PubMessage>, BackendError>;
}

/// Merges broadcast receivers into one [`Feed`]; `guard` lives as long as
/// the feed (it ends subscriptions when dropped).
pub(crate) fn feed_from<T: Clone + Send + 'static>(
    receivers: Vec<tokio::sync::broadcast::Receiver<T>>,
    guard: impl Send + 'static,
) -> Feed<T> {
    use futures::StreamExt;
    use tokio_stream::wrappers::BroadcastStream;
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

    let streams = receivers.into_iter().map(BroadcastStream::new);
    let merged = futures::stream::select_all(streams).map(move |item| {
        let _guard = &guard;
        match item {
            Ok(item) => FeedItem::Item(item),
            Err(BroadcastStreamRecvError::Lagged(n)) => FeedItem::Lagged(n),
        }
    });
    Box::pin(merged)
}
