//! The presence and pub/sub conformance suites: the same assertions
//! against the memory backend and a real Redis, through the primitives.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use outrigger::app::App;
use outrigger::backend::FeedItem;
use outrigger::config::Config;
use outrigger::error::Error;
use outrigger::primitives::presence::store::{PresenceEvent, PresenceKind};
use outrigger::primitives::pubsub::config::RetentionRule;
use outrigger::primitives::pubsub::store::{Offset, PubMessage};
use outrigger::primitives::pubsub::{
    Delivery, HistoryQuery, PublishOptions, ResumeFrom, Resumed, Subscription,
};
use outrigger_tests::{AppOn, Topology, conformance};

fn config() -> Config {
    let mut config = Config::default();
    config.presence.reap_interval = Duration::from_millis(50);
    config.pubsub.subscriber_buffer = 16;
    config.pubsub.stream_max_len = 5_000;
    config.pubsub.max_subscribers = 20;
    config.pubsub.idempotency_window = Duration::from_millis(500);
    config.pubsub.retention = vec![
        RetentionRule {
            channels: "short:*".into(),
            max_len: Some(3),
            max_age: Duration::ZERO,
        },
        RetentionRule {
            channels: "aged:*".into(),
            max_len: None,
            max_age: Duration::from_millis(800),
        },
    ];
    config
}

async fn setup(topology: Topology) -> AppOn {
    topology.app(&config(), "rt").await
}

conformance!(
    setup;
    [on_memory: Memory, on_redis: Redis, on_cluster: Cluster, on_sentinel: Sentinel, on_replicas: Replicas];
    cases {
        join_heartbeat_list_and_leave,
        members_list_in_pages,
        rooms_of_a_member,
        watchers_see_join_leave_and_timeout,
        heartbeats_keep_a_member_in,
        bad_presence_input_is_rejected,
        publish_reaches_every_subscriber_with_headers,
        patterns_match_channels,
        durable_offsets_increase_and_replay_after_an_offset,
        resume_has_no_gap_and_no_duplicate_at_the_seam,
        a_resumed_subscriber_that_falls_behind_catches_up_from_the_stream,
        a_slow_subscriber_lags_without_holding_up_others,
        subscriber_count_is_limited,
        bad_pubsub_input_is_rejected,
        history_reads_both_ways_in_pages,
        trim_drops_what_came_before,
        the_replayed_marker_follows_exactly_the_missed_messages,
        bad_history_input_is_rejected,
        a_repeated_idempotency_key_delivers_nothing_within_its_window,
        retention_by_count_per_channel_glob_and_per_publish,
        retention_by_age_and_an_idle_channel_disappears,
        a_resume_says_whether_it_runs_on_from_the_offset,
        a_resume_past_a_trim_or_the_length_cap_is_not_recovered,
        a_channel_expired_and_created_again_is_a_new_epoch,
    }
);

/// The next item of a feed, within a bound.
async fn next<S: futures::Stream + Unpin>(feed: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("an item within 5 s")
        .expect("the feed goes on")
}

/// The next message, past the markers of a replay that runs on from its
/// offset.
async fn next_message(sub: &mut Subscription) -> PubMessage {
    loop {
        match next(sub).await.expect("no error") {
            Delivery::Message(m) => return (*m).clone(),
            Delivery::Lagged(n) => panic!("lagged by {n}"),
            Delivery::Resumed(r) => assert!(r.recovered, "a gap: {r:?}"),
            Delivery::Replayed(_) => {}
        }
    }
}

/// The first delivery of a resumed subscription: where it stands.
async fn resumed(sub: &mut Subscription) -> Resumed {
    match next(sub).await.expect("no error") {
        Delivery::Resumed(r) => r,
        other => panic!("expected the resumed marker first, got {other:?}"),
    }
}

/// What a subscription delivers up to the end of its replay: the payloads,
/// and the offset the end-of-replay marker names.
async fn replayed(sub: &mut Subscription) -> (Vec<String>, Option<Offset>) {
    let mut got = vec![];
    loop {
        match next(sub).await.expect("no error") {
            Delivery::Message(m) => got.push(String::from_utf8(m.payload.to_vec()).unwrap()),
            Delivery::Replayed(last) => return (got, last),
            other => panic!("during the replay: {other:?}"),
        }
    }
}

fn event(kind: PresenceKind, member: &str) -> (PresenceKind, String) {
    (kind, member.to_string())
}

fn brief(item: FeedItem<PresenceEvent>) -> (PresenceKind, String) {
    match item {
        FeedItem::Item(e) => (e.kind, e.member),
        FeedItem::Lagged(n) => panic!("lagged by {n}"),
    }
}

mod cases {
    use super::*;

