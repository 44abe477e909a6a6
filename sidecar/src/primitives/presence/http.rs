//! The HTTP routes of presence: wire types in, primitive calls, wire types out.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::FromRef;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Presence;
use crate::backend::FeedItem;
use crate::error::Error;
use crate::kit::Primitive;
use crate::kit::ceil_ms;
use crate::kit::http::{ApiJson, ApiQuery, CommonErrors, Ctx, Key, Pair, SSE_KEEP_ALIVE};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Presence>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(presence_join, presence_leave))
        .routes(routes!(presence_list))
        .routes(routes!(presence_events))
        .routes(routes!(member_rooms))
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
    Ctx {
        primitive: presence,
        caller,
    }: Ctx<Presence>,
    Pair(room, member): Pair,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<Response, Error> {
    let metadata = match body.metadata {
        None | Some(Value::Null) => Bytes::new(),
        Some(v) => Bytes::from(serde_json::to_vec(&v).expect("a Value serializes")),
    };
    let room = presence.authorize(
        &caller,
        Call::new(P::Presence, Op::Join, room)
            .member(&member)
            .value_size(metadata.len()),
    )?;
    let joined = presence.join(&room, &member, metadata, body.ttl_ms).await?;
    Ok(Json(JoinedReply { joined }).into_response())
}

#[utoipa::path(
    delete, path = "/v1/presence/{room}/{member}", tag = "presence",
    params(("room" = String, Path, description = "The room"), ("member" = String, Path, description = "The member")),
    responses((status = 200, description = "Left (or was not in the room)", body = LeftReply),
        CommonErrors)
)]
async fn presence_leave(
    Ctx {
        primitive: presence,
        caller,
    }: Ctx<Presence>,
    Pair(room, member): Pair,
) -> Result<Response, Error> {
    let room = presence.authorize(
        &caller,
        Call::new(P::Presence, Op::Leave, room).member(&member),
    )?;
    let left = presence.leave(&room, &member).await?;
    Ok(Json(LeftReply { left }).into_response())
}

#[utoipa::path(
    get, path = "/v1/presence/{room}", tag = "presence",
    params(("room" = String, Path, description = "The room"), PageParams),
    responses((status = 200, description = "One page of live members", body = MembersReply),
        CommonErrors)
)]
async fn presence_list(
    Ctx {
        primitive: presence,
        caller,
    }: Ctx<Presence>,
    Key(room): Key,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Response, Error> {
    let room = presence.authorize(&caller, Call::new(P::Presence, Op::Members, room))?;
    let page = presence.list(&room, &params.cursor, params.limit).await?;
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
async fn member_rooms(
    Ctx {
        primitive: presence,
        caller,
    }: Ctx<Presence>,
    Key(member): Key,
) -> Result<Response, Error> {
    let member = presence.authorize(&caller, Call::new(P::Presence, Op::Rooms, member))?;
    let rooms = presence.rooms(&member).await?;
    Ok(Json(RoomsReply { rooms }).into_response())
}

#[utoipa::path(
    get, path = "/v1/presence/{room}/events", tag = "presence",
    params(("room" = String, Path, description = "The room")),
    responses((status = 200, description = "Server-Sent Events: join, leave, timeout (data: room, member, metadata) and lagged (data: missed)", content_type = "text/event-stream", body = String),
        CommonErrors)
)]
async fn presence_events(
    Ctx {
        primitive: presence,
        caller,
    }: Ctx<Presence>,
    Key(room): Key,
) -> Result<Response, Error> {
    let room = presence.authorize(&caller, Call::new(P::Presence, Op::Watch, room))?;
    let feed = presence.watch(&room).await?;
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
        .take_until(presence.common().draining());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
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
