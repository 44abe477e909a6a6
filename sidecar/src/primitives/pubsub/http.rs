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

use super::PubSub;
use super::store::PubMessage;
use crate::backend::FeedItem;
use crate::error::Error;
use crate::kit::Primitive;
use crate::kit::http::{ApiQuery, CommonErrors, Ctx, Key, SSE_KEEP_ALIVE, read_limited};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<PubSub>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(publish, subscribe))
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
    let offset = pubsub
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
        None | Some("") => None,
        Some(o) => Some(o.parse().map_err(|()| {
            Error::InvalidArgument(format!("from={o:?} is not an offset like 1700000000000-0"))
        })?),
    };
    // Subscribed before answering: once the client sees the response (or
    // the WebSocket handshake), everything published from then on arrives.
    let channel = pubsub.authorize(&caller, Call::new(P::Pubsub, Op::Subscribe, channel))?;
    let subscription = pubsub.subscribe(vec![channel], vec![], from).await?;
    let subscription = subscription.take_until(pubsub.common().draining());
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

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetReply {
    /// The message's offset in the channel's stream (durable messages
    /// only; null otherwise).
    pub offset: Option<String>,
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
}

/// Query of `GET /v1/pubsub/{channel}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscribeParams {
    /// Replay durable messages after this offset first (`0`: all
    /// retained). Without it, the `Last-Event-ID` header is used.
    pub from: Option<String>,
}
