//! The HTTP routes of work queues: wire types in, primitive calls, wire
//! types out.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::FromRef;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schedule::Missed;
use super::store::{Claimed, DeadJob, Enqueued, QueueStats, Receipt, Settled};
use super::{ClaimRequest, EnqueueRequest, Queues, ScheduleRequest, ScheduleView, SettleRequest};
use crate::error::Error;
use crate::kit::http::{
    ApiJson, ApiQuery, CommonErrors, Ctx, ErrorBody, Key, Pair, payload_json, read_limited,
};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Queues>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(queue_list))
        .routes(routes!(queue_stats))
        .routes(routes!(queue_enqueue))
        .routes(routes!(queue_claim))
        .routes(routes!(queue_ack))
        .routes(routes!(queue_nack))
        .routes(routes!(queue_extend))
        .routes(routes!(queue_dead, queue_purge))
        .routes(routes!(queue_redrive))
        .routes(routes!(schedule_put, schedule_get, schedule_delete))
        .routes(routes!(schedule_list))
}

#[utoipa::path(
    post, path = "/v1/queues/{queue}/jobs", tag = "queues",
    params(("queue" = String, Path, description = "The queue"), EnqueueParams),
    request_body(content = Option<String>, content_type = "application/octet-stream", description = "The job's payload, raw bytes"),
    responses(
        (status = 200, description = "Enqueued, or a duplicate of a job enqueued with the same dedup id within the window (`duplicate`: nothing enqueued)", body = EnqueueReply),
        (status = 202, description = "Redis is down and `failover.queues = \"local\"`: buffered in this sidecar, enqueued when Redis returns (no id yet)", body = EnqueueReply),
        CommonErrors)
)]
async fn queue_enqueue(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(queue): Key,
    ApiQuery(params): ApiQuery<EnqueueParams>,
    body: Body,
) -> Result<(StatusCode, Json<EnqueueReply>), Error> {
    let payload = read_limited(body, queues.limits.max_value_bytes).await?;
    let req = EnqueueRequest {
        payload,
        delay_ms: params.delay_ms,
        due_at_ms: params.due_at_ms,
        dedup_id: params.dedup_id,
        max_attempts: params.max_attempts,
        backoff_ms: params.backoff_ms,
        backoff_max_ms: params.backoff_max_ms,
    };
    let reply = match queues.enqueue_for(&caller, queue, req).await? {
        Enqueued::New(id) => (StatusCode::OK, EnqueueReply::new(Some(id), false, false)),
        Enqueued::Duplicate(id) => (StatusCode::OK, EnqueueReply::new(Some(id), true, false)),
        Enqueued::Buffered => (StatusCode::ACCEPTED, EnqueueReply::new(None, false, true)),
    };
    Ok((reply.0, Json(reply.1)))
}

#[utoipa::path(
    post, path = "/v1/queues/{queue}/claim", tag = "queues",
    params(("queue" = String, Path, description = "The queue")), request_body = ClaimBody,
    responses((status = 200, description = "The jobs claimed, longest due first; none if none was due within `wait_ms`", body = ClaimReply),
        (status = 404, description = "An `ack` names a job the queue does not hold (then nothing is acked or claimed)", body = ErrorBody),
        (status = 409, description = "An `ack` receipt is not its job's current claim's (then nothing is acked or claimed)", body = ErrorBody),
        CommonErrors)
)]
async fn queue_claim(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(queue): Key,
    ApiJson(body): ApiJson<ClaimBody>,
) -> Result<Json<ClaimReply>, Error> {
    let req = ClaimRequest {
        ack: body.ack.into_iter().map(Receipt::from).collect(),
        max: body.max,
        visibility_ms: body.visibility_ms,
        wait_ms: body.wait_ms,
    };
    let jobs = queues.claim_for(&caller, queue, req).await?;
    Ok(Json(ClaimReply {
        jobs: jobs.into_iter().map(ClaimedJob::from).collect(),
    }))
}

#[utoipa::path(
    post, path = "/v1/queues/{queue}/jobs/{id}/ack", tag = "queues",
    params(("queue" = String, Path, description = "The queue"), ("id" = String, Path, description = "The job")),
    request_body = AckBody,
    responses(
        (status = 200, description = "Done: the job is removed", body = SettleReply),
        (status = 404, description = "The queue holds no such job (acked, purged, or never enqueued)", body = ErrorBody),
        (status = 409, description = "The receipt is not the job's current claim's (an earlier attempt's, or the claim ran out)", body = ErrorBody),
        CommonErrors)
)]
async fn queue_ack(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Pair(queue, id): Pair,
    ApiJson(body): ApiJson<AckBody>,
) -> Result<Json<SettleReply>, Error> {
    let settled = queues
        .settle_for(&caller, queue, &id, &body.receipt, SettleRequest::Ack)
        .await?;
    Ok(Json(settled.into()))
}

