//! `[[plugins]]`: which WebAssembly components run, where, and within
//! what budget.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// is among them, `on-write` only if `cache` is, `on-value` for cache
    /// values if `cache` is and for payloads if `pubsub` is.
    #[serde(default)]
    pub primitives: Vec<PrimitiveName>,
    /// What a failed call (trap, timeout, memory cap, bad return) or a
    /// disabled plugin means for the request: `allow` (as if the plugin had
    /// no opinion) or `deny` (403).
    #[serde(default)]
    pub fail: FailMode,
    /// With `fail = "allow"`: whether a failed `on-value` call on a value's
    /// way out (a cache read, a delivery) passes the stored bytes on as
    /// they are. Off by default: such a read fails whatever `fail` says,
    /// so stored bytes a plugin transforms (ciphertext, say) never reach a
    /// caller untransformed by accident.
    #[serde(default)]
    pub fail_open_reads: bool,
    /// CPU-time budget of one call (checked every millisecond). A call is
    /// also stopped after 10 budgets (at least 50ms) of wall-clock time,
    /// however little CPU it got.
    #[serde(default = "PluginConfig::default_budget", with = "crate::duration")]
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
    /// A JSON file holding an object whose keys are set over `config`'s
    /// (they win), read at every load and reload: for secrets (an
    /// `envelope`'s keys) kept out of `outrigger.toml`, in a mounted
    /// Secret, say, and rotated with a reload.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
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
            fail_open_reads: false,
            budget: Self::default_budget(),
            max_memory: Self::default_max_memory(),
            max_failures: Self::default_max_failures(),
            config: Self::default_config(),
            config_file: None,
        }
    }

    /// `config`, with `config_file`'s object set over it (read now). The
    /// error says what is wrong with the file, never what it holds.
    pub fn merged_config(&self) -> Result<serde_json::Value, String> {
        let Some(path) = &self.config_file else {
            return Ok(self.config.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read config_file {}: {err}", path.display()))?;
        let serde_json::Value::Object(extra) = serde_json::from_str(&text).map_err(|err| {
            format!(
                "config_file {} is not JSON (line {}, column {})",
                path.display(),
                err.line(),
                err.column()
            )
        })?
        else {
            return Err(format!(
                "config_file {} does not hold a JSON object",
                path.display()
            ));
        };
        let mut merged = match &self.config {
            serde_json::Value::Object(base) => base.clone(),
            _ => serde_json::Map::new(),
        };
        merged.extend(extra);
        Ok(serde_json::Value::Object(merged))
    }
}

/// A plugin hook, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookName {
    Authorize,
    Classify,
    OnWrite,
    OnValue,
}

impl HookName {
    pub fn as_str(self) -> &'static str {
        match self {
            HookName::Authorize => "authorize",
            HookName::Classify => "classify",
            HookName::OnWrite => "on-write",
            HookName::OnValue => "on-value",
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
    Counter,
    Map,
    Queue,
    Schedule,
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
