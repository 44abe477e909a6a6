//! The HTTP API (axum): JSON, except cache values, which are raw bytes.
//!
//! [`router`] builds the routes apart from any listener, so tests drive it
//! with `tower::ServiceExt::oneshot`. Every failure, including unknown
//! routes and unparsable input, answers with the JSON error shape
//! `{"error": {"code", "message"}}`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::error_response;
use super::schema::*;
use super::{ceil_ms, unix_ms};
use crate::app::App;
use crate::backend::FeedItem;
use crate::error::Error;
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Caller, Classified, Operation as Op};
use crate::primitives::cache::store::Condition;
use crate::primitives::cache::{Invalidation, LeaseAsk, Leased, SetRequest};
use crate::primitives::pubsub::store::PubMessage;
use crate::primitives::ratelimit::InlineLimit;

/// Bound on JSON request bodies (cache values have their own limit).
const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Response header carrying a cache entry's version.
pub const VERSION_HEADER: &str = "outrigger-version";
/// Response header carrying a cache entry's remaining TTL in ms; absent when
/// the entry never expires.
pub const TTL_HEADER: &str = "outrigger-ttl-ms";

/// Every route of the HTTP API, each registered once with its OpenAPI
/// operation (the handler's `#[utoipa::path]`): the router and the
/// document come from this one list.
fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_keys))
        .routes(routes!(invalidate))
        .routes(routes!(get_entry, put_entry, delete_entry))
        .routes(routes!(get_or_lease))
        .routes(routes!(lock_acquire))
        .routes(routes!(lock_release))
        .routes(routes!(lock_extend))
        .routes(routes!(permit_acquire))
        .routes(routes!(permit_release))
        .routes(routes!(ratelimit_check))
        .routes(routes!(presence_join, presence_leave))
        .routes(routes!(presence_list))
        .routes(routes!(presence_events))
        .routes(routes!(member_rooms))
        .routes(routes!(publish, subscribe))
        .routes(routes!(status))
        .routes(routes!(reload_plugins))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// The OpenAPI document of [`router`], as `/openapi.json` serves it.
pub fn openapi_json() -> &'static str {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        routes()
            .into_openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    DOC.as_str()
}

/// Every route of the HTTP API.
pub fn router(app: Arc<App>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ))
        .with_state(app)
}

/// With authentication on, every route but the probes needs
/// `Authorization: Bearer <token>`.
async fn require_token(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if path == "/healthz" || path == "/readyz" || app.auth.allows(authorization) {
        return next.run(req).await;
    }
    let mut resp =
        Error::Unauthenticated("a valid `Authorization: Bearer <token>` header is required".into())
            .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The app, and who the application says is calling (`x-outrigger-caller`
/// and `x-outrigger-attr-*` headers, for plugins; nobody without plugins):
/// what every API handler starts from.
struct Ctx {
    app: Arc<App>,
    caller: Caller,
}

impl FromRequestParts<Arc<App>> for Ctx {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Infallible> {
        let caller = if app.plugins.is_empty() {
            Caller::default()
        } else {
            Caller::from_pairs(
                parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_bytes())),
            )
        };
        Ok(Ctx {
            app: app.clone(),
            caller,
        })
    }
}

/// `Query` whose rejection is our JSON 400.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| Error::InvalidArgument(e.body_text()))
    }
}

/// Only the probes and metrics, for the optional `ops.addr` listener.
pub fn ops_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "this listener serves /healthz, /readyz and /metrics only",
            )
        })
        .with_state(app)
}

/// A single path segment (a cache key, a lock or policy name),
/// percent-decoded, whose rejection is our JSON 400.
struct Key(String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Key(v))
            .map_err(|e: PathRejection| Error::InvalidArgument(e.body_text()))
    }
}

