//! The gRPC service of cache (`outrigger.v1.Cache`): wire types in,
//! primitive calls, wire types out.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::store::{Condition, Entry};
use super::{Cache, Invalidation, LeaseAsk, Leased, SetRequest};
use crate::error::Error;
use crate::kit::Primitive;
use crate::kit::grpc::pb::cache_server::{Cache as Api, CacheServer};
use crate::kit::grpc::{caller, pb};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// The service, ready to add to a server.
pub fn service(cache: Arc<Cache>) -> CacheServer<CacheService> {
    CacheServer::new(CacheService(cache))
}

/// `outrigger.v1.Cache`.
pub struct CacheService(pub Arc<Cache>);

fn ttl_ms(entry: &Entry) -> Option<u64> {
    entry.ttl.map(|t| t.as_millis() as u64)
}

#[tonic::async_trait]
impl Api for CacheService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let (_, entry) = self.0.get_for(&caller, req.key, req.refresh_ttl).await?;
        Ok(Response::new(match entry {
            Some(e) => pb::GetResponse {
                found: true,
                ttl_ms: ttl_ms(&e),
                version: e.version,
                value: e.value,
            },
            None => pb::GetResponse::default(),
        }))
    }

    async fn get_many(
        &self,
        req: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let keys = req.into_inner().keys;
        let entries = self.0.get_many_for(&caller, &keys).await?;
        let entries = keys
            .into_iter()
            .zip(entries)
            .map(|(key, entry)| match entry {
                Some(e) => pb::GetManyEntry {
                    key,
                    found: true,
                    ttl_ms: ttl_ms(&e),
                    version: e.version,
                    value: e.value,
                },
                None => pb::GetManyEntry {
                    key,
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::GetManyResponse { entries }))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let condition = match pb::Condition::try_from(req.condition) {
            Ok(pb::Condition::None) => Condition::None,
            Ok(pb::Condition::IfAbsent) => Condition::IfAbsent,
            Ok(pb::Condition::IfPresent) => Condition::IfPresent,
            Ok(pb::Condition::IfVersion) => Condition::IfVersion(req.expected_version),
            Err(_) => {
                return Err(
                    Error::InvalidArgument(format!("unknown condition {}", req.condition)).into(),
                );
            }
        };
        let version = self
            .0
            .set_for(
                &caller,
                SetRequest {
                    key: req.key,
                    value: req.value,
                    ttl_ms: req.ttl_ms,
                    tags: req.tags,
                    condition,
                    stale_ms: req.stale_ms,
                },
            )
            .await?;
        Ok(Response::new(pb::SetResponse { version }))
    }

    async fn get_or_lease(
        &self,
        req: Request<pb::GetOrLeaseRequest>,
    ) -> Result<Response<pb::GetOrLeaseResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let leased = self
            .0
            .get_or_lease_for(
                &caller,
                LeaseAsk {
                    key: req.key,
                    lease_ms: req.lease_ms,
                    wait_ms: req.wait_ms,
                    accept_stale: req.accept_stale,
                },
            )
            .await?;
        let (outcome, entry) = match leased {
            Leased::Hit(e) => (pb::LeaseOutcome::Hit, Some(e)),
            Leased::Stale(e) => (pb::LeaseOutcome::Stale, Some(e)),
            Leased::Granted(stale) => (pb::LeaseOutcome::Granted, stale),
        };
        let mut reply = pb::GetOrLeaseResponse {
            outcome: outcome as i32,
            ..Default::default()
        };
        if let Some(e) = entry {
            reply.found = true;
            reply.ttl_ms = ttl_ms(&e);
            reply.version = e.version;
            reply.value = e.value;
        }
        Ok(Response::new(reply))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let deleted = self.0.delete_for(&caller, req.into_inner().key).await?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn invalidate_tags(
        &self,
        req: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let tags = req
            .into_inner()
            .tags
            .into_iter()
            .map(|tag| {
                self.0
                    .authorize(&caller, Call::new(P::Cache, Op::InvalidateTag, tag))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = self.0.invalidate(Invalidation::Tags(tags)).await?;
        Ok(Response::new(pb::InvalidateResponse { deleted }))
    }

    async fn invalidate_pattern(
        &self,
        req: Request<pb::InvalidatePatternRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let pattern = self.0.authorize(
            &caller,
            Call::new(P::Cache, Op::InvalidatePattern, req.into_inner().pattern),
        )?;
        let deleted = self.0.invalidate(Invalidation::Pattern(pattern)).await?;
        Ok(Response::new(pb::InvalidateResponse { deleted }))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.pattern = self
            .0
            .authorize(&caller, Call::new(P::Cache, Op::Scan, req.pattern))?;
        let page = self
            .0
            .list_keys(&req.pattern, &req.cursor, req.limit as usize)
            .await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: page.keys,
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }
}
