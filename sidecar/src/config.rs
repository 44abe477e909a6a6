//! Configuration: one typed [`Config`], loaded and validated before the
//! runtime starts.
//!
//! Sources, later ones winning: built-in defaults, then `outrigger.toml` (or
//! the file given with `--config`), then `OUTRIGGER_*` environment variables
//! with nested keys joined by `__` (`OUTRIGGER_REDIS__URL` sets `redis.url`).
//! A bad value fails [`Config::load`] with a message that names the key.

//!
//! Each section's types live beside what they configure (`[redis]` in
//! `backend/redis/config.rs`, `[ratelimit]` in the rate-limit folder, ...);
//! this module composes them into [`Config`], loads it and checks what
//! spans sections. Every section type is re-exported here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::auth::AuthConfig;
pub use crate::backend::circuit::Fallback;
pub use crate::backend::redis::config::{RedisConfig, RedisMode, RedisTlsConfig, redact_url};
pub use crate::error::ConfigError;
pub use crate::plugins::config::{FailMode, HookName, PluginConfig, PrimitiveName};
pub use crate::primitives::cache::config::{CacheConfig, MemoryConfig, NearCacheConfig};
pub use crate::primitives::lock::config::LockFallback;
pub use crate::primitives::map::config::MapsConfig;
pub use crate::primitives::presence::config::PresenceConfig;
use crate::primitives::pubsub::MAX_AGE;
pub use crate::primitives::pubsub::config::PubSubConfig;
pub use crate::primitives::queue::config::QueuesConfig;
pub use crate::primitives::ratelimit::config::{
    Algorithm, Limit, PolicyConfig, RateLimitConfig, RateLimitFallback,
};
pub use crate::serve::{Listener, OpsListener};
pub use crate::telemetry::{LogConfig, LogFormat};
pub use crate::validate::Limits;

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
    "console",
    "auth",
    "redis",
    "memory",
    "cache",
    "limits",
    "ratelimit",
    "presence",
    "pubsub",
    "maps",
    "queues",
    "failover",
    "plugins",
    "plugin_cache",
    "log",
    "runtime",
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
    pub console: crate::serve::ConsoleConfig,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub memory: MemoryConfig,
    pub cache: CacheConfig,
    pub limits: Limits,
    pub ratelimit: RateLimitConfig,
    pub presence: PresenceConfig,
    pub pubsub: PubSubConfig,
    pub maps: MapsConfig,
    pub queues: QueuesConfig,
    pub failover: FailoverConfig,
    /// WebAssembly plugins, in the order they run: `[[plugins]]`.
    pub plugins: Vec<PluginConfig>,
    /// A directory to keep compiled plugins in, so a restart or reload of
    /// an unchanged plugin skips compiling it (seconds for a JavaScript or
    /// Python one); none by default. Writable by the sidecar alone: it
    /// runs what it finds there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_cache: Option<PathBuf>,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    #[serde(with = "crate::duration")]
    pub shutdown_grace: Duration,
}

/// What happens while Redis is down (see "When Redis is down" in the
/// README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// First pause between probes of a down Redis; doubles up to `probe_max`.
    #[serde(with = "crate::duration")]
    pub probe_interval: Duration,
    #[serde(with = "crate::duration")]
    pub probe_max: Duration,
    pub cache: Fallback,
    pub locks: LockFallback,
    pub ratelimit: RateLimitFallback,
    /// Share of each limit one sidecar allows alone while Redis is down
    /// (`ratelimit = "local"`), in (0, 1].
    pub fallback_share: f64,
    pub presence: Fallback,
    pub pubsub: Fallback,
    /// Counters: "fail" by default, since a counter read from an empty
    /// local store lets through what it exists to stop (a login throttle);
    /// "local" counts here and adds the counts to Redis when it returns.
    pub counters: Fallback,
    /// Maps: "fail" by default, since a map is state every instance reads
    /// and writes (a session): an empty local copy would answer "no such
    /// session" and take writes no other instance sees. "local" keeps maps
    /// here and replays the changes on Redis when it returns.
    pub maps: Fallback,
    /// Work queues: "fail" by default (every call refused while Redis is
    /// down: a job accepted in one sidecar's memory is lost when it
    /// restarts); "local" buffers enqueues (up to `enqueue_buffer`) and
    /// enqueues them, in order, when Redis returns. Claims and settles are
    /// refused either way.
    pub queues: Fallback,
    /// Enqueues kept for Redis while it is down (`queues = "local"`); more
    /// are refused (503).
    pub enqueue_buffer: usize,
    /// Publishes kept for Redis while it is down; more are dropped (and
    /// counted).
    pub publish_buffer: usize,
    /// After Redis returns, how long to wait before flushing buffered
    /// publishes, so subscribers on other sidecars have resubscribed.
    #[serde(with = "crate::duration")]
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
            counters: Fallback::Fail,
            maps: Fallback::Fail,
            queues: Fallback::Fail,
            enqueue_buffer: 10_000,
            publish_buffer: 10_000,
            flush_delay: Duration::from_millis(500),
        }
    }
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
            console: Default::default(),
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
                max_streams: 10_000,
                header_timeout: Duration::from_secs(30),
            },
            ratelimit: RateLimitConfig::default(),
            presence: PresenceConfig::default(),
            pubsub: PubSubConfig::default(),
            maps: MapsConfig::default(),
            queues: QueuesConfig::default(),
            failover: FailoverConfig::default(),
            plugins: Vec::new(),
            plugin_cache: None,
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            runtime: RuntimeConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The async runtime the sidecar serves on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that serve requests; `0` is one per CPU core. One by
    /// default, as a sidecar beside an app on a fraction of a core: with a
    /// single worker no request is handed between threads, which measured
    /// 10-30% less CPU per request and lower latency at concurrency 1 (see
    /// `BENCHMARKS.md`). Raise it when the sidecar has cores of its own.
    pub workers: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { workers: 1 }
    }
}

