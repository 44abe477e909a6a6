//! The running sidecar's shared state: every primitive, wired to its
//! backend, plus what `Admin.Status` reports. Both APIs hold one [`App`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::auth::Auth;
use crate::backend::BackendError;
use crate::backend::circuit::{Circuit, FailoverStatus, Probing};
use crate::backend::redis::RedisStore;
use crate::config::Config;
use crate::error::Result;
use crate::plugins::{Call, Caller, HostFacts, PluginStatus, Plugins};
use crate::primitives::Common;
use crate::primitives::cache::failover::FailoverCache;
use crate::primitives::cache::memory::MemoryStore;
use crate::primitives::cache::redis::RedisCache;
use crate::primitives::cache::store::CacheStore;
use crate::primitives::cache::{Cache, CacheStats};
use crate::primitives::counter::Counters;
use crate::primitives::counter::failover::FailoverCounters;
use crate::primitives::counter::memory::MemoryCounters;
use crate::primitives::counter::redis::RedisCounters;
use crate::primitives::counter::store::CounterStore;
use crate::primitives::lock::Locks;
use crate::primitives::lock::failover::FailoverLocks;
use crate::primitives::lock::memory::MemoryLocks;
use crate::primitives::lock::redis::RedisLocks;
use crate::primitives::lock::store::LockStore;
use crate::primitives::map::Maps;
use crate::primitives::map::failover::FailoverMaps;
use crate::primitives::map::memory::MemoryMaps;
use crate::primitives::map::redis::RedisMaps;
use crate::primitives::map::store::MapStore;
use crate::primitives::presence::Presence;
use crate::primitives::presence::failover::FailoverPresence;
use crate::primitives::presence::memory::MemoryPresence;
use crate::primitives::presence::redis::RedisPresence;
use crate::primitives::presence::store::PresenceStore;
use crate::primitives::pubsub::PubSub;
use crate::primitives::pubsub::failover::{Buffering, FailoverPubSub};
use crate::primitives::pubsub::memory::MemoryPubSub;
use crate::primitives::pubsub::redis::RedisPubSub;
use crate::primitives::pubsub::store::PubSubStore;
use crate::primitives::queue::Queues;
use crate::primitives::queue::failover::{FailoverQueues, WhileRedisDown};
use crate::primitives::queue::memory::MemoryQueues;
use crate::primitives::queue::redis::RedisQueues;
use crate::primitives::queue::store::QueueStore;
use crate::primitives::ratelimit::RateLimits;
use crate::primitives::ratelimit::failover::FailoverRateLimits;
use crate::primitives::ratelimit::memory::MemoryRateLimits;
use crate::primitives::ratelimit::redis::RedisRateLimits;
use crate::primitives::ratelimit::store::RateLimitStore;
use crate::telemetry::Metrics;

/// What the sidecar is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub version: &'static str,
    pub namespace: String,
    pub backend: &'static str,
    pub uptime: Duration,
    pub cache: CacheStats,
    /// With Redis configured: where requests go and how the last recovery
    /// went.
    pub failover: Option<FailoverStatus>,
    /// Every configured plugin, in order.
    pub plugins: Vec<PluginStatus>,
}

/// One backend's storage for every primitive.
pub struct Stores {
    pub cache: Arc<dyn CacheStore>,
    pub locks: Arc<dyn LockStore>,
    pub ratelimits: Arc<dyn RateLimitStore>,
    pub presence: Arc<dyn PresenceStore>,
    pub pubsub: Arc<dyn PubSubStore>,
    pub counters: Arc<dyn CounterStore>,
    pub maps: Arc<dyn MapStore>,
    pub queues: Arc<dyn QueueStore>,
}

impl Stores {
    /// Local memory, bounded as `config.memory` says.
    pub fn memory(config: &Config) -> Stores {
        Stores {
            cache: MemoryStore::new(config.memory.clone()),
            locks: MemoryLocks::new(),
            ratelimits: MemoryRateLimits::new(),
            presence: Arc::new(MemoryPresence::new(config.pubsub.subscriber_buffer)),
            pubsub: Arc::new(MemoryPubSub::new(
                config.pubsub.subscriber_buffer,
                config.pubsub.memory_history_bytes,
            )),
            counters: MemoryCounters::new(),
            maps: Arc::new(MemoryMaps::new(config.pubsub.subscriber_buffer)),
            queues: MemoryQueues::new(config.queues.memory_max_jobs),
        }
    }

