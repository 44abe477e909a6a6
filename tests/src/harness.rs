//! One harness for every suite that runs the same cases on several
//! deployments. A [`Topology`] says where state lives; [`conformance!`]
//! instantiates each case once per topology, in a module named for it, with
//! whatever the suite's set-up builds on that topology (a store, an `App`,
//! a sidecar process).

use std::sync::Arc;
use std::time::Duration;

use outrigger::app::{App, Stores};
use outrigger::backend::redis::RedisStore;
use outrigger::config::{Config, RedisConfig};

use crate::{
    RedisServer, Sidecar, SidecarBuilder, eventually, shared_cluster, shared_sentinels, unique,
};

/// Where a case's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// The memory backend: no Redis.
    Memory,
    /// A `redis-server` of the case's own.
    Redis,
    /// A `redis-server` of the case's own, with the near cache in front.
    RedisNear,
    /// The shared Redis Cluster (3 masters, a replica each).
    Cluster,
    /// The shared master and replica behind three Sentinels.
    Sentinel,
    /// The shared Sentinel set's master, reached directly, with
    /// `redis.lock_wait_replicas = 1`: every fence must reach its replica.
    Replicas,
}

/// A topology's Redis: how to reach it, and the server of the case's own
/// (alive as long as this is), if it has one.
pub struct RedisTarget {
    pub config: RedisConfig,
    pub server: Option<RedisServer>,
}

/// A sidecar process on a topology, and the case's own Redis behind it.
pub struct SidecarOn {
    pub sidecar: Sidecar,
    pub redis: Option<RedisServer>,
}

/// Every primitive's store on a topology, in a namespace of its own.
pub struct Deployment {
    pub stores: Stores,
    /// The case's own `redis-server`, if any: keep it alive.
    pub server: Option<RedisServer>,
}

/// An `App` over every store on a topology (what the conformance suites of
/// the primitives drive), and the case's own Redis behind it. Derefs to the
/// app.
pub struct AppOn {
    pub app: App,
    _server: Option<RedisServer>,
}

impl std::ops::Deref for AppOn {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

impl RedisServer {
    /// How the sidecar's Redis store reaches this server (with deadlines
    /// roomy enough for a loaded CI machine).
    pub fn redis_config(&self) -> RedisConfig {
        RedisConfig {
            url: Some(self.url()),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        }
    }
}

impl Topology {
    /// Starts (or joins the shared) Redis of this topology; `None` for
    /// memory.
    pub async fn redis(self) -> Option<RedisTarget> {
        let own = |server: RedisServer| RedisTarget {
            config: server.redis_config(),
            server: Some(server),
        };
        match self {
            Topology::Memory => None,
            Topology::Redis | Topology::RedisNear => Some(own(RedisServer::start().await)),
            Topology::Cluster => Some(RedisTarget {
                config: shared_cluster().await.redis_config(),
                server: None,
            }),
            Topology::Sentinel => Some(RedisTarget {
                config: shared_sentinels().await.redis_config(),
                server: None,
            }),
            Topology::Replicas => {
                let set = shared_sentinels().await;
                set.master.replicas_acknowledge(1).await;
                Some(RedisTarget {
                    config: RedisConfig {
                        lock_wait_replicas: 1,
                        ..set.master.redis_config()
                    },
                    server: None,
                })
            }
        }
    }

    /// A `redis-server` of the case's own for a topology that has one;
    /// `None` for memory. (Suites of sidecar processes run on these two.)
    pub async fn own_server(self) -> Option<RedisServer> {
        match self {
            Topology::Memory => None,
            Topology::Redis | Topology::RedisNear => Some(RedisServer::start().await),
            shared => panic!("{shared:?} is shared: use Topology::redis"),
        }
    }

    /// Starts the sidecar `builder` configures, on a `redis-server` of the
    /// case's own (in a fresh namespace starting with `prefix`) or on
    /// memory.
    pub async fn sidecar(self, builder: SidecarBuilder, prefix: &str) -> SidecarOn {
        let redis = self.own_server().await;
        let builder = match &redis {
            Some(redis) => builder.redis(redis).namespace(&unique(prefix)),
            None => builder,
        };
        SidecarOn {
            sidecar: builder.start().await,
            redis,
        }
    }

