//! Counters on Redis: a string per counter (`ns:ctr:{name}`), changed by
//! one script per increment (`incr.lua`) so the bounds are checked and the
//! window started in the same step.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::store::{CounterStore, CounterValue, Increment, Incremented, MAX_MAGNITUDE};
use crate::backend::BackendError;
use crate::backend::redis::RedisStore;

/// Counters in Redis.
pub struct RedisCounters {
    redis: Arc<RedisStore>,
    incr: Script,
    read: Script,
}

impl RedisCounters {
    pub fn new(redis: Arc<RedisStore>) -> Self {
        RedisCounters {
            redis,
            incr: Script::new(include_str!("incr.lua")),
            read: Script::new(include_str!("read.lua")),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:ctr:{{{name}}}", self.redis.namespace)
    }
}

/// A counter from a script's `value` and `PTTL` (-2: no such key; -1: no
/// expiry).
fn counter(value: i64, pttl: i64) -> CounterValue {
    CounterValue {
        value,
        exists: pttl != -2,
        ttl: (pttl >= 0).then(|| Duration::from_millis(pttl as u64)),
    }
}

#[async_trait]
impl CounterStore for RedisCounters {
    async fn increment(&self, name: &str, inc: Increment) -> Result<Incremented, BackendError> {
        let mut call = self.incr.key(self.key(name));
        let bound = |b: Option<i64>| b.map(|b| b.to_string()).unwrap_or_default();
        call.arg(inc.by)
            .arg(inc.ttl.map_or(0, |t| t.as_millis().max(1) as u64))
            .arg(bound(inc.min))
            .arg(bound(inc.max))
            .arg(MAX_MAGNITUDE);
        let mut conn = self.redis.conn();
        let (applied, value, pttl): (i64, i64, i64) =
            self.redis.call(call.invoke_async(&mut conn)).await?;
        let read = counter(value, pttl);
        Ok(if applied == 1 {
            Incremented::Done(read)
        } else {
            Incremented::OutOfBounds(read)
        })
    }

    async fn get(&self, name: &str) -> Result<CounterValue, BackendError> {
        let mut conn = self.redis.conn();
        let call = self.read.key(self.key(name));
        let (_, value, pttl): (i64, i64, i64) =
            self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(counter(value, pttl))
    }

    async fn reset(&self, name: &str) -> Result<bool, BackendError> {
        let mut conn = self.redis.conn();
        let deleted: i64 = self
            .redis
            .call(redis::cmd("DEL").arg(self.key(name)).query_async(&mut conn))
            .await?;
        Ok(deleted == 1)
    }
}
