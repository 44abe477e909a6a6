//! The cache primitive: validation, limits, statistics and instrumentation
//! around a [`CacheStore`].
//!
//! Both APIs (gRPC and HTTP) call this and nothing below it, so a rule
//! enforced here holds for every client, and the backends only ever see
//! valid input.

pub mod config;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod near;
pub mod redis;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Common;
use crate::error::{Error, Result};
use crate::kit::Primitive;
use crate::plugins::config::PrimitiveName;
use crate::plugins::{Call, Caller, Invalidate, Operation, ValuePoint, WriteEvent};
use crate::telemetry::{self, Metrics};
use crate::validate;
use crate::validate::Limits;
use bytes::Bytes;
use store::{CacheStore, Condition, Entry, KeyPage, LeaseRead, LeaseRequest, SetOutcome, Write};

/// Page size of a key listing when the caller gives none.
pub const DEFAULT_PAGE: usize = 100;

/// A write as a client asks for it; `ttl_ms` 0 means no expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRequest {
    pub key: String,
    pub value: Bytes,
    pub ttl_ms: u64,
    pub tags: Vec<String>,
    pub condition: Condition,
    /// With `ttl_ms`: how long after expiring the value may still be
    /// handed to `GetOrLease` callers that accept stale values; 0: not.
    pub stale_ms: u64,
}

/// A `GetOrLease` as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAsk {
    pub key: String,
    /// How long a granted lease keeps other callers waiting.
    pub lease_ms: u64,
    /// How long to wait for another caller's lease to be filled; 0: answer
    /// at once.
    pub wait_ms: u64,
    /// Whether the expired value (written with `stale_ms`) is an
    /// acceptable answer while another caller fills the key.
    pub accept_stale: bool,
}

/// What a `GetOrLease` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    /// The value.
    Hit(Entry),
    /// The expired value, while another caller fills the key.
    Stale(Entry),
    /// The key is missing and the caller must fill it; with the expired
    /// value, if one is kept.
    Granted(Option<Entry>),
}

/// What to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Tags(Vec<String>),
    Pattern(String),
}

/// Counters and sizes for `Admin.Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub keys: Option<u64>,
    pub bytes: Option<u64>,
    pub evictions: Option<u64>,
    pub near: Option<store::NearStats>,
}

/// The cache primitive.
pub struct Cache {
    common: Common,
    store: Arc<dyn CacheStore>,
    limits: Limits,
    /// `cache.lease_poll`.
    lease_poll: Duration,
    metrics: Arc<Metrics>,
    counts: Counts,
}

/// The cache's own metrics.
struct Counts {
    hits: Counter,
    misses: Counter,
    /// Mirrors of the store's statistics (memory backend), set when they
    /// are read.
    keys: Gauge,
    bytes: Gauge,
    /// Mirrors of the near cache's own counters (0 without one), brought
    /// up to date when read, under a lock so two scrapes cannot both add
    /// the same increase.
    near: std::sync::Mutex<NearCounts>,
}

#[derive(Default)]
struct NearCounts {
    hits: Counter,
    fills: Counter,
    invalidations: Counter,
    entries: Gauge,
    bytes: Gauge,
}

impl NearCounts {
    fn mirror(&self, stats: &store::NearStats) {
        let catch_up = |counter: &Counter, now: u64| {
            counter.inc_by(now.saturating_sub(counter.get()));
        };
        catch_up(&self.hits, stats.hits);
        catch_up(&self.fills, stats.fills);
        catch_up(&self.invalidations, stats.invalidations);
        self.entries.set(stats.entries as i64);
        self.bytes.set(stats.bytes as i64);
    }
}