#[utoipa::path(
    post, path = "/v1/queues/{queue}/jobs/{id}/nack", tag = "queues",
    params(("queue" = String, Path, description = "The queue"), ("id" = String, Path, description = "The job")),
    request_body = NackBody,
    responses(
        (status = 200, description = "Failed: due again after its backoff (or `delay_ms`), or dead with its attempts spent", body = SettleReply),
        (status = 404, description = "The queue holds no such job", body = ErrorBody),
        (status = 409, description = "The receipt is not the job's current claim's", body = ErrorBody),
        CommonErrors)
)]
async fn queue_nack(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Pair(queue, id): Pair,
    ApiJson(body): ApiJson<NackBody>,
) -> Result<Json<SettleReply>, Error> {
    let req = SettleRequest::Nack {
        delay_ms: body.delay_ms,
        error: body.error,
    };
    let settled = queues
        .settle_for(&caller, queue, &id, &body.receipt, req)
        .await?;
    Ok(Json(settled.into()))
}

#[utoipa::path(
    post, path = "/v1/queues/{queue}/jobs/{id}/extend", tag = "queues",
    params(("queue" = String, Path, description = "The queue"), ("id" = String, Path, description = "The job")),
    request_body = ExtendClaimBody,
    responses(
        (status = 200, description = "Still working: the claim now runs out `visibility_ms` from now", body = SettleReply),
        (status = 404, description = "The queue holds no such job", body = ErrorBody),
        (status = 409, description = "The receipt is not the job's current claim's", body = ErrorBody),
        CommonErrors)
)]
async fn queue_extend(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Pair(queue, id): Pair,
    ApiJson(body): ApiJson<ExtendClaimBody>,
) -> Result<Json<SettleReply>, Error> {
    let req = SettleRequest::Extend {
        visibility_ms: body.visibility_ms,
    };
    let settled = queues
        .settle_for(&caller, queue, &id, &body.receipt, req)
        .await?;
    Ok(Json(settled.into()))
}

#[utoipa::path(
    get, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "The queue")),
    responses((status = 200, description = "The queue's counts (all 0 for a queue that holds nothing)", body = StatsReply),
        CommonErrors)
)]
async fn queue_stats(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(queue): Key,
) -> Result<Json<StatsReply>, Error> {
    Ok(Json(queues.stats_for(&caller, queue).await?.into()))
}

#[utoipa::path(
    get, path = "/v1/queues", tag = "queues",
    params(ListParams),
    responses((status = 200, description = "Queues holding jobs, sorted by name", body = QueueListReply),
        CommonErrors)
)]
async fn queue_list(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<QueueListReply>, Error> {
    let page = queues
        .list_for(
            &caller,
            params.pattern.unwrap_or_else(|| "*".into()),
            params.after.as_deref(),
            params.limit,
        )
        .await?;
    Ok(Json(QueueListReply {
        queues: page.queues,
        next_after: page.next,
    }))
}

#[utoipa::path(
    get, path = "/v1/queues/{queue}/dead", tag = "queues",
    params(("queue" = String, Path, description = "The queue"), DeadParams),
    responses((status = 200, description = "Dead jobs in id (enqueue) order", body = DeadReply),
        CommonErrors)
)]
async fn queue_dead(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(queue): Key,
    ApiQuery(params): ApiQuery<DeadParams>,
) -> Result<Json<DeadReply>, Error> {
    let limit = params.limit;
    let jobs = queues
        .dead_for(&caller, queue, params.after.as_deref(), limit)
        .await?;
    let full = jobs.len() == limit.unwrap_or(super::DEFAULT_PAGE);
    Ok(Json(DeadReply {
        next_after: full.then(|| jobs.last().map(|j| j.id.clone())).flatten(),
        jobs: jobs.into_iter().map(DeadJobReply::from).collect(),
    }))
}

#[utoipa::path(
    delete, path = "/v1/queues/{queue}/dead", tag = "queues",
    params(("queue" = String, Path, description = "The queue")),
    responses((status = 200, description = "Every dead job deleted", body = CountReply),
        CommonErrors)
)]
async fn queue_purge(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(queue): Key,
) -> Result<Json<CountReply>, Error> {
    let n = queues.purge_dead_for(&caller, queue).await?;
    Ok(Json(CountReply { count: n }))
}

