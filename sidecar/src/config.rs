//! Configuration: one typed [`Config`], loaded and validated before the
//! runtime starts.
//!
//! Sources, later ones winning: built-in defaults, then `outrigger.toml` (or
//! the file given with `--config`), then `OUTRIGGER_*` environment variables
//! with nested keys joined by `__` (`OUTRIGGER_REDIS__URL` sets `redis.url`).
//! A bad value fails [`Config::load`] with a message that names the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "outrigger.toml";

/// Top-level keys; an `OUTRIGGER_*` variable whose first segment is not one of
/// these is not ours (Kubernetes, for one, injects `OUTRIGGER_PORT` for a
/// Service named `outrigger`) and is ignored rather than rejected.
const TOP_LEVEL_KEYS: &[&str] = &[
    "namespace",
    "http",
    "grpc",
    "ops",
    "auth",
    "redis",
    "memory",
    "cache",
    "limits",
    "ratelimit",
    "presence",
    "pubsub",
    "failover",
    "plugins",
    "log",
    "shutdown_grace",
];

/// Everything the sidecar can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefix of every key this sidecar writes, so applications sharing one
    /// Redis never see each other's data.
    pub namespace: String,
    pub http: Listener,
    pub grpc: Listener,
    pub ops: OpsListener,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub memory: MemoryConfig,
    pub cache: CacheConfig,
    pub limits: Limits,
    pub ratelimit: RateLimitConfig,
    pub presence: PresenceConfig,
    pub pubsub: PubSubConfig,
    pub failover: FailoverConfig,
    /// WebAssembly plugins, in the order they run: `[[plugins]]`.
    pub plugins: Vec<PluginConfig>,
    pub log: LogConfig,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    #[serde(with = "human_duration")]
    pub shutdown_grace: Duration,
}

/// A TCP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address to bind; port 0 picks a free port (logged at start-up).
    pub addr: SocketAddr,
    /// Also listen on this Unix domain socket, created with mode 0600 (only
    /// this user may connect): the cheapest and most private local hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// API authentication: a bearer token every API call must carry (all but
/// `/healthz` and `/readyz`). Neither key set: no authentication.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub token: Option<String>,
    /// A file holding the token (as Kubernetes mounts a Secret); re-read
    /// when it changes, so the token rotates without a restart.
    pub token_file: Option<PathBuf>,
}

/// An optional listener with only `/healthz`, `/readyz` and `/metrics`: for
/// kubelet probes and scrapers, which reach the pod's IP rather than its
/// loopback, without exposing the API beyond localhost.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsListener {
    pub addr: Option<SocketAddr>,
}

/// Where state lives. Neither `url` nor `nodes` means the memory backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// How Redis is deployed: one server, a Cluster, or a master watched
    /// by Sentinels.
    pub mode: RedisMode,
    /// Standalone: `redis://[user:password@]host:port[/db]`.
    pub url: Option<String>,
    /// Cluster: seed nodes (any of the cluster's nodes; the rest are
    /// discovered). Sentinel: the Sentinels. `redis://host:port` each; a
    /// list, or one string of comma-separated addresses.
    #[serde(deserialize_with = "string_or_list")]
    pub nodes: Vec<String>,
    /// Sentinel: the name the Sentinels know the master by.
    pub master_name: Option<String>,
    /// Cluster and Sentinel: the ACL user of the data nodes (standalone
    /// puts it in `url`).
    pub username: Option<String>,
    /// Cluster and Sentinel: the data nodes' password.
    pub password: Option<String>,
    /// TLS settings for `rediss://` nodes.
    pub tls: RedisTlsConfig,
    /// Replicas that must have a lock's fence before the acquisition is
    /// answered (`WAIT`); 0 = do not wait. With 1 or more, a master
    /// failover cannot lose a fence a client was given.
    pub lock_wait_replicas: u32,
    /// Deadline of every Redis call. No request waits longer on Redis.
    #[serde(with = "human_duration")]
    pub timeout: Duration,
    /// Deadline of establishing a connection.
    #[serde(with = "human_duration")]
    pub connect_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            mode: RedisMode::Standalone,
            url: None,
            nodes: vec![],
            master_name: None,
            username: None,
            password: None,
            tls: RedisTlsConfig::default(),
            lock_wait_replicas: 0,
            timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

