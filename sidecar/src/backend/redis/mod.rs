//! The Redis backend.
//!
//! One managed, multiplexed connection per sidecar: concurrent requests are
//! pipelined on it, and it reconnects by itself. Every call carries the
//! configured deadline, so no request waits on a TCP timeout. Every
//! multi-step operation is one Lua script (EVALSHA, reloaded on NOSCRIPT by
//! redis-rs), so each decision is atomic and one round trip. Time that
//! matters across sidecars (TTLs, leases, rate limits) is Redis' own (`TIME`
//! in scripts, `PX` expiries), never the sidecar's clock.
//!
//! Key layout, every primitive's (`ns` is the namespace; the braces are Redis Cluster hash tags,
//! built from the object's own name so objects spread over all slots, and
//! every script touches keys of one tag only):
//!
//! | key                        | type   | holds                                               |
//! |----------------------------|--------|-----------------------------------------------------|
//! | `ns:c:{key}`               | hash   | `v` value, `ver` version, `ttl` ms, `t:<tag>` flags  |
//! | `ns:t:{tag}`               | zset   | keys carrying the tag, scored by when to forget them |
//! | `ns:lock:{name}`           | string | the holder's token, with the lease as `PX`          |
//! | `ns:lock:{name}:fence`     | string | the fence counter; never expires                    |
//! | `ns:sem:{name}`            | zset   | permit tokens scored by lease expiry                |
//! | `ns:rl:<algo>:{policy:key}`| string / hash | rate-limit state (GCRA TAT / window counts); without the braces when `policy:key` has a hash tag of its own |
//! | `ns:pr:{room}`             | zset   | members scored by expiry; also the room's event channel |
//! | `ns:pr:{room}:meta`        | hash   | members' metadata                                   |
//! | `ns:pm:{member}`           | set    | rooms a member joined (checked against the rooms)   |
//! | `ns:ps:{channel}`          | stream | durable messages; also the live pub/sub channel     |
//! | `ns:ctr:{name}`            | string | a counter (`PX`: its window)                        |
//! | `ns:map:{map}`             | hash   | fields, `version:expires:value`; also the map's event channel |
//! | `ns:map:{map}:x`           | zset   | the fields with a TTL, scored by expiry             |
//! | `ns:map:{map}:s`           | hash   | the map's last version and lifetime                 |
//! | `ns:{mapx}`                | zset   | maps with fields to reap, scored by when            |
//! | `ns:{mapx}:claims`         | hash   | which reaper claimed a map                          |
//! | channel `ns:released`      | pubsub | `lock:<name>` / `sem:<name>` on every release       |
//! | channel `ns:inv`           | pubsub | `k:<key>` / `p:<pattern>` on every cache change (near caches evict) |
//!
//! Cache entries and their tag indexes live in different slots, so a write
//! and its indexing are two steps. The ordering makes that safe: a write
//! stores the entry, then indexes it; an invalidation deletes entries that
//! still carry the tag, removes them from the index, then deletes once more.
//! Any entry that carries a tag when its write returns is in that tag's
//! index until the entry is gone, whatever runs concurrently; the worst case
//! is an index entry for a key that no longer exists, which the next
//! invalidation or the index's own expiry removes.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use redis::RedisError;
use redis::aio::ConnectionManagerConfig;
use tokio::sync::broadcast;

use super::BackendError;
use crate::backend::redis::config::RedisConfig;

/// Messages a pub/sub listener may fall behind by, unless configured.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 1024;

pub mod config;
pub(crate) mod subscriber;
pub(crate) mod topology;

use subscriber::{Subscriber, Topic};
use topology::{Conn, Topology};

/// Keys read per SCAN / ZSCAN step.
pub(crate) const SCAN_BATCH: usize = 500;