    /// Every store on this topology, configured by `config`, in a fresh
    /// namespace starting with `prefix`. With the near cache, once it is
    /// live.
    pub async fn deploy(self, config: &Config, prefix: &str) -> Deployment {
        let stores = Stores::memory(config);
        let Some(target) = self.redis().await else {
            return Deployment {
                stores,
                server: None,
            };
        };
        let store = RedisStore::connect_with(
            &target.config,
            &unique(prefix),
            config.pubsub.subscriber_buffer,
        )
        .await
        .expect("connect to Redis");
        let store = Arc::new(store);
        let mut config = config.clone();
        config.cache.near.enabled = self == Topology::RedisNear;
        let stores = Stores::redis(store, &config).await.expect("Redis stores");
        if self == Topology::RedisNear {
            let cache = stores.cache.clone();
            eventually(Duration::from_secs(5), "the near cache to go live", || {
                let live = cache.stats().near.is_some_and(|near| near.live);
                async move { live.then_some(()) }
            })
            .await;
        }
        Deployment {
            stores,
            server: target.server,
        }
    }
}

impl Topology {
    /// An `App` over every store on this topology, configured by `config`,
    /// in a fresh namespace starting with `prefix`.
    pub async fn app(self, config: &Config, prefix: &str) -> AppOn {
        let deployment = self.deploy(config, prefix).await;
        AppOn {
            app: App::with_stores(config, deployment.stores),
            _server: deployment.server,
        }
    }
}

/// Instantiates async test cases on several topologies:
///
/// ```ignore
/// conformance!(setup; [on_memory: Memory, on_redis: Redis]; cases {a, b});
/// ```
///
/// makes `on_memory::a` run `cases::a(&setup(Topology::Memory).await)`, and
/// so on for every topology and case. `setup` builds what the cases take (a
/// store, an `App`, a sidecar). Cases at the suite's top level are listed
/// without a module name (`...; {a, b}`). A trailing `; after check` runs
/// `check(&target)` once a case has passed.
#[macro_export]
macro_rules! conformance {
    ($setup:ident; [$($module:ident: $topology:ident),* $(,)?]; $cases:ident $list:tt $(;)?) => {
        $( $crate::conformance!(@module $setup, $module, $topology, [$cases], $list, $crate::no_check); )*
    };
    ($setup:ident; [$($module:ident: $topology:ident),* $(,)?]; $cases:ident $list:tt; after $after:ident $(;)?) => {
        $( $crate::conformance!(@module $setup, $module, $topology, [$cases], $list, super::$after); )*
    };
    ($setup:ident; [$($module:ident: $topology:ident),* $(,)?]; $list:tt $(;)?) => {
        $( $crate::conformance!(@module $setup, $module, $topology, [], $list, $crate::no_check); )*
    };
    (@module $setup:ident, $module:ident, $topology:ident, [$cases:ident], {$($case:ident),* $(,)?}, $after:path) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $case() {
                    let target = super::$setup($crate::Topology::$topology).await;
                    super::$cases::$case(&target).await;
                    $after(&target);
                }
            )*
        }
    };
    (@module $setup:ident, $module:ident, $topology:ident, [], {$($case:ident),* $(,)?}, $after:path) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $case() {
                    let target = super::$setup($crate::Topology::$topology).await;
                    super::$case(&target).await;
                    $after(&target);
                }
            )*
        }
    };
}

/// What [`conformance!`] checks after a case when the suite names nothing.
#[doc(hidden)]
pub fn no_check<T>(_: &T) {}

/// Redis on a loopback port (a server, or a [`crate::Relay`] before one),
/// with deadlines that notice a dead one within half a second.
pub fn redis_at(port: u16) -> RedisConfig {
    RedisConfig {
        url: Some(format!("redis://127.0.0.1:{port}")),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    }
}

/// An `App` on Redis alone, in `namespace` (no memory fallback: calls fail
/// while Redis is away).
pub async fn app_on(config: &Config, redis: &RedisConfig, namespace: &str) -> App {
    let store = RedisStore::connect_with(redis, namespace, config.pubsub.subscriber_buffer)
        .await
        .expect("connect to Redis");
    let stores = Stores::redis(Arc::new(store), config)
        .await
        .expect("Redis stores");
    App::with_stores(config, stores)
}
