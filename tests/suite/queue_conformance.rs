//! The work-queue conformance suite: the same assertions on every
//! topology, through the primitive (`Queues`), so validation, claims,
//! receipts, retries and dead letters are covered on each backend.

use std::collections::BTreeSet;

use bytes::Bytes;
use outrigger::app::App;
use outrigger::config::Config;
use outrigger::error::Error;
use outrigger::primitives::queue::store::{CLAIM_EXPIRED, Claimed, Enqueued, Receipt, Settled};
use outrigger::primitives::queue::{ClaimRequest, EnqueueRequest, SettleRequest};
use outrigger_tests::{AppOn, Topology, conformance};

async fn setup(topology: Topology) -> AppOn {
    topology.app(&Config::default(), "queues").await
}

conformance!(
    setup;
    [
        on_memory: Memory,
        on_redis: Redis,
        on_cluster: Cluster,
    ];
    cases {
        jobs_are_claimed_once_in_due_order_fifo_among_equals,
        an_acked_job_is_gone_and_an_old_receipt_conflicts,
        acks_carried_by_a_claim_are_made_all_or_none,
        a_delayed_job_is_not_claimed_before_it_is_due,
        a_waiting_claim_gets_a_job_enqueued_meanwhile,
        nacks_back_off_then_the_job_dies_with_its_last_error,
        a_claim_running_out_on_the_last_attempt_is_dead,
        extend_keeps_the_claim,
        a_dedup_id_enqueues_once,
        concurrent_claims_hand_each_job_out_once,
        queues_are_listed_while_they_hold_jobs,
        bad_queue_input_is_rejected,
    }
);

fn job(payload: &str) -> EnqueueRequest {
    EnqueueRequest {
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..EnqueueRequest::default()
    }
}

fn claim(max: u32, visibility_ms: u64, wait_ms: u64) -> ClaimRequest {
    ClaimRequest {
        ack: Vec::new(),
        max,
        visibility_ms: Some(visibility_ms),
        wait_ms,
    }
}

/// `claim(max, LONG, 0)`, acking `jobs` first.
fn ack_then_claim(jobs: &[&Claimed], max: u32) -> ClaimRequest {
    ClaimRequest {
        ack: jobs
            .iter()
            .map(|j| Receipt {
                id: j.id.clone(),
                receipt: j.receipt.clone(),
            })
            .collect(),
        ..claim(max, LONG, 0)
    }
}

fn id_of(enqueued: Enqueued) -> String {
    match enqueued {
        Enqueued::New(id) => id,
        other => panic!("expected a new job, got {other:?}"),
    }
}

fn payloads(jobs: &[Claimed]) -> Vec<&[u8]> {
    jobs.iter().map(|j| j.payload.as_ref()).collect()
}

const LONG: u64 = 60_000;

mod cases {
    use super::*;

