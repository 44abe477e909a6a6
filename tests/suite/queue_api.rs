//! Work queues over the wire: live `outrigger` processes on the memory
//! backend and on real Redis, over HTTP; jobs handed between sidecars on
//! one Redis; and what queues do while Redis is down.

use std::time::Duration;

use outrigger::api::pb;
use outrigger::api::pb::queue_client::QueueClient;
use outrigger_tests::{RedisServer, Sidecar, SidecarOn, Topology, conformance, sidecar, unique};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn target(topology: Topology) -> SidecarOn {
    topology.sidecar(sidecar!(), "queues").await
}

conformance!(
    target;
    [memory: Memory, with_redis: Redis];
    {
        http_queue_round_trip,
        http_rejects_bad_queue_input,
        grpc_queue_round_trip,
        grpc_consumers_get_no_more_than_their_credit,
    }
);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn reply(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, body)
}

async fn enqueue(s: &Sidecar, queue: &str, query: &str, payload: &[u8]) -> (u16, Value) {
    let resp = http()
        .post(s.url(&format!("/v1/queues/{queue}/jobs{query}")))
        .body(payload.to_vec())
        .send()
        .await
        .unwrap();
    reply(resp).await
}

async fn post(s: &Sidecar, path: &str, body: Value) -> (u16, Value) {
    reply(http().post(s.url(path)).json(&body).send().await.unwrap()).await
}

async fn get(s: &Sidecar, path: &str) -> (u16, Value) {
    reply(http().get(s.url(path)).send().await.unwrap()).await
}

