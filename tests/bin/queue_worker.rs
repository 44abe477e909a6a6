//! `queue-worker <grpc-url> <queue> <map>`: a work-queue worker until
//! killed. It claims one job at a time, does its "work" (adds 1 to the
//! job's field in map `<map>`, so the test sees every run of every job),
//! and acks it with its next claim, as a worker loop does. Jobs whose
//! payload is `fail` are nacked instead.

use outrigger::api::pb;
use outrigger::api::pb::map_client::MapClient;
use outrigger::api::pb::queue_client::QueueClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, map] = args.as_slice() else {
        anyhow::bail!("usage: queue-worker <grpc-url> <queue> <map>");
    };
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut queues = QueueClient::new(channel.clone());
    let mut maps = MapClient::new(channel);
    // Done jobs, acked by the next claim.
    let mut done: Vec<pb::JobReceipt> = Vec::new();
    loop {
        let claim = pb::ClaimJobsRequest {
            queue: queue.clone(),
            max: 1,
            visibility_ms: Some(1_000),
            wait_ms: 1_000,
            ack: std::mem::take(&mut done),
        };
        let jobs = match queues.claim(claim).await {
            Ok(reply) => reply.into_inner().jobs,
            // A claim that ran out meanwhile (a slow machine) is not ours
            // to ack any more: its next worker does. Nothing was claimed.
            Err(status) if status.code() == tonic::Code::Aborted => continue,
            Err(status) => return Err(status.into()),
        };
        for job in jobs {
            if job.payload.as_ref() == b"fail" {
                let nack = pb::NackJobRequest {
                    queue: queue.clone(),
                    id: job.id,
                    receipt: job.receipt,
                    delay_ms: Some(0),
                    error: Some(format!("failed on attempt {}", job.attempt)),
                };
                queues.nack(nack).await?;
                continue;
            }
            let work = pb::UpdateMapRequest {
                map: map.clone(),
                changes: vec![pb::MapChange {
                    change: Some(pb::map_change::Change::Increment(pb::IncrementField {
                        field: job.id.clone(),
                        by: Some(pb::increment_field::By::Int(1)),
                    })),
                }],
                ..Default::default()
            };
            maps.update(work).await?;
            done.push(pb::JobReceipt {
                id: job.id,
                receipt: job.receipt,
            });
        }
    }
}