impl RedisConfig {
    /// Whether any Redis is configured (else: the memory backend).
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.nodes.is_empty()
    }

    /// Where Redis is, for messages: URLs with passwords masked.
    pub fn describe(&self) -> String {
        match self.mode {
            RedisMode::Standalone => self.url.as_deref().map(redact_url).unwrap_or_default(),
            RedisMode::Cluster | RedisMode::Sentinel => {
                let nodes: Vec<String> = self.nodes.iter().map(|n| redact_url(n)).collect();
                let mut text = format!("{} {}", self.mode.as_str(), nodes.join(","));
                if let Some(master) = &self.master_name {
                    text.push_str(&format!(" (master {master})"));
                }
                text
            }
        }
    }
}

impl RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        let looks_like_redis = |url: &str| matches!(url.split_once("://"), Some(("redis" | "rediss", rest)) if !rest.is_empty());
        if let Some(url) = &self.url
            && !looks_like_redis(url)
        {
            return invalid(
                "redis.url",
                "must look like redis://host:port (rediss:// for TLS)",
            );
        }
        if self.nodes.iter().any(|n| !looks_like_redis(n)) {
            return invalid(
                "redis.nodes",
                "every node must look like redis://host:port (rediss:// for TLS)",
            );
        }
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return invalid(
                "redis.tls.cert_file",
                "a client certificate needs its key: give both cert_file and key_file",
            );
        }
        let uses_tls = self
            .url
            .iter()
            .chain(&self.nodes)
            .any(|u| u.starts_with("rediss://"));
        if tls.is_set() && !uses_tls {
            return invalid(
                "redis.tls",
                "TLS settings need rediss:// URLs (redis.url or redis.nodes)",
            );
        }
        for (key, file) in [
            ("redis.tls.ca_file", &tls.ca_file),
            ("redis.tls.cert_file", &tls.cert_file),
            ("redis.tls.key_file", &tls.key_file),
        ] {
            if let Some(path) = file
                && !path.is_file()
            {
                return invalid(key, &format!("{} is not a readable file", path.display()));
            }
        }
        match self.mode {
            RedisMode::Standalone => {
                if !self.nodes.is_empty() {
                    return invalid(
                        "redis.nodes",
                        "is for mode = \"cluster\" or \"sentinel\"; standalone takes redis.url",
                    );
                }
                if self.username.is_some() || self.password.is_some() {
                    return invalid(
                        "redis.password",
                        "standalone takes its credentials in redis.url (redis://user:password@host)",
                    );
                }
            }
            RedisMode::Cluster | RedisMode::Sentinel => {
                if self.url.is_some() {
                    return invalid(
                        "redis.url",
                        "is for mode = \"standalone\"; list the nodes in redis.nodes",
                    );
                }
                if self.nodes.is_empty() {
                    return invalid(
                        "redis.nodes",
                        "needs at least one redis://host:port (cluster seeds or Sentinels)",
                    );
                }
            }
        }
        match (self.mode, &self.master_name) {
            (RedisMode::Sentinel, None) => {
                invalid("redis.master_name", "sentinel mode needs the master's name")
            }
            (RedisMode::Sentinel, Some(name)) if name.trim().is_empty() => {
                invalid("redis.master_name", "must not be empty")
            }
            (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
                invalid("redis.master_name", "is for mode = \"sentinel\"")
            }
            _ => Ok(()),
        }
    }
}

/// TLS to Redis: on for `rediss://` URLs and nodes. Without `ca_file`,
/// the system's root certificates verify the server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsConfig {
    /// PEM file of the CA(s) that signed the servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, when Redis requires one
    /// (`tls-auth-clients yes`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One server (`redis.url`).
    #[default]
    Standalone,
    /// Redis Cluster (`redis.nodes` are seeds).
    Cluster,
    /// A master and its replicas, found through Sentinels (`redis.nodes`
    /// are the Sentinels, `redis.master_name` names the master).
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// A list, or a string of comma-separated items (environment variables
/// and Helm values are easier to write that way).
fn string_or_list<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Nodes {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Nodes::deserialize(deserializer)? {
        Nodes::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Nodes::Many(list) => list,
    })
}

/// The cache primitive.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub near: NearCacheConfig,
}

