//! The gRPC service of ratelimit (`outrigger.v1.RateLimit`): wire types in,
//! primitive calls, wire types out.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::store::Decision;
use super::{InlineLimit, RateLimits};
use crate::kit::Primitive;
use crate::kit::ceil_ms;
use crate::kit::grpc::pb::rate_limit_server::{RateLimit as Api, RateLimitServer};
use crate::kit::grpc::{caller, pb};
use crate::plugins::Classified;

/// The service, ready to add to a server.
pub fn service(ratelimits: Arc<RateLimits>) -> RateLimitServer<RateLimitService> {
    RateLimitServer::new(RateLimitService(ratelimits))
}

/// `outrigger.v1.RateLimit`.
pub struct RateLimitService(pub Arc<RateLimits>);

fn check_response(d: Decision) -> pb::CheckResponse {
    pb::CheckResponse {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_after_ms: ceil_ms(d.reset_after),
        retry_after_ms: d.retry_after.map_or(0, ceil_ms),
    }
}

#[tonic::async_trait]
impl Api for RateLimitService {
    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let (check, inline) = wire_check(req.into_inner());
        let decision = self.0.check_for(&caller, check, inline).await?;
        Ok(Response::new(check_response(decision)))
    }

    async fn peek(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let (check, inline) = wire_check(req.into_inner());
        let decision = self.0.peek_for(&caller, check, inline).await?;
        Ok(Response::new(check_response(decision)))
    }

    async fn check_all(
        &self,
        req: Request<pb::CheckAllRequest>,
    ) -> Result<Response<pb::CheckAllResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let checks = req
            .into_inner()
            .checks
            .into_iter()
            .map(wire_check)
            .collect();
        let decisions = self.0.check_all_for(&caller, checks).await?;
        Ok(Response::new(pb::CheckAllResponse {
            allowed: decisions.iter().all(|d| d.allowed),
            decisions: decisions.into_iter().map(check_response).collect(),
        }))
    }

    async fn reset(
        &self,
        req: Request<pb::ResetLimitRequest>,
    ) -> Result<Response<pb::ResetLimitResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let existed = self.0.reset_for(&caller, &req.policy, req.key).await?;
        Ok(Response::new(pb::ResetLimitResponse { existed }))
    }
}

/// A check request's terms.
fn wire_check(req: pb::CheckRequest) -> (Classified, Option<InlineLimit>) {
    let inline = req.inline.map(|l| InlineLimit {
        algorithm: l.algorithm,
        limit: l.limit,
        period_ms: l.period_ms,
        burst: l.burst,
    });
    let check = Classified {
        policy: req.policy,
        key: req.key,
        cost: req.cost,
    };
    (check, inline)
}