    /// Redis alone, with no fallback (tests and tools), and the near cache
    /// if `config.cache.near` enables it.
    pub async fn redis(redis: Arc<RedisStore>, config: &Config) -> Result<Stores, BackendError> {
        Ok(Stores {
            cache: Arc::new(redis_cache(&redis, config)),
            locks: Arc::new(RedisLocks::new(redis.clone()).await?),
            ratelimits: Arc::new(RedisRateLimits::new(redis.clone())),
            presence: Arc::new(RedisPresence::new(redis.clone())),
            pubsub: Arc::new(RedisPubSub::new(redis.clone())),
            counters: Arc::new(RedisCounters::new(redis.clone())),
            maps: Arc::new(RedisMaps::new(redis.clone())),
            queues: Arc::new(RedisQueues::new(redis).await?),
        })
    }

    /// Redis behind `circuit`, each primitive with its memory fallback as
    /// `config.failover` says.
    pub async fn failover(circuit: &Arc<Circuit>, config: &Config) -> Result<Stores, BackendError> {
        let failover = &config.failover;
        Ok(Stores {
            cache: FailoverCache::new(
                circuit.clone(),
                redis_cache(circuit.redis(), config),
                MemoryStore::new(config.memory.clone()),
                failover.cache.while_down("cache"),
            ),
            locks: FailoverLocks::new(circuit.clone(), failover.locks).await?,
            ratelimits: FailoverRateLimits::new(
                circuit.clone(),
                failover.ratelimit,
                failover.fallback_share,
                failover.probe_interval,
            ),
            presence: FailoverPresence::new(
                circuit.clone(),
                failover.presence.while_down("presence"),
                config.pubsub.subscriber_buffer,
            ),
            pubsub: FailoverPubSub::new(
                circuit.clone(),
                Buffering {
                    down: failover.pubsub.while_down("pubsub"),
                    capacity: failover.publish_buffer,
                    flush_delay: failover.flush_delay,
                },
                MemoryPubSub::new(
                    config.pubsub.subscriber_buffer,
                    config.pubsub.memory_history_bytes,
                ),
            ),
            counters: FailoverCounters::new(
                circuit.clone(),
                failover.counters.while_down("counters"),
            ),
            maps: FailoverMaps::new(
                circuit.clone(),
                failover.maps.while_down("maps"),
                config.pubsub.subscriber_buffer,
            ),
            queues: FailoverQueues::new(
                circuit.clone(),
                WhileRedisDown {
                    buffer: failover.queues == crate::backend::circuit::Fallback::Local,
                    capacity: failover.enqueue_buffer,
                },
            )
            .await?,
        })
    }
}

/// The cache in `redis`, with the near cache if `config.cache.near` enables
/// it.
fn redis_cache(redis: &Arc<RedisStore>, config: &Config) -> RedisCache {
    let mut cache = RedisCache::new(redis.clone());
    if config.cache.near.enabled {
        cache.enable_near_cache(&config.cache.near);
    }
    cache
}

/// Shared state behind both APIs.
pub struct App {
    pub cache: Arc<Cache>,
    pub locks: Arc<Locks>,
    pub ratelimits: Arc<RateLimits>,
    pub presence: Arc<Presence>,
    pub pubsub: Arc<PubSub>,
    pub counters: Arc<Counters>,
    pub maps: Arc<Maps>,
    pub queues: Arc<Queues>,
    /// WebAssembly plugins (none configured: every hook is a no-op).
    pub plugins: Arc<Plugins>,
    /// The API token, if authentication is on.
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    namespace: String,
    started: Instant,
    /// The failover circuit, when Redis is configured: its status.
    circuit: Option<Arc<Circuit>>,
    /// What every primitive is given.
    common: Common,
    /// Set when shutdown begins, so `/readyz` turns away new traffic while
    /// in-flight requests drain, and long-lived streams (Hold) end.
    draining: watch::Sender<bool>,
}

impl App {
    /// Connects the configured backend: Redis when `redis.url` (or, in
    /// cluster and sentinel mode, `redis.nodes`) is set, memory otherwise.
    /// With Redis configured, every primitive goes through the failover
    /// backend: it starts on memory if Redis does not answer yet.
    pub async fn new(config: &Config) -> anyhow::Result<Arc<App>> {
        if !config.redis.enabled() {
            let metrics = Arc::new(Metrics::new("memory"));
            let plugins = load_plugins(config, &metrics).await;
            return Ok(Arc::new(App::build(
                config,
                Stores::memory(config),
                metrics,
                plugins,
            )?));
        }
        let metrics = Arc::new(Metrics::new("redis"));
        let redis = RedisStore::connect_lazy(
            &config.redis,
            &config.namespace,
            config.pubsub.subscriber_buffer,
        )
        .await
        .map_err(|err| {
            let key = match config.redis.mode {
                crate::config::RedisMode::Standalone => "redis.url",
                _ => "redis.nodes",
            };
            anyhow::anyhow!("{key}: cannot use {}: {err}", config.redis.describe())
        })?;
        let probing = Probing {
            interval: config.failover.probe_interval,
            max: config.failover.probe_max,
        };
        let circuit = Circuit::start(Arc::new(redis), probing, metrics.clone()).await;
        let stores = Stores::failover(&circuit, config)
            .await
            .map_err(|err| anyhow::anyhow!("cannot set up the Redis stores: {err}"))?;
        let plugins = load_plugins(config, &metrics).await;
        let mut app = App::build(config, stores, metrics, plugins)?;
        app.circuit = Some(circuit);
        Ok(Arc::new(app))
    }

