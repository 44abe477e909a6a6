//! The HTTP routes of cache: wire types in, primitive calls, wire types out.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::FromRef;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::Entry;
use super::{Cache, Invalidation, LeaseAsk, Leased, SetRequest};
use crate::error::Error;
use crate::kit::Primitive;
use crate::kit::http::{
    ApiJson, ApiQuery, CommonErrors, Ctx, ErrorBody, Key, ListParams, TTL_HEADER, VERSION_HEADER,
    parse_condition, read_limited,
};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Cache>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_keys))
        .routes(routes!(invalidate))
        .routes(routes!(get_entry, put_entry, delete_entry))
        .routes(routes!(get_or_lease))
        .routes(routes!(describe_entry))
}

#[utoipa::path(
    get, path = "/v1/cache/{key}", tag = "cache",
    params(("key" = String, Path, description = "The key; percent-encode reserved characters"), GetParams),
    responses(
        (status = 200, description = "The value, as raw bytes", content_type = "application/octet-stream", body = String,
            headers(("outrigger-version" = u64, description = "The entry's version"),
                    ("outrigger-ttl-ms" = u64, description = "Remaining TTL in ms; absent when the entry never expires"))),
        (status = 404, description = "Not found", body = ErrorBody),
        CommonErrors)
)]
async fn get_entry(
    Ctx {
        primitive: cache,
        caller,
    }: Ctx<Cache>,
    Key(key): Key,
    ApiQuery(params): ApiQuery<GetParams>,
) -> Result<Response, Error> {
    let (key, entry) = cache.get_for(&caller, key, params.refresh_ttl).await?;
    let entry = entry.ok_or_else(|| Error::NotFound(format!("no cache entry for key {key:?}")))?;
    Ok(entry_response(HeaderMap::new(), entry))
}

/// The header telling what a GetOrLease answered: `hit`, `stale` or
/// `granted`.
pub const LEASE_HEADER: &str = "outrigger-lease";

#[utoipa::path(
    post, path = "/v1/cache/{key}/lease", tag = "cache",
    params(("key" = String, Path, description = "The key")),
    request_body = GetOrLeaseBody,
    responses(
        (status = 200, description = "The value (`outrigger-lease: hit`), the expired value while another caller fills the key (`stale`), or the expired value with the lease (`granted`)", content_type = "application/octet-stream", body = String,
            headers(("outrigger-lease" = String, description = "hit, stale or granted"),
                    ("outrigger-version" = u64, description = "The value's version"),
                    ("outrigger-ttl-ms" = u64, description = "Remaining TTL in ms (hits only)"))),
        (status = 204, description = "The key is missing and this caller holds the lease: compute the value and PUT it (`outrigger-lease: granted`)",
            headers(("outrigger-lease" = String, description = "granted"))),
        (status = 409, description = "Another caller holds the lease and did not fill the key within wait_ms", body = ErrorBody),
        CommonErrors)
)]
async fn get_or_lease(
    Ctx {
        primitive: cache,
        caller,
    }: Ctx<Cache>,
    Key(key): Key,
    ApiJson(body): ApiJson<GetOrLeaseBody>,
) -> Result<Response, Error> {
    let leased = cache
        .get_or_lease_for(
            &caller,
            LeaseAsk {
                key,
                lease_ms: body.lease_ms,
                wait_ms: body.wait_ms,
                accept_stale: body.accept_stale,
            },
        )
        .await?;
    let (outcome, entry) = match leased {
        Leased::Hit(entry) => ("hit", Some(entry)),
        Leased::Stale(entry) => ("stale", Some(entry)),
        Leased::Granted(stale) => ("granted", stale),
    };
    let mut headers = HeaderMap::new();
    headers.insert(LEASE_HEADER, HeaderValue::from_static(outcome));
    let Some(entry) = entry else {
        return Ok((StatusCode::NO_CONTENT, headers).into_response());
    };
    Ok(entry_response(headers, entry))
}

/// An entry as raw bytes, with its version and TTL headers added to
/// `headers`.
fn entry_response(mut headers: HeaderMap, entry: Entry) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(VERSION_HEADER, entry.version.into());
    if let Some(ttl) = entry.ttl {
        headers.insert(TTL_HEADER, (ttl.as_millis() as u64).into());
    }
    (headers, entry.value).into_response()
}

