//! WebAssembly plugins: policy and invalidation logic that users write
//! against `sdk/wit` and drop beside the sidecar.
//!
//! Plugins run in `[[plugins]]` order. For each request:
//!
//! - `authorize` runs for the primitives a plugin is configured for. The
//!   first deny ends the chain (403 / `PERMISSION_DENIED`); a rewrite
//!   changes the target that later plugins, and then the primitive, see.
//! - `classify` runs before each rate-limit check; each plugin that returns
//!   a limit replaces the policy, key and cost, and the next plugin sees
//!   that.
//! - `on-write` runs after each acknowledged cache set or delete; every
//!   plugin's invalidations are applied before the write is answered.
//! - `on-value` (world 0.5.0) sees each cache value and pub/sub payload:
//!   in config order on the way in (a cache write, a publish), in reverse
//!   order on the way out (a cache read, a delivery), each plugin seeing
//!   what the one before it made. A deny refuses the request (403).
//!
//! A value's way out fails closed whatever the plugin's fail mode, unless
//! its `fail_open_reads` says otherwise: stored bytes a plugin transforms
//! (ciphertext, say) never reach a caller as they are by accident.
//!
//! A plugin call that fails (trap, time budget, memory cap, a value the
//! host refuses) counts against the plugin and gets its fail mode: `allow`
//! skips the plugin, `deny` refuses the request. After `max_failures`
//! consecutive failures the plugin is disabled (its fail mode answers for
//! it) until it is reloaded. A changed `.wasm` file is reloaded within
//! [`WATCH_INTERVAL`]; `POST /v1/admin/plugins/reload` reloads them all.
//! A reload that fails keeps the previous version serving.

pub mod cache;
pub mod config;
mod runtime;
mod wasi;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use runtime::{Budget, Compiled, t};

use crate::error::Error;
use crate::plugins::config::{FailMode, HookName, PluginConfig, PrimitiveName};
use crate::telemetry::Metrics;

/// How often plugin files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The header (HTTP) or metadata entry (gRPC) naming the caller.
pub const CALLER_HEADER: &str = "x-outrigger-caller";
/// Headers or metadata entries `x-outrigger-attr-<name>` are attributes.
pub const ATTRIBUTE_PREFIX: &str = "x-outrigger-attr-";

/// Longest deny reason passed on to the caller.
const MAX_REASON_BYTES: usize = 1024;
/// Most invalidations one `on-write` call may return.
const MAX_INVALIDATIONS: usize = 1000;
/// An `on-value` call's budget grows by this much CPU time ...
const VALUE_BUDGET_STEP: Duration = Duration::from_millis(1);
/// ... per this many bytes of its value (on top of the plugin's budget):
/// copying and transforming 1 MiB in an interpreted language takes
/// milliseconds.
const VALUE_BUDGET_BYTES: usize = 64 * 1024;

/// Where a value passes `on-value` (the WIT `value-point`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValuePoint {
    /// A cache value on its way into the store.
    CacheWrite,
    /// A cache value on its way out to a caller.
    CacheRead,
    /// A pub/sub payload on its way to its channel.
    Publish,
    /// A pub/sub payload on its way out to a subscriber or a history read.
    Deliver,
}

impl ValuePoint {
    fn primitive(self) -> PrimitiveName {
        match self {
            ValuePoint::CacheWrite | ValuePoint::CacheRead => PrimitiveName::Cache,
            ValuePoint::Publish | ValuePoint::Deliver => PrimitiveName::Pubsub,
        }
    }

    /// On the way in: to be stored or sent.
    fn inbound(self) -> bool {
        matches!(self, ValuePoint::CacheWrite | ValuePoint::Publish)
    }

    fn wit(self) -> t::ValuePoint {
        match self {
            ValuePoint::CacheWrite => t::ValuePoint::CacheWrite,
            ValuePoint::CacheRead => t::ValuePoint::CacheRead,
            ValuePoint::Publish => t::ValuePoint::Publish,
            ValuePoint::Deliver => t::ValuePoint::Deliver,
        }
    }
}

/// The CPU budget of an `on-value` call on `len` bytes.
fn value_budget(budget: Duration, len: usize) -> Duration {
    budget + VALUE_BUDGET_STEP * u32::try_from(len / VALUE_BUDGET_BYTES).unwrap_or(u32::MAX)
}