/// A JSON body, whatever its content type says, of at most
/// [`JSON_BODY_LIMIT`] bytes; rejections are our JSON 400 / 413.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Error> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge(format!(
                    "JSON bodies are limited to {JSON_BODY_LIMIT} bytes"
                )),
                _ => Error::InvalidArgument(e.body_text()),
            })?;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| Error::InvalidArgument(format!("invalid JSON body: {e}")))
    }
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
    Ctx { app, caller }: Ctx,
    Key(key): Key,
    ApiQuery(params): ApiQuery<GetParams>,
) -> Result<Response, Error> {
    let key = app.authorize(&caller, Call::new(P::Cache, Op::Read, key))?;
    let entry = app
        .cache
        .get(&key, params.refresh_ttl)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no cache entry for key {key:?}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(VERSION_HEADER, entry.version.into());
    if let Some(ttl) = entry.ttl {
        headers.insert(TTL_HEADER, (ttl.as_millis() as u64).into());
    }
    Ok((headers, entry.value).into_response())
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
    Ctx { app, caller }: Ctx,
    Key(key): Key,
    ApiJson(body): ApiJson<GetOrLeaseBody>,
) -> Result<Response, Error> {
    let key = app.authorize(&caller, Call::new(P::Cache, Op::Read, key))?;
    let leased = app
        .cache
        .get_or_lease(LeaseAsk {
            key,
            lease_ms: body.lease_ms,
            wait_ms: body.wait_ms,
            accept_stale: body.accept_stale,
        })
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
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(VERSION_HEADER, entry.version.into());
    if let Some(ttl) = entry.ttl {
        headers.insert(TTL_HEADER, (ttl.as_millis() as u64).into());
    }
    Ok((headers, entry.value).into_response())
}

fn parse_condition(text: Option<&str>) -> Result<Condition, Error> {
    Ok(match text {
        None => Condition::None,
        Some("absent") => Condition::IfAbsent,
        Some("present") => Condition::IfPresent,
        Some(other) => match other.strip_prefix("version:").map(str::parse) {
            Some(Ok(v)) => Condition::IfVersion(v),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "if={other:?}: expected absent, present or version:<N>"
                )));
            }
        },
    })
}

/// Reads a body of at most `limit` bytes.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, Error> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(Error::TooLarge(
            format!("value is over the limit of {limit} bytes (limits.max_value_bytes)"),
        )),
        Err(err) => Err(Error::InvalidArgument(format!(
            "could not read the body: {err}"
        ))),
    }
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
    Ctx { app, caller }: Ctx,
    Key(key): Key,
    ApiQuery(params): ApiQuery<PutParams>,
    body: Body,
) -> Result<Response, Error> {
    let condition = parse_condition(params.condition.as_deref())?;
    let tags = match params.tags.as_deref() {
        None | Some("") => vec![],
        Some(list) => list.split(',').map(str::to_string).collect(),
    };
    let value = read_limited(body, app.cache.limits().max_value_bytes).await?;
    let version = app
        .cache_set(
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
    delete, path = "/v1/cache/{key}", tag = "cache",
    params(("key" = String, Path, description = "The key")),
    responses((status = 200, description = "Deleted (or absent)", body = DeletedReply),
        CommonErrors)
)]
async fn delete_entry(Ctx { app, caller }: Ctx, Key(key): Key) -> Result<Response, Error> {
    let deleted = app.cache_delete(&caller, key).await?;
    Ok(Json(DeletedReply { deleted }).into_response())
}

#[utoipa::path(
    post, path = "/v1/cache/invalidate", tag = "cache",
    request_body = InvalidateBody,
    responses((status = 200, description = "Keys deleted", body = InvalidatedReply),
        CommonErrors)
)]
async fn invalidate(
    Ctx { app, caller }: Ctx,
    ApiJson(body): ApiJson<InvalidateBody>,
) -> Result<Response, Error> {
    let what = match (body.tags, body.pattern) {
        (Some(tags), None) => Invalidation::Tags(
            tags.into_iter()
                .map(|tag| app.authorize(&caller, Call::new(P::Cache, Op::InvalidateTag, tag)))
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(pattern)) => Invalidation::Pattern(
            app.authorize(&caller, Call::new(P::Cache, Op::InvalidatePattern, pattern))?,
        ),
        _ => {
            return Err(Error::InvalidArgument(
                r#"give exactly one of {"tags": [...]} or {"pattern": "..."}"#.into(),
            ));
        }
    };
    let deleted = app.cache.invalidate(what).await?;
    Ok(Json(InvalidatedReply { deleted }).into_response())
}

