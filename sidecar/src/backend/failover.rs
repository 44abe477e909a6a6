//! The failover backend: Redis while it answers, this sidecar's memory when
//! it does not, and reconciliation when it returns.
//!
//! A circuit decides where each request goes. It opens on the first
//! request that sees an outage (connection refused or lost, a call past its
//! deadline, Redis loading or busy); from then on no request touches Redis.
//! A background prober pings Redis (every `failover.probe_interval`,
//! doubling up to `failover.probe_max`) and, when it answers, reconciles
//! and closes the circuit:
//!
//! - cache: entries written to memory during the outage are dropped, never
//!   written back over what Redis holds;
//! - locks (in `local` mode): locks taken in memory are released;
//! - rate limits: local buckets are forgotten;
//! - presence: members joined through this sidecar and still live are
//!   joined again in Redis;
//! - pub/sub: publishes buffered during the outage are flushed to Redis in
//!   order, after `failover.flush_delay` (so subscribers on other sidecars
//!   have resubscribed); publishes arriving meanwhile queue behind them.
//!
//! Per-primitive behaviour while down is configured in `[failover]`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::memory::{MemoryLocks, MemoryPresence, MemoryPubSub, MemoryRateLimits, MemoryStore};
use super::redis::RedisStore;
use super::{
    Acquire, BackendError, CacheStore, Decision, Entry, Feed, FeedItem, KeyPage, LeaseRead,
    LeaseRequest, Limit, LockStore, MemberPage, Offset, PresenceEvent, PresenceStore, PubMessage,
    PubSubStore, RateLimitStore, SetOutcome, StoreStats, Write,
};
use crate::config::{FailoverConfig, Fallback, LockFallback, RateLimitFallback};
use crate::telemetry::Metrics;

/// Header marking a message flushed to Redis after an outage, with the id
/// of the sidecar that delivered it locally already (its own subscribers
/// skip the Redis copy; everyone else gets it without the header).
const FLUSHED_BY: &str = "outrigger-flushed-by";

/// This sidecar's memory stores, the fallback for each primitive.
pub struct Memory {
    pub cache: Arc<MemoryStore>,
    pub locks: Arc<MemoryLocks>,
    pub ratelimits: Arc<MemoryRateLimits>,
    pub presence: Arc<MemoryPresence>,
    pub pubsub: Arc<MemoryPubSub>,
}

impl Memory {
    /// Memory stores bounded as `config` says.
    pub fn new(config: &crate::config::Config) -> Memory {
        Memory {
            cache: MemoryStore::new(config.memory.clone()),
            locks: MemoryLocks::new(),
            ratelimits: MemoryRateLimits::new(),
            presence: Arc::new(MemoryPresence::new(config.pubsub.subscriber_buffer)),
            pubsub: Arc::new(MemoryPubSub::new(
                config.pubsub.subscriber_buffer,
                config.pubsub.stream_max_len,
            )),
        }
    }
}

/// What the last recovery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reconciliation {
    /// When Redis came back.
    pub at: Option<SystemTime>,
    pub cache_entries_dropped: u64,
    pub locks_released: u64,
    pub members_reasserted: u64,
    /// Members that could not be re-asserted (Redis refused them).
    pub members_lost: u64,
    pub messages_flushed: u64,
    /// Publishes that never reached Redis: over `failover.publish_buffer`,
    /// or refused by Redis when flushed.
    pub messages_dropped: u64,
    /// Whether buffered publishes are still being flushed.
    pub flushing: bool,
}

/// Where requests go, since when, and how the last recovery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverStatus {
    /// "redis" or "memory".
    pub mode: &'static str,
    pub since: SystemTime,
    pub transitions: u64,
    pub last_error: Option<String>,
    pub reconciliation: Reconciliation,
}

struct State {
    since: SystemTime,
    transitions: u64,
    last_error: Option<String>,
    reconciliation: Reconciliation,
}

