//! Counters in memory, on this sidecar's monotonic clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::time::Instant;

use super::store::{CounterStore, CounterValue, Increment, Incremented};
use crate::backend::BackendError;

struct Slot {
    value: i64,
    expires_at: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn read(&self, now: Instant) -> CounterValue {
        CounterValue {
            value: self.value,
            exists: true,
            ttl: self.expires_at.map(|at| at - now),
        }
    }
}

/// Counters in local memory.
pub struct MemoryCounters {
    /// Short, synchronous critical sections: a plain mutex.
    inner: Mutex<HashMap<String, Slot>>,
}

impl MemoryCounters {
    pub fn new() -> Arc<Self> {
        let counters = Arc::new(MemoryCounters {
            inner: Mutex::new(HashMap::new()),
        });
        crate::backend::memory::spawn_sweep(Arc::downgrade(&counters), MemoryCounters::sweep);
        counters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops expired counters.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, slot| slot.live(now));
    }

    /// Puts back a count taken out with [`MemoryCounters::drain`], adding
    /// to what was counted since.
    pub fn restore(&self, name: &str, counted: CounterValue) {
        let now = Instant::now();
        let mut counters = self.lock();
        let slot = counters.entry(name.to_string()).or_insert(Slot {
            value: 0,
            expires_at: counted.ttl.map(|ttl| now + ttl),
        });
        slot.value = slot.value.saturating_add(counted.value);
    }

    /// Takes every live counter out: (name, value, remaining lifetime).
    pub fn drain(&self) -> Vec<(String, CounterValue)> {
        let now = Instant::now();
        self.lock()
            .drain()
            .filter(|(_, slot)| slot.live(now))
            .map(|(name, slot)| {
                let value = slot.read(now);
                (name, value)
            })
            .collect()
    }
}

#[async_trait]
impl CounterStore for MemoryCounters {
    async fn increment(&self, name: &str, inc: Increment) -> Result<Incremented, BackendError> {
        let now = Instant::now();
        let mut counters = self.lock();
        if counters.get(name).is_some_and(|slot| !slot.live(now)) {
            counters.remove(name);
        }
        let current = counters.get(name).map_or(0, |slot| slot.value);
        let Some(next) = inc.apply(current) else {
            let read = counters
                .get(name)
                .map_or_else(CounterValue::default, |slot| slot.read(now));
            return Ok(Incremented::OutOfBounds(read));
        };
        let slot = counters.entry(name.to_string()).or_insert(Slot {
            value: 0,
            expires_at: inc.ttl.map(|ttl| now + ttl),
        });
        slot.value = next;
        Ok(Incremented::Done(slot.read(now)))
    }

    async fn get(&self, name: &str) -> Result<CounterValue, BackendError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .get(name)
            .filter(|slot| slot.live(now))
            .map_or_else(CounterValue::default, |slot| slot.read(now)))
    }

    async fn reset(&self, name: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        Ok(self.lock().remove(name).is_some_and(|slot| slot.live(now)))
    }
}
