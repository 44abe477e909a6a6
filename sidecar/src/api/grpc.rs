//! The gRPC API (tonic): `outrigger.v1.Cache` and `outrigger.v1.Admin`, plus
//! `grpc.health.v1.Health` and server reflection. Wire types stop here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::app::App;
use crate::backend::{Condition, Entry};
use crate::cache::{Invalidation, SetRequest};
use crate::error::Error;

/// Code generated from `proto/outrigger/v1/*.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("outrigger.v1");

    /// Encoded descriptors of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/outrigger_descriptor.bin"));
}

use pb::admin_server::{Admin, AdminServer};
use pb::cache_server::{Cache, CacheServer};

/// Largest gRPC message accepted: room for the biggest value plus the
/// request around it, so an oversized value gets our own clear error.
fn max_message_bytes(app: &App) -> usize {
    app.cache.limits().max_value_bytes + 1024 * 1024
}

/// The gRPC services, health and reflection, ready to serve.
pub async fn routes(app: Arc<App>) -> anyhow::Result<tonic::service::Routes> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServer<CacheService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let max = max_message_bytes(&app);
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CacheServer::new(CacheService(app.clone())).max_decoding_message_size(max))
        .add_service(AdminServer::new(AdminService(app)));
    Ok(routes.routes())
}

/// Tonic rejects a message over the decoding limit with `OUT_OF_RANGE`;
/// our contract says an oversized request is `RESOURCE_EXHAUSTED`, whether
/// our own limit or the transport's caught it. Applied as a response layer.
pub fn oversized_as_resource_exhausted(
    resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let out_of_range = resp.headers().get("grpc-status").is_some_and(|v| v == "11");
    let too_large = resp
        .headers()
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("message%20length%20too%20large"));
    if out_of_range && too_large {
        return Status::resource_exhausted(
            "request message is over the size limit (limits.max_value_bytes + 1 MiB)",
        )
        .into_http();
    }
    resp
}

/// `outrigger.v1.Cache`.
pub struct CacheService(Arc<App>);

fn ttl_ms(entry: &Entry) -> Option<u64> {
    entry.ttl.map(|t| t.as_millis() as u64)
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let entry = self.0.cache.get(&req.key, req.refresh_ttl).await?;
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
        let keys = req.into_inner().keys;
        let entries = self.0.cache.get_many(&keys).await?;
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
            .cache
            .set(SetRequest {
                key: req.key,
                value: req.value,
                ttl_ms: req.ttl_ms,
                tags: req.tags,
                condition,
            })
            .await?;
        Ok(Response::new(pb::SetResponse { version }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let deleted = self.0.cache.delete(&req.into_inner().key).await?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn invalidate_tags(
        &self,
        req: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let tags = req.into_inner().tags;
        let deleted = self.0.cache.invalidate(Invalidation::Tags(tags)).await?;
        Ok(Response::new(pb::InvalidateResponse { deleted }))
    }

    async fn invalidate_pattern(
        &self,
        req: Request<pb::InvalidatePatternRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let pattern = req.into_inner().pattern;
        let deleted = self
            .0
            .cache
            .invalidate(Invalidation::Pattern(pattern))
            .await?;
        Ok(Response::new(pb::InvalidateResponse { deleted }))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let req = req.into_inner();
        let page = self
            .0
            .cache
            .list_keys(&req.pattern, &req.cursor, req.limit as usize)
            .await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: page.keys,
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }
}

/// `outrigger.v1.Admin`.
pub struct AdminService(Arc<App>);

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.0.status();
        Ok(Response::new(pb::StatusResponse {
            version: s.version.to_string(),
            namespace: s.namespace,
            backend: s.backend.to_string(),
            uptime_ms: s.uptime.as_millis() as u64,
            cache: Some(pb::CacheStats {
                hits: s.cache.hits,
                misses: s.cache.misses,
                keys: s.cache.keys,
                bytes: s.cache.bytes,
                evictions: s.cache.evictions,
            }),
        }))
    }
}