    pub async fn join_heartbeat_list_and_leave(app: &App) {
        let p = &app.presence;
        assert!(
            p.join("lobby", "alice", Bytes::from_static(b"{\"a\":1}"), 10_000)
                .await
                .unwrap()
        );
        assert!(
            !p.join("lobby", "alice", Bytes::from_static(b"v2"), 10_000)
                .await
                .unwrap(),
            "heartbeat"
        );
        let page = p.list("lobby", "", 0).await.unwrap();
        assert_eq!(page.members.len(), 1);
        let alice = &page.members[0];
        assert_eq!(
            (alice.member.as_str(), &alice.metadata[..]),
            ("alice", &b"v2"[..])
        );
        assert!(alice.ttl > Duration::from_secs(9) && alice.ttl <= Duration::from_secs(10));
        assert!(p.leave("lobby", "alice").await.unwrap());
        assert!(!p.leave("lobby", "alice").await.unwrap());
        assert!(p.list("lobby", "", 0).await.unwrap().members.is_empty());
        assert!(
            p.list("empty-room", "", 0)
                .await
                .unwrap()
                .members
                .is_empty()
        );
    }

    pub async fn members_list_in_pages(app: &App) {
        let expected: BTreeSet<String> = (0..25).map(|i| format!("m{i:02}")).collect();
        for m in &expected {
            app.presence
                .join("big", m, Bytes::new(), 10_000)
                .await
                .unwrap();
        }
        let mut seen = BTreeSet::new();
        let mut cursor = String::new();
        for _ in 0..1000 {
            let page = app.presence.list("big", &cursor, 7).await.unwrap();
            seen.extend(page.members.into_iter().map(|m| m.member));
            match page.next_cursor {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(seen, expected);
        assert!(matches!(
            app.presence.list("big", "bogus", 7).await,
            Err(Error::InvalidArgument(_))
        ));
    }

    pub async fn rooms_of_a_member(app: &App) {
        let p = &app.presence;
        p.join("a", "bob", Bytes::new(), 10_000).await.unwrap();
        p.join("b", "bob", Bytes::new(), 10_000).await.unwrap();
        p.join("c", "bob", Bytes::new(), 100).await.unwrap();
        p.join("a", "carol", Bytes::new(), 10_000).await.unwrap();
        p.leave("b", "bob").await.unwrap();
        outrigger_tests::eventually(Duration::from_secs(5), "room c to expire", || async {
            (p.rooms("bob").await.unwrap() == vec!["a".to_string()]).then_some(())
        })
        .await;
        assert_eq!(p.rooms("nobody").await.unwrap(), Vec::<String>::new());
    }

    pub async fn watchers_see_join_leave_and_timeout(app: &App) {
        let p = &app.presence;
        let mut feed = p.watch("room").await.unwrap();
        p.join("room", "ann", Bytes::from_static(b"meta"), 10_000)
            .await
            .unwrap();
        p.join("room", "ann", Bytes::new(), 10_000).await.unwrap(); // heartbeat: no event
        p.join("room", "ben", Bytes::new(), 150).await.unwrap();
        p.leave("room", "ann").await.unwrap();
        let first = next(&mut feed).await;
        let FeedItem::Item(join) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(
            (join.kind, join.member.as_str(), &join.metadata[..]),
            (PresenceKind::Join, "ann", &b"meta"[..])
        );
        assert_eq!(
            brief(next(&mut feed).await),
            event(PresenceKind::Join, "ben")
        );
        assert_eq!(
            brief(next(&mut feed).await),
            event(PresenceKind::Leave, "ann")
        );
        // ben stops heartbeating: the reaper (every 50 ms here) announces it.
        let started = std::time::Instant::now();
        assert_eq!(
            brief(next(&mut feed).await),
            event(PresenceKind::Timeout, "ben")
        );
        // Within its TTL (150 ms, counted from before `started`) plus two
        // reap intervals plus 200 ms: the default reap interval (1 s)
        // would miss this.
        let bound = Duration::from_millis(150 + 2 * 50 + 200);
        assert!(
            started.elapsed() < bound,
            "{:?} > {bound:?}",
            started.elapsed()
        );
        assert!(p.list("room", "", 0).await.unwrap().members.is_empty());
    }

    pub async fn heartbeats_keep_a_member_in(app: &App) {
        let p = &app.presence;
        let mut feed = p.watch("hb").await.unwrap();
        p.join("hb", "dan", Bytes::new(), 300).await.unwrap();
        assert_eq!(
            brief(next(&mut feed).await),
            event(PresenceKind::Join, "dan")
        );
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !p.join("hb", "dan", Bytes::new(), 300).await.unwrap(),
                "still in"
            );
        }
        // 800 ms after joining with a 300 ms TTL, dan is in and no timeout
        // was announced; once the heartbeats stop, exactly one is.
        assert_eq!(p.list("hb", "", 0).await.unwrap().members.len(), 1);
        assert_eq!(
            brief(next(&mut feed).await),
            event(PresenceKind::Timeout, "dan")
        );
    }

    pub async fn bad_presence_input_is_rejected(app: &App) {
        let p = &app.presence;
        let invalid = |r: Result<bool, Error>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(invalid(p.join("", "m", Bytes::new(), 1000).await));
        assert!(invalid(p.join("r", "", Bytes::new(), 1000).await));
        assert!(invalid(p.join("r", "a\nb", Bytes::new(), 1000).await));
        assert!(invalid(p.join("r", "m", Bytes::new(), 0).await));
        let big = Bytes::from(vec![0u8; Config::default().limits.max_value_bytes + 1]);
        assert!(matches!(
            p.join("r", "m", big, 1000).await,
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            p.list("r", "", 100_000).await,
            Err(Error::TooLarge(_))
        ));
    }