#[utoipa::path(
    get, path = "/v1/cache", tag = "cache",
    params(ListParams),
    responses((status = 200, description = "One page of keys", body = KeyPageReply),
        CommonErrors)
)]
async fn list_keys(
    Ctx { app, caller }: Ctx,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, Error> {
    let pattern = app.authorize(&caller, Call::new(P::Cache, Op::Scan, params.pattern))?;
    let page = app
        .cache
        .list_keys(&pattern, &params.cursor, params.limit)
        .await?;
    Ok(Json(KeyPageReply {
        keys: page.keys,
        next_cursor: page.next_cursor,
    })
    .into_response())
}

#[utoipa::path(
    post, path = "/v1/locks/{name}/acquire", tag = "locks",
    params(("name" = String, Path, description = "The lock")), request_body = AcquireBody,
    responses((status = 200, description = "Acquired", body = LeaseReply),
        (status = 409, description = "Not acquired, or the token does not hold it", body = ErrorBody),
        CommonErrors)
)]
async fn lock_acquire(
    Ctx { app, caller }: Ctx,
    Key(name): Key,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Response, Error> {
    let name = app.authorize(&caller, Call::new(P::Lock, Op::Acquire, name))?;
    match app.locks.acquire(&name, body.ttl_ms, body.wait_ms).await? {
        Some(lease) => Ok(Json(LeaseReply {
            token: lease.token,
            fence: lease.fence,
        })
        .into_response()),
        None => Err(Error::Conflict(format!(
            "lock {name:?} is held by someone else (waited {} ms)",
            body.wait_ms
        ))),
    }
}

fn not_held(what: &str, name: &str) -> Error {
    Error::Conflict(format!(
        "{what} {name:?} is not held with this token (it expired, or another holder has it)"
    ))
}

#[utoipa::path(
    post, path = "/v1/locks/{name}/release", tag = "locks",
    params(("name" = String, Path, description = "The lock")), request_body = TokenBody,
    responses((status = 200, description = "Released", body = ReleasedReply),
        (status = 409, description = "Not acquired, or the token does not hold it", body = ErrorBody),
        CommonErrors)
)]
async fn lock_release(
    Ctx { app, caller }: Ctx,
    Key(name): Key,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, Error> {
    let name = app.authorize(&caller, Call::new(P::Lock, Op::Release, name))?;
    if app.locks.release(&name, &body.token).await? {
        Ok(Json(ReleasedReply { released: true }).into_response())
    } else {
        Err(not_held("lock", &name))
    }
}

#[utoipa::path(
    post, path = "/v1/locks/{name}/extend", tag = "locks",
    params(("name" = String, Path, description = "The lock")), request_body = ExtendBody,
    responses((status = 200, description = "Extended", body = ExtendedReply),
        (status = 409, description = "Not acquired, or the token does not hold it", body = ErrorBody),
        CommonErrors)
)]
async fn lock_extend(
    Ctx { app, caller }: Ctx,
    Key(name): Key,
    ApiJson(body): ApiJson<ExtendBody>,
) -> Result<Response, Error> {
    let name = app.authorize(&caller, Call::new(P::Lock, Op::Extend, name))?;
    if app.locks.extend(&name, &body.token, body.ttl_ms).await? {
        Ok(Json(ExtendedReply { extended: true }).into_response())
    } else {
        Err(not_held("lock", &name))
    }
}

#[utoipa::path(
    post, path = "/v1/semaphores/{name}/acquire", tag = "locks",
    params(("name" = String, Path, description = "The semaphore")), request_body = PermitBody,
    responses((status = 200, description = "A permit", body = PermitReply),
        (status = 409, description = "Not acquired, or the token does not hold it", body = ErrorBody),
        CommonErrors)
)]
async fn permit_acquire(
    Ctx { app, caller }: Ctx,
    Key(name): Key,
    ApiJson(body): ApiJson<PermitBody>,
) -> Result<Response, Error> {
    let name = app.authorize(&caller, Call::new(P::Semaphore, Op::Acquire, name))?;
    let token = app
        .locks
        .acquire_permit(&name, body.limit, body.ttl_ms, body.wait_ms)
        .await?;
    match token {
        Some(token) => Ok(Json(PermitReply { token }).into_response()),
        None => Err(Error::Conflict(format!(
            "all {} permits of semaphore {name:?} are held (waited {} ms)",
            body.limit, body.wait_ms
        ))),
    }
}

