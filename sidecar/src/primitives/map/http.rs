//! The HTTP routes of maps: wire types in, primitive calls, wire types out.
//!
//! Single-field routes carry values as raw bytes; the map routes carry them
//! in JSON as `value` (UTF-8 text) or `value_base64` (any bytes: when the
//! value is not UTF-8, or always with `encoding=base64`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRef, Query};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{FieldChange, FieldValue, MapEvent, Number, Outcome};
use super::{ChangeRequest, Maps, TtlRequest, UpdateRequest};
use crate::backend::FeedItem;
use crate::error::Error;
use crate::kit::Primitive;
use crate::kit::ceil_ms;
use crate::kit::http::{
    ApiJson, ApiQuery, CommonErrors, Ctx, ErrorBody, Key, Pair, SSE_KEEP_ALIVE, TTL_HEADER,
    VERSION_HEADER, parse_condition, read_limited,
};

/// This primitive's routes, each with its OpenAPI operation, on any state
/// that holds the primitive.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Maps>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(map_read, map_update, map_delete))
        .routes(routes!(field_get, field_put, field_delete))
        .routes(routes!(field_increment))
        .routes(routes!(map_events))
}

/// A value in JSON: text when it is UTF-8 (and base64 was not asked for),
/// base64 otherwise.
fn value_json(value: &Bytes, base64: bool) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(value) {
        Ok(text) if !base64 => (Some(text.to_string()), None),
        _ => (None, Some(BASE64.encode(value))),
    }
}

fn number_json(n: Number) -> serde_json::Number {
    match n {
        Number::Int(n) => n.into(),
        Number::Float(x) => serde_json::Number::from_f64(x).unwrap_or_else(|| 0.into()),
    }
}

fn field_reply(field: String, v: FieldValue, base64: bool) -> FieldReply {
    let (value, value_base64) = value_json(&v.value, base64);
    FieldReply {
        field,
        value,
        value_base64,
        version: v.version,
        ttl_ms: v.ttl.map(ceil_ms),
    }
}

/// The query of `GET /v1/maps/{map}`, parsed by hand: `field` may repeat.
#[derive(Debug, Default)]
struct ReadQuery {
    fields: Vec<String>,
    cursor: String,
    limit: usize,
    base64: bool,
}

impl ReadQuery {
    fn parse(pairs: Vec<(String, String)>) -> Result<ReadQuery, Error> {
        let mut q = ReadQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "field" => q.fields.push(value),
                "cursor" => q.cursor = value,
                "limit" => {
                    q.limit = value.parse().map_err(|_| {
                        Error::InvalidArgument(format!("limit={value:?}: expected a page size"))
                    })?
                }
                "encoding" => {
                    q.base64 = match value.as_str() {
                        "utf8" => false,
                        "base64" => true,
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "encoding={value:?}: expected utf8 or base64"
                            )));
                        }
                    }
                }
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown query parameter {other:?} (expected field, cursor, limit or encoding)"
                    )));
                }
            }
        }
        if !q.fields.is_empty() && (!q.cursor.is_empty() || q.limit != 0) {
            return Err(Error::InvalidArgument(
                "field reads the fields named; cursor and limit page through all of them: give one or the other".into(),
            ));
        }
        Ok(q)
    }
}

#[utoipa::path(
    get, path = "/v1/maps/{map}", tag = "maps",
    params(("map" = String, Path, description = "The map"), ReadParams),
    responses(
        (status = 200, description = "With `field`: those fields (absent ones left out). Without: one page of the map's fields",
            content((MapReply = "application/json"), (String = "text/event-stream"))),
        CommonErrors)
)]
async fn map_read(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Key(map): Key,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(pairs) = query.map_err(|e| Error::InvalidArgument(e.body_text()))?;
    let q = ReadQuery::parse(pairs)?;
    if !q.fields.is_empty() {
        let read = maps.get_for(&caller, map, &q.fields).await?;
        let fields = q
            .fields
            .into_iter()
            .zip(read.fields)
            .filter_map(|(name, value)| Some(field_reply(name, value?, q.base64)))
            .collect();
        return Ok(Json(MapReply {
            version: read.version,
            ttl_ms: read.ttl.map(ceil_ms),
            fields,
            next_cursor: None,
        })
        .into_response());
    }
    let page = maps.scan_for(&caller, map, &q.cursor, q.limit).await?;
    Ok(Json(MapReply {
        version: page.version,
        ttl_ms: page.ttl.map(ceil_ms),
        fields: page
            .fields
            .into_iter()
            .map(|(name, value)| field_reply(name, value, q.base64))
            .collect(),
        next_cursor: page.next_cursor,
    })
    .into_response())
}

