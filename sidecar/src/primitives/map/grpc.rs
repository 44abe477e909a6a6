//! The gRPC service of maps (`outrigger.v1.Map`): wire types in, primitive
//! calls, wire types out.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::store::{Condition, FieldChange, FieldValue, MapEventKind, Number, Outcome};
use super::{ChangeRequest, Maps, TtlRequest, UpdateRequest};
use crate::backend::FeedItem;
use crate::kit::Primitive;
use crate::kit::ceil_ms;
use crate::kit::grpc::pb::map_server::{Map as Api, MapServer};
use crate::kit::grpc::{EventStream, caller, pb};

/// The service, ready to add to a server.
pub fn service(maps: Arc<Maps>) -> MapServer<MapService> {
    MapServer::new(MapService(maps))
}

/// `outrigger.v1.Map`.
pub struct MapService(pub Arc<Maps>);

fn field(name: String, value: Option<FieldValue>) -> pb::MapField {
    match value {
        None => pb::MapField {
            field: name,
            ..Default::default()
        },
        Some(v) => pb::MapField {
            field: name,
            present: true,
            value: v.value,
            version: v.version,
            ttl_ms: v.ttl.map(ceil_ms),
        },
    }
}

fn change(c: pb::MapChange) -> Result<ChangeRequest, Status> {
    use pb::map_change::Change as C;
    let missing = |what: &str| Status::invalid_argument(format!("a change without {what}"));
    Ok(
        match c
            .change
            .ok_or_else(|| missing("set, delete or increment"))?
        {
            C::Set(set) => ChangeRequest::Set {
                field: set.field,
                value: set.value,
                ttl_ms: set.ttl_ms,
                condition: match set.condition {
                    None => Condition::None,
                    Some(pb::set_field::Condition::IfAbsent(true)) => Condition::IfAbsent,
                    Some(pb::set_field::Condition::IfPresent(true)) => Condition::IfPresent,
                    Some(pb::set_field::Condition::IfVersion(v)) => Condition::IfVersion(v),
                    Some(_) => Condition::None,
                },
            },
            C::Delete(field) => ChangeRequest::Delete { field },
            C::Increment(inc) => ChangeRequest::Increment {
                field: inc.field,
                by: match inc.by.ok_or_else(|| missing("`by`"))? {
                    pb::increment_field::By::Int(n) => Number::Int(n),
                    pb::increment_field::By::Float(x) => Number::Float(x),
                },
            },
        },
    )
}

fn outcome(o: Outcome) -> pb::ChangeOutcome {
    use pb::change_outcome::Outcome as O;
    pb::ChangeOutcome {
        outcome: Some(match o {
            Outcome::Set => O::Set(true),
            Outcome::Deleted { existed } => O::Existed(existed),
            Outcome::Incremented(Number::Int(n)) => O::Int(n),
            Outcome::Incremented(Number::Float(x)) => O::Float(x),
        }),
    }
}

#[tonic::async_trait]
impl Api for MapService {
    async fn get(
        &self,
        req: Request<pb::GetFieldsRequest>,
    ) -> Result<Response<pb::MapFields>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let read = self.0.get_for(&caller, req.map, &req.fields).await?;
        Ok(Response::new(pb::MapFields {
            version: read.version,
            ttl_ms: read.ttl.map(ceil_ms),
            fields: req
                .fields
                .into_iter()
                .zip(read.fields)
                .map(|(name, value)| field(name, value))
                .collect(),
            next_cursor: String::new(),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListFieldsRequest>,
    ) -> Result<Response<pb::MapFields>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let page = self
            .0
            .scan_for(&caller, req.map, &req.cursor, req.limit as usize)
            .await?;
        Ok(Response::new(pb::MapFields {
            version: page.version,
            ttl_ms: page.ttl.map(ceil_ms),
            fields: page
                .fields
                .into_iter()
                .map(|(name, value)| field(name, Some(value)))
                .collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateMapRequest>,
    ) -> Result<Response<pb::UpdateMapResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let update = UpdateRequest {
            changes: req
                .changes
                .into_iter()
                .map(change)
                .collect::<Result<_, _>>()?,
            if_version: req.if_version,
            ttl: TtlRequest {
                ttl_ms: req.ttl_ms,
                sliding: req.sliding,
                persist: req.persist,
            },
        };
        let applied = self.0.update_for(&caller, req.map, update).await?;
        Ok(Response::new(pb::UpdateMapResponse {
            version: applied.version,
            outcomes: applied.outcomes.into_iter().map(outcome).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteMapRequest>,
    ) -> Result<Response<pb::DeleteMapResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let existed = self.0.delete_for(&caller, req.into_inner().map).await?;
        Ok(Response::new(pb::DeleteMapResponse { existed }))
    }

    type WatchStream = EventStream<pb::MapEvent>;

    async fn watch(
        &self,
        req: Request<pb::WatchMapRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller(self.0.common(), &req);
        let feed = self.0.watch_for(&caller, req.into_inner().map).await?;
        let draining = self.0.common().draining();
        let events = feed.map(|item| {
            use pb::field_event::Change as C;
            use pb::map_event::Kind as K;
            Ok(match item {
                FeedItem::Item(e) => pb::MapEvent {
                    kind: match e.kind {
                        MapEventKind::Updated => K::Updated,
                        MapEventKind::Expired => K::Expired,
                        MapEventKind::Deleted => K::Deleted,
                    }
                    .into(),
                    map: e.map,
                    version: e.version,
                    changes: e
                        .changes
                        .into_iter()
                        .map(|(field, change)| {
                            let (change, value) = match change {
                                FieldChange::Set(value) => (C::Set, value),
                                FieldChange::Deleted => (C::Deleted, Default::default()),
                                FieldChange::Expired => (C::Expired, Default::default()),
                            };
                            pb::FieldEvent {
                                field,
                                change: change.into(),
                                value,
                            }
                        })
                        .collect(),
                    missed: 0,
                },
                FeedItem::Lagged(missed) => pb::MapEvent {
                    kind: K::Lagged.into(),
                    missed,
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(events.take_until(draining))))
    }
}
