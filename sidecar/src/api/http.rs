//! The HTTP API (axum): JSON, except cache values, which are raw bytes.
//!
//! [`router`] builds the routes apart from any listener, so tests drive it
//! with `tower::ServiceExt::oneshot`. Every failure, including unknown
//! routes and unparsable input, answers with the JSON error shape
//! `{"error": {"code", "message"}}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ceil_ms;
use super::error::error_response;
use crate::app::App;
use crate::backend::Condition;
use crate::cache::{Invalidation, SetRequest};
use crate::error::Error;
use crate::ratelimit::InlineLimit;

/// Bound on JSON request bodies (cache values have their own limit).
const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Response header carrying a cache entry's version.
pub const VERSION_HEADER: &str = "outrigger-version";
/// Response header carrying a cache entry's remaining TTL in ms; absent when
/// the entry never expires.
pub const TTL_HEADER: &str = "outrigger-ttl-ms";

/// Every route of the HTTP API.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/cache", get(list_keys))
        .route("/v1/cache/invalidate", post(invalidate))
        .route(
            "/v1/cache/{key}",
            get(get_entry).put(put_entry).delete(delete_entry),
        )
        .route("/v1/locks/{name}/acquire", post(lock_acquire))
        .route("/v1/locks/{name}/release", post(lock_release))
        .route("/v1/locks/{name}/extend", post(lock_extend))
        .route("/v1/semaphores/{name}/acquire", post(permit_acquire))
        .route("/v1/semaphores/{name}/release", post(permit_release))
        .route("/v1/ratelimit/{policy}/check", post(ratelimit_check))
        .route("/v1/admin/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(app)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    refresh_ttl: bool,
}