/// A member joined through this sidecar, to re-assert after an outage.
struct Joined {
    metadata: Bytes,
    ttl: Duration,
    expires_at: Instant,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<(PubMessage, bool)>,
    /// Set from recovery until the queue is flushed: new publishes queue
    /// behind the buffered ones to keep the order.
    flushing: bool,
    dropped: u64,
}

/// Redis with a memory fallback, for every primitive.
pub struct Failover {
    redis: Arc<RedisStore>,
    memory: Memory,
    config: FailoverConfig,
    metrics: Arc<Metrics>,
    /// Whether requests go to Redis. Opened by the first request that sees
    /// an outage; closed only by the prober, after reconciling.
    up: watch::Sender<bool>,
    /// Std mutexes below: short, synchronous updates only.
    state: Mutex<State>,
    joined: Mutex<HashMap<(String, String), Joined>>,
    /// Registry size that triggers the next clean-up of `joined`.
    joined_high_water: AtomicUsize,
    outbox: Mutex<Outbox>,
    released: broadcast::Sender<String>,
    instance: String,
    /// Background tasks (release forwarders, the prober), stopped on drop.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Failover {
    fn drop(&mut self) {
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Failover {
    /// Wraps `redis` and starts the prober. Pings once first: if Redis does
    /// not answer, starts on memory (and switches over when it does).
    pub async fn start(
        redis: Arc<RedisStore>,
        memory: Memory,
        config: FailoverConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Failover> {
        let first = redis.probe().await;
        let up = first.is_ok();
        let released = broadcast::channel(1024).0;
        let mut tasks = vec![];
        for mut rx in [redis.releases(), memory.locks.releases()] {
            let tx = released.clone();
            tasks.push(
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(what) => {
                                let _ = tx.send(what);
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                })
                .abort_handle(),
            );
        }
        let (up_tx, up_rx) = watch::channel(up);
        let failover = Arc::new(Failover {
            redis,
            memory,
            config,
            metrics,
            up: up_tx,
            state: Mutex::new(State {
                since: SystemTime::now(),
                transitions: 0,
                last_error: first.as_ref().err().map(ToString::to_string),
                reconciliation: Reconciliation::default(),
            }),
            joined: Mutex::new(HashMap::new()),
            joined_high_water: AtomicUsize::new(1024),
            outbox: Mutex::new(Outbox::default()),
            released,
            instance: format!("{:016x}", rand::random::<u64>()),
            tasks: Mutex::new(tasks),
        });
        let prober = tokio::spawn(probe(Arc::downgrade(&failover), up_rx));
        lock(&failover.tasks).push(prober.abort_handle());
        if let Err(err) = first {
            failover.metrics.set_backend("memory");
            tracing::warn!(error = %err, "Redis does not answer: starting on the memory fallback");
        }
        failover
    }

    fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    pub fn status(&self) -> FailoverStatus {
        let state = lock(&self.state);
        FailoverStatus {
            mode: if self.is_up() { "redis" } else { "memory" },
            since: state.since,
            transitions: state.transitions,
            last_error: state.last_error.clone(),
            reconciliation: state.reconciliation,
        }
    }

    /// Opens the circuit (once per outage).
    fn trip(&self, err: &BackendError) {
        let tripped = self.up.send_if_modified(|up| std::mem::replace(up, false));
        if tripped {
            let mut state = lock(&self.state);
            state.since = SystemTime::now();
            state.transitions += 1;
            state.last_error = Some(err.to_string());
            drop(state);
            // Invalidations sent while we are away would be missed.
            self.redis.flush_near_cache();
            self.metrics.set_backend("memory");
            tracing::warn!(error = %err, "Redis unreachable: serving from memory until it answers again");
        }
    }

    /// Sends a request to Redis while the circuit is closed; otherwise, or if
    /// this request finds Redis gone, answers from memory (`fail` None) or
    /// refuses with `fail`.
    async fn route<T, R, M, MF>(
        &self,
        primitive: &'static str,
        fail: Option<String>,
        redis: R,
        memory: M,
    ) -> Result<T, BackendError>
    where
        R: Future<Output = Result<T, BackendError>>,
        M: FnOnce() -> MF,
        MF: Future<Output = Result<T, BackendError>>,
    {
        if self.is_up() {
            match redis.await {
                Err(err) if err.is_outage() => self.trip(&err),
                other => return other,
            }
        }
        match fail {
            None => {
                self.metrics.count_fallback(primitive, "local");
                memory().await
            }
            Some(message) => {
                self.metrics.count_fallback(primitive, "fail_closed");
                Err(BackendError::FailClosed(message))
            }
        }
    }

    fn fallback(&self, primitive: &str, mode: Fallback) -> Option<String> {
        match mode {
            Fallback::Local => None,
            Fallback::Fail => Some(format!(
                "Redis is unreachable and {primitive} is configured to fail meanwhile (failover.{primitive} = \"fail\")"
            )),
        }
    }

    fn lock_fallback(&self) -> Option<String> {
        match self.config.locks {
            LockFallback::Local => None,
            LockFallback::FailClosed => Some(
                "Redis is unreachable and locks fail closed: a lock only this sidecar knows \
                 would not exclude other instances (failover.locks = \"local\" allows it anyway)"
                    .into(),
            ),
        }
    }

    /// Reconciles, then routes back to Redis. Returns false (staying on
    /// memory) if Redis went away again meanwhile.
    async fn recover(self: &Arc<Self>) -> bool {
        let mut r = Reconciliation {
            at: Some(SystemTime::now()),
            ..Reconciliation::default()
        };
        let now = Instant::now();
        let live: Vec<((String, String), Bytes, Duration)> = {
            let mut joined = lock(&self.joined);
            joined.retain(|_, j| j.expires_at > now);
            joined
                .iter()
                .map(|(k, j)| (k.clone(), j.metadata.clone(), j.ttl))
                .collect()
        };
        for ((room, member), metadata, ttl) in live {
            match self.redis.join(&room, &member, metadata, ttl).await {
                Ok(_) => r.members_reasserted += 1,
                Err(err) if err.is_outage() => return false,
                Err(err) => {
                    r.members_lost += 1;
                    tracing::warn!(room, member, error = %err, "could not re-assert a member after the outage");
                }
            }
        }
        r.cache_entries_dropped = self.memory.cache.clear() as u64;
        if self.config.locks == LockFallback::Local {
            r.locks_released = self.memory.locks.clear() as u64;
        }
        self.memory.ratelimits.clear();
        self.memory.presence.clear();
        let pending = {
            let mut outbox = lock(&self.outbox);
            r.messages_dropped = std::mem::take(&mut outbox.dropped);
            outbox.flushing = !outbox.queue.is_empty();
            outbox.flushing
        };
        r.flushing = pending;
        {
            let mut state = lock(&self.state);
            state.since = SystemTime::now();
            state.transitions += 1;
            state.reconciliation = r;
        }
        self.redis.flush_near_cache();
        self.up.send_replace(true);
        self.metrics.set_backend("redis");
        tracing::info!(
            cache_entries_dropped = r.cache_entries_dropped,
            locks_released = r.locks_released,
            members_reasserted = r.members_reasserted,
            members_lost = r.members_lost,
            messages_to_flush = lock(&self.outbox).queue.len(),
            messages_dropped = r.messages_dropped,
            "Redis is back: reconciled and serving from Redis"
        );
        if pending {
            let me = self.clone();
            tokio::spawn(async move { me.flush().await });
        }
        true
    }

    /// Flushes buffered publishes to Redis, in order.
    async fn flush(&self) {
        tokio::time::sleep(self.config.flush_delay).await;
        let (mut flushed, mut dropped) = (0, 0);
        loop {
            let next = {
                let mut outbox = lock(&self.outbox);
                match outbox.queue.pop_front() {
                    Some(item) => item,
                    None => {
                        outbox.flushing = false;
                        break;
                    }
                }
            };
            match self.redis.publish(next.0.clone(), next.1).await {
                Ok(_) => flushed += 1,
                Err(err) if err.is_outage() => {
                    // Gone again: keep it for the next recovery.
                    lock(&self.outbox).queue.push_front(next);
                    self.trip(&err);
                    break;
                }
                Err(err) => {
                    dropped += 1;
                    tracing::warn!(channel = %next.0.channel, error = %err, "dropped a buffered publish");
                }
            }
        }
        let mut state = lock(&self.state);
        state.reconciliation.messages_flushed += flushed;
        state.reconciliation.messages_dropped += dropped;
        state.reconciliation.flushing = lock(&self.outbox).flushing;
        drop(state);
        if flushed + dropped > 0 {
            tracing::info!(
                flushed,
                dropped,
                "flushed the publishes buffered during the outage"
            );
        }
    }
}

/// Waits for outages and probes Redis until it answers.
async fn probe(failover: Weak<Failover>, mut up: watch::Receiver<bool>) {
    loop {
        // Err: the failover is gone.
        if up.wait_for(|up| !*up).await.is_err() {
            return;
        }
        let Some(config) = failover.upgrade().map(|f| f.config.clone()) else {
            return;
        };
        let mut delay = config.probe_interval;
        loop {
            tokio::time::sleep(delay).await;
            let Some(f) = failover.upgrade() else { return };
            match f.redis.probe().await {
                Ok(()) if f.recover().await => break,
                Ok(()) => {}
                Err(err) => lock(&f.state).last_error = Some(err.to_string()),
            }
            delay = (delay * 2).min(config.probe_max);
        }
    }
}

#[async_trait]
impl CacheStore for Failover {
    fn kind(&self) -> &'static str {
        if self.is_up() { "redis" } else { "memory" }
    }

    async fn get(&self, key: &str, refresh_ttl: bool) -> Result<Option<Entry>, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        self.route("cache", fail, self.redis.get(key, refresh_ttl), || {
            self.memory.cache.get(key, refresh_ttl)
        })
        .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        self.route("cache", fail, self.redis.get_many(keys), || {
            self.memory.cache.get_many(keys)
        })
        .await
    }

