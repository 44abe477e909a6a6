//! The cache behind the failover circuit: Redis while it answers; this
//! sidecar's memory while it does not (`failover.cache = "local"`, the
//! default) or refused (`"fail"`). When Redis returns, entries written to
//! memory meanwhile are dropped, never written back over what Redis holds;
//! the near cache is flushed both ways, since invalidations sent while this
//! sidecar was away were missed.

use std::sync::Arc;

use async_trait::async_trait;

use super::memory::MemoryStore;
use super::redis::RedisCache;
use super::store::{
    CacheStore, Described, Entry, KeyPage, LeaseRead, LeaseRequest, SetOutcome, StoreStats, Write,
};
use crate::backend::BackendError;
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown};

/// The cache in Redis, with a memory fallback.
pub struct FailoverCache {
    circuit: Arc<Circuit>,
    redis: RedisCache,
    memory: Arc<MemoryStore>,
    down: WhileDown,
}

impl FailoverCache {
    pub fn new(
        circuit: Arc<Circuit>,
        redis: RedisCache,
        memory: Arc<MemoryStore>,
        down: WhileDown,
    ) -> Arc<Self> {
        let store = Arc::new(FailoverCache {
            circuit,
            redis,
            memory,
            down,
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        store
    }

    async fn route<T, R, M, MF>(&self, redis: R, memory: M) -> Result<T, BackendError>
    where
        R: Future<Output = Result<T, BackendError>>,
        M: FnOnce() -> MF,
        MF: Future<Output = Result<T, BackendError>>,
    {
        self.circuit.route("cache", &self.down, redis, memory).await
    }
}

impl Reconcile for FailoverCache {
    fn tripped(&self) {
        self.redis.flush_near_cache();
    }

    fn reconcile(&self, report: &mut Reconciliation) {
        report.cache_entries_dropped = self.memory.clear() as u64;
        self.redis.flush_near_cache();
    }
}

#[async_trait]
impl CacheStore for FailoverCache {
    fn kind(&self) -> &'static str {
        if self.circuit.is_up() {
            "redis"
        } else {
            "memory"
        }
    }

    async fn get(&self, key: &str, refresh_ttl: bool) -> Result<Option<Entry>, BackendError> {
        self.route(self.redis.get(key, refresh_ttl), || {
            self.memory.get(key, refresh_ttl)
        })
        .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, BackendError> {
        self.route(self.redis.get_many(keys), || self.memory.get_many(keys))
            .await
    }

    async fn set(&self, key: &str, write: Write) -> Result<SetOutcome, BackendError> {
        let again = write.clone();
        self.route(self.redis.set(key, write), || self.memory.set(key, again))
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.route(self.redis.delete(key), || self.memory.delete(key))
            .await
    }

    async fn get_or_lease(&self, key: &str, req: LeaseRequest) -> Result<LeaseRead, BackendError> {
        self.route(self.redis.get_or_lease(key, req), || {
            self.memory.get_or_lease(key, req)
        })
        .await
    }

    async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, BackendError> {
        self.route(self.redis.invalidate_tags(tags), || {
            self.memory.invalidate_tags(tags)
        })
        .await
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        self.route(self.redis.invalidate_pattern(pattern), || {
            self.memory.invalidate_pattern(pattern)
        })
        .await
    }

    async fn list_keys(
        &self,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<KeyPage, BackendError> {
        self.route(self.redis.list_keys(pattern, cursor, limit), || {
            self.memory.list_keys(pattern, cursor, limit)
        })
        .await
    }

    async fn describe(&self, key: &str) -> Result<Option<Described>, BackendError> {
        self.route(self.redis.describe(key), || self.memory.describe(key))
            .await
    }

    fn stats(&self) -> StoreStats {
        if self.circuit.is_up() {
            self.redis.stats()
        } else {
            StoreStats {
                near: self.redis.stats().near,
                ..self.memory.stats()
            }
        }
    }
}
