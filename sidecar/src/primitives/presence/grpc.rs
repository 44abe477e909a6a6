//! The gRPC service of presence (`outrigger.v1.Presence`): wire types in,
//! primitive calls, wire types out.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::Presence;
use super::store::PresenceKind;
use crate::backend::FeedItem;
use crate::kit::Primitive;
use crate::kit::ceil_ms;
use crate::kit::grpc::pb::presence_server::{Presence as Api, PresenceServer};
use crate::kit::grpc::{EventStream, caller, pb};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// The service, ready to add to a server.
pub fn service(presence: Arc<Presence>) -> PresenceServer<PresenceService> {
    PresenceServer::new(PresenceService(presence))
}

/// `outrigger.v1.Presence`.
pub struct PresenceService(pub Arc<Presence>);

#[tonic::async_trait]
impl Api for PresenceService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.room = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Join, req.room)
                .member(&req.member)
                .value_size(req.metadata.len()),
        )?;
        let joined = self
            .0
            .join(&req.room, &req.member, req.metadata, req.ttl_ms)
            .await?;
        Ok(Response::new(pb::JoinResponse { joined }))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.room = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Leave, req.room).member(&req.member),
        )?;
        let left = self.0.leave(&req.room, &req.member).await?;
        Ok(Response::new(pb::LeaveResponse { left }))
    }

    async fn list(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.room = self
            .0
            .authorize(&caller, Call::new(P::Presence, Op::Members, req.room))?;
        let page = self
            .0
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
        let caller = caller(self.0.common(), &req);
        let member = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Rooms, req.into_inner().member),
        )?;
        let rooms = self.0.rooms(&member).await?;
        Ok(Response::new(pb::RoomsResponse { rooms }))
    }

    type WatchStream = EventStream<pb::PresenceEvent>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller(self.0.common(), &req);
        let room = self.0.authorize(
            &caller,
            Call::new(P::Presence, Op::Watch, req.into_inner().room),
        )?;
        let feed = self.0.watch(&room).await?;
        let draining = self.0.common().draining();
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