    pub async fn jobs_are_claimed_once_in_due_order_fifo_among_equals(app: &App) {
        let q = &app.queues;
        q.enqueue("work", job("a")).await.unwrap();
        q.enqueue("work", job("b")).await.unwrap();
        let early = EnqueueRequest {
            due_at_ms: Some(1),
            ..job("early")
        };
        q.enqueue("work", early).await.unwrap();
        q.enqueue("work", job("c")).await.unwrap();
        let first = q.claim("work", claim(2, LONG, 0)).await.unwrap();
        assert_eq!(payloads(&first), [&b"early"[..], b"a"]);
        let rest = q.claim("work", claim(10, LONG, 0)).await.unwrap();
        assert_eq!(payloads(&rest), [&b"b"[..], b"c"]);
        assert!(
            q.claim("work", claim(10, LONG, 0))
                .await
                .unwrap()
                .is_empty()
        );
        for j in first.iter().chain(&rest) {
            assert_eq!((j.attempt, j.max_attempts), (1, 5), "{j:?}");
        }
        let stats = app
            .queues
            .stats_for(&Default::default(), "work".into())
            .await
            .unwrap();
        assert_eq!((stats.ready, stats.in_flight), (0, 4), "{stats:?}");
        // Another queue is another queue.
        assert!(
            q.claim("other", claim(10, LONG, 0))
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn an_acked_job_is_gone_and_an_old_receipt_conflicts(app: &App) {
        let q = &app.queues;
        let id = id_of(q.enqueue("work", job("x")).await.unwrap());
        let first = q.claim("work", claim(1, 50, 0)).await.unwrap().remove(0);
        assert_eq!((first.id.as_str(), first.attempt), (id.as_str(), 1));
        // Its claim runs out: claimable again, as attempt 2.
        let second = q
            .claim("work", claim(1, LONG, 5_000))
            .await
            .unwrap()
            .remove(0);
        assert_eq!((second.id.as_str(), second.attempt), (id.as_str(), 2));
        assert_ne!(first.receipt, second.receipt);
        let err = q
            .settle("work", &id, &first.receipt, SettleRequest::Ack)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        let acked = q
            .settle("work", &id, &second.receipt, SettleRequest::Ack)
            .await;
        assert_eq!(acked.unwrap(), Settled::Acked);
        let err = q
            .settle("work", &id, &second.receipt, SettleRequest::Ack)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        let stats = q
            .stats_for(&Default::default(), "work".into())
            .await
            .unwrap();
        assert_eq!(
            (stats.ready, stats.delayed, stats.in_flight, stats.dead),
            (0, 0, 0, 0)
        );
    }

    pub async fn acks_carried_by_a_claim_are_made_all_or_none(app: &App) {
        let q = &app.queues;
        let stats = || async {
            let s = q.stats_for(&Default::default(), "work".into()).await;
            let s = s.unwrap();
            (s.ready, s.in_flight)
        };
        for p in ["a", "b", "c", "d"] {
            q.enqueue("work", job(p)).await.unwrap();
        }
        let a = q.claim("work", claim(1, LONG, 0)).await.unwrap().remove(0);
        // Ack a, claim b: one step.
        let b = q.claim("work", ack_then_claim(&[&a], 1)).await.unwrap();
        assert_eq!(payloads(&b), [b"b"]);
        let b = &b[0];
        let err = q
            .settle("work", &a.id, &a.receipt, SettleRequest::Ack)
            .await;
        assert!(matches!(err, Err(Error::NotFound(_))), "a is gone: {err:?}");
        assert_eq!(stats().await, (2, 1));

        // One ack that cannot be made refuses them all, and the claim.
        let err = q
            .claim("work", ack_then_claim(&[b, &a], 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::NotFound(m) if m.contains(&a.id)),
            "{err:?}"
        );
        let forged = Claimed {
            receipt: format!("{}x", b.receipt),
            ..b.clone()
        };
        let err = q
            .claim("work", ack_then_claim(&[&forged], 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Conflict(m) if m.contains(&b.id)),
            "{err:?}"
        );
        assert_eq!(stats().await, (2, 1), "nothing acked, nothing claimed");

        // The acks are made even when there is nothing to claim.
        let cd = q.claim("work", ack_then_claim(&[b], 5)).await.unwrap();
        assert_eq!(payloads(&cd), [&b"c"[..], b"d"]);
        let none = q.claim("work", ack_then_claim(&[&cd[0], &cd[1]], 5)).await;
        assert!(none.unwrap().is_empty());
        assert_eq!(stats().await, (0, 0));

        // A claim that ran out is not acked by its old receipt.
        q.enqueue("work", job("e")).await.unwrap();
        let first = q.claim("work", claim(1, 50, 0)).await.unwrap().remove(0);
        let again = q.claim("work", claim(1, LONG, 5_000)).await.unwrap();
        assert_eq!(
            (again[0].id.as_str(), again[0].attempt),
            (first.id.as_str(), 2)
        );
        let err = q
            .claim("work", ack_then_claim(&[&first], 1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        let none = q.claim("work", ack_then_claim(&[&again[0]], 1)).await;
        assert!(none.unwrap().is_empty());
        assert_eq!(stats().await, (0, 0));
    }

    pub async fn a_delayed_job_is_not_claimed_before_it_is_due(app: &App) {
        let q = &app.queues;
        // Long enough that a loaded machine reads the stats before it is due.
        let delayed = EnqueueRequest {
            delay_ms: Some(1500),
            ..job("later")
        };
        q.enqueue("work", delayed).await.unwrap();
        q.enqueue("work", job("now")).await.unwrap();
        let stats = q
            .stats_for(&Default::default(), "work".into())
            .await
            .unwrap();
        assert_eq!((stats.ready, stats.delayed), (1, 1), "{stats:?}");
        let now = q.claim("work", claim(10, LONG, 0)).await.unwrap();
        assert_eq!(payloads(&now), [b"now"]);
        let later = q.claim("work", claim(10, LONG, 5_000)).await.unwrap();
        assert_eq!(payloads(&later), [b"later"]);
        // Claimed at visible_at - visibility, on the store's clock.
        let claimed_at = later[0].visible_at - LONG;
        assert!(
            claimed_at >= later[0].enqueued_at + 1500,
            "claimed {} ms after the enqueue",
            claimed_at - later[0].enqueued_at
        );
    }

    pub async fn a_waiting_claim_gets_a_job_enqueued_meanwhile(app: &App) {
        let q = app.queues.clone();
        let waiting = tokio::spawn(async move { q.claim("work", claim(1, LONG, 10_000)).await });
        app.queues.enqueue("work", job("hello")).await.unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(payloads(&got), [b"hello"]);
    }

    pub async fn nacks_back_off_then_the_job_dies_with_its_last_error(app: &App) {
        let q = &app.queues;
        let flaky = EnqueueRequest {
            max_attempts: Some(2),
            backoff_ms: Some(1000),
            ..job("flaky")
        };
        let id = id_of(q.enqueue("work", flaky).await.unwrap());
        let nack = |error: &str| SettleRequest::Nack {
            delay_ms: None,
            error: Some(error.into()),
        };
        let first = q.claim("work", claim(1, LONG, 0)).await.unwrap().remove(0);
        let retrying = q
            .settle("work", &id, &first.receipt, nack("boom 1"))
            .await
            .unwrap();
        let Settled::Retrying { due } = retrying else {
            panic!("{retrying:?}");
        };
        let stats = q
            .stats_for(&Default::default(), "work".into())
            .await
            .unwrap();
        assert_eq!((stats.ready, stats.delayed, stats.in_flight), (0, 1, 0));
        let second = q
            .claim("work", claim(1, LONG, 5_000))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(second.attempt, 2);
        assert!(
            second.visible_at - LONG >= due,
            "claimed before its backoff ran out"
        );
        let dead = q
            .settle("work", &id, &second.receipt, nack("boom 2"))
            .await
            .unwrap();
        assert_eq!(dead, Settled::Dead);
        let caller = Default::default();
        let listed = q
            .dead_for(&caller, "work".into(), None, None)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].id.as_str(),
                listed[0].attempts,
                listed[0].error.as_deref()
            ),
            (id.as_str(), 2, Some("boom 2"))
        );
        assert_eq!(listed[0].payload.as_ref(), b"flaky");
        assert!(q.claim("work", claim(1, LONG, 0)).await.unwrap().is_empty());
        // Redriven: ready again with fresh attempts.
        assert_eq!(
            q.redrive_for(&caller, "work".into(), None).await.unwrap(),
            1
        );
        let again = q.claim("work", claim(1, LONG, 0)).await.unwrap().remove(0);
        assert_eq!((again.id.as_str(), again.attempt), (id.as_str(), 1));
        let done = q
            .settle("work", &id, &again.receipt, nack("boom 3"))
            .await
            .unwrap();
        assert!(matches!(done, Settled::Retrying { .. }), "{done:?}");
        // An explicit delay wins over the backoff; 0 is due at once.
        let third = q
            .claim("work", claim(1, LONG, 5_000))
            .await
            .unwrap()
            .remove(0);
        let now = SettleRequest::Nack {
            delay_ms: Some(0),
            error: None,
        };
        assert_eq!(
            q.settle("work", &id, &third.receipt, now).await.unwrap(),
            Settled::Dead
        );
        let listed = q
            .dead_for(&caller, "work".into(), None, None)
            .await
            .unwrap();
        assert_eq!(listed[0].error, None, "a nack without an error clears it");
        assert_eq!(q.purge_dead_for(&caller, "work".into()).await.unwrap(), 1);
        assert!(
            q.dead_for(&caller, "work".into(), None, None)
                .await
                .unwrap()
                .is_empty()
        );
        let err = q
            .settle("work", &id, &third.receipt, SettleRequest::Ack)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "purged: {err:?}");
    }

