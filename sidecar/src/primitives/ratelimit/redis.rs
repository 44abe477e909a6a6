//! Rate limits on Redis: one script per decision (`gcra.lua`,
//! `window.lua`; `multi.lua` for several at once, all or none), on Redis'
//! clock.
//!
//! A (policy, key)'s state is `ns:rl:<algorithm>:{<policy>:<key>}`: every
//! algorithm's state of it in one slot, and different keys spread over all
//! slots. When `<policy>:<key>` carries a hash tag of its own (`{user42}`
//! in `login:{user42}`), the braces are not added and that tag decides the
//! slot, so checks of several policies for one user can share a slot (what
//! an atomic multi-check needs on Cluster).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::cluster_routing::Slot;

use super::config::{Algorithm, Limit};
use super::store::{Check, Decision, RateLimitStore, Take};
use crate::backend::BackendError;
use crate::backend::redis::RedisStore;

/// A limit's two terms, as the scripts take them: GCRA's emission
/// interval (fractional: passed exactly) and burst, or a window's period
/// and limit.
fn terms(limit: &Limit) -> (String, u32) {
    let period_us = limit.period.as_micros();
    match limit.algorithm {
        Algorithm::Gcra => (
            format!("{:.6}", period_us as f64 / f64::from(limit.limit)),
            limit.burst,
        ),
        Algorithm::SlidingWindow | Algorithm::FixedWindow => (period_us.to_string(), limit.limit),
    }
}

/// A decision from a script's `{allowed, remaining, reset_after µs,
/// retry_after µs (-1 = none)}`.
fn decision(
    limit: &Limit,
    (allowed, remaining, reset_us, retry_us): (i64, i64, i64, i64),
) -> Decision {
    let us = |n: i64| Duration::from_micros(n.max(0) as u64);
    Decision {
        allowed: allowed == 1,
        limit: if limit.algorithm == Algorithm::Gcra {
            limit.burst
        } else {
            limit.limit
        },
        remaining: remaining.max(0) as u32,
        reset_after: us(reset_us),
        retry_after: (retry_us >= 0).then(|| us(retry_us)),
    }
}

/// Rate-limit counters in Redis.
pub struct RedisRateLimits {
    redis: Arc<RedisStore>,
    scripts: Scripts,
}

struct Scripts {
    gcra: Script,
    window: Script,
    multi: Script,
}

macro_rules! ratelimit_script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lib.lua"), include_str!($file)))
    };
}

/// Whether Redis finds a hash tag in `name`: the first `{`, then the first
/// `}` after it, with something between.
fn has_hash_tag(name: &str) -> bool {
    name.find('{')
        .and_then(|open| name[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

impl RedisRateLimits {
    /// `ns:rl:<algorithm>:{policy:key}`, or without the braces when
    /// `policy:key` has a hash tag of its own (see the module's comment).
    fn key(&self, algorithm: Algorithm, policy: &str, key: &str) -> String {
        let (ns, algorithm) = (&self.redis.namespace, algorithm.name());
        let name = format!("{policy}:{key}");
        if has_hash_tag(&name) {
            format!("{ns}:rl:{algorithm}:{name}")
        } else {
            format!("{ns}:rl:{algorithm}:{{{name}}}")
        }
    }

    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisRateLimits {
            redis,
            scripts: Scripts {
                gcra: ratelimit_script!("gcra.lua"),
                window: ratelimit_script!("window.lua"),
                multi: ratelimit_script!("multi.lua"),
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
        let (script, mode) = match limit.algorithm {
            Algorithm::Gcra => (&self.scripts.gcra, None),
            Algorithm::SlidingWindow => (&self.scripts.window, Some("sliding")),
            Algorithm::FixedWindow => (&self.scripts.window, Some("fixed")),
        };
        let mut call = script.key(state);
        let (a, b) = terms(limit);
        call.arg(a).arg(b).arg(cost);
        if let Some(mode) = mode {
            call.arg(mode);
        }
        call.arg(peek);
        let mut conn = self.redis.conn();
        let reply: (i64, i64, i64, i64) = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(decision(limit, reply))
    }

    async fn check_all(&self, checks: &[Check]) -> Result<Vec<Decision>, BackendError> {
        let keys: Vec<String> = checks
            .iter()
            .map(|c| self.key(c.limit.algorithm, &c.policy, &c.key))
            .collect();
        if self.redis.is_cluster()
            && let Some((first, rest)) = keys.split_first()
        {
            let slot = |key: &String| Slot::for_key(key.as_bytes());
            if rest.iter().any(|key| slot(key) != slot(first)) {
                return Err(BackendError::Unservable(
                    "on Redis Cluster the checks of one multi-check must share a hash tag: give their keys the same one, e.g. \"{user42}:login\" and \"{user42}:api\" (see \"Rate limits\" in the README)"
                        .into(),
                ));
            }
        }
        let mut call = self.scripts.multi.prepare_invoke();
        for (check, key) in checks.iter().zip(keys) {
            let (a, b) = terms(&check.limit);
            call.key(key)
                .arg(match check.limit.algorithm {
                    Algorithm::Gcra => "gcra",
                    Algorithm::SlidingWindow => "sliding",
                    Algorithm::FixedWindow => "fixed",
                })
                .arg(a)
                .arg(b)
                .arg(check.cost);
        }
        let mut conn = self.redis.conn();
        let reply: Vec<i64> = self.redis.call(call.invoke_async(&mut conn)).await?;
        if reply.len() != checks.len() * 4 {
            return Err(BackendError::Protocol(
                "rate-limit multi-check reply".into(),
            ));
        }
        Ok(checks
            .iter()
            .zip(reply.chunks(4))
            .map(|(c, d)| decision(&c.limit, (d[0], d[1], d[2], d[3])))
            .collect())
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

#[cfg(test)]
mod tests {
    use super::has_hash_tag;

    #[test]
    fn hash_tags_are_found_as_redis_finds_them() {
        assert!(has_hash_tag("login:{user42}"));
        assert!(has_hash_tag("{p}:k"));
        assert!(has_hash_tag("a{b}c{d}"));
        assert!(!has_hash_tag("login:user42"));
        assert!(
            !has_hash_tag("login:{}{user42}"),
            "the first pair is empty: no tag"
        );
        assert!(!has_hash_tag("login:}{"));
        assert!(!has_hash_tag("login:{open"));
    }
}
