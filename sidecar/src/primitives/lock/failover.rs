//! Locks and semaphores behind the failover circuit: Redis while it
//! answers; while it does not, refused (`failover.locks = "fail_closed"`,
//! the default) or taken in this sidecar's memory (`"local"`, released when
//! Redis returns). Waiters hear releases from both.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::config::LockFallback;
use super::memory::MemoryLocks;
use super::redis::RedisLocks;
use super::store::{Acquire, InUse, InUsePage, Kind, LockStore};
use crate::backend::BackendError;
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown};
use crate::backend::redis::AbortOnDrop;

/// Locks in Redis, with a memory fallback.
pub struct FailoverLocks {
    circuit: Arc<Circuit>,
    redis: RedisLocks,
    memory: Arc<MemoryLocks>,
    mode: LockFallback,
    down: WhileDown,
    released: broadcast::Sender<String>,
    /// Forward both stores' releases into `released`.
    _forwarders: [AbortOnDrop; 2],
}

impl FailoverLocks {
    pub async fn new(circuit: Arc<Circuit>, mode: LockFallback) -> Result<Arc<Self>, BackendError> {
        let redis = RedisLocks::new(circuit.redis().clone()).await?;
        let memory = MemoryLocks::new();
        let released = broadcast::channel(1024).0;
        let forward = |mut rx: broadcast::Receiver<String>| {
            let tx = released.clone();
            let task = tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(what) => {
                            let _ = tx.send(what);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            AbortOnDrop(task.abort_handle())
        };
        let forwarders = [forward(redis.releases()), forward(memory.releases())];
        let down = match mode {
            LockFallback::Local => WhileDown::Local,
            LockFallback::FailClosed => WhileDown::Fail(
                "Redis is unreachable and locks fail closed: a lock only this sidecar knows \
                 would not exclude other instances (failover.locks = \"local\" allows it anyway)"
                    .into(),
            ),
        };
        let store = Arc::new(FailoverLocks {
            circuit,
            redis,
            memory,
            mode,
            down,
            released,
            _forwarders: forwarders,
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        Ok(store)
    }
}

impl Reconcile for FailoverLocks {
    fn reconcile(&self, report: &mut Reconciliation) {
        if self.mode == LockFallback::Local {
            report.locks_released = self.memory.clear() as u64;
        }
    }
}

#[async_trait]
impl LockStore for FailoverLocks {
    async fn try_acquire(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        self.circuit
            .route(
                "lock",
                &self.down,
                self.redis.try_acquire(name, token, ttl),
                || self.memory.try_acquire(name, token, ttl),
            )
            .await
    }

    async fn release(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        self.circuit
            .route("lock", &self.down, self.redis.release(name, token), || {
                self.memory.release(name, token)
            })
            .await
    }

    async fn extend(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.circuit
            .route(
                "lock",
                &self.down,
                self.redis.extend(name, token, ttl),
                || self.memory.extend(name, token, ttl),
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
        self.circuit
            .route(
                "lock",
                &self.down,
                self.redis.try_acquire_permit(name, token, limit, ttl),
                || self.memory.try_acquire_permit(name, token, limit, ttl),
            )
            .await
    }

    async fn release_permit(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        self.circuit
            .route(
                "lock",
                &self.down,
                self.redis.release_permit(name, token),
                || self.memory.release_permit(name, token),
            )
            .await
    }

    async fn in_use(&self, kind: Kind, name: &str) -> Result<Option<InUse>, BackendError> {
        self.circuit
            .route("lock", &self.down, self.redis.in_use(kind, name), || {
                self.memory.in_use(kind, name)
            })
            .await
    }

    async fn list_in_use(
        &self,
        kind: Kind,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<InUsePage, BackendError> {
        self.circuit
            .route(
                "lock",
                &self.down,
                self.redis.list_in_use(kind, pattern, cursor, limit),
                || self.memory.list_in_use(kind, pattern, cursor, limit),
            )
            .await
    }

    fn releases(&self) -> broadcast::Receiver<String> {
        self.released.subscribe()
    }
}