async fn http_queue_round_trip(t: &SidecarOn) {
    let s = &t.sidecar;
    let (status, first) = enqueue(s, "mail", "", b"hello").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (&first["duplicate"], &first["buffered"]),
        (&json!(false), &json!(false))
    );
    let binary = [0xff, 0x00, 0xfe];
    let (_, second) = enqueue(s, "mail", "?max_attempts=1", &binary).await;
    let (_, stats) = get(s, "/v1/queues/mail").await;
    assert_eq!(
        stats,
        json!({"ready": 2, "delayed": 0, "in_flight": 0, "dead": 0, "oldest_ready_ms": stats["oldest_ready_ms"]})
    );
    let (status, claimed) = post(s, "/v1/queues/mail/claim", json!({"max": 5})).await;
    assert_eq!(status, 200, "{claimed}");
    let jobs = claimed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{claimed}");
    assert_eq!(
        (&jobs[0]["id"], &jobs[0]["payload"]),
        (&first["id"], &json!("hello"))
    );
    assert_eq!(
        jobs[1]["payload_base64"], "/wD+",
        "binary payloads come back as base64"
    );
    assert_eq!(
        (&jobs[1]["attempt"], &jobs[1]["max_attempts"]),
        (&json!(1), &json!(1))
    );
    let ack = |job: &Value| format!("/v1/queues/mail/jobs/{}/ack", job["id"].as_str().unwrap());
    let (status, acked) = post(s, &ack(&jobs[0]), json!({"receipt": jobs[0]["receipt"]})).await;
    assert_eq!(
        (status, &acked["outcome"]),
        (200, &json!("acked")),
        "{acked}"
    );
    let (status, again) = post(s, &ack(&jobs[0]), json!({"receipt": jobs[0]["receipt"]})).await;
    assert_eq!(
        (status, &again["error"]["code"]),
        (404, &json!("not_found")),
        "{again}"
    );
    // The binary job fails on its only attempt: dead, with its error.
    let nack = format!(
        "/v1/queues/mail/jobs/{}/nack",
        second["id"].as_str().unwrap()
    );
    let body = json!({"receipt": jobs[1]["receipt"], "error": "bounced"});
    let (status, dead) = post(s, &nack, body).await;
    assert_eq!((status, &dead["outcome"]), (200, &json!("dead")), "{dead}");
    let (_, listed) = get(s, "/v1/queues/mail/dead").await;
    assert_eq!(listed["jobs"][0]["error"], "bounced", "{listed}");
    assert_eq!(listed["jobs"][0]["payload_base64"], "/wD+", "{listed}");
    let (status, moved) = post(s, "/v1/queues/mail/dead/redrive", json!({})).await;
    assert_eq!((status, &moved["count"]), (200, &json!(1)), "{moved}");
    let (_, claimed) = post(s, "/v1/queues/mail/claim", json!({"visibility_ms": 60000})).await;
    let job = &claimed["jobs"][0];
    assert_eq!((&job["id"], &job["attempt"]), (&second["id"], &json!(1)));
    let extend = format!(
        "/v1/queues/mail/jobs/{}/extend",
        job["id"].as_str().unwrap()
    );
    let (status, extended) = post(
        s,
        &extend,
        json!({"receipt": job["receipt"], "visibility_ms": 120000}),
    )
    .await;
    assert_eq!(
        (status, &extended["outcome"]),
        (200, &json!("extended")),
        "{extended}"
    );
    assert!(extended["visible_at_ms"].as_u64() > job["visible_at_ms"].as_u64());
    let (_, listing) = get(s, "/v1/queues").await;
    assert_eq!(listing["queues"], json!(["mail"]), "{listing}");
    // A claim acks a worker's finished jobs first: all or none.
    let stale = json!({"ack": [{"id": job["id"], "receipt": "made-up"}]});
    let (status, refused) = post(s, "/v1/queues/mail/claim", stale).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &json!("conflict")),
        "{refused}"
    );
    let done = json!({"ack": [{"id": job["id"], "receipt": job["receipt"]}]});
    let (status, claimed) = post(s, "/v1/queues/mail/claim", done).await;
    assert_eq!((status, &claimed["jobs"]), (200, &json!([])), "{claimed}");
    let (_, stats) = get(s, "/v1/queues/mail").await;
    assert_eq!(stats["in_flight"], 0, "{stats}");
    // A waiting claim gets what is enqueued meanwhile.
    let waiting = {
        let url = s.url("/v1/queues/later/claim");
        tokio::spawn(async move {
            reply(
                http()
                    .post(url)
                    .json(&json!({"wait_ms": 10000}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        })
    };
    let (status, _) = enqueue(s, "later", "?dedup_id=once", b"woken").await;
    assert_eq!(status, 200);
    let (status, woke) = waiting.await.unwrap();
    assert_eq!(
        (status, &woke["jobs"][0]["payload"]),
        (200, &json!("woken")),
        "{woke}"
    );
    let (_, dup) = enqueue(s, "later", "?dedup_id=once", b"again").await;
    assert_eq!(dup["duplicate"], true, "{dup}");
}

async fn http_rejects_bad_queue_input(t: &SidecarOn) {
    let s = &t.sidecar;
    let bad = [
        ("?delay_ms=-5", "delay_ms"),
        ("?max_attempts=0", "max_attempts"),
        ("?delay_ms=5&due_at_ms=5", "not both"),
        ("?nope=1", "nope"),
    ];
    for (query, says) in bad {
        let (status, body) = enqueue(s, "q", query, b"x").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_argument")),
            "{query}: {body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    let (status, body) = enqueue(s, "q", "", &vec![b'x'; 2 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = post(s, "/v1/queues/q/claim", json!({"max": 100000})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = enqueue(s, "q", "?due_at_ms=9223372036854775808", b"x").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(s, "/v1/queues/q/claim", json!({"wait_ms": -1})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(s, "/v1/queues/q/jobs/xyz/ack", json!({"receipt": "r"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("job id"),
        "{body}"
    );
    let (status, body) = post(s, "/v1/queues/q/jobs/00000000000000aa/ack", json!({})).await;
    assert_eq!(status, 400, "a missing receipt: {body}");
    // A made-up receipt for a real claim conflicts.
    let (_, job) = enqueue(s, "q", "", b"x").await;
    post(s, "/v1/queues/q/claim", json!({})).await;
    let ack = format!("/v1/queues/q/jobs/{}/ack", job["id"].as_str().unwrap());
    let (status, body) = post(s, &ack, json!({"receipt": "made-up"})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("conflict")),
        "{body}"
    );
    let (_, stats) = get(s, "/v1/queues/q").await;
    assert_eq!(
        (&stats["ready"], &stats["in_flight"]),
        (&json!(0), &json!(1)),
        "nothing bad was enqueued: {stats}"
    );
}

fn enqueue_pb(queue: &str, payload: &str) -> pb::EnqueueJobRequest {
    pb::EnqueueJobRequest {
        queue: queue.into(),
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn grpc_queue_round_trip(t: &SidecarOn) {
    let mut q = QueueClient::new(t.sidecar.channel().await);
    let first = q
        .enqueue(enqueue_pb("jobs", "a"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !first.duplicate && !first.buffered && first.id.len() == 16,
        "{first:?}"
    );
    let flaky = pb::EnqueueJobRequest {
        max_attempts: Some(1),
        ..enqueue_pb("jobs", "b")
    };
    q.enqueue(flaky).await.unwrap();
    let claim = pb::ClaimJobsRequest {
        queue: "jobs".into(),
        max: 10,
        ..Default::default()
    };
    let jobs = q.claim(claim.clone()).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (jobs[0].id.as_str(), &jobs[0].payload[..]),
        (first.id.as_str(), &b"a"[..])
    );
    let ack = |job: &pb::Job| pb::AckJobRequest {
        queue: "jobs".into(),
        id: job.id.clone(),
        receipt: job.receipt.clone(),
    };
    let acked = q.ack(ack(&jobs[0])).await.unwrap().into_inner();
    assert_eq!(acked.outcome(), pb::settle_job_response::Outcome::Acked);
    let err = q.ack(ack(&jobs[0])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let stale = pb::AckJobRequest {
        receipt: "made-up".into(),
        ..ack(&jobs[1])
    };
    assert_eq!(q.ack(stale).await.unwrap_err().code(), Code::Aborted);
    let ack_gone = pb::ClaimJobsRequest {
        ack: vec![pb::JobReceipt {
            id: jobs[0].id.clone(),
            receipt: jobs[0].receipt.clone(),
        }],
        ..claim.clone()
    };
    let err = q.claim(ack_gone).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let nack = pb::NackJobRequest {
        queue: "jobs".into(),
        id: jobs[1].id.clone(),
        receipt: jobs[1].receipt.clone(),
        delay_ms: None,
        error: Some("no".into()),
    };
    let dead = q.nack(nack).await.unwrap().into_inner();
    assert_eq!(dead.outcome(), pb::settle_job_response::Outcome::Dead);
    let listed = q
        .list_dead(pb::ListDeadRequest {
            queue: "jobs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(
        (listed.jobs[0].error.as_deref(), listed.next_after.as_str()),
        (Some("no"), "")
    );
    let stats = q
        .stats(pb::QueueStatsRequest {
            queue: "jobs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.ready, stats.in_flight, stats.dead), (0, 0, 1));
    let purged = q
        .purge_dead(pb::PurgeDeadRequest {
            queue: "jobs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.count, 1);
    let listing = q
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listing.queues.is_empty(), "{listing:?}");
    // A schedule over gRPC: put, read, listed, deleted.
    let put = pb::PutScheduleRequest {
        name: "nightly".into(),
        queue: "jobs".into(),
        payload: b"run".to_vec().into(),
        every: Some(pb::put_schedule_request::Every::Cron("0 3 * * *".into())),
        skip_missed: true,
        max_attempts: Some(2),
    };
    let s = q.put_schedule(put).await.unwrap().into_inner();
    assert_eq!(s.next_tick_ms.unwrap() % 86_400_000, 3 * 3_600_000, "{s:?}");
    let read = q
        .get_schedule(pb::GetScheduleRequest {
            name: "nightly".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, s);
    let listed = q
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.schedules, [s]);
    let deleted = q
        .delete_schedule(pb::DeleteScheduleRequest {
            name: "nightly".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.existed);
    let err = q
        .get_schedule(pb::GetScheduleRequest {
            name: "nightly".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let zero = pb::EnqueueJobRequest {
        max_attempts: Some(0),
        ..enqueue_pb("jobs", "x")
    };
    assert_eq!(
        q.enqueue(zero).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

/// A streaming consumer: sent no more jobs than its credit, settling on
/// the same stream.
async fn grpc_consumers_get_no_more_than_their_credit(t: &SidecarOn) {
    let mut q = QueueClient::new(t.sidecar.channel().await);
    for n in 0..5 {
        q.enqueue(enqueue_pb("stream", &n.to_string()))
            .await
            .unwrap();
    }
    let (tx, rx) = mpsc::channel(8);
    let send = |action| pb::ConsumeRequest {
        action: Some(action),
    };
    use pb::consume_request::Action;
    tx.send(send(Action::Start(pb::ConsumeStart {
        queue: "stream".into(),
        visibility_ms: Some(60_000),
    })))
    .await
    .unwrap();
    tx.send(send(Action::Credit(2))).await.unwrap();
    let mut events = q
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream is open")
            .event
            .unwrap()
    };
    let mut got = Vec::new();
    for _ in 0..2 {
        match next().await {
            pb::consume_event::Event::Job(job) => got.push(job),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got.iter().map(|j| &j.payload[..]).collect::<Vec<_>>(),
        [b"0", b"1"]
    );
    // The credit is spent: the other three are left for other workers.
    let stats = q
        .stats(pb::QueueStatsRequest {
            queue: "stream".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.ready, stats.in_flight), (3, 2), "{stats:?}");
    let claim = pb::ClaimJobsRequest {
        queue: "stream".into(),
        max: 1,
        ..Default::default()
    };
    let other = q.claim(claim).await.unwrap().into_inner().jobs;
    assert_eq!(&other[0].payload[..], b"2");
    // Settles on the stream, answered in order; a bad one does not end it.
    for job in &got {
        let settle = pb::ConsumeSettle {
            id: job.id.clone(),
            receipt: job.receipt.clone(),
            how: Some(pb::consume_settle::How::Ack(true)),
        };
        tx.send(send(Action::Settle(settle))).await.unwrap();
    }
    let stale = pb::ConsumeSettle {
        id: got[0].id.clone(),
        receipt: got[0].receipt.clone(),
        how: Some(pb::consume_settle::How::Ack(true)),
    };
    tx.send(send(Action::Settle(stale))).await.unwrap();
    for (job, code) in [(&got[0], 0), (&got[1], 0), (&got[0], Code::NotFound as i32)] {
        match next().await {
            pb::consume_event::Event::Settled(s) => {
                assert_eq!(
                    (s.id.as_str(), s.error_code),
                    (job.id.as_str(), code),
                    "{s:?}"
                );
                assert_eq!(s.result.is_some(), code == 0, "{s:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    // More credit, more jobs: the two still ready.
    tx.send(send(Action::Credit(5))).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..2 {
        match next().await {
            pb::consume_event::Event::Job(job) => rest.push(job.payload),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rest, [&b"3"[..], b"4"]);
    // And one enqueued later reaches the waiting consumer.
    q.enqueue(enqueue_pb("stream", "late")).await.unwrap();
    match next().await {
        pb::consume_event::Event::Job(job) => assert_eq!(&job.payload[..], b"late"),
        other => panic!("{other:?}"),
    }
}

/// Jobs enqueued on one sidecar are claimed on another sharing its Redis,
/// and a claim waiting on one wakes for an enqueue on the other.
#[tokio::test]
async fn sidecars_on_one_redis_share_their_queues() {
    let redis = RedisServer::start().await;
    let ns = unique("queues");
    let a = sidecar!().redis(&redis).namespace(&ns).start().await;
    let b = sidecar!().redis(&redis).namespace(&ns).start().await;
    let waiting = {
        let url = b.url("/v1/queues/shared/claim");
        tokio::spawn(async move {
            reply(
                http()
                    .post(url)
                    .json(&json!({"wait_ms": 10000}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        })
    };
    let (_, job) = enqueue(&a, "shared", "", b"from a").await;
    let (status, got) = waiting.await.unwrap();
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (&got["jobs"][0]["id"], &got["jobs"][0]["payload"]),
        (&job["id"], &json!("from a"))
    );
    // Acked on the sidecar that did not claim it: the receipt is the key.
    let ack = format!("/v1/queues/shared/jobs/{}/ack", job["id"].as_str().unwrap());
    let (status, body) = post(&a, &ack, json!({"receipt": got["jobs"][0]["receipt"]})).await;
    assert_eq!(status, 200, "{body}");
    let (_, stats) = get(&b, "/v1/queues/shared").await;
    assert_eq!(
        (&stats["ready"], &stats["in_flight"]),
        (&json!(0), &json!(0)),
        "{stats}"
    );
}

/// By default every queue call is refused while Redis is down (503, saying
/// why): a job accepted only in one sidecar's memory is lost with it.
#[tokio::test]
async fn queues_refuse_while_redis_is_down_by_default() {
    let mut redis = RedisServer::start().await;
    let s = sidecar!()
        .redis(&redis)
        .namespace(&unique("queues"))
        .env("OUTRIGGER_REDIS__TIMEOUT", "300ms")
        .start()
        .await;
    assert_eq!(enqueue(&s, "q", "", b"x").await.0, 200);
    redis.kill().await;
    let (status, body) = enqueue(&s, "q", "", b"x").await;
    assert_eq!(status, 503, "{body}");
    for (status, body) in [
        enqueue(&s, "q", "", b"x").await,
        post(&s, "/v1/queues/q/claim", json!({})).await,
        get(&s, "/v1/queues/q").await,
    ] {
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("only in Redis"),
            "{body}"
        );
    }
}

/// With `failover.queues = "local"`, enqueues while Redis is down are
/// buffered (202) and enqueued on Redis, in order, when it returns; claims
/// are still refused meanwhile.
#[tokio::test]
async fn local_mode_buffers_enqueues_and_flushes_them_in_order() {
    let mut redis = RedisServer::start().await;
    let s = sidecar!()
        .redis(&redis)
        .namespace(&unique("queues"))
        .env("OUTRIGGER_REDIS__TIMEOUT", "300ms")
        .env("OUTRIGGER_FAILOVER__QUEUES", "local")
        .env("OUTRIGGER_FAILOVER__ENQUEUE_BUFFER", "3")
        .env("OUTRIGGER_FAILOVER__PROBE_INTERVAL", "50ms")
        .start()
        .await;
    assert_eq!(enqueue(&s, "q", "", b"before").await.0, 200);
    redis.kill().await;
    let mut accepted = Vec::new();
    for n in 0..5 {
        let payload = format!("while down {n}");
        let (status, body) = enqueue(&s, "q", "", payload.as_bytes()).await;
        match status {
            202 => {
                assert_eq!(
                    (&body["buffered"], &body["id"]),
                    (&json!(true), &Value::Null),
                    "{body}"
                );
                accepted.push(payload);
            }
            503 => {}
            other => panic!("{other}: {body}"),
        }
    }
    // Three fit the buffer (the first of them found Redis gone); the rest
    // are refused, saying why.
    assert_eq!(accepted.len(), 3, "{accepted:?}");
    let (status, body) = enqueue(&s, "q", "", b"over").await;
    assert_eq!(status, 503);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("enqueue_buffer"),
        "{body}"
    );
    let (status, _) = post(&s, "/v1/queues/q/claim", json!({})).await;
    assert_eq!(status, 503, "claims are refused while down");
    redis.restart().await; // empty: "before" is gone with it
    s.wait_mode("redis", Duration::from_secs(10)).await;
    let (status, got) = post(&s, "/v1/queues/q/claim", json!({"max": 10})).await;
    assert_eq!(status, 200, "{got}");
    let payloads: Vec<&str> = got["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, accepted, "every buffered job, in order, once");
}