fn event_json(e: &MapEvent) -> serde_json::Value {
    let changes: Vec<serde_json::Value> = e
        .changes
        .iter()
        .map(|(field, change)| match change {
            FieldChange::Set(value) => {
                let (text, base64) = value_json(value, false);
                match text {
                    Some(text) => json!({ "field": field, "change": "set", "value": text }),
                    None => json!({ "field": field, "change": "set", "value_base64": base64 }),
                }
            }
            FieldChange::Deleted => json!({ "field": field, "change": "deleted" }),
            FieldChange::Expired => json!({ "field": field, "change": "expired" }),
        })
        .collect();
    json!({ "map": e.map, "version": e.version, "changes": changes })
}

#[utoipa::path(
    get, path = "/v1/map-events/{map}", tag = "maps",
    params(("map" = String, Path, description = "The map")),
    responses((status = 200, description = "Server-Sent Events: one per update (`updated`), reap of expired fields (`expired`) and deletion (`deleted`), data `{map, version, changes: [{field, change: set|deleted|expired, value | value_base64}]}`; and `lagged` (data: missed)", content_type = "text/event-stream", body = String),
        CommonErrors)
)]
async fn map_events(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Key(map): Key,
) -> Result<Response, Error> {
    let feed = maps.watch_for(&caller, map).await?;
    let events = feed
        .map(|item| {
            Ok::<_, Infallible>(match item {
                FeedItem::Item(e) => SseEvent::default()
                    .event(e.kind.name())
                    .data(event_json(&e).to_string()),
                FeedItem::Lagged(missed) => SseEvent::default()
                    .event("lagged")
                    .data(json!({ "missed": missed }).to_string()),
            })
        })
        .take_until(maps.common().draining());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

#[utoipa::path(
    post, path = "/v1/maps/{map}", tag = "maps",
    params(("map" = String, Path, description = "The map")), request_body = UpdateBody,
    responses(
        (status = 200, description = "Applied, every change: the map's new version and each change's outcome", body = UpdateReply),
        (status = 409, description = "An increment met a field that is not a number, or would leave the range; nothing applied", body = ErrorBody),
        (status = 412, description = "`if_version` or a field's condition did not hold; nothing applied", body = ErrorBody),
        CommonErrors)
)]
async fn map_update(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Key(map): Key,
    ApiJson(body): ApiJson<UpdateBody>,
) -> Result<Response, Error> {
    let changes = body
        .changes
        .into_iter()
        .map(ChangeBody::into_request)
        .collect::<Result<_, _>>()?;
    let req = UpdateRequest {
        changes,
        if_version: body.if_version,
        ttl: TtlRequest {
            ttl_ms: body.ttl_ms,
            sliding: body.sliding,
            persist: body.persist,
        },
    };
    let applied = maps.update_for(&caller, map, req).await?;
    Ok(Json(UpdateReply {
        version: applied.version,
        outcomes: applied
            .outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Set => OutcomeReply::default(),
                Outcome::Deleted { existed } => OutcomeReply {
                    existed: Some(existed),
                    value: None,
                },
                Outcome::Incremented(n) => OutcomeReply {
                    existed: None,
                    value: Some(number_json(n)),
                },
            })
            .collect(),
    })
    .into_response())
}

#[utoipa::path(
    delete, path = "/v1/maps/{map}", tag = "maps",
    params(("map" = String, Path, description = "The map")),
    responses((status = 200, description = "Deleted with every field (or absent)", body = ExistedReply),
        CommonErrors)
)]
async fn map_delete(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Key(map): Key,
) -> Result<Response, Error> {
    let existed = maps.delete_for(&caller, map).await?;
    Ok(Json(ExistedReply {
        existed,
        version: None,
    })
    .into_response())
}

