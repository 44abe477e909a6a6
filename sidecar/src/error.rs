//! The error every primitive returns.
//!
//! One enum for the whole sidecar, so that the translation to HTTP statuses
//! and gRPC codes happens in exactly one place (`api::error`). Messages of
//! the client-facing variants are written for the caller; the causes behind
//! [`Error::Unavailable`] and [`Error::Internal`] are logged, not sent.

use std::path::PathBuf;
use std::time::Duration;

/// Why the configuration was rejected; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{key}` (from {origin}): {reason}")]
    Parse {
        key: String,
        origin: String,
        reason: String,
    },
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: 400 / `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// No valid bearer token: 401 / `UNAUTHENTICATED`.
    #[error("{0}")]
    Unauthenticated(String),
    /// A key, value or batch is over its limit: 413 / `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    TooLarge(String),
    /// A plugin's policy refused the request (or a failing plugin fails
    /// closed): 403 / `PERMISSION_DENIED`.
    #[error("{0}")]
    Denied(String),
    /// A plugin could not be (re)loaded; the previous version stays: 422 /
    /// `FAILED_PRECONDITION`.
    #[error("{0}")]
    PluginLoad(String),
    /// The thing asked for does not exist: 404 / `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// The object is in a state that refuses the request: a lock not
    /// acquired in time, a token that does not hold the lock: 409 /
    /// `ABORTED`.
    #[error("{0}")]
    Conflict(String),
    /// A conditional write whose condition did not hold: 412 /
    /// `FAILED_PRECONDITION`.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A capacity of this sidecar is used up (subscribers): 503 /
    /// `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    Exhausted(String),
    /// Redis is down and this primitive refuses to fall back (locks fail
    /// closed by default); the message says why: 503 / `UNAVAILABLE`.
    #[error("{0}")]
    Degraded(String),
    /// The store is out of memory and refuses writes (Redis at its
    /// maxmemory with `noeviction`, the memory backend's job cap); reads
    /// still work: 507 / `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    OutOfMemory(String),
    /// The storage backend failed or did not answer in time: 503 /
    /// `UNAVAILABLE`.
    #[error("storage backend unavailable")]
    Unavailable(#[source] BackendError),
    /// A bug or an unexpected reply: 500 / `INTERNAL`.
    #[error("internal error")]
    Internal(#[source] BackendError),
}

impl From<BackendError> for Error {
    fn from(err: BackendError) -> Self {
        match err {
            BackendError::InvalidCursor => {
                Error::InvalidArgument("cursor is not one this listing returned".into())
            }
            BackendError::Unservable(reason) => Error::InvalidArgument(reason),
            BackendError::Protocol(_) => Error::Internal(err),
            BackendError::FailClosed(reason) => Error::Degraded(reason),
            BackendError::OutOfMemory(reason) => Error::OutOfMemory(reason),
            BackendError::Timeout(_) | BackendError::Unavailable(_) | BackendError::Server(_) => {
                Error::Unavailable(err)
            }
        }
    }
}

impl Error {
    /// A short, stable name for metrics labels and JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::TooLarge(_) => "too_large",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Denied(_) => "permission_denied",
            Error::PluginLoad(_) => "plugin_error",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::PreconditionFailed(_) => "precondition_failed",
            Error::Exhausted(_) => "exhausted",
            Error::Degraded(_) => "unavailable",
            Error::OutOfMemory(_) => "out_of_memory",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }
}

/// Shorthand for results of primitive operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a backend (storage) call failed: what every store returns.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The call did not finish within the configured deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The backend refused or lost the connection, or cannot serve at all
    /// right now (loading, busy, no master): the failover backend switches
    /// to memory on this.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error about this request (a wrong
    /// type): not a reason to fail over.
    #[error("server error: {0}")]
    Server(String),
    /// Redis is at its maxmemory and evicts nothing: it refuses writes.
    /// Not a reason to fail over either (it answers, and reads work).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The backend is down and this primitive is configured to refuse
    /// rather than fall back; the message says so to the client.
    #[error("{0}")]
    FailClosed(String),
    /// The backend answered something this code does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A listing cursor that this backend never handed out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// A request this deployment cannot serve as asked (keys of one atomic
    /// step in different Cluster slots); the message says what to change.
    #[error("{0}")]
    Unservable(String),
}
