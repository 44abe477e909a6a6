//! The failover circuit: Redis while it answers, this sidecar's memory when
//! it does not, and reconciliation when it returns.
//!
//! The circuit decides where each request goes. It opens on the first
//! request that sees an outage (connection refused or lost, a call past its
//! deadline, Redis loading or busy); from then on no request touches Redis.
//! A background prober pings Redis (every `failover.probe_interval`,
//! doubling up to `failover.probe_max`) and, when it answers, has every
//! primitive reconcile ([`Reconcile`]), then closes the circuit.
//!
//! The circuit knows no primitive: each primitive's failover store (in
//! `primitives/<name>/failover.rs`) routes its calls through [`Circuit::route`]
//! with its own memory fallback, and registers what it does when Redis goes
//! and comes back. Per-primitive behaviour while down is configured in
//! `[failover]`.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;

use super::BackendError;
use super::redis::RedisStore;
use crate::telemetry::Metrics;
use serde::{Deserialize, Serialize};

/// Cache, presence and pub/sub while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Serve from this sidecar's memory.
    Local,
    /// Answer 503 / `UNAVAILABLE`.
    Fail,
}

/// What a primitive does when Redis goes away and when it returns.
#[async_trait]
pub trait Reconcile: Send + Sync {
    /// Redis just became unreachable.
    fn tripped(&self) {}

    /// Redis answers again; the first step, which may use Redis (presence
    /// re-asserts members). An outage error means Redis went away again:
    /// the circuit stays open and tries again at the next probe.
    async fn restore(&self, _report: &mut Reconciliation) -> Result<(), BackendError> {
        Ok(())
    }

    /// Every primitive restored: drops what memory held for the outage.
    /// Requests go back to Redis right after.
    fn reconcile(&self, report: &mut Reconciliation);

    /// Requests go to Redis again (pub/sub flushes its buffer).
    fn recovered(self: Arc<Self>) {}
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
    /// Map changes made while Redis was down, replayed on it.
    pub map_changes_replayed: u64,
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
    /// Redis' `maxmemory-policy` at the last (re)connection.
    pub maxmemory_policy: Option<String>,
}

/// How the circuit probes a down Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probing {
    /// First pause between probes; doubles up to `max`.
    pub interval: Duration,
    pub max: Duration,
}

/// A primitive's mode while Redis is down, as the circuit applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhileDown {
    /// Serve from this sidecar's memory.
    Local,
    /// Refuse, saying why.
    Fail(String),
}

struct State {
    since: SystemTime,
    transitions: u64,
    last_error: Option<String>,
    reconciliation: Reconciliation,
}