/// What a request does, as plugins see it (the WIT `operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Delete,
    InvalidateTag,
    InvalidatePattern,
    Scan,
    Acquire,
    Release,
    Extend,
    Check,
    Join,
    Leave,
    Members,
    Watch,
    Rooms,
    Publish,
    Subscribe,
    SubscribePattern,
    Increment,
    Peek,
    Enqueue,
    Claim,
    Settle,
}

/// Who is calling, as the application says: from `x-outrigger-caller` and
/// `x-outrigger-attr-*` headers or metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub id: Option<String>,
    pub attributes: Vec<(String, String)>,
}

impl Caller {
    /// Picks the caller out of header (or metadata) names and values;
    /// names are expected in lower case, as HTTP/2 and `http` keep them.
    /// Values that are not text are skipped.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Caller {
        let mut caller = Caller::default();
        for (name, value) in pairs {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            if name == CALLER_HEADER {
                caller.id = Some(value.to_string());
            } else if let Some(attribute) = name.strip_prefix(ATTRIBUTE_PREFIX) {
                caller
                    .attributes
                    .push((attribute.to_string(), value.to_string()));
            }
        }
        caller
    }
}

/// One primitive call, for `authorize`.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub primitive: PrimitiveName,
    pub operation: Operation,
    pub target: String,
    pub member: Option<&'a str>,
    pub policy: Option<&'a str>,
    pub cost: Option<u32>,
    pub value_size: Option<u64>,
}

impl<'a> Call<'a> {
    pub fn new(primitive: PrimitiveName, operation: Operation, target: impl Into<String>) -> Self {
        Call {
            primitive,
            operation,
            target: target.into(),
            member: None,
            policy: None,
            cost: None,
            value_size: None,
        }
    }

    pub fn member(mut self, member: &'a str) -> Self {
        self.member = Some(member);
        self
    }

    pub fn policy(mut self, policy: &'a str, cost: u32) -> Self {
        self.policy = Some(policy);
        self.cost = Some(cost);
        self
    }

    /// The policy alone (a rate-limit reset has no cost).
    pub fn policy_only(mut self, policy: &'a str) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn value_size(mut self, size: usize) -> Self {
        self.value_size = Some(size as u64);
        self
    }
}

/// A rate-limit check, before and after `classify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub policy: String,
    pub key: String,
    pub cost: u32,
}

/// An acknowledged cache write, for `on-write`.
#[derive(Debug, Clone, Copy)]
pub struct WriteEvent<'a> {
    pub deleted: bool,
    pub key: &'a str,
    pub tags: &'a [String],
    pub value_size: usize,
}

/// Something `on-write` asks to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    Key(String),
    Tag(String),
    Pattern(String),
}

/// How one plugin is doing, for `Admin.Status` and `/v1/admin/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatus {
    pub name: String,
    pub path: PathBuf,
    /// Loaded and not disabled.
    pub healthy: bool,
    /// Why it is not healthy.
    pub reason: Option<String>,
    /// The hooks called.
    pub hooks: Vec<&'static str>,
    /// The plugin world version it was built against, once loaded.
    pub world: Option<&'static str>,
    pub fail: FailMode,
    /// Loads so far (1 after start-up; each successful reload adds one).
    pub generation: u64,
    /// Why the last reload failed, if it did (the previous version stayed).
    pub reload_error: Option<String>,
}

/// The configured plugins, and everything needed to call them.
pub struct Plugins {
    entries: Vec<Entry>,
    namespace: String,
    max_key_bytes: usize,
    max_value_bytes: usize,
    policies: BTreeSet<String>,
    metrics: Arc<Metrics>,
    reloading: tokio::sync::Mutex<()>,
}

/// A file's identity, to notice changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

struct Entry {
    config: PluginConfig,
    current: RwLock<Arc<Version>>,
    generation: AtomicU64,
    /// The file as last tried (loaded or not), so a broken file is not
    /// recompiled every watch interval.
    last_tried: Mutex<Option<Stamp>>,
    reload_error: Mutex<Option<String>>,
}

