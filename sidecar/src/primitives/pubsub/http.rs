//! The HTTP routes of pubsub: wire types in, primitive calls, wire types out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::FromRef;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{Offset, PubMessage};
use super::{Delivery, HistoryQuery, PubSub, PublishOptions, ResumeFrom};
use crate::error::Error;
use crate::kit::Primitive;
use crate::kit::http::{
    ApiQuery, CommonErrors, Ctx, Key, SSE_KEEP_ALIVE, payload_json, read_limited,
};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<PubSub>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(publish, subscribe))
        .routes(routes!(history, trim))
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
    Ctx {
        primitive: pubsub,
        caller,
    }: Ctx<PubSub>,
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
    let payload = read_limited(body, pubsub.limits().max_value_bytes).await?;
    let channel = pubsub.authorize(
        &caller,
        Call::new(P::Pubsub, Op::Publish, channel).value_size(payload.len()),
    )?;
    let options = PublishOptions {
        durable: params.durable,
        idempotency_key: params.idempotency_key,
        max_len: params.max_len,
        max_age: params.max_age_ms.map(std::time::Duration::from_millis),
    };
    let published = pubsub
        .publish_for(&caller, &channel, payload, message_headers, options)
        .await?;
    Ok(Json(OffsetReply {
        offset: published.offset.map(|o| o.to_string()),
        epoch: published.epoch,
        duplicate: published.duplicate,
    })
    .into_response())
}

/// A message as SSE data and WebSocket text.
fn message_json(m: &PubMessage) -> Value {
    let (payload, payload_base64) = payload_json(&m.payload);
    let event = MessageEvent {
        kind: "message".into(),
        channel: m.channel.clone(),
        offset: m.offset.map(|o| o.to_string()),
        headers: m.headers.clone(),
        payload,
        payload_base64,
    };
    serde_json::to_value(event).expect("a message serializes")
}

/// A delivery as SSE event name and data (also the WebSocket text).
fn delivery_json(item: &crate::error::Result<Delivery>) -> (&'static str, Value) {
    match item {
        Ok(Delivery::Message(m)) => ("message", message_json(m)),
        Ok(Delivery::Lagged(missed)) => ("lagged", json!({ "type": "lagged", "missed": missed })),
        Ok(Delivery::Replayed(last)) => (
            "replayed",
            json!({ "type": "replayed", "offset": last.map(|o| o.to_string()) }),
        ),
        Ok(Delivery::Resumed(r)) => (
            "resumed",
            json!({
                "type": "resumed",
                "recovered": r.recovered,
                "epoch": r.epoch,
                "from": r.from.map(|o| o.to_string()),
            }),
        ),
        Err(err) => (
            "error",
            json!({ "type": "error", "code": err.code(), "message": err.to_string() }),
        ),
    }
}