/// The near cache: an in-process copy of values read from Redis, evicted
/// by every write, delete and invalidation made through any sidecar of the
/// namespace (see "Near cache" in the README for what it guarantees).
/// Only with Redis: the memory backend is local already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearCacheConfig {
    pub enabled: bool,
    /// Entries kept; least recently used ones are evicted beyond this.
    pub max_entries: usize,
    /// Keys plus values kept, in bytes; values larger than a sixteenth of
    /// this are never kept.
    pub max_bytes: usize,
    /// Longest an entry is served from the near cache after it was read
    /// from Redis: the bound on staleness if an invalidation never arrives
    /// (a value changed in Redis behind the sidecars' back).
    #[serde(with = "human_duration")]
    pub max_ttl: Duration,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        NearCacheConfig {
            enabled: false,
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_ttl: Duration::from_secs(5),
        }
    }
}

/// Bounds of the memory backend; least recently used entries are evicted to
/// stay within both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    pub max_entries: usize,
    /// Keys plus values, in bytes.
    pub max_bytes: usize,
}

/// Input limits; requests over them fail with a clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Keys per GetMany, tags per invalidation, keys per listing page.
    pub max_batch: usize,
    /// Tags on one cache entry.
    pub max_tags: usize,
    pub max_tag_bytes: usize,
    #[serde(with = "human_duration")]
    pub max_ttl: Duration,
    /// Longest a lock or permit acquisition may wait.
    #[serde(with = "human_duration")]
    pub max_wait: Duration,
    /// Most permits a semaphore may have.
    pub max_permits: u32,
    /// Connections each API listener serves at once; beyond it, new ones
    /// are refused (HTTP: 503 and closed; gRPC: closed).
    pub max_connections: usize,
    /// Longest an HTTP client may take to send a request's headers, and
    /// to start its next request on a kept-alive connection: slow and
    /// idle clients are disconnected.
    #[serde(with = "human_duration")]
    pub header_timeout: Duration,
}

/// Rate limiting.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Named policies: `[ratelimit.policies.login]`.
    pub policies: BTreeMap<String, PolicyConfig>,
}

/// Presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// How often this sidecar takes timed-out members out of the rooms it
    /// watches or joined members to: the bound on how late a timeout is
    /// noticed after a member's TTL runs out.
    #[serde(with = "human_duration")]
    pub reap_interval: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            reap_interval: Duration::from_millis(250),
        }
    }
}

/// Pub/sub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubConfig {
    /// Messages kept per durable channel (Redis: `XADD MAXLEN ~`).
    pub stream_max_len: usize,
    /// Messages (or presence events) a subscriber may fall behind by before
    /// it is told it lagged.
    pub subscriber_buffer: usize,
    /// Subscribers this sidecar serves at once.
    pub max_subscribers: usize,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            stream_max_len: 10_000,
            subscriber_buffer: 1024,
            max_subscribers: 10_000,
        }
    }
}

/// What happens while Redis is down (see "When Redis is down" in the
/// README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// First pause between probes of a down Redis; doubles up to `probe_max`.
    #[serde(with = "human_duration")]
    pub probe_interval: Duration,
    #[serde(with = "human_duration")]
    pub probe_max: Duration,
    pub cache: Fallback,
    pub locks: LockFallback,
    pub ratelimit: RateLimitFallback,
    /// Share of each limit one sidecar allows alone while Redis is down
    /// (`ratelimit = "local"`), in (0, 1].
    pub fallback_share: f64,
    pub presence: Fallback,
    pub pubsub: Fallback,
    /// Publishes kept for Redis while it is down; more are dropped (and
    /// counted).
    pub publish_buffer: usize,
    /// After Redis returns, how long to wait before flushing buffered
    /// publishes, so subscribers on other sidecars have resubscribed.
    #[serde(with = "human_duration")]
    pub flush_delay: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            probe_interval: Duration::from_millis(500),
            probe_max: Duration::from_secs(5),
            cache: Fallback::Local,
            locks: LockFallback::FailClosed,
            ratelimit: RateLimitFallback::Local,
            fallback_share: 0.5,
            presence: Fallback::Local,
            pubsub: Fallback::Local,
            publish_buffer: 10_000,
            flush_delay: Duration::from_millis(500),
        }
    }
}

/// Cache, presence and pub/sub while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Serve from this sidecar's memory.
    Local,
    /// Answer 503 / `UNAVAILABLE`.
    Fail,
}

/// Locks while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockFallback {
    /// Answer 503 / `UNAVAILABLE`: no lock is better than a lock that
    /// another sidecar can also take.
    FailClosed,
    /// Lock in this sidecar's memory only. Unsafe across instances: two
    /// sidecars can hold "the same" lock. Released when Redis returns.
    Local,
}

