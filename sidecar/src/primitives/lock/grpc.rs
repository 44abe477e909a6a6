//! The gRPC service of lock (`outrigger.v1.Lock`): wire types in,
//! primitive calls, wire types out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{KeepAlive, Locks};
use crate::kit::Primitive;
use crate::kit::grpc::pb::hold_response::Event;
use crate::kit::grpc::pb::lock_server::{Lock as Api, LockServer};
use crate::kit::grpc::{caller, pb};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};
use std::pin::Pin;
use tokio_stream::Stream;

/// The service, ready to add to a server.
pub fn service(locks: Arc<Locks>) -> LockServer<LockService> {
    LockServer::new(LockService(locks))
}

/// `outrigger.v1.Lock`.
pub struct LockService(pub Arc<Locks>);

type HoldStream = Pin<Box<dyn Stream<Item = Result<pb::HoldResponse, Status>> + Send>>;

fn hold_event(event: Event) -> pb::HoldResponse {
    pb::HoldResponse {
        event: event.into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Api for LockService {
    async fn acquire(
        &self,
        req: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Lock, Op::Acquire, req.name))?;
        let lease = self.0.acquire(&req.name, req.ttl_ms, req.wait_ms).await?;
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
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Lock, Op::Release, req.name))?;
        let released = self.0.release(&req.name, &req.token).await?;
        Ok(Response::new(pb::ReleaseResponse { released }))
    }

    async fn extend(
        &self,
        req: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Lock, Op::Extend, req.name))?;
        let extended = self.0.extend(&req.name, &req.token, req.ttl_ms).await?;
        Ok(Response::new(pb::ExtendResponse { extended }))
    }

    type HoldStream = HoldStream;

    async fn hold(
        &self,
        req: Request<Streaming<pb::HoldRequest>>,
    ) -> Result<Response<HoldStream>, Status> {
        let caller = caller(self.0.common(), &req);
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
        let lease = app.acquire(&name, acquire.ttl_ms, acquire.wait_ms).await?;
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
            let _ = app.release(&name, &lease.token).await;
            return Err(Status::cancelled("the client went away"));
        }
        let ttl = Duration::from_millis(acquire.ttl_ms);
        tokio::spawn(async move {
            let mut asked_to_release = false;
            let draining = app.common().draining();
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
            match app.keep_alive(&name, &lease, ttl, stop).await {
                KeepAlive::Stopped => {
                    let released = app.release(&name, &lease.token).await;
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
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Semaphore, Op::Acquire, req.name))?;
        let token = self
            .0
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
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.name = self
            .0
            .authorize(&caller, Call::new(P::Semaphore, Op::Release, req.name))?;
        let released = self.0.release_permit(&req.name, &req.token).await?;
        Ok(Response::new(pb::ReleasePermitResponse { released }))
    }
}
