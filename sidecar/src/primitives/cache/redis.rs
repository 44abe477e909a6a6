//! The cache on Redis: entries as hashes, tag indexes as sorted sets (see
//! the module docs of `backend::redis` for the layout and the ordering that
//! keeps tag invalidation exact).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::try_join_all;
use redis::Value;

use redis::Script;

use super::config::NearCacheConfig;
use super::near::{self, KEY_PREFIX, NearCache, PATTERN_PREFIX};
use super::store::{
    CacheStore, Changes, Condition, Described, Entry, KeyPage, LeaseAttempt, LeaseRead,
    LeaseRequest, SetOutcome, StoreStats, Write, wait_for_lease,
};
use crate::backend::redis::subscriber::{Delivery, Topic};
use crate::backend::redis::{AbortOnDrop, RedisStore, SCAN_BATCH};
use crate::backend::{BackendError, glob};

/// The cache in Redis.
pub struct RedisCache {
    redis: Arc<RedisStore>,
    scripts: Scripts,
    /// The invalidation channel, `ns:inv`.
    invalidations: String,
    /// The near cache, when enabled, and what keeps it following the
    /// invalidation channel.
    near: Option<(Arc<NearCache>, AbortOnDrop)>,
}

struct Scripts {
    get: Script,
    describe: Script,
    set: Script,
    delete: Script,
    lease: Script,
    tag_add: Script,
    delete_if_tagged: Script,
}

impl RedisCache {
    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisCache {
            invalidations: format!("{}:inv", redis.namespace),
            redis,
            scripts: Scripts {
                get: Script::new(include_str!("get.lua")),
                describe: Script::new(include_str!("describe.lua")),
                set: Script::new(include_str!("set.lua")),
                delete: Script::new(include_str!("delete.lua")),
                lease: Script::new(include_str!("lease.lua")),
                tag_add: Script::new(include_str!("tag_add.lua")),
                delete_if_tagged: Script::new(include_str!("delete_if_tagged.lua")),
            },
            near: None,
        }
    }

    /// Keeps a near cache (L1) of what this store reads, following the
    /// namespace's invalidation channel (see [`near`]).
    pub fn enable_near_cache(&mut self, config: &NearCacheConfig) {
        let cache = Arc::new(NearCache::new(config.clone()));
        let follower = near::follow(
            cache.clone(),
            &self.redis.subscriber,
            self.invalidations.clone(),
        );
        self.near = Some((cache, AbortOnDrop(follower)));
    }

    /// Empties the near cache, if enabled.
    pub fn flush_near_cache(&self) {
        if let Some(near) = self.near_cache() {
            near.flush();
        }
    }

    /// The near cache, if enabled.
    pub fn near_cache(&self) -> Option<&Arc<NearCache>> {
        self.near.as_ref().map(|(cache, _)| cache)
    }
}

impl RedisCache {
    fn entry_key(&self, key: &str) -> String {
        format!("{}:c:{{{key}}}", self.redis.namespace)
    }

