//! The HTTP API's JSON bodies, as types: handlers serialize these, and the
//! OpenAPI document (`/openapi.json`) is generated from the same types and
//! the handlers' `#[utoipa::path]` annotations, so the contract cannot drift
//! from the code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: `invalid_argument`, `too_large`, `not_found`, `conflict`,
    /// `precondition_failed`, `rate_limited`, `exhausted`, `unavailable`,
    /// `internal`, `method_not_allowed`, `draining`.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

/// The errors any API call may answer, declared once for the OpenAPI
/// document.
pub struct CommonErrors;

impl utoipa::IntoResponses for CommonErrors {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>
    {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        [
            ("400", "Malformed input"),
            ("413", "Over a size limit"),
            (
                "503",
                "Storage unavailable, or failing closed while Redis is down",
            ),
        ]
        .into_iter()
        .map(|(status, description)| {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .build();
            (status.to_string(), response.into())
        })
        .collect()
    }
}

/// A cache write's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionReply {
    /// The new version of the entry; strictly increases per key.
    pub version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedReply {
    /// Whether the key existed.
    pub deleted: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateBody {
    /// Delete every key carrying any of these tags...
    pub tags: Option<Vec<String>>,
    /// ...or every key matching this Redis glob. Exactly one of the two.
    pub pattern: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidatedReply {
    /// How many keys were deleted.
    pub deleted: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPageReply {
    pub keys: Vec<String>,
    /// Pass as `cursor` for the next page; null when the listing is done.
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/cache/{key}/lease` (GetOrLease).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetOrLeaseBody {
    /// How long a granted lease keeps other callers waiting, in ms:
    /// 1 ..= `limits.max_ttl`. Any write of the key ends it.
    #[schema(minimum = 1)]
    pub lease_ms: u64,
    /// How long to wait for another caller's lease to be filled; 0
    /// (default) answers at once (409 while another caller holds it).
    #[serde(default)]
    pub wait_ms: u64,
    /// Take the expired value (written with `stale_ms`) rather than wait.
    #[serde(default)]
    pub accept_stale: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Lease length in ms: 1 ..= `limits.max_ttl`.
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
    /// How long to wait for the lock; 0 (default) tries once.
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseReply {
    /// Proof of ownership, for release and extend.
    pub token: String,
    /// Strictly increases with every acquisition of this lock name.
    pub fence: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    #[schema(min_length = 1, max_length = 128)]
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    #[schema(min_length = 1, max_length = 128)]
    pub token: String,
    /// The new lease, counted from now.
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReleasedReply {
    pub released: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExtendedReply {
    pub extended: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermitBody {
    /// Permits the semaphore has (the same for every caller).
    #[schema(minimum = 1)]
    pub limit: u32,
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PermitReply {
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// Whose limit: a user, an IP, an API key.
    #[schema(min_length = 1)]
    pub key: String,
    /// Units this request takes; 0 (default) means 1.
    #[serde(default)]
    pub cost: u32,
    /// A limit given here instead of configured; the path's policy name
    /// then only keeps its counters apart.
    #[serde(default)]
    pub inline: Option<InlineBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineBody {
    /// `gcra`, `sliding_window` or `fixed_window`.
    pub algorithm: String,
    pub limit: u32,
    pub period_ms: u64,
    /// gcra only; 0 (default) means `limit`.
    #[serde(default)]
    pub burst: u32,
}

/// A rate-limit decision (200 when allowed, 429 when denied).
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionReply {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_after_ms: u64,
    /// 0 when allowed.
    pub retry_after_ms: u64,
    /// Present when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// Any JSON; returned by the listing and in join events.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Time to live without a heartbeat: 1 ..= `limits.max_ttl`.
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JoinedReply {
    /// False for a heartbeat of a member already in the room.
    pub joined: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeftReply {
    pub left: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberReply {
    pub member: String,
    /// The metadata given at the last join or heartbeat (null if none).
    pub metadata: Value,
    /// Time left before the member times out.
    pub ttl_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembersReply {
    pub members: Vec<MemberReply>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomsReply {
    pub rooms: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetReply {
    /// The message's offset in the channel's stream (durable messages
    /// only; null otherwise).
    pub offset: Option<String>,
}

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
}

/// A pub/sub message as Server-Sent Events data and WebSocket text.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageEvent {
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: String,
    pub offset: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// The payload when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

/// Query of `GET /v1/cache/{key}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// Restart the TTL from the one the entry was written with.
    #[serde(default)]
    pub refresh_ttl: bool,
}

/// Query of `PUT /v1/cache/{key}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutParams {
    /// Time to live in ms; 0 or absent: no expiry.
    #[serde(default)]
    pub ttl_ms: u64,
    /// Comma-separated tags.
    #[serde(default)]
    pub tags: Option<String>,
    /// `absent`, `present` or `version:N`.
    #[serde(default, rename = "if")]
    #[param(rename = "if", pattern = "^(absent|present|version:[0-9]+)$")]
    pub condition: Option<String>,
    /// With `ttl_ms`: how long after expiring the value is still handed to
    /// GetOrLease callers that accept stale values.
    #[serde(default)]
    pub stale_ms: u64,
}

/// Query of `GET /v1/cache`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Redis glob; empty: every key.
    #[serde(default)]
    pub pattern: String,
    /// Empty for the first page, then the previous `next_cursor`.
    #[serde(default)]
    pub cursor: String,
    /// Page size hint; 0: 100.
    #[serde(default)]
    pub limit: usize,
}

/// Query of `GET /v1/presence/{room}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    #[serde(default)]
    pub cursor: String,
    #[serde(default)]
    pub limit: usize,
}

/// Query of `POST /v1/pubsub/{channel}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PublishParams {
    /// Also append to the channel's stream, for replay.
    #[serde(default)]
    pub durable: bool,
}

/// Query of `GET /v1/pubsub/{channel}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscribeParams {
    /// Replay durable messages after this offset first (`0`: all
    /// retained). Without it, the `Last-Event-ID` header is used.
    pub from: Option<String>,
}

/// The OpenAPI 3.1 document of the HTTP API: its info, shared schemas and
/// tags. The paths are added as the routes are registered (`api::http`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outrigger",
        description = "Coordination sidecar: cache, locks, rate limits, presence and pub/sub. Errors are {\"error\": {\"code\", \"message\"}}.",
    ),
    components(schemas(MessageEvent)),
    tags(
        (name = "cache"), (name = "locks"), (name = "ratelimit"), (name = "presence"),
        (name = "pubsub"), (name = "operations"),
    )
)]
pub struct ApiDoc;