/// The connection to Redis every primitive's Redis store shares.
pub struct RedisStore {
    /// Cheap to clone: clones share one multiplexed connection (per node,
    /// on a cluster). Replaced by a fresh one when the failover prober
    /// finds Redis back, so no request inherits a connection stuck in its
    /// retry backoff, and a Sentinel store reaches the new master. A std
    /// lock: held only to clone or swap.
    conn: std::sync::RwLock<Conn>,
    topology: Arc<Topology>,
    manager_config: ConnectionManagerConfig,
    /// Replicas that must acknowledge a write that needs to survive a
    /// failover (`redis.lock_wait_replicas`).
    pub(crate) wait_replicas: u32,
    connect_timeout: Duration,
    /// Prefix of every key and channel.
    pub(crate) namespace: String,
    /// Bound on every call.
    pub(crate) deadline: Duration,
    /// The one pub/sub connection, shared by every listener.
    pub(crate) subscriber: Arc<Subscriber>,
    /// Whether it connected before returning (tests and tools) rather than
    /// in the background (the sidecar, behind the circuit).
    eager: bool,
    /// Redis' `maxmemory-policy` as `INFO memory` said at the last
    /// (re)connection; none before, or if the user may not run INFO.
    eviction: std::sync::RwLock<Option<String>>,
}

/// Whether a `maxmemory-policy` lets Redis delete keys nobody deleted.
pub fn evicts(policy: &str) -> bool {
    policy.starts_with("allkeys-") || policy.starts_with("volatile-")
}

/// A background task, stopped when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn map_err(err: RedisError) -> BackendError {
    use redis::ServerErrorKind as S;
    // From a command, or from a write inside a script.
    if err.code() == Some("OOM") || err.to_string().contains("OOM command not allowed") {
        tracing::debug!(error = %err, "Redis refused a write: out of memory");
        return BackendError::OutOfMemory(
            "Redis is out of memory (maxmemory reached, and its policy evicts nothing): \
             it refuses writes until memory is freed or maxmemory raised; reads still work"
                .into(),
        );
    }
    if err.is_timeout()
        || err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
    {
        return BackendError::Unavailable(err.to_string());
    }
    match err.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => {
            BackendError::Protocol(err.to_string())
        }
        // Redis is there but cannot serve anyone right now, or the
        // topology is changing under us (a redirection the cluster client
        // could not follow within its retries, a master demoted to
        // replica): the prober's fresh connection finds the new layout.
        redis::ErrorKind::Server(
            S::BusyLoading
            | S::TryAgain
            | S::ClusterDown
            | S::MasterDown
            | S::ReadOnly
            | S::Moved
            | S::Ask,
        ) => BackendError::Unavailable(err.to_string()),
        // redis-rs answers NOSCRIPT by loading the script and sending it
        // again; NOSCRIPT once more means Redis lost its scripts between
        // the two (restarted under us, or SCRIPT FLUSH): its state is gone,
        // which is an outage, not the caller's error.
        redis::ErrorKind::Server(S::NoScript) => BackendError::Unavailable(format!(
            "Redis lost its scripts (restarted or flushed): {err}"
        )),
        redis::ErrorKind::Server(_) if err.to_string().contains("BUSY") => {
            BackendError::Unavailable(err.to_string())
        }
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => {
            BackendError::Server(err.to_string())
        }
        _ => BackendError::Unavailable(err.to_string()),
    }
}

impl RedisStore {
    /// Connects, within `connect_timeout`, and checks that Redis answers.
    pub async fn connect(config: &RedisConfig, namespace: &str) -> Result<Self, BackendError> {
        Self::connect_with(config, namespace, DEFAULT_SUBSCRIBER_BUFFER).await
    }

    /// Connects, with `subscriber_buffer` messages of slack per pub/sub
    /// listener, and checks that Redis answers.
    pub async fn connect_with(
        config: &RedisConfig,
        namespace: &str,
        subscriber_buffer: usize,
    ) -> Result<Self, BackendError> {
        Self::open(config, namespace, subscriber_buffer, true).await
    }