#[utoipa::path(
    post, path = "/v1/queues/{queue}/dead/redrive", tag = "queues",
    params(("queue" = String, Path, description = "The queue")), request_body = RedriveBody,
    responses((status = 200, description = "Dead jobs moved back to ready, due now, with fresh attempts", body = CountReply),
        CommonErrors)
)]
async fn queue_redrive(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(queue): Key,
    ApiJson(body): ApiJson<RedriveBody>,
) -> Result<Json<CountReply>, Error> {
    let n = queues.redrive_for(&caller, queue, body.limit).await?;
    Ok(Json(CountReply { count: n }))
}

#[utoipa::path(
    put, path = "/v1/schedules/{name}", tag = "queues",
    params(("name" = String, Path, description = "The schedule")), request_body = ScheduleBody,
    responses((status = 200, description = "Put: its ticks count from now (a replaced schedule forgets the old one's)", body = ScheduleReply),
        CommonErrors)
)]
async fn schedule_put(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(name): Key,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<Json<ScheduleReply>, Error> {
    let payload = match (body.payload, body.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidArgument(
                "give payload or payload_base64, not both".into(),
            ));
        }
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| Error::InvalidArgument(format!("payload_base64: {e}")))?;
            Bytes::from(bytes)
        }
        (None, None) => Bytes::new(),
    };
    let req = ScheduleRequest {
        queue: body.queue,
        payload,
        every_ms: body.every_ms,
        cron: body.cron,
        missed: body.missed.unwrap_or_default(),
        max_attempts: body.max_attempts,
    };
    Ok(Json(
        queues.put_schedule_for(&caller, name, req).await?.into(),
    ))
}

#[utoipa::path(
    get, path = "/v1/schedules/{name}", tag = "queues",
    params(("name" = String, Path, description = "The schedule")),
    responses((status = 200, description = "The schedule", body = ScheduleReply),
        (status = 404, description = "No such schedule", body = ErrorBody),
        CommonErrors)
)]
async fn schedule_get(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(name): Key,
) -> Result<Json<ScheduleReply>, Error> {
    Ok(Json(queues.get_schedule_for(&caller, name).await?.into()))
}

#[utoipa::path(
    delete, path = "/v1/schedules/{name}", tag = "queues",
    params(("name" = String, Path, description = "The schedule")),
    responses((status = 200, description = "Deleted (the jobs it enqueued stay)", body = ScheduleDeletedReply),
        CommonErrors)
)]
async fn schedule_delete(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    Key(name): Key,
) -> Result<Json<ScheduleDeletedReply>, Error> {
    let existed = queues.delete_schedule_for(&caller, name).await?;
    Ok(Json(ScheduleDeletedReply { existed }))
}

#[utoipa::path(
    get, path = "/v1/schedules", tag = "queues",
    params(DeadParams),
    responses((status = 200, description = "Schedules, sorted by name", body = ScheduleListReply),
        CommonErrors)
)]
async fn schedule_list(
    Ctx {
        primitive: queues,
        caller,
    }: Ctx<Queues>,
    ApiQuery(params): ApiQuery<DeadParams>,
) -> Result<Json<ScheduleListReply>, Error> {
    let limit = params.limit;
    let listed = queues
        .list_schedules_for(&caller, params.after.as_deref(), limit)
        .await?;
    let full = listed.len() == limit.unwrap_or(super::DEFAULT_PAGE);
    Ok(Json(ScheduleListReply {
        next_after: full
            .then(|| listed.last().map(|s| s.name.clone()))
            .flatten(),
        schedules: listed.into_iter().map(ScheduleReply::from).collect(),
    }))
}

/// Body of `PUT /v1/schedules/{name}`. JSON bodies are limited to 64 KiB,
/// which bounds a schedule's payload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// The queue each tick enqueues into.
    pub queue: String,
    /// Ticks every this many ms (at least 1000) from when it is put...
    pub every_ms: Option<u64>,
    /// ...or at the times this cron expression names, in UTC: 5 fields
    /// (minute to day of week), or 6 or 7 (seconds first, years last).
    pub cron: Option<String>,
    /// Each job's payload as text...
    pub payload: Option<String>,
    /// ...or as base64 (empty when neither is given).
    pub payload_base64: Option<String>,
    /// Ticks more than 30 s late (every sidecar, or Redis, was down):
    /// `enqueue_once` (the default: one job for all of them) or `skip`.
    #[schema(value_type = Option<String>)]
    pub missed: Option<Missed>,
    /// Each job's `max_attempts` (`[queues] max_attempts`).
    pub max_attempts: Option<u32>,
}