#[utoipa::path(
    post, path = "/v1/semaphores/{name}/release", tag = "locks",
    params(("name" = String, Path, description = "The semaphore")), request_body = TokenBody,
    responses((status = 200, description = "Returned", body = ReleasedReply),
        (status = 409, description = "Not acquired, or the token does not hold it", body = ErrorBody),
        CommonErrors)
)]
async fn permit_release(
    Ctx { app, caller }: Ctx,
    Key(name): Key,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, Error> {
    let name = app.authorize(&caller, Call::new(P::Semaphore, Op::Release, name))?;
    if app.locks.release_permit(&name, &body.token).await? {
        Ok(Json(ReleasedReply { released: true }).into_response())
    } else {
        Err(not_held("permit of semaphore", &name))
    }
}

/// Whole seconds, rounded up: what `RateLimit-Reset` and `Retry-After`
/// carry.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[utoipa::path(
    post, path = "/v1/ratelimit/{policy}/check", tag = "ratelimit",
    params(("policy" = String, Path, description = "A configured policy, or the name of an inline limit's counters")), request_body = CheckBody,
    responses(
        (status = 200, description = "Allowed", body = DecisionReply,
            headers(("ratelimit-limit" = u32), ("ratelimit-remaining" = u32), ("ratelimit-reset" = u64, description = "Seconds until the limit is whole again"))),
        (status = 429, description = "Denied", body = DecisionReply,
            headers(("ratelimit-limit" = u32), ("ratelimit-remaining" = u32), ("ratelimit-reset" = u64), ("retry-after" = u64, description = "Seconds"))),
        (status = 404, description = "Not found", body = ErrorBody),
        CommonErrors)
)]
async fn ratelimit_check(
    Ctx { app, caller }: Ctx,
    Key(policy): Key,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Response, Error> {
    let inline = body.inline.map(|l| InlineLimit {
        algorithm: l.algorithm,
        limit: l.limit,
        period_ms: l.period_ms,
        burst: l.burst,
    });
    let check = Classified {
        policy,
        key: body.key,
        cost: body.cost,
    };
    let d = app.ratelimit_check(&caller, check, inline).await?;
    let mut headers = HeaderMap::new();
    headers.insert("ratelimit-limit", d.limit.into());
    headers.insert("ratelimit-remaining", d.remaining.into());
    headers.insert("ratelimit-reset", ceil_secs(d.reset_after).into());
    let mut body = DecisionReply {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_after_ms: ceil_ms(d.reset_after),
        retry_after_ms: d.retry_after.map_or(0, ceil_ms),
        error: None,
    };
    if let Some(retry) = d.retry_after {
        headers.insert(header::RETRY_AFTER, ceil_secs(retry).into());
        body.error = Some(ErrorDetail {
            code: "rate_limited".into(),
            message: format!("rate limited; retry after {} ms", ceil_ms(retry)),
        });
        return Ok((StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response());
    }
    Ok((headers, Json(body)).into_response())
}

/// Two path segments, percent-decoded.
struct Pair(String, String);

impl<S: Send + Sync> FromRequestParts<S> for Pair {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((a, b))| Pair(a, b))
            .map_err(|e: PathRejection| Error::InvalidArgument(e.body_text()))
    }
}

/// Metadata goes in as any JSON value and is stored as its JSON text.
fn metadata_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[utoipa::path(
    put, path = "/v1/presence/{room}/{member}", tag = "presence",
    params(("room" = String, Path, description = "The room"), ("member" = String, Path, description = "The member")), request_body = JoinBody,
    responses((status = 200, description = "Joined, or heartbeat", body = JoinedReply),
        CommonErrors)
)]
async fn presence_join(
    Ctx { app, caller }: Ctx,
    Pair(room, member): Pair,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<Response, Error> {
    let metadata = match body.metadata {
        None | Some(Value::Null) => Bytes::new(),
        Some(v) => Bytes::from(serde_json::to_vec(&v).expect("a Value serializes")),
    };
    let room = app.authorize(
        &caller,
        Call::new(P::Presence, Op::Join, room)
            .member(&member)
            .value_size(metadata.len()),
    )?;
    let joined = app
        .presence
        .join(&room, &member, metadata, body.ttl_ms)
        .await?;
    Ok(Json(JoinedReply { joined }).into_response())
}

#[utoipa::path(
    delete, path = "/v1/presence/{room}/{member}", tag = "presence",
    params(("room" = String, Path, description = "The room"), ("member" = String, Path, description = "The member")),
    responses((status = 200, description = "Left (or was not in the room)", body = LeftReply),
        CommonErrors)
)]
async fn presence_leave(
    Ctx { app, caller }: Ctx,
    Pair(room, member): Pair,
) -> Result<Response, Error> {
    let room = app.authorize(
        &caller,
        Call::new(P::Presence, Op::Leave, room).member(&member),
    )?;
    let left = app.presence.leave(&room, &member).await?;
    Ok(Json(LeftReply { left }).into_response())
}

