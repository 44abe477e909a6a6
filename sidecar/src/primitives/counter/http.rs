//! The HTTP routes of counters: wire types in, primitive calls, wire types
//! out.

use std::sync::Arc;

use axum::Json;
use axum::extract::FromRef;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::CounterValue;
use super::{Counters, IncrementRequest};
use crate::error::Error;
use crate::kit::http::{ApiJson, CommonErrors, Ctx, ErrorBody, Key};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Counters>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(counter_increment))
        .routes(routes!(counter_get, counter_reset))
}

#[utoipa::path(
    post, path = "/v1/counters/{name}/incr", tag = "counters",
    params(("name" = String, Path, description = "The counter")), request_body = IncrementBody,
    responses(
        (status = 200, description = "Incremented: the counter after it", body = CounterReply),
        (status = 412, description = "Refused: the result would cross a bound (or ±(2^53 - 1)); the counter is unchanged", body = ErrorBody),
        CommonErrors)
)]
async fn counter_increment(
    Ctx {
        primitive: counters,
        caller,
    }: Ctx<Counters>,
    Key(name): Key,
    ApiJson(body): ApiJson<IncrementBody>,
) -> Result<Json<CounterReply>, Error> {
    let req = IncrementRequest {
        by: body.by,
        ttl_ms: body.ttl_ms,
        min: body.min,
        max: body.max,
    };
    Ok(Json(
        counters.increment_for(&caller, name, req).await?.into(),
    ))
}

#[utoipa::path(
    get, path = "/v1/counters/{name}", tag = "counters",
    params(("name" = String, Path, description = "The counter")),
    responses((status = 200, description = "The counter (0, `exists: false`, if it does not exist)", body = CounterReply),
        CommonErrors)
)]
async fn counter_get(
    Ctx {
        primitive: counters,
        caller,
    }: Ctx<Counters>,
    Key(name): Key,
) -> Result<Json<CounterReply>, Error> {
    Ok(Json(counters.get_for(&caller, name).await?.into()))
}

#[utoipa::path(
    delete, path = "/v1/counters/{name}", tag = "counters",
    params(("name" = String, Path, description = "The counter")),
    responses((status = 200, description = "Reset: the counter reads 0 again", body = ResetReply),
        CommonErrors)
)]
async fn counter_reset(
    Ctx {
        primitive: counters,
        caller,
    }: Ctx<Counters>,
    Key(name): Key,
) -> Result<Json<ResetReply>, Error> {
    let existed = counters.reset_for(&caller, name).await?;
    Ok(Json(ResetReply { existed }))
}

/// Body of `POST /v1/counters/{name}/incr`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncrementBody {
    /// Added to the counter; may be negative, not 0.
    #[schema(minimum = -9_007_199_254_740_991_i64, maximum = 9_007_199_254_740_991_i64)]
    pub by: i64,
    /// With an increment that creates the counter: its lifetime in ms (a
    /// fixed window). 0 or absent: it never expires.
    #[serde(default)]
    pub ttl_ms: u64,
    /// Refuse the increment if the result would be below this.
    #[serde(default)]
    #[schema(minimum = -9_007_199_254_740_991_i64, maximum = 9_007_199_254_740_991_i64)]
    pub min: Option<i64>,
    /// Refuse the increment if the result would be above this.
    #[serde(default)]
    #[schema(minimum = -9_007_199_254_740_991_i64, maximum = 9_007_199_254_740_991_i64)]
    pub max: Option<i64>,
}

/// A counter.
#[derive(Debug, Serialize, ToSchema)]
pub struct CounterReply {
    /// 0 when the counter does not exist. Within ±(2^53 - 1).
    pub value: i64,
    pub exists: bool,
    /// Remaining lifetime in ms; absent when it never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl From<CounterValue> for CounterReply {
    fn from(c: CounterValue) -> Self {
        CounterReply {
            value: c.value,
            exists: c.exists,
            ttl_ms: c.ttl.map(|t| t.as_millis() as u64),
        }
    }
}

/// A reset's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetReply {
    /// Whether the counter existed.
    pub existed: bool,
}