/// Rate limits while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitFallback {
    /// Local buckets at `fallback_share` of each limit.
    Local,
    /// Allow everything (counted in metrics).
    FailOpen,
    /// Answer 503 / `UNAVAILABLE`.
    FailClosed,
}

/// A rate-limit algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Token bucket in GCRA form: `burst` at once, refilled at
    /// `limit / period`.
    Gcra,
    /// At most `limit` in any window of `period` (weighted two-window
    /// approximation).
    SlidingWindow,
    /// At most `limit` per calendar window of `period`.
    FixedWindow,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [
        Algorithm::Gcra,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ];

    /// The algorithm called `name`, as in the configuration.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Its name in the configuration and the APIs (serde spells the same,
    /// checked by a test).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

/// A validated rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u32,
    pub period: Duration,
    /// GCRA: how many at once. Equal to `limit` for the window algorithms.
    pub burst: u32,
}

impl Limit {
    /// The most units one decision can ever allow: the burst for GCRA, the
    /// limit for the window algorithms (what `Decision::limit` reports).
    pub fn most(&self) -> u32 {
        match self.algorithm {
            Algorithm::Gcra => self.burst,
            Algorithm::SlidingWindow | Algorithm::FixedWindow => self.limit,
        }
    }
}

/// One named rate-limit policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub algorithm: Algorithm,
    /// Requests (cost units) per `period`.
    pub limit: u32,
    #[serde(with = "human_duration")]
    pub period: Duration,
    /// GCRA only: how many at once; defaults to `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl PolicyConfig {
    /// The checked limit, or why it is not one.
    pub fn to_limit(&self) -> Result<Limit, String> {
        if self.limit == 0 {
            return Err("limit must be at least 1".into());
        }
        if self.period < Duration::from_millis(1) {
            return Err("period must be at least 1ms".into());
        }
        if self.period > Duration::from_secs(366 * 24 * 3600) {
            return Err("period must be at most a year".into());
        }
        let burst = match (self.algorithm, self.burst) {
            (Algorithm::Gcra, Some(0)) => return Err("burst must be at least 1".into()),
            (Algorithm::Gcra, Some(b)) => b,
            (_, Some(_)) => return Err("burst applies to the gcra algorithm only".into()),
            (_, None) => self.limit,
        };
        Ok(Limit {
            algorithm: self.algorithm,
            limit: self.limit,
            period: self.period,
            burst,
        })
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `outrigger=debug,info`); `RUST_LOG` wins.
    pub level: String,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "default".into(),
            http: Listener {
                addr: ([127, 0, 0, 1], 7480).into(),
                socket: None,
            },
            grpc: Listener {
                addr: ([127, 0, 0, 1], 7481).into(),
                socket: None,
            },
            ops: OpsListener::default(),
            auth: AuthConfig::default(),
            redis: RedisConfig::default(),
            memory: MemoryConfig {
                max_entries: 100_000,
                max_bytes: 256 * 1024 * 1024,
            },
            cache: CacheConfig::default(),
            limits: Limits {
                max_key_bytes: 512,
                max_value_bytes: 1024 * 1024,
                max_batch: 1000,
                max_tags: 32,
                max_tag_bytes: 128,
                max_ttl: Duration::from_secs(30 * 24 * 3600),
                max_wait: Duration::from_secs(60),
                max_permits: 10_000,
                max_connections: 1024,
                header_timeout: Duration::from_secs(30),
            },
            ratelimit: RateLimitConfig::default(),
            presence: PresenceConfig::default(),
            pubsub: PubSubConfig::default(),
            failover: FailoverConfig::default(),
            plugins: Vec::new(),
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Why the configuration was rejected; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{key}` (from {origin}): {reason}")]
    Parse {
        key: String,
        origin: String,
        reason: String,
    },
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Loads defaults < file < environment, then validates.
    ///
    /// `file` is the `--config` argument: it must exist when given. Without
    /// it, `outrigger.toml` in the working directory is read if present.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.into())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }
        let env = Env::prefixed("OUTRIGGER_")
            .split("__")
            // Lowercase here (not only when reading) so errors name the key
            // as the config file spells it: `redis.timeout`.
            .map(|key| key.as_str().to_ascii_lowercase().into())
            .filter(|key| {
                let top = key.as_str().split('.').next().unwrap_or_default();
                TOP_LEVEL_KEYS.contains(&top)
            });
        let config: Config = figment.merge(env).extract().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return invalid(
                "namespace",
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.'",
            );
        }
        self.redis.validate()?;
        match (&self.auth.token, &self.auth.token_file) {
            (Some(_), Some(_)) => {
                return invalid("auth.token", "give auth.token or auth.token_file, not both");
            }
            (Some(t), None) if t.trim().is_empty() => {
                return invalid("auth.token", "must not be empty");
            }
            _ => {}
        }
        if self.redis.timeout.is_zero() {
            return invalid("redis.timeout", "must be greater than zero");
        }
        if self.redis.connect_timeout.is_zero() {
            return invalid("redis.connect_timeout", "must be greater than zero");
        }
        let near = &self.cache.near;
        if near.enabled {
            if near.max_entries == 0 {
                return invalid("cache.near.max_entries", "must be at least 1");
            }
            if near.max_bytes < 16 * 1024 {
                return invalid("cache.near.max_bytes", "must be at least 16384");
            }
            if near.max_ttl.is_zero() || near.max_ttl > Duration::from_secs(3600) {
                return invalid("cache.near.max_ttl", "must be between 1ms and 1h");
            }
        }
        if self.memory.max_entries == 0 {
            return invalid("memory.max_entries", "must be at least 1");
        }
        if self.memory.max_bytes < self.limits.max_key_bytes + self.limits.max_value_bytes {
            return invalid(
                "memory.max_bytes",
                "must hold at least one entry of limits.max_key_bytes + limits.max_value_bytes",
            );
        }
        for (key, value) in [
            ("limits.max_key_bytes", self.limits.max_key_bytes),
            ("limits.max_value_bytes", self.limits.max_value_bytes),
            ("limits.max_batch", self.limits.max_batch),
            ("limits.max_tag_bytes", self.limits.max_tag_bytes),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if self.limits.max_ttl < Duration::from_millis(1) {
            return invalid("limits.max_ttl", "must be at least 1ms");
        }
        if self.presence.reap_interval < Duration::from_millis(10) {
            return invalid("presence.reap_interval", "must be at least 10ms");
        }
        for (key, value) in [
            ("pubsub.stream_max_len", self.pubsub.stream_max_len),
            ("pubsub.subscriber_buffer", self.pubsub.subscriber_buffer),
            ("pubsub.max_subscribers", self.pubsub.max_subscribers),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        let share = self.failover.fallback_share;
        if !(share > 0.0 && share <= 1.0) {
            return invalid("failover.fallback_share", "must be in (0, 1]");
        }
        if self.failover.probe_interval < Duration::from_millis(10)
            || self.failover.probe_max < self.failover.probe_interval
        {
            return invalid(
                "failover.probe_interval",
                "must be at least 10ms and at most failover.probe_max",
            );
        }
        if self.failover.publish_buffer == 0 {
            return invalid("failover.publish_buffer", "must be at least 1");
        }
        if self.limits.max_connections == 0 || self.limits.max_connections > 1 << 20 {
            return invalid("limits.max_connections", "must be 1 to 1048576");
        }
        if self.limits.header_timeout < Duration::from_millis(100) {
            return invalid("limits.header_timeout", "must be at least 100ms");
        }
        if self.limits.max_permits == 0 {
            return invalid("limits.max_permits", "must be at least 1");
        }
        for (name, policy) in &self.ratelimit.policies {
            if let Err(reason) = policy.to_limit() {
                return Err(ConfigError::Invalid {
                    key: "ratelimit.policies",
                    reason: format!("policy {name:?}: {reason}"),
                });
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for plugin in &self.plugins {
            let reason = |reason: &str| {
                Err(ConfigError::Invalid {
                    key: "plugins",
                    reason: format!("plugin {:?}: {reason}", plugin.name),
                })
            };
            if plugin.name.is_empty() || plugin.name.len() > 64 {
                return reason("name must be 1 to 64 characters");
            }
            if !names.insert(plugin.name.as_str()) {
                return reason("the name is used twice");
            }
            if plugin.budget < Duration::from_millis(1) || plugin.budget > Duration::from_secs(1) {
                return reason("budget must be between 1ms and 1s");
            }
            if plugin.max_memory < 1024 * 1024 {
                return reason("max_memory must be at least 1048576 (1 MiB)");
            }
            if plugin.max_failures == 0 {
                return reason("max_failures must be at least 1");
            }
            if !plugin.config.is_object() {
                return reason("config must be a table");
            }
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return invalid("log.level", "is not a valid tracing filter");
        }
        Ok(())
    }
}

/// One `[[plugins]]` entry: a WebAssembly component and where it applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Shown in logs, metrics and status; unique.
    pub name: String,
    /// The `.wasm` component (relative paths: from the working directory).
    /// Watched: a changed file is reloaded.
    pub path: PathBuf,
    /// Hooks to call; empty (the default) = every hook the plugin
    /// implements. Naming a hook it does not implement is a load error.
    #[serde(default)]
    pub hooks: Vec<HookName>,
    /// Primitives the plugin applies to; empty (the default) = all of them.
    /// `authorize` runs for calls to these; `classify` only if `ratelimit`
    /// is among them, `on-write` only if `cache` is.
    #[serde(default)]
    pub primitives: Vec<PrimitiveName>,
    /// What a failed call (trap, timeout, memory cap, bad return) or a
    /// disabled plugin means for the request: `allow` (as if the plugin had
    /// no opinion) or `deny` (403).
    #[serde(default)]
    pub fail: FailMode,
    /// CPU-time budget of one call (checked every millisecond). A call is
    /// also stopped after 10 budgets (at least 50ms) of wall-clock time,
    /// however little CPU it got.
    #[serde(default = "PluginConfig::default_budget", with = "human_duration")]
    pub budget: Duration,
    /// Linear memory cap of one instance, in bytes.
    #[serde(default = "PluginConfig::default_max_memory")]
    pub max_memory: usize,
    /// Consecutive failed calls after which the plugin is disabled (until
    /// it is reloaded); its fail mode then answers for it.
    #[serde(default = "PluginConfig::default_max_failures")]
    pub max_failures: u32,
    /// Given to the plugin as JSON (`host.config`).
    #[serde(default = "PluginConfig::default_config")]
    pub config: serde_json::Value,
}

impl PluginConfig {
    fn default_budget() -> Duration {
        Duration::from_millis(5)
    }

    fn default_max_memory() -> usize {
        16 * 1024 * 1024
    }

    fn default_max_failures() -> u32 {
        5
    }

    fn default_config() -> serde_json::Value {
        serde_json::Value::Object(Default::default())
    }

    /// A plugin with the defaults: every hook, every primitive, fail deny.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            path: path.into(),
            hooks: Vec::new(),
            primitives: Vec::new(),
            fail: FailMode::default(),
            budget: Self::default_budget(),
            max_memory: Self::default_max_memory(),
            max_failures: Self::default_max_failures(),
            config: Self::default_config(),
        }
    }
}

/// A plugin hook, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookName {
    Authorize,
    Classify,
    OnWrite,
}

impl HookName {
    pub fn as_str(self) -> &'static str {
        match self {
            HookName::Authorize => "authorize",
            HookName::Classify => "classify",
            HookName::OnWrite => "on-write",
        }
    }
}

/// A primitive, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimitiveName {
    Cache,
    Lock,
    Semaphore,
    Ratelimit,
    Presence,
    Pubsub,
}

/// What a plugin failure means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Allow,
    #[default]
    Deny,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Allow => "allow",
            FailMode::Deny => "deny",
        }
    }
}

/// `url` with its password (if any) replaced by `***`, for logs and output.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        // `redis://secret@host`: the lone field is the password.
        None => format!("{scheme}://***@{host}"),
    }
}

