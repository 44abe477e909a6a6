//! Rate limits on Redis: one script per decision (`gcra.lua`,
//! `window.lua`), on Redis' clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::config::{Algorithm, Limit};
use super::store::{Decision, RateLimitStore, Take};
use crate::backend::BackendError;
use crate::backend::redis::RedisStore;

/// Rate-limit counters in Redis.
pub struct RedisRateLimits {
    redis: Arc<RedisStore>,
    scripts: Scripts,
}

struct Scripts {
    gcra: Script,
    window: Script,
}

impl RedisRateLimits {
    /// `ns:rl:<algorithm>:{policy:key}`: every algorithm's state of one
    /// (policy, key) in one slot.
    fn key(&self, algorithm: Algorithm, policy: &str, key: &str) -> String {
        format!(
            "{}:rl:{}:{{{policy}:{key}}}",
            self.redis.namespace,
            algorithm.name()
        )
    }

    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisRateLimits {
            redis,
            scripts: Scripts {
                gcra: Script::new(include_str!("gcra.lua")),
                window: Script::new(include_str!("window.lua")),
            },
        }
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimits {
    async fn check(
        &self,
        policy: &str,
        key: &str,
        limit: &Limit,
        cost: u32,
        take: Take,
    ) -> Result<Decision, BackendError> {
        let state = self.key(limit.algorithm, policy, key);
        let peek = if take == Take::Peek { "1" } else { "0" };
        let period_us = limit.period.as_micros() as f64;
        let mut conn = self.redis.conn();
        let call = match limit.algorithm {
            Algorithm::Gcra => {
                let mut call = self.scripts.gcra.key(state);
                // The interval may be fractional: pass it exactly.
                call.arg(format!("{:.6}", period_us / f64::from(limit.limit)))
                    .arg(limit.burst)
                    .arg(cost)
                    .arg(peek);
                call
            }
            Algorithm::SlidingWindow | Algorithm::FixedWindow => {
                let mut call = self.scripts.window.key(state);
                call.arg(limit.period.as_micros() as u64)
                    .arg(limit.limit)
                    .arg(cost)
                    .arg(if limit.algorithm == Algorithm::SlidingWindow {
                        "sliding"
                    } else {
                        "fixed"
                    })
                    .arg(peek);
                call
            }
        };
        let (allowed, remaining, reset_us, retry_us): (i64, i64, i64, i64) =
            self.redis.call(call.invoke_async(&mut conn)).await?;
        let us = |n: i64| Duration::from_micros(n.max(0) as u64);
        Ok(Decision {
            allowed: allowed == 1,
            limit: if limit.algorithm == Algorithm::Gcra {
                limit.burst
            } else {
                limit.limit
            },
            remaining: remaining.max(0) as u32,
            reset_after: us(reset_us),
            retry_after: (retry_us >= 0).then(|| us(retry_us)),
        })
    }

    async fn reset(&self, policy: &str, key: &str) -> Result<bool, BackendError> {
        let mut del = redis::cmd("DEL");
        for algorithm in Algorithm::ALL {
            del.arg(self.key(algorithm, policy, key));
        }
        let mut conn = self.redis.conn();
        let deleted: i64 = self.redis.call(del.query_async(&mut conn)).await?;
        Ok(deleted > 0)
    }
}
