//! The HTTP API (axum): JSON, except cache values, which are raw bytes.
//!
//! [`router`] builds the routes apart from any listener, so tests drive it
//! with `tower::ServiceExt::oneshot`. Every failure, including unknown
//! routes and unparsable input, answers with the JSON error shape
//! `{"error": {"code", "message"}}`.
//!
//! Each primitive's routes live in its folder (`primitives/<name>/http.rs`);
//! this module merges them with the operations routes and serves them.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::*;
use crate::app::App;
use crate::error::Error;
use crate::kit::error::error_response;
use crate::kit::http::{ErrorBody, JSON_BODY_LIMIT};
use crate::kit::unix_ms;
use crate::primitives;

/// Every route of the HTTP API, each registered once with its OpenAPI
/// operation (the handler's `#[utoipa::path]`): the router and the
/// document come from this one list.
fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(primitives::cache::http::routes())
        .merge(primitives::lock::http::routes())
        .merge(primitives::ratelimit::http::routes())
        .merge(primitives::presence::http::routes())
        .merge(primitives::pubsub::http::routes())
        .merge(primitives::counter::http::routes())
        .merge(primitives::map::http::routes())
        .merge(primitives::queue::http::routes())
        .routes(routes!(status))
        .routes(routes!(reload_plugins))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// The routes' state: the app, and each primitive through it (handlers
/// extract what they serve: `State<Arc<App>>`, or a primitive's `Ctx`).
#[derive(Clone)]
struct Api(Arc<App>);

impl FromRef<Api> for Arc<App> {
    fn from_ref(api: &Api) -> Self {
        api.0.clone()
    }
}

macro_rules! primitive_state {
    ($($field:ident: $primitive:ty),* $(,)?) => {$(
        impl FromRef<Api> for Arc<$primitive> {
            fn from_ref(api: &Api) -> Self {
                api.0.$field.clone()
            }
        }
    )*};
}

primitive_state! {
    cache: primitives::cache::Cache,
    locks: primitives::lock::Locks,
    ratelimits: primitives::ratelimit::RateLimits,
    presence: primitives::presence::Presence,
    pubsub: primitives::pubsub::PubSub,
    counters: primitives::counter::Counters,
    maps: primitives::map::Maps,
    queues: primitives::queue::Queues,
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
        .layer(axum::middleware::from_fn_with_state(app.clone(), front))
        .with_state(Api(app))
}

/// What every request passes through, in one middleware (each `from_fn`
/// layer costs a boxed future and a clone of the service behind it per
/// request): [`refuse_without_token`], then [`close_if_unread`] and
/// [`hold_streams`] on the way out.
async fn front(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let place = req.extensions().get::<crate::serve::Place>().cloned();
    let http1 = req.version() <= axum::http::Version::HTTP_11;
    let (req, read) = track_reading(req);
    let resp = match refuse_without_token(&app, &req) {
        None => next.run(req).await,
        Some(refusal) => refusal,
    };
    hold_streams(close_if_unread(resp, read), place, http1)
}

/// A response that streams (server-sent events) holds one of the
/// listener's stream permits for as long as its body lives, and a
/// WebSocket upgrade for as long as its connection lives; on HTTP/1 either
/// frees its connection's place for ordinary requests meanwhile
/// ([`crate::serve::Place`]). With every stream permit taken, it is
/// answered 503 instead.
fn hold_streams(resp: Response, place: Option<crate::serve::Place>, http1: bool) -> Response {
    const TOO_MANY: &str =
        "too many streams: this listener serves limits.max_streams at once; retry later";
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(place) = &place
        && !place.upgraded()
    {
        return Error::Exhausted(TOO_MANY.into()).into_response();
    }
    let streams = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    let Some(place) = place.filter(|_| streams) else {
        return resp;
    };
    match place.begin_stream(http1) {
        Some(held) => resp.map(|body| {
            axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                let _held = &held;
                frame
            }))
        }),
        None => Error::Exhausted(TOO_MANY.into()).into_response(),
    }
}

/// An answer given before the request's body was read to its end (a 404,
/// a 401, a 413, a call a plugin refused...) closes an HTTP/1 connection,
/// and says so: hyper would close it anyway, racing a client that, told
/// nothing, already reuses it for its next request.
fn close_if_unread(
    mut resp: Response,
    read: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Response {
    if let Some(read) = read
        && !read.load(std::sync::atomic::Ordering::Acquire)
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// For [`close_if_unread`]: an HTTP/1 request with a body gets one that
/// notes when it has been read to its end.
fn track_reading(
    req: axum::extract::Request,
) -> (
    axum::extract::Request,
    Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    use axum::body::HttpBody;
    if req.version() > axum::http::Version::HTTP_11 || req.body().is_end_stream() {
        return (req, None);
    }
    let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|body| {
        axum::body::Body::new(ReadToEnd {
            body,
            read: read.clone(),
        })
    });
    (req, Some(read))
}

/// A request body that notes when it has been read to its end.
struct ReadToEnd {
    body: axum::body::Body,
    read: Arc<std::sync::atomic::AtomicBool>,
}

impl axum::body::HttpBody for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        let ended = matches!(polled, std::task::Poll::Ready(None)) || self.body.is_end_stream();
        if ended {
            self.read.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// With authentication on, every route but the probes needs
/// `Authorization: Bearer <token>`.
fn refuse_without_token(app: &App, req: &axum::extract::Request) -> Option<Response> {
    let path = req.uri().path();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if path == "/healthz" || path == "/readyz" || app.auth.allows(authorization) {
        return None;
    }
    let mut resp =
        Error::Unauthenticated("a valid `Authorization: Bearer <token>` header is required".into())
            .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
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
                    map_changes_replayed: r.map_changes_replayed,
                }),
                evicts: f
                    .maxmemory_policy
                    .as_deref()
                    .is_some_and(crate::backend::redis::evicts),
                maxmemory_policy: f.maxmemory_policy,
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
        world: p.world.map(str::to_string),
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
    use crate::kit::http::{TTL_HEADER, VERSION_HEADER};
    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
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

    /// Every JSON body is an object: serde's struct-from-array reading
    /// (`[1]` for `{"by": 1}`) is refused, as the schema says.
    #[tokio::test]
    async fn json_bodies_must_be_objects() {
        let r = app();
        for (path, array, object) in [
            ("/v1/maps/m/f/incr", &b" [1]"[..], &br#"{"by": 1}"#[..]),
            ("/v1/counters/c/incr", b"[1]", br#"{"by": 1}"#),
            ("/v1/locks/l/acquire", b"[1000, 0]", br#"{"ttl_ms": 1000}"#),
        ] {
            let refused = call(&r, Method::POST, path, array).await;
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{path}");
            let body = json(refused).await;
            assert_eq!(
                body["error"]["message"], "invalid JSON body: expected an object",
                "{path}: {body}"
            );
            assert_eq!(
                call(&r, Method::POST, path, object).await.status(),
                StatusCode::OK,
                "{path}"
            );
        }
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
                    .replace("{channel}", "c")
                    .replace("{map}", "m")
                    .replace("{field}", "f");
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
        // Every route of `router` is documented: 60 method + path pairs.
        assert_eq!(operations, 60, "documented operations");
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
