//! The gRPC API (tonic): every primitive's service (each in its folder,
//! `primitives/<name>/grpc.rs`) and `outrigger.v1.Admin`, plus
//! `grpc.health.v1.Health` and server reflection.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::app::App;
use crate::kit::grpc::pb;
use crate::kit::unix_ms;
use crate::primitives::{cache, counter, lock, map, presence, pubsub, queue, ratelimit};

use pb::admin_server::{Admin, AdminServer};

/// Largest gRPC message accepted: room for the biggest value plus the
/// request around it, so an oversized value gets our own clear error.
fn max_message_bytes(app: &App) -> usize {
    app.cache.limits().max_value_bytes + 1024 * 1024
}

/// The gRPC services, health and reflection, ready to serve. Every service
/// is added through [`Services::add`], which also marks it `SERVING` in
/// health: the one list cannot drift from the other.
pub async fn routes(app: Arc<App>) -> anyhow::Result<tonic::service::Routes> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let max = max_message_bytes(&app);
    let mut services = Services {
        routes: tonic::service::Routes::builder(),
        health,
    };
    services.add(health_service).await;
    services.add(reflection_v1).await;
    services.add(reflection_v1alpha).await;
    services
        .add(cache::grpc::service(app.cache.clone()).max_decoding_message_size(max))
        .await;
    services.add(lock::grpc::service(app.locks.clone())).await;
    services
        .add(ratelimit::grpc::service(app.ratelimits.clone()))
        .await;
    services
        .add(presence::grpc::service(app.presence.clone()).max_decoding_message_size(max))
        .await;
    services
        .add(pubsub::grpc::service(app.pubsub.clone()).max_decoding_message_size(max))
        .await;
    services
        .add(counter::grpc::service(app.counters.clone()))
        .await;
    services
        .add(map::grpc::service(app.maps.clone()).max_decoding_message_size(max))
        .await;
    services
        .add(queue::grpc::service(app.queues.clone()).max_decoding_message_size(max))
        .await;
    services.add(AdminServer::new(AdminService(app))).await;
    Ok(services.routes.routes())
}

/// The services being assembled, and their health.
struct Services {
    routes: tonic::service::RoutesBuilder,
    health: tonic_health::server::HealthReporter,
}

impl Services {
    /// Serves `service` and reports it `SERVING`.
    async fn add<S>(&mut self, service: S)
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.health
            .set_service_status(S::NAME, tonic_health::ServingStatus::Serving)
            .await;
        self.routes.add_service(service);
    }
}

/// Statuses the transport makes, in our contract's terms (a response
/// layer):
/// - tonic rejects a message over the decoding limit with `OUT_OF_RANGE`;
///   an oversized request is `RESOURCE_EXHAUSTED`, whether our own limit
///   or the transport's caught it;
/// - a request body that is not a valid protobuf message of the method's
///   type comes back from tonic as `INTERNAL`; it is the caller's error:
///   `INVALID_ARGUMENT`, saying what did not decode.
pub fn oversized_as_resource_exhausted(
    resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let internal = resp.headers().get("grpc-status").is_some_and(|v| v == "13");
    if internal
        && let Some(status) = Status::from_header_map(resp.headers())
        && status
            .message()
            .starts_with("failed to decode Protobuf message")
    {
        return Status::invalid_argument(format!(
            "the request is not a valid message for this method: {}",
            status.message()
        ))
        .into_http();
    }
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

fn plugin_pb(p: crate::plugins::PluginStatus) -> pb::Plugin {
    pb::Plugin {
        name: p.name,
        path: p.path.display().to_string(),
        healthy: p.healthy,
        reason: p.reason.unwrap_or_default(),
        hooks: p.hooks.into_iter().map(str::to_string).collect(),
        fail: p.fail.as_str().into(),
        generation: p.generation,
        reload_error: p.reload_error.unwrap_or_default(),
        world: p.world.unwrap_or_default().into(),
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
                near: s.cache.near.map(|n| pb::NearCacheStats {
                    live: n.live,
                    entries: n.entries,
                    bytes: n.bytes,
                    hits: n.hits,
                    fills: n.fills,
                    raced: n.raced,
                    invalidations: n.invalidations,
                    flushes: n.flushes,
                }),
            }),
            failover: s.failover.map(|f| pb::Failover {
                mode: f.mode.to_string(),
                since_unix_ms: unix_ms(f.since),
                transitions: f.transitions,
                last_error: f.last_error.unwrap_or_default(),
                last_reconciliation: f.reconciliation.at.map(|at| pb::Reconciliation {
                    at_unix_ms: unix_ms(at),
                    cache_entries_dropped: f.reconciliation.cache_entries_dropped,
                    locks_released: f.reconciliation.locks_released,
                    members_reasserted: f.reconciliation.members_reasserted,
                    members_lost: f.reconciliation.members_lost,
                    messages_flushed: f.reconciliation.messages_flushed,
                    messages_dropped: f.reconciliation.messages_dropped,
                    flushing: f.reconciliation.flushing,
                    map_changes_replayed: f.reconciliation.map_changes_replayed,
                }),
                evicts: f
                    .maxmemory_policy
                    .as_deref()
                    .is_some_and(crate::backend::redis::evicts),
                maxmemory_policy: f.maxmemory_policy.unwrap_or_default(),
            }),
            plugins: s.plugins.into_iter().map(plugin_pb).collect(),
        }))
    }

    async fn reload_plugins(
        &self,
        _: Request<pb::ReloadPluginsRequest>,
    ) -> Result<Response<pb::ReloadPluginsResponse>, Status> {
        let plugins = self.0.plugins.reload(true).await?;
        Ok(Response::new(pb::ReloadPluginsResponse {
            plugins: plugins.into_iter().map(plugin_pb).collect(),
        }))
    }
}
