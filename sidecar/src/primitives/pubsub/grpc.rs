//! The gRPC service of pubsub (`outrigger.v1.PubSub`): wire types in,
//! primitive calls, wire types out.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::store::{Offset, PubMessage};
use super::{Delivery, HistoryQuery, PubSub, PublishOptions, ResumeFrom};
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
        let options = PublishOptions {
            durable: req.durable,
            idempotency_key: (!req.idempotency_key.is_empty()).then_some(req.idempotency_key),
            max_len: (req.max_len > 0).then_some(req.max_len as usize),
            max_age: (req.max_age_ms > 0).then(|| std::time::Duration::from_millis(req.max_age_ms)),
        };
        let published = self
            .0
            .publish_for(
                &caller,
                &req.channel,
                req.payload,
                req.headers.into_iter().collect(),
                options,
            )
            .await?;
        Ok(Response::new(pb::PublishResponse {
            offset: published.offset.map(|o| o.to_string()).unwrap_or_default(),
            epoch: published.epoch.unwrap_or_default(),
            duplicate: published.duplicate,
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
        if req.from_offset.is_empty() && !req.epoch.is_empty() {
            return Err(Status::invalid_argument(
                "epoch names the epoch of a from_offset: give both",
            ));
        }
        let from = offset("from_offset", &req.from_offset)?.map(|offset| ResumeFrom {
            offset,
            epoch: (!req.epoch.is_empty()).then_some(req.epoch),
        });
        let subscription = self
            .0
            .subscribe_for(&caller, req.channels, req.patterns, from)
            .await?;
        let draining = self.0.common().draining();
        let events = subscription.map(|item| {
            let event = match item? {
                Delivery::Message(m) => pb::subscribe_event::Event::Message(message(&m)),
                Delivery::Lagged(missed) => {
                    pb::subscribe_event::Event::Lagged(pb::Lagged { missed })
                }
                Delivery::Replayed(last) => pb::subscribe_event::Event::Replayed(pb::Replayed {
                    offset: last.map(|o| o.to_string()).unwrap_or_default(),
                }),
                Delivery::Resumed(r) => pb::subscribe_event::Event::Resumed(pb::Resumed {
                    recovered: r.recovered,
                    epoch: r.epoch,
                    from_offset: r.from.map(|o| o.to_string()).unwrap_or_default(),
                }),
            };
            Ok(pb::SubscribeEvent { event: Some(event) })
        });
        Ok(Response::new(Box::pin(events.take_until(draining))))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let channel = self
            .0
            .authorize(&caller, Call::new(P::Pubsub, Op::Read, req.channel))?;
        let query = HistoryQuery {
            last: (req.last > 0).then_some(req.last as usize),
            from: offset("from_offset", &req.from_offset)?,
            to: offset("to_offset", &req.to_offset)?,
            newest_first: req.newest_first,
            limit: (req.limit > 0).then_some(req.limit as usize),
            cursor: offset("cursor", &req.cursor)?,
        };
        let page = self.0.history_for(&caller, &channel, query).await?;
        Ok(Response::new(pb::HistoryResponse {
            epoch: page.epoch.unwrap_or_default(),
            messages: page.messages.iter().map(message).collect(),
            next_cursor: page.next_cursor.map(|o| o.to_string()).unwrap_or_default(),
        }))
    }

    async fn trim(
        &self,
        req: Request<pb::TrimRequest>,
    ) -> Result<Response<pb::TrimResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let channel = self
            .0
            .authorize(&caller, Call::new(P::Pubsub, Op::Delete, req.channel))?;
        let before = offset("before", &req.before)?
            .ok_or_else(|| Status::invalid_argument("before: an offset is required"))?;
        let removed = self.0.trim(&channel, before).await?;
        Ok(Response::new(pb::TrimResponse { removed }))
    }
}

fn message(m: &PubMessage) -> pb::Message {
    pb::Message {
        channel: m.channel.clone(),
        payload: m.payload.clone(),
        headers: m.headers.clone().into_iter().collect(),
        offset: m.offset.map(|o| o.to_string()).unwrap_or_default(),
        published_at_ms: m.offset.map_or(0, |o| o.ms),
    }
}

/// An optional offset field: empty is none.
fn offset(name: &str, text: &str) -> Result<Option<Offset>, Status> {
    match text {
        "" => Ok(None),
        o => o.parse().map(Some).map_err(|()| {
            Status::invalid_argument(format!(
                "{name} {o:?} is not an offset like 1700000000000-0"
            ))
        }),
    }
}
