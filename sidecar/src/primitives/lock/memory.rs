//! Locks and semaphores in memory: leases in maps, expired ones dropped
//! when touched and by a background sweep.
//!
//! Fences come from one counter for every lock: strictly increasing per
//! lock name (as required) without keeping a counter per name forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::store::{Acquire, InUse, InUsePage, Kind, LockStore};
use crate::backend::BackendError;

/// Lock and semaphore state in local memory.
pub struct MemoryLocks {
    /// A plain mutex: critical sections are short map updates with no
    /// `.await` inside.
    inner: Mutex<Inner>,
    released: broadcast::Sender<String>,
}

#[derive(Default)]
struct Inner {
    locks: HashMap<String, Lease>,
    /// semaphore name -> token -> lease expiry
    permits: HashMap<String, HashMap<String, Instant>>,
    last_fence: u64,
}

struct Lease {
    token: String,
    fence: u64,
    expires_at: Instant,
}

impl MemoryLocks {
    pub fn new() -> Arc<Self> {
        let locks = Arc::new(MemoryLocks {
            inner: Mutex::new(Inner::default()),
            released: broadcast::channel(1024).0,
        });
        crate::backend::memory::spawn_sweep(Arc::downgrade(&locks), MemoryLocks::sweep);
        locks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, what: String) {
        // No receivers is fine: nobody is waiting.
        let _ = self.released.send(what);
    }

    /// Releases every lock and permit; returns how many were held.
    pub fn clear(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.locks.len() + inner.permits.values().map(HashMap::len).sum::<usize>();
        inner.locks.clear();
        inner.permits.clear();
        n
    }

    /// Drops expired leases (and tells waiters, as Redis' expiry would let
    /// them in).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut freed = vec![];
        {
            let mut inner = self.lock();
            inner.locks.retain(|name, lease| {
                let live = lease.expires_at > now;
                if !live {
                    freed.push(format!("lock:{name}"));
                }
                live
            });
            inner.permits.retain(|name, holders| {
                let before = holders.len();
                holders.retain(|_, at| *at > now);
                if holders.len() < before {
                    freed.push(format!("sem:{name}"));
                }
                !holders.is_empty()
            });
        }
        for what in freed {
            self.notify(what);
        }
    }
}

impl Inner {
    /// Every lock or semaphore in use, by name.
    fn in_use(&self, kind: Kind, now: Instant) -> impl Iterator<Item = InUse> + '_ {
        let locks = self
            .locks
            .iter()
            .filter(move |(_, lease)| kind == Kind::Lock && lease.expires_at > now)
            .map(move |(name, lease)| InUse {
                name: name.clone(),
                fence: lease.fence,
                held: 1,
                ttl: lease.expires_at - now,
            });
        let semaphores = self
            .permits
            .iter()
            .filter(move |_| kind == Kind::Semaphore)
            .filter_map(move |(name, holders)| {
                let live = holders.values().filter(|at| **at > now);
                Some(InUse {
                    name: name.clone(),
                    fence: 0,
                    held: live.clone().count() as u32,
                    ttl: *live.min()? - now,
                })
            });
        locks.chain(semaphores)
    }
}

fn live_lease<'a>(inner: &'a mut Inner, name: &str, now: Instant) -> Option<&'a mut Lease> {
    if inner.locks.get(name).is_some_and(|l| l.expires_at <= now) {
        inner.locks.remove(name);
    }
    inner.locks.get_mut(name)
}

#[async_trait]
impl LockStore for MemoryLocks {
    async fn try_acquire(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(lease) = live_lease(&mut inner, name, now) {
            return Ok(Acquire::Held {
                retry_in: Some(lease.expires_at - now),
            });
        }
        // As on Redis: max(last + 1, the clock in µs), so fences handed
        // out here while Redis was down stay ordered against Redis' own
        // before and after (clocks agreeing).
        inner.last_fence = crate::backend::memory::next_after(inner.last_fence);
        let fence = inner.last_fence;
        inner.locks.insert(
            name.to_string(),
            Lease {
                token: token.to_string(),
                fence,
                expires_at: now + ttl,
            },
        );
        Ok(Acquire::Acquired { fence })
    }

    async fn release(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        let released = {
            let mut inner = self.lock();
            let held = live_lease(&mut inner, name, now).is_some_and(|l| l.token == token);
            if held {
                inner.locks.remove(name);
            }
            held
        };
        if released {
            self.notify(format!("lock:{name}"));
        }
        Ok(released)
    }

    async fn extend(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match live_lease(&mut inner, name, now) {
            Some(lease) if lease.token == token => {
                lease.expires_at = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn try_acquire_permit(
        &self,
        name: &str,
        token: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Acquire, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let holders = inner.permits.entry(name.to_string()).or_default();
        holders.retain(|_, at| *at > now);
        if holders.len() < limit as usize {
            holders.insert(token.to_string(), now + ttl);
            return Ok(Acquire::Acquired { fence: 0 });
        }
        let earliest = holders.values().min().map(|at| *at - now);
        Ok(Acquire::Held { retry_in: earliest })
    }

    async fn release_permit(&self, name: &str, token: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        let released = {
            let mut inner = self.lock();
            let Some(holders) = inner.permits.get_mut(name) else {
                return Ok(false);
            };
            let released = holders.remove(token).is_some_and(|at| at > now);
            if holders.is_empty() {
                inner.permits.remove(name);
            }
            released
        };
        if released {
            self.notify(format!("sem:{name}"));
        }
        Ok(released)
    }

    async fn in_use(&self, kind: Kind, name: &str) -> Result<Option<InUse>, BackendError> {
        let inner = self.lock();
        Ok(inner.in_use(kind, Instant::now()).find(|u| u.name == name))
    }

    async fn list_in_use(
        &self,
        kind: Kind,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<InUsePage, BackendError> {
        // As the cache's listing: the cursor is the last name of the page
        // before, and names are listed in byte order.
        let after = match cursor {
            "" => None,
            c => Some(c.strip_prefix('n').ok_or(BackendError::InvalidCursor)?),
        };
        let mut items: Vec<InUse> = self
            .lock()
            .in_use(kind, Instant::now())
            .filter(|u| after.is_none_or(|a| u.name.as_str() > a))
            .filter(|u| crate::backend::glob::matches(pattern, &u.name))
            .collect();
        items.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = match (more, items.last()) {
            (true, Some(last)) => Some(format!("n{}", last.name)),
            _ => None,
        };
        Ok(InUsePage { items, next_cursor })
    }

    fn releases(&self) -> broadcast::Receiver<String> {
        self.released.subscribe()
    }
}
