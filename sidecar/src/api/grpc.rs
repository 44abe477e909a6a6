//! The gRPC API (tonic): `outrigger.v1.Cache`, `Lock`, `RateLimit` and
//! `Admin`, plus `grpc.health.v1.Health` and server reflection. Wire types
//! stop here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ceil_ms, unix_ms};
use crate::app::App;
use crate::backend::FeedItem;
use crate::error::Error;
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Caller, Classified, Operation as Op};
use crate::primitives::cache::store::{Condition, Entry};
use crate::primitives::cache::{Invalidation, LeaseAsk, Leased, SetRequest};
use crate::primitives::lock::KeepAlive;
use crate::primitives::presence::store::PresenceKind;
use crate::primitives::ratelimit::InlineLimit;
use crate::primitives::ratelimit::store::Decision;

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
use pb::hold_response::Event;
use pb::lock_server::{Lock, LockServer};
use pb::presence_server::{Presence, PresenceServer};
use pb::pub_sub_server::{PubSub, PubSubServer};
use pb::rate_limit_server::{RateLimit, RateLimitServer};

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
        .add(CacheServer::new(CacheService(app.clone())).max_decoding_message_size(max))
        .await;
    services
        .add(LockServer::new(LockService(app.clone())))
        .await;
    services
        .add(RateLimitServer::new(RateLimitService(app.clone())))
        .await;
    services
        .add(PresenceServer::new(PresenceService(app.clone())).max_decoding_message_size(max))
        .await;
    services
        .add(PubSubServer::new(PubSubService(app.clone())).max_decoding_message_size(max))
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

/// Who the application says is calling (`x-outrigger-caller` and
/// `x-outrigger-attr-*` metadata), for plugins; nothing without plugins.
fn caller<T>(app: &App, req: &Request<T>) -> Caller {
    if app.plugins.is_empty() {
        return Caller::default();
    }
    Caller::from_pairs(req.metadata().iter().filter_map(|entry| match entry {
        tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
            Some((key.as_str(), value.as_bytes()))
        }
        tonic::metadata::KeyAndValueRef::Binary(..) => None,
    }))
}

/// `outrigger.v1.Cache`.
pub struct CacheService(Arc<App>);

