//! Counters over the wire: live `outrigger` processes on the memory backend
//! and on real Redis, over HTTP and gRPC; increments from several sidecars
//! on one Redis; and what counters do while Redis is down.

use std::sync::Arc;
use std::time::Duration;

use outrigger::api::pb;
use outrigger::api::pb::counter_client::CounterClient;
use outrigger_tests::{
    RedisServer, Sidecar, SidecarOn, Topology, conformance, eventually, sidecar, unique,
};
use serde_json::{Value, json};
use tonic::Code;

async fn target(topology: Topology) -> SidecarOn {
    topology.sidecar(sidecar!(), "counters").await
}

conformance!(
    target;
    [memory: Memory, with_redis: Redis];
    {
        http_counters,
        http_rejects_bad_counter_input,
        grpc_counters,
    }
);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn incr(s: &Sidecar, name: &str, body: Value) -> (u16, Value) {
    let resp = http()
        .post(s.url(&format!("/v1/counters/{name}/incr")))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn read(s: &Sidecar, name: &str) -> Value {
    let resp = http()
        .get(s.url(&format!("/v1/counters/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn http_counters(t: &SidecarOn) {
    let s = &t.sidecar;
    assert_eq!(
        read(s, "logins").await,
        json!({"value": 0, "exists": false})
    );
    let (status, body) = incr(s, "logins", json!({"by": 2, "ttl_ms": 60_000})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["value"].as_i64(), body["exists"].as_bool()),
        (Some(2), Some(true))
    );
    let ttl = body["ttl_ms"].as_u64().expect("a window");
    assert!(ttl > 0 && ttl <= 60_000, "{body}");
    let (status, body) = incr(s, "logins", json!({"by": 3, "max": 4})).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["error"]["code"], "precondition_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum 4"),
        "{body}"
    );
    assert_eq!(read(s, "logins").await["value"], 2);
    let (status, body) = incr(s, "logins", json!({"by": -2, "min": 0})).await;
    assert_eq!((status, body["value"].as_i64()), (200, Some(0)));
    let reset = http()
        .delete(s.url("/v1/counters/logins"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(
        reset.json::<Value>().await.unwrap(),
        json!({"existed": true})
    );
    assert_eq!(read(s, "logins").await["exists"], false);
    // Names are path segments: reserved characters are percent-encoded.
    let (status, _) = incr(s, "user%2F42%3Afailed", json!({"by": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(read(s, "user%2F42%3Afailed").await["value"], 1);
}

async fn http_rejects_bad_counter_input(t: &SidecarOn) {
    let s = &t.sidecar;
    for (body, what) in [
        (json!({"by": 0}), "by 0"),
        (json!({}), "no by"),
        (json!({"by": 1, "min": 3, "max": 2}), "min > max"),
        (json!({"by": 9_007_199_254_740_992_i64}), "past 2^53 - 1"),
        (json!({"by": i64::MIN, "min": 0}), "i64::MIN"),
        (json!({"by": 1, "ttl": 5}), "an unknown field"),
        (json!({"by": "one"}), "a string"),
    ] {
        let (status, reply) = incr(s, "c", body).await;
        assert_eq!(status, 400, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_argument", "{what}");
    }
    let raw = http()
        .post(s.url("/v1/counters/c/incr"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let long = "x".repeat(600);
    let (status, _) = incr(s, &long, json!({"by": 1})).await;
    assert_eq!(status, 413);
    assert_eq!(read(s, "c").await["exists"], false, "nothing was counted");
}

async fn grpc_counters(t: &SidecarOn) {
    let mut counters = CounterClient::new(t.sidecar.channel().await);
    let inc = |by, max| pb::IncrementRequest {
        name: "jobs".into(),
        by,
        ttl_ms: 0,
        min: None,
        max,
    };
    let value = counters.increment(inc(5, None)).await.unwrap().into_inner();
    assert_eq!((value.value, value.exists, value.ttl_ms), (5, true, None));
    let err = counters.increment(inc(1, Some(5))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = counters.increment(inc(0, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let get = pb::GetCounterRequest {
        name: "jobs".into(),
    };
    assert_eq!(
        counters.get(get.clone()).await.unwrap().into_inner().value,
        5
    );
    let reset = pb::ResetCounterRequest {
        name: "jobs".into(),
    };
    assert!(
        counters
            .reset(reset.clone())
            .await
            .unwrap()
            .into_inner()
            .existed
    );
    assert!(!counters.reset(reset).await.unwrap().into_inner().existed);
    let gone = counters.get(get).await.unwrap().into_inner();
    assert_eq!((gone.value, gone.exists), (0, false));
}

/// 1,000 increments from 8 clients over two sidecars on one Redis: every
/// one is counted, and both sidecars read the total.
#[tokio::test]
async fn increments_over_two_sidecars_are_never_lost() {
    let redis = RedisServer::start().await;
    let ns = unique("counters");
    let a = Arc::new(sidecar!().redis(&redis).namespace(&ns).start().await);
    let b = Arc::new(sidecar!().redis(&redis).namespace(&ns).start().await);
    let clients = (0..8).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            for _ in 0..125 {
                let (status, body) = incr(&s, "total", json!({"by": 1})).await;
                assert_eq!(status, 200, "{body}");
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.unwrap();
    }
    assert_eq!(read(&a, "total").await["value"], 1000);
    assert_eq!(read(&b, "total").await["value"], 1000);
}

/// By default counters refuse while Redis is down (503), rather than count
/// from an empty local store.
#[tokio::test]
async fn counters_fail_while_redis_is_down_by_default() {
    let mut redis = RedisServer::start().await;
    let s = sidecar!()
        .redis(&redis)
        .namespace(&unique("counters"))
        .env("OUTRIGGER_REDIS__TIMEOUT", "300ms")
        .start()
        .await;
    assert_eq!(incr(&s, "n", json!({"by": 1})).await.0, 200);
    redis.kill().await;
    // The request that finds Redis gone says so: Redis did not answer it.
    let (status, body) = incr(&s, "n", json!({"by": 1})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["message"], "storage backend unavailable");
    // Those after it are refused, saying why.
    let (status, body) = incr(&s, "n", json!({"by": 1})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failover.counters"),
        "{body}"
    );
    assert_eq!(s.status().await["failover"]["mode"], "memory");
}

/// With `failover.counters = "local"`, what is counted while Redis is down
/// is added to Redis when it returns: nothing is lost, nothing counted twice.
#[tokio::test]
async fn local_counts_are_added_to_redis_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let ns = unique("counters");
    let s = sidecar!()
        .redis(&redis)
        .namespace(&ns)
        .env("OUTRIGGER_REDIS__TIMEOUT", "300ms")
        .env("OUTRIGGER_FAILOVER__COUNTERS", "local")
        .env("OUTRIGGER_FAILOVER__PROBE_INTERVAL", "50ms")
        .start()
        .await;
    redis.kill().await;
    // The first call finds Redis gone and is answered from memory.
    for expected in 1..=3 {
        let (status, body) = incr(&s, "offline", json!({"by": 1})).await;
        assert_eq!(
            (status, body["value"].as_i64()),
            (200, Some(expected)),
            "{body}"
        );
    }
    assert_eq!(s.status().await["failover"]["mode"], "memory");
    redis.restart().await; // empty: no persistence
    s.wait_mode("redis", Duration::from_secs(10)).await;
    // In Redis itself, exactly what was counted locally.
    let mut conn = redis.client().await;
    let key = format!("{ns}:ctr:{{offline}}");
    eventually(Duration::from_secs(5), "the local count in Redis", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let value: Option<i64> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .ok()?;
            (value == Some(3)).then_some(())
        }
    })
    .await;
    assert_eq!(read(&s, "offline").await["value"], 3);
    let (_, body) = incr(&s, "offline", json!({"by": 1})).await;
    assert_eq!(body["value"], 4);
    let value: i64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, 4, "counted once");
}