/// One loaded (or failed) version of a plugin. Calls in flight keep the
/// version they started on; a reload swaps in a new one.
struct Version {
    generation: u64,
    compiled: Result<Compiled, String>,
    hooks: Vec<HookName>,
    failures: AtomicU32,
    disabled: Mutex<Option<String>>,
}

impl Entry {
    fn current(&self) -> Arc<Version> {
        self.current.read().expect("plugin lock").clone()
    }

    fn applies_to(&self, primitive: PrimitiveName) -> bool {
        self.config.primitives.is_empty() || self.config.primitives.contains(&primitive)
    }
}

/// Compiles one plugin file as `config` says; the error says why not.
fn load(config: &PluginConfig, metrics: &Metrics) -> Result<Compiled, String> {
    let bytes = std::fs::read(&config.path)
        .map_err(|err| format!("cannot read {}: {err}", config.path.display()))?;
    let compiled = Compiled::load(
        &config.name,
        &bytes,
        &config.merged_config()?,
        Budget {
            time: config.budget,
            memory: config.max_memory,
        },
        metrics.plugin_instances(&config.name),
    )?;
    compiled.init()?;
    if let Some(missing) = config
        .hooks
        .iter()
        .find(|hook| !compiled.implemented.contains(hook))
    {
        return Err(format!(
            "is configured for hook `{}` but implements only [{}]",
            missing.as_str(),
            names(&compiled.implemented).join(", ")
        ));
    }
    Ok(compiled)
}

fn names(hooks: &[HookName]) -> Vec<&'static str> {
    hooks.iter().map(|hook| hook.as_str()).collect()
}

impl Version {
    fn new(config: &PluginConfig, generation: u64, compiled: Result<Compiled, String>) -> Version {
        let hooks = match &compiled {
            Ok(_) if !config.hooks.is_empty() => config.hooks.clone(),
            Ok(compiled) => compiled.implemented.clone(),
            // Not loaded: the hooks it would run get its fail mode. Unless
            // configured, not `on-value`: a read would fail closed for a
            // plugin that never saw values (one failing open included).
            Err(_) if !config.hooks.is_empty() => config.hooks.clone(),
            Err(_) => vec![HookName::Authorize, HookName::Classify, HookName::OnWrite],
        };
        Version {
            generation,
            compiled,
            hooks,
            failures: AtomicU32::new(0),
            disabled: Mutex::new(None),
        }
    }
}

/// What checking a file with `outrigger plugin check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The plugin world version it was built against.
    pub world: &'static str,
    pub hooks: Vec<&'static str>,
    /// Why `init` refused the configuration, if it did.
    pub init_error: Option<String>,
    /// Compiled now, or loaded compiled from the cache (`plugin_cache`).
    pub made: cache::Made,
}

/// Whether `path` is a component that fits the plugin world, and which
/// hooks it implements. `config` is the plugin's configuration, checked by
/// its `init`.
pub fn check_file(path: &Path, config: &serde_json::Value) -> Result<Checked, String> {
    let bytes =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let compiled = Compiled::load(
        "check",
        &bytes,
        config,
        Budget {
            time: Duration::from_millis(100),
            memory: PluginConfig::new("check", path).max_memory,
        },
        Default::default(),
    )?;
    Ok(Checked {
        world: compiled.world(),
        hooks: names(&compiled.implemented),
        init_error: compiled.init().err(),
        made: compiled.made,
    })
}

/// What plugins may ask the host about this sidecar.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub namespace: String,
    pub max_key_bytes: usize,
    /// `limits.max_value_bytes`: the most an `on-value` may return.
    pub max_value_bytes: usize,
    /// The configured rate-limit policies' names.
    pub policies: BTreeSet<String>,
}

