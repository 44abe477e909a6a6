//! What every primitive's HTTP routes share: the extractors (whose
//! rejections are our JSON errors), the error body and the errors every
//! route may answer, declared once for the OpenAPI document.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Condition, Primitive};
use crate::error::Error;
use crate::plugins::Caller;

/// Bound on JSON request bodies (cache values have their own limit).
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// The primitive a route serves, and who the application says is calling
/// (`x-outrigger-caller` and `x-outrigger-attr-*` headers, for plugins;
/// nobody without plugins): what every API handler starts from.
pub struct Ctx<P> {
    pub primitive: Arc<P>,
    pub caller: Caller,
}

impl<S, P> FromRequestParts<S> for Ctx<P>
where
    S: Send + Sync,
    P: Primitive,
    Arc<P>: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let primitive = Arc::<P>::from_ref(state);
        let caller = if primitive.common().plugins.is_empty() {
            Caller::default()
        } else {
            Caller::from_pairs(
                parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_bytes())),
            )
        };
        Ok(Ctx { primitive, caller })
    }
}

/// `Query` whose rejection is our JSON 400.
pub struct ApiQuery<T>(pub T);

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
pub struct Key(pub String);

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
pub struct ApiJson<T>(pub T);

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
        // Every body of this API is an object; serde would also take a
        // struct's fields from an array, in order, which no schema allows.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Error::InvalidArgument(
                "invalid JSON body: expected an object".into(),
            ));
        }
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| Error::InvalidArgument(format!("invalid JSON body: {e}")))
    }
}

/// Reads a body of at most `limit` bytes.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, Error> {
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

/// A payload as JSON: as text when it is UTF-8, as base64 otherwise.
pub fn payload_json(payload: &[u8]) -> (Option<String>, Option<String>) {
    use base64::Engine;
    match std::str::from_utf8(payload) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    }
}

/// Two path segments, percent-decoded.
pub struct Pair(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Pair {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((a, b))| Pair(a, b))
            .map_err(|e: PathRejection| Error::InvalidArgument(e.body_text()))
    }
}

/// How often an idle event stream sends a comment, so proxies keep it open.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: `invalid_argument`, `too_large`, `not_found`, `conflict`,
    /// `precondition_failed`, `rate_limited`, `exhausted`, `unavailable`,
    /// `internal`, `method_not_allowed`, `draining`.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

/// The errors any API call may answer, declared once for the OpenAPI
/// document.
pub struct CommonErrors;

impl utoipa::IntoResponses for CommonErrors {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>
    {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        [
            ("400", "Malformed input"),
            ("413", "Over a size limit"),
            (
                "503",
                "Storage unavailable, or failing closed while Redis is down",
            ),
            (
                "507",
                "Redis is out of memory and refuses writes (reads still work)",
            ),
        ]
        .into_iter()
        .map(|(status, description)| {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .build();
            (status.to_string(), response.into())
        })
        .collect()
    }
}

/// Response header carrying a value's version (a cache entry, a map field).
pub const VERSION_HEADER: &str = "outrigger-version";

/// Response header carrying a value's remaining TTL in ms; absent when it
/// never expires.
pub const TTL_HEADER: &str = "outrigger-ttl-ms";

/// The `if` query parameter of a conditional write: `absent`, `present` or
/// `version:<N>`.
pub fn parse_condition(text: Option<&str>) -> Result<Condition, Error> {
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

/// Query of a listing by glob (`GET /v1/cache`, `/v1/locks`,
/// `/v1/semaphores`), a page at a time.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Redis glob over keys or names; empty: all.
    #[serde(default)]
    pub pattern: String,
    /// Empty for the first page, then the previous `next_cursor`.
    #[serde(default)]
    pub cursor: String,
    /// Page size hint; 0: 100.
    #[serde(default)]
    pub limit: usize,
}
