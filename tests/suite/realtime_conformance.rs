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
use outrigger::primitives::pubsub::Subscription;
use outrigger::primitives::pubsub::store::{Offset, PubMessage};
use outrigger_tests::{AppOn, Topology, conformance};

fn config() -> Config {
    let mut config = Config::default();
    config.presence.reap_interval = Duration::from_millis(50);
    config.pubsub.subscriber_buffer = 16;
    config.pubsub.stream_max_len = 5_000;
    config.pubsub.max_subscribers = 20;
    config
}

async fn setup(topology: Topology) -> AppOn {
    topology.app(&config(), "rt").await
}

conformance!(
    setup;
    [on_memory: Memory, on_redis: Redis, on_cluster: Cluster, on_sentinel: Sentinel];
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
    }
);

/// The next item of a feed, within a bound.
async fn next<S: futures::Stream + Unpin>(feed: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("an item within 5 s")
        .expect("the feed goes on")
}

async fn next_message(sub: &mut Subscription) -> PubMessage {
    match next(sub).await.expect("no error") {
        FeedItem::Item(m) => (*m).clone(),
        FeedItem::Lagged(n) => panic!("lagged by {n}"),
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
            .subscribe(vec!["log".into()], vec![], Some(offsets[1]))
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
            .subscribe(vec!["log".into()], vec![], Some(Offset::default()))
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
            .subscribe(vec!["seam".into()], vec![], Some(Offset::default()))
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
            let mut got = vec![];
            while got.len() < 400 {
                match next(&mut sub).await.unwrap() {
                    FeedItem::Item(m) => got.push(String::from_utf8(m.payload.to_vec()).unwrap()),
                    FeedItem::Lagged(n) => panic!("lagged by {n}"),
                }
            }
            got
        };
        let ((), got) = tokio::join!(publisher, reader);
        let expected: Vec<String> = (0..400).map(|i| i.to_string()).collect();
        assert_eq!(got, expected, "every message once, in order");
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
            .subscribe(vec!["behind".into()], vec![], Some(Offset::default()))
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
            FeedItem::Lagged(missed) => assert!(missed >= 100 - 16, "missed {missed}"),
            FeedItem::Item(m) => panic!("expected a lag notice first, got {m:?}"),
        }
        // After the notice it goes on with what is still buffered.
        assert!(matches!(next(&mut slow).await.unwrap(), FeedItem::Item(_)));
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
                Some(Offset::default())
            )
            .await
        ));
        assert_eq!(ps.subscribers(), 0, "rejected subscriptions take no slot");
    }
}