#[utoipa::path(
    get, path = "/v1/pubsub/{channel}", tag = "pubsub",
    params(("channel" = String, Path, description = "The channel"), SubscribeParams, ("last-event-id" = Option<String>, Header, description = "Resume after this offset (EventSource reconnection)")),
    responses((status = 200, description = "Server-Sent Events: message (id: the offset of durable messages; data: a MessageEvent), lagged (data: {type, missed}), resumed (a resumed subscription's first event, and again if its replay finds a gap; data: {type, recovered: whether what follows runs on from the offset without a gap, epoch: the channel's epoch, from: the first offset replayed, or null}), replayed (a resumed subscription caught up with live; data: {type, offset: the last offset delivered, or null}), error (data: {type, code, message}). A WebSocket upgrade on the same URL carries the same JSON as text frames.", content_type = "text/event-stream", body = String),
        CommonErrors)
)]
async fn subscribe(
    Ctx {
        primitive: pubsub,
        caller,
    }: Ctx<PubSub>,
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
        None | Some("") if params.epoch.is_some() => {
            return Err(Error::InvalidArgument(
                "epoch names the epoch of a from offset: give both".into(),
            ));
        }
        None | Some("") => None,
        Some(o) => Some(ResumeFrom {
            offset: o.parse().map_err(|()| {
                Error::InvalidArgument(format!("from={o:?} is not an offset like 1700000000000-0"))
            })?,
            epoch: params.epoch,
        }),
    };
    // Subscribed before answering: once the client sees the response (or
    // the WebSocket handshake), everything published from then on arrives.
    let channel = pubsub.authorize(&caller, Call::new(P::Pubsub, Op::Subscribe, channel))?;
    let subscription = pubsub
        .subscribe_for(&caller, vec![channel], vec![], from)
        .await?;
    let subscription = subscription.take_until(pubsub.common().draining());
    if let Ok(upgrade) = upgrade {
        return Ok(upgrade.on_upgrade(move |socket| websocket(socket, subscription)));
    }
    let events = subscription.map(|item| {
        let (name, data) = delivery_json(&item);
        let event = SseEvent::default().event(name).data(data.to_string());
        Ok::<_, Infallible>(match item {
            Ok(Delivery::Message(m)) if m.offset.is_some() => {
                event.id(m.offset.unwrap_or_default().to_string())
            }
            _ => event,
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

async fn websocket(
    mut socket: WebSocket,
    subscription: impl futures::Stream<Item = crate::error::Result<Delivery>> + Send,
) {
    let mut subscription = std::pin::pin!(subscription);
    loop {
        tokio::select! {
            item = subscription.next() => {
                let Some(item) = item else { break };
                let (_, text) = delivery_json(&item);
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
    get, path = "/v1/pubsub/{channel}/history", tag = "pubsub",
    params(("channel" = String, Path, description = "The channel"), HistoryParams),
    responses((status = 200, description = "Durable messages, in the order asked for", body = HistoryReply),
        CommonErrors)
)]
async fn history(
    Ctx {
        primitive: pubsub,
        caller,
    }: Ctx<PubSub>,
    Key(channel): Key,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<HistoryReply>, Error> {
    let channel = pubsub.authorize(&caller, Call::new(P::Pubsub, Op::Read, channel))?;
    let offset = |name: &str, v: Option<String>| -> Result<Option<Offset>, Error> {
        v.map(|o| {
            o.parse().map_err(|()| {
                Error::InvalidArgument(format!(
                    "{name}={o:?} is not an offset like 1700000000000-0"
                ))
            })
        })
        .transpose()
    };
    let newest_first = match params.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "order={other:?}: expected asc or desc"
            )));
        }
    };
    let query = HistoryQuery {
        last: params.last,
        from: offset("from", params.from)?,
        to: offset("to", params.to)?,
        newest_first,
        limit: params.limit,
        cursor: offset("cursor", params.cursor)?,
    };
    let page = pubsub.history_for(&caller, &channel, query).await?;
    Ok(Json(HistoryReply {
        channel,
        epoch: page.epoch,
        messages: page
            .messages
            .iter()
            .map(|m| {
                let (payload, payload_base64) = payload_json(&m.payload);
                let offset = m.offset.unwrap_or_default();
                HistoryMessage {
                    offset: offset.to_string(),
                    published_at_ms: offset.ms,
                    headers: m.headers.clone(),
                    payload,
                    payload_base64,
                }
            })
            .collect(),
        next_cursor: page.next_cursor.map(|o| o.to_string()),
    }))
}

#[utoipa::path(
    delete, path = "/v1/pubsub/{channel}/history", tag = "pubsub",
    params(("channel" = String, Path, description = "The channel"), TrimParams),
    responses((status = 200, description = "Trimmed", body = TrimReply),
        CommonErrors)
)]
async fn trim(
    Ctx {
        primitive: pubsub,
        caller,
    }: Ctx<PubSub>,
    Key(channel): Key,
    ApiQuery(params): ApiQuery<TrimParams>,
) -> Result<Json<TrimReply>, Error> {
    let channel = pubsub.authorize(&caller, Call::new(P::Pubsub, Op::Delete, channel))?;
    let before = params.before.parse().map_err(|()| {
        Error::InvalidArgument(format!(
            "before={:?} is not an offset like 1700000000000-0",
            params.before
        ))
    })?;
    let removed = pubsub.trim(&channel, before).await?;
    Ok(Json(TrimReply { removed }))
}

/// Query of `GET /v1/pubsub/{channel}/history`: `last`, or a range paged
/// with `limit` and `cursor`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// The newest `last` messages (1 to 1,000), in `order`; alone.
    pub last: Option<usize>,
    /// The first offset of the range (included); default: the oldest.
    pub from: Option<String>,
    /// The last offset of the range (included); default: the newest.
    pub to: Option<String>,
    /// `asc` (oldest first, the default) or `desc`.
    pub order: Option<String>,
    /// Messages per page, 1 to 1,000 (default 100).
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Query of `DELETE /v1/pubsub/{channel}/history`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrimParams {
    /// Messages before this offset are dropped (it stays).
    pub before: String,
}

/// A page of a channel's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryReply {
    pub channel: String,
    /// The channel's epoch (null for a channel that does not exist): pass
    /// it with `from` when subscribing after these messages, to be told if
    /// the history did not run on from them.
    pub epoch: Option<String>,
    pub messages: Vec<HistoryMessage>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// A durable message as history returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryMessage {
    pub offset: String,
    /// When it was published (ms since the epoch, the clock of the Redis
    /// that took it).
    pub published_at_ms: u64,
    pub headers: BTreeMap<String, String>,
    /// The payload when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrimReply {
    /// Messages dropped.
    pub removed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetReply {
    /// The message's offset in the channel's stream (durable messages
    /// only; null otherwise). For a repeat: the first publish's.
    pub offset: Option<String>,
    /// The channel's epoch (durable messages only; null otherwise).
    pub epoch: Option<String>,
    /// The idempotency key was seen within the window: nothing was
    /// published this time.
    pub duplicate: bool,
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

/// Query of `POST /v1/pubsub/{channel}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PublishParams {
    /// Also append to the channel's stream, for replay.
    #[serde(default)]
    pub durable: bool,
    /// A repeat with the same key on this channel within
    /// `pubsub.idempotency_window` (5 minutes) answers the first publish's
    /// offset and delivers nothing: retry freely.
    pub idempotency_key: Option<String>,
    /// Keep at most this many of the channel's durable messages (at most
    /// what its retention rule keeps).
    pub max_len: Option<usize>,
    /// Keep its durable messages, and the channel after its last publish,
    /// at most this long (at most what its retention rule says).
    pub max_age_ms: Option<u64>,
}

/// Query of `GET /v1/pubsub/{channel}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscribeParams {
    /// Replay durable messages after this offset first (`0`: all
    /// retained). Without it, the `Last-Event-ID` header is used.
    pub from: Option<String>,
    /// The epoch `from` belongs to (as `resumed`, history or publish
    /// answered it): if the channel's has changed since, `resumed` says
    /// `recovered: false`.
    pub epoch: Option<String>,
}
