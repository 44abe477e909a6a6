//! Where Redis is: one server, a Cluster, or a master found through
//! Sentinels; and the connection every request uses.
//!
//! - **standalone**: one managed multiplexed connection to `redis.url`.
//! - **cluster**: redis-rs's cluster connection. It routes each command by
//!   the slot of its first key (every script's keys share one hash tag),
//!   follows `MOVED`/`ASK`, and refreshes the slot map when the topology
//!   changes. Commands with keys in several slots (`UNLINK` of a pattern's
//!   keys) are split per slot; `SCAN` runs master by master.
//! - **sentinel**: the master is asked of the Sentinels each time a
//!   connection is made, so a reconnection after a failover (the failover
//!   prober makes one) reaches the new master.
//!
//! Pub/sub needs one plain connection to one data node: in a cluster any
//! node will do (regular `PUBLISH` reaches every node of the cluster), tried
//! seed after seed; with Sentinels, the current master.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    TlsCertificates, TlsMode, Value,
};

use crate::backend::redis::config::{RedisConfig, RedisMode};

/// Where Redis is, and how to connect to it.
pub(crate) enum Topology {
    Standalone(redis::Client),
    Cluster {
        client: ClusterClient,
        /// One client per seed, for the pub/sub connection.
        seeds: Vec<redis::Client>,
        config: ClusterConfig,
    },
    Sentinel {
        sentinels: tokio::sync::Mutex<SentinelClient>,
        /// Bounds asking the Sentinels (`redis.connect_timeout`).
        timeout: Duration,
    },
}

/// The connection requests use. Cheap to clone: clones share one
/// multiplexed connection (per node, on a cluster).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// Runs `cmd` on the master that serves slot `slot` (on a single
    /// server: on it).
    pub(crate) async fn on_slot<T: redis::FromRedisValue>(
        &mut self,
        slot: u16,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        self.on_master(Route::new(slot, SlotAddr::Master), cmd)
            .await
    }

    async fn on_master<T: redis::FromRedisValue>(
        &mut self,
        route: Route,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Conn::Single(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.route_command(cmd.clone(), routing).await?;
                redis::from_redis_value(value).map_err(RedisError::from)
            }
        }
    }

    /// One slot of each master, lowest first: `SCAN` visits the masters
    /// through them. A single server is "slot 0".
    pub(crate) async fn masters(&mut self) -> RedisResult<Vec<u16>> {
        let Conn::Cluster(conn) = self else {
            return Ok(vec![0]);
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let slots = conn
            .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing)
            .await?;
        // [[start, end, [host, port, id, ...], replicas...], ...]
        let ranges: Vec<(i64, i64, Vec<Value>)> =
            redis::from_redis_value::<Vec<Vec<Value>>>(slots)?
                .into_iter()
                .filter_map(|range| {
                    let mut fields = range.into_iter();
                    let start = redis::from_redis_value(fields.next()?).ok()?;
                    let end = redis::from_redis_value(fields.next()?).ok()?;
                    let master = redis::from_redis_value(fields.next()?).ok()?;
                    Some((start, end, master))
                })
                .collect();
        let mut firsts: std::collections::BTreeMap<String, u16> = Default::default();
        for (start, _end, master) in ranges {
            let mut fields = master.into_iter();
            let host: String = fields
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let port: i64 = fields
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let slot = start.clamp(0, 16383) as u16;
            firsts
                .entry(format!("{host}:{port}"))
                .and_modify(|s| *s = (*s).min(slot))
                .or_insert(slot);
        }
        let mut slots: Vec<u16> = firsts.into_values().collect();
        slots.sort_unstable();
        Ok(slots)
    }

    /// Waits until `replicas` replicas acknowledged this connection's
    /// writes to the master that holds `key`, for at most `limit`;
    /// returns how many did.
    pub(crate) async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        limit: Duration,
    ) -> RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(limit.as_millis().max(1) as u64);
        self.on_master(Route::with_key(key, SlotAddr::Master), &cmd)
            .await
    }
}