#[utoipa::path(
    get, path = "/v1/presence/{room}", tag = "presence",
    params(("room" = String, Path, description = "The room"), PageParams),
    responses((status = 200, description = "One page of live members", body = MembersReply),
        CommonErrors)
)]
async fn presence_list(
    Ctx { app, caller }: Ctx,
    Key(room): Key,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Response, Error> {
    let room = app.authorize(&caller, Call::new(P::Presence, Op::Members, room))?;
    let page = app
        .presence
        .list(&room, &params.cursor, params.limit)
        .await?;
    let members = page
        .members
        .iter()
        .map(|m| MemberReply {
            member: m.member.clone(),
            metadata: metadata_json(&m.metadata),
            ttl_ms: ceil_ms(m.ttl),
        })
        .collect();
    Ok(Json(MembersReply {
        members,
        next_cursor: page.next_cursor,
    })
    .into_response())
}

#[utoipa::path(
    get, path = "/v1/members/{member}/rooms", tag = "presence",
    params(("member" = String, Path, description = "The member")),
    responses((status = 200, description = "Rooms the member is live in", body = RoomsReply),
        CommonErrors)
)]
async fn member_rooms(Ctx { app, caller }: Ctx, Key(member): Key) -> Result<Response, Error> {
    let member = app.authorize(&caller, Call::new(P::Presence, Op::Rooms, member))?;
    let rooms = app.presence.rooms(&member).await?;
    Ok(Json(RoomsReply { rooms }).into_response())
}

/// How often an idle event stream sends a comment, so proxies keep it open.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

#[utoipa::path(
    get, path = "/v1/presence/{room}/events", tag = "presence",
    params(("room" = String, Path, description = "The room")),
    responses((status = 200, description = "Server-Sent Events: join, leave, timeout (data: room, member, metadata) and lagged (data: missed)", content_type = "text/event-stream", body = String),
        CommonErrors)
)]
async fn presence_events(Ctx { app, caller }: Ctx, Key(room): Key) -> Result<Response, Error> {
    let room = app.authorize(&caller, Call::new(P::Presence, Op::Watch, room))?;
    let feed = app.presence.watch(&room).await?;
    let events = feed
        .map(|item| {
            Ok::<_, Infallible>(match item {
                FeedItem::Item(e) => SseEvent::default().event(e.kind.name()).data(
                    json!({ "room": e.room, "member": e.member, "metadata": metadata_json(&e.metadata) })
                        .to_string(),
                ),
                FeedItem::Lagged(missed) => SseEvent::default()
                    .event("lagged")
                    .data(json!({ "missed": missed }).to_string()),
            })
        })
        .take_until(app.draining());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

/// Request headers `Outrigger-Header-<Name>: value` become message headers.
const MESSAGE_HEADER_PREFIX: &str = "outrigger-header-";

#[utoipa::path(
    post, path = "/v1/pubsub/{channel}", tag = "pubsub",
    params(("channel" = String, Path, description = "The channel"), PublishParams),
    request_body(content = Option<String>, content_type = "application/octet-stream", description = "The payload, raw bytes. Outrigger-Header-<Name> request headers become message headers."),
    responses((status = 200, description = "Published", body = OffsetReply),
        CommonErrors)
)]
async fn publish(
    Ctx { app, caller }: Ctx,
    Key(channel): Key,
    ApiQuery(params): ApiQuery<PublishParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let mut message_headers = BTreeMap::new();
    for (name, value) in &headers {
        if let Some(name) = name.as_str().strip_prefix(MESSAGE_HEADER_PREFIX) {
            let value = value
                .to_str()
                .map_err(|_| Error::InvalidArgument(format!("header {name:?} is not text")))?;
            message_headers.insert(name.to_string(), value.to_string());
        }
    }
    let payload = read_limited(body, app.cache.limits().max_value_bytes).await?;
    let channel = app.authorize(
        &caller,
        Call::new(P::Pubsub, Op::Publish, channel).value_size(payload.len()),
    )?;
    let offset = app
        .pubsub
        .publish(&channel, payload, message_headers, params.durable)
        .await?;
    Ok(Json(OffsetReply {
        offset: offset.map(|o| o.to_string()),
    })
    .into_response())
}

/// A message as SSE data and WebSocket text: the payload as text when it is
/// UTF-8, as `payload_base64` otherwise.
fn message_json(m: &PubMessage) -> Value {
    use base64::Engine;
    let text = std::str::from_utf8(&m.payload).ok();
    let event = MessageEvent {
        kind: "message".into(),
        channel: m.channel.clone(),
        offset: m.offset.map(|o| o.to_string()),
        headers: m.headers.clone(),
        payload: text.map(str::to_string),
        payload_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&m.payload)),
    };
    serde_json::to_value(event).expect("a message serializes")
}

