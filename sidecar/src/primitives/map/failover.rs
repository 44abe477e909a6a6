//! Maps behind the failover circuit: Redis while it answers; while it does
//! not, refused (`failover.maps = "fail"`, the default: a map is state the
//! other instances read and write, a session say, and an empty local copy
//! would answer "no such session" and take writes nobody else sees) or kept
//! in this sidecar's memory (`"local"`). In local mode every change made
//! while down is journaled and replayed on Redis when it returns, in order
//! and unconditionally (its conditions held locally): increments add up
//! with what other sidecars counted meanwhile, sets and deletes land last.
//! A full journal refuses further local writes rather than lose them.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::memory::MemoryMaps;
use super::redis::RedisMaps;
use super::store::{Change, Condition, MapEvent, MapPage, MapRead, MapStore, Update, Updated};
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown};
use crate::backend::{BackendError, Feed};

/// Changes kept for Redis while it is down, at most.
pub const JOURNAL_CAPACITY: usize = 10_000;

/// A change made locally, to replay.
enum Journaled {
    Update(String, Update),
    Delete(String),
}

/// Maps in Redis, with a memory fallback.
pub struct FailoverMaps {
    circuit: Arc<Circuit>,
    redis: RedisMaps,
    memory: MemoryMaps,
    down: WhileDown,
    journal: Mutex<Vec<Journaled>>,
}

impl FailoverMaps {
    pub fn new(circuit: Arc<Circuit>, down: WhileDown, buffer: usize) -> Arc<Self> {
        let store = Arc::new(FailoverMaps {
            redis: RedisMaps::new(circuit.redis().clone()),
            memory: MemoryMaps::new(buffer),
            circuit,
            down,
            journal: Mutex::new(Vec::new()),
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        store
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Vec<Journaled>> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn journal_full(&self) -> Result<(), BackendError> {
        if self.journal().len() >= JOURNAL_CAPACITY {
            return Err(BackendError::FailClosed(format!(
                "Redis is unreachable and this sidecar already keeps {JOURNAL_CAPACITY} map changes for it; try again when Redis is back"
            )));
        }
        Ok(())
    }

    async fn update_locally(&self, map: &str, update: Update) -> Result<Updated, BackendError> {
        self.journal_full()?;
        let updated = self.memory.update(map, update.clone()).await?;
        if let Updated::Done { .. } = updated {
            let mut replay = update;
            replay.if_version = None;
            for change in &mut replay.changes {
                if let Change::Set { condition, .. } = change {
                    *condition = Condition::None;
                }
            }
            replay.max_fields = usize::MAX;
            self.journal()
                .push(Journaled::Update(map.to_string(), replay));
        }
        Ok(updated)
    }

    async fn delete_locally(&self, map: &str) -> Result<bool, BackendError> {
        self.journal_full()?;
        let existed = self.memory.delete(map).await?;
        self.journal().push(Journaled::Delete(map.to_string()));
        Ok(existed)
    }

    /// Replays the journal on Redis; on an outage what is left is kept
    /// for the next attempt.
    async fn replay(&self) -> Result<usize, BackendError> {
        let journal = std::mem::take(&mut *self.journal());
        let mut replayed = 0;
        let mut left = journal.into_iter();
        while let Some(entry) = left.next() {
            let result = match &entry {
                Journaled::Update(map, update) => {
                    self.redis.update(map, update.clone()).await.map(drop)
                }
                Journaled::Delete(map) => self.redis.delete(map).await.map(drop),
            };
            match result {
                Ok(()) => replayed += 1,
                Err(err) if err.is_outage() => {
                    let mut journal = self.journal();
                    let newer = std::mem::take(&mut *journal);
                    journal.push(entry);
                    journal.extend(left);
                    journal.extend(newer);
                    return Err(err);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "a map change made while Redis was down could not be replayed; dropped");
                }
            }
        }
        Ok(replayed)
    }
}

#[async_trait]
impl Reconcile for FailoverMaps {
    /// Replays on Redis what was changed locally, before requests go back.
    async fn restore(&self, report: &mut Reconciliation) -> Result<(), BackendError> {
        report.map_changes_replayed += self.replay().await? as u64;
        Ok(())
    }

    /// Forgets the local maps: Redis holds them now.
    fn reconcile(&self, _report: &mut Reconciliation) {
        self.memory.clear();
    }

    /// Replays what was changed locally while the restore ran.
    fn recovered(self: Arc<Self>) {
        tokio::spawn(async move {
            match self.replay().await {
                Ok(_) => {
                    self.memory.clear();
                }
                Err(err) => {
                    if err.is_outage() {
                        self.circuit.trip(&err);
                    }
                    tracing::warn!(error = %err, "could not replay the last local map changes; they are kept for the next recovery");
                }
            }
        });
    }
}

#[async_trait]
impl MapStore for FailoverMaps {
    async fn update(&self, map: &str, update: Update) -> Result<Updated, BackendError> {
        self.circuit
            .route(
                "map",
                &self.down,
                self.redis.update(map, update.clone()),
                || self.update_locally(map, update),
            )
            .await
    }

    async fn get(&self, map: &str, fields: &[String]) -> Result<MapRead, BackendError> {
        self.circuit
            .route("map", &self.down, self.redis.get(map, fields), || {
                self.memory.get(map, fields)
            })
            .await
    }

    async fn scan(&self, map: &str, cursor: &str, limit: usize) -> Result<MapPage, BackendError> {
        self.circuit
            .route(
                "map",
                &self.down,
                self.redis.scan(map, cursor, limit),
                || self.memory.scan(map, cursor, limit),
            )
            .await
    }

    async fn delete(&self, map: &str) -> Result<bool, BackendError> {
        self.circuit
            .route("map", &self.down, self.redis.delete(map), || {
                self.delete_locally(map)
            })
            .await
    }

    async fn watch(&self, map: &str) -> Result<Feed<MapEvent>, BackendError> {
        self.circuit
            .route("map", &self.down, self.redis.watch(map), || {
                self.memory.watch(map)
            })
            .await
    }

    async fn reap(&self) -> Result<u64, BackendError> {
        self.circuit
            .route("map", &self.down, self.redis.reap(), || self.memory.reap())
            .await
    }
}
