//! Locks and semaphores on Redis: one script per decision; releases are
//! published on `ns:released` so waiters on every sidecar wake at once.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::RedisStore;
use crate::backend::{Acquire, BackendError, LockStore};

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl RedisStore {
    fn lock_key(&self, name: &str) -> String {
        format!("{}:lock:{{{name}}}", self.namespace)
    }

    fn release_channel(&self) -> String {
        format!("{}:released", self.namespace)
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
        let wanted = self.lock_wait_replicas;
        let limit = self.deadline / 2;
        let mut conn = self.conn();
        let confirmed = self.call(conn.wait_replicas(key, wanted, limit)).await;
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
impl LockStore for RedisStore {
    async fn try_acquire(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        let key = self.lock_key(name);
        let mut conn = self.conn();
        let mut call = self.scripts.lock_acquire.key(&key);
        call.key(format!("{key}:fence")).arg(token).arg(ms(ttl));
        let (acquired, n): (i64, i64) = self.call(call.invoke_async(&mut conn)).await?;
        if acquired != 1 {
            return Ok(Self::held(n));
        }
        if self.lock_wait_replicas > 0 {
            self.await_fence_replicated(name, token, &key).await?;
        }
        Ok(Acquire::Acquired { fence: n as u64 })
    }

    async fn release(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        let mut conn = self.conn();
        let mut call = self.scripts.lock_release.key(self.lock_key(name));
        call.arg(token)
            .arg(self.release_channel())
            .arg(format!("lock:{name}"));
        let released: i64 = self.call(call.invoke_async(&mut conn)).await?;
        Ok(released == 1)
    }

    async fn extend(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, BackendError> {
        let mut conn = self.conn();
        let mut call = self.scripts.lock_extend.key(self.lock_key(name));
        call.arg(token).arg(ms(ttl));
        let extended: i64 = self.call(call.invoke_async(&mut conn)).await?;
        Ok(extended == 1)
    }

    async fn try_acquire_permit(
        &self,
        name: &str,
        token: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        let mut conn = self.conn();
        let mut call = self
            .scripts
            .permit_acquire
            .key(format!("{}:sem:{{{name}}}", self.namespace));
        call.arg(token).arg(limit).arg(ms(ttl));
        let (acquired, n): (i64, i64) = self.call(call.invoke_async(&mut conn)).await?;
        Ok(if acquired == 1 {
            Acquire::Acquired { fence: 0 }
        } else {
            Self::held(n)
        })
    }

    async fn release_permit(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        let mut conn = self.conn();
        let mut call = self
            .scripts
            .permit_release
            .key(format!("{}:sem:{{{name}}}", self.namespace));
        call.arg(token)
            .arg(self.release_channel())
            .arg(format!("sem:{name}"));
        let released: i64 = self.call(call.invoke_async(&mut conn)).await?;
        Ok(released == 1)
    }

    fn releases(&self) -> broadcast::Receiver<String> {
        self.released.subscribe()
    }
}