    async fn set(&self, key: &str, write: Write) -> Result<SetOutcome, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        let again = write.clone();
        self.route("cache", fail, self.redis.set(key, write), || {
            self.memory.cache.set(key, again)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        self.route("cache", fail, self.redis.delete(key), || {
            self.memory.cache.delete(key)
        })
        .await
    }

    async fn get_or_lease(&self, key: &str, req: LeaseRequest) -> Result<LeaseRead, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        self.route("cache", fail, self.redis.get_or_lease(key, req), || {
            self.memory.cache.get_or_lease(key, req)
        })
        .await
    }

    async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        self.route("cache", fail, self.redis.invalidate_tags(tags), || {
            self.memory.cache.invalidate_tags(tags)
        })
        .await
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        self.route(
            "cache",
            fail,
            self.redis.invalidate_pattern(pattern),
            || self.memory.cache.invalidate_pattern(pattern),
        )
        .await
    }

    async fn list_keys(
        &self,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<KeyPage, BackendError> {
        let fail = self.fallback("cache", self.config.cache);
        self.route(
            "cache",
            fail,
            self.redis.list_keys(pattern, cursor, limit),
            || self.memory.cache.list_keys(pattern, cursor, limit),
        )
        .await
    }

    fn stats(&self) -> StoreStats {
        if self.is_up() {
            self.redis.stats()
        } else {
            StoreStats {
                near: self.redis.stats().near,
                ..self.memory.cache.stats()
            }
        }
    }
}

