//! Locks, semaphores and rate limits over the wire: live `outrigger`
//! processes on the memory backend and on real Redis, over HTTP and gRPC,
//! and the contention tests that need several sidecars on one Redis.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrigger::api::pb;
use outrigger::api::pb::hold_response::Event;
use outrigger::api::pb::lock_client::LockClient;
use outrigger::api::pb::rate_limit_client::RateLimitClient;
use outrigger_tests::{
    RedisServer, Sidecar, SidecarBuilder, SidecarOn, Topology, conformance, sidecar, unique,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Policies every sidecar in these tests has.
fn with_policies(b: SidecarBuilder) -> SidecarBuilder {
    let p = |b: SidecarBuilder,
             name: &str,
             algorithm: &str,
             limit: u32,
             period: &str,
             burst: Option<u32>| {
        let prefix = format!("OUTRIGGER_RATELIMIT__POLICIES__{}", name.to_uppercase());
        let b = b
            .env(&format!("{prefix}__ALGORITHM"), algorithm)
            .env(&format!("{prefix}__LIMIT"), limit.to_string())
            .env(&format!("{prefix}__PERIOD"), period);
        match burst {
            Some(burst) => b.env(&format!("{prefix}__BURST"), burst.to_string()),
            None => b,
        }
    };
    let b = p(b, "login", "gcra", 5, "1m", None);
    let b = p(b, "slow", "gcra", 10, "100s", None);
    let b = p(b, "steady", "gcra", 20, "1s", Some(5));
    p(b, "window", "fixed_window", 2, "1m", None)
}

/// A sidecar on the case's topology.
type Target = SidecarOn;

async fn target(topology: Topology) -> Target {
    topology.sidecar(with_policies(sidecar!()), "locks").await
}

conformance!(
    target;
    [memory: Memory, with_redis: Redis];
    {
        http_locks,
        http_semaphores,
        http_rate_limits_answer_429_with_headers,
        http_rejects_bad_lock_and_rate_limit_input,
        grpc_locks_semaphores_and_rate_limits,
        hold_renews_while_open_and_releases_on_close,
        hold_release_message_releases,
        hold_reports_lost_when_the_lock_is_taken,
        a_killed_hold_client_releases_its_lock,
        rate_limit_peek_and_reset_over_http_and_grpc,
        rate_limit_multi_check_over_http_and_grpc,
    }
);

async fn rate_limit_multi_check_over_http_and_grpc(t: &Target) {
    let s = &t.sidecar;
    let both = json!({"checks": [
        {"policy": "login", "key": "{alice}:user"},
        {"policy": "window", "key": "{alice}:ip", "cost": 2},
    ]});
    let (status, all) = post(s, "/v1/ratelimit/check-all", both.clone()).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["allowed"], true, "{all}");
    assert_eq!(all["decisions"][0]["remaining"], 4, "{all}");
    assert_eq!(all["decisions"][1]["remaining"], 0, "{all}");
    // The window is used up: 429, nothing taken, and which one said no.
    let resp = http()
        .post(s.url("/v1/ratelimit/check-all"))
        .json(&both)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let refused: Value = resp.json().await.unwrap();
    assert_eq!(refused["allowed"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    assert_eq!(
        (
            &refused["decisions"][0]["allowed"],
            &refused["decisions"][1]["allowed"]
        ),
        (&json!(true), &json!(false)),
        "{refused}"
    );
    let (_, peek) = post(
        s,
        "/v1/ratelimit/login/peek",
        json!({"key": "{alice}:user"}),
    )
    .await;
    assert_eq!(
        peek["remaining"], 3,
        "the refused multi-check took nothing: {peek}"
    );
    for (body, status) in [
        (json!({"checks": []}), 400),
        (
            json!({"checks": [{"policy": "login", "key": "k"}, {"policy": "login", "key": "k"}]}),
            400,
        ),
        (json!({"checks": [{"policy": "absent", "key": "k"}]}), 404),
        (json!({"checks": [{"policy": "login"}]}), 400),
        (
            json!({"checks": [{"policy": "login", "key": "k", "color": 1}]}),
            400,
        ),
    ] {
        let (got, reply) = post(s, "/v1/ratelimit/check-all", body.clone()).await;
        assert_eq!(got, status, "{body}: {reply}");
    }

    let mut rl = RateLimitClient::new(s.channel().await);
    let check = |policy: &str, key: &str| pb::CheckRequest {
        policy: policy.into(),
        key: key.into(),
        cost: 1,
        inline: None,
    };
    let req = pb::CheckAllRequest {
        checks: vec![check("login", "{bob}:user"), check("window", "{bob}:ip")],
    };
    let all = rl.check_all(req.clone()).await.unwrap().into_inner();
    assert!(all.allowed && all.decisions.len() == 2, "{all:?}");
    let all = rl.check_all(req.clone()).await.unwrap().into_inner();
    assert!(all.allowed, "{all:?}");
    let refused = rl.check_all(req).await.unwrap().into_inner();
    assert!(
        !refused.allowed && !refused.decisions[1].allowed,
        "{refused:?}"
    );
    assert_eq!(
        refused.decisions[0].remaining, 2,
        "nothing taken: {refused:?}"
    );
    let err = rl
        .check_all(pb::CheckAllRequest { checks: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn rate_limit_peek_and_reset_over_http_and_grpc(t: &Target) {
    let s = &t.sidecar;
    for _ in 0..2 {
        assert_eq!(
            post(s, "/v1/ratelimit/window/check", json!({"key": "u"}))
                .await
                .0,
            200
        );
    }
    // Used up: a peek says so with 200 (not 429) and takes nothing.
    let (status, peek) = post(s, "/v1/ratelimit/window/peek", json!({"key": "u"})).await;
    assert_eq!(status, 200, "{peek}");
    assert_eq!(
        (peek["allowed"].as_bool(), peek["remaining"].as_u64()),
        (Some(false), Some(0))
    );
    assert!(peek["retry_after_ms"].as_u64().unwrap() > 0, "{peek}");
    assert_eq!(
        post(s, "/v1/ratelimit/window/check", json!({"key": "u"}))
            .await
            .0,
        429
    );
    let (status, reset) = post(s, "/v1/ratelimit/window/reset", json!({"key": "u"})).await;
    assert_eq!((status, reset), (200, json!({"existed": true})));
    assert_eq!(
        post(s, "/v1/ratelimit/window/check", json!({"key": "u"}))
            .await
            .0,
        200
    );
    let (status, err) = post(s, "/v1/ratelimit/window/reset", json!({"key": ""})).await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = post(s, "/v1/ratelimit/absent/peek", json!({"key": "u"})).await;
    assert_eq!(status, 404, "{err}");

    let mut rl = RateLimitClient::new(s.channel().await);
    let check = |key: &str| pb::CheckRequest {
        policy: "window".into(),
        key: key.into(),
        cost: 1,
        inline: None,
    };
    let peek = rl.peek(check("g")).await.unwrap().into_inner();
    assert!(peek.allowed && peek.remaining == 1, "{peek:?}");
    assert_eq!(
        rl.check(check("g")).await.unwrap().into_inner().remaining,
        1
    );
    let reset = pb::ResetLimitRequest {
        policy: "window".into(),
        key: "g".into(),
    };
    assert!(rl.reset(reset.clone()).await.unwrap().into_inner().existed);
    assert!(!rl.reset(reset).await.unwrap().into_inner().existed);
    let bad = rl
        .reset(pb::ResetLimitRequest {
            policy: String::new(),
            key: "g".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn post(s: &Sidecar, path: &str, body: Value) -> (u16, Value) {
    let resp = http().post(s.url(path)).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn http_locks(t: &Target) {
    let s = &t.sidecar;
    let (status, lease) = post(s, "/v1/locks/orders/acquire", json!({"ttl_ms": 10_000})).await;
    assert_eq!(status, 200, "{lease}");
    let token = lease["token"].as_str().unwrap().to_string();
    let fence = lease["fence"].as_u64().unwrap();

    let (status, body) = post(
        s,
        "/v1/locks/orders/acquire",
        json!({"ttl_ms": 10_000, "wait_ms": 100}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    let (status, body) = post(
        s,
        "/v1/locks/orders/release",
        json!({"token": "someone-else"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(
        s,
        "/v1/locks/orders/extend",
        json!({"token": "someone-else", "ttl_ms": 5000}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(
        s,
        "/v1/locks/orders/extend",
        json!({"token": token, "ttl_ms": 5000}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"extended": true})));
    let (status, body) = post(s, "/v1/locks/orders/release", json!({"token": token})).await;
    assert_eq!((status, body), (200, json!({"released": true})));
    let (status, _) = post(s, "/v1/locks/orders/release", json!({"token": token})).await;
    assert_eq!(status, 409, "released twice");

    let (status, again) = post(s, "/v1/locks/orders/acquire", json!({"ttl_ms": 10_000})).await;
    assert_eq!(status, 200);
    assert!(again["fence"].as_u64().unwrap() > fence);
}

async fn http_semaphores(t: &Target) {
    let s = &t.sidecar;
    let body = json!({"limit": 2, "ttl_ms": 10_000});
    let (s1, p1) = post(s, "/v1/semaphores/pool/acquire", body.clone()).await;
    let (s2, _) = post(s, "/v1/semaphores/pool/acquire", body.clone()).await;
    assert_eq!((s1, s2), (200, 200));
    let (s3, full) = post(s, "/v1/semaphores/pool/acquire", body.clone()).await;
    assert_eq!(s3, 409, "{full}");
    assert_eq!(full["error"]["code"], "conflict");
    let token = p1["token"].as_str().unwrap();
    let (status, _) = post(s, "/v1/semaphores/pool/release", json!({"token": token})).await;
    assert_eq!(status, 200);
    let (status, _) = post(s, "/v1/semaphores/pool/release", json!({"token": token})).await;
    assert_eq!(status, 409);
    let (status, _) = post(s, "/v1/semaphores/pool/acquire", body).await;
    assert_eq!(status, 200);
}

async fn http_rate_limits_answer_429_with_headers(t: &Target) {
    let s = &t.sidecar;
    for remaining in (0..5).rev() {
        let resp = http()
            .post(s.url("/v1/ratelimit/login/check"))
            .json(&json!({"key": "alice"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["ratelimit-limit"], "5");
        assert_eq!(h["ratelimit-remaining"], remaining.to_string().as_str());
        assert!(h.contains_key("ratelimit-reset"));
        assert!(!h.contains_key("retry-after"), "only when denied");
    }
    let denied = http()
        .post(s.url("/v1/ratelimit/login/check"))
        .json(&json!({"key": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = denied.headers().clone();
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(
        h["retry-after"], "12",
        "60 s / 5, in whole seconds rounded up"
    );
    assert_eq!(h["ratelimit-reset"], "60");
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["allowed"], false);
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry = body["retry_after_ms"].as_u64().unwrap();
    assert!((11_000..=12_000).contains(&retry), "{retry}");

    // Another key has its own budget; inline limits work over HTTP too.
    let (status, _) = post(
        s,
        "/v1/ratelimit/login/check",
        json!({"key": "bob", "cost": 5}),
    )
    .await;
    assert_eq!(status, 200);
    let inline = json!({"key": "k", "inline": {"algorithm": "fixed_window", "limit": 1, "period_ms": 60000}});
    assert_eq!(
        post(s, "/v1/ratelimit/adhoc/check", inline.clone()).await.0,
        200
    );
    assert_eq!(post(s, "/v1/ratelimit/adhoc/check", inline).await.0, 429);
}

async fn http_rejects_bad_lock_and_rate_limit_input(t: &Target) {
    let s = &t.sidecar;
    let cases = [
        (
            "/v1/locks/l/acquire",
            json!({"ttl_ms": 0}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/locks/l/acquire",
            json!({"wait_ms": 10}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/locks/l/acquire",
            json!({"ttl_ms": 10, "colour": "red"}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/locks/l/acquire",
            json!({"ttl_ms": 10, "wait_ms": 999_999_999}),
            400,
            "invalid_argument",
        ),
        ("/v1/locks/l/release", json!({}), 400, "invalid_argument"),
        (
            "/v1/semaphores/s/acquire",
            json!({"limit": 0, "ttl_ms": 10}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/ratelimit/nope/check",
            json!({"key": "k"}),
            404,
            "not_found",
        ),
        (
            "/v1/ratelimit/login/check",
            json!({"key": ""}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/ratelimit/login/check",
            json!({"key": "k", "cost": 6}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/ratelimit/login/check",
            json!({"cost": 1}),
            400,
            "invalid_argument",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, resp) = post(s, path, body.clone()).await;
        assert_eq!(got, status, "{path} {body}: {resp}");
        assert_eq!(resp["error"]["code"], code, "{path} {body}: {resp}");
    }
    let bad_json = http()
        .post(s.url("/v1/locks/l/acquire"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
}

async fn grpc_locks_semaphores_and_rate_limits(t: &Target) {
    let channel = t.sidecar.channel().await;
    let mut locks = LockClient::new(channel.clone());
    let acquire = |name: &str, ttl_ms, wait_ms| pb::AcquireRequest {
        name: name.into(),
        ttl_ms,
        wait_ms,
    };
    let a = locks
        .acquire(acquire("g", 10_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(a.acquired && !a.token.is_empty() && a.fence > 0);
    let b = locks
        .acquire(acquire("g", 10_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!b.acquired, "not acquired is not an error");
    let wrong = pb::ReleaseRequest {
        name: "g".into(),
        token: "wrong".into(),
    };
    assert!(!locks.release(wrong).await.unwrap().into_inner().released);
    let ext = pb::ExtendRequest {
        name: "g".into(),
        token: a.token.clone(),
        ttl_ms: 10_000,
    };
    assert!(locks.extend(ext).await.unwrap().into_inner().extended);
    let rel = pb::ReleaseRequest {
        name: "g".into(),
        token: a.token,
    };
    assert!(locks.release(rel).await.unwrap().into_inner().released);
    let bad = locks.acquire(acquire("", 10_000, 0)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let permit = |limit| pb::AcquirePermitRequest {
        name: "p".into(),
        limit,
        ttl_ms: 10_000,
        wait_ms: 0,
    };
    let p1 = locks.acquire_permit(permit(1)).await.unwrap().into_inner();
    assert!(p1.acquired);
    assert!(
        !locks
            .acquire_permit(permit(1))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
    let back = pb::ReleasePermitRequest {
        name: "p".into(),
        token: p1.token,
    };
    assert!(
        locks
            .release_permit(back)
            .await
            .unwrap()
            .into_inner()
            .released
    );

    let mut rl = RateLimitClient::new(channel);
    let check = |cost| pb::CheckRequest {
        policy: "window".into(),
        key: "k".into(),
        cost,
        inline: None,
    };
    let d = rl.check(check(2)).await.unwrap().into_inner();
    assert!(d.allowed && d.limit == 2 && d.remaining == 0, "{d:?}");
    let d = rl.check(check(1)).await.unwrap().into_inner();
    assert!(
        !d.allowed && d.retry_after_ms > 0 && d.retry_after_ms <= 60_000,
        "{d:?}"
    );
    let unknown = pb::CheckRequest {
        policy: "unknown".into(),
        ..check(1)
    };
    assert_eq!(rl.check(unknown).await.unwrap_err().code(), Code::NotFound);
    let inline = pb::CheckRequest {
        policy: "adhoc".into(),
        inline: Some(pb::InlineLimit {
            algorithm: "gcra".into(),
            limit: 1,
            period_ms: 60_000,
            burst: 0,
        }),
        ..check(1)
    };
    assert!(rl.check(inline.clone()).await.unwrap().into_inner().allowed);
    assert!(!rl.check(inline).await.unwrap().into_inner().allowed);
}

/// An open Hold stream: send on `tx`, read events from `events`.
struct Hold {
    tx: mpsc::Sender<pb::HoldRequest>,
    events: tonic::Streaming<pb::HoldResponse>,
}

async fn hold(s: &Sidecar, name: &str, ttl_ms: u64) -> (Hold, pb::HoldResponse) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::HoldRequest {
        action: Some(pb::hold_request::Action::Acquire(pb::AcquireRequest {
            name: name.into(),
            ttl_ms,
            wait_ms: 0,
        })),
    })
    .await
    .unwrap();
    let mut client = LockClient::new(s.channel().await);
    let mut events = client
        .hold(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().expect("first event");
    (Hold { tx, events }, first)
}

async fn try_lock(s: &Sidecar, name: &str, wait_ms: u64) -> Option<pb::AcquireResponse> {
    let mut client = LockClient::new(s.channel().await);
    let r = client
        .acquire(pb::AcquireRequest {
            name: name.into(),
            ttl_ms: 10_000,
            wait_ms,
        })
        .await
        .unwrap()
        .into_inner();
    r.acquired.then_some(r)
}

async fn hold_renews_while_open_and_releases_on_close(t: &Target) {
    let s = &t.sidecar;
    let (h, first) = hold(s, "held", 300).await;
    assert_eq!(first.event, Event::Acquired as i32);
    // Four TTLs later it is still held: the sidecar renews it.
    let started = Instant::now();
    assert!(
        try_lock(s, "held", 1_200).await.is_none(),
        "renewed while the stream is open"
    );
    assert!(started.elapsed() >= Duration::from_millis(1_200));

    // Closing the stream releases at once.
    let (h2, first) = hold(s, "closed", 30_000).await;
    assert_eq!(first.event, Event::Acquired as i32);
    drop(h2);
    let started = Instant::now();
    let next = try_lock(s, "closed", 5_000)
        .await
        .expect("released when the stream closed");
    assert!(next.fence > first.fence);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(h);
}

async fn hold_release_message_releases(t: &Target) {
    let s = &t.sidecar;
    let (mut h, first) = hold(s, "r", 30_000).await;
    assert_eq!(first.event, Event::Acquired as i32);
    h.tx.send(pb::HoldRequest {
        action: Some(pb::hold_request::Action::Release(true)),
    })
    .await
    .unwrap();
    let ev = h.events.message().await.unwrap().expect("an answer");
    assert_eq!(ev.event, Event::Released as i32, "{ev:?}");
    assert!(
        h.events.message().await.unwrap().is_none(),
        "the stream ends"
    );
    assert!(try_lock(s, "r", 0).await.is_some());
    // A second Hold on a held lock answers NOT_ACQUIRED and ends.
    let (_h1, _) = hold(s, "busy", 30_000).await;
    let (mut h2, first) = hold(s, "busy", 30_000).await;
    assert_eq!(first.event, Event::NotAcquired as i32);
    assert!(h2.events.message().await.unwrap().is_none());
}

async fn hold_reports_lost_when_the_lock_is_taken(t: &Target) {
    let s = &t.sidecar;
    let (mut h, first) = hold(s, "stolen", 600).await;
    assert_eq!(first.event, Event::Acquired as i32);
    // Misuse: someone releases with the holder's token and takes the lock.
    let mut client = LockClient::new(s.channel().await);
    let released = client
        .release(pb::ReleaseRequest {
            name: "stolen".into(),
            token: first.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released);
    assert!(try_lock(s, "stolen", 0).await.is_some());
    let started = Instant::now();
    let ev = tokio::time::timeout(Duration::from_secs(5), h.events.message())
        .await
        .expect("LOST within 5 s (a hold that never noticed would hang)")
        .unwrap()
        .expect("LOST");
    assert_eq!(ev.event, Event::Lost as i32, "{ev:?}");
    assert!(!ev.reason.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "at the next renewal (ttl/3)"
    );
    assert!(
        h.events.message().await.unwrap().is_none(),
        "the stream ends"
    );
}

async fn a_killed_hold_client_releases_its_lock(t: &Target) {
    let s = &t.sidecar;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hold-client"))
        .args([s.grpc_url().as_str(), "victim", "30000"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("hold-client answers")
        .unwrap()
        .expect("a line");
    assert!(line.starts_with("acquired fence="), "{line}");
    assert!(
        try_lock(s, "victim", 0).await.is_none(),
        "held by the client"
    );
    child.kill().await.unwrap(); // SIGKILL: no goodbye
    let started = Instant::now();
    let got = try_lock(s, "victim", 10_000)
        .await
        .expect("released after the client died");
    assert!(got.fence > 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "released by the broken stream, not the 30 s lease: {:?}",
        started.elapsed()
    );
}

// ---- several sidecars on one Redis -----------------------------------------

#[tokio::test]
async fn mutual_exclusion_across_two_sidecars() {
    let redis = RedisServer::start().await;
    let ns = unique("mutex");
    let a = Arc::new(sidecar!().redis(&redis).namespace(&ns).start().await);
    let b = Arc::new(sidecar!().redis(&redis).namespace(&ns).start().await);
    contend(a, b).await;
}

#[tokio::test]
async fn mutual_exclusion_on_memory() {
    let a = Arc::new(sidecar!().start().await);
    contend(a.clone(), a).await;
}

/// Clients on `a` and `b` (which may be one sidecar) take turns on one
/// lock to increment a counter by read-modify-write: no update is lost,
/// and no two holds overlap.
async fn contend(a: Arc<Sidecar>, b: Arc<Sidecar>) {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 15;
    let c = http();
    c.put(a.url("/v1/cache/counter"))
        .body("0")
        .send()
        .await
        .unwrap();

    let mut tasks = vec![];
    for i in 0..CLIENTS {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut holds = vec![];
            for _ in 0..ROUNDS {
                let lease: Value = c
                    .post(s.url("/v1/locks/counter/acquire"))
                    .json(&json!({"ttl_ms": 10_000, "wait_ms": 30_000}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let got_at = Instant::now();
                let token = lease["token"].as_str().expect("acquired").to_string();
                let fence = lease["fence"].as_u64().unwrap();
                // A plain read-modify-write: only the lock makes it safe.
                let n: u64 = c
                    .get(s.url("/v1/cache/counter"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
                    .parse()
                    .unwrap();
                c.put(s.url("/v1/cache/counter"))
                    .body((n + 1).to_string())
                    .send()
                    .await
                    .unwrap();
                let releasing_at = Instant::now();
                let released = c
                    .post(s.url("/v1/locks/counter/release"))
                    .json(&json!({"token": token}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(released.status(), StatusCode::OK);
                holds.push((fence, got_at, releasing_at));
            }
            holds
        }));
    }
    let mut holds = vec![];
    for task in tasks {
        holds.extend(task.await.unwrap());
    }
    let counter = c
        .get(a.url("/v1/cache/counter"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(counter, (CLIENTS * ROUNDS).to_string(), "no lost update");

    // In fence order, each hold starts after the previous one ended: holds
    // never overlap, and fences increase in acquisition order.
    holds.sort_by_key(|h| h.0);
    for pair in holds.windows(2) {
        let ((f1, _, end1), (f2, start2, _)) = (pair[0], pair[1]);
        assert!(f2 > f1, "fences are unique");
        assert!(
            start2 > end1,
            "hold with fence {f2} began before {f1} was released"
        );
    }
}

#[tokio::test]
async fn rate_limits_are_shared_across_sidecars() {
    let redis = RedisServer::start().await;
    let ns = unique("rl");
    let a = Arc::new(
        with_policies(sidecar!().redis(&redis).namespace(&ns))
            .start()
            .await,
    );
    let b = Arc::new(
        with_policies(sidecar!().redis(&redis).namespace(&ns))
            .start()
            .await,
    );
    let c = http();

    // "slow": gcra, 10 per 100 s, burst 10: the 10 s emission interval is far
    // longer than this burst of 40 takes, so exactly the burst is allowed.
    let mut tasks = vec![];
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.post(s.url("/v1/ratelimit/slow/check"))
                .json(&json!({"key": "shared"}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut by_status = BTreeMap::new();
    for task in tasks {
        *by_status.entry(task.await.unwrap().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(by_status, BTreeMap::from([(200, 10), (429, 30)]));

    // "steady": gcra, 20 per second (one per 50 ms), burst 5. Hammer it from
    // both sidecars for about a second: allowed = burst + elapsed / 50 ms.
    let started = Instant::now();
    let mut tasks = vec![];
    for i in 0..4 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            while started.elapsed() < Duration::from_secs(1) {
                let status = c
                    .post(s.url("/v1/ratelimit/steady/check"))
                    .json(&json!({"key": "shared"}))
                    .send()
                    .await
                    .unwrap()
                    .status();
                allowed += u32::from(status == StatusCode::OK);
            }
            allowed
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let expected = 5 + (elapsed.as_millis() / 50) as u32;
    // Tolerance ±2: the window we time on the client is not exactly the
    // window Redis saw (the first request reaches Redis a round trip after
    // `started`, the last one's clock reading is taken before its reply), and
    // the final partial interval may or may not have refilled a token.
    assert!(
        allowed.abs_diff(expected) <= 2,
        "allowed {allowed} in {elapsed:?}; expected {expected} ± 2"
    );
}

#[tokio::test]
async fn a_stale_holder_is_fenced_out_after_its_ttl() {
    let redis = RedisServer::start().await;
    let ns = unique("stale");
    let a = sidecar!().redis(&redis).namespace(&ns).start().await;
    let b = sidecar!().redis(&redis).namespace(&ns).start().await;
    let fence = |v: &Value| {
        v["fence"]
            .as_u64()
            .unwrap_or_else(|| panic!("no fence: {v}"))
    };
    let (status, stale) = post(&a, "/v1/locks/job/acquire", json!({"ttl_ms": 200})).await;
    assert_eq!(status, 200, "{stale}");
    let held_since = Instant::now();
    // The holder stops renewing; once its TTL runs out (not before, and
    // long before the waiter's own 5 s) another sidecar gets it.
    let (status, fresh) = post(
        &b,
        "/v1/locks/job/acquire",
        json!({"ttl_ms": 10_000, "wait_ms": 5_000}),
    )
    .await;
    let waited = held_since.elapsed();
    assert_eq!(status, 200, "{fresh}");
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "got the lock {waited:?} after a 200 ms lease was taken"
    );
    assert!(fence(&fresh) > fence(&stale));
    let (status, _) = post(
        &a,
        "/v1/locks/job/release",
        json!({"token": stale["token"]}),
    )
    .await;
    assert_eq!(status, 409, "the stale holder cannot release");
    let (status, _) = post(
        &a,
        "/v1/locks/job/extend",
        json!({"token": stale["token"], "ttl_ms": 1000}),
    )
    .await;
    assert_eq!(status, 409, "nor extend");
    // The fence survives the lock key: after the fresh holder releases and
    // the key is gone, the next fence is larger still.
    post(
        &b,
        "/v1/locks/job/release",
        json!({"token": fresh["token"]}),
    )
    .await;
    let mut conn = redis.client().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("{ns}:lock:{{job}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists);
    let (status, next) = post(&a, "/v1/locks/job/acquire", json!({"ttl_ms": 1000})).await;
    assert_eq!(status, 200, "{next}");
    assert!(fence(&next) > fence(&fresh));
}
