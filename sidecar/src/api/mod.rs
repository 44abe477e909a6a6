//! The two front doors, gRPC and HTTP: thin adapters that translate wire
//! types to primitive calls and errors to status codes, nothing more.

pub mod console;
pub mod grpc;
pub mod http;
pub mod schema;

pub use crate::kit::grpc::pb;
