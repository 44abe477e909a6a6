//! The gRPC service of counters (`outrigger.v1.Counter`): wire types in,
//! primitive calls, wire types out.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::store::CounterValue;
use super::{Counters, IncrementRequest};
use crate::kit::Primitive;
use crate::kit::grpc::pb::counter_server::{Counter as Api, CounterServer};
use crate::kit::grpc::{caller, pb};

/// The service, ready to add to a server.
pub fn service(counters: Arc<Counters>) -> CounterServer<CounterService> {
    CounterServer::new(CounterService(counters))
}

/// `outrigger.v1.Counter`.
pub struct CounterService(pub Arc<Counters>);

fn reply(c: CounterValue) -> pb::CounterValue {
    pb::CounterValue {
        value: c.value,
        exists: c.exists,
        ttl_ms: c.ttl.map(|t| t.as_millis() as u64),
    }
}

#[tonic::async_trait]
impl Api for CounterService {
    async fn increment(
        &self,
        req: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::CounterValue>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let inc = IncrementRequest {
            by: req.by,
            ttl_ms: req.ttl_ms,
            min: req.min,
            max: req.max,
        };
        let value = self.0.increment_for(&caller, req.name, inc).await?;
        Ok(Response::new(reply(value)))
    }

    async fn get(
        &self,
        req: Request<pb::GetCounterRequest>,
    ) -> Result<Response<pb::CounterValue>, Status> {
        let caller = caller(self.0.common(), &req);
        let value = self.0.get_for(&caller, req.into_inner().name).await?;
        Ok(Response::new(reply(value)))
    }

    async fn reset(
        &self,
        req: Request<pb::ResetCounterRequest>,
    ) -> Result<Response<pb::ResetCounterResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let existed = self.0.reset_for(&caller, req.into_inner().name).await?;
        Ok(Response::new(pb::ResetCounterResponse { existed }))
    }
}