    pub async fn publish_reaches_every_subscriber_with_headers(app: &App) {
        let ps = &app.pubsub;
        let mut a = ps
            .subscribe(vec!["news".into()], vec![], None)
            .await
            .unwrap();
        let mut b = ps
            .subscribe(vec!["news".into(), "other".into()], vec![], None)
            .await
            .unwrap();
        let headers = BTreeMap::from([("kind".to_string(), "headline".to_string())]);
        let offset = ps
            .publish(
                "news",
                Bytes::from_static(b"\x00hi\n"),
                headers.clone(),
                false,
            )
            .await
            .unwrap();
        assert_eq!(offset, None, "live messages have no offset");
        ps.publish("other", Bytes::from_static(b"o"), BTreeMap::new(), false)
            .await
            .unwrap();
        let m = next_message(&mut a).await;
        assert_eq!(
            (m.channel.as_str(), &m.payload[..], &m.headers),
            ("news", &b"\x00hi\n"[..], &headers)
        );
        assert_eq!(
            next_message(&mut b).await.payload,
            Bytes::from_static(b"\x00hi\n")
        );
        assert_eq!(next_message(&mut b).await.channel, "other");
        // A dropped subscriber does not disturb the others.
        drop(b);
        ps.publish("news", Bytes::from_static(b"2"), BTreeMap::new(), false)
            .await
            .unwrap();
        assert_eq!(next_message(&mut a).await.payload, Bytes::from_static(b"2"));
    }

    pub async fn patterns_match_channels(app: &App) {
        let ps = &app.pubsub;
        let mut sub = ps
            .subscribe(vec![], vec!["orders.*".into()], None)
            .await
            .unwrap();
        for channel in ["orders.eu", "payments", "orders.us"] {
            ps.publish(channel, Bytes::from(channel), BTreeMap::new(), false)
                .await
                .unwrap();
        }
        // Each channel's messages keep their order; messages on different
        // channels need not on a Cluster, where each channel is published
        // on its own slot's master and reaches the subscriber's node over
        // the cluster bus.
        let mut heard = vec![
            next_message(&mut sub).await.channel,
            next_message(&mut sub).await.channel,
        ];
        heard.sort();
        assert_eq!(heard, ["orders.eu", "orders.us"]);
        // "payments" does not match: published between the two, it has
        // had the time they took to arrive, and more.
        let more = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
        assert!(more.is_err(), "{more:?}");
    }

    pub async fn durable_offsets_increase_and_replay_after_an_offset(app: &App) {
        let ps = &app.pubsub;
        let mut offsets = vec![];
        for i in 0..5 {
            let o = ps
                .publish("log", Bytes::from(format!("m{i}")), BTreeMap::new(), true)
                .await
                .unwrap();
            offsets.push(o.expect("durable messages have offsets"));
        }
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        let mut sub = ps
            .subscribe(vec!["log".into()], vec![], Some(offsets[1].into()))
            .await
            .unwrap();
        for (i, expected) in offsets.iter().enumerate().skip(2) {
            let m = next_message(&mut sub).await;
            assert_eq!(
                (m.offset, &m.payload[..]),
                (Some(*expected), format!("m{i}").as_bytes())
            );
        }
        // From zero: everything retained.
        let mut all = ps
            .subscribe(vec!["log".into()], vec![], Some(Offset::default().into()))
            .await
            .unwrap();
        assert_eq!(next_message(&mut all).await.offset, Some(offsets[0]));
    }

    pub async fn resume_has_no_gap_and_no_duplicate_at_the_seam(app: &App) {
        let ps = &app.pubsub;
        for i in 0..300 {
            ps.publish("seam", Bytes::from(i.to_string()), BTreeMap::new(), true)
                .await
                .unwrap();
        }
        // Resume from the start while more are being published: the seam
        // between replayed and live falls somewhere inside 300..400.
        let mut sub = ps
            .subscribe(vec!["seam".into()], vec![], Some(Offset::default().into()))
            .await
            .unwrap();
        let publisher = async {
            for i in 300..400 {
                ps.publish("seam", Bytes::from(i.to_string()), BTreeMap::new(), true)
                    .await
                    .unwrap();
            }
        };
        let reader = async {
            let (mut got, mut marker) = (vec![], None);
            while got.len() < 400 || marker.is_none() {
                match next(&mut sub).await.unwrap() {
                    Delivery::Message(m) => got.push((
                        String::from_utf8(m.payload.to_vec()).unwrap(),
                        m.offset.unwrap(),
                    )),
                    Delivery::Lagged(n) => panic!("lagged by {n}"),
                    Delivery::Resumed(r) => assert!(r.recovered && got.is_empty(), "{r:?}"),
                    Delivery::Replayed(last) => {
                        assert!(marker.is_none(), "one marker");
                        marker = Some((got.len(), last));
                    }
                }
            }
            (got, marker)
        };
        let ((), (got, marker)) = tokio::join!(publisher, reader);
        let payloads: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        let expected: Vec<String> = (0..400).map(|i| i.to_string()).collect();
        assert_eq!(payloads, expected, "every message once, in order");
        // The marker: after everything published before the subscription
        // (and whatever else the replay read), naming the last of them.
        let (at, last) = marker.expect("the end of the replay is marked");
        assert!((300..=400).contains(&at), "marker after {at}");
        assert_eq!(last, Some(got[at - 1].1));
    }