/// The circuit in front of one Redis.
pub struct Circuit {
    redis: Arc<RedisStore>,
    probing: Probing,
    metrics: Arc<Metrics>,
    /// Whether requests go to Redis. Opened by the first request that sees
    /// an outage; closed only by the prober, after reconciling.
    up: watch::Sender<bool>,
    /// A std mutex: short, synchronous updates only.
    state: Mutex<State>,
    /// Every primitive's part in failover, in registration order.
    parts: Mutex<Vec<Weak<dyn Reconcile>>>,
    prober: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Circuit {
    fn drop(&mut self) {
        if let Some(prober) = lock(&self.prober).take() {
            prober.abort();
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Circuit {
    /// A circuit in front of `redis`, with its prober running. Pings once
    /// first: if Redis does not answer, starts open (on memory) and closes
    /// when it does.
    pub async fn start(
        redis: Arc<RedisStore>,
        probing: Probing,
        metrics: Arc<Metrics>,
    ) -> Arc<Circuit> {
        let first = redis.probe().await;
        let (up, up_rx) = watch::channel(first.is_ok());
        let circuit = Arc::new(Circuit {
            redis,
            probing,
            metrics,
            up,
            state: Mutex::new(State {
                since: SystemTime::now(),
                transitions: 0,
                last_error: first.as_ref().err().map(ToString::to_string),
                reconciliation: Reconciliation::default(),
            }),
            parts: Mutex::new(Vec::new()),
            prober: Mutex::new(None),
        });
        let prober = tokio::spawn(probe(Arc::downgrade(&circuit), up_rx));
        *lock(&circuit.prober) = Some(prober.abort_handle());
        if let Err(err) = first {
            circuit.metrics.set_backend("memory");
            tracing::warn!(error = %err, "Redis does not answer: starting on the memory fallback");
        }
        circuit
    }

    /// The Redis behind the circuit.
    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.redis
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Adds a primitive's part in failover (kept while the part lives).
    pub fn register(&self, part: Weak<dyn Reconcile>) {
        lock(&self.parts).push(part);
    }

    fn parts(&self) -> Vec<Arc<dyn Reconcile>> {
        let mut parts = lock(&self.parts);
        parts.retain(|p| p.strong_count() > 0);
        parts.iter().filter_map(Weak::upgrade).collect()
    }

    /// Whether requests go to Redis.
    pub fn is_up(&self) -> bool {
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
            maxmemory_policy: self.redis.maxmemory_policy(),
        }
    }

    /// Updates the last recovery's report (for work that finishes after
    /// the circuit closed, like flushing buffered publishes).
    pub fn report(&self, update: impl FnOnce(&mut Reconciliation)) {
        update(&mut lock(&self.state).reconciliation);
    }

    /// Opens the circuit (once per outage).
    pub fn trip(&self, err: &BackendError) {
        let tripped = self.up.send_if_modified(|up| std::mem::replace(up, false));
        if tripped {
            let mut state = lock(&self.state);
            state.since = SystemTime::now();
            state.transitions += 1;
            state.last_error = Some(err.to_string());
            drop(state);
            for part in self.parts() {
                part.tripped();
            }
            self.metrics.set_backend("memory");
            tracing::warn!(error = %err, "Redis unreachable: serving from memory until it answers again");
        }
    }

    /// Sends a request to Redis while the circuit is closed; otherwise, or
    /// if this request finds Redis gone, answers from memory or refuses, as
    /// `down` says. A request that finds Redis gone and may not fall back
    /// gets the outage itself (503 `unavailable`, "storage backend
    /// unavailable": Redis may have applied it), not the refusal given to
    /// those that never reached Redis.
    pub async fn route<T, R, M, MF>(
        &self,
        primitive: &'static str,
        down: &WhileDown,
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
                Err(err) if err.is_outage() => {
                    self.trip(&err);
                    // A request that failing closed cannot serve says that
                    // Redis did not answer it (it may have applied it), not
                    // that it was refused before reaching Redis.
                    if let WhileDown::Fail(_) = down {
                        return Err(err);
                    }
                }
                other => return other,
            }
        }
        match down {
            WhileDown::Local => {
                self.metrics.count_fallback(primitive, "local");
                memory().await
            }
            WhileDown::Fail(reason) => {
                self.metrics.count_fallback(primitive, "fail_closed");
                Err(BackendError::FailClosed(reason.clone()))
            }
        }
    }

    /// Reconciles, then routes back to Redis. Returns false (staying on
    /// memory) if Redis went away again meanwhile.
    async fn recover(&self) -> bool {
        let mut report = Reconciliation {
            at: Some(SystemTime::now()),
            ..Reconciliation::default()
        };
        let parts = self.parts();
        for part in &parts {
            if part.restore(&mut report).await.is_err() {
                return false;
            }
        }
        for part in &parts {
            part.reconcile(&mut report);
        }
        {
            let mut state = lock(&self.state);
            state.since = SystemTime::now();
            state.transitions += 1;
            state.reconciliation = report;
        }
        self.up.send_replace(true);
        self.metrics.set_backend("redis");
        tracing::info!(
            cache_entries_dropped = report.cache_entries_dropped,
            locks_released = report.locks_released,
            members_reasserted = report.members_reasserted,
            members_lost = report.members_lost,
            messages_dropped = report.messages_dropped,
            map_changes_replayed = report.map_changes_replayed,
            flushing = report.flushing,
            "Redis is back: reconciled and serving from Redis"
        );
        for part in parts {
            part.recovered();
        }
        true
    }
}

/// Waits for outages and probes Redis until it answers.
async fn probe(circuit: Weak<Circuit>, mut up: watch::Receiver<bool>) {
    loop {
        // Err: the circuit is gone.
        if up.wait_for(|up| !*up).await.is_err() {
            return;
        }
        let Some(probing) = circuit.upgrade().map(|c| c.probing) else {
            return;
        };
        let mut delay = probing.interval;
        loop {
            tokio::time::sleep(delay).await;
            let Some(c) = circuit.upgrade() else { return };
            match c.redis.probe().await {
                Ok(()) if c.recover().await => break,
                Ok(()) => {}
                Err(err) => lock(&c.state).last_error = Some(err.to_string()),
            }
            delay = (delay * 2).min(probing.max);
        }
    }
}

impl Fallback {
    /// What the circuit does with `primitive` (its `failover.<primitive>`
    /// key) while Redis is down.
    pub fn while_down(self, primitive: &str) -> WhileDown {
        match self {
            Fallback::Local => WhileDown::Local,
            Fallback::Fail => WhileDown::Fail(format!(
                "Redis is unreachable and {primitive} is configured to fail meanwhile (failover.{primitive} = \"fail\")"
            )),
        }
    }
}
