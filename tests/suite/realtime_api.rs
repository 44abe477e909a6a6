//! Presence and pub/sub over the wire, across sidecar processes: gRPC
//! streams, Server-Sent Events and WebSocket; exactly-once timeouts with
//! three watching sidecars; durable replay of 1,000 messages; a subscriber
//! that never reads.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use outrigger::api::pb;
use outrigger::api::pb::presence_client::PresenceClient;
use outrigger::api::pb::presence_event::Kind;
use outrigger::api::pb::pub_sub_client::PubSubClient;
use outrigger_tests::{
    RedisServer, Sidecar, Sse, Topology, conformance, next_message, sidecar, subscribe_from, unique,
};
use serde_json::{Value, json};
use tonic::Streaming;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sidecars sharing one Redis and namespace, with a fast reaper.
async fn cluster(redis: &RedisServer, ns: &str, n: usize) -> Vec<Sidecar> {
    let mut sidecars = vec![];
    for _ in 0..n {
        sidecars.push(
            sidecar!()
                .redis(redis)
                .namespace(ns)
                .env("OUTRIGGER_PRESENCE__REAP_INTERVAL", "50ms")
                .start()
                .await,
        );
    }
    sidecars
}

async fn watch(s: &Sidecar, room: &str) -> Streaming<pb::PresenceEvent> {
    PresenceClient::new(s.channel().await)
        .watch(pb::WatchRequest { room: room.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn next_event(stream: &mut Streaming<pb::PresenceEvent>) -> (Kind, String) {
    let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("stream open");
    (e.kind(), e.member)
}

#[tokio::test]
async fn presence_across_sidecars() {
    let redis = RedisServer::start().await;
    let ns = unique("presence");
    let s = cluster(&redis, &ns, 2).await;
    let (a, b) = (&s[0], &s[1]);
    let mut sse = Sse::open(b.url("/v1/presence/lobby/events"), None).await;
    let mut grpc = watch(b, "lobby").await;

    let put = http()
        .put(a.url("/v1/presence/lobby/alice"))
        .json(&json!({"metadata": {"name": "Alice"}, "ttl_ms": 30_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.json::<Value>().await.unwrap(), json!({"joined": true}));

    let (event, data, _) = sse.next().await;
    assert_eq!(event, "join");
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        data,
        json!({"room": "lobby", "member": "alice", "metadata": {"name": "Alice"}})
    );
    assert_eq!(next_event(&mut grpc).await, (Kind::Join, "alice".into()));

    let list = PresenceClient::new(b.channel().await)
        .list(pb::ListMembersRequest {
            room: "lobby".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), 1);
    assert_eq!(&list.members[0].metadata[..], br#"{"name":"Alice"}"#);
    let rooms: Value = http()
        .get(b.url("/v1/members/alice/rooms"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rooms, json!({"rooms": ["lobby"]}));
    let listed: Value = http()
        .get(b.url("/v1/presence/lobby"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["members"][0]["member"], "alice");

    let del = http()
        .delete(a.url("/v1/presence/lobby/alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.json::<Value>().await.unwrap(), json!({"left": true}));
    assert_eq!(sse.next().await.0, "leave");
    assert_eq!(next_event(&mut grpc).await, (Kind::Leave, "alice".into()));
}

#[tokio::test]
async fn each_timeout_is_announced_once_to_three_watching_sidecars() {
    let redis = RedisServer::start().await;
    let ns = unique("reap");
    let s = cluster(&redis, &ns, 3).await;
    let mut watchers = vec![];
    for sidecar in &s {
        watchers.push(watch(sidecar, "room").await);
    }
    // Three members, joined through the three sidecars, stop heartbeating.
    for (i, sidecar) in s.iter().enumerate() {
        let mut client = PresenceClient::new(sidecar.channel().await);
        client
            .join(pb::JoinRequest {
                room: "room".into(),
                member: format!("m{i}"),
                metadata: Default::default(),
                ttl_ms: 300,
            })
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    for watcher in &mut watchers {
        let mut timeouts = BTreeMap::new();
        let mut joins = 0;
        while timeouts.len() < 3 {
            match next_event(watcher).await {
                (Kind::Join, _) => joins += 1,
                (Kind::Timeout, member) => *timeouts.entry(member).or_insert(0) += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(joins, 3);
        assert_eq!(
            timeouts,
            BTreeMap::from([("m0".into(), 1), ("m1".into(), 1), ("m2".into(), 1)])
        );
    }
    // Noticed within the TTL (300 ms) plus two reap intervals (50 ms)
    // plus 200 ms for the round trips: the default reap interval (1 s)
    // would miss this.
    let bound = Duration::from_millis(300 + 2 * 50 + 200);
    assert!(
        started.elapsed() < bound,
        "{:?} > {bound:?}",
        started.elapsed()
    );
    // And never announced again: 20 more reap intervals bring nothing.
    for watcher in &mut watchers {
        let more = tokio::time::timeout(Duration::from_secs(1), watcher.message()).await;
        assert!(more.is_err(), "a second event arrived: {more:?}");
    }
}

#[tokio::test]
async fn publish_through_one_sidecar_receive_through_another_over_grpc_sse_and_websocket() {
    let redis = RedisServer::start().await;
    let ns = unique("ps");
    let s = cluster(&redis, &ns, 2).await;
    let (a, b) = (&s[0], &s[1]);

    let mut grpc = PubSubClient::new(b.channel().await)
        .subscribe(pb::SubscribeRequest {
            channels: vec!["news".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut sse = Sse::open(b.url("/v1/pubsub/news"), None).await;
    let ws_url = format!("ws://{}/v1/pubsub/news", b.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();

    let durable = http()
        .post(a.url("/v1/pubsub/news?durable=true"))
        .header("outrigger-header-kind", "headline")
        .body("first")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let offset = durable["offset"]
        .as_str()
        .expect("durable offset")
        .to_string();
    PubSubClient::new(a.channel().await)
        .publish(pb::PublishRequest {
            channel: "news".into(),
            payload: "second".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    for expected in ["first", "second"] {
        let m = tokio::time::timeout(Duration::from_secs(10), grpc.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(pb::subscribe_event::Event::Message(m)) = m.event else {
            panic!("{m:?}")
        };
        assert_eq!(&m.payload[..], expected.as_bytes());
        if expected == "first" {
            assert_eq!(m.offset, offset);
            assert_eq!(m.headers["kind"], "headline");
        }

        let (event, data, id) = sse.next().await;
        assert_eq!(event, "message");
        let data: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data["payload"], expected);
        assert_eq!(
            id.is_some(),
            expected == "first",
            "SSE id = offset of durable messages"
        );

        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let data: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(
            (data["type"].as_str(), data["payload"].as_str()),
            (Some("message"), Some(expected))
        );
    }
    ws.close(None).await.unwrap();

    // A reconnecting EventSource sends Last-Event-ID and resumes after it.
    http()
        .post(a.url("/v1/pubsub/news?durable=true"))
        .body("third")
        .send()
        .await
        .unwrap();
    let mut resumed = Sse::open(b.url("/v1/pubsub/news"), Some(&offset)).await;
    let (event, data, _) = resumed.next().await;
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (event.as_str(), &data["recovered"]),
        ("resumed", &json!(true))
    );
    let (_, data, _) = resumed.next().await;
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["payload"],
        "third"
    );
}

/// Targets for the tests that run on both backends.
struct Pair {
    publisher: Sidecar,
    subscriber: Option<Sidecar>,
    _redis: Option<RedisServer>,
}

impl Pair {
    fn subscriber(&self) -> &Sidecar {
        self.subscriber.as_ref().unwrap_or(&self.publisher)
    }
}

async fn target(topology: Topology) -> Pair {
    let Some(redis) = topology.own_server().await else {
        return Pair {
            publisher: sidecar!().start().await,
            subscriber: None,
            _redis: None,
        };
    };
    let mut s = cluster(&redis, &unique("pair"), 2).await;
    let subscriber = s.pop();
    Pair {
        publisher: s.pop().unwrap(),
        subscriber,
        _redis: Some(redis),
    }
}

conformance!(
    target;
    [memory: Memory, with_redis: Redis];
    {
        durable_replay_of_1000_missed_messages_then_live_ones,
        a_subscriber_that_never_reads_does_not_stop_another,
        bad_realtime_input_gets_json_errors,
        history_and_trim_over_http_and_grpc_and_the_replay_marker_over_sse,
        concurrent_retries_of_one_publish_from_two_sidecars_deliver_it_once,
    }
);

async fn publish(s: &Sidecar, channel: &str, payload: String, durable: bool) -> String {
    PubSubClient::new(s.channel().await)
        .publish(pb::PublishRequest {
            channel: channel.into(),
            payload: payload.into(),
            headers: Default::default(),
            durable,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .offset
}

async fn durable_replay_of_1000_missed_messages_then_live_ones(p: &Pair) {
    let sub = p.subscriber();
    // A subscriber reads the first message, notes its offset, goes away.
    let mut first = subscribe_from(sub, "orders", "0").await;
    let offset = publish(&p.publisher, "orders", "before".into(), true).await;
    let m = next_message(&mut first).await;
    assert_eq!(
        (m.offset.as_str(), &m.payload[..]),
        (offset.as_str(), &b"before"[..])
    );
    drop(first);

    // 1,000 messages while it is away.
    let mut client = PubSubClient::new(p.publisher.channel().await);
    for i in 0..1000 {
        client
            .publish(pb::PublishRequest {
                channel: "orders".into(),
                payload: format!("{i}").into(),
                headers: Default::default(),
                durable: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Back, from its last offset: all 1,000 in order, exactly once...
    let mut resumed = subscribe_from(sub, "orders", &offset).await;
    let mut last = offset.clone();
    for i in 0..1000 {
        let m = next_message(&mut resumed).await;
        assert_eq!(&m.payload[..], i.to_string().as_bytes(), "message {i}");
        assert!(
            offset_key(&m.offset) > offset_key(&last),
            "offsets increase"
        );
        last = m.offset;
    }
    // ...then live ones, durable or not.
    publish(&p.publisher, "orders", "live-durable".into(), true).await;
    publish(&p.publisher, "orders", "live".into(), false).await;
    assert_eq!(
        &next_message(&mut resumed).await.payload[..],
        b"live-durable"
    );
    assert_eq!(&next_message(&mut resumed).await.payload[..], b"live");
}

async fn history_and_trim_over_http_and_grpc_and_the_replay_marker_over_sse(p: &Pair) {
    let (publisher, reader) = (&p.publisher, p.subscriber());
    let c = http();
    let mut offsets = vec![];
    for i in 0..5 {
        offsets.push(publish(publisher, "doc", format!("u{i}"), true).await);
    }
    let binary = c
        .post(publisher.url("/v1/pubsub/doc?durable=true"))
        .header("outrigger-header-kind", "snapshot")
        .body(vec![0u8, 255])
        .send()
        .await
        .unwrap();
    assert_eq!(binary.status(), 200);
    let get = async |query: &str| -> Value {
        let resp = c
            .get(reader.url(&format!("/v1/pubsub/doc/history{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{query}");
        resp.json().await.unwrap()
    };
    // The last two, oldest first: one text, one binary with its header.
    let last = get("?last=2").await;
    assert_eq!(last["channel"], "doc");
    assert_eq!(last["next_cursor"], Value::Null);
    let m = &last["messages"];
    assert_eq!(
        (m[0]["offset"].as_str(), &m[0]["payload"]),
        (Some(offsets[4].as_str()), &json!("u4"))
    );
    assert_eq!(
        (&m[1]["payload_base64"], &m[1]["headers"]),
        (&json!("AP8="), &json!({"kind": "snapshot"}))
    );
    // Every answer names the channel's epoch, the same one.
    let epoch = last["epoch"].as_str().expect("an epoch").to_string();
    let published: Value = binary.json().await.unwrap();
    assert_eq!(published["epoch"], epoch.as_str());
    let ms: u64 = offsets[4].split('-').next().unwrap().parse().unwrap();
    assert_eq!(m[0]["published_at_ms"], ms);
    // Newest first in pages of two, following the cursor.
    let (mut seen, mut cursor) = (vec![], String::new());
    loop {
        let page = get(&format!("?order=desc&limit=2{cursor}")).await;
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["offset"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(seen[1..].iter().rev().cloned().collect::<Vec<_>>(), offsets);
    // A range, both ends included.
    let range = get(&format!("?from={}&to={}", offsets[1], offsets[2])).await;
    assert_eq!(range["messages"].as_array().unwrap().len(), 2);
    // gRPC reads the same.
    let mut client = PubSubClient::new(reader.channel().await);
    let page = client
        .history(pb::HistoryRequest {
            channel: "doc".into(),
            last: 3,
            newest_first: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let payloads: Vec<&[u8]> = page.messages.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, [&[0u8, 255][..], b"u4", b"u3"]);
    assert_eq!(page.messages[1].published_at_ms, ms);
    assert_eq!(page.epoch, epoch);

    // Resuming over SSE: where it stands, the missed ones, the marker
    // naming the last, then live.
    let mut sse = Sse::open(
        reader.url(&format!("/v1/pubsub/doc?from={}&epoch={epoch}", offsets[2])),
        None,
    )
    .await;
    let (event, data, _) = sse.next().await;
    assert_eq!(event, "resumed");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"type": "resumed", "recovered": true, "epoch": epoch, "from": offsets[3]})
    );
    let mut events = vec![];
    for _ in 0..4 {
        let (event, data, _) = sse.next().await;
        let data: Value = serde_json::from_str(&data).unwrap();
        events.push((
            event,
            data["offset"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let binary_offset = seen[0].clone();
    let expected = [
        ("message", offsets[3].clone()),
        ("message", offsets[4].clone()),
        ("message", binary_offset.clone()),
        ("replayed", binary_offset),
    ];
    assert_eq!(events, expected.map(|(e, o)| (e.to_string(), o)));
    publish(publisher, "doc", "after".into(), false).await;
    let (event, data, _) = sse.next().await;
    assert_eq!(
        (
            event.as_str(),
            serde_json::from_str::<Value>(&data).unwrap()["payload"].clone()
        ),
        ("message", json!("after"))
    );

    // Trim: what came before an offset goes, over HTTP and gRPC.
    let trimmed = c
        .delete(reader.url(&format!("/v1/pubsub/doc/history?before={}", offsets[3])))
        .send()
        .await
        .unwrap();
    assert_eq!(trimmed.status(), 200);
    assert_eq!(
        trimmed.json::<Value>().await.unwrap(),
        json!({"removed": 3})
    );
    let removed = client
        .trim(pb::TrimRequest {
            channel: "doc".into(),
            before: offsets[4].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 1);
    let left = get("").await;
    assert_eq!(left["messages"].as_array().unwrap().len(), 2);
    assert_eq!(left["messages"][0]["offset"], offsets[4].as_str());

    // A subscriber that had only u1 resumes: u2 and u3 are gone, and every
    // transport says so before replaying what is left.
    let gap = json!({"type": "resumed", "recovered": false, "epoch": epoch, "from": offsets[4]});
    let from = format!("/v1/pubsub/doc?from={}&epoch={epoch}", offsets[1]);
    let mut sse = Sse::open(reader.url(&from), None).await;
    let (event, data, _) = sse.next().await;
    assert_eq!(
        (
            event.as_str(),
            serde_json::from_str::<Value>(&data).unwrap()
        ),
        ("resumed", gap.clone())
    );
    let ws_url = format!("ws://{}{from}", reader.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(frame.to_text().unwrap()).unwrap(),
        gap
    );
    let mut grpc = client
        .subscribe(pb::SubscribeRequest {
            channels: vec!["doc".into()],
            from_offset: offsets[1].clone(),
            epoch: epoch.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), grpc.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let expected = pb::Resumed {
        recovered: false,
        epoch: epoch.clone(),
        from_offset: offsets[4].clone(),
    };
    assert_eq!(
        first.event,
        Some(pb::subscribe_event::Event::Resumed(expected))
    );
}

async fn concurrent_retries_of_one_publish_from_two_sidecars_deliver_it_once(p: &Pair) {
    let (a, b) = (&p.publisher, p.subscriber());
    let mut sse = Sse::open(b.url("/v1/pubsub/retried"), None).await;
    // Ten retries through each sidecar at once, HTTP and gRPC.
    let c = http();
    let over_http = |s: &Sidecar| {
        c.post(s.url("/v1/pubsub/retried?durable=true&idempotency_key=order-42"))
            .body("order 42")
            .send()
    };
    let mut tries = vec![];
    for _ in 0..10 {
        tries.push(over_http(a));
        tries.push(over_http(b));
    }
    let answers: Vec<Value> = futures::future::join_all(
        tries
            .into_iter()
            .map(async |t| t.await.unwrap().json::<Value>().await.unwrap()),
    )
    .await;
    let grpc = PubSubClient::new(a.channel().await)
        .publish(pb::PublishRequest {
            channel: "retried".into(),
            payload: "order 42".into(),
            durable: true,
            idempotency_key: "order-42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let firsts = answers.iter().filter(|a| a["duplicate"] == false).count();
    assert_eq!(firsts, 1, "one publish went out: {answers:?}");
    let offset = answers[0]["offset"].clone();
    assert!(answers.iter().all(|a| a["offset"] == offset), "{answers:?}");
    assert_eq!((json!(grpc.offset), grpc.duplicate), (offset, true));
    publish(a, "retried", "end".into(), false).await;
    let mut got = vec![];
    loop {
        let (_, data, _) = sse.next().await;
        let payload = serde_json::from_str::<Value>(&data).unwrap()["payload"].clone();
        if payload == "end" {
            break;
        }
        got.push(payload);
    }
    assert_eq!(got, [json!("order 42")], "delivered once");
}

fn offset_key(o: &str) -> (u64, u64) {
    let (ms, seq) = o.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

async fn a_subscriber_that_never_reads_does_not_stop_another(p: &Pair) {
    let sub = p.subscriber();
    let mut stuck = subscribe_from(sub, "firehose", "").await;
    let mut reader = subscribe_from(sub, "firehose", "").await;
    // 16 MiB in all: more than the transport's flow-control windows and
    // the subscriber's buffer can absorb for the one that never reads.
    const N: usize = 2000;
    let payload = "x".repeat(8 * 1024);
    let publisher = async {
        let mut client = PubSubClient::new(p.publisher.channel().await);
        for i in 0..N {
            client
                .publish(pb::PublishRequest {
                    channel: "firehose".into(),
                    payload: format!("{i}:{payload}").into(),
                    headers: Default::default(),
                    durable: false,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    };
    let reading = async {
        for i in 0..N {
            let m = next_message(&mut reader).await;
            assert!(
                m.payload.starts_with(format!("{i}:").as_bytes()),
                "message {i} in order"
            );
        }
    };
    // The publisher is never held up by `stuck` (bounded: all of it well
    // within the test's time), and the reader gets every message.
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(publisher, reading)
    })
    .await
    .expect("publishing and reading finish");
    // The stuck subscriber, when it finally reads, learns that it lagged.
    let mut lagged = false;
    for _ in 0..N {
        let e = tokio::time::timeout(Duration::from_secs(10), stuck.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::subscribe_event::Event::Lagged(l)) = e.event {
            assert!(l.missed > 0);
            lagged = true;
            break;
        }
    }
    assert!(lagged, "the stuck subscriber was told it lagged");
}

async fn bad_realtime_input_gets_json_errors(p: &Pair) {
    let s = &p.publisher;
    let c = http();
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (
            c.put(s.url("/v1/presence/r/m")).json(&json!({"ttl_ms": 0})),
            400,
        ),
        (
            c.put(s.url("/v1/presence/r/m"))
                .json(&json!({"metadata": 1})),
            400,
        ),
        (c.get(s.url("/v1/presence/r?limit=100000")), 413),
        (c.get(s.url("/v1/pubsub/c?from=yesterday")), 400),
        (c.get(s.url("/v1/pubsub/c?epoch=1-0@x")), 400),
        (
            c.get(s.url(&format!("/v1/pubsub/c?from=0&epoch={}", "e".repeat(129)))),
            400,
        ),
        (c.post(s.url("/v1/pubsub/c?durable=maybe")).body("x"), 400),
        (c.get(s.url("/v1/pubsub/c/history?limit=0")), 400),
        (c.get(s.url("/v1/pubsub/c/history?limit=1001")), 400),
        (c.get(s.url("/v1/pubsub/c/history?order=sideways")), 400),
        (c.get(s.url("/v1/pubsub/c/history?from=yesterday")), 400),
        (c.get(s.url("/v1/pubsub/c/history?last=2&from=0")), 400),
        (c.get(s.url("/v1/pubsub/c/history?from=9-0&to=1-0")), 400),
        (c.get(s.url("/v1/pubsub/c/history?bogus=1")), 400),
        (c.delete(s.url("/v1/pubsub/c/history")), 400),
        (c.delete(s.url("/v1/pubsub/c/history?before=soon")), 400),
        (
            c.post(s.url("/v1/pubsub/c"))
                .body(vec![0u8; 1024 * 1024 + 1]),
            413,
        ),
    ];
    for (req, status) in cases {
        let req = req.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let resp = c.execute(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    let mut client = PubSubClient::new(s.channel().await);
    let bad = client
        .subscribe(pb::SubscribeRequest {
            channels: vec!["a".into(), "b".into()],
            patterns: vec![],
            from_offset: "0".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut presence = PresenceClient::new(s.channel().await);
    let bad = presence
        .join(pb::JoinRequest {
            room: "r".into(),
            member: String::new(),
            metadata: Default::default(),
            ttl_ms: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn subscriptions_come_back_after_redis_restarts() {
    let mut redis = RedisServer::start().await;
    let ns = unique("restart");
    let s = cluster(&redis, &ns, 2).await;
    let (a, b) = (&s[0], &s[1]);
    let mut sub = subscribe_from(b, "alerts", "").await;
    let mut watcher = watch(b, "room").await;
    publish(a, "alerts", "before".into(), false).await;
    assert_eq!(&next_message(&mut sub).await.payload[..], b"before");

    redis.restart().await;

    // Both sidecars reconnect by themselves; the subscriber's stream stays
    // open and hears messages published after the restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut client = PubSubClient::new(a.channel().await);
    let mut n = 0;
    let received = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no message after the restart"
        );
        n += 1;
        let published = client
            .publish(pb::PublishRequest {
                channel: "alerts".into(),
                payload: format!("after-{n}").into(),
                ..Default::default()
            })
            .await;
        if published.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await; // Redis still coming back
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(200), sub.message()).await {
            Ok(Ok(Some(e))) => break e,
            Ok(other) => panic!("subscription ended: {other:?}"),
            Err(_) => continue, // resubscription not in place yet
        }
    };
    let Some(pb::subscribe_event::Event::Message(m)) = received.event else {
        panic!("{received:?}")
    };
    assert!(m.payload.starts_with(b"after-"), "{m:?}");
    // Presence watchers are resubscribed too.
    PresenceClient::new(a.channel().await)
        .join(pb::JoinRequest {
            room: "room".into(),
            member: "zoe".into(),
            metadata: Default::default(),
            ttl_ms: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(next_event(&mut watcher).await, (Kind::Join, "zoe".into()));
}
