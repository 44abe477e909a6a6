//! The HTTP API's JSON bodies, as types: handlers serialize these, and the
//! OpenAPI document (`/openapi.json`) is generated from the same types and
//! the handlers' `#[utoipa::path]` annotations, so the contract cannot drift
//! from the code.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReply {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusReply {
    pub version: String,
    pub namespace: String,
    /// `memory` or `redis` (the backend serving requests now).
    pub backend: String,
    pub uptime_ms: u64,
    pub cache: CacheStatsReply,
    /// Present when Redis is configured.
    pub failover: Option<FailoverReply>,
    /// Every configured plugin, in the order they run.
    pub plugins: Vec<PluginReply>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginReply {
    pub name: String,
    pub path: String,
    /// Loaded and not disabled.
    pub healthy: bool,
    /// Why not healthy: not loaded (and why), or disabled (and why).
    pub reason: Option<String>,
    /// The hooks called: `authorize`, `classify`, `on-write`.
    pub hooks: Vec<String>,
    /// `allow` or `deny`: what a failure means for the request.
    pub fail: String,
    /// Successful loads so far (1 after start-up).
    pub generation: u64,
    /// Why the last reload failed (the previous version stayed), if it did.
    pub reload_error: Option<String>,
    /// The plugin world version it was built against (`0.2.0`); absent
    /// while it is not loaded.
    pub world: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginsReply {
    pub plugins: Vec<PluginReply>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CacheStatsReply {
    pub hits: u64,
    pub misses: u64,
    pub keys: Option<u64>,
    pub bytes: Option<u64>,
    pub evictions: Option<u64>,
    /// The near cache, when `cache.near.enabled` (Redis only).
    pub near: Option<NearCacheReply>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NearCacheReply {
    /// In use: the invalidation channel is live.
    pub live: bool,
    pub entries: u64,
    pub bytes: u64,
    /// Reads answered from the near cache (also counted in `hits`).
    pub hits: u64,
    /// Entries kept after a read from Redis.
    pub fills: u64,
    /// Reads not kept because an invalidation of their key raced them.
    pub raced: u64,
    /// Entries evicted by invalidations.
    pub invalidations: u64,
    /// Times the whole near cache was dropped (channel lost, failover).
    pub flushes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailoverReply {
    /// `redis`, or `memory` while Redis is down.
    pub mode: String,
    pub since_unix_ms: u64,
    pub transitions: u64,
    pub last_error: Option<String>,
    pub last_reconciliation: Option<ReconciliationReply>,
    /// Redis' `maxmemory-policy` at the last (re)connection (null if it
    /// could not be read).
    pub maxmemory_policy: Option<String>,
    /// Whether that policy lets Redis evict keys: then locks, fences,
    /// durable history, counters and maps have weaker guarantees (README).
    pub evicts: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReconciliationReply {
    pub at_unix_ms: u64,
    pub cache_entries_dropped: u64,
    pub locks_released: u64,
    pub members_reasserted: u64,
    pub members_lost: u64,
    pub messages_flushed: u64,
    pub messages_dropped: u64,
    pub flushing: bool,
    /// Map changes made locally (`failover.maps = "local"`) and replayed on
    /// Redis.
    pub map_changes_replayed: u64,
}

/// The OpenAPI 3.1 document of the HTTP API: its info, shared schemas and
/// tags. The paths are added as the routes are registered (`api::http`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outrigger",
        description = "Coordination sidecar: cache, locks, rate limits, presence, pub/sub, counters, maps and work queues. Errors are {\"error\": {\"code\", \"message\"}}.",
    ),
    components(schemas(crate::primitives::pubsub::http::MessageEvent)),
    tags(
        (name = "cache"), (name = "locks"), (name = "ratelimit"), (name = "presence"),
        (name = "pubsub"), (name = "counters"), (name = "maps"), (name = "queues"),
        (name = "operations"),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Every type deriving `ToSchema` in the crate, by name: the OpenAPI
    /// document keys its schemas by the bare type name, so two types of one
    /// name would silently describe two routes with one schema.
    #[test]
    fn schema_names_are_unique() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut names: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let mut deriving = false;
                for line in text.lines().map(str::trim) {
                    if line.starts_with("#[derive(") {
                        deriving = line.contains("ToSchema");
                    } else if deriving
                        && let Some(rest) = line
                            .strip_prefix("pub struct ")
                            .or_else(|| line.strip_prefix("pub enum "))
                    {
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        names.entry(name).or_default().push(path.clone());
                        deriving = false;
                    }
                }
            }
        }
        assert!(names.len() > 20, "found only {names:?}");
        let clashes: Vec<_> = names.iter().filter(|(_, files)| files.len() > 1).collect();
        assert!(clashes.is_empty(), "schema names used twice: {clashes:?}");
    }
}