    /// A store whose connections are made in the background: returns at
    /// once, whether or not Redis is up (the failover backend probes it).
    pub async fn connect_lazy(
        config: &RedisConfig,
        namespace: &str,
        subscriber_buffer: usize,
    ) -> Result<Self, BackendError> {
        Self::open(config, namespace, subscriber_buffer, false).await
    }

    /// One PING under the deadline.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn();
        self.call(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    /// Whether Redis answers, for the failover prober: connects afresh
    /// (within `redis.connect_timeout`) and, if Redis answers a PING on the
    /// new connection, makes it the one every request uses.
    pub async fn probe(&self) -> Result<(), BackendError> {
        let connect = self.topology.connect(&self.manager_config, true);
        let mut fresh = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| BackendError::Timeout(self.connect_timeout))?
            .map_err(map_err)?;
        self.call(redis::cmd("PING").query_async::<()>(&mut fresh))
            .await?;
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.check_eviction().await;
        Ok(())
    }

    /// Reads Redis' `maxmemory-policy` (on a Cluster, every node's) and,
    /// when it may evict keys, says loudly what that breaks: any key can
    /// then vanish without a write, and with it a lock, a fence counter, a
    /// channel's history, a counter.
    pub async fn check_eviction(&self) {
        let mut conn = self.conn();
        let info = self
            .call(
                redis::cmd("INFO")
                    .arg("memory")
                    .query_async::<redis::Value>(&mut conn),
            )
            .await;
        let mut policies: Vec<String> = vec![];
        if let Ok(info) = &info {
            let mut text = String::new();
            collect_text(info, &mut text);
            for line in text.lines() {
                if let Some(policy) = line.strip_prefix("maxmemory_policy:") {
                    let policy = policy.trim().to_string();
                    if !policies.contains(&policy) {
                        policies.push(policy);
                    }
                }
            }
        }
        // An evicting policy first: that is the one that matters.
        policies.sort_by_key(|p| !evicts(p));
        let policy = policies.into_iter().next();
        let previous = std::mem::replace(
            &mut *self.eviction.write().unwrap_or_else(|e| e.into_inner()),
            policy.clone(),
        );
        match policy {
            Some(policy) if evicts(&policy) && previous.as_deref() != Some(policy.as_str()) => {
                tracing::warn!(
                    maxmemory_policy = %policy,
                    "Redis may evict keys (maxmemory-policy {policy}): a lock can be lost while \
                     held, fences and versions can repeat, durable history, counters and maps can \
                     vanish; set maxmemory-policy noeviction (see the README)"
                );
            }
            None if info.is_err() => {
                tracing::debug!("cannot read Redis' maxmemory-policy (INFO refused or failed)");
            }
            _ => {}
        }
    }

    /// Redis' `maxmemory-policy` as last read (an evicting one if any node
    /// of a Cluster has one).
    pub fn maxmemory_policy(&self) -> Option<String> {
        self.eviction
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current connection (a cheap clone).
    /// Whether it is a Redis Cluster (keys of one script must then share a
    /// slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(*self.topology, Topology::Cluster { .. })
    }