#[async_trait]
impl LockStore for Failover {
    async fn try_acquire(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        self.route(
            "lock",
            self.lock_fallback(),
            self.redis.try_acquire(name, token, ttl),
            || self.memory.locks.try_acquire(name, token, ttl),
        )
        .await
    }

    async fn release(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        self.route(
            "lock",
            self.lock_fallback(),
            self.redis.release(name, token),
            || self.memory.locks.release(name, token),
        )
        .await
    }

    async fn extend(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.route(
            "lock",
            self.lock_fallback(),
            self.redis.extend(name, token, ttl),
            || self.memory.locks.extend(name, token, ttl),
        )
        .await
    }

    async fn try_acquire_permit(
        &self,
        name: &str,
        token: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        self.route(
            "lock",
            self.lock_fallback(),
            self.redis.try_acquire_permit(name, token, limit, ttl),
            || {
                self.memory
                    .locks
                    .try_acquire_permit(name, token, limit, ttl)
            },
        )
        .await
    }

    async fn release_permit(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        self.route(
            "lock",
            self.lock_fallback(),
            self.redis.release_permit(name, token),
            || self.memory.locks.release_permit(name, token),
        )
        .await
    }

    fn releases(&self) -> broadcast::Receiver<String> {
        self.released.subscribe()
    }
}

