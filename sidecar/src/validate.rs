//! Input checks shared by every primitive, so that a limit is enforced, and
//! its error worded, the same way everywhere. Messages name the limit's
//! configuration key.

use std::time::Duration;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Input limits; requests over them fail with a clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Keys per GetMany, tags per invalidation, keys per listing page.
    pub max_batch: usize,
    /// Tags on one cache entry.
    pub max_tags: usize,
    pub max_tag_bytes: usize,
    #[serde(with = "crate::duration")]
    pub max_ttl: Duration,
    /// Longest a lock or permit acquisition may wait.
    #[serde(with = "crate::duration")]
    pub max_wait: Duration,
    /// Most permits a semaphore may have.
    pub max_permits: u32,
    /// Connections each API listener serves at once; beyond it, new ones
    /// are refused (HTTP: 503 and closed; gRPC: closed).
    pub max_connections: usize,
    /// Long-lived HTTP streams (server-sent events) each listener serves
    /// at once. An HTTP/1 connection carrying one counts here instead of
    /// against `max_connections`, so streams never use up the connections
    /// ordinary requests need; beyond it, a new stream is answered 503.
    pub max_streams: usize,
    /// Longest an HTTP client may take to send a request's headers, and
    /// to start its next request on a kept-alive connection: slow and
    /// idle clients are disconnected.
    #[serde(with = "crate::duration")]
    pub header_timeout: Duration,
}

/// A key or a name (cache key, lock, room, member, channel): non-empty and
/// at most `limits.max_key_bytes`.
pub fn name(what: &str, value: &str, limits: &Limits) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if value.len() > limits.max_key_bytes {
        return Err(Error::TooLarge(format!(
            "{what} is {} bytes; the limit is {} (limits.max_key_bytes)",
            value.len(),
            limits.max_key_bytes
        )));
    }
    Ok(())
}

/// A lifetime in milliseconds: 1 ms ..= `limits.max_ttl`.
pub fn ttl_ms(what: &str, ms: u64, limits: &Limits) -> Result<Duration> {
    let max = limits.max_ttl.as_millis() as u64;
    if ms == 0 || ms > max {
        return Err(Error::InvalidArgument(format!(
            "{what} must be 1..={max} (limits.max_ttl), not {ms}"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// A number of items in one request: at most `limits.max_batch`.
pub fn batch(what: &str, n: usize, limits: &Limits) -> Result<()> {
    if n > limits.max_batch {
        return Err(Error::TooLarge(format!(
            "{n} {what}; the limit is {} (limits.max_batch)",
            limits.max_batch
        )));
    }
    Ok(())
}

/// A value, payload or metadata: at most `limits.max_value_bytes`.
pub fn value(what: &str, len: usize, limits: &Limits) -> Result<()> {
    if len > limits.max_value_bytes {
        return Err(Error::TooLarge(format!(
            "{what} is {len} bytes; the limit is {} (limits.max_value_bytes)",
            limits.max_value_bytes
        )));
    }
    Ok(())
}
