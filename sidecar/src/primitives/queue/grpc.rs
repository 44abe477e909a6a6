//! The gRPC service of work queues (`outrigger.v1.Queue`): wire types in,
//! primitive calls, wire types out; and the streaming consumer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::schedule::Missed;
use super::store::{Claimed, DeadJob, Enqueued, Receipt, Settled};
use super::{ClaimRequest, EnqueueRequest, Queues, ScheduleRequest, ScheduleView, SettleRequest};
use crate::error::{Error, Result};
use crate::kit::Primitive;
use crate::kit::grpc::pb::queue_server::{Queue as Api, QueueServer};
use crate::kit::grpc::{caller, pb};
use crate::plugins::Caller;

/// The service, ready to add to a server.
pub fn service(queues: Arc<Queues>) -> QueueServer<QueueService> {
    QueueServer::new(QueueService(queues))
}

/// `outrigger.v1.Queue`.
pub struct QueueService(pub Arc<Queues>);

type ConsumeStream = Pin<Box<dyn Stream<Item = Result<pb::ConsumeEvent, Status>> + Send>>;

/// The longest one claim of a consumer waits before it claims again.
const CONSUME_POLL_MS: u64 = 5_000;

fn receipt(r: pb::JobReceipt) -> Receipt {
    Receipt {
        id: r.id,
        receipt: r.receipt,
    }
}

fn job(c: Claimed) -> pb::Job {
    pb::Job {
        id: c.id,
        receipt: c.receipt,
        attempt: c.attempt,
        max_attempts: c.max_attempts,
        dedup_id: c.dedup_id,
        payload: c.payload,
        enqueued_at_ms: c.enqueued_at,
        visible_at_ms: c.visible_at,
    }
}

fn dead_job(d: DeadJob) -> pb::DeadJob {
    pb::DeadJob {
        id: d.id,
        payload: d.payload,
        attempts: d.attempts,
        error: d.error,
        enqueued_at_ms: d.enqueued_at,
        died_at_ms: d.died_at,
    }
}

fn settled(s: Settled) -> pb::SettleJobResponse {
    use pb::settle_job_response::Outcome;
    let (outcome, due_at_ms, visible_at_ms) = match s {
        Settled::Acked => (Outcome::Acked, 0, 0),
        Settled::Retrying { due } => (Outcome::Retrying, due, 0),
        Settled::Dead => (Outcome::Dead, 0, 0),
        Settled::Extended { visible_at } => (Outcome::Extended, 0, visible_at),
        // The primitive turns these into errors.
        Settled::StaleReceipt | Settled::Unknown => (Outcome::Unspecified, 0, 0),
    };
    pb::SettleJobResponse {
        outcome: outcome.into(),
        due_at_ms,
        visible_at_ms,
    }
}

fn schedule(v: ScheduleView) -> pb::QueueSchedule {
    use pb::queue_schedule::Every;
    let s = v.stored.schedule;
    pb::QueueSchedule {
        name: v.name,
        queue: s.queue,
        payload: s.payload,
        every: match (s.every_ms, s.cron) {
            (Some(ms), _) => Some(Every::EveryMs(ms)),
            (None, Some(expr)) => Some(Every::Cron(expr)),
            (None, None) => None,
        },
        skip_missed: s.missed == Missed::Skip,
        max_attempts: s.max_attempts,
        anchor_ms: s.anchor_ms,
        last_tick_ms: v.stored.last_tick_ms,
        next_tick_ms: v.next_tick_ms,
    }
}

/// A page size from the wire: 0 is the default.
fn page(limit: u32) -> Option<usize> {
    (limit > 0).then_some(limit as usize)
}