    /// The copy of an entry kept past its expiry for `GetOrLease`.
    fn stale_key(&self, key: &str) -> String {
        format!("{}:cs:{{{key}}}", self.redis.namespace)
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}:cl:{{{key}}}", self.redis.namespace)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}:t:{{{tag}}}", self.redis.namespace)
    }

    /// `ns:c:{key}` back to `key`.
    fn user_key<'a>(&self, entry_key: &'a str) -> Option<&'a str> {
        entry_key
            .strip_prefix(self.redis.namespace.as_str())?
            .strip_prefix(":c:{")?
            .strip_suffix('}')
    }

    async fn index_tags(
        &self,
        key: &str,
        tags: &[String],
        ttl_ms: u64,
    ) -> Result<(), BackendError> {
        if tags.is_empty() {
            return Ok(());
        }
        let adds = tags.iter().map(|tag| {
            let mut conn = self.redis.conn();
            let mut call = self.scripts.tag_add.key(self.tag_key(tag));
            call.arg(key).arg(ttl_ms);
            async move { call.invoke_async::<()>(&mut conn).await }
        });
        self.redis.call(try_join_all(adds)).await.map(drop)
    }

    /// Evicts `key` from this sidecar's near cache (the others hear it on
    /// the invalidation channel).
    fn evict(&self, key: &str) {
        if let Some(near) = self.near_cache() {
            near.invalidate(key);
        }
    }

    /// Deletes each of `keys` that still carries `tag`; returns how many.
    async fn delete_tagged(&self, tag: &str, keys: &[String]) -> Result<u64, BackendError> {
        let deletes = keys.iter().map(|key| {
            let mut conn = self.redis.conn();
            let mut call = self.scripts.delete_if_tagged.key(self.entry_key(key));
            call.key(self.stale_key(key))
                .arg(tag)
                .arg(&self.invalidations)
                .arg(format!("{KEY_PREFIX}{key}"));
            async move { call.invoke_async::<u64>(&mut conn).await }
        });
        let deleted = self.redis.call(try_join_all(deletes)).await?;
        for (key, n) in keys.iter().zip(&deleted) {
            if *n > 0 {
                self.evict(key);
            }
        }
        Ok(deleted.into_iter().sum())
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<u64, BackendError> {
        let index = self.tag_key(tag);
        let mut deleted = 0;
        let mut cursor = 0u64;
        loop {
            let mut conn = self.redis.conn();
            let (next, flat): (u64, Vec<String>) = self
                .redis
                .call(
                    redis::cmd("ZSCAN")
                        .arg(&index)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async(&mut conn),
                )
                .await?;
            // ZSCAN answers member, score, member, score, ...
            let keys: Vec<String> = flat.into_iter().step_by(2).collect();
            if !keys.is_empty() {
                deleted += self.delete_tagged(tag, &keys).await?;
                self.redis
                    .call(
                        redis::cmd("ZREM")
                            .arg(&index)
                            .arg(&keys)
                            .query_async::<()>(&mut conn),
                    )
                    .await?;
                // A write that landed between the first delete and the ZREM
                // may have been indexed before the ZREM removed it: delete
                // again so it cannot survive unindexed.
                deleted += self.delete_tagged(tag, &keys).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), BackendError> {
        self.redis.scan("c", cursor, pattern, count).await
    }
}

fn entry_from_reply(reply: Vec<Value>) -> Result<(Entry, Vec<String>), BackendError> {
    let bad = |what: &str| BackendError::Protocol(format!("cache get: {what}"));
    let mut fields = reply.into_iter();
    let value = match fields.next() {
        Some(Value::BulkString(v)) => Bytes::from(v),
        _ => return Err(bad("value")),
    };
    let version = match fields.next() {
        Some(Value::BulkString(v)) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("version"))?,
        _ => return Err(bad("version")),
    };
    let ttl = match fields.next() {
        Some(Value::Int(ms)) if ms >= 0 => Some(Duration::from_millis(ms as u64)),
        Some(Value::Int(_)) => None,
        _ => return Err(bad("ttl")),
    };
    let tags = fields
        .map(|f| match f {
            Value::BulkString(t) => String::from_utf8(t).map_err(|_| bad("tag")),
            _ => Err(bad("tag")),
        })
        .collect::<Result<_, _>>()?;
    Ok((
        Entry {
            value,
            version,
            ttl,
        },
        tags,
    ))
}

/// Wakes a `GetOrLease` waiter when its key (or a pattern that may cover
/// it) is announced on the invalidation channel. Callers answered at once
/// (a hit, a lease) never subscribe: the first wait only starts listening
/// and returns, so the next look, made while listening, cannot miss a fill
/// that landed in between. Without pub/sub, waiters poll.
struct FillWatch<'a> {
    key: String,
    store: &'a RedisCache,
    listening: bool,
    rx: Option<(
        tokio::sync::broadcast::Receiver<Delivery>,
        crate::backend::redis::subscriber::Listening,
    )>,
}

