//! Maps over the wire: live `outrigger` processes on the memory backend and
//! on real Redis, over HTTP (raw single-field routes, JSON map routes, SSE)
//! and gRPC; several sidecars on one map; and what maps do while Redis is
//! down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use outrigger::api::pb;
use outrigger::api::pb::map_client::MapClient;
use outrigger::api::pb::map_event::Kind;
use outrigger_tests::{
    RedisServer, Sidecar, SidecarOn, Sse, Topology, conformance, eventually, sidecar, unique,
};
use serde_json::{Value, json};
use tonic::{Code, Streaming};

async fn target(topology: Topology) -> SidecarOn {
    topology.sidecar(sidecar!(), "maps").await
}

conformance!(
    target;
    [memory: Memory, with_redis: Redis];
    {
        http_single_field_routes,
        http_map_routes,
        http_rejects_bad_map_input,
        http_watch_streams_events,
        grpc_maps,
    }
);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn update(s: &Sidecar, map: &str, body: Value) -> (u16, Value) {
    json_of(
        http()
            .post(s.url(&format!("/v1/maps/{map}")))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get_map(s: &Sidecar, map: &str, query: &str) -> (u16, Value) {
    json_of(
        http()
            .get(s.url(&format!("/v1/maps/{map}{query}")))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn incr(s: &Sidecar, map: &str, field: &str, by: Value) -> (u16, Value) {
    json_of(
        http()
            .post(s.url(&format!("/v1/maps/{map}/{field}/incr")))
            .json(&json!({ "by": by }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn http_single_field_routes(t: &SidecarOn) {
    let s = &t.sidecar;
    let url = |path: &str| s.url(&format!("/v1/maps/sess%2F1/{path}"));
    let absent = http().get(url("user")).send().await.unwrap();
    assert_eq!(absent.status(), 404);
    assert_eq!(json_of(absent).await.1["error"]["code"], "not_found");

    let put = http()
        .put(url("user") + "?ttl_ms=60000&map_ttl_ms=86400000&sliding=true")
        .body(vec![0u8, 159, 146, 150])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let version: u64 = put.headers()["outrigger-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        put.json::<Value>().await.unwrap(),
        json!({ "version": version })
    );

    let got = http().get(url("user")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        got.headers()["outrigger-version"],
        version.to_string().as_str()
    );
    let ttl: u64 = got.headers()["outrigger-ttl-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    assert_eq!(&got.bytes().await.unwrap()[..], &[0u8, 159, 146, 150]);
    // The map got its sliding lifetime.
    let (_, map) = get_map(s, "sess%2F1", "?field=user").await;
    let map_ttl = map["ttl_ms"].as_u64().unwrap();
    assert!(map_ttl > 86_000_000 && map_ttl <= 86_400_000, "{map}");

    // Conditions.
    let again = http()
        .put(url("user") + "?if=absent")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 412);
    assert_eq!(
        json_of(again).await.1["error"]["code"],
        "precondition_failed"
    );
    let cas = http()
        .put(url("user") + &format!("?if=version:{version}"))
        .body("ada")
        .send()
        .await
        .unwrap();
    assert_eq!(cas.status(), 200);
    let stale = http()
        .put(url("user") + &format!("?if=version:{version}"))
        .body("eve")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    assert_eq!(
        &http()
            .get(url("user"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        b"ada"
    );

    // Increments: integers, floats, and a field that is not a number.
    assert_eq!(
        incr(s, "sess%2F1", "hits", json!(2)).await.1["value"],
        json!(2)
    );
    assert_eq!(
        incr(s, "sess%2F1", "hits", json!(-5)).await.1["value"],
        json!(-3)
    );
    let (status, body) = incr(s, "sess%2F1", "score", json!(0.5)).await;
    assert_eq!((status, &body["value"]), (200, &json!(0.5)), "{body}");
    let (status, body) = incr(s, "sess%2F1", "user", json!(1)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not hold a number")
    );

    let deleted = http().delete(url("hits")).send().await.unwrap();
    let (status, body) = json_of(deleted).await;
    assert_eq!((status, &body["existed"]), (200, &json!(true)), "{body}");
    assert!(body["version"].as_u64().unwrap() > version);
    let (_, body) = json_of(http().delete(url("hits")).send().await.unwrap()).await;
    assert_eq!(body["existed"], false);
}

async fn http_map_routes(t: &SidecarOn) {
    let s = &t.sidecar;
    let (status, applied) = update(
        s,
        "conv",
        json!({
            "changes": [
                {"op": "set", "field": "title", "value": "Launch"},
                {"op": "set", "field": "raw", "value_base64": BASE64.encode([0xff, 0x00])},
                {"op": "set", "field": "typing:ada", "value": "1", "ttl_ms": 60_000},
                {"op": "incr", "field": "messages", "by": 3},
                {"op": "delete", "field": "nothing"},
            ],
            "if_version": 0,
            "ttl_ms": 3_600_000,
        }),
    )
    .await;
    assert_eq!(status, 200, "{applied}");
    let version = applied["version"].as_u64().unwrap();
    assert_eq!(
        applied["outcomes"],
        json!([{}, {}, {}, {"value": 3}, {"existed": false}])
    );

    // Several fields by name: absent ones are left out; non-UTF-8 values
    // come as base64.
    let (status, read) = get_map(s, "conv", "?field=title&field=raw&field=absent").await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["version"], version);
    assert!(read["ttl_ms"].as_u64().unwrap() <= 3_600_000);
    assert_eq!(
        read["fields"],
        json!([
            {"field": "title", "value": "Launch", "version": version},
            {"field": "raw", "value_base64": "/wA=", "version": version},
        ])
    );
    let (_, read) = get_map(s, "conv", "?field=title&encoding=base64").await;
    assert_eq!(read["fields"][0]["value_base64"], BASE64.encode("Launch"));

    // The whole map, a page at a time.
    let mut seen = BTreeMap::new();
    let mut query = "?limit=2".to_string();
    loop {
        let (status, page) = get_map(s, "conv", &query).await;
        assert_eq!(status, 200, "{page}");
        let fields = page["fields"].as_array().unwrap();
        assert!(fields.len() <= 2, "{page}");
        for f in fields {
            seen.insert(f["field"].as_str().unwrap().to_string(), f.clone());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                query = format!("?limit=2&cursor={}", urlencode(cursor));
            }
            None => break,
        }
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["messages", "raw", "title", "typing:ada"]
    );
    assert!(seen["typing:ada"]["ttl_ms"].as_u64().unwrap() <= 60_000);

    // The map version guards an update.
    let (status, body) = update(
        s,
        "conv",
        json!({"changes": [{"op": "set", "field": "title", "value": "x"}], "if_version": version - 1}),
    )
    .await;
    assert_eq!(status, 412, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("at version {version}"))
    );

    let (status, body) = json_of(http().delete(s.url("/v1/maps/conv")).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"existed": true})));
    let (_, read) = get_map(s, "conv", "").await;
    assert_eq!(read, json!({"version": 0, "fields": []}));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn http_rejects_bad_map_input(t: &SidecarOn) {
    let s = &t.sidecar;
    let set = |extra: Value| {
        let mut change = json!({"op": "set", "field": "f", "value": "v"});
        for (k, v) in extra.as_object().unwrap() {
            change[k] = v.clone();
        }
        json!({ "changes": [change] })
    };
    for (body, what, status) in [
        (json!({"changes": []}), "no changes", 400),
        (
            json!({"changes": [{"op": "rename", "field": "f"}]}),
            "an unknown op",
            400,
        ),
        (
            json!({"changes": [{"op": "set", "field": "f"}]}),
            "no value",
            400,
        ),
        (set(json!({"value_base64": "AA=="})), "both values", 400),
        (
            json!({"changes": [{"op": "set", "field": "f", "value_base64": "not base64!"}]}),
            "bad base64",
            400,
        ),
        (set(json!({"if": "sometimes"})), "a bad condition", 400),
        (
            json!({"changes": [{"op": "incr", "field": "f", "by": 0}]}),
            "by 0",
            400,
        ),
        (
            json!({"changes": [{"op": "incr", "field": "f", "by": "1"}]}),
            "a string by",
            400,
        ),
        (
            json!({"changes": [{"op": "incr", "field": "f", "by": 18_446_744_073_709_551_615_u64}]}),
            "a huge by",
            400,
        ),
        (
            json!({"changes": [{"op": "set", "field": "", "value": "v"}]}),
            "an empty field",
            400,
        ),
        (
            json!({"changes": [{"op": "delete", "field": "f"}], "sliding": true}),
            "sliding without a ttl",
            400,
        ),
        (
            json!({"changes": [{"op": "set", "field": "x".repeat(600), "value": "v"}]}),
            "a long field",
            413,
        ),
        (json!({"change": []}), "an unknown key", 400),
    ] {
        let (got, reply) = update(s, "bad", body).await;
        assert_eq!(got, status, "{what}: {reply}");
        assert!(
            reply["error"]["message"].as_str().is_some(),
            "{what}: {reply}"
        );
    }
    let raw = http()
        .post(s.url("/v1/maps/bad"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    for (query, status) in [
        ("?limit=100000", 413),
        ("?limit=ten", 400),
        ("?encoding=hex", 400),
        ("?color=red", 400),
        ("?field=a&cursor=0%3A", 400),
        ("?cursor=nonsense", 400),
    ] {
        let (got, reply) = get_map(s, "bad", query).await;
        assert_eq!(got, status, "{query}: {reply}");
        assert!(
            reply["error"]["code"].as_str().is_some(),
            "{query}: {reply}"
        );
    }
    let bad_if = http()
        .put(s.url("/v1/maps/bad/f?if=maybe"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_if.status(), 400);
    let too_big = http()
        .put(s.url("/v1/maps/bad/f"))
        .body(vec![b'x'; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let (status, _) = incr(s, "bad", "f", json!(0)).await;
    assert_eq!(status, 400);
    let (_, read) = get_map(s, "bad", "").await;
    assert_eq!(read["version"], 0, "nothing was written: {read}");
}

async fn http_watch_streams_events(t: &SidecarOn) {
    let s = &t.sidecar;
    let mut events = Sse::open(s.url("/v1/map-events/room"), None).await;
    let (status, applied) = update(
        s,
        "room",
        json!({"changes": [
            {"op": "set", "field": "a", "value": "1"},
            {"op": "set", "field": "b", "value_base64": BASE64.encode([0xfe])},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{applied}");
    let (event, data, _) = events.next().await;
    assert_eq!(event, "updated");
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        data,
        json!({"map": "room", "version": applied["version"], "changes": [
            {"field": "a", "change": "set", "value": "1"},
            {"field": "b", "change": "set", "value_base64": "/g=="},
        ]})
    );
    let put = http()
        .put(s.url("/v1/maps/room/t?ttl_ms=50"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(events.next().await.0, "updated");
    let (event, data, _) = events.next().await;
    assert_eq!(event, "expired");
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        data["changes"],
        json!([{"field": "t", "change": "expired"}])
    );
    http().delete(s.url("/v1/maps/room")).send().await.unwrap();
    let (event, data, _) = events.next().await;
    assert_eq!(event, "deleted", "{data}");
}

async fn grpc_maps(t: &SidecarOn) {
    let mut maps = MapClient::new(t.sidecar.channel().await);
    let mut watch = maps
        .watch(pb::WatchMapRequest { map: "g".into() })
        .await
        .unwrap()
        .into_inner();
    use pb::map_change::Change;
    let set = |field: &str, value: &str, condition| pb::MapChange {
        change: Some(Change::Set(pb::SetField {
            field: field.into(),
            value: value.as_bytes().to_vec().into(),
            ttl_ms: 0,
            condition,
        })),
    };
    let inc = |field: &str, by| pb::MapChange {
        change: Some(Change::Increment(pb::IncrementField {
            field: field.into(),
            by: Some(by),
        })),
    };
    let req = |changes, if_version| pb::UpdateMapRequest {
        map: "g".into(),
        changes,
        if_version,
        ttl_ms: 0,
        sliding: false,
        persist: false,
    };
    let applied = maps
        .update(req(
            vec![
                set("a", "1", None),
                inc("n", pb::increment_field::By::Int(2)),
                inc("x", pb::increment_field::By::Float(0.25)),
            ],
            Some(0),
        ))
        .await
        .unwrap()
        .into_inner();
    use pb::change_outcome::Outcome;
    let outcomes: Vec<_> = applied.outcomes.iter().map(|o| o.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Some(Outcome::Set(true)),
            Some(Outcome::Int(2)),
            Some(Outcome::Float(0.25))
        ]
    );
    let event = watch_next(&mut watch).await;
    assert_eq!(
        (event.kind(), event.version, event.changes.len()),
        (Kind::Updated, applied.version, 3)
    );

    let err = maps
        .update(req(
            vec![set(
                "a",
                "2",
                Some(pb::set_field::Condition::IfAbsent(true)),
            )],
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = maps
        .update(req(vec![inc("a", pb::increment_field::By::Int(0))], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = maps
        .update(req(vec![pb::MapChange { change: None }], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let got = maps
        .get(pb::GetFieldsRequest {
            map: "g".into(),
            fields: vec!["a".into(), "missing".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, applied.version);
    assert_eq!(
        (
            got.fields[0].present,
            &got.fields[0].value[..],
            got.fields[1].present
        ),
        (true, &b"1"[..], false)
    );
    let listed = maps
        .list(pb::ListFieldsRequest {
            map: "g".into(),
            cursor: String::new(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!((names.len(), listed.next_cursor.as_str()), (3, ""));
    assert!(
        maps.delete(pb::DeleteMapRequest { map: "g".into() })
            .await
            .unwrap()
            .into_inner()
            .existed
    );
    assert_eq!(watch_next(&mut watch).await.kind(), Kind::Deleted);
}

async fn watch_next(stream: &mut Streaming<pb::MapEvent>) -> pb::MapEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("stream open")
}

/// Sidecars sharing one Redis and namespace, with a fast reaper.
async fn sidecars(redis: &RedisServer, ns: &str, n: usize) -> Vec<Arc<Sidecar>> {
    let mut all = vec![];
    for _ in 0..n {
        all.push(Arc::new(
            sidecar!()
                .redis(redis)
                .namespace(ns)
                .env("OUTRIGGER_MAPS__REAP_INTERVAL", "50ms")
                .start()
                .await,
        ));
    }
    all
}

/// 1,000 increments of one field from 8 clients over two sidecars on one
/// Redis: every one is counted.
#[tokio::test]
async fn field_increments_over_two_sidecars_are_never_lost() {
    let redis = RedisServer::start().await;
    let s = sidecars(&redis, &unique("maps"), 2).await;
    let clients = (0..8).map(|i| {
        let s = s[i % 2].clone();
        tokio::spawn(async move {
            for _ in 0..125 {
                let (status, body) = incr(&s, "stats", "views", json!(1)).await;
                assert_eq!(status, 200, "{body}");
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.unwrap();
    }
    for s in &s {
        let (_, read) = get_map(s, "stats", "?field=views").await;
        assert_eq!(read["fields"][0]["value"], "1000", "{read}");
    }
}

/// Writers on two sidecars each set two fields to the same value in one
/// update; no read and no event ever shows them apart.
#[tokio::test]
async fn multi_field_updates_never_interleave() {
    let redis = RedisServer::start().await;
    let s = sidecars(&redis, &unique("maps"), 2).await;
    let mut watch = MapClient::new(s[1].channel().await)
        .watch(pb::WatchMapRequest { map: "pair".into() })
        .await
        .unwrap()
        .into_inner();
    let writers = (0..6).map(|w| {
        let s = s[w % 2].clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let value = format!("w{w}-{i}");
                let (status, body) = update(
                    &s,
                    "pair",
                    json!({"changes": [
                        {"op": "set", "field": "left", "value": value},
                        {"op": "incr", "field": "count", "by": 1},
                        {"op": "set", "field": "right", "value": value},
                    ]}),
                )
                .await;
                assert_eq!(status, 200, "{body}");
            }
        })
    });
    let readers = (0..2).map(|r| {
        let s = s[r].clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let (_, read) = get_map(&s, "pair", "?field=left&field=right").await;
                let fields = read["fields"].as_array().unwrap();
                if fields.len() == 2 {
                    assert_eq!(fields[0]["value"], fields[1]["value"], "{read}");
                    assert_eq!(fields[0]["version"], fields[1]["version"], "{read}");
                }
            }
        })
    });
    for task in futures::future::join_all(writers.chain(readers)).await {
        task.unwrap();
    }
    let mut versions = vec![];
    for _ in 0..240 {
        let event = watch_next(&mut watch).await;
        let [left, count, right] = &event.changes[..] else {
            panic!("{event:?}")
        };
        assert_eq!(
            (
                left.field.as_str(),
                count.field.as_str(),
                right.field.as_str()
            ),
            ("left", "count", "right")
        );
        assert_eq!(left.value, right.value, "{event:?}");
        versions.push(event.version);
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions increase"
    );
    let (_, read) = get_map(&s[0], "pair", "?field=count").await;
    assert_eq!(read["fields"][0]["value"], "240");
}

/// Fields expiring while three sidecars reap and watch: each expiry reaches
/// every watcher exactly once, soon after the TTL.
#[tokio::test]
async fn each_field_expiry_is_announced_once_to_three_watching_sidecars() {
    let redis = RedisServer::start().await;
    let s = sidecars(&redis, &unique("maps"), 3).await;
    let mut watchers = vec![];
    for sidecar in &s {
        watchers.push(
            MapClient::new(sidecar.channel().await)
                .watch(pb::WatchMapRequest {
                    map: "typing".into(),
                })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    for (i, sidecar) in s.iter().enumerate() {
        let put = http()
            .put(sidecar.url(&format!("/v1/maps/typing/user{i}?ttl_ms=300")))
            .body("typing")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let started = std::time::Instant::now();
    for watcher in &mut watchers {
        let mut expired = BTreeMap::new();
        let mut updates = 0;
        while expired.len() < 3 {
            let event = watch_next(watcher).await;
            match event.kind() {
                Kind::Updated => updates += 1,
                Kind::Expired => {
                    for c in event.changes {
                        *expired.entry(c.field).or_insert(0) += 1;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(updates, 3);
        assert_eq!(
            expired,
            BTreeMap::from([
                ("user0".into(), 1),
                ("user1".into(), 1),
                ("user2".into(), 1)
            ])
        );
    }
    // Within the TTL (300 ms) plus two reap intervals (50 ms) plus 300 ms
    // for the round trips.
    let bound = Duration::from_millis(300 + 2 * 50 + 300);
    assert!(
        started.elapsed() < bound,
        "{:?} > {bound:?}",
        started.elapsed()
    );
    for watcher in &mut watchers {
        let more = tokio::time::timeout(Duration::from_secs(1), watcher.message()).await;
        assert!(more.is_err(), "a second event arrived: {more:?}");
    }
    // And the memory is reclaimed: Redis holds no trace of the fields.
    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*map:{typing}*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// By default maps refuse while Redis is down (503), rather than answer
/// from an empty local copy.
#[tokio::test]
async fn maps_fail_while_redis_is_down_by_default() {
    let mut redis = RedisServer::start().await;
    let s = sidecar!()
        .redis(&redis)
        .namespace(&unique("maps"))
        .env("OUTRIGGER_REDIS__TIMEOUT", "300ms")
        .start()
        .await;
    assert_eq!(incr(&s, "m", "n", json!(1)).await.0, 200);
    redis.kill().await;
    // The request that finds Redis gone says so: Redis did not answer it.
    let (status, body) = incr(&s, "m", "n", json!(1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["message"], "storage backend unavailable");
    // Those after it are refused, saying why.
    let (status, body) = incr(&s, "m", "n", json!(1)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failover.maps"),
        "{body}"
    );
    let (status, _) = get_map(&s, "m", "?field=n").await;
    assert_eq!(status, 503);
    assert_eq!(s.status().await["failover"]["mode"], "memory");
}

/// With `failover.maps = "local"`, changes made while Redis is down are
/// replayed on it when it returns: increments add up with what another
/// sidecar counted meanwhile, sets and deletes land.
#[tokio::test]
async fn local_map_changes_are_replayed_when_redis_returns() {
    let mut redis = RedisServer::start().await;
    let ns = unique("maps");
    let s = sidecar!()
        .redis(&redis)
        .namespace(&ns)
        .env("OUTRIGGER_REDIS__TIMEOUT", "300ms")
        .env("OUTRIGGER_FAILOVER__MAPS", "local")
        .env("OUTRIGGER_FAILOVER__PROBE_INTERVAL", "50ms")
        .start()
        .await;
    redis.kill().await;
    // The first call finds Redis gone and is answered from memory.
    for expected in 1..=3 {
        let (status, body) = incr(&s, "offline", "n", json!(1)).await;
        assert_eq!((status, &body["value"]), (200, &json!(expected)), "{body}");
    }
    let (status, body) = update(
        &s,
        "offline",
        json!({"changes": [
            {"op": "set", "field": "name", "value": "kept"},
            {"op": "set", "field": "gone", "value": "x"},
            {"op": "delete", "field": "gone"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.status().await["failover"]["mode"], "memory");
    redis.restart().await; // empty: no persistence
    // Meanwhile another sidecar counts on Redis.
    let other = sidecar!().redis(&redis).namespace(&ns).start().await;
    assert_eq!(incr(&other, "offline", "n", json!(10)).await.0, 200);
    s.wait_mode("redis", Duration::from_secs(10)).await;
    eventually(
        Duration::from_secs(5),
        "the local changes in Redis",
        || async {
            let (_, read) = get_map(&other, "offline", "?field=n&field=name&field=gone").await;
            let fields = read["fields"].as_array()?.clone();
            let values: Vec<_> = fields
                .iter()
                .map(|f| (f["field"].clone(), f["value"].clone()))
                .collect();
            (values == vec![(json!("n"), json!("13")), (json!("name"), json!("kept"))])
                .then_some(())
        },
    )
    .await;
    let status = s.status().await["failover"].clone();
    assert!(
        status["last_reconciliation"]["map_changes_replayed"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );
    // Replayed once: the next increment counts from the total.
    assert_eq!(
        incr(&s, "offline", "n", json!(1)).await.1["value"],
        json!(14)
    );
}