impl Counts {
    fn register(metrics: &Metrics) -> Counts {
        let counts = Counts {
            hits: Counter::default(),
            misses: Counter::default(),
            keys: Gauge::default(),
            bytes: Gauge::default(),
            near: Default::default(),
        };
        {
            let near = counts.near.lock().unwrap_or_else(|e| e.into_inner());
            metrics.register(
                "near_cache_hits",
                "Cache reads served by the near cache (0 without one)",
                near.hits.clone(),
            );
            metrics.register(
                "near_cache_fills",
                "Values the near cache kept after a read from Redis",
                near.fills.clone(),
            );
            metrics.register(
                "near_cache_invalidations",
                "Near-cache entries evicted by invalidations",
                near.invalidations.clone(),
            );
            metrics.register(
                "near_cache_entries",
                "Entries in the near cache",
                near.entries.clone(),
            );
            metrics.register(
                "near_cache_bytes",
                "Bytes of keys and values in the near cache",
                near.bytes.clone(),
            );
        }
        metrics.register(
            "cache_hits",
            "Cache reads that found a value",
            counts.hits.clone(),
        );
        metrics.register(
            "cache_misses",
            "Cache reads that found nothing",
            counts.misses.clone(),
        );
        metrics.register(
            "cache_keys",
            "Keys stored (memory backend)",
            counts.keys.clone(),
        );
        metrics.register(
            "cache_bytes",
            "Bytes of keys and values stored (memory backend)",
            counts.bytes.clone(),
        );
        counts
    }
}

impl Cache {
    pub fn new(
        store: Arc<dyn CacheStore>,
        config: &config::CacheConfig,
        limits: Limits,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Self {
        Cache {
            store,
            common,
            limits,
            lease_poll: config.lease_poll,
            counts: Counts::register(&metrics),
            metrics,
        }
    }

    /// The input limits in force (the HTTP layer bounds bodies with them).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn backend_kind(&self) -> &'static str {
        self.store.kind()
    }