/// `limit` scaled to `share` (at least 1 of everything).
fn scaled(limit: &Limit, share: f64) -> Limit {
    let scale = |n: u32| ((f64::from(n) * share).floor() as u32).max(1);
    Limit {
        limit: scale(limit.limit),
        burst: scale(limit.burst),
        ..*limit
    }
}

#[async_trait]
impl RateLimitStore for Failover {
    async fn check(
        &self,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
    ) -> Result<Decision, BackendError> {
        if self.is_up() {
            match self.redis.check(policy, key, limit, cost).await {
                Err(err) if err.is_outage() => self.trip(&err),
                other => return other,
            }
        }
        match self.config.ratelimit {
            RateLimitFallback::Local => {
                self.metrics.count_fallback("ratelimit", "local");
                let local = scaled(limit, self.config.fallback_share);
                let most = local.most();
                if cost > most {
                    // Allowed with the whole limit, never with this share.
                    return Ok(Decision {
                        allowed: false,
                        limit: most,
                        remaining: 0,
                        reset_after: limit.period,
                        retry_after: Some(self.config.probe_interval),
                    });
                }
                self.memory
                    .ratelimits
                    .check(policy, key, &local, cost)
                    .await
            }
            RateLimitFallback::FailOpen => {
                self.metrics.count_fallback("ratelimit", "fail_open");
                let most = limit.most();
                Ok(Decision {
                    allowed: true,
                    limit: most,
                    remaining: most,
                    reset_after: Duration::ZERO,
                    retry_after: None,
                })
            }
            RateLimitFallback::FailClosed => {
                self.metrics.count_fallback("ratelimit", "fail_closed");
                Err(BackendError::FailClosed(
                    "Redis is unreachable and rate limits fail closed (failover.ratelimit = \"fail_closed\")"
                        .into(),
                ))
            }
        }
    }
}

#[async_trait]
impl PresenceStore for Failover {
    async fn join(
        &self,
        room: &str,
        member: &str,
        metadata: Bytes,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let fail = self.fallback("presence", self.config.presence);
        let again = metadata.clone();
        let joined = self
            .route(
                "presence",
                fail,
                self.redis.join(room, member, metadata.clone(), ttl),
                || self.memory.presence.join(room, member, again, ttl),
            )
            .await?;
        let now = Instant::now();
        let mut registry = lock(&self.joined);
        registry.insert(
            (room.to_string(), member.to_string()),
            Joined {
                metadata,
                ttl,
                expires_at: now + ttl,
            },
        );
        // Members that timed out instead of leaving: forget them once the
        // registry has doubled since the last clean-up (amortised O(1)).
        if registry.len() >= self.joined_high_water.load(Ordering::Relaxed) {
            registry.retain(|_, j| j.expires_at > now);
            self.joined_high_water
                .store((registry.len() * 2).max(1024), Ordering::Relaxed);
        }
        Ok(joined)
    }

    async fn leave(&self, room: &str, member: &str) -> Result<bool, BackendError> {
        lock(&self.joined).remove(&(room.to_string(), member.to_string()));
        let fail = self.fallback("presence", self.config.presence);
        self.route("presence", fail, self.redis.leave(room, member), || {
            self.memory.presence.leave(room, member)
        })
        .await
    }

