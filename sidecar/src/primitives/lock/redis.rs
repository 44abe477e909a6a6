//! Locks and semaphores on Redis: one script per decision; releases are
//! published on `ns:released` so waiters on every sidecar wake at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use tokio::sync::broadcast;

use super::store::{Acquire, InUse, InUsePage, Kind, LockStore};
use crate::backend::BackendError;
use crate::backend::redis::{AbortOnDrop, RedisStore};

/// Locks and semaphores in Redis.
pub struct RedisLocks {
    redis: Arc<RedisStore>,
    scripts: Scripts,
    /// Releases heard on `ns:released`, fanned out to local lock waiters.
    released: broadcast::Sender<String>,
    /// Forwards `ns:released` into `released` while the store lives.
    _forwarder: AbortOnDrop,
}

struct Scripts {
    lock_acquire: Script,
    lock_release: Script,
    lock_extend: Script,
    permit_acquire: Script,
    permit_release: Script,
    in_use: Script,
}

impl RedisLocks {
    /// Listens for releases from every sidecar sharing `redis`.
    pub async fn new(redis: Arc<RedisStore>) -> Result<Self, BackendError> {
        let channel = format!("{}:released", redis.namespace);
        let (released, forwarder) = redis.forward_channel(channel).await?;
        Ok(RedisLocks {
            redis,
            scripts: Scripts {
                lock_acquire: Script::new(include_str!("lock_acquire.lua")),
                lock_release: Script::new(include_str!("lock_release.lua")),
                lock_extend: Script::new(include_str!("lock_extend.lua")),
                permit_acquire: Script::new(include_str!("permit_acquire.lua")),
                permit_release: Script::new(include_str!("permit_release.lua")),
                in_use: Script::new(include_str!("in_use.lua")),
            },
            released,
            _forwarder: forwarder,
        })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl RedisLocks {
    fn lock_key(&self, name: &str) -> String {
        format!("{}:lock:{{{name}}}", self.redis.namespace)
    }

    /// The key kind in `ns:<kind>:{name}`.
    fn kind_prefix(kind: Kind) -> &'static str {
        match kind {
            Kind::Lock => "lock",
            Kind::Semaphore => "sem",
        }
    }

    fn release_channel(&self) -> String {
        format!("{}:released", self.redis.namespace)
    }

    /// Waits (`WAIT`, within half the deadline) until
    /// `redis.lock_wait_replicas` replicas have the acquisition, so a
    /// master failover cannot hand the same fence out again. If they do
    /// not confirm in time, releases the lock and fails the acquisition:
    /// a fence only the master has is never given to a client.
    async fn await_fence_replicated(
        &self,
        name: &str,
        token: &str,
        key: &str,
    ) -> Result<(), BackendError> {
        let wanted = self.redis.wait_replicas;
        let limit = self.redis.deadline / 2;
        let mut conn = self.redis.conn();
        let confirmed = self
            .redis
            .call(conn.wait_replicas(key, wanted, limit))
            .await;
        if matches!(confirmed, Ok(n) if n >= wanted) {
            return Ok(());
        }
        // Best effort: if this fails too, the lease runs out by itself.
        let _ = self.release(name, token).await;
        let got = match confirmed {
            Ok(n) => format!("{n} of {wanted} replicas"),
            Err(err) => format!("no answer from the master ({err})"),
        };
        Err(BackendError::FailClosed(format!(
            "lock {name:?} was not acquired: its fence reached {got} within {limit:?} \
             (redis.lock_wait_replicas), so a failover could lose it"
        )))
    }

    fn held(remaining_ms: i64) -> Acquire {
        Acquire::Held {
            retry_in: (remaining_ms >= 0).then(|| Duration::from_millis(remaining_ms as u64)),
        }
    }
}

#[async_trait]
impl LockStore for RedisLocks {
    async fn try_acquire(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        let key = self.lock_key(name);
        let mut conn = self.redis.conn();
        let mut call = self.scripts.lock_acquire.key(&key);
        call.key(format!("{key}:fence")).arg(token).arg(ms(ttl));
        let (acquired, n): (i64, i64) = self.redis.call(call.invoke_async(&mut conn)).await?;
        if acquired != 1 {
            return Ok(Self::held(n));
        }
        if self.redis.wait_replicas > 0 {
            self.await_fence_replicated(name, token, &key).await?;
        }
        Ok(Acquire::Acquired { fence: n as u64 })
    }

    async fn release(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        let mut conn = self.redis.conn();
        let mut call = self.scripts.lock_release.key(self.lock_key(name));
        call.arg(token)
            .arg(self.release_channel())
            .arg(format!("lock:{name}"));
        let released: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(released == 1)
    }

    async fn extend(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, BackendError> {
        let mut conn = self.redis.conn();
        let mut call = self.scripts.lock_extend.key(self.lock_key(name));
        call.arg(token).arg(ms(ttl));
        let extended: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(extended == 1)
    }

    async fn try_acquire_permit(
        &self,
        name: &str,
        token: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        let mut conn = self.redis.conn();
        let mut call = self
            .scripts
            .permit_acquire
            .key(format!("{}:sem:{{{name}}}", self.redis.namespace));
        call.arg(token).arg(limit).arg(ms(ttl));
        let (acquired, n): (i64, i64) = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(if acquired == 1 {
            Acquire::Acquired { fence: 0 }
        } else {
            Self::held(n)
        })
    }

    async fn release_permit(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        let mut conn = self.redis.conn();
        let mut call = self
            .scripts
            .permit_release
            .key(format!("{}:sem:{{{name}}}", self.redis.namespace));
        call.arg(token)
            .arg(self.release_channel())
            .arg(format!("sem:{name}"));
        let released: i64 = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(released == 1)
    }

    async fn in_use(&self, kind: Kind, name: &str) -> Result<Option<InUse>, BackendError> {
        let key = format!(
            "{}:{}:{{{name}}}",
            self.redis.namespace,
            Self::kind_prefix(kind)
        );
        let mut conn = self.redis.conn();
        let mut call = self.scripts.in_use.key(&key);
        if kind == Kind::Lock {
            call.key(format!("{key}:fence"));
        }
        let found: Option<(i64, i64, i64)> = self.redis.call(call.invoke_async(&mut conn)).await?;
        Ok(found.map(|(held, ttl, fence)| InUse {
            name: name.to_string(),
            fence: fence.max(0) as u64,
            held: held.max(0) as u32,
            ttl: Duration::from_millis(ttl.max(0) as u64),
        }))
    }

    async fn list_in_use(
        &self,
        kind: Kind,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<InUsePage, BackendError> {
        let cursor = match cursor {
            "" => 0,
            c => c.parse().map_err(|_| BackendError::InvalidCursor)?,
        };
        let prefix = Self::kind_prefix(kind);
        let (next, keys) = self.redis.scan(prefix, cursor, pattern, limit).await?;
        let start = format!("{}:{prefix}:{{", self.redis.namespace);
        let mut items = vec![];
        for key in keys {
            let Some(name) = key.strip_prefix(&start).and_then(|k| k.strip_suffix('}')) else {
                continue;
            };
            // Gone since the SCAN saw it: not in use.
            if let Some(found) = self.in_use(kind, name).await? {
                items.push(found);
            }
        }
        Ok(InUsePage {
            items,
            next_cursor: (next != 0).then(|| next.to_string()),
        })
    }

    fn releases(&self) -> broadcast::Receiver<String> {
        self.released.subscribe()
    }
}
