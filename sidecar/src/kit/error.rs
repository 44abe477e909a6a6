//! The one place where [`Error`] becomes an HTTP status or a gRPC code.
//!
//! Clients get the error's own message for their mistakes; for backend
//! failures they get a generic message while the cause goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

impl Error {
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::PluginLoad(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::Exhausted(_) | Error::Degraded(_) | Error::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::OutOfMemory(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::TooLarge(_) => tonic::Code::ResourceExhausted,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::Denied(_) => tonic::Code::PermissionDenied,
            Error::PluginLoad(_) => tonic::Code::FailedPrecondition,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::Conflict(_) => tonic::Code::Aborted,
            Error::PreconditionFailed(_) => tonic::Code::FailedPrecondition,
            Error::Exhausted(_) | Error::OutOfMemory(_) => tonic::Code::ResourceExhausted,
            Error::Degraded(_) | Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }
}

/// `{"error": {"code": "...", "message": "..."}}` with the matching status.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        error_response(self.http_status(), self.code(), &self.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

/// An error body for failures that happen before a primitive is reached
/// (unknown route, unparsable query, body over its limit).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}