    async fn op<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        telemetry::observe(&self.metrics, "cache", op, span, fut).await
    }

    pub async fn get(&self, key: &str, refresh_ttl: bool) -> Result<Option<Entry>> {
        let span = tracing::info_span!("outrigger.cache.get", key, refresh_ttl);
        self.op("get", span, async {
            self.check_key(key)?;
            let entry = self.store.get(key, refresh_ttl).await?;
            self.count_read(entry.is_some());
            Ok(entry)
        })
        .await
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let span = tracing::info_span!("outrigger.cache.get_many", keys = keys.len());
        self.op("get_many", span, async {
            self.check_batch("keys", keys.len())?;
            for key in keys {
                self.check_key(key)?;
            }
            let entries = self.store.get_many(keys).await?;
            for entry in &entries {
                self.count_read(entry.is_some());
            }
            Ok(entries)
        })
        .await
    }

    /// Reads `key`, or grants the caller a lease to fill it: of all the
    /// callers that find the key missing, exactly one gets the lease; the
    /// others wait (at most `wait_ms`) for its value, or take the stale one.
    pub async fn get_or_lease(&self, ask: LeaseAsk) -> Result<Leased> {
        let span = tracing::info_span!("outrigger.cache.get_or_lease", key = %ask.key);
        self.op("get_or_lease", span, async {
            self.check_key(&ask.key)?;
            let lease = validate::ttl_ms("lease_ms", ask.lease_ms, &self.limits)?;
            let max_wait = self.limits.max_wait.as_millis() as u64;
            if ask.wait_ms > max_wait {
                return Err(Error::InvalidArgument(format!(
                    "wait_ms must be 0..={max_wait} (limits.max_wait), not {}",
                    ask.wait_ms
                )));
            }
            let req = LeaseRequest {
                lease,
                deadline: tokio::time::Instant::now() + Duration::from_millis(ask.wait_ms),
                stale_ok: ask.accept_stale,
                poll: self.lease_poll,
            };
            let read = self.store.get_or_lease(&ask.key, req).await?;
            self.count_read(matches!(read, LeaseRead::Hit(_)));
            match read {
                LeaseRead::Hit(entry) => Ok(Leased::Hit(entry)),
                LeaseRead::Stale(entry) => Ok(Leased::Stale(entry)),
                LeaseRead::Lease { stale } => Ok(Leased::Granted(stale)),
                LeaseRead::Pending => Err(Error::Conflict(format!(
                    "another caller holds the lease on key {:?} and did not fill it within \
                     wait_ms ({} ms)",
                    ask.key, ask.wait_ms
                ))),
            }
        })
        .await
    }

    /// Writes; returns the new version, or [`Error::PreconditionFailed`].
    pub async fn set(&self, req: SetRequest) -> Result<u64> {
        let span =
            tracing::info_span!("outrigger.cache.set", key = %req.key, bytes = req.value.len());
        self.op("set", span, async {
            self.check_key(&req.key)?;
            validate::value("value", req.value.len(), &self.limits)?;
            if req.ttl_ms > 0 {
                validate::ttl_ms("ttl_ms", req.ttl_ms, &self.limits)?;
            }
            if req.stale_ms > 0 {
                if req.ttl_ms == 0 {
                    return Err(Error::InvalidArgument(
                        "stale_ms needs ttl_ms: a value that never expires is never stale".into(),
                    ));
                }
                validate::ttl_ms("stale_ms", req.stale_ms, &self.limits)?;
            }
            if req.tags.len() > self.limits.max_tags {
                return Err(Error::TooLarge(format!(
                    "{} tags; the limit is {} (limits.max_tags)",
                    req.tags.len(),
                    self.limits.max_tags
                )));
            }
            for tag in &req.tags {
                self.check_tag(tag)?;
            }
            let write = Write {
                value: req.value,
                ttl: (req.ttl_ms > 0).then(|| Duration::from_millis(req.ttl_ms)),
                tags: req.tags,
                condition: req.condition,
                stale: (req.stale_ms > 0).then(|| Duration::from_millis(req.stale_ms)),
            };
            match self.store.set(&req.key, write).await? {
                SetOutcome::Written { version } => Ok(version),
                SetOutcome::ConditionFailed => {
                    Err(Error::PreconditionFailed(match req.condition {
                        Condition::IfAbsent => "the key already exists".to_string(),
                        Condition::IfPresent => "the key does not exist".to_string(),
                        Condition::IfVersion(v) => {
                            format!("the key does not exist or its version is not {v}")
                        }
                        Condition::None => "condition failed".to_string(),
                    }))
                }
            }
        })
        .await
    }

    /// Returns whether the key existed.
    /// Everything about `key` but its value (version, TTL, tags, size),
    /// for operators; `None` when it is absent.
    pub async fn describe(&self, key: &str) -> Result<Option<store::Described>> {
        let span = tracing::info_span!("outrigger.cache.describe", key);
        self.op("describe", span, async {
            self.check_key(key)?;
            Ok(self.store.describe(key).await?)
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        let span = tracing::info_span!("outrigger.cache.delete", key);
        self.op("delete", span, async {
            self.check_key(key)?;
            Ok(self.store.delete(key).await?)
        })
        .await
    }

    /// Returns how many keys were deleted.
    pub async fn invalidate(&self, what: Invalidation) -> Result<u64> {
        match what {
            Invalidation::Tags(tags) => {
                let span =
                    tracing::info_span!("outrigger.cache.invalidate_tags", tags = tags.len());
                self.op("invalidate_tags", span, async {
                    if tags.is_empty() {
                        return Err(Error::InvalidArgument("tags must not be empty".into()));
                    }
                    self.check_batch("tags", tags.len())?;
                    for tag in &tags {
                        self.check_tag(tag)?;
                    }
                    Ok(self.store.invalidate_tags(&tags).await?)
                })
                .await
            }
            Invalidation::Pattern(pattern) => {
                let span = tracing::info_span!("outrigger.cache.invalidate_pattern", %pattern);
                self.op("invalidate_pattern", span, async {
                    if pattern.is_empty() {
                        return Err(Error::InvalidArgument("pattern must not be empty".into()));
                    }
                    self.check_pattern(&pattern)?;
                    Ok(self.store.invalidate_pattern(&pattern).await?)
                })
                .await
            }
        }
    }

    /// One page of keys matching `pattern` (empty: all keys).
    pub async fn list_keys(&self, pattern: &str, cursor: &str, limit: usize) -> Result<KeyPage> {
        let span = tracing::info_span!("outrigger.cache.list_keys", pattern, limit);
        self.op("list_keys", span, async {
            self.check_pattern(pattern)?;
            let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
            self.check_batch("limit", limit)?;
            let pattern = if pattern.is_empty() { "*" } else { pattern };
            Ok(self.store.list_keys(pattern, cursor, limit).await?)
        })
        .await
    }

    pub fn stats(&self) -> CacheStats {
        let store = self.store.stats();
        if let Some(keys) = store.keys {
            self.counts.keys.set(keys as i64);
        }
        if let Some(bytes) = store.bytes {
            self.counts.bytes.set(bytes as i64);
        }
        if let Some(near) = &store.near {
            self.counts
                .near
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mirror(near);
        }
        CacheStats {
            hits: self.counts.hits.get(),
            misses: self.counts.misses.get(),
            keys: store.keys,
            bytes: store.bytes,
            evictions: store.evictions,
            near: store.near,
        }
    }

    fn count_read(&self, hit: bool) {
        if hit {
            self.counts.hits.inc();
        } else {
            self.counts.misses.inc();
        }
    }

    fn check_key(&self, key: &str) -> Result<()> {
        validate::name("key", key, &self.limits)
    }

    fn check_tag(&self, tag: &str) -> Result<()> {
        if tag.is_empty() {
            return Err(Error::InvalidArgument(
                "tags must not be empty strings".into(),
            ));
        }
        if tag.len() > self.limits.max_tag_bytes {
            return Err(Error::TooLarge(format!(
                "tag is {} bytes; the limit is {} (limits.max_tag_bytes)",
                tag.len(),
                self.limits.max_tag_bytes
            )));
        }
        Ok(())
    }

    fn check_batch(&self, what: &str, n: usize) -> Result<()> {
        validate::batch(what, n, &self.limits)
    }

    fn check_pattern(&self, pattern: &str) -> Result<()> {
        crate::kit::check_pattern(pattern, &self.limits)
    }
}

impl Cache {
    /// A read for `caller`, as both APIs serve it: authorized (a plugin may
    /// rewrite the key), read, and the value passed through the plugins'
    /// `on-value`. Returns the key read and its entry.
    pub async fn get_for(
        &self,
        caller: &Caller,
        key: String,
        refresh_ttl: bool,
    ) -> Result<(String, Option<Entry>)> {
        let key = self.authorize(
            caller,
            Call::new(PrimitiveName::Cache, Operation::Read, key),
        )?;
        let entry = self.get(&key, refresh_ttl).await?;
        let entry = entry.map(|e| self.reveal(caller, &key, e)).transpose()?;
        Ok((key, entry))
    }

    /// A batch read for `caller`, as [`Cache::get_for`]: each key
    /// authorized, then one read, then each value found revealed.
    pub async fn get_many_for(
        &self,
        caller: &Caller,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>> {
        let targets = keys
            .iter()
            .map(|key| {
                self.authorize(
                    caller,
                    Call::new(PrimitiveName::Cache, Operation::Read, key.as_str()),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let entries = self.get_many(&targets).await?;
        targets
            .iter()
            .zip(entries)
            .map(|(key, entry)| entry.map(|e| self.reveal(caller, key, e)).transpose())
            .collect()
    }

    /// A GetOrLease for `caller`, as [`Cache::get_for`]: every value it
    /// answers (a hit, a stale value, the expired value with a lease) is
    /// revealed.
    pub async fn get_or_lease_for(&self, caller: &Caller, mut ask: LeaseAsk) -> Result<Leased> {
        ask.key = self.authorize(
            caller,
            Call::new(PrimitiveName::Cache, Operation::Read, ask.key),
        )?;
        let key = ask.key.clone();
        Ok(match self.get_or_lease(ask).await? {
            Leased::Hit(e) => Leased::Hit(self.reveal(caller, &key, e)?),
            Leased::Stale(e) => Leased::Stale(self.reveal(caller, &key, e)?),
            Leased::Granted(stale) => {
                Leased::Granted(stale.map(|e| self.reveal(caller, &key, e)).transpose()?)
            }
        })
    }

    /// A stored entry as `caller` is to see it: its value through the
    /// plugins' `on-value` (`cache-read`), if any has it.
    fn reveal(&self, caller: &Caller, key: &str, mut entry: Entry) -> Result<Entry> {
        let plugins = &self.common.plugins;
        if plugins.sees_values(PrimitiveName::Cache) {
            entry.value = plugins.on_value(caller, ValuePoint::CacheRead, key, entry.value)?;
        }
        Ok(entry)
    }

    /// A write for `caller`, as both APIs serve it: authorized (a plugin
    /// may rewrite the key), its value passed through the plugins'
    /// `on-value` (`cache-write`), written, and the plugins' `on-write`
    /// invalidations applied before it is answered. Returns the version.
    pub async fn set_for(&self, caller: &Caller, mut req: SetRequest) -> Result<u64> {
        req.key = self.authorize(
            caller,
            Call::new(PrimitiveName::Cache, Operation::Write, req.key).value_size(req.value.len()),
        )?;
        let plugins = &self.common.plugins;
        if plugins.sees_values(PrimitiveName::Cache) {
            // The key first: a plugin sees only keys the cache would take.
            self.check_key(&req.key)?;
            req.value = plugins.on_value(caller, ValuePoint::CacheWrite, &req.key, req.value)?;
        }
        let size = req.value.len();
        let (key, tags) = (req.key.clone(), req.tags.clone());
        let version = self.set(req).await?;
        let event = WriteEvent {
            deleted: false,
            key: &key,
            tags: &tags,
            value_size: size,
        };
        self.after_write(caller, event).await;
        Ok(version)
    }

    /// A delete for `caller`, as [`Cache::set_for`]: whether the key
    /// existed.
    pub async fn delete_for(&self, caller: &Caller, key: String) -> Result<bool> {
        let key = self.authorize(
            caller,
            Call::new(PrimitiveName::Cache, Operation::Delete, key),
        )?;
        let deleted = self.delete(&key).await?;
        let event = WriteEvent {
            deleted: true,
            key: &key,
            tags: &[],
            value_size: 0,
        };
        self.after_write(caller, event).await;
        Ok(deleted)
    }

    /// After an acknowledged set or delete: runs `on-write` and applies
    /// what it returns, before the write is answered. Failures to
    /// invalidate are logged; the write itself stands.
    pub async fn after_write(&self, caller: &Caller, event: WriteEvent<'_>) {
        let plugins = &self.common.plugins;
        if plugins.is_empty() {
            return;
        }
        for invalidation in plugins.on_write(caller, event) {
            let result = match &invalidation {
                Invalidate::Key(key) => self.delete(key).await.map(drop),
                Invalidate::Tag(tag) => self
                    .invalidate(Invalidation::Tags(vec![tag.clone()]))
                    .await
                    .map(drop),
                Invalidate::Pattern(pattern) => self
                    .invalidate(Invalidation::Pattern(pattern.clone()))
                    .await
                    .map(drop),
            };
            if let Err(err) = result {
                tracing::warn!(
                    key = event.key,
                    ?invalidation,
                    "on-write invalidation failed: {err}"
                );
            }
        }
    }
}

impl Primitive for Cache {
    fn common(&self) -> &Common {
        &self.common
    }
}
