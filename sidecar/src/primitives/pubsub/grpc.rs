//! The gRPC service of pubsub (`outrigger.v1.PubSub`): wire types in,
//! primitive calls, wire types out.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::PubSub;
use crate::backend::FeedItem;
use crate::kit::Primitive;
use crate::kit::grpc::pb::pub_sub_server::{PubSub as Api, PubSubServer};
use crate::kit::grpc::{EventStream, caller, pb};
use crate::plugins::config::PrimitiveName as P;
use crate::plugins::{Call, Operation as Op};

/// The service, ready to add to a server.
pub fn service(pubsub: Arc<PubSub>) -> PubSubServer<PubSubService> {
    PubSubServer::new(PubSubService(pubsub))
}

/// `outrigger.v1.PubSub`.
pub struct PubSubService(pub Arc<PubSub>);

#[tonic::async_trait]
impl Api for PubSubService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let mut req = req.into_inner();
        req.channel = self.0.authorize(
            &caller,
            Call::new(P::Pubsub, Op::Publish, req.channel).value_size(req.payload.len()),
        )?;
        let offset = self
            .0
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
        let caller = caller(self.0.common(), &req);
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
        let subscription = self.0.subscribe(req.channels, req.patterns, from).await?;
        let draining = self.0.common().draining();
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