    pub async fn a_claim_running_out_on_the_last_attempt_is_dead(app: &App) {
        let q = &app.queues;
        let once = EnqueueRequest {
            max_attempts: Some(1),
            ..job("once")
        };
        let id = id_of(q.enqueue("work", once).await.unwrap());
        let claimed = q.claim("work", claim(1, 50, 0)).await.unwrap().remove(0);
        // Nothing more to claim: the job's one attempt runs out into the
        // dead letters (the wait ends once it is due, which it never is).
        assert!(
            q.claim("work", claim(1, LONG, 300))
                .await
                .unwrap()
                .is_empty()
        );
        let caller = Default::default();
        let dead = q
            .dead_for(&caller, "work".into(), None, None)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            (dead[0].id.as_str(), dead[0].error.as_deref()),
            (id.as_str(), Some(CLAIM_EXPIRED))
        );
        assert_eq!(dead[0].died_at, claimed.visible_at);
        let err = q
            .settle("work", &id, &claimed.receipt, SettleRequest::Ack)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    }

    pub async fn extend_keeps_the_claim(app: &App) {
        let q = &app.queues;
        let id = id_of(q.enqueue("work", job("slow")).await.unwrap());
        let claimed = q.claim("work", claim(1, 1000, 0)).await.unwrap().remove(0);
        let extend = SettleRequest::Extend {
            visibility_ms: Some(LONG),
        };
        let extended = q
            .settle("work", &id, &claimed.receipt, extend)
            .await
            .unwrap();
        let Settled::Extended { visible_at } = extended else {
            panic!("{extended:?}");
        };
        assert!(
            visible_at >= claimed.visible_at - 1000 + LONG,
            "{visible_at}"
        );
        // Well past the first window, no one else gets it.
        assert!(
            q.claim("work", claim(1, LONG, 1500))
                .await
                .unwrap()
                .is_empty()
        );
        let acked = q
            .settle("work", &id, &claimed.receipt, SettleRequest::Ack)
            .await;
        assert_eq!(acked.unwrap(), Settled::Acked);
    }

    pub async fn a_dedup_id_enqueues_once(app: &App) {
        let q = &app.queues;
        let with_id = |payload: &str| EnqueueRequest {
            dedup_id: Some("order-7".into()),
            ..job(payload)
        };
        let first = id_of(q.enqueue("work", with_id("one")).await.unwrap());
        let second = q.enqueue("work", with_id("two")).await.unwrap();
        assert_eq!(second, Enqueued::Duplicate(first.clone()));
        // Even once the first job is done.
        let claimed = q.claim("work", claim(10, LONG, 0)).await.unwrap();
        assert_eq!(payloads(&claimed), [b"one"]);
        q.settle("work", &first, &claimed[0].receipt, SettleRequest::Ack)
            .await
            .unwrap();
        let third = q.enqueue("work", with_id("three")).await.unwrap();
        assert_eq!(third, Enqueued::Duplicate(first));
        // The same id in another queue is another id.
        let other = q.enqueue("other", with_id("four")).await.unwrap();
        assert!(matches!(other, Enqueued::New(_)), "{other:?}");
    }

    pub async fn concurrent_claims_hand_each_job_out_once(app: &App) {
        const JOBS: usize = 200;
        for n in 0..JOBS {
            app.queues
                .enqueue("work", job(&n.to_string()))
                .await
                .unwrap();
        }
        let mut workers = Vec::new();
        for _ in 0..8 {
            let q = app.queues.clone();
            workers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let jobs = q.claim("work", claim(5, LONG, 0)).await.unwrap();
                    if jobs.is_empty() {
                        return got;
                    }
                    for j in jobs {
                        q.settle("work", &j.id, &j.receipt, SettleRequest::Ack)
                            .await
                            .unwrap();
                        got.push(String::from_utf8(j.payload.to_vec()).unwrap());
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        let distinct: BTreeSet<_> = all.iter().cloned().collect();
        assert_eq!((all.len(), distinct.len()), (JOBS, JOBS));
    }

    pub async fn queues_are_listed_while_they_hold_jobs(app: &App) {
        let q = &app.queues;
        let caller = Default::default();
        for name in ["mail", "images", "mail-retry"] {
            q.enqueue(name, job("x")).await.unwrap();
        }
        let all = q.list_for(&caller, "*".into(), None, None).await.unwrap();
        assert_eq!(all.queues, ["images", "mail", "mail-retry"]);
        assert_eq!(all.next, None);
        let mail = q
            .list_for(&caller, "mail*".into(), None, None)
            .await
            .unwrap();
        assert_eq!(mail.queues, ["mail", "mail-retry"]);
        let page = q
            .list_for(&caller, "*".into(), None, Some(2))
            .await
            .unwrap();
        assert_eq!(page.queues, ["images", "mail"]);
        let rest = q
            .list_for(&caller, "*".into(), page.next.as_deref(), Some(2))
            .await
            .unwrap();
        assert_eq!(rest.queues, ["mail-retry"]);
        // Emptied, a queue leaves the listing.
        let j = q
            .claim("images", claim(1, LONG, 0))
            .await
            .unwrap()
            .remove(0);
        q.settle("images", &j.id, &j.receipt, SettleRequest::Ack)
            .await
            .unwrap();
        let all = q.list_for(&caller, "*".into(), None, None).await.unwrap();
        assert_eq!(all.queues, ["mail", "mail-retry"]);
        // And comes back when it fills again.
        q.enqueue("images", job("y")).await.unwrap();
        let all = q.list_for(&caller, "*".into(), None, None).await.unwrap();
        assert_eq!(all.queues, ["images", "mail", "mail-retry"]);
    }

    pub async fn bad_queue_input_is_rejected(app: &App) {
        let q = &app.queues;
        let invalid = |r: Result<_, Error>, says: &str| match r {
            Err(Error::InvalidArgument(m)) if m.contains(says) => {}
            other => panic!("expected invalid_argument saying {says:?}, got {other:?}"),
        };
        let zero = EnqueueRequest {
            max_attempts: Some(0),
            ..job("x")
        };
        invalid(q.enqueue("work", zero).await.map(|_| ()), "max_attempts");
        let both = EnqueueRequest {
            delay_ms: Some(5),
            due_at_ms: Some(5),
            ..job("x")
        };
        invalid(q.enqueue("work", both).await.map(|_| ()), "not both");
        let far = EnqueueRequest {
            delay_ms: Some(u64::MAX),
            ..job("x")
        };
        invalid(q.enqueue("work", far).await.map(|_| ()), "delay_ms");
        let inverted = EnqueueRequest {
            backoff_ms: Some(1000),
            backoff_max_ms: Some(10),
            ..job("x")
        };
        invalid(
            q.enqueue("work", inverted).await.map(|_| ()),
            "backoff_max_ms",
        );
        invalid(q.enqueue("", job("x")).await.map(|_| ()), "queue name");
        let big = EnqueueRequest {
            payload: Bytes::from(vec![0; 2 * 1024 * 1024]),
            ..EnqueueRequest::default()
        };
        let err = q.enqueue("work", big).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
        invalid(
            q.claim("work", claim(100_000, LONG, 0)).await.map(|_| ()),
            "limits.max_batch",
        );
        let far = EnqueueRequest {
            due_at_ms: Some(u64::MAX),
            ..job("x")
        };
        invalid(q.enqueue("work", far).await.map(|_| ()), "due_at_ms");
        invalid(
            q.claim("work", claim(1, 0, 0)).await.map(|_| ()),
            "visibility_ms",
        );
        let receipt = |id: &str| Receipt {
            id: id.into(),
            receipt: "r".into(),
        };
        let acks = |ack: Vec<Receipt>| ClaimRequest {
            ack,
            ..claim(1, LONG, 0)
        };
        let id = "0000000000000001";
        invalid(
            q.claim("work", acks(vec![receipt(id), receipt(id)]))
                .await
                .map(|_| ()),
            "twice",
        );
        invalid(
            q.claim("work", acks(vec![receipt("nope")]))
                .await
                .map(|_| ()),
            "job id",
        );
        let many = (0..=Config::default().limits.max_batch as u64)
            .map(|n| receipt(&format!("{n:016x}")))
            .collect();
        invalid(
            q.claim("work", acks(many)).await.map(|_| ()),
            "limits.max_batch",
        );
        invalid(
            q.claim("work", claim(1, LONG, 3_600_000)).await.map(|_| ()),
            "wait_ms",
        );
        invalid(
            q.settle("work", "nope", "r", SettleRequest::Ack)
                .await
                .map(|_| ()),
            "job id",
        );
        invalid(
            q.settle("work", "0000000000000001", "", SettleRequest::Ack)
                .await
                .map(|_| ()),
            "receipt",
        );
        // Nothing of it was enqueued.
        let stats = q
            .stats_for(&Default::default(), "work".into())
            .await
            .unwrap();
        assert_eq!((stats.ready, stats.delayed), (0, 0));
        // A job's real id with a made-up receipt conflicts; an unknown id
        // is not found.
        let id = id_of(q.enqueue("work", job("x")).await.unwrap());
        q.claim("work", claim(1, LONG, 0)).await.unwrap();
        let err = q
            .settle(
                "work",
                &id,
                &format!("{id}.1.0000000000000000"),
                SettleRequest::Ack,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        let err = q
            .settle("work", "00000000000000ff", "r", SettleRequest::Ack)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    }
}
