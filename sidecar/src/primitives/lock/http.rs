//! The HTTP routes of lock: wire types in, primitive calls, wire types out.

use std::sync::Arc;

use axum::Json;
use axum::extract::FromRef;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Locks;
use super::store::{InUse, Kind};
use crate::error::Error;
use crate::kit::Primitive;
use crate::kit::http::{ApiJson, ApiQuery, CommonErrors, Ctx, ErrorBody, Key, ListParams};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Locks>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(lock_acquire))
        .routes(routes!(lock_release))
        .routes(routes!(lock_extend))
        .routes(routes!(permit_acquire))
        .routes(routes!(permit_release))
        .routes(routes!(locks_in_use))
        .routes(routes!(lock_in_use))
        .routes(routes!(semaphores_in_use))
        .routes(routes!(semaphore_in_use))
}

/// `GET /v1/locks` and `/v1/semaphores`: a page of those in use.
async fn list(
    locks: &Locks,
    caller: &crate::plugins::Caller,
    kind: Kind,
    params: ListParams,
) -> Result<Response, Error> {
    let primitive = match kind {
        Kind::Lock => P::Lock,
        Kind::Semaphore => P::Semaphore,
    };
    let pattern = locks.authorize(caller, Call::new(primitive, Op::Scan, params.pattern))?;
    let page = locks
        .list_in_use(kind, &pattern, &params.cursor, params.limit)
        .await?;
    Ok(Json(InUsePageReply {
        items: page.items.into_iter().map(InUseReply::from).collect(),
        next_cursor: page.next_cursor,
    })
    .into_response())
}

/// `GET /v1/locks/{name}` and `/v1/semaphores/{name}`: who holds it.
async fn show(
    locks: &Locks,
    caller: &crate::plugins::Caller,
    kind: Kind,
    name: String,
) -> Result<Response, Error> {
    let (primitive, what) = match kind {
        Kind::Lock => (P::Lock, "lock"),
        Kind::Semaphore => (P::Semaphore, "semaphore"),
    };
    let name = locks.authorize(caller, Call::new(primitive, Op::Read, name))?;
    match locks.in_use(kind, &name).await? {
        Some(in_use) => Ok(Json(InUseReply::from(in_use)).into_response()),
        None => Err(Error::NotFound(format!("{what} {name:?} is free"))),
    }
}

#[utoipa::path(
    get, path = "/v1/locks", tag = "locks",
    params(ListParams),
    responses((status = 200, description = "A page of the locks held (never their tokens)",
        body = InUsePageReply), CommonErrors)
)]
async fn locks_in_use(
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, Error> {
    list(&locks, &caller, Kind::Lock, params).await
}

#[utoipa::path(
    get, path = "/v1/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "The lock")),
    responses((status = 200, description = "Held: its fence and time left (never its token)",
        body = InUseReply),
        (status = 404, description = "Free", body = ErrorBody),
        CommonErrors)
)]
async fn lock_in_use(
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    Key(name): Key,
) -> Result<Response, Error> {
    show(&locks, &caller, Kind::Lock, name).await
}

#[utoipa::path(
    get, path = "/v1/semaphores", tag = "locks",
    params(ListParams),
    responses((status = 200, description = "A page of the semaphores with permits held",
        body = InUsePageReply), CommonErrors)
)]
async fn semaphores_in_use(
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, Error> {
    list(&locks, &caller, Kind::Semaphore, params).await
}

#[utoipa::path(
    get, path = "/v1/semaphores/{name}", tag = "locks",
    params(("name" = String, Path, description = "The semaphore")),
    responses((status = 200, description = "Permits held, and when the first lease ends",
        body = InUseReply),
        (status = 404, description = "No permit held", body = ErrorBody),
        CommonErrors)
)]
async fn semaphore_in_use(
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    Key(name): Key,
) -> Result<Response, Error> {
    show(&locks, &caller, Kind::Semaphore, name).await
}

#[utoipa::path(
    post, path = "/v1/locks/{name}/acquire", tag = "locks",
    params(("name" = String, Path, description = "The lock")), request_body = AcquireBody,
    responses((status = 200, description = "Acquired", body = LeaseReply),
        (status = 409, description = "Not acquired, or the token does not hold it", body = ErrorBody),
        CommonErrors)
)]
async fn lock_acquire(
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    Key(name): Key,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Response, Error> {
    let name = locks.authorize(&caller, Call::new(P::Lock, Op::Acquire, name))?;
    match locks.acquire(&name, body.ttl_ms, body.wait_ms).await? {
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
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    Key(name): Key,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, Error> {
    let name = locks.authorize(&caller, Call::new(P::Lock, Op::Release, name))?;
    if locks.release(&name, &body.token).await? {
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
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    Key(name): Key,
    ApiJson(body): ApiJson<ExtendBody>,
) -> Result<Response, Error> {
    let name = locks.authorize(&caller, Call::new(P::Lock, Op::Extend, name))?;
    if locks.extend(&name, &body.token, body.ttl_ms).await? {
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
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    Key(name): Key,
    ApiJson(body): ApiJson<PermitBody>,
) -> Result<Response, Error> {
    let name = locks.authorize(&caller, Call::new(P::Semaphore, Op::Acquire, name))?;
    let token = locks
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
    Ctx {
        primitive: locks,
        caller,
    }: Ctx<Locks>,
    Key(name): Key,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, Error> {
    let name = locks.authorize(&caller, Call::new(P::Semaphore, Op::Release, name))?;
    if locks.release_permit(&name, &body.token).await? {
        Ok(Json(ReleasedReply { released: true }).into_response())
    } else {
        Err(not_held("permit of semaphore", &name))
    }
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

/// A lock or semaphore in use. Its token is never shown: it would let the
/// viewer release it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InUseReply {
    pub name: String,
    /// A lock's holder's fence; 0 for a semaphore.
    pub fence: u64,
    /// Permits held (1 for a lock).
    pub held: u32,
    /// Time left on the lease (for a semaphore, the lease that ends first).
    pub ttl_ms: u64,
}

impl From<InUse> for InUseReply {
    fn from(u: InUse) -> Self {
        InUseReply {
            name: u.name,
            fence: u.fence,
            held: u.held,
            ttl_ms: u.ttl.as_millis() as u64,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InUsePageReply {
    pub items: Vec<InUseReply>,
    /// Pass as `cursor` for the next page; null when the listing is done.
    pub next_cursor: Option<String>,
}