async fn get_entry(
    State(app): State<Arc<App>>,
    Key(key): Key,
    ApiQuery(params): ApiQuery<GetParams>,
) -> Result<Response, Error> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutParams {
    #[serde(default)]
    ttl_ms: u64,
    /// Comma-separated.
    #[serde(default)]
    tags: Option<String>,
    /// `absent`, `present` or `version:N`.
    #[serde(default, rename = "if")]
    condition: Option<String>,
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

#[derive(Serialize)]
struct Version {
    version: u64,
}

async fn put_entry(
    State(app): State<Arc<App>>,
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
        .cache
        .set(SetRequest {
            key,
            value,
            ttl_ms: params.ttl_ms,
            tags,
            condition,
        })
        .await?;
    Ok(([(VERSION_HEADER, version)], Json(Version { version })).into_response())
}

async fn delete_entry(State(app): State<Arc<App>>, Key(key): Key) -> Result<Response, Error> {
    let deleted = app.cache.delete(&key).await?;
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateBody {
    tags: Option<Vec<String>>,
    pattern: Option<String>,
}

async fn invalidate(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<InvalidateBody>,
) -> Result<Response, Error> {
    let what = match (body.tags, body.pattern) {
        (Some(tags), None) => Invalidation::Tags(tags),
        (None, Some(pattern)) => Invalidation::Pattern(pattern),
        _ => {
            return Err(Error::InvalidArgument(
                r#"give exactly one of {"tags": [...]} or {"pattern": "..."}"#.into(),
            ));
        }
    };
    let deleted = app.cache.invalidate(what).await?;
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    pattern: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    limit: usize,
}

async fn list_keys(
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, Error> {
    let page = app
        .cache
        .list_keys(&params.pattern, &params.cursor, params.limit)
        .await?;
    Ok(Json(json!({ "keys": page.keys, "next_cursor": page.next_cursor })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn lock_acquire(
    State(app): State<Arc<App>>,
    Key(name): Key,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Response, Error> {
    match app.locks.acquire(&name, body.ttl_ms, body.wait_ms).await? {
        Some(lease) => {
            Ok(Json(json!({ "token": lease.token, "fence": lease.fence })).into_response())
        }
        None => Err(Error::Conflict(format!(
            "lock {name:?} is held by someone else (waited {} ms)",
            body.wait_ms
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

fn not_held(what: &str, name: &str) -> Error {
    Error::Conflict(format!(
        "{what} {name:?} is not held with this token (it expired, or another holder has it)"
    ))
}

async fn lock_release(
    State(app): State<Arc<App>>,
    Key(name): Key,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, Error> {
    if app.locks.release(&name, &body.token).await? {
        Ok(Json(json!({ "released": true })).into_response())
    } else {
        Err(not_held("lock", &name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    token: String,
    ttl_ms: u64,
}

async fn lock_extend(
    State(app): State<Arc<App>>,
    Key(name): Key,
    ApiJson(body): ApiJson<ExtendBody>,
) -> Result<Response, Error> {
    if app.locks.extend(&name, &body.token, body.ttl_ms).await? {
        Ok(Json(json!({ "extended": true })).into_response())
    } else {
        Err(not_held("lock", &name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermitBody {
    limit: u32,
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn permit_acquire(
    State(app): State<Arc<App>>,
    Key(name): Key,
    ApiJson(body): ApiJson<PermitBody>,
) -> Result<Response, Error> {
    let token = app
        .locks
        .acquire_permit(&name, body.limit, body.ttl_ms, body.wait_ms)
        .await?;
    match token {
        Some(token) => Ok(Json(json!({ "token": token })).into_response()),
        None => Err(Error::Conflict(format!(
            "all {} permits of semaphore {name:?} are held (waited {} ms)",
            body.limit, body.wait_ms
        ))),
    }
}

async fn permit_release(
    State(app): State<Arc<App>>,
    Key(name): Key,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, Error> {
    if app.locks.release_permit(&name, &body.token).await? {
        Ok(Json(json!({ "released": true })).into_response())
    } else {
        Err(not_held("permit of semaphore", &name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    key: String,
    #[serde(default)]
    cost: u32,
    #[serde(default)]
    inline: Option<InlineBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineBody {
    algorithm: String,
    limit: u32,
    period_ms: u64,
    #[serde(default)]
    burst: u32,
}

/// Whole seconds, rounded up: what `RateLimit-Reset` and `Retry-After`
/// carry.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

async fn ratelimit_check(
    State(app): State<Arc<App>>,
    Key(policy): Key,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Response, Error> {
    let inline = body.inline.map(|l| InlineLimit {
        algorithm: l.algorithm,
        limit: l.limit,
        period_ms: l.period_ms,
        burst: l.burst,
    });
    let d = app
        .ratelimits
        .check(&policy, inline, &body.key, body.cost)
        .await?;
    let mut headers = HeaderMap::new();
    headers.insert("ratelimit-limit", d.limit.into());
    headers.insert("ratelimit-remaining", d.remaining.into());
    headers.insert("ratelimit-reset", ceil_secs(d.reset_after).into());
    let mut body = json!({
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_after_ms": ceil_ms(d.reset_after),
        "retry_after_ms": d.retry_after.map_or(0, ceil_ms),
    });
    if let Some(retry) = d.retry_after {
        headers.insert(header::RETRY_AFTER, ceil_secs(retry).into());
        body["error"] = json!({
            "code": "rate_limited",
            "message": format!("rate limited; retry after {} ms", ceil_ms(retry)),
        });
        return Ok((StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response());
    }
    Ok((headers, Json(body)).into_response())
}

async fn status(State(app): State<Arc<App>>) -> Response {
    let s = app.status();
    Json(json!({
        "version": s.version,
        "namespace": s.namespace,
        "backend": s.backend,
        "uptime_ms": s.uptime.as_millis() as u64,
        "cache": {
            "hits": s.cache.hits,
            "misses": s.cache.misses,
            "keys": s.cache.keys,
            "bytes": s.cache.bytes,
            "evictions": s.cache.evictions,
        },
    }))
    .into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "shutting down: draining in-flight requests",
        )
    }
}

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
}
