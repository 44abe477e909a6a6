//! The running sidecar's shared state: every primitive, wired to its
//! backend, plus what `Admin.Status` reports. Both APIs hold one [`App`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::CacheStore;
use crate::backend::memory::MemoryStore;
use crate::backend::redis::RedisStore;
use crate::cache::{Cache, CacheStats};
use crate::config::Config;
use crate::telemetry::Metrics;

/// What the sidecar is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub version: &'static str,
    pub namespace: String,
    pub backend: &'static str,
    pub uptime: Duration,
    pub cache: CacheStats,
}

/// Shared state behind both APIs.
pub struct App {
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
    namespace: String,
    started: Instant,
    /// Set when shutdown begins, so `/readyz` turns away new traffic while
    /// in-flight requests drain.
    draining: AtomicBool,
}

impl App {
    /// Connects the configured backend: Redis when `redis.url` is set,
    /// memory otherwise.
    pub async fn new(config: &Config) -> anyhow::Result<Arc<App>> {
        let store: Arc<dyn CacheStore> = match &config.redis.url {
            Some(url) => Arc::new(
                RedisStore::connect(&config.redis, &config.namespace)
                    .await
                    .map_err(|err| anyhow::anyhow!("redis.url: cannot use {url}: {err}"))?,
            ),
            None => MemoryStore::new(config.memory.clone()),
        };
        Ok(Arc::new(App::with_store(config, store)))
    }

    /// An app over a given store (tests use this with either backend).
    pub fn with_store(config: &Config, store: Arc<dyn CacheStore>) -> App {
        let metrics = Arc::new(Metrics::new(store.kind()));
        App {
            cache: Cache::new(store, config.limits.clone(), metrics.clone()),
            metrics,
            namespace: config.namespace.clone(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            namespace: self.namespace.clone(),
            backend: self.cache.backend_kind(),
            uptime: self.started.elapsed(),
            cache: self.cache.stats(),
        }
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