impl Plugins {
    /// Loads every configured plugin. A plugin that cannot be loaded is
    /// kept, unhealthy, so its fail mode answers for it; the reasons are
    /// logged. Compiling takes milliseconds per plugin: call this off the
    /// async runtime's workers (or before it starts).
    pub fn load(plugins: &[PluginConfig], host: HostFacts, metrics: Arc<Metrics>) -> Plugins {
        let entries = plugins
            .iter()
            .map(|plugin| {
                let tried = stamp(&plugin.path);
                let compiled = load(plugin, &metrics);
                match &compiled {
                    Ok(c) => tracing::info!(
                        plugin = %plugin.name,
                        path = %plugin.path.display(),
                        implements = ?names(&c.implemented),
                        "plugin loaded"
                    ),
                    Err(reason) => tracing::error!(
                        plugin = %plugin.name,
                        path = %plugin.path.display(),
                        fail = ?plugin.fail,
                        "plugin not loaded, its fail mode answers for it: {reason}"
                    ),
                }
                metrics.set_plugin_healthy(&plugin.name, compiled.is_ok());
                Entry {
                    current: RwLock::new(Arc::new(Version::new(plugin, 1, compiled))),
                    generation: AtomicU64::new(1),
                    last_tried: Mutex::new(tried),
                    reload_error: Mutex::new(None),
                    config: plugin.clone(),
                }
            })
            .collect();
        Plugins {
            entries,
            namespace: host.namespace,
            max_key_bytes: host.max_key_bytes,
            max_value_bytes: host.max_value_bytes,
            policies: host.policies,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// No plugins configured: every hook is a no-op.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        self.entries
            .iter()
            .map(|entry| {
                let version = entry.current();
                let reason = match &version.compiled {
                    Err(reason) => Some(format!("not loaded: {reason}")),
                    Ok(_) => version
                        .disabled
                        .lock()
                        .expect("plugin lock")
                        .as_ref()
                        .map(|reason| format!("disabled: {reason}")),
                };
                PluginStatus {
                    name: entry.config.name.clone(),
                    path: entry.config.path.clone(),
                    world: version.compiled.as_ref().ok().map(Compiled::world),
                    healthy: reason.is_none(),
                    reason,
                    hooks: names(&version.hooks),
                    fail: entry.config.fail,
                    generation: version.generation,
                    reload_error: entry.reload_error.lock().expect("plugin lock").clone(),
                }
            })
            .collect()
    }

    /// Runs `authorize` through the chain; the target to use, or why not.
    pub fn authorize(&self, caller: &Caller, call: Call<'_>) -> Result<String, Error> {
        let mut target = call.target;
        for entry in &self.entries {
            let version = entry.current();
            if !version.hooks.contains(&HookName::Authorize) || !entry.applies_to(call.primitive) {
                continue;
            }
            let request = t::Request {
                primitive: wit_primitive(call.primitive),
                operation: wit_operation(call.operation),
                namespace: self.namespace.clone(),
                target: target.clone(),
                member: call.member.map(str::to_string),
                policy: call.policy.map(str::to_string),
                cost: call.cost,
                value_size: call.value_size,
                caller: caller.id.clone(),
                attributes: caller.attributes.clone(),
            };
            if !expresses(&version, &request) {
                continue;
            }
            let outcome = self.run(entry, &version, HookName::Authorize, |compiled| {
                let decision = compiled.authorize(&request)?;
                if let t::Decision::Rewrite(rewrite) = &decision {
                    self.check_name("rewrite target", &rewrite.target)?;
                }
                Ok(decision)
            });
            match outcome {
                Ok(t::Decision::Allow) => {}
                Ok(t::Decision::Deny(mut reason)) => {
                    truncate(&mut reason, MAX_REASON_BYTES);
                    return Err(Error::Denied(format!(
                        "denied by plugin {}: {reason}",
                        entry.config.name
                    )));
                }
                Ok(t::Decision::Rewrite(rewrite)) => target = rewrite.target,
                Err(failure) => self.fail(entry, failure)?,
            }
        }
        Ok(target)
    }

    /// Runs `classify` through the chain for one rate-limit check.
    pub fn classify(&self, caller: &Caller, mut check: Classified) -> Result<Classified, Error> {
        for entry in &self.entries {
            let version = entry.current();
            if !version.hooks.contains(&HookName::Classify)
                || !entry.applies_to(PrimitiveName::Ratelimit)
            {
                continue;
            }
            let request = t::Request {
                primitive: t::Primitive::Ratelimit,
                operation: t::Operation::Check,
                namespace: self.namespace.clone(),
                target: check.key.clone(),
                member: None,
                policy: Some(check.policy.clone()),
                cost: Some(check.cost),
                value_size: None,
                caller: caller.id.clone(),
                attributes: caller.attributes.clone(),
            };
            let outcome = self.run(entry, &version, HookName::Classify, |compiled| {
                let limit = compiled.classify(&request)?;
                if let Some(limit) = &limit {
                    if limit.policy != check.policy && !self.policies.contains(&limit.policy) {
                        return Err(format!(
                            "returned policy {:?}, which is not configured",
                            limit.policy
                        ));
                    }
                    self.check_name("rate-limit key", &limit.key)?;
                    if limit.cost == 0 {
                        return Err("returned a cost of 0".into());
                    }
                }
                Ok(limit)
            });
            match outcome {
                Ok(Some(limit)) => {
                    check = Classified {
                        policy: limit.policy,
                        key: limit.key,
                        cost: limit.cost,
                    }
                }
                Ok(None) => {}
                Err(failure) => self.fail(entry, failure)?,
            }
        }
        Ok(check)
    }

    /// Runs `on-write` in every plugin that has it: what to invalidate as
    /// well. A failing plugin adds nothing (the write already stands); the
    /// failure is logged and counted.
    pub fn on_write(&self, caller: &Caller, event: WriteEvent<'_>) -> Vec<Invalidate> {
        let mut out = Vec::new();
        for entry in &self.entries {
            let version = entry.current();
            if !version.hooks.contains(&HookName::OnWrite)
                || !entry.applies_to(PrimitiveName::Cache)
            {
                continue;
            }
            let wit_event = t::WriteEvent {
                kind: if event.deleted {
                    t::WriteKind::Delete
                } else {
                    t::WriteKind::Set
                },
                namespace: self.namespace.clone(),
                key: event.key.to_string(),
                tags: event.tags.to_vec(),
                value_size: event.value_size as u64,
                caller: caller.id.clone(),
                attributes: caller.attributes.clone(),
            };
            let outcome = self.run(entry, &version, HookName::OnWrite, |compiled| {
                let list = compiled.on_write(&wit_event)?;
                if list.len() > MAX_INVALIDATIONS {
                    return Err(format!(
                        "returned {} invalidations (at most {MAX_INVALIDATIONS})",
                        list.len()
                    ));
                }
                list.into_iter()
                    .map(|inv| match inv {
                        t::Invalidation::Key(key) => {
                            self.check_name("key", &key).map(|()| Invalidate::Key(key))
                        }
                        t::Invalidation::Tag(tag) => {
                            self.check_name("tag", &tag).map(|()| Invalidate::Tag(tag))
                        }
                        t::Invalidation::Pattern(pattern) => self
                            .check_name("pattern", &pattern)
                            .map(|()| Invalidate::Pattern(pattern)),
                    })
                    .collect::<Result<Vec<_>, String>>()
            });
            match outcome {
                Ok(list) => out.extend(list),
                Err(failure) => tracing::warn!(
                    plugin = %entry.config.name,
                    key = event.key,
                    "on-write failed; nothing more invalidated for this write: {failure}"
                ),
            }
        }
        out
    }

    /// Whether any plugin runs `on-value` for `primitive`'s values (if
    /// not, they need not be copied for it).
    pub fn sees_values(&self, primitive: PrimitiveName) -> bool {
        self.entries.iter().any(|entry| {
            entry.applies_to(primitive) && entry.current().hooks.contains(&HookName::OnValue)
        })
    }

    /// Runs `on-value` through the chain (in reverse on the way out): the
    /// value to go on with, or why not. `target` is the cache key or the
    /// channel.
    pub fn on_value(
        &self,
        caller: &Caller,
        point: ValuePoint,
        target: &str,
        mut value: bytes::Bytes,
    ) -> Result<bytes::Bytes, Error> {
        let primitive = point.primitive();
        let chain: Box<dyn Iterator<Item = &Entry>> = if point.inbound() {
            Box::new(self.entries.iter())
        } else {
            Box::new(self.entries.iter().rev())
        };
        for entry in chain {
            let version = entry.current();
            if !version.hooks.contains(&HookName::OnValue) || !entry.applies_to(primitive) {
                continue;
            }
            let event = t::ValueEvent {
                point: point.wit(),
                namespace: self.namespace.clone(),
                target: target.to_string(),
                value: value.to_vec(),
                caller: caller.id.clone(),
                attributes: caller.attributes.clone(),
            };
            let budget = value_budget(entry.config.budget, value.len());
            let outcome = self.run(entry, &version, HookName::OnValue, |compiled| {
                let decision = compiled.on_value(&event, budget)?;
                if let t::ValueDecision::Replace(bytes) = &decision
                    && bytes.len() > self.max_value_bytes
                {
                    return Err(format!(
                        "returned a value of {} bytes (limits.max_value_bytes is {})",
                        bytes.len(),
                        self.max_value_bytes
                    ));
                }
                Ok(decision)
            });
            match outcome {
                Ok(t::ValueDecision::Keep) => {}
                Ok(t::ValueDecision::Replace(bytes)) => value = bytes.into(),
                Ok(t::ValueDecision::Deny(mut reason)) => {
                    truncate(&mut reason, MAX_REASON_BYTES);
                    return Err(Error::Denied(format!(
                        "denied by plugin {}: {reason}",
                        entry.config.name
                    )));
                }
                Err(failure) if point.inbound() => self.fail(entry, failure)?,
                Err(failure) => {
                    if entry.config.fail == FailMode::Allow && entry.config.fail_open_reads {
                        continue;
                    }
                    return Err(Error::Denied(format!(
                        "plugin {} failed on a value on its way out, which fails closed: {failure}",
                        entry.config.name
                    )));
                }
            }
        }
        Ok(value)
    }

    /// A name a plugin returned must be one the primitives would accept.
    fn check_name(&self, what: &str, name: &str) -> Result<(), String> {
        if name.is_empty() {
            return Err(format!("returned an empty {what}"));
        }
        if name.len() > self.max_key_bytes {
            return Err(format!(
                "returned a {what} of {} bytes (limits.max_key_bytes is {})",
                name.len(),
                self.max_key_bytes
            ));
        }
        Ok(())
    }

    /// The fail mode's answer for a failed call.
    fn fail(&self, entry: &Entry, failure: String) -> Result<(), Error> {
        match entry.config.fail {
            FailMode::Allow => Ok(()),
            FailMode::Deny => Err(Error::Denied(format!(
                "plugin {} failed and fails closed: {failure}",
                entry.config.name
            ))),
        }
    }

    /// One hook call with the health bookkeeping: counts, consecutive
    /// failures, disabling.
    fn run<R>(
        &self,
        entry: &Entry,
        version: &Version,
        hook: HookName,
        call: impl FnOnce(&Compiled) -> Result<R, String>,
    ) -> Result<R, String> {
        let name = &entry.config.name;
        let compiled = match &version.compiled {
            Ok(compiled) => compiled,
            Err(reason) => {
                self.metrics
                    .count_plugin_call(name, hook.as_str(), "unloaded");
                return Err(format!("not loaded: {reason}"));
            }
        };
        if let Some(reason) = version.disabled.lock().expect("plugin lock").as_ref() {
            self.metrics
                .count_plugin_call(name, hook.as_str(), "disabled");
            return Err(format!("disabled: {reason}"));
        }
        match call(compiled) {
            Ok(value) => {
                version.failures.store(0, Ordering::Relaxed);
                self.metrics.count_plugin_call(name, hook.as_str(), "ok");
                Ok(value)
            }
            Err(failure) => {
                self.metrics
                    .count_plugin_call(name, hook.as_str(), "failed");
                let failures = version.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    plugin = %name,
                    hook = hook.as_str(),
                    failures,
                    "plugin call failed: {failure}"
                );
                if failures >= entry.config.max_failures {
                    let mut disabled = version.disabled.lock().expect("plugin lock");
                    if disabled.is_none() {
                        let reason =
                            format!("{failures} consecutive failures, the last: {failure}");
                        tracing::error!(
                            plugin = %name,
                            fail = ?entry.config.fail,
                            "plugin disabled until it is reloaded: {reason}"
                        );
                        self.metrics.set_plugin_healthy(name, false);
                        *disabled = Some(reason);
                    }
                }
                Err(failure)
            }
        }
    }