#[utoipa::path(
    get, path = "/v1/maps/{map}/{field}", tag = "maps",
    params(("map" = String, Path, description = "The map"), ("field" = String, Path, description = "The field")),
    responses(
        (status = 200, description = "The value, as raw bytes", content_type = "application/octet-stream", body = String,
            headers(("outrigger-version" = u64, description = "The map's version when the field was last written"),
                    ("outrigger-ttl-ms" = u64, description = "The field's remaining TTL in ms; absent when it has none"))),
        (status = 404, description = "No such field (or it expired)", body = ErrorBody),
        CommonErrors)
)]
async fn field_get(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Pair(map, field): Pair,
) -> Result<Response, Error> {
    let read = maps
        .get_for(&caller, map.clone(), std::slice::from_ref(&field))
        .await?;
    let value = read
        .fields
        .into_iter()
        .next()
        .flatten()
        .ok_or_else(|| Error::NotFound(format!("map {map:?} has no field {field:?}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(VERSION_HEADER, value.version.into());
    if let Some(ttl) = value.ttl {
        headers.insert(TTL_HEADER, ceil_ms(ttl).into());
    }
    Ok((headers, value.value).into_response())
}

#[utoipa::path(
    put, path = "/v1/maps/{map}/{field}", tag = "maps",
    params(("map" = String, Path, description = "The map"), ("field" = String, Path, description = "The field"), PutParams),
    request_body(content = Option<String>, content_type = "application/octet-stream", description = "The value, raw bytes (at most limits.max_value_bytes)"),
    responses(
        (status = 200, description = "Set: the map's new version, which the field now carries", body = FieldVersionReply, headers(("outrigger-version" = u64))),
        (status = 412, description = "The condition did not hold", body = ErrorBody),
        CommonErrors)
)]
async fn field_put(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Pair(map, field): Pair,
    ApiQuery(params): ApiQuery<PutParams>,
    body: Body,
) -> Result<Response, Error> {
    let condition = parse_condition(params.condition.as_deref())?;
    let value = read_limited(body, maps.limits.max_value_bytes).await?;
    let req = UpdateRequest {
        changes: vec![ChangeRequest::Set {
            field,
            value,
            ttl_ms: params.ttl_ms,
            condition,
        }],
        if_version: None,
        ttl: TtlRequest {
            ttl_ms: params.map_ttl_ms,
            sliding: params.sliding,
            persist: false,
        },
    };
    let version = maps.update_for(&caller, map, req).await?.version;
    Ok((
        [(VERSION_HEADER, version)],
        Json(FieldVersionReply { version }),
    )
        .into_response())
}

#[utoipa::path(
    delete, path = "/v1/maps/{map}/{field}", tag = "maps",
    params(("map" = String, Path, description = "The map"), ("field" = String, Path, description = "The field")),
    responses((status = 200, description = "Deleted (or absent): whether it existed, and the map's new version", body = ExistedReply),
        CommonErrors)
)]
async fn field_delete(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Pair(map, field): Pair,
) -> Result<Response, Error> {
    let req = UpdateRequest {
        changes: vec![ChangeRequest::Delete { field }],
        ..UpdateRequest::default()
    };
    let applied = maps.update_for(&caller, map, req).await?;
    let existed = matches!(applied.outcomes[..], [Outcome::Deleted { existed: true }]);
    Ok(Json(ExistedReply {
        existed,
        version: Some(applied.version),
    })
    .into_response())
}

#[utoipa::path(
    post, path = "/v1/maps/{map}/{field}/incr", tag = "maps",
    params(("map" = String, Path, description = "The map"), ("field" = String, Path, description = "The field")),
    request_body = FieldIncrementBody,
    responses(
        (status = 200, description = "Incremented: the field's new value and the map's new version", body = FieldIncrementReply),
        (status = 409, description = "The field is not a number, or the result would leave the range", body = ErrorBody),
        CommonErrors)
)]
async fn field_increment(
    Ctx {
        primitive: maps,
        caller,
    }: Ctx<Maps>,
    Pair(map, field): Pair,
    ApiJson(body): ApiJson<FieldIncrementBody>,
) -> Result<Response, Error> {
    let req = UpdateRequest {
        changes: vec![ChangeRequest::Increment {
            field,
            by: number(&body.by)?,
        }],
        ..UpdateRequest::default()
    };
    let applied = maps.update_for(&caller, map, req).await?;
    let value = match applied.outcomes[..] {
        [Outcome::Incremented(n)] => number_json(n),
        _ => {
            return Err(Error::Internal(crate::backend::BackendError::Protocol(
                "an increment without its value".into(),
            )));
        }
    };
    Ok(Json(FieldIncrementReply {
        value,
        version: applied.version,
    })
    .into_response())
}

/// A JSON number as an increment: an integer literal is an integer.
fn number(n: &serde_json::Number) -> Result<Number, Error> {
    if let Some(i) = n.as_i64() {
        return Ok(Number::Int(i));
    }
    if n.is_u64() {
        return Err(Error::InvalidArgument(format!(
            "by={n}: integers must be within ±9007199254740991 (2^53 - 1)"
        )));
    }
    n.as_f64()
        .map(Number::Float)
        .ok_or_else(|| Error::InvalidArgument(format!("by={n}: not a number")))
}

/// Query of `GET /v1/maps/{map}` (for the document; parsed by hand).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ReadParams {
    /// A field to read; repeat for several (at most `limits.max_batch`).
    /// Without any: list the map's fields, a page at a time.
    pub field: Option<Vec<String>>,
    /// Listing: empty for the first page, then the previous `next_cursor`.
    pub cursor: Option<String>,
    /// Listing: page size; 0 or absent: 100.
    pub limit: Option<usize>,
    /// `utf8` (default: text when the value is UTF-8, else `value_base64`)
    /// or `base64` (always `value_base64`).
    #[param(pattern = "^(utf8|base64)$")]
    pub encoding: Option<String>,
}