/// Empty is none.
fn given(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Api for QueueService {
    async fn enqueue(
        &self,
        req: Request<pb::EnqueueJobRequest>,
    ) -> Result<Response<pb::EnqueueJobResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let enqueue = EnqueueRequest {
            payload: req.payload,
            delay_ms: req.delay_ms,
            due_at_ms: req.due_at_ms,
            dedup_id: req.dedup_id,
            max_attempts: req.max_attempts,
            backoff_ms: req.backoff_ms,
            backoff_max_ms: req.backoff_max_ms,
        };
        let reply = match self.0.enqueue_for(&caller, req.queue, enqueue).await? {
            Enqueued::New(id) => pb::EnqueueJobResponse {
                id,
                ..Default::default()
            },
            Enqueued::Duplicate(id) => pb::EnqueueJobResponse {
                id,
                duplicate: true,
                ..Default::default()
            },
            Enqueued::Buffered => pb::EnqueueJobResponse {
                buffered: true,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn claim(
        &self,
        req: Request<pb::ClaimJobsRequest>,
    ) -> Result<Response<pb::ClaimJobsResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let claim = ClaimRequest {
            ack: req.ack.into_iter().map(receipt).collect(),
            max: req.max,
            visibility_ms: req.visibility_ms,
            wait_ms: req.wait_ms,
        };
        let jobs = self.0.claim_for(&caller, req.queue, claim).await?;
        Ok(Response::new(pb::ClaimJobsResponse {
            jobs: jobs.into_iter().map(job).collect(),
        }))
    }

    async fn ack(
        &self,
        req: Request<pb::AckJobRequest>,
    ) -> Result<Response<pb::SettleJobResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let done = self
            .0
            .settle_for(
                &caller,
                req.queue,
                &req.id,
                &req.receipt,
                SettleRequest::Ack,
            )
            .await?;
        Ok(Response::new(settled(done)))
    }

    async fn nack(
        &self,
        req: Request<pb::NackJobRequest>,
    ) -> Result<Response<pb::SettleJobResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let nack = SettleRequest::Nack {
            delay_ms: req.delay_ms,
            error: req.error,
        };
        let done = self
            .0
            .settle_for(&caller, req.queue, &req.id, &req.receipt, nack)
            .await?;
        Ok(Response::new(settled(done)))
    }

    async fn extend(
        &self,
        req: Request<pb::ExtendClaimRequest>,
    ) -> Result<Response<pb::SettleJobResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let extend = SettleRequest::Extend {
            visibility_ms: req.visibility_ms,
        };
        let done = self
            .0
            .settle_for(&caller, req.queue, &req.id, &req.receipt, extend)
            .await?;
        Ok(Response::new(settled(done)))
    }

    type ConsumeStream = ConsumeStream;

    async fn consume(
        &self,
        req: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<ConsumeStream>, Status> {
        use pb::consume_request::Action;
        let caller = caller(self.0.common(), &req);
        let mut inbound = req.into_inner();
        let Some(Action::Start(start)) = inbound.message().await?.and_then(|m| m.action) else {
            return Err(Status::invalid_argument(
                "the first message must be `start`",
            ));
        };
        let queues = self.0.clone();
        // Checked once, for the stream: its claims are this one's.
        let queue =
            queues.authorize_queue(&caller, crate::plugins::Operation::Claim, start.queue)?;
        queues.visibility(start.visibility_ms)?;
        let (tx, rx) = mpsc::channel(16);
        let consumer = Consumer {
            queues,
            caller,
            queue,
            visibility_ms: start.visibility_ms,
            tx,
        };
        tokio::spawn(consumer.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        req: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<pb::QueueStats>, Status> {
        let caller = caller(self.0.common(), &req);
        let s = self.0.stats_for(&caller, req.into_inner().queue).await?;
        Ok(Response::new(pb::QueueStats {
            ready: s.ready,
            delayed: s.delayed,
            in_flight: s.in_flight,
            dead: s.dead,
            oldest_ready_ms: s.oldest_ready_ms,
        }))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let pattern = given(req.pattern).unwrap_or_else(|| "*".into());
        let after = given(req.after);
        let listed = self
            .0
            .list_for(&caller, pattern, after.as_deref(), page(req.limit))
            .await?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: listed.queues,
            next_after: listed.next.unwrap_or_default(),
        }))
    }

    async fn list_dead(
        &self,
        req: Request<pb::ListDeadRequest>,
    ) -> Result<Response<pb::ListDeadResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let after = given(req.after);
        let limit = page(req.limit);
        let jobs = self
            .0
            .dead_for(&caller, req.queue, after.as_deref(), limit)
            .await?;
        let full = jobs.len() == limit.unwrap_or(super::DEFAULT_PAGE);
        Ok(Response::new(pb::ListDeadResponse {
            next_after: if full {
                jobs.last().map(|j| j.id.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            jobs: jobs.into_iter().map(dead_job).collect(),
        }))
    }

    async fn redrive(
        &self,
        req: Request<pb::RedriveRequest>,
    ) -> Result<Response<pb::JobCountResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let count = self
            .0
            .redrive_for(&caller, req.queue, page(req.limit))
            .await?;
        Ok(Response::new(pb::JobCountResponse { count }))
    }

    async fn purge_dead(
        &self,
        req: Request<pb::PurgeDeadRequest>,
    ) -> Result<Response<pb::JobCountResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let count = self
            .0
            .purge_dead_for(&caller, req.into_inner().queue)
            .await?;
        Ok(Response::new(pb::JobCountResponse { count }))
    }

    async fn put_schedule(
        &self,
        req: Request<pb::PutScheduleRequest>,
    ) -> Result<Response<pb::QueueSchedule>, Status> {
        use pb::put_schedule_request::Every;
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let (every_ms, cron) = match req.every {
            Some(Every::EveryMs(ms)) => (Some(ms), None),
            Some(Every::Cron(expr)) => (None, Some(expr)),
            None => (None, None),
        };
        let put = ScheduleRequest {
            queue: req.queue,
            payload: req.payload,
            every_ms,
            cron,
            missed: if req.skip_missed {
                Missed::Skip
            } else {
                Missed::EnqueueOnce
            },
            max_attempts: req.max_attempts,
        };
        let view = self.0.put_schedule_for(&caller, req.name, put).await?;
        Ok(Response::new(schedule(view)))
    }

    async fn get_schedule(
        &self,
        req: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::QueueSchedule>, Status> {
        let caller = caller(self.0.common(), &req);
        let view = self
            .0
            .get_schedule_for(&caller, req.into_inner().name)
            .await?;
        Ok(Response::new(schedule(view)))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let existed = self
            .0
            .delete_schedule_for(&caller, req.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeleteScheduleResponse { existed }))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let caller = caller(self.0.common(), &req);
        let req = req.into_inner();
        let after = given(req.after);
        let limit = page(req.limit);
        let listed = self
            .0
            .list_schedules_for(&caller, after.as_deref(), limit)
            .await?;
        let full = listed.len() == limit.unwrap_or(super::DEFAULT_PAGE);
        Ok(Response::new(pb::ListSchedulesResponse {
            next_after: if full {
                listed.last().map(|s| s.name.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            schedules: listed.into_iter().map(schedule).collect(),
        }))
    }
}

type Claiming = Pin<Box<dyn Future<Output = Result<Vec<Claimed>>> + Send>>;

/// One `Consume` stream: claims as its credit allows, answers settles.
struct Consumer {
    queues: Arc<Queues>,
    caller: Caller,
    queue: String,
    visibility_ms: Option<u64>,
    tx: mpsc::Sender<Result<pb::ConsumeEvent, Status>>,
}

impl Consumer {
    /// A claim of up to `credit` jobs (at most a batch), waiting a while
    /// for one.
    fn claim(&self, credit: u64) -> Claiming {
        let queues = self.queues.clone();
        let queue = self.queue.clone();
        let req = ClaimRequest {
            ack: Vec::new(),
            max: credit.min(queues.limits.max_batch as u64) as u32,
            visibility_ms: self.visibility_ms,
            wait_ms: CONSUME_POLL_MS.min(queues.limits.max_wait.as_millis() as u64),
        };
        Box::pin(async move { queues.claim(&queue, req).await })
    }

    async fn send(&self, event: pb::consume_event::Event) -> bool {
        let event = pb::ConsumeEvent { event: Some(event) };
        self.tx.send(Ok(event)).await.is_ok()
    }

    /// Until the client ends the stream or goes away, or shutdown. A claim
    /// in flight is never dropped half way (its jobs would be claimed and
    /// never sent): it is polled to its end whatever else arrives.
    async fn run(self, mut inbound: Streaming<pb::ConsumeRequest>) {
        use pb::consume_request::Action;
        let mut credit: u64 = 0;
        let mut claiming: Option<Claiming> = None;
        let draining = self.queues.common().draining();
        tokio::pin!(draining);
        loop {
            if claiming.is_none() && credit > 0 {
                claiming = Some(self.claim(credit));
            }
            tokio::select! {
                claimed = async {
                    match claiming.as_mut() {
                        Some(claim) => claim.await,
                        None => std::future::pending().await,
                    }
                } => {
                    claiming = None;
                    match claimed {
                        Ok(jobs) => {
                            credit -= jobs.len() as u64;
                            for j in jobs {
                                if !self.send(pb::consume_event::Event::Job(job(j))).await {
                                    return;
                                }
                            }
                        }
                        Err(err) => {
                            let _ = self.tx.send(Err(err.into())).await;
                            return;
                        }
                    }
                }
                msg = inbound.message() => {
                    let Ok(Some(msg)) = msg else { return };
                    match msg.action {
                        Some(Action::Credit(n)) => credit = credit.saturating_add(u64::from(n)),
                        Some(Action::Settle(s)) => {
                            let id = s.id.clone();
                            let event = match self.settle(s).await {
                                Ok(done) => pb::ConsumeSettled {
                                    id,
                                    result: Some(settled(done)),
                                    ..Default::default()
                                },
                                Err(err) => {
                                    let status = Status::from(err);
                                    pb::ConsumeSettled {
                                        id,
                                        result: None,
                                        error_code: status.code() as i32,
                                        error: status.message().to_string(),
                                    }
                                }
                            };
                            if !self.send(pb::consume_event::Event::Settled(event)).await {
                                return;
                            }
                        }
                        Some(Action::Start(_)) | None => {
                            let _ = self
                                .tx
                                .send(Err(Status::invalid_argument(
                                    "`start` comes first and once; then `credit` and `settle`",
                                )))
                                .await;
                            return;
                        }
                    }
                }
                () = self.tx.closed() => return,
                () = &mut draining => return,
            }
        }
    }

    async fn settle(&self, s: pb::ConsumeSettle) -> Result<Settled> {
        use pb::consume_settle::How;
        let req = match s.how {
            Some(How::Ack(true)) => SettleRequest::Ack,
            Some(How::Nack(n)) => SettleRequest::Nack {
                delay_ms: n.delay_ms,
                error: n.error,
            },
            Some(How::Extend(e)) => SettleRequest::Extend {
                visibility_ms: e.visibility_ms,
            },
            Some(How::Ack(false)) | None => {
                return Err(Error::InvalidArgument(
                    "a settle says how: `ack`, `nack` or `extend`".into(),
                ));
            }
        };
        self.queues
            .settle_for(&self.caller, self.queue.clone(), &s.id, &s.receipt, req)
            .await
    }
}