    /// Reloads every plugin (`force`), or those whose file changed since
    /// it was last tried. Each is compiled off the async workers and
    /// swapped in atomically: calls in flight finish on the old version.
    /// A plugin that fails to load keeps its previous version; the error
    /// names every such plugin.
    pub async fn reload(self: &Arc<Self>, force: bool) -> Result<Vec<PluginStatus>, Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut failed = Vec::new();
        for index in 0..self.entries.len() {
            let entry = &self.entries[index];
            let now = stamp(&entry.config.path);
            if !force && *entry.last_tried.lock().expect("plugin lock") == now {
                continue;
            }
            let this = self.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                load(&this.entries[index].config, &this.metrics)
            })
            .await
            .unwrap_or_else(|err| Err(format!("loading panicked: {err}")));
            *entry.last_tried.lock().expect("plugin lock") = now;
            let name = &entry.config.name;
            match compiled {
                Ok(compiled) => {
                    let generation = entry.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(
                        plugin = %name,
                        generation,
                        implements = ?names(&compiled.implemented),
                        "plugin reloaded"
                    );
                    let version = Version::new(&entry.config, generation, Ok(compiled));
                    *entry.current.write().expect("plugin lock") = Arc::new(version);
                    *entry.reload_error.lock().expect("plugin lock") = None;
                    self.metrics.set_plugin_healthy(name, true);
                }
                Err(reason) => {
                    tracing::error!(plugin = %name, "plugin reload failed, the previous version stays: {reason}");
                    *entry.reload_error.lock().expect("plugin lock") = Some(reason.clone());
                    failed.push(format!("plugin {name}: {reason}"));
                }
            }
        }
        if failed.is_empty() {
            Ok(self.status())
        } else {
            Err(Error::PluginLoad(format!(
                "{}; the previous versions stay in service",
                failed.join("; ")
            )))
        }
    }

    /// Reloads plugins whose files change, until `stop` resolves.
    pub fn watch(self: &Arc<Self>, stop: impl Future<Output = ()> + Send + 'static) {
        if self.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut stop = std::pin::pin!(stop);
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    _ = tick.tick() => {
                        // Failures are logged and shown in status.
                        let _ = this.reload(false).await;
                    }
                }
            }
        });
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// Whether the plugin version's world can express `request` (a plugin of
/// an older world is not called for newer primitives and operations). An
/// unloaded version answers with its fail mode, as for any request.
fn expresses(version: &Version, request: &t::Request) -> bool {
    version
        .compiled
        .as_ref()
        .map_or(true, |compiled| compiled.expresses(request))
}