/// Query of `PUT /v1/maps/{map}/{field}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutParams {
    /// The field's own TTL in ms; 0 or absent: none (a TTL it had is
    /// removed).
    #[serde(default)]
    pub ttl_ms: u64,
    /// `absent`, `present` or `version:N` (the field's version).
    #[serde(default, rename = "if")]
    #[param(rename = "if", pattern = "^(absent|present|version:[0-9]+)$")]
    pub condition: Option<String>,
    /// The map's lifetime in ms from now; 0 or absent: left as it is.
    #[serde(default)]
    pub map_ttl_ms: u64,
    /// With `map_ttl_ms`: restart the map's lifetime on every access.
    #[serde(default)]
    pub sliding: bool,
}

/// Body of `POST /v1/maps/{map}`: changes applied in order, atomically.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// At least one, at most `limits.max_batch`.
    pub changes: Vec<ChangeBody>,
    /// Apply only if the map is at this version (0: it does not exist).
    #[serde(default)]
    pub if_version: Option<u64>,
    /// The map's lifetime in ms from now; 0 or absent: left as it is.
    #[serde(default)]
    pub ttl_ms: u64,
    /// With `ttl_ms`: restart the lifetime on every read and write.
    #[serde(default)]
    pub sliding: bool,
    /// Remove the map's lifetime.
    #[serde(default)]
    pub persist: bool,
}

/// One change: `{"op": "set", "field", "value" | "value_base64", "ttl_ms",
/// "if"}`, `{"op": "delete", "field"}` or `{"op": "incr", "field", "by"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ChangeBody {
    Set {
        field: String,
        /// The value as text.
        #[serde(default)]
        value: Option<String>,
        /// Or the value's bytes in base64.
        #[serde(default)]
        value_base64: Option<String>,
        /// The field's own TTL; 0 or absent: none.
        #[serde(default)]
        ttl_ms: u64,
        /// `absent`, `present` or `version:N`.
        #[serde(default, rename = "if")]
        #[schema(pattern = "^(absent|present|version:[0-9]+)$")]
        condition: Option<String>,
    },
    Delete {
        field: String,
    },
    Incr {
        field: String,
        /// An integer keeps an integer field an integer; a number with a
        /// fraction or exponent makes it a float. Not 0.
        #[schema(value_type = f64)]
        by: serde_json::Number,
    },
}

impl ChangeBody {
    fn into_request(self) -> Result<ChangeRequest, Error> {
        Ok(match self {
            ChangeBody::Set {
                field,
                value,
                value_base64,
                ttl_ms,
                condition,
            } => {
                let value = match (value, value_base64) {
                    (Some(text), None) => Bytes::from(text),
                    (None, Some(b64)) => {
                        Bytes::from(BASE64.decode(b64.as_bytes()).map_err(|e| {
                            Error::InvalidArgument(format!("value_base64 of field {field:?}: {e}"))
                        })?)
                    }
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "set of field {field:?}: give value or value_base64, exactly one"
                        )));
                    }
                };
                ChangeRequest::Set {
                    field,
                    value,
                    ttl_ms,
                    condition: parse_condition(condition.as_deref())?,
                }
            }
            ChangeBody::Delete { field } => ChangeRequest::Delete { field },
            ChangeBody::Incr { field, by } => ChangeRequest::Increment {
                field,
                by: number(&by)?,
            },
        })
    }
}

/// Body of `POST /v1/maps/{map}/{field}/incr`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldIncrementBody {
    /// Added to the field (absent: 0). An integer keeps an integer field an
    /// integer; a number with a fraction or exponent makes it a float. Not 0.
    #[schema(value_type = f64)]
    pub by: serde_json::Number,
}

/// A field in JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldReply {
    pub field: String,
    /// The value, when it is UTF-8 text (and base64 was not asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's bytes in base64, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// The map's version when the field was last written.
    pub version: u64,
    /// The field's remaining TTL; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Fields of a map.
#[derive(Debug, Serialize, ToSchema)]
pub struct MapReply {
    /// 0 when the map does not exist.
    pub version: u64,
    /// The map's remaining lifetime; absent when it never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    pub fields: Vec<FieldReply>,
    /// Listing: where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What an applied update did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpdateReply {
    /// The map's new version, carried by every field the update wrote.
    pub version: u64,
    /// One per change, in order: `{}` for a set, `{"existed"}` for a
    /// delete, `{"value"}` (the new value) for an increment.
    pub outcomes: Vec<OutcomeReply>,
}

#[derive(Debug, Serialize, ToSchema, Default)]
pub struct OutcomeReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub value: Option<serde_json::Number>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExistedReply {
    pub existed: bool,
    /// Field deletes: the map's new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldVersionReply {
    pub version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldIncrementReply {
    #[schema(value_type = f64)]
    pub value: serde_json::Number,
    pub version: u64,
}
