//! `[redis]`: where Redis is and how to talk to it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

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
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Deadline of establishing a connection.
    #[serde(with = "crate::duration")]
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
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