    async fn list(
        &self,
        room: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<MemberPage, BackendError> {
        let fail = self.fallback("presence", self.config.presence);
        self.route(
            "presence",
            fail,
            self.redis.list(room, cursor, limit),
            || self.memory.presence.list(room, cursor, limit),
        )
        .await
    }

    async fn rooms(&self, member: &str) -> Result<Vec<String>, BackendError> {
        let fail = self.fallback("presence", self.config.presence);
        self.route("presence", fail, self.redis.rooms(member), || {
            self.memory.presence.rooms(member)
        })
        .await
    }

    async fn reap(&self, room: &str) -> Result<u64, BackendError> {
        self.route("presence", None, self.redis.reap(room), || {
            self.memory.presence.reap(room)
        })
        .await
    }

    async fn watch(&self, room: &str) -> Result<Feed<PresenceEvent>, BackendError> {
        let local = self.memory.presence.watch(room).await?;
        let shared = self.redis.watch_with(room, self.is_up()).await?;
        Ok(Box::pin(futures::stream::select(local, shared)))
    }
}

#[async_trait]
impl PubSubStore for Failover {
    async fn publish(
        &self,
        message: PubMessage,
        durable: bool,
    ) -> Result<Option<Offset>, BackendError> {
        if self.is_up() {
            let queued = {
                let mut outbox = lock(&self.outbox);
                if outbox.flushing {
                    // Behind the buffered ones, to keep the order.
                    outbox.queue.push_back((message.clone(), durable));
                    true
                } else {
                    false
                }
            };
            if queued {
                return Ok(None);
            }
            match self.redis.publish(message.clone(), durable).await {
                Err(err) if err.is_outage() => self.trip(&err),
                other => return other,
            }
        }
        if let Some(reason) = self.fallback("pubsub", self.config.pubsub) {
            self.metrics.count_fallback("pubsub", "fail_closed");
            return Err(BackendError::FailClosed(reason));
        }
        self.metrics.count_fallback("pubsub", "local");
        let mut for_redis = message.clone();
        for_redis
            .headers
            .insert(FLUSHED_BY.to_string(), self.instance.clone());
        {
            let mut outbox = lock(&self.outbox);
            if outbox.queue.len() < self.config.publish_buffer {
                outbox.queue.push_back((for_redis, durable));
            } else {
                outbox.dropped += 1;
                tracing::warn!(channel = %message.channel, "publish buffer full: this message reaches local subscribers only");
            }
        }
        self.memory.pubsub.publish(message, durable).await
    }

    async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<Feed<Arc<PubMessage>>, BackendError> {
        let local = self.memory.pubsub.subscribe(channels, patterns).await?;
        let shared = self
            .redis
            .subscribe_with(channels, patterns, self.is_up())
            .await?;
        let me = self.instance.clone();
        // Messages flushed after an outage: skip the ones this sidecar
        // delivered locally already, and drop the marker from the others.
        let shared = shared.filter_map(move |item| {
            let item = match item {
                FeedItem::Item(m) => match m.headers.get(FLUSHED_BY) {
                    Some(origin) if *origin == me => None,
                    Some(_) => {
                        let mut m = (*m).clone();
                        m.headers.remove(FLUSHED_BY);
                        Some(FeedItem::Item(Arc::new(m)))
                    }
                    None => Some(FeedItem::Item(m)),
                },
                lagged => Some(lagged),
            };
            futures::future::ready(item)
        });
        Ok(Box::pin(futures::stream::select(local, shared)))
    }

    async fn replay(
        &self,
        channel: &str,
        after: Offset,
        count: usize,
    ) -> Result<Vec<PubMessage>, BackendError> {
        let fail = self.fallback("pubsub", self.config.pubsub);
        self.route(
            "pubsub",
            fail,
            self.redis.replay(channel, after, count),
            || self.memory.pubsub.replay(channel, after, count),
        )
        .await
    }
}