fn wit_primitive(primitive: PrimitiveName) -> t::Primitive {
    match primitive {
        PrimitiveName::Cache => t::Primitive::Cache,
        PrimitiveName::Lock => t::Primitive::Lock,
        PrimitiveName::Semaphore => t::Primitive::Semaphore,
        PrimitiveName::Ratelimit => t::Primitive::Ratelimit,
        PrimitiveName::Presence => t::Primitive::Presence,
        PrimitiveName::Pubsub => t::Primitive::Pubsub,
        PrimitiveName::Counter => t::Primitive::Counter,
        PrimitiveName::Map => t::Primitive::Map,
        PrimitiveName::Queue => t::Primitive::Queue,
        PrimitiveName::Schedule => t::Primitive::Schedule,
    }
}

fn wit_operation(operation: Operation) -> t::Operation {
    match operation {
        Operation::Read => t::Operation::Read,
        Operation::Write => t::Operation::Write,
        Operation::Delete => t::Operation::Delete,
        Operation::InvalidateTag => t::Operation::InvalidateTag,
        Operation::InvalidatePattern => t::Operation::InvalidatePattern,
        Operation::Scan => t::Operation::Scan,
        Operation::Acquire => t::Operation::Acquire,
        Operation::Release => t::Operation::Release,
        Operation::Extend => t::Operation::Extend,
        Operation::Check => t::Operation::Check,
        Operation::Join => t::Operation::Join,
        Operation::Leave => t::Operation::Leave,
        Operation::Members => t::Operation::Members,
        Operation::Watch => t::Operation::Watch,
        Operation::Rooms => t::Operation::Rooms,
        Operation::Publish => t::Operation::Publish,
        Operation::Subscribe => t::Operation::Subscribe,
        Operation::SubscribePattern => t::Operation::SubscribePattern,
        Operation::Increment => t::Operation::Increment,
        Operation::Peek => t::Operation::Peek,
        Operation::Enqueue => t::Operation::Enqueue,
        Operation::Claim => t::Operation::Claim,
        Operation::Settle => t::Operation::Settle,
    }
}
