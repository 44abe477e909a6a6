//! Presence behind the failover circuit: Redis while it answers; this
//! sidecar's memory while it does not (`failover.presence = "local"`, the
//! default) or refused (`"fail"`). Members joined through this sidecar and
//! still live are joined again in Redis when it returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::memory::MemoryPresence;
use super::redis::RedisPresence;
use super::store::{MemberPage, PresenceEvent, PresenceStore};
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown, lock};
use crate::backend::{BackendError, Feed};

/// A member joined through this sidecar, to re-assert after an outage.
struct Joined {
    metadata: Bytes,
    ttl: Duration,
    expires_at: Instant,
}

/// Presence in Redis, with a memory fallback.
pub struct FailoverPresence {
    circuit: Arc<Circuit>,
    redis: RedisPresence,
    memory: MemoryPresence,
    down: WhileDown,
    /// A std mutex: short, synchronous updates only.
    joined: Mutex<HashMap<(String, String), Joined>>,
    /// Registry size that triggers the next clean-up of `joined`.
    joined_high_water: AtomicUsize,
}

impl FailoverPresence {
    pub fn new(circuit: Arc<Circuit>, down: WhileDown, buffer: usize) -> Arc<Self> {
        let store = Arc::new(FailoverPresence {
            redis: RedisPresence::new(circuit.redis().clone()),
            memory: MemoryPresence::new(buffer),
            circuit,
            down,
            joined: Mutex::new(HashMap::new()),
            joined_high_water: AtomicUsize::new(1024),
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        store
    }
}

#[async_trait]
impl Reconcile for FailoverPresence {
    async fn restore(&self, report: &mut Reconciliation) -> Result<(), BackendError> {
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
                Ok(_) => report.members_reasserted += 1,
                Err(err) if err.is_outage() => return Err(err),
                Err(err) => {
                    report.members_lost += 1;
                    tracing::warn!(room, member, error = %err, "could not re-assert a member after the outage");
                }
            }
        }
        Ok(())
    }

    fn reconcile(&self, _report: &mut Reconciliation) {
        self.memory.clear();
    }
}

#[async_trait]
impl PresenceStore for FailoverPresence {
    async fn join(
        &self,
        room: &str,
        member: &str,
        metadata: Bytes,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let again = metadata.clone();
        let joined = self
            .circuit
            .route(
                "presence",
                &self.down,
                self.redis.join(room, member, metadata.clone(), ttl),
                || self.memory.join(room, member, again, ttl),
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
        self.circuit
            .route(
                "presence",
                &self.down,
                self.redis.leave(room, member),
                || self.memory.leave(room, member),
            )
            .await
    }

    async fn list(
        &self,
        room: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<MemberPage, BackendError> {
        self.circuit
            .route(
                "presence",
                &self.down,
                self.redis.list(room, cursor, limit),
                || self.memory.list(room, cursor, limit),
            )
            .await
    }

    async fn rooms(&self, member: &str) -> Result<Vec<String>, BackendError> {
        self.circuit
            .route("presence", &self.down, self.redis.rooms(member), || {
                self.memory.rooms(member)
            })
            .await
    }

    async fn reap(&self, room: &str) -> Result<u64, BackendError> {
        self.circuit
            .route("presence", &WhileDown::Local, self.redis.reap(room), || {
                self.memory.reap(room)
            })
            .await
    }

    async fn watch(&self, room: &str) -> Result<Feed<PresenceEvent>, BackendError> {
        let local = self.memory.watch(room).await?;
        let shared = self.redis.watch_with(room, self.circuit.is_up()).await?;
        Ok(Box::pin(futures::stream::select(local, shared)))
    }
}