    pub(crate) fn conn(&self) -> Conn {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn open(
        config: &RedisConfig,
        namespace: &str,
        subscriber_buffer: usize,
        eager: bool,
    ) -> Result<Self, BackendError> {
        let topology = Arc::new(Topology::new(config).map_err(map_err)?);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = if eager {
            let conn = tokio::time::timeout(
                config.connect_timeout * 3,
                topology.connect(&manager_config, true),
            )
            .await
            .map_err(|_| BackendError::Timeout(config.connect_timeout * 3))?
            .map_err(map_err)?;
            let mut ping_conn = conn.clone();
            match tokio::time::timeout(
                config.timeout,
                redis::cmd("PING").query_async::<()>(&mut ping_conn),
            )
            .await
            {
                Ok(result) => result.map_err(map_err)?,
                Err(_) => return Err(BackendError::Timeout(config.timeout)),
            }
            conn
        } else {
            topology
                .connect(&manager_config, false)
                .await
                .map_err(map_err)?
        };
        let subscriber =
            Subscriber::start(topology.clone(), subscriber_buffer, config.connect_timeout);
        Ok(RedisStore {
            conn: std::sync::RwLock::new(conn),
            topology,
            manager_config,
            wait_replicas: config.lock_wait_replicas,
            connect_timeout: config.connect_timeout,
            namespace: namespace.to_string(),
            deadline: config.timeout,
            subscriber,
            eager,
            eviction: std::sync::RwLock::new(None),
        })
    }

    /// Forwards every message of `channel` (as text) to the returned
    /// sender's receivers, for as long as the returned task lives. On a
    /// store that connected eagerly, the subscription is active when this
    /// returns; otherwise it is made in the background.
    pub(crate) async fn forward_channel(
        &self,
        channel: String,
    ) -> Result<(broadcast::Sender<String>, AbortOnDrop), BackendError> {
        let sender = broadcast::channel(1024).0;
        let (mut messages, guard) = self
            .subscriber
            .listen(Topic::Channel(channel), self.eager)
            .await?
            .into_parts();
        let forward = sender.clone();
        let forwarder = tokio::spawn(async move {
            let _guard = guard;
            loop {
                match messages.recv().await {
                    Ok(d) => {
                        let _ = forward.send(String::from_utf8_lossy(&d.payload).into_owned());
                    }
                    // Missed some: listeners fall back to their poll.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok((sender, AbortOnDrop(forwarder.abort_handle())))
    }

    /// Runs one Redis call under the deadline.
    pub(crate) async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(result) => result.map_err(map_err),
            Err(_) => Err(BackendError::Timeout(self.deadline)),
        }
    }
}

/// Every string in a reply, one after another (`INFO` on a Cluster answers
/// a map of node to text).
fn collect_text(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
        redis::Value::SimpleString(text) | redis::Value::VerbatimString { text, .. } => {
            out.push_str(text)
        }
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|v| collect_text(v, out))
        }
        redis::Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_text(v, out)),
        _ => {}
    }
    out.push('\n');
}

impl RedisStore {
    /// One SCAN step over `ns:<kind>:{pattern}`. On a cluster, SCAN runs
    /// master by master: the cursor's top 16 bits name the master (by the
    /// lowest slot it serves), the low 48 bits are that master's own SCAN
    /// cursor (on a single server, the cursor is Redis' own). Cursor 0
    /// starts, and a returned 0 means done.
    pub(crate) async fn scan(
        &self,
        kind: &str,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), BackendError> {
        const NODE_BITS: u32 = 48;
        let mut conn = self.conn();
        let mut full = format!("{}:{kind}:{{", self.namespace);
        full.push_str(if pattern.is_empty() { "*" } else { pattern });
        full.push('}');
        let (slot, node_cursor) = (
            (cursor >> NODE_BITS) as u16,
            cursor & ((1 << NODE_BITS) - 1),
        );
        let masters = self.call(conn.masters()).await?;
        // The master to go on with: the one the cursor names, or, if the
        // slots moved since, the next one (from its start).
        let Some(&at) = masters.iter().find(|&&s| s >= slot) else {
            return Ok((0, vec![]));
        };
        let node_cursor = if at == slot { node_cursor } else { 0 };
        let mut scan = redis::cmd("SCAN");
        scan.arg(node_cursor)
            .arg("MATCH")
            .arg(full)
            .arg("COUNT")
            .arg(count);
        let (next, keys): (u64, Vec<String>) = self.call(conn.on_slot(at, &scan)).await?;
        if next >> NODE_BITS != 0 {
            return Err(BackendError::Protocol(format!(
                "SCAN cursor {next} out of range"
            )));
        }
        let next = match (next, masters.iter().find(|&&s| s > at)) {
            (0, Some(&following)) => u64::from(following) << NODE_BITS,
            (0, None) => 0,
            (next, _) => u64::from(at) << NODE_BITS | next,
        };
        Ok((next, keys))
    }
}