    /// An app over given stores (tests use this with either backend).
    /// Authentication stays off.
    pub fn with_stores(config: &Config, stores: Stores) -> App {
        let metrics = Arc::new(Metrics::new(stores.cache.kind()));
        let mut config = config.clone();
        config.auth = Default::default();
        let plugins = Arc::new(Plugins::load(
            &config.plugins,
            host_facts(&config),
            metrics.clone(),
        ));
        App::build(&config, stores, metrics, plugins).expect("no token file to read")
    }

    fn build(
        config: &Config,
        stores: Stores,
        metrics: Arc<Metrics>,
        plugins: Arc<Plugins>,
    ) -> anyhow::Result<App> {
        let draining = watch::channel(false).0;
        let common = Common::new(plugins.clone(), draining.subscribe());
        let limits = &config.limits;
        Ok(App {
            auth: Auth::new(&config.auth)?,
            circuit: None,
            cache: Arc::new(Cache::new(
                stores.cache,
                &config.cache,
                limits.clone(),
                metrics.clone(),
                common.clone(),
            )),
            locks: Arc::new(Locks::new(
                stores.locks,
                limits.clone(),
                metrics.clone(),
                common.clone(),
            )),
            ratelimits: Arc::new(RateLimits::new(
                stores.ratelimits,
                &config.ratelimit.policies,
                limits.clone(),
                metrics.clone(),
                common.clone(),
            )),
            presence: Presence::new(
                stores.presence,
                limits.clone(),
                metrics.clone(),
                config.presence.reap_interval,
                common.clone(),
            ),
            pubsub: Arc::new(PubSub::new(
                stores.pubsub,
                limits.clone(),
                &config.pubsub,
                metrics.clone(),
                common.clone(),
            )),
            counters: Arc::new(Counters::new(
                stores.counters,
                limits.clone(),
                metrics.clone(),
                common.clone(),
            )),
            maps: Maps::new(
                stores.maps,
                limits.clone(),
                &config.maps,
                metrics.clone(),
                common.clone(),
            ),
            queues: Queues::new(
                stores.queues,
                limits.clone(),
                &config.queues,
                metrics.clone(),
                common.clone(),
            ),
            plugins,
            common,
            metrics,
            namespace: config.namespace.clone(),
            started: Instant::now(),
            draining,
        })
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            namespace: self.namespace.clone(),
            backend: self.cache.backend_kind(),
            uptime: self.started.elapsed(),
            cache: self.cache.stats(),
            failover: self.circuit.as_ref().map(|c| c.status()),
            plugins: self.plugins.status(),
        }
    }

    /// Runs the plugins' `authorize` chain for one call: the target to use
    /// (the caller's, or a plugin's rewrite), or why the call is refused.
    pub fn authorize(&self, caller: &Caller, call: Call<'_>) -> Result<String> {
        self.common.authorize(caller, call)
    }

    pub fn is_ready(&self) -> bool {
        !*self.draining.borrow()
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        self.common.draining()
    }
}

/// Compiles the configured plugins off the async workers.
async fn load_plugins(config: &Config, metrics: &Arc<Metrics>) -> Arc<Plugins> {
    if let Some(dir) = &config.plugin_cache {
        crate::plugins::cache::set_dir(dir.clone());
    }
    let (config, metrics) = (config.clone(), metrics.clone());
    let plugins = tokio::task::spawn_blocking(move || {
        Plugins::load(&config.plugins, host_facts(&config), metrics)
    })
    .await
    .expect("loading plugins does not panic");
    Arc::new(plugins)
}

/// What plugins may ask about this sidecar.
fn host_facts(config: &Config) -> HostFacts {
    HostFacts {
        namespace: config.namespace.clone(),
        max_key_bytes: config.limits.max_key_bytes,
        max_value_bytes: config.limits.max_value_bytes,
        policies: config.ratelimit.policies.keys().cloned().collect(),
    }
}