impl Config {
    /// This configuration with its secrets (the API token, the Redis
    /// password) masked: what `check-config` prints.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        if config.auth.token.is_some() {
            config.auth.token = Some("***".into());
        }
        config.redis.url = config.redis.url.as_deref().map(redact_url);
        config.redis.nodes = config.redis.nodes.iter().map(|n| redact_url(n)).collect();
        if config.redis.password.is_some() {
            config.redis.password = Some("***".into());
        }
        config
    }
}

/// Names the key as the config file spells it (`redis.timeout`), and where
/// the bad value came from.
fn parse_error(err: figment::Error) -> ConfigError {
    let origin = match err.metadata.as_ref() {
        Some(meta) => match &meta.source {
            Some(source) => format!("{} {source}", meta.name),
            None => meta.name.to_string(),
        },
        None => "configuration".to_string(),
    };
    ConfigError::Parse {
        key: err.path.join(".").to_ascii_lowercase(),
        origin,
        reason: err.kind.to_string(),
    }
}

/// Durations as humantime strings: "250ms", "1s", "30d".
mod human_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration like \"250ms\", \"1s\" or \"5m\": {e}"
            ))
        })
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    #[test]
    fn algorithm_names_are_the_serde_names() {
        for algorithm in super::Algorithm::ALL {
            let serde = serde_json::to_value(algorithm).unwrap();
            assert_eq!(serde, algorithm.name(), "{algorithm:?}");
            assert_eq!(
                super::Algorithm::from_name(algorithm.name()),
                Some(algorithm)
            );
        }
    }

    use super::*;
    use figment::Jail;

    fn load(toml: &str) -> Result<Config, String> {
        let mut out = Err(String::new());
        Jail::expect_with(|jail| {
            jail.create_file("outrigger.toml", toml)?;
            out = Config::load(None).map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    fn load_err(toml: &str) -> String {
        let mut out = String::new();
        Jail::expect_with(|jail| {
            jail.create_file("outrigger.toml", toml)?;
            out = Config::load(None).unwrap_err().to_string();
            Ok(())
        });
        out
    }

    #[test]
    fn plugins_are_an_ordered_list_with_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "outrigger.toml",
                r#"
[[plugins]]
name = "a"
path = "a.wasm"

[[plugins]]
name = "b"
path = "b.wasm"
hooks = ["on-write"]
primitives = ["cache", "pubsub"]
fail = "allow"
budget = "2ms"
config = { rules = [{ match = "x" }] }
"#,
            )?;
            let config = Config::load(None).expect("loads");
            let [a, b] = &config.plugins[..] else {
                panic!("two plugins: {:?}", config.plugins);
            };
            assert_eq!(*a, PluginConfig::new("a", "a.wasm"));
            assert_eq!(a.fail, FailMode::Deny);
            assert_eq!(b.hooks, [HookName::OnWrite]);
            assert_eq!(b.primitives, [PrimitiveName::Cache, PrimitiveName::Pubsub]);
            assert_eq!(
                (b.fail, b.budget),
                (FailMode::Allow, Duration::from_millis(2))
            );
            assert_eq!(b.config["rules"][0]["match"], "x");
            Ok(())
        });
        let twice =
            "[[plugins]]\nname = \"a\"\npath = \"x\"\n[[plugins]]\nname = \"a\"\npath = \"y\"\n";
        assert!(
            load_err(twice).contains("plugin \"a\": the name is used twice"),
            "{}",
            load_err(twice)
        );
        let slow = "[[plugins]]\nname = \"a\"\npath = \"x\"\nbudget = \"2s\"\n";
        assert!(load_err(slow).contains("budget must be between 1ms and 1s"));
        let hook = "[[plugins]]\nname = \"a\"\npath = \"x\"\nhooks = [\"before\"]\n";
        assert!(load_err(hook).contains("plugins"), "{}", load_err(hook));
    }

    #[test]
    fn redis_modes_need_their_settings() {
        let cluster =
            load("[redis]\nmode = \"cluster\"\nnodes = [\"redis://a:1\", \"redis://b:2\"]")
                .unwrap();
        assert_eq!(cluster.redis.mode, RedisMode::Cluster);
        assert_eq!(cluster.redis.nodes, ["redis://a:1", "redis://b:2"]);
        assert!(cluster.redis.enabled());
        // One comma-separated string (environment variables, Helm --set).
        let listed =
            load("[redis]\nmode = \"cluster\"\nnodes = \"redis://a:1, redis://b:2\"").unwrap();
        assert_eq!(listed.redis.nodes, cluster.redis.nodes);
        let sentinel = load(
            "[redis]\nmode = \"sentinel\"\nnodes = \"redis://s:26379\"\nmaster_name = \"m\"\npassword = \"pw\"",
        )
        .unwrap();
        assert_eq!(sentinel.redis.master_name.as_deref(), Some("m"));
        let redacted = serde_json::to_string(&sentinel.redacted()).unwrap();
        assert!(!redacted.contains("\"pw\""), "{redacted}");

        for (toml, key) in [
            ("[redis]\nmode = \"cluster\"", "redis.nodes"),
            (
                "[redis]\nmode = \"cluster\"\nurl = \"redis://a:1\"",
                "redis.url",
            ),
            (
                "[redis]\nmode = \"cluster\"\nnodes = \"http://a:1\"",
                "redis.nodes",
            ),
            (
                "[redis]\nmode = \"sentinel\"\nnodes = \"redis://s:1\"",
                "redis.master_name",
            ),
            ("[redis]\nnodes = \"redis://a:1\"", "redis.nodes"),
            (
                "[redis]\nurl = \"redis://a:1\"\nmaster_name = \"m\"",
                "redis.master_name",
            ),
            (
                "[redis]\nurl = \"redis://a:1\"\npassword = \"pw\"",
                "redis.password",
            ),
            ("[redis]\nmode = \"ring\"", "redis.mode"),
            (
                "[redis]\nurl = \"rediss://a:1\"\ntls = { cert_file = \"Cargo.toml\" }",
                "redis.tls.cert_file",
            ),
            (
                "[redis]\nurl = \"redis://a:1\"\ntls = { ca_file = \"Cargo.toml\" }",
                "redis.tls",
            ),
            (
                "[redis]\nurl = \"rediss://a:1\"\ntls = { ca_file = \"/no/such.pem\" }",
                "redis.tls.ca_file",
            ),
        ] {
            let err = load_err(toml);
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("redis://u:pw@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://pw@h:6379"), "redis://***@h:6379");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://u:p@ss@h"), "redis://u:***@h");
        let mut config = Config::default();
        config.auth.token = Some("s3cret".into());
        config.redis.url = Some("redis://app:hunter2@redis:6379".into());
        let text = serde_json::to_string(&config.redacted()).unwrap();
        assert!(
            !text.contains("s3cret") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(text.contains("redis://app:***@redis:6379"), "{text}");
    }

    #[test]
    fn defaults_need_no_file() {
        Jail::expect_with(|_| {
            let config = Config::load(None).expect("defaults load");
            assert_eq!(config, Config::default());
            assert_eq!(config.redis.url, None, "no Redis URL means memory backend");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "outrigger.toml",
                "namespace = \"from-file\"\n[redis]\ntimeout = \"1s\"\n",
            )?;
            jail.set_env("OUTRIGGER_NAMESPACE", "from-env");
            jail.set_env("OUTRIGGER_REDIS__URL", "redis://127.0.0.1:1");
            jail.set_env("OUTRIGGER_PORT", "tcp://10.0.0.1:7480");
            let config = Config::load(None).expect("loads");
            assert_eq!(config.namespace, "from-env");
            assert_eq!(config.redis.url.as_deref(), Some("redis://127.0.0.1:1"));
            assert_eq!(config.redis.timeout, Duration::from_secs(1));
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        assert!(load_err("namespace = \"a b\"").contains("`namespace`"));
        assert!(load_err("[redis]\ntimeout = \"soon\"").contains("redis.timeout"));
        assert!(load_err("[http]\naddr = \"nowhere\"").contains("http.addr"));
        assert!(load_err("[limits]\nmax_batch = 0").contains("limits.max_batch"));
        assert!(load_err("[redis]\nurl = \"http://x\"").contains("redis.url"));
        assert!(load_err("[cache]\nsize = 1").contains("cache"));
        assert!(load_err("[auth]\ntoken = \"a\"\ntoken_file = \"/t\"").contains("`auth.token`"));
        let bad_policy =
            "[ratelimit.policies.login]\nalgorithm = \"gcra\"\nlimit = 0\nperiod = \"1m\"";
        assert!(load_err(bad_policy).contains("\"login\": limit must be at least 1"));
        let bad_algo =
            "[ratelimit.policies.login]\nalgorithm = \"leaky\"\nlimit = 1\nperiod = \"1m\"";
        assert!(load_err(bad_algo).contains("ratelimit.policies.login.algorithm"));
    }

    #[test]
    fn policies_load_from_file_and_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "outrigger.toml",
                "[ratelimit.policies.login]\nalgorithm = \"gcra\"\nlimit = 5\nperiod = \"1m\"\n",
            )?;
            jail.set_env("OUTRIGGER_RATELIMIT__POLICIES__LOGIN__BURST", "10");
            let config = Config::load(None).expect("loads");
            let login = config.ratelimit.policies["login"].to_limit().unwrap();
            assert_eq!(login.limit, 5);
            assert_eq!(login.burst, 10);
            assert_eq!(login.period, Duration::from_secs(60));
            Ok(())
        });
    }

    #[test]
    fn an_explicit_missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/outrigger.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/outrigger.toml"));
    }
}
