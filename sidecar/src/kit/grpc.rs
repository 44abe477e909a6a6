//! What every primitive's gRPC service shares: the generated code, who is
//! calling, and the stream type of server-streaming methods.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Status};

use super::Common;
use crate::plugins::Caller;

/// Code generated from `proto/outrigger/v1/*.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("outrigger.v1");

    /// Encoded descriptors of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/outrigger_descriptor.bin"));
}

/// Who the application says is calling (`x-outrigger-caller` and
/// `x-outrigger-attr-*` metadata), for plugins; nothing without plugins.
pub fn caller<T>(common: &Common, req: &Request<T>) -> Caller {
    if common.plugins.is_empty() {
        return Caller::default();
    }
    Caller::from_pairs(req.metadata().iter().filter_map(|entry| match entry {
        tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
            Some((key.as_str(), value.as_bytes()))
        }
        tonic::metadata::KeyAndValueRef::Binary(..) => None,
    }))
}

/// A server stream of a gRPC method.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