#[utoipa::path(
    get, path = "/v1/pubsub/{channel}", tag = "pubsub",
    params(("channel" = String, Path, description = "The channel"), SubscribeParams, ("last-event-id" = Option<String>, Header, description = "Resume after this offset (EventSource reconnection)")),
    responses((status = 200, description = "Server-Sent Events: message (id: the offset of durable messages; data: a MessageEvent), lagged (data: {type, missed}), error (data: {type, code, message}). A WebSocket upgrade on the same URL carries the same JSON as text frames.", content_type = "text/event-stream", body = String),
        CommonErrors)
)]
async fn subscribe(
    Ctx { app, caller }: Ctx,
    Key(channel): Key,
    ApiQuery(params): ApiQuery<SubscribeParams>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    // `from`, else the EventSource reconnection header.
    let from = params.from.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let from = match from.as_deref() {
        None | Some("") => None,
        Some(o) => Some(o.parse().map_err(|()| {
            Error::InvalidArgument(format!("from={o:?} is not an offset like 1700000000000-0"))
        })?),
    };
    // Subscribed before answering: once the client sees the response (or
    // the WebSocket handshake), everything published from then on arrives.
    let channel = app.authorize(&caller, Call::new(P::Pubsub, Op::Subscribe, channel))?;
    let subscription = app.pubsub.subscribe(vec![channel], vec![], from).await?;
    let subscription = subscription.take_until(app.draining());
    if let Ok(upgrade) = upgrade {
        return Ok(upgrade.on_upgrade(move |socket| websocket(socket, subscription)));
    }
    let events = subscription.map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(FeedItem::Item(m)) => {
                let event = SseEvent::default()
                    .event("message")
                    .data(message_json(&m).to_string());
                match m.offset {
                    Some(o) => event.id(o.to_string()),
                    None => event,
                }
            }
            Ok(FeedItem::Lagged(missed)) => SseEvent::default()
                .event("lagged")
                .data(json!({ "type": "lagged", "missed": missed }).to_string()),
            Err(err) => SseEvent::default().event("error").data(
                json!({ "type": "error", "code": err.code(), "message": err.to_string() })
                    .to_string(),
            ),
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

async fn websocket(
    mut socket: WebSocket,
    subscription: impl futures::Stream<Item = crate::error::Result<FeedItem<Arc<PubMessage>>>> + Send,
) {
    let mut subscription = std::pin::pin!(subscription);
    loop {
        tokio::select! {
            item = subscription.next() => {
                let text = match item {
                    None => break,
                    Some(Ok(FeedItem::Item(m))) => message_json(&m),
                    Some(Ok(FeedItem::Lagged(missed))) => json!({ "type": "lagged", "missed": missed }),
                    Some(Err(err)) => json!({ "type": "error", "code": err.code(), "message": err.to_string() }),
                };
                if socket.send(WsMessage::Text(text.to_string().into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(_)) => {} // clients have nothing to say on this socket
            },
        }
    }
    let _ = socket.send(WsMessage::Close(None)).await;
}

#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))
)]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

#[utoipa::path(
    get, path = "/v1/admin/status", tag = "operations",
    responses((status = 200, description = "What this sidecar is and how it is doing", body = StatusReply))
)]
async fn status(State(app): State<Arc<App>>) -> Json<StatusReply> {
    let s = app.status();
    Json(StatusReply {
        version: s.version.into(),
        namespace: s.namespace,
        backend: s.backend.into(),
        uptime_ms: s.uptime.as_millis() as u64,
        cache: CacheStatsReply {
            hits: s.cache.hits,
            misses: s.cache.misses,
            keys: s.cache.keys,
            bytes: s.cache.bytes,
            evictions: s.cache.evictions,
            near: s.cache.near.map(|n| NearCacheReply {
                live: n.live,
                entries: n.entries,
                bytes: n.bytes,
                hits: n.hits,
                fills: n.fills,
                raced: n.raced,
                invalidations: n.invalidations,
                flushes: n.flushes,
            }),
        },
        failover: s.failover.map(|f| {
            let r = f.reconciliation;
            FailoverReply {
                mode: f.mode.into(),
                since_unix_ms: unix_ms(f.since),
                transitions: f.transitions,
                last_error: f.last_error,
                last_reconciliation: r.at.map(|at| ReconciliationReply {
                    at_unix_ms: unix_ms(at),
                    cache_entries_dropped: r.cache_entries_dropped,
                    locks_released: r.locks_released,
                    members_reasserted: r.members_reasserted,
                    members_lost: r.members_lost,
                    messages_flushed: r.messages_flushed,
                    messages_dropped: r.messages_dropped,
                    flushing: r.flushing,
                }),
            }
        }),
        plugins: s.plugins.into_iter().map(plugin_reply).collect(),
    })
}