/// Most worker threads `runtime.workers` may ask for.
pub const MAX_WORKERS: usize = 256;

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
        if self.runtime.workers > MAX_WORKERS {
            return invalid(
                "runtime.workers",
                &format!("must be at most {MAX_WORKERS} (0 is one per CPU core)"),
            );
        }
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
        let poll = self.cache.lease_poll;
        if poll < Duration::from_millis(1) || poll > Duration::from_secs(60) {
            return invalid("cache.lease_poll", "must be between 1ms and 60s");
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
        if self.maps.reap_interval < Duration::from_millis(10) {
            return invalid("maps.reap_interval", "must be at least 10ms");
        }
        let q = &self.queues;
        if q.visibility.is_zero() || q.visibility > self.limits.max_ttl {
            return invalid("queues.visibility", "must be 1ms..=limits.max_ttl");
        }
        if !(1..=crate::primitives::queue::MAX_ATTEMPTS).contains(&q.max_attempts) {
            return invalid("queues.max_attempts", "must be 1..=1000");
        }
        if q.backoff > q.backoff_max {
            return invalid("queues.backoff", "must not be above queues.backoff_max");
        }
        if q.dedup_window.is_zero() {
            return invalid("queues.dedup_window", "must be at least 1ms");
        }
        if q.memory_max_jobs == 0 {
            return invalid("queues.memory_max_jobs", "must be at least 1");
        }
        if self.maps.max_fields == 0 {
            return invalid("maps.max_fields", "must be at least 1");
        }
        for (key, value) in [
            ("pubsub.stream_max_len", self.pubsub.stream_max_len),
            ("pubsub.subscriber_buffer", self.pubsub.subscriber_buffer),
            ("pubsub.max_subscribers", self.pubsub.max_subscribers),
            (
                "pubsub.memory_history_bytes",
                self.pubsub.memory_history_bytes,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        for (i, rule) in self.pubsub.retention.iter().enumerate() {
            let why = match crate::backend::glob::validate(&rule.channels) {
                Err(why) => Some(format!("rule {i}: channels {:?}: {why}", rule.channels)),
                Ok(()) if rule.max_len == Some(0) => {
                    Some(format!("rule {i}: max_len must be at least 1"))
                }
                Ok(()) if rule.max_age > MAX_AGE => {
                    Some(format!("rule {i}: max_age must be at most 365 days"))
                }
                Ok(()) => None,
            };
            if let Some(reason) = why {
                return Err(ConfigError::Invalid {
                    key: "pubsub.retention",
                    reason,
                });
            }
        }
        if self.pubsub.stream_max_age > MAX_AGE {
            return invalid("pubsub.stream_max_age", "must be at most 365 days");
        }
        if self.pubsub.idempotency_window < Duration::from_millis(1)
            || self.pubsub.idempotency_window > Duration::from_secs(7 * 24 * 3600)
        {
            return invalid("pubsub.idempotency_window", "must be 1ms to 7 days");
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

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
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
        assert!(load_err("[runtime]\nworkers = 257").contains("runtime.workers"));
        assert!(load_err("[runtime]\nthreads = 2").contains("runtime"));
        assert!(load_err("[redis]\nurl = \"http://x\"").contains("redis.url"));
        assert!(load_err("[cache]\nsize = 1").contains("cache"));
        assert!(load_err("[cache]\nlease_poll = \"0ms\"").contains("cache.lease_poll"));
        assert!(load_err("[auth]\ntoken = \"a\"\ntoken_file = \"/t\"").contains("`auth.token`"));
        let bad_policy =
            "[ratelimit.policies.login]\nalgorithm = \"gcra\"\nlimit = 0\nperiod = \"1m\"";
        assert!(load_err(bad_policy).contains("\"login\": limit must be at least 1"));
        let bad_algo =
            "[ratelimit.policies.login]\nalgorithm = \"leaky\"\nlimit = 1\nperiod = \"1m\"";
        assert!(load_err(bad_algo).contains("ratelimit.policies.login.algorithm"));
        let bad_glob = "[[pubsub.retention]]\nchannels = \"a[\"\nmax_len = 5";
        assert!(load_err(bad_glob).contains("pubsub.retention"));
        let bad_len = "[[pubsub.retention]]\nchannels = \"a:*\"\nmax_len = 0";
        assert!(load_err(bad_len).contains("rule 0: max_len must be at least 1"));
        let bad_age = "[[pubsub.retention]]\nchannels = \"a:*\"\nmax_age = \"400d\"";
        assert!(load_err(bad_age).contains("rule 0: max_age must be at most 365 days"));
        assert!(
            load_err("[pubsub]\nidempotency_window = \"0s\"").contains("pubsub.idempotency_window")
        );
    }

    #[test]
    fn retention_rules_load_from_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "outrigger.toml",
                "[[pubsub.retention]]\nchannels = \"session:*\"\nmax_len = 100\nmax_age = \"24h\"\n\n[[pubsub.retention]]\nchannels = \"*\"\n",
            )?;
            let config = Config::load(None).expect("loads");
            let rules = &config.pubsub.retention;
            assert_eq!(rules.len(), 2);
            assert_eq!(
                (rules[0].max_len, rules[0].max_age),
                (Some(100), Duration::from_secs(86400))
            );
            assert_eq!((rules[1].max_len, rules[1].max_age), (None, Duration::ZERO));
            Ok(())
        });
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