impl Topology {
    /// Reads where Redis is from the configuration.
    pub(crate) fn new(config: &RedisConfig) -> RedisResult<Topology> {
        // rustls needs a process-wide crypto provider for rediss://; ring
        // is the one this build carries. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = certificates(config)?;
        match config.mode {
            RedisMode::Standalone => {
                let url = config.url.as_deref().ok_or_else(|| {
                    RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "no redis.url configured",
                    ))
                })?;
                Ok(Topology::Standalone(client(url, &certs)?))
            }
            RedisMode::Cluster => {
                let mut builder = ClusterClientBuilder::new(config.nodes.clone())
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.timeout)
                    // Redirections and topology refreshes are retries:
                    // quick ones, all inside the request's deadline.
                    .retries(16)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                if let Some(user) = &config.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.password(password);
                }
                if let Some(certs) = &certs {
                    builder = builder.certs(certs.clone());
                }
                let seeds = config
                    .nodes
                    .iter()
                    .map(|node| node_client(node, config, &certs))
                    .collect::<RedisResult<_>>()?;
                Ok(Topology::Cluster {
                    client: builder.build()?,
                    seeds,
                    config: ClusterConfig::new()
                        .set_connection_timeout(config.connect_timeout)
                        .set_response_timeout(config.timeout),
                })
            }
            RedisMode::Sentinel => {
                let sentinels: Vec<redis::ConnectionInfo> = config
                    .nodes
                    .iter()
                    .map(|node| node.as_str().into_connection_info())
                    .collect::<RedisResult<_>>()?;
                let mut builder = SentinelClientBuilder::new(
                    sentinels.iter().map(|info| info.addr().clone()),
                    config.master_name.clone().unwrap_or_default(),
                    SentinelServerType::Master,
                )?;
                // The Sentinels' own credentials ride in their URLs.
                if let Some(first) = sentinels.first() {
                    let own = first.redis_settings();
                    if let Some(user) = own.username() {
                        builder = builder.set_client_to_sentinel_username(user);
                    }
                    if let Some(password) = own.password() {
                        builder = builder.set_client_to_sentinel_password(password);
                    }
                }
                if let Some(user) = &config.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                // rediss:// Sentinels: the data nodes speak TLS too.
                if config.nodes.iter().any(|n| n.starts_with("rediss://")) {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = &certs {
                        builder = builder
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs.clone());
                    }
                }
                let client = builder.build()?;
                Ok(Topology::Sentinel {
                    sentinels: tokio::sync::Mutex::new(client),
                    timeout: config.connect_timeout,
                })
            }
        }
    }

    /// A client for one data node, for the pub/sub connection: the server,
    /// the master the Sentinels name now, or the `attempt`-th seed (in
    /// turn, so a dead seed is passed over).
    pub(crate) async fn node(&self, attempt: usize) -> RedisResult<redis::Client> {
        match self {
            Topology::Standalone(client) => Ok(client.clone()),
            Topology::Cluster { seeds, .. } => Ok(seeds[attempt % seeds.len()].clone()),
            Topology::Sentinel { sentinels, timeout } => {
                let ask = async { sentinels.lock().await.async_get_client().await };
                tokio::time::timeout(*timeout, ask)
                    .await
                    .unwrap_or_else(|_| {
                        Err(RedisError::from((
                            redis::ErrorKind::Io,
                            "no Sentinel named the master in time",
                        )))
                    })
            }
        }
    }

    /// Connects: at once (`eager`, the first command waits for the
    /// connection) or in the background.
    pub(crate) async fn connect(
        &self,
        manager: &ConnectionManagerConfig,
        eager: bool,
    ) -> RedisResult<Conn> {
        match self {
            Topology::Standalone(client) if eager => {
                ConnectionManager::new_with_config(client.clone(), manager.clone())
                    .await
                    .map(Conn::Single)
            }
            Topology::Standalone(client) => {
                ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())
                    .map(Conn::Single)
            }
            Topology::Cluster { client, config, .. } if eager => client
                .get_async_connection_with_config(config.clone())
                .await
                .map(Conn::Cluster),
            Topology::Cluster { client, config, .. } => Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(config.clone()),
            )),
            Topology::Sentinel { .. } => {
                // The master is asked for now; a lazy store asks when
                // the prober connects (Redis may not be up yet).
                let client = if eager {
                    self.node(0).await?
                } else {
                    match self.node(0).await {
                        Ok(client) => client,
                        Err(_) => return Ok(Conn::Single(unreachable_manager(manager)?)),
                    }
                };
                let conn = if eager {
                    ConnectionManager::new_with_config(client, manager.clone()).await?
                } else {
                    ConnectionManager::new_lazy_with_config(client, manager.clone())?
                };
                Ok(Conn::Single(conn))
            }
        }
    }
}

/// The CA and client certificate of `redis.tls`, read from their files.
fn certificates(config: &RedisConfig) -> RedisResult<Option<TlsCertificates>> {
    let tls = &config.tls;
    if !tls.is_set() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|err| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot read a redis.tls file",
                format!("{}: {err}", path.display()),
            ))
        })
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A client for `url`, with the configured certificates.
fn client(
    url: impl IntoConnectionInfo,
    certs: &Option<TlsCertificates>,
) -> RedisResult<redis::Client> {
    match certs {
        Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
        None => redis::Client::open(url),
    }
}

/// A client for one node of the configuration, with the data nodes'
/// credentials and certificates.
fn node_client(
    node: &str,
    config: &RedisConfig,
    certs: &Option<TlsCertificates>,
) -> RedisResult<redis::Client> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(node)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    client(info, certs)
}

/// A connection manager whose every command fails: what a lazy Sentinel
/// store uses until the prober finds a master.
fn unreachable_manager(manager: &ConnectionManagerConfig) -> RedisResult<ConnectionManager> {
    // Port 0 is never listened on: connecting is refused at once.
    let client = redis::Client::open("redis://127.0.0.1:0")?;
    ConnectionManager::new_lazy_with_config(client, manager.clone())
}