fn plugin_reply(p: crate::plugins::PluginStatus) -> PluginReply {
    PluginReply {
        name: p.name,
        path: p.path.display().to_string(),
        healthy: p.healthy,
        reason: p.reason,
        hooks: p.hooks.into_iter().map(str::to_string).collect(),
        fail: p.fail.as_str().into(),
        generation: p.generation,
        reload_error: p.reload_error,
    }
}

#[utoipa::path(
    post, path = "/v1/admin/plugins/reload", tag = "operations",
    responses(
        (status = 200, description = "Every plugin reloaded from its file", body = PluginsReply),
        (status = 422, description = "A plugin failed to load; its previous version stays (the others were reloaded)", body = ErrorBody))
)]
async fn reload_plugins(State(app): State<Arc<App>>) -> Result<Json<PluginsReply>, Error> {
    let plugins = app.plugins.reload(true).await?;
    Ok(Json(PluginsReply {
        plugins: plugins.into_iter().map(plugin_reply).collect(),
    }))
}

#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthReply))
)]
async fn healthz() -> Json<HealthReply> {
    Json(HealthReply {
        status: "ok".into(),
    })
}

#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = HealthReply), (status = 503, description = "Draining", body = ErrorBody))
)]
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.is_ready() {
        Json(HealthReply {
            status: "ready".into(),
        })
        .into_response()
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "shutting down: draining in-flight requests",
        )
    }
}

