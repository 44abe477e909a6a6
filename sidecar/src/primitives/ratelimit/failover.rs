//! Rate limits behind the failover circuit: Redis while it answers; while
//! it does not, as `failover.ratelimit` says: local buckets at
//! `failover.fallback_share` of each limit, allow everything, or refuse.
//! When Redis returns, the local buckets are forgotten.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::config::{Limit, RateLimitFallback};
use super::memory::MemoryRateLimits;
use super::redis::RedisRateLimits;
use super::store::{Check, Decision, RateLimitStore, Take};
use crate::backend::BackendError;
use crate::backend::circuit::{Circuit, Reconcile, Reconciliation, WhileDown};

/// Rate limits in Redis, with a memory fallback.
pub struct FailoverRateLimits {
    circuit: Arc<Circuit>,
    redis: RedisRateLimits,
    memory: Arc<MemoryRateLimits>,
    mode: RateLimitFallback,
    /// Share of each limit the local buckets allow.
    share: f64,
    /// What a denial for a cost over the local share says to wait: until
    /// the next probe may find Redis back.
    retry: Duration,
}

impl FailoverRateLimits {
    pub fn new(
        circuit: Arc<Circuit>,
        mode: RateLimitFallback,
        share: f64,
        retry: Duration,
    ) -> Arc<Self> {
        let store = Arc::new(FailoverRateLimits {
            redis: RedisRateLimits::new(circuit.redis().clone()),
            memory: MemoryRateLimits::new(),
            circuit,
            mode,
            share,
            retry,
        });
        store.circuit.register(Arc::downgrade(&store) as _);
        store
    }
}

impl Reconcile for FailoverRateLimits {
    fn reconcile(&self, _report: &mut Reconciliation) {
        self.memory.clear();
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

impl FailoverRateLimits {
    /// With the local fallback, a cost the local share can never allow:
    /// denied, until the next probe may find Redis back.
    fn over_share(&self, limit: &Limit, cost: u32) -> Option<Decision> {
        let most = scaled(limit, self.share).most();
        (cost > most).then_some(Decision {
            allowed: false,
            limit: most,
            remaining: 0,
            reset_after: limit.period,
            retry_after: Some(self.retry),
        })
    }

    fn fail_closed() -> BackendError {
        BackendError::FailClosed(
            "Redis is unreachable and rate limits fail closed (failover.ratelimit = \"fail_closed\")"
                .into(),
        )
    }
}

/// What `fail_open` answers: allowed, the whole limit left.
fn open(limit: &Limit) -> Decision {
    let most = limit.most();
    Decision {
        allowed: true,
        limit: most,
        remaining: most,
        reset_after: Duration::ZERO,
        retry_after: None,
    }
}

#[async_trait]
impl RateLimitStore for FailoverRateLimits {
    async fn check(
        &self,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
        take: Take,
    ) -> Result<Decision, BackendError> {
        if self.circuit.is_up() {
            match self.redis.check(policy, key, limit, cost, take).await {
                Err(err) if err.is_outage() => self.circuit.trip(&err),
                other => return other,
            }
        }
        let metrics = self.circuit.metrics();
        match self.mode {
            RateLimitFallback::Local => {
                metrics.count_fallback("ratelimit", "local");
                if let Some(denied) = self.over_share(limit, cost) {
                    return Ok(denied);
                }
                let local = scaled(limit, self.share);
                self.memory.check(policy, key, &local, cost, take).await
            }
            RateLimitFallback::FailOpen => {
                metrics.count_fallback("ratelimit", "fail_open");
                Ok(open(limit))
            }
            RateLimitFallback::FailClosed => {
                metrics.count_fallback("ratelimit", "fail_closed");
                Err(Self::fail_closed())
            }
        }
    }

    async fn check_all(&self, checks: &[Check]) -> Result<Vec<Decision>, BackendError> {
        if self.circuit.is_up() {
            match self.redis.check_all(checks).await {
                Err(err) if err.is_outage() => self.circuit.trip(&err),
                other => return other,
            }
        }
        let metrics = self.circuit.metrics();
        match self.mode {
            RateLimitFallback::Local => {
                metrics.count_fallback("ratelimit", "local");
                let local: Vec<Check> = checks
                    .iter()
                    .map(|c| Check {
                        limit: scaled(&c.limit, self.share),
                        ..c.clone()
                    })
                    .collect();
                if checks
                    .iter()
                    .all(|c| self.over_share(&c.limit, c.cost).is_none())
                {
                    return self.memory.check_all(&local).await;
                }
                // One can never fit the local share: nothing is taken, the
                // others are only peeked.
                let mut decisions = Vec::with_capacity(checks.len());
                for (c, l) in checks.iter().zip(&local) {
                    decisions.push(match self.over_share(&c.limit, c.cost) {
                        Some(denied) => denied,
                        None => {
                            self.memory
                                .check(&l.policy, &l.key, &l.limit, l.cost, Take::Peek)
                                .await?
                        }
                    });
                }
                Ok(decisions)
            }
            RateLimitFallback::FailOpen => {
                metrics.count_fallback("ratelimit", "fail_open");
                Ok(checks.iter().map(|c| open(&c.limit)).collect())
            }
            RateLimitFallback::FailClosed => {
                metrics.count_fallback("ratelimit", "fail_closed");
                Err(Self::fail_closed())
            }
        }
    }

    /// Resets in Redis; while it is down, the local buckets (what the
    /// local fallback counts in), unless rate limits fail closed.
    async fn reset(&self, policy: &str, key: &str) -> Result<bool, BackendError> {
        let down = match self.mode {
            RateLimitFallback::FailClosed => WhileDown::Fail(Self::fail_closed().to_string()),
            RateLimitFallback::Local | RateLimitFallback::FailOpen => WhileDown::Local,
        };
        self.circuit
            .route("ratelimit", &down, self.redis.reset(policy, key), || {
                self.memory.reset(policy, key)
            })
            .await
    }
}