impl Changes for FillWatch<'_> {
    async fn changed(&mut self, limit: Duration) {
        if !self.listening {
            self.listening = true;
            let topic = Topic::Channel(self.store.invalidations.clone());
            // Bounded by the subscriber's own deadline (`redis.timeout`).
            self.rx = self
                .store
                .redis
                .subscriber
                .listen(topic, true)
                .await
                .ok()
                .map(|subscription| subscription.into_parts());
            return;
        }
        let Some((rx, _)) = &mut self.rx else {
            tokio::time::sleep(limit).await;
            return;
        };
        let key = self.key.as_str();
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(d) => {
                        let text = String::from_utf8_lossy(&d.payload);
                        let hit = match text.strip_prefix(KEY_PREFIX) {
                            Some(k) => k == key,
                            None => text
                                .strip_prefix(PATTERN_PREFIX)
                                .is_none_or(|p| glob::matches(p, key)),
                        };
                        if hit {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

fn lease_from_reply(reply: Vec<Value>) -> Result<LeaseAttempt, BackendError> {
    let bad = |what: &str| BackendError::Protocol(format!("cache lease: {what}"));
    let mut fields = reply.into_iter();
    let kind = match fields.next() {
        Some(Value::BulkString(k)) => k,
        _ => return Err(bad("kind")),
    };
    let value = fields.next();
    let version = fields.next();
    let entry =
        |value: Option<Value>, version: Option<Value>| -> Result<Option<Entry>, BackendError> {
            match (value, version) {
                (Some(Value::BulkString(v)), Some(Value::BulkString(ver))) => Ok(Some(Entry {
                    value: Bytes::from(v),
                    version: std::str::from_utf8(&ver)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad("version"))?,
                    ttl: None,
                })),
                (Some(Value::Nil) | None, _) => Ok(None),
                _ => Err(bad("entry")),
            }
        };
    let pttl = match fields.next() {
        Some(Value::Int(ms)) => Some(ms),
        None => None,
        _ => return Err(bad("ttl")),
    };
    match kind.as_slice() {
        b"hit" => {
            let mut found = entry(value, version)?.ok_or_else(|| bad("hit without a value"))?;
            found.ttl = pttl
                .filter(|ms| *ms >= 0)
                .map(|ms| Duration::from_millis(ms as u64));
            Ok(LeaseAttempt::Hit(found))
        }
        b"lease" => Ok(LeaseAttempt::Granted {
            stale: entry(value, version)?,
        }),
        b"held" => Ok(LeaseAttempt::Held {
            stale: entry(value, version)?,
            retry_in: Duration::from_millis(pttl.unwrap_or(0).max(0) as u64),
        }),
        _ => Err(bad("kind")),
    }
}

#[async_trait]
impl CacheStore for RedisCache {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn describe(&self, key: &str) -> Result<Option<Described>, BackendError> {
        let mut conn = self.redis.conn();
        let call = self.scripts.describe.key(self.entry_key(key));
        let reply: Option<Vec<Value>> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let Some(reply) = reply else {
            return Ok(None);
        };
        let bad = || BackendError::Protocol("cache describe: an unexpected reply".into());
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad),
            _ => Err(bad()),
        };
        let (version, pttl, size) = (int(reply.first())?, int(reply.get(1))?, int(reply.get(2))?);
        let mut tags = reply[3..]
            .iter()
            .map(|v| match v {
                Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        tags.sort();
        Ok(Some(Described {
            version: version.max(0) as u64,
            ttl: (pttl >= 0).then(|| Duration::from_millis(pttl as u64)),
            tags,
            size: size.max(0) as u64,
        }))
    }

    async fn get(&self, key: &str, refresh_ttl: bool) -> Result<Option<Entry>, BackendError> {
        let near = self.near_cache();
        let ticket = match near {
            Some(near) => {
                // A sliding-expiration read must reach Redis to restart
                // the TTL; its reply then replaces what L1 holds.
                if !refresh_ttl && let Some(entry) = near.get(key) {
                    return Ok(Some(entry));
                }
                near.ticket(key)
            }
            None => None,
        };
        let mut conn = self.redis.conn();
        let mut call = self.scripts.get.key(self.entry_key(key));
        call.arg(if refresh_ttl { "1" } else { "0" });
        let reply: Option<Vec<Value>> = self.redis.call(call.invoke_async(&mut conn)).await?;
        let Some(reply) = reply else {
            return Ok(None);
        };
        let (entry, tags) = entry_from_reply(reply)?;
        if let Some(ttl) = entry.ttl.filter(|_| refresh_ttl) {
            // The TTL grew: the tag indexes must not forget the key earlier.
            self.index_tags(key, &tags, ttl.as_millis() as u64).await?;
        }
        if let (Some(near), Some(ticket)) = (near, ticket) {
            near.fill(key, &entry, ticket);
        }
        Ok(Some(entry))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, BackendError> {
        let near = self.near_cache();
        let mut found: Vec<Option<Entry>> = keys
            .iter()
            .map(|key| near.and_then(|near| near.get(key)))
            .collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let tickets: Vec<_> = missing
            .iter()
            .map(|&i| near.and_then(|near| near.ticket(&keys[i])))
            .collect();
        // Concurrent calls on the multiplexed connection go out as one
        // pipeline: one round trip for the whole batch.
        let reads = missing.iter().map(|&i| {
            let mut conn = self.redis.conn();
            let mut call = self.scripts.get.key(self.entry_key(&keys[i]));
            call.arg("0");
            async move { call.invoke_async::<Option<Vec<Value>>>(&mut conn).await }
        });
        let replies = self.redis.call(try_join_all(reads)).await?;
        for ((&i, reply), ticket) in missing.iter().zip(replies).zip(tickets) {
            let Some(reply) = reply else { continue };
            let (entry, _) = entry_from_reply(reply)?;
            if let (Some(near), Some(ticket)) = (near, ticket) {
                near.fill(&keys[i], &entry, ticket);
            }
            found[i] = Some(entry);
        }
        Ok(found)
    }

    async fn set(&self, key: &str, write: Write) -> Result<SetOutcome, BackendError> {
        let ttl_ms = write.ttl.map_or(0, |t| t.as_millis() as u64);
        let (condition, expected) = match write.condition {
            Condition::None => ("none", 0),
            Condition::IfAbsent => ("absent", 0),
            Condition::IfPresent => ("present", 0),
            Condition::IfVersion(v) => ("version", v),
        };
        let mut conn = self.redis.conn();
        let stale_ms = match (write.ttl, write.stale) {
            (Some(_), Some(stale)) => stale.as_millis() as u64,
            _ => 0,
        };
        let mut call = self.scripts.set.key(self.entry_key(key));
        call.key(self.stale_key(key))
            .key(self.lease_key(key))
            .arg(write.value.as_ref())
            .arg(ttl_ms)
            .arg(condition)
            .arg(expected)
            .arg(&self.invalidations)
            .arg(format!("{KEY_PREFIX}{key}"))
            .arg(stale_ms)
            .arg(&write.tags);
        let version: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        if version < 0 {
            return Ok(SetOutcome::ConditionFailed);
        }
        self.evict(key);
        // The stale copy carries the tags too: index it as long as it lives.
        let index_ms = if ttl_ms > 0 { ttl_ms + stale_ms } else { 0 };
        self.index_tags(key, &write.tags, index_ms).await?;
        Ok(SetOutcome::Written {
            version: version as u64,
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let mut conn = self.redis.conn();
        let mut call = self.scripts.delete.key(self.entry_key(key));
        call.key(self.stale_key(key))
            .arg(&self.invalidations)
            .arg(format!("{KEY_PREFIX}{key}"));
        let removed: u64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        if removed > 0 {
            self.evict(key);
        }
        Ok(removed > 0)
    }

    async fn get_or_lease(&self, key: &str, req: LeaseRequest) -> Result<LeaseRead, BackendError> {
        // Fills publish the key on the invalidation channel; a caller that
        // has to wait listens to it (see FillWatch).
        let mut changes = FillWatch {
            key: key.to_string(),
            store: self,
            listening: false,
            rx: None,
        };
        let lease_ms = req.lease.as_millis().max(1) as u64;
        wait_for_lease(
            &req,
            || async move {
                let mut conn = self.redis.conn();
                let mut call = self.scripts.lease.key(self.entry_key(key));
                call.key(self.stale_key(key))
                    .key(self.lease_key(key))
                    .arg(lease_ms);
                let reply: Vec<Value> = self.redis.call(call.invoke_async(&mut conn)).await?;
                lease_from_reply(reply)
            },
            &mut changes,
        )
        .await
    }

    async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, BackendError> {
        let mut deleted = 0;
        for tag in tags {
            deleted += self.invalidate_tag(tag).await?;
        }
        Ok(deleted)
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        let mut deleted = 0;
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan(cursor, pattern, SCAN_BATCH).await?;
            if !keys.is_empty() {
                let mut conn = self.redis.conn();
                deleted += self
                    .redis
                    .call(
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<u64>(&mut conn),
                    )
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // Stale copies, including those whose entry has expired.
        let mut cursor = 0;
        loop {
            let (next, keys) = self.redis.scan("cs", cursor, pattern, SCAN_BATCH).await?;
            if !keys.is_empty() {
                let mut conn = self.redis.conn();
                self.redis
                    .call(
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<u64>(&mut conn),
                    )
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if deleted > 0 {
            // Every sidecar's near cache evicts what matches, now that
            // Redis holds none of it.
            let mut conn = self.redis.conn();
            self.redis
                .call(
                    redis::cmd("PUBLISH")
                        .arg(&self.invalidations)
                        .arg(format!("{PATTERN_PREFIX}{pattern}"))
                        .query_async::<()>(&mut conn),
                )
                .await?;
            if let Some(near) = self.near_cache() {
                near.invalidate_pattern(pattern).await;
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
        let cursor = match cursor {
            "" => 0,
            c => c.parse().map_err(|_| BackendError::InvalidCursor)?,
        };
        let (next, keys) = self.scan(cursor, pattern, limit).await?;
        Ok(KeyPage {
            keys: keys
                .iter()
                .filter_map(|k| self.user_key(k).map(str::to_string))
                .collect(),
            next_cursor: (next != 0).then(|| next.to_string()),
        })
    }

    fn stats(&self) -> StoreStats {
        // Counting a namespace's keys in a shared Redis takes a full SCAN:
        // not something a status call should do.
        StoreStats {
            near: self.near_cache().map(|near| near.stats()),
            ..StoreStats::default()
        }
    }
}