#[utoipa::path(
    put, path = "/v1/cache/{key}", tag = "cache",
    params(("key" = String, Path, description = "The key"), PutParams),
    request_body(content = Option<String>, content_type = "application/octet-stream", description = "The value, raw bytes (at most limits.max_value_bytes)"),
    responses(
        (status = 200, description = "Written", body = VersionReply, headers(("outrigger-version" = u64))),
        (status = 412, description = "The condition did not hold", body = ErrorBody),
        CommonErrors)
)]
async fn put_entry(
    Ctx {
        primitive: cache,
        caller,
    }: Ctx<Cache>,
    Key(key): Key,
    ApiQuery(params): ApiQuery<PutParams>,
    body: Body,
) -> Result<Response, Error> {
    let condition = parse_condition(params.condition.as_deref())?;
    let tags = match params.tags.as_deref() {
        None | Some("") => vec![],
        Some(list) => list.split(',').map(str::to_string).collect(),
    };
    let value = read_limited(body, cache.limits().max_value_bytes).await?;
    let version = cache
        .set_for(
            &caller,
            SetRequest {
                key,
                value,
                ttl_ms: params.ttl_ms,
                tags,
                condition,
                stale_ms: params.stale_ms,
            },
        )
        .await?;
    Ok(([(VERSION_HEADER, version)], Json(VersionReply { version })).into_response())
}

#[utoipa::path(
    get, path = "/v1/cache/{key}/meta", tag = "cache",
    params(("key" = String, Path, description = "The key")),
    responses((status = 200, description = "All but the value: for operators", body = MetaReply),
        (status = 404, description = "No such key", body = ErrorBody),
        CommonErrors)
)]
async fn describe_entry(
    Ctx {
        primitive: cache,
        caller,
    }: Ctx<Cache>,
    Key(key): Key,
) -> Result<Response, Error> {
    let key = cache.authorize(&caller, Call::new(P::Cache, Op::Read, key))?;
    match cache.describe(&key).await? {
        Some(d) => Ok(Json(MetaReply {
            version: d.version,
            ttl_ms: d.ttl.map(|t| t.as_millis() as u64),
            tags: d.tags,
            size: d.size,
        })
        .into_response()),
        None => Err(Error::NotFound(format!("no cache entry for key {key:?}"))),
    }
}

/// An entry's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetaReply {
    pub version: u64,
    /// Remaining time to live; absent when the entry never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    pub tags: Vec<String>,
    /// The value's bytes.
    pub size: u64,
}

#[utoipa::path(
    delete, path = "/v1/cache/{key}", tag = "cache",
    params(("key" = String, Path, description = "The key")),
    responses((status = 200, description = "Deleted (or absent)", body = DeletedReply),
        CommonErrors)
)]
async fn delete_entry(
    Ctx {
        primitive: cache,
        caller,
    }: Ctx<Cache>,
    Key(key): Key,
) -> Result<Response, Error> {
    let deleted = cache.delete_for(&caller, key).await?;
    Ok(Json(DeletedReply { deleted }).into_response())
}

#[utoipa::path(
    post, path = "/v1/cache/invalidate", tag = "cache",
    request_body = InvalidateBody,
    responses((status = 200, description = "Keys deleted", body = InvalidatedReply),
        CommonErrors)
)]
async fn invalidate(
    Ctx {
        primitive: cache,
        caller,
    }: Ctx<Cache>,
    ApiJson(body): ApiJson<InvalidateBody>,
) -> Result<Response, Error> {
    let what = match (body.tags, body.pattern) {
        (Some(tags), None) => Invalidation::Tags(
            tags.into_iter()
                .map(|tag| cache.authorize(&caller, Call::new(P::Cache, Op::InvalidateTag, tag)))
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(pattern)) => Invalidation::Pattern(
            cache.authorize(&caller, Call::new(P::Cache, Op::InvalidatePattern, pattern))?,
        ),
        _ => {
            return Err(Error::InvalidArgument(
                r#"give exactly one of {"tags": [...]} or {"pattern": "..."}"#.into(),
            ));
        }
    };
    let deleted = cache.invalidate(what).await?;
    Ok(Json(InvalidatedReply { deleted }).into_response())
}

#[utoipa::path(
    get, path = "/v1/cache", tag = "cache",
    params(ListParams),
    responses((status = 200, description = "One page of keys", body = KeyPageReply),
        CommonErrors)
)]
async fn list_keys(
    Ctx {
        primitive: cache,
        caller,
    }: Ctx<Cache>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, Error> {
    let pattern = cache.authorize(&caller, Call::new(P::Cache, Op::Scan, params.pattern))?;
    let page = cache
        .list_keys(&pattern, &params.cursor, params.limit)
        .await?;
    Ok(Json(KeyPageReply {
        keys: page.keys,
        next_cursor: page.next_cursor,
    })
    .into_response())
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