/// A schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleReply {
    pub name: String,
    pub queue: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The payload when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// `enqueue_once` or `skip`.
    pub missed: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Unix ms: when it was put; intervals count from here.
    pub anchor_ms: u64,
    /// Unix ms: the last tick enqueued (or skipped); `anchor_ms` before the
    /// first.
    pub last_tick_ms: u64,
    /// Unix ms: the next tick.
    pub next_tick_ms: Option<u64>,
}

impl From<ScheduleView> for ScheduleReply {
    fn from(v: ScheduleView) -> Self {
        let s = v.stored.schedule;
        let (payload, payload_base64) = payload_json(&s.payload);
        ScheduleReply {
            name: v.name,
            queue: s.queue,
            every_ms: s.every_ms,
            cron: s.cron,
            payload,
            payload_base64,
            missed: match s.missed {
                Missed::EnqueueOnce => "enqueue_once",
                Missed::Skip => "skip",
            },
            max_attempts: s.max_attempts,
            anchor_ms: s.anchor_ms,
            last_tick_ms: v.stored.last_tick_ms,
            next_tick_ms: v.next_tick_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleListReply {
    pub schedules: Vec<ScheduleReply>,
    /// Pass as `after` for the next page; null on the last one.
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleDeletedReply {
    /// Whether it existed.
    pub existed: bool,
}

/// Query of `POST /v1/queues/{queue}/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EnqueueParams {
    /// Claimable this many ms from now (0 or absent: at once), at most
    /// `limits.max_ttl`.
    pub delay_ms: Option<u64>,
    /// Claimable from this Unix time in ms (in the past: at once, ahead of
    /// jobs due later). Exclusive with `delay_ms`.
    pub due_at_ms: Option<u64>,
    /// A second enqueue with this id within `[queues] dedup_window` of the
    /// first returns the first job's id and enqueues nothing.
    pub dedup_id: Option<String>,
    /// Claims before the job is dead, 1..=1000 (`[queues] max_attempts`).
    pub max_attempts: Option<u32>,
    /// The wait after the first failed attempt, doubled per attempt
    /// (`[queues] backoff`).
    pub backoff_ms: Option<u64>,
    /// The most a backoff waits (`[queues] backoff_max`).
    pub backoff_max_ms: Option<u64>,
}

/// An enqueue's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueueReply {
    /// The job's id (16 hex digits, in enqueue order); null when buffered.
    pub id: Option<String>,
    /// The dedup id was seen within its window: `id` is the first job's,
    /// and nothing was enqueued.
    pub duplicate: bool,
    /// Redis is down: kept in this sidecar, enqueued when Redis returns.
    pub buffered: bool,
}

impl EnqueueReply {
    fn new(id: Option<String>, duplicate: bool, buffered: bool) -> Self {
        EnqueueReply {
            id,
            duplicate,
            buffered,
        }
    }
}

/// Body of `POST /v1/queues/{queue}/claim`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// Most jobs to claim (0 or absent: 1), at most `limits.max_batch`.
    #[serde(default)]
    pub max: u32,
    /// How long the jobs stay invisible to other claims
    /// (`[queues] visibility`).
    pub visibility_ms: Option<u64>,
    /// How long to wait for a job when none is due (0: answer at once), at
    /// most `limits.max_wait`.
    #[serde(default)]
    pub wait_ms: u64,
    /// Claims to ack first, in the same step (a worker's finished jobs,
    /// saving an ack request each), at most `limits.max_batch`: all or
    /// none. A stale receipt is 409, a job the queue does not hold 404, and
    /// then nothing is acked or claimed.
    #[serde(default)]
    pub ack: Vec<JobReceipt>,
}

/// A claim, by its job's id and receipt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobReceipt {
    pub id: String,
    pub receipt: String,
}

impl From<JobReceipt> for Receipt {
    fn from(r: JobReceipt) -> Self {
        Receipt {
            id: r.id,
            receipt: r.receipt,
        }
    }
}

/// A claimed job.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimedJob {
    pub id: String,
    /// Settles this claim (ack, nack, extend), and no other.
    pub receipt: String,
    /// 1 on the first claim.
    pub attempt: u32,
    pub max_attempts: u32,
    /// The dedup id it was enqueued with (a schedule's jobs have
    /// `schedule:<name>:<tick ms>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_id: Option<String>,
    /// The payload when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Unix ms.
    pub enqueued_at_ms: u64,
    /// Unix ms: when the claim runs out unless extended.
    pub visible_at_ms: u64,
}