    pub async fn a_resumed_subscriber_that_falls_behind_catches_up_from_the_stream(app: &App) {
        let ps = &app.pubsub;
        let publish = async |i: usize| {
            ps.publish("behind", Bytes::from(i.to_string()), BTreeMap::new(), true)
                .await
                .unwrap()
        };
        for i in 0..5 {
            publish(i).await;
        }
        let mut sub = ps
            .subscribe(
                vec!["behind".into()],
                vec![],
                Some(Offset::default().into()),
            )
            .await
            .unwrap();
        for i in 0..5 {
            assert_eq!(
                next_message(&mut sub).await.payload,
                i.to_string().as_bytes()
            );
        }
        // Live now; 50 more while it reads nothing: far past its buffer
        // of 16. A resumed subscriber is not told it lagged: it catches up
        // from the stream, every message once, in order.
        for i in 5..55 {
            publish(i).await;
        }
        for i in 5..55 {
            assert_eq!(
                next_message(&mut sub).await.payload,
                i.to_string().as_bytes(),
                "message {i}"
            );
        }
        // And goes on live.
        publish(55).await;
        assert_eq!(next_message(&mut sub).await.payload, &b"55"[..]);
    }

    pub async fn a_slow_subscriber_lags_without_holding_up_others(app: &App) {
        let ps = &app.pubsub;
        let mut slow = ps
            .subscribe(vec!["firehose".into()], vec![], None)
            .await
            .unwrap();
        let mut fast = ps
            .subscribe(vec!["firehose".into()], vec![], None)
            .await
            .unwrap();
        // The buffer is 16 messages here; the slow one reads nothing while
        // 100 go out, the fast one reads each as it comes.
        for i in 0..100 {
            ps.publish(
                "firehose",
                Bytes::from(i.to_string()),
                BTreeMap::new(),
                false,
            )
            .await
            .unwrap();
            assert_eq!(
                next_message(&mut fast).await.payload,
                Bytes::from(i.to_string())
            );
        }
        match next(&mut slow).await.unwrap() {
            Delivery::Lagged(missed) => assert!(missed >= 100 - 16, "missed {missed}"),
            other => panic!("expected a lag notice first, got {other:?}"),
        }
        // After the notice it goes on with what is still buffered.
        assert!(matches!(
            next(&mut slow).await.unwrap(),
            Delivery::Message(_)
        ));
    }

    pub async fn subscriber_count_is_limited(app: &App) {
        let ps = &app.pubsub;
        let mut subs = vec![];
        for i in 0..20 {
            subs.push(
                ps.subscribe(vec![format!("c{i}")], vec![], None)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(ps.subscribers(), 20);
        let err = ps
            .subscribe(vec!["one-more".into()], vec![], None)
            .await
            .err()
            .expect("over the limit");
        assert!(matches!(err, Error::Exhausted(_)), "{err:?}");
        subs.pop();
        assert_eq!(
            ps.subscribers(),
            19,
            "a dropped subscription frees its slot"
        );
        assert!(
            ps.subscribe(vec!["now-fits".into()], vec![], None)
                .await
                .is_ok()
        );
    }

    pub async fn bad_pubsub_input_is_rejected(app: &App) {
        let ps = &app.pubsub;
        let invalid =
            |r: Result<Option<Offset>, Error>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(invalid(
            ps.publish("", Bytes::new(), BTreeMap::new(), false).await
        ));
        let bad_headers = BTreeMap::from([(String::new(), "v".to_string())]);
        assert!(invalid(
            ps.publish("c", Bytes::new(), bad_headers, false).await
        ));
        let big = Bytes::from(vec![0u8; Config::default().limits.max_value_bytes + 1]);
        assert!(matches!(
            ps.publish("c", big, BTreeMap::new(), false).await,
            Err(Error::TooLarge(_))
        ));
        let sub_err =
            |r: Result<Subscription, Error>| matches!(r.err(), Some(Error::InvalidArgument(_)));
        assert!(sub_err(ps.subscribe(vec![], vec![], None).await));
        assert!(sub_err(ps.subscribe(vec![], vec!["a[".into()], None).await));
        assert!(sub_err(
            ps.subscribe(
                vec!["a".into(), "b".into()],
                vec![],
                Some(Offset::default().into())
            )
            .await
        ));
        assert_eq!(ps.subscribers(), 0, "rejected subscriptions take no slot");
    }

    /// Publishes `n` durable messages `m{i}` and (with `live`) a
    /// live-only one; returns the offsets.
    async fn durable_log(app: &App, channel: &str, n: usize, live: bool) -> Vec<Offset> {
        let mut offsets = vec![];
        for i in 0..n {
            let o = app
                .pubsub
                .publish(channel, Bytes::from(format!("m{i}")), BTreeMap::new(), true)
                .await
                .unwrap();
            offsets.push(o.unwrap());
        }
        if live {
            app.pubsub
                .publish(channel, Bytes::from("live only"), BTreeMap::new(), false)
                .await
                .unwrap();
        }
        offsets
    }

    fn payloads(page: &[PubMessage]) -> Vec<String> {
        page.iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect()
    }

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("m{i}")).collect()
    }