fn ttl_ms(entry: &Entry) -> Option<u64> {
    entry.ttl.map(|t| t.as_millis() as u64)
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let caller = caller(&self.0, &req);
        let req = req.into_inner();
        let key = self
            .0
            .authorize(&caller, Call::new(P::Cache, Op::Read, req.key))?;
        let entry = self.0.cache.get(&key, req.refresh_ttl).await?;
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
        let caller = caller(&self.0, &req);
        let keys = req.into_inner().keys;
        let targets = keys
            .iter()
            .map(|key| {
                self.0
                    .authorize(&caller, Call::new(P::Cache, Op::Read, key.as_str()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let entries = self.0.cache.get_many(&targets).await?;
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
        let caller = caller(&self.0, &req);
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
            .cache_set(
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
        let caller = caller(&self.0, &req);
        let req = req.into_inner();
        let key = self
            .0
            .authorize(&caller, Call::new(P::Cache, Op::Read, req.key))?;
        let leased = self
            .0
            .cache
            .get_or_lease(LeaseAsk {
                key,
                lease_ms: req.lease_ms,
                wait_ms: req.wait_ms,
                accept_stale: req.accept_stale,
            })
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
        let caller = caller(&self.0, &req);
        let deleted = self.0.cache_delete(&caller, req.into_inner().key).await?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn invalidate_tags(
        &self,
        req: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let caller = caller(&self.0, &req);
        let tags = req
            .into_inner()
            .tags
            .into_iter()
            .map(|tag| {
                self.0
                    .authorize(&caller, Call::new(P::Cache, Op::InvalidateTag, tag))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = self.0.cache.invalidate(Invalidation::Tags(tags)).await?;
        Ok(Response::new(pb::InvalidateResponse { deleted }))
    }

    async fn invalidate_pattern(
        &self,
        req: Request<pb::InvalidatePatternRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let caller = caller(&self.0, &req);
        let pattern = self.0.authorize(
            &caller,
            Call::new(P::Cache, Op::InvalidatePattern, req.into_inner().pattern),
        )?;
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
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.pattern = self
            .0
            .authorize(&caller, Call::new(P::Cache, Op::Scan, req.pattern))?;
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
                }),
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

/// `outrigger.v1.Lock`.
pub struct LockService(Arc<App>);

type HoldStream = Pin<Box<dyn Stream<Item = Result<pb::HoldResponse, Status>> + Send>>;

fn hold_event(event: Event) -> pb::HoldResponse {
    pb::HoldResponse {
        event: event.into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn acquire(
        &self,
        req: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Lock, Op::Acquire, req.name))?;
        let lease = self
            .0
            .locks
            .acquire(&req.name, req.ttl_ms, req.wait_ms)
            .await?;
        Ok(Response::new(match lease {
            Some(lease) => pb::AcquireResponse {
                acquired: true,
                token: lease.token,
                fence: lease.fence,
            },
            None => pb::AcquireResponse::default(),
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Lock, Op::Release, req.name))?;
        let released = self.0.locks.release(&req.name, &req.token).await?;
        Ok(Response::new(pb::ReleaseResponse { released }))
    }

    async fn extend(
        &self,
        req: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Lock, Op::Extend, req.name))?;
        let extended = self
            .0
            .locks
            .extend(&req.name, &req.token, req.ttl_ms)
            .await?;
        Ok(Response::new(pb::ExtendResponse { extended }))
    }

    type HoldStream = HoldStream;

    async fn hold(
        &self,
        req: Request<Streaming<pb::HoldRequest>>,
    ) -> Result<Response<HoldStream>, Status> {
        let caller = caller(&self.0, &req);
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .and_then(|m| m.action)
            .ok_or_else(|| Status::invalid_argument("the first message must be `acquire`"))?;
        let pb::hold_request::Action::Acquire(acquire) = first else {
            return Err(Status::invalid_argument(
                "the first message must be `acquire`",
            ));
        };
        let app = self.0.clone();
        let name = app.authorize(&caller, Call::new(P::Lock, Op::Acquire, acquire.name))?;
        let lease = app
            .locks
            .acquire(&name, acquire.ttl_ms, acquire.wait_ms)
            .await?;
        let (tx, rx) = mpsc::channel(4);
        let Some(lease) = lease else {
            let _ = tx.send(Ok(hold_event(Event::NotAcquired))).await;
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        };
        let acquired = pb::HoldResponse {
            event: Event::Acquired.into(),
            token: lease.token.clone(),
            fence: lease.fence,
            reason: String::new(),
        };
        if tx.send(Ok(acquired)).await.is_err() {
            // The client left while we waited for the lock.
            let _ = app.locks.release(&name, &lease.token).await;
            return Err(Status::cancelled("the client went away"));
        }
        let ttl = Duration::from_millis(acquire.ttl_ms);
        tokio::spawn(async move {
            let mut asked_to_release = false;
            let draining = app.draining();
            let stop = async {
                tokio::select! {
                    () = async {
                        // Ends on `release`, on end of stream, or on error
                        // (the client went away).
                        while let Ok(Some(msg)) = inbound.message().await {
                            if matches!(msg.action, Some(pb::hold_request::Action::Release(true))) {
                                asked_to_release = true;
                                return;
                            }
                        }
                    } => {}
                    () = tx.closed() => {}
                    () = draining => {}
                }
            };
            match app.locks.keep_alive(&name, &lease, ttl, stop).await {
                KeepAlive::Stopped => {
                    let released = app.locks.release(&name, &lease.token).await;
                    let event = match released {
                        Ok(true) if asked_to_release => hold_event(Event::Released),
                        Ok(true) => pb::HoldResponse {
                            event: Event::Lost.into(),
                            reason: "the sidecar is shutting down; the lock was released".into(),
                            ..Default::default()
                        },
                        Ok(false) => pb::HoldResponse {
                            event: Event::Lost.into(),
                            reason: "the lock had expired or been taken".into(),
                            ..Default::default()
                        },
                        Err(err) => {
                            tracing::warn!(%name, error = %err, "releasing a held lock failed; it expires with its lease");
                            pb::HoldResponse {
                                event: Event::Lost.into(),
                                reason: "release failed; the lock expires with its lease".into(),
                                ..Default::default()
                            }
                        }
                    };
                    // Nobody may be listening any more: that is fine.
                    let _ = tx.send(Ok(event)).await;
                }
                KeepAlive::Lost(reason) => {
                    tracing::warn!(%name, %reason, "held lock lost");
                    let _ = tx
                        .send(Ok(pb::HoldResponse {
                            event: Event::Lost.into(),
                            reason,
                            ..Default::default()
                        }))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acquire_permit(
        &self,
        req: Request<pb::AcquirePermitRequest>,
    ) -> Result<Response<pb::AcquirePermitResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Semaphore, Op::Acquire, req.name))?;
        let token = self
            .0
            .locks
            .acquire_permit(&req.name, req.limit, req.ttl_ms, req.wait_ms)
            .await?;
        Ok(Response::new(pb::AcquirePermitResponse {
            acquired: token.is_some(),
            token: token.unwrap_or_default(),
        }))
    }

    async fn release_permit(
        &self,
        req: Request<pb::ReleasePermitRequest>,
    ) -> Result<Response<pb::ReleasePermitResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Semaphore, Op::Release, req.name))?;
        let released = self.0.locks.release_permit(&req.name, &req.token).await?;
        Ok(Response::new(pb::ReleasePermitResponse { released }))
    }
}

/// `outrigger.v1.RateLimit`.
pub struct RateLimitService(Arc<App>);

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
impl RateLimit for RateLimitService {
    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(&self.0, &req);
        let req = req.into_inner();
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
        let decision = self.0.ratelimit_check(&caller, check, inline).await?;
        Ok(Response::new(check_response(decision)))
    }
}

/// `outrigger.v1.Presence`.
pub struct PresenceService(Arc<App>);

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Presence for PresenceService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.room = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Join, req.room)
                .member(&req.member)
                .value_size(req.metadata.len()),
        )?;
        let joined = self
            .0
            .presence
            .join(&req.room, &req.member, req.metadata, req.ttl_ms)
            .await?;
        Ok(Response::new(pb::JoinResponse { joined }))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.room = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Leave, req.room).member(&req.member),
        )?;
        let left = self.0.presence.leave(&req.room, &req.member).await?;
        Ok(Response::new(pb::LeaveResponse { left }))
    }

    async fn list(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.room = self
            .0
            .authorize(&caller, Call::new(P::Presence, Op::Members, req.room))?;
        let page = self
            .0
            .presence
            .list(&req.room, &req.cursor, req.limit as usize)
            .await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: page
                .members
                .into_iter()
                .map(|m| pb::Member {
                    member: m.member,
                    metadata: m.metadata,
                    ttl_ms: ceil_ms(m.ttl),
                })
                .collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn rooms(
        &self,
        req: Request<pb::RoomsRequest>,
    ) -> Result<Response<pb::RoomsResponse>, Status> {
        let caller = caller(&self.0, &req);
        let member = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Rooms, req.into_inner().member),
        )?;
        let rooms = self.0.presence.rooms(&member).await?;
        Ok(Response::new(pb::RoomsResponse { rooms }))
    }

    type WatchStream = EventStream<pb::PresenceEvent>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller(&self.0, &req);
        let room = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Watch, req.into_inner().room),
        )?;
        let feed = self.0.presence.watch(&room).await?;
        let draining = self.0.draining();
        let events = feed.map(|item| {
            Ok(match item {
                FeedItem::Item(e) => pb::PresenceEvent {
                    kind: match e.kind {
                        PresenceKind::Join => pb::presence_event::Kind::Join,
                        PresenceKind::Leave => pb::presence_event::Kind::Leave,
                        PresenceKind::Timeout => pb::presence_event::Kind::Timeout,
                    }
                    .into(),
                    room: e.room,
                    member: e.member,
                    metadata: e.metadata,
                    missed: 0,
                },
                FeedItem::Lagged(missed) => pb::PresenceEvent {
                    kind: pb::presence_event::Kind::Lagged.into(),
                    missed,
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(events.take_until(draining))))
    }
}

/// `outrigger.v1.PubSub`.
pub struct PubSubService(Arc<App>);

#[tonic::async_trait]
impl PubSub for PubSubService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        req.channel = self.0.authorize(
            &caller,
            Call::new(P::Pubsub, Op::Publish, req.channel).value_size(req.payload.len()),
        )?;
        let offset = self
            .0
            .pubsub
            .publish(
                &req.channel,
                req.payload,
                req.headers.into_iter().collect(),
                req.durable,
            )
            .await?;
        Ok(Response::new(pb::PublishResponse {
            offset: offset.map(|o| o.to_string()).unwrap_or_default(),
        }))
    }

    type SubscribeStream = EventStream<pb::SubscribeEvent>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller(&self.0, &req);
        let mut req = req.into_inner();
        for (names, op) in [
            (&mut req.channels, Op::Subscribe),
            (&mut req.patterns, Op::SubscribePattern),
        ] {
            for name in names.iter_mut() {
                *name = self
                    .0
                    .authorize(&caller, Call::new(P::Pubsub, op, std::mem::take(name)))?;
            }
        }
        let from = match req.from_offset.as_str() {
            "" => None,
            o => Some(o.parse().map_err(|()| {
                Status::invalid_argument(format!(
                    "from_offset {o:?} is not an offset like 1700000000000-0"
                ))
            })?),
        };
        let subscription = self
            .0
            .pubsub
            .subscribe(req.channels, req.patterns, from)
            .await?;
        let draining = self.0.draining();
        let events = subscription.map(|item| {
            let event = match item? {
                FeedItem::Item(m) => pb::subscribe_event::Event::Message(pb::Message {
                    channel: m.channel.clone(),
                    payload: m.payload.clone(),
                    headers: m.headers.clone().into_iter().collect(),
                    offset: m.offset.map(|o| o.to_string()).unwrap_or_default(),
                }),
                FeedItem::Lagged(missed) => {
                    pb::subscribe_event::Event::Lagged(pb::Lagged { missed })
                }
            };
            Ok(pb::SubscribeEvent { event: Some(event) })
        });
        Ok(Response::new(Box::pin(events.take_until(draining))))
    }
}