#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text", body = String))
)]
async fn metrics(State(app): State<Arc<App>>) -> Response {
    // Refreshes the gauges that mirror backend statistics.
    app.cache.stats();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Stores;
    use crate::config::Config;
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    fn app() -> Router {
        let config = Config::default();
        router(Arc::new(App::with_stores(&config, Stores::memory(&config))))
    }

    async fn call(router: &Router, method: Method, uri: &str, body: &'static [u8]) -> Response {
        router
            .clone()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap()
    }

    async fn json(resp: Response) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn put_then_get_carries_version_and_ttl_headers() {
        let r = app();
        let put = call(
            &r,
            Method::PUT,
            "/v1/cache/a%2Fb?ttl_ms=60000&tags=x,y",
            b"hello",
        )
        .await;
        assert_eq!(put.status(), StatusCode::OK);
        let version = json(put).await["version"].as_u64().unwrap();
        let got = call(&r, Method::GET, "/v1/cache/a%2Fb", b"").await;
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.headers()[VERSION_HEADER], version.to_string().as_str());
        let ttl: u64 = got.headers()[TTL_HEADER].to_str().unwrap().parse().unwrap();
        assert!(ttl > 59_000 && ttl <= 60_000, "{ttl}");
        let body = got.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }

    #[tokio::test]
    async fn errors_are_json_with_the_right_status() {
        let r = app();
        let cases: [(Method, &str, &[u8], StatusCode, &str); 8] = [
            (
                Method::GET,
                "/v1/cache/missing",
                b"",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                Method::PUT,
                "/v1/cache/k?ttl_ms=soon",
                b"v",
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                Method::PUT,
                "/v1/cache/k?if=maybe",
                b"v",
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                Method::PUT,
                "/v1/cache/k?tags=a,,b",
                b"v",
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                Method::POST,
                "/v1/cache/invalidate",
                b"{}",
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                Method::POST,
                "/v1/cache/invalidate",
                b"not json",
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                Method::GET,
                "/v2/nothing",
                b"",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                Method::PATCH,
                "/v1/cache/k",
                b"",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
        ];
        for (method, uri, body, status, code) in cases {
            let resp = call(&r, method.clone(), uri, body).await;
            assert_eq!(resp.status(), status, "{method} {uri}");
            let body = json(resp).await;
            assert_eq!(body["error"]["code"], code, "{method} {uri}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_value_is_413_and_nothing_is_stored() {
        let r = app();
        let big = vec![b'x'; Config::default().limits.max_value_bytes + 1];
        let resp = r
            .clone()
            .oneshot(Request::put("/v1/cache/big").body(Body::from(big)).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json(resp).await["error"]["code"], "too_large");
        assert_eq!(
            call(&r, Method::GET, "/v1/cache/big", b"").await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn conditions_map_to_412() {
        let r = app();
        assert_eq!(
            call(&r, Method::PUT, "/v1/cache/c?if=present", b"v")
                .await
                .status(),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            call(&r, Method::PUT, "/v1/cache/c?if=absent", b"v")
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            call(&r, Method::PUT, "/v1/cache/c?if=absent", b"v")
                .await
                .status(),
            StatusCode::PRECONDITION_FAILED
        );
        let resp = call(&r, Method::PUT, "/v1/cache/c?if=version:999999", b"v").await;
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(json(resp).await["error"]["code"], "precondition_failed");
    }

    #[tokio::test]
    async fn status_metrics_and_probes() {
        let r = app();
        call(&r, Method::PUT, "/v1/cache/k", b"v").await;
        call(&r, Method::GET, "/v1/cache/k", b"").await;
        call(&r, Method::GET, "/v1/cache/nope", b"").await;
        let status = json(call(&r, Method::GET, "/v1/admin/status", b"").await).await;
        assert_eq!(status["backend"], "memory");
        assert_eq!(status["namespace"], "default");
        assert_eq!(status["cache"]["hits"], 1);
        assert_eq!(status["cache"]["misses"], 1);
        assert_eq!(status["cache"]["keys"], 1);
        let metrics = call(&r, Method::GET, "/metrics", b"").await;
        let text = String::from_utf8(
            metrics
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(
            text.contains(r#"outrigger_requests_total{primitive="cache",op="get",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains("outrigger_cache_hits_total 1"), "{text}");
        assert!(text.contains("outrigger_cache_keys 1"), "{text}");
        assert_eq!(
            call(&r, Method::GET, "/healthz", b"").await.status(),
            StatusCode::OK
        );
        assert_eq!(
            call(&r, Method::GET, "/readyz", b"").await.status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn the_ops_router_serves_probes_and_metrics_only() {
        let config = Config::default();
        let r = ops_router(Arc::new(App::with_stores(&config, Stores::memory(&config))));
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                call(&r, Method::GET, path, b"").await.status(),
                StatusCode::OK,
                "{path}"
            );
        }
        let api = call(&r, Method::GET, "/v1/cache/k", b"").await;
        assert_eq!(
            api.status(),
            StatusCode::NOT_FOUND,
            "no API on the ops listener"
        );
    }

    #[tokio::test]
    async fn the_openapi_document_covers_every_route() {
        let r = app();
        let resp = call(&r, Method::GET, "/openapi.json", b"").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let doc = json(resp).await;
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                operations += 1;
                // Every documented operation is routed (the fallback answers
                // "no such route" otherwise).
                let uri = path
                    .replace("{key}", "k")
                    .replace("{name}", "n")
                    .replace("{policy}", "p")
                    .replace("{room}", "r")
                    .replace("{member}", "m")
                    .replace("{channel}", "c");
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let resp = r
                    .clone()
                    .oneshot(
                        Request::builder()
                            .method(method.clone())
                            .uri(&uri)
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                if resp.status() == StatusCode::NOT_FOUND
                    || resp.status() == StatusCode::METHOD_NOT_ALLOWED
                {
                    let body = json(resp).await;
                    assert!(
                        !matches!(
                            body["error"]["message"].as_str(),
                            Some("no such route" | "method not allowed on this route")
                        ),
                        "{method} {path} is documented but not routed"
                    );
                }
            }
        }
        // Every route of `router` is documented: 24 method + path pairs.
        assert_eq!(operations, 25, "documented operations");
        for schema in ["ErrorBody", "DecisionReply", "StatusReply", "MessageEvent"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }

    #[tokio::test]
    async fn readyz_turns_away_traffic_while_draining() {
        let config = Config::default();
        let app = Arc::new(App::with_stores(&config, Stores::memory(&config)));
        let r = router(app.clone());
        assert_eq!(
            call(&r, Method::GET, "/readyz", b"").await.status(),
            StatusCode::OK
        );
        app.start_draining();
        let resp = call(&r, Method::GET, "/readyz", b"").await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(resp).await["error"]["code"], "draining");
        assert_eq!(
            call(&r, Method::GET, "/healthz", b"").await.status(),
            StatusCode::OK,
            "still alive"
        );
    }
}