    pub async fn history_reads_both_ways_in_pages(app: &App) {
        let ps = &app.pubsub;
        let offsets = durable_log(app, "hist", 25, true).await;
        // Oldest first, in pages of 10, each continuing from the last.
        let (mut all, mut cursor) = (vec![], None);
        for expected_len in [10, 10, 5] {
            let page = ps
                .history(
                    "hist",
                    HistoryQuery {
                        limit: Some(10),
                        cursor,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(page.messages.len(), expected_len);
            cursor = page.next_cursor;
            all.extend(page.messages);
        }
        assert_eq!(cursor, None, "the last page says so");
        assert_eq!(payloads(&all), names(0..25), "durable ones only, once each");
        assert_eq!(
            all.iter().map(|m| m.offset.unwrap()).collect::<Vec<_>>(),
            offsets
        );
        // Newest first.
        let page = ps
            .history(
                "hist",
                HistoryQuery {
                    newest_first: true,
                    limit: Some(20),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            payloads(&page.messages),
            names(5..25).into_iter().rev().collect::<Vec<_>>()
        );
        let rest = ps
            .history(
                "hist",
                HistoryQuery {
                    newest_first: true,
                    cursor: page.next_cursor,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            payloads(&rest.messages),
            names(0..5).into_iter().rev().collect::<Vec<_>>()
        );
        // A range, both ends included; the last few either way.
        let range = ps
            .history(
                "hist",
                HistoryQuery {
                    from: Some(offsets[5]),
                    to: Some(offsets[7]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(payloads(&range.messages), names(5..8));
        let last = ps
            .history(
                "hist",
                HistoryQuery {
                    last: Some(3),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(payloads(&last.messages), names(22..25));
        let last = ps
            .history(
                "hist",
                HistoryQuery {
                    last: Some(3),
                    newest_first: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(payloads(&last.messages), ["m24", "m23", "m22"]);
        let none = ps
            .history("never-published", HistoryQuery::default())
            .await
            .unwrap();
        assert!(none.messages.is_empty() && none.next_cursor.is_none());
    }

    pub async fn trim_drops_what_came_before(app: &App) {
        let ps = &app.pubsub;
        let offsets = durable_log(app, "trimmed", 12, true).await;
        assert_eq!(ps.trim("trimmed", offsets[10]).await.unwrap(), 10);
        let page = ps
            .history("trimmed", HistoryQuery::default())
            .await
            .unwrap();
        assert_eq!(
            payloads(&page.messages),
            names(10..12),
            "the offset itself stays"
        );
        assert_eq!(ps.trim("trimmed", offsets[10]).await.unwrap(), 0);
        assert_eq!(ps.trim("never-published", offsets[10]).await.unwrap(), 0);
        // A resumed subscriber starts from what is left, told that the
        // start is gone.
        let mut sub = ps
            .subscribe(
                vec!["trimmed".into()],
                vec![],
                Some(Offset::default().into()),
            )
            .await
            .unwrap();
        let r = resumed(&mut sub).await;
        assert_eq!((r.recovered, r.from), (false, Some(offsets[10])));
        assert_eq!(next_message(&mut sub).await.offset, Some(offsets[10]));
    }

    pub async fn the_replayed_marker_follows_exactly_the_missed_messages(app: &App) {
        let ps = &app.pubsub;
        // No live-only message: on Cluster one published before a
        // subscription may still reach it (the bus carries it late).
        let offsets = durable_log(app, "marked", 5, false).await;
        let mut sub = ps
            .subscribe(vec!["marked".into()], vec![], Some(offsets[1].into()))
            .await
            .unwrap();
        let first = resumed(&mut sub).await;
        assert!(first.recovered);
        assert_eq!(first.from, Some(offsets[2]));
        let (got, last) = replayed(&mut sub).await;
        assert_eq!(last, Some(offsets[4]));
        assert_eq!(got, names(2..5));
        ps.publish("marked", Bytes::from("after"), BTreeMap::new(), true)
            .await
            .unwrap();
        assert_eq!(next_message(&mut sub).await.payload, &b"after"[..]);
        // Nothing to replay: the marker at once, naming nothing (an offset
        // never written, past the last: not a continuation of anything).
        let mut current = ps
            .subscribe(vec!["marked".into()], vec![], Some(Offset::MAX.into()))
            .await
            .unwrap();
        let far = resumed(&mut current).await;
        assert_eq!((far.recovered, far.from), (false, None));
        assert!(matches!(
            next(&mut current).await.unwrap(),
            Delivery::Replayed(None)
        ));
        // A live subscription has no replay to mark.
        let mut live = ps
            .subscribe(vec!["marked".into()], vec![], None)
            .await
            .unwrap();
        ps.publish("marked", Bytes::from("live"), BTreeMap::new(), false)
            .await
            .unwrap();
        assert!(matches!(
            next(&mut live).await.unwrap(),
            Delivery::Message(_)
        ));
    }

    pub async fn bad_history_input_is_rejected(app: &App) {
        let ps = &app.pubsub;
        let invalid = async |q: HistoryQuery| {
            matches!(ps.history("c", q).await, Err(Error::InvalidArgument(_)))
        };
        assert!(
            invalid(HistoryQuery {
                limit: Some(0),
                ..Default::default()
            })
            .await
        );
        assert!(
            invalid(HistoryQuery {
                limit: Some(1001),
                ..Default::default()
            })
            .await
        );
        assert!(
            invalid(HistoryQuery {
                last: Some(0),
                ..Default::default()
            })
            .await
        );
        assert!(
            invalid(HistoryQuery {
                last: Some(2),
                from: Some(Offset::default()),
                ..Default::default()
            })
            .await
        );
        let (a, b) = (Offset { ms: 2, seq: 0 }, Offset { ms: 1, seq: 0 });
        assert!(
            invalid(HistoryQuery {
                from: Some(a),
                to: Some(b),
                ..Default::default()
            })
            .await
        );
        assert!(matches!(
            ps.history("", HistoryQuery::default()).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ps.trim("", a).await,
            Err(Error::InvalidArgument(_))
        ));
    }

    pub async fn a_repeated_idempotency_key_delivers_nothing_within_its_window(app: &App) {
        let ps = &app.pubsub;
        let mut sub = ps
            .subscribe(vec!["idem".into()], vec![], None)
            .await
            .unwrap();
        let publish = async |payload: &'static str, durable: bool, key: &str| {
            let options = PublishOptions {
                durable,
                idempotency_key: Some(key.into()),
                ..Default::default()
            };
            ps.publish_with("idem", Bytes::from(payload), BTreeMap::new(), options)
                .await
                .unwrap()
        };
        let first = publish("a", true, "k1").await;
        assert!(!first.duplicate && first.offset.is_some());
        let again = publish("a again", true, "k1").await;
        assert_eq!(
            (again.offset, again.duplicate),
            (first.offset, true),
            "the first one's offset"
        );
        let live = publish("b", false, "k2").await;
        assert_eq!((live.offset, live.duplicate), (None, false));
        assert!(publish("b again", false, "k2").await.duplicate);
        // The key is the channel's: the same key elsewhere is another.
        let options = PublishOptions {
            durable: true,
            idempotency_key: Some("k1".into()),
            ..Default::default()
        };
        let elsewhere = ps
            .publish_with("idem-other", Bytes::from("c"), BTreeMap::new(), options)
            .await
            .unwrap();
        assert!(!elsewhere.duplicate);
        ps.publish("idem", Bytes::from("end"), BTreeMap::new(), false)
            .await
            .unwrap();
        let mut got = vec![];
        loop {
            let m = next_message(&mut sub).await;
            if m.payload == "end" {
                break;
            }
            got.push(m.payload);
        }
        assert_eq!(got, ["a", "b"], "each delivered once");
        let history = ps.history("idem", HistoryQuery::default()).await.unwrap();
        assert_eq!(payloads(&history.messages), ["a"]);
        // Past the window (500 ms here) the key is new again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let later = publish("a later", true, "k1").await;
            if !later.duplicate {
                assert!(later.offset > first.offset);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the key outlived its window"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for bad in ["", "\n", &"k".repeat(257)] {
            let options = PublishOptions {
                idempotency_key: Some(bad.to_string()),
                ..Default::default()
            };
            let r = ps
                .publish_with("idem", Bytes::new(), BTreeMap::new(), options)
                .await;
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    pub async fn retention_by_count_per_channel_glob_and_per_publish(app: &App) {
        let ps = &app.pubsub;
        durable_log(app, "short:a", 10, false).await;
        let kept = ps
            .history("short:a", HistoryQuery::default())
            .await
            .unwrap();
        assert_eq!(
            payloads(&kept.messages),
            names(7..10),
            "the rule keeps 3, exactly"
        );
        // A publish may ask for less, not more.
        let fewer = PublishOptions {
            durable: true,
            max_len: Some(1),
            ..Default::default()
        };
        ps.publish_with("short:a", Bytes::from("only"), BTreeMap::new(), fewer)
            .await
            .unwrap();
        let kept = ps
            .history("short:a", HistoryQuery::default())
            .await
            .unwrap();
        assert_eq!(payloads(&kept.messages), ["only"]);
        let more = PublishOptions {
            durable: true,
            max_len: Some(4),
            ..Default::default()
        };
        let refused = ps
            .publish_with("short:a", Bytes::from("x"), BTreeMap::new(), more)
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
        // Other channels keep the default (5,000 here).
        durable_log(app, "long", 10, false).await;
        assert_eq!(
            ps.history("long", HistoryQuery::default())
                .await
                .unwrap()
                .messages
                .len(),
            10
        );
        assert_eq!(ps.retention("short:zzz").max_len, 3);
        assert_eq!(ps.retention("long").max_len, 5_000);
    }

    pub async fn retention_by_age_and_an_idle_channel_disappears(app: &App) {
        let ps = &app.pubsub;
        let first = durable_log(app, "aged:a", 2, false).await;
        // By time: once 800 ms old, m0 and m1 are gone from reads, with or
        // without a publish to trim them; a later message stays.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let later = loop {
            let o = ps
                .publish("aged:a", Bytes::from("later"), BTreeMap::new(), true)
                .await
                .unwrap()
                .unwrap();
            if o.ms >= first[0].ms + 800 {
                break o;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let page = ps.history("aged:a", HistoryQuery::default()).await.unwrap();
        assert!(
            page.messages.iter().all(|m| m.payload == "later"),
            "{:?}",
            payloads(&page.messages)
        );
        assert_eq!(page.messages.last().and_then(|m| m.offset), Some(later));
        // Trimmed from the stream itself, not only left out of reads: a
        // replay (which reads the stream as it is) starts past them.
        let mut replay = ps
            .subscribe(
                vec!["aged:a".into()],
                vec![],
                Some(Offset::default().into()),
            )
            .await
            .unwrap();
        let r = resumed(&mut replay).await;
        assert!(!r.recovered, "m0 and m1 expired");
        assert!(r.from > Some(first[1]), "{r:?}");
        // A publish may ask for a shorter age, not a longer one.
        let longer = PublishOptions {
            durable: true,
            max_age: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let refused = ps
            .publish_with("aged:a", Bytes::from("x"), BTreeMap::new(), longer)
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
        // Idle for its max age, the channel is gone: a resumed subscriber
        // (whose replay reads the stream as it is, no age filter) finds
        // nothing, and reads find nothing.
        let gone = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut sub = ps
                .subscribe(
                    vec!["aged:a".into()],
                    vec![],
                    Some(Offset::default().into()),
                )
                .await
                .unwrap();
            let _ = resumed(&mut sub).await;
            if matches!(next(&mut sub).await.unwrap(), Delivery::Replayed(None)) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < gone,
                "the channel outlived its age"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            ps.history("aged:a", HistoryQuery::default())
                .await
                .unwrap()
                .messages
                .is_empty()
        );
    }

    /// Publishes `n` durable messages m0.. on `channel`; their offsets and
    /// the channel's epoch.
    async fn durable_epoch(app: &App, channel: &str, n: usize) -> (Vec<Offset>, String) {
        let (mut offsets, mut epochs) = (vec![], BTreeSet::new());
        for i in 0..n {
            let options = PublishOptions {
                durable: true,
                ..Default::default()
            };
            let published = app
                .pubsub
                .publish_with(
                    channel,
                    Bytes::from(format!("m{i}")),
                    BTreeMap::new(),
                    options,
                )
                .await
                .unwrap();
            offsets.push(published.offset.unwrap());
            epochs.insert(published.epoch.expect("a durable publish names the epoch"));
        }
        assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
        (offsets, epochs.pop_first().unwrap())
    }

    async fn resume_from(
        app: &App,
        channel: &str,
        offset: Offset,
        epoch: Option<&str>,
    ) -> Subscription {
        let from = ResumeFrom {
            offset,
            epoch: epoch.map(str::to_string),
        };
        app.pubsub
            .subscribe(vec![channel.into()], vec![], Some(from))
            .await
            .unwrap()
    }

    pub async fn a_resume_says_whether_it_runs_on_from_the_offset(app: &App) {
        let ps = &app.pubsub;
        let (o, epoch) = durable_epoch(app, "epoch", 4).await;
        let history = ps.history("epoch", HistoryQuery::default()).await.unwrap();
        assert_eq!(
            history.epoch.as_deref(),
            Some(epoch.as_str()),
            "history names it"
        );
        // With the epoch, from an offset of it: the rest, recovered.
        let mut sub = resume_from(app, "epoch", o[1], Some(&epoch)).await;
        let r = resumed(&mut sub).await;
        assert_eq!(
            r,
            Resumed {
                recovered: true,
                epoch: epoch.clone(),
                from: Some(o[2])
            }
        );
        assert_eq!(replayed(&mut sub).await, (names(2..4), Some(o[3])));
        // Without it: the offset alone vouches.
        let mut sub = resume_from(app, "epoch", o[1], None).await;
        assert!(resumed(&mut sub).await.recovered);
        // From the last one: nothing to replay, nothing missed.
        let mut sub = resume_from(app, "epoch", o[3], Some(&epoch)).await;
        let r = resumed(&mut sub).await;
        assert_eq!((r.recovered, r.from), (true, None));
        assert_eq!(replayed(&mut sub).await, (vec![], None));
        // From zero: the whole epoch, nothing of it missing.
        let mut sub = resume_from(app, "epoch", Offset::default(), None).await;
        let r = resumed(&mut sub).await;
        assert_eq!((r.recovered, r.from), (true, Some(o[0])));
        // Another epoch's offset means nothing here: told so, and given the
        // whole epoch.
        let mut sub = resume_from(app, "epoch", o[3], Some("1700000000000-0@00000000")).await;
        let r = resumed(&mut sub).await;
        assert_eq!(
            r,
            Resumed {
                recovered: false,
                epoch: epoch.clone(),
                from: Some(o[0])
            }
        );
        assert_eq!(replayed(&mut sub).await.0, names(0..4));
        // A channel never written has an epoch as soon as someone waits on
        // it; its first message is of that epoch, and runs on from nothing.
        let mut waiting = resume_from(app, "epoch-new", Offset::default(), None).await;
        let r = resumed(&mut waiting).await;
        assert!(r.recovered);
        assert_eq!(replayed(&mut waiting).await, (vec![], None));
        let (first, new_epoch) = durable_epoch(app, "epoch-new", 1).await;
        assert_eq!(new_epoch, r.epoch, "the epoch the subscriber was told");
        assert_eq!(next_message(&mut waiting).await.offset, Some(first[0]));
        let mut sub = resume_from(app, "epoch-new", Offset::default(), Some(&new_epoch)).await;
        assert_eq!(resumed(&mut sub).await.from, Some(first[0]));
        // Bad epochs are refused.
        for bad in [String::new(), "\n".into(), "e".repeat(129)] {
            let from = ResumeFrom {
                offset: o[0],
                epoch: Some(bad.clone()),
            };
            let r = ps.subscribe(vec!["epoch".into()], vec![], Some(from)).await;
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    pub async fn a_resume_past_a_trim_or_the_length_cap_is_not_recovered(app: &App) {
        let ps = &app.pubsub;
        let (o, epoch) = durable_epoch(app, "cut", 6).await;
        assert_eq!(ps.trim("cut", o[4]).await.unwrap(), 4);
        // m2 and m3 came after o[1] and are gone: told so, and the replay
        // starts at what is left.
        let mut sub = resume_from(app, "cut", o[1], Some(&epoch)).await;
        let r = resumed(&mut sub).await;
        assert_eq!(
            r,
            Resumed {
                recovered: false,
                epoch: epoch.clone(),
                from: Some(o[4])
            }
        );
        assert_eq!(replayed(&mut sub).await, (names(4..6), Some(o[5])));
        // o[3] is gone too, but nothing after it: exactly recovered.
        let mut sub = resume_from(app, "cut", o[3], Some(&epoch)).await;
        let r = resumed(&mut sub).await;
        assert_eq!((r.recovered, r.from), (true, Some(o[4])));
        // From zero, the epoch has lost its start.
        let mut sub = resume_from(app, "cut", Offset::default(), None).await;
        assert!(!resumed(&mut sub).await.recovered);
        // Trimmed to nothing: everything after o[4] is gone.
        assert_eq!(ps.trim("cut", Offset::MAX).await.unwrap(), 2);
        let mut sub = resume_from(app, "cut", o[4], Some(&epoch)).await;
        let r = resumed(&mut sub).await;
        assert_eq!((r.recovered, r.from), (false, None));
        let mut sub = resume_from(app, "cut", o[5], Some(&epoch)).await;
        assert!(
            resumed(&mut sub).await.recovered,
            "the last one: nothing missed"
        );
        // The length cap (3 on short:*) drops the oldest as it goes.
        let (o, epoch) = durable_epoch(app, "short:cut", 6).await;
        let mut sub = resume_from(app, "short:cut", o[1], Some(&epoch)).await;
        let r = resumed(&mut sub).await;
        assert_eq!((r.recovered, r.from), (false, Some(o[3])));
        let mut sub = resume_from(app, "short:cut", o[2], Some(&epoch)).await;
        assert!(resumed(&mut sub).await.recovered);
    }

    pub async fn a_channel_expired_and_created_again_is_a_new_epoch(app: &App) {
        let ps = &app.pubsub;
        // aged:* channels live 800 ms past their last publish.
        let (old, old_epoch) = durable_epoch(app, "aged:e", 2).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ps
            .history("aged:e", HistoryQuery::default())
            .await
            .unwrap()
            .epoch
            .is_some()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the channel outlived its age"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (new, new_epoch) = durable_epoch(app, "aged:e", 1).await;
        assert_ne!(new_epoch, old_epoch);
        // With the old epoch, or without any (the offset is older than the
        // new epoch): not recovered, and the new epoch's messages follow.
        for epoch in [Some(old_epoch.as_str()), None] {
            let mut sub = resume_from(app, "aged:e", old[1], epoch).await;
            let r = resumed(&mut sub).await;
            assert_eq!(
                r,
                Resumed {
                    recovered: false,
                    epoch: new_epoch.clone(),
                    from: Some(new[0])
                }
            );
            assert_eq!(replayed(&mut sub).await, (names(0..1), Some(new[0])));
        }
        let mut sub = resume_from(app, "aged:e", new[0], Some(&new_epoch)).await;
        assert!(resumed(&mut sub).await.recovered);
    }
}
