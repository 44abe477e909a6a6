//! The HTTP routes of ratelimit: wire types in, primitive calls, wire types out.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::FromRef;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::Decision;
use super::{InlineLimit, RateLimits};
use crate::error::Error;
use crate::kit::ceil_ms;
use crate::kit::http::{ApiJson, CommonErrors, Ctx, ErrorBody, ErrorDetail, Key};
use crate::plugins::Classified;

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<RateLimits>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(ratelimit_check))
        .routes(routes!(ratelimit_peek))
        .routes(routes!(ratelimit_reset))
        .routes(routes!(ratelimit_check_all))
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
    Ctx {
        primitive: ratelimits,
        caller,
    }: Ctx<RateLimits>,
    Key(policy): Key,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Response, Error> {
    let (check, inline) = body.terms(policy);
    let d = ratelimits.check_for(&caller, check, inline).await?;
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

#[utoipa::path(
    post, path = "/v1/ratelimit/check-all", tag = "ratelimit",
    request_body = CheckAllBody,
    responses(
        (status = 200, description = "Every check fitted, and every cost was taken", body = CheckAllReply),
        (status = 429, description = "Not every check fitted: nothing was taken; `decisions` says which did not (`allowed` false)", body = CheckAllReply,
            headers(("retry-after" = u64, description = "Seconds, until the longest wait of those that did not fit"))),
        (status = 404, description = "Not found", body = ErrorBody),
        CommonErrors)
)]
async fn ratelimit_check_all(
    Ctx {
        primitive: ratelimits,
        caller,
    }: Ctx<RateLimits>,
    ApiJson(body): ApiJson<CheckAllBody>,
) -> Result<Response, Error> {
    let checks = body
        .checks
        .into_iter()
        .map(|c| {
            let check = CheckBody {
                key: c.key,
                cost: c.cost,
                inline: c.inline,
            };
            check.terms(c.policy)
        })
        .collect();
    let decisions = ratelimits.check_all_for(&caller, checks).await?;
    let allowed = decisions.iter().all(|d| d.allowed);
    let retry = decisions.iter().filter_map(|d| d.retry_after).max();
    let mut reply = CheckAllReply {
        allowed,
        decisions: decisions.into_iter().map(decision_reply).collect(),
        error: None,
    };
    match retry.filter(|_| !allowed) {
        Some(retry) => {
            reply.error = Some(ErrorDetail {
                code: "rate_limited".into(),
                message: format!(
                    "rate limited: not every check fits (nothing was taken); retry after {} ms",
                    ceil_ms(retry)
                ),
            });
            let headers = [(header::RETRY_AFTER, ceil_secs(retry))];
            Ok((StatusCode::TOO_MANY_REQUESTS, headers, Json(reply)).into_response())
        }
        None => Ok(Json(reply).into_response()),
    }
}

fn decision_reply(d: Decision) -> DecisionReply {
    DecisionReply {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_after_ms: ceil_ms(d.reset_after),
        retry_after_ms: d.retry_after.map_or(0, ceil_ms),
        error: None,
    }
}

#[utoipa::path(
    post, path = "/v1/ratelimit/{policy}/peek", tag = "ratelimit",
    params(("policy" = String, Path, description = "A configured policy, or the name of an inline limit's counters")), request_body = CheckBody,
    responses(
        (status = 200, description = "What a check would decide now; nothing is taken (`allowed` says whether the cost would fit)", body = DecisionReply),
        (status = 404, description = "Not found", body = ErrorBody),
        CommonErrors)
)]
async fn ratelimit_peek(
    Ctx {
        primitive: ratelimits,
        caller,
    }: Ctx<RateLimits>,
    Key(policy): Key,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<DecisionReply>, Error> {
    let (check, inline) = body.terms(policy);
    let d = ratelimits.peek_for(&caller, check, inline).await?;
    Ok(Json(decision_reply(d)))
}

#[utoipa::path(
    post, path = "/v1/ratelimit/{policy}/reset", tag = "ratelimit",
    params(("policy" = String, Path, description = "The policy (or inline limit name) whose state to forget")), request_body = ResetBody,
    responses(
        (status = 200, description = "The key's whole limit is available again", body = ResetLimitReply),
        CommonErrors)
)]
async fn ratelimit_reset(
    Ctx {
        primitive: ratelimits,
        caller,
    }: Ctx<RateLimits>,
    Key(policy): Key,
    ApiJson(body): ApiJson<ResetBody>,
) -> Result<Json<ResetLimitReply>, Error> {
    let existed = ratelimits.reset_for(&caller, &policy, body.key).await?;
    Ok(Json(ResetLimitReply { existed }))
}

/// Body of `POST /v1/ratelimit/check-all`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckAllBody {
    /// At least one, at most `limits.max_batch`; no (policy, key) twice.
    pub checks: Vec<CheckAllItem>,
}

/// One check of a multi-check: a check's body, with its policy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckAllItem {
    /// A configured policy, or the name of an inline limit's counters.
    #[schema(min_length = 1)]
    pub policy: String,
    /// Whose limit.
    #[schema(min_length = 1)]
    pub key: String,
    /// Units this check takes; 0 (default) means 1.
    #[serde(default)]
    pub cost: u32,
    /// A limit given here instead of configured.
    #[serde(default)]
    pub inline: Option<InlineBody>,
}

/// A multi-check's result (200 when every check fitted, 429 otherwise).
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckAllReply {
    /// Whether every check fitted, and so was taken.
    pub allowed: bool,
    /// One per check, in order.
    pub decisions: Vec<DecisionReply>,
    /// Present when not every check fitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// Body of a reset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// Whose state to forget.
    #[schema(min_length = 1)]
    pub key: String,
}

/// A reset's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetLimitReply {
    /// Whether the key had any state.
    pub existed: bool,
}

impl CheckBody {
    /// The check's terms, under `policy`.
    fn terms(self, policy: String) -> (Classified, Option<InlineLimit>) {
        let inline = self.inline.map(|l| InlineLimit {
            algorithm: l.algorithm,
            limit: l.limit,
            period_ms: l.period_ms,
            burst: l.burst,
        });
        let check = Classified {
            policy,
            key: self.key,
            cost: self.cost,
        };
        (check, inline)
    }
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