impl From<Claimed> for ClaimedJob {
    fn from(c: Claimed) -> Self {
        let (payload, payload_base64) = payload_json(&c.payload);
        ClaimedJob {
            id: c.id,
            receipt: c.receipt,
            attempt: c.attempt,
            max_attempts: c.max_attempts,
            dedup_id: c.dedup_id,
            payload,
            payload_base64,
            enqueued_at_ms: c.enqueued_at,
            visible_at_ms: c.visible_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimReply {
    pub jobs: Vec<ClaimedJob>,
}

/// Body of `POST /v1/queues/{queue}/jobs/{id}/ack`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    pub receipt: String,
}

/// Body of `POST /v1/queues/{queue}/jobs/{id}/nack`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    pub receipt: String,
    /// Due again this many ms from now, instead of after its backoff.
    pub delay_ms: Option<u64>,
    /// Why it failed; a dead job keeps its last.
    pub error: Option<String>,
}

/// Body of `POST /v1/queues/{queue}/jobs/{id}/extend`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendClaimBody {
    pub receipt: String,
    /// The claim runs out this many ms from now (`[queues] visibility`).
    pub visibility_ms: Option<u64>,
}

/// What settling did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettleReply {
    /// `acked`, `retrying`, `dead` or `extended`.
    pub outcome: &'static str,
    /// `retrying`: when the job is due again (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at_ms: Option<u64>,
    /// `extended`: when the claim now runs out (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_at_ms: Option<u64>,
}

impl From<Settled> for SettleReply {
    fn from(s: Settled) -> Self {
        let (outcome, due_at_ms, visible_at_ms) = match s {
            Settled::Acked => ("acked", None, None),
            Settled::Retrying { due } => ("retrying", Some(due), None),
            Settled::Dead => ("dead", None, None),
            Settled::Extended { visible_at } => ("extended", None, Some(visible_at)),
            // The primitive turns these into errors.
            Settled::StaleReceipt => ("stale_receipt", None, None),
            Settled::Unknown => ("unknown", None, None),
        };
        SettleReply {
            outcome,
            due_at_ms,
            visible_at_ms,
        }
    }
}

/// A queue's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsReply {
    /// Due now, unclaimed.
    pub ready: u64,
    /// Not due yet (delayed, or waiting out a backoff).
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// How long the longest-due ready job has waited, in ms; absent when
    /// none is ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_ready_ms: Option<u64>,
}

impl From<QueueStats> for StatsReply {
    fn from(s: QueueStats) -> Self {
        StatsReply {
            ready: s.ready,
            delayed: s.delayed,
            in_flight: s.in_flight,
            dead: s.dead,
            oldest_ready_ms: s.oldest_ready_ms,
        }
    }
}

/// Query of `GET /v1/queues`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Glob over queue names (`*`, `?`, `[...]`); `*` when absent.
    pub pattern: Option<String>,
    /// The page after this queue name (a previous page's `next_after`).
    pub after: Option<String>,
    /// Page size, 1..=`limits.max_batch` (100).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueListReply {
    pub queues: Vec<String>,
    /// Pass as `after` for the next page; null on the last one. A page may
    /// hold fewer names than `limit` (those not matching `pattern` are
    /// skipped) and still have a next.
    pub next_after: Option<String>,
}

/// Query of `GET /v1/queues/{queue}/dead` and `GET /v1/schedules`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadParams {
    /// The page after this job id or schedule name (a previous page's
    /// `next_after`).
    pub after: Option<String>,
    /// Page size, 1..=`limits.max_batch` (100).
    pub limit: Option<usize>,
}

/// A dead job.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadJobReply {
    pub id: String,
    /// The payload when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    pub attempts: u32,
    /// The last nack's error, or why the last claim ended.
    pub error: Option<String>,
    pub enqueued_at_ms: u64,
    pub died_at_ms: u64,
}

impl From<DeadJob> for DeadJobReply {
    fn from(d: DeadJob) -> Self {
        let (payload, payload_base64) = payload_json(&d.payload);
        DeadJobReply {
            id: d.id,
            payload,
            payload_base64,
            attempts: d.attempts,
            error: d.error,
            enqueued_at_ms: d.enqueued_at,
            died_at_ms: d.died_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadReply {
    pub jobs: Vec<DeadJobReply>,
    /// Pass as `after` for the next page; null on the last one.
    pub next_after: Option<String>,
}

/// Body of `POST /v1/queues/{queue}/dead/redrive`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    /// Most dead jobs to move, oldest id first (`limits.max_batch` when
    /// absent).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountReply {
    /// Jobs moved or deleted.
    pub count: u64,
}
