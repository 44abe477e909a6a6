//! Counters behind the failover circuit: Redis while it answers; while it
//! does not, refused (`failover.counters = "fail"`, the default: a counter
//! read from an empty local store would let through what it exists to stop,
//! a login throttle say) or counted in this sidecar's memory (`"local"`).
//! When Redis returns, what was counted locally is added to Redis (bounds
//! are not checked then: they held only locally meanwhile), so no
//! increment is lost; a reset made while down reset only the local count.

use std::sync::Arc;

use async_trait::async_trait;

use super::memory::MemoryCounters;
use super::redis::RedisCounters;
use super::store::{CounterStore, CounterValue, Increment, Incremented};
use crate::backend::BackendError;
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown};

/// Counters in Redis, with a memory fallback.
pub struct FailoverCounters {
    circuit: Arc<Circuit>,
    redis: RedisCounters,
    memory: Arc<MemoryCounters>,
    down: WhileDown,
}

impl FailoverCounters {
    pub fn new(circuit: Arc<Circuit>, down: WhileDown) -> Arc<Self> {
        let store = Arc::new(FailoverCounters {
            redis: RedisCounters::new(circuit.redis().clone()),
            memory: MemoryCounters::new(),
            circuit,
            down,
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        store
    }
}

impl FailoverCounters {
    /// Adds the local counts to Redis. A count Redis refuses (it would pass
    /// the largest magnitude) is logged and dropped; on an outage the rest
    /// is put back for the next attempt.
    async fn flush(&self) -> Result<(), BackendError> {
        let mut local = self.memory.drain().into_iter();
        while let Some((name, counted)) = local.next() {
            if counted.value == 0 {
                continue;
            }
            let inc = Increment {
                by: counted.value,
                ttl: counted.ttl,
                min: None,
                max: None,
            };
            match self.redis.increment(&name, inc).await {
                Ok(Incremented::Done(_)) => {}
                Ok(Incremented::OutOfBounds(_)) => {
                    tracing::warn!(
                        counter = name,
                        by = counted.value,
                        "could not add a local count to Redis: it would pass the largest counter value"
                    );
                }
                Err(err) => {
                    self.memory.restore(&name, counted);
                    for (name, counted) in local {
                        self.memory.restore(&name, counted);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Reconcile for FailoverCounters {
    /// Adds what was counted locally to Redis before requests go back.
    async fn restore(&self, _report: &mut Reconciliation) -> Result<(), BackendError> {
        self.flush().await
    }

    fn reconcile(&self, _report: &mut Reconciliation) {}

    /// Adds what was counted locally while the restore ran.
    fn recovered(self: Arc<Self>) {
        tokio::spawn(async move {
            if let Err(err) = self.flush().await {
                if err.is_outage() {
                    self.circuit.trip(&err);
                }
                tracing::warn!(error = %err, "could not add the last local counts to Redis; they are kept for the next recovery");
            }
        });
    }
}

#[async_trait]
impl CounterStore for FailoverCounters {
    async fn increment(&self, name: &str, inc: Increment) -> Result<Incremented, BackendError> {
        self.circuit
            .route(
                "counter",
                &self.down,
                self.redis.increment(name, inc),
                || self.memory.increment(name, inc),
            )
            .await
    }

    async fn get(&self, name: &str) -> Result<CounterValue, BackendError> {
        self.circuit
            .route("counter", &self.down, self.redis.get(name), || {
                self.memory.get(name)
            })
            .await
    }

    async fn reset(&self, name: &str) -> Result<bool, BackendError> {
        self.circuit
            .route("counter", &self.down, self.redis.reset(name), || {
                self.memory.reset(name)
            })
            .await
    }
}
