//! The ways a durable channel's history can stop running on from what a
//! subscriber saw, beyond trims and expiry (the conformance suite has
//! those): Redis restarted empty, a failover to a replica that lagged, the
//! sidecar's fallback history giving way to Redis'. Each time a resuming
//! subscriber is told so (`recovered: false`, the new epoch), never left
//! with a silent gap.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use outrigger::app::App;
use outrigger::config::{Config, RedisConfig};
use outrigger::primitives::pubsub::store::{Offset, Published};
use outrigger::primitives::pubsub::{Delivery, PublishOptions, ResumeFrom, Resumed, Subscription};
use outrigger_tests::{RedisServer, StallablePair, app_on, eventually, redis_at, unique};

/// How long Redis may take to come back, or the sidecar to notice.
const BACK: Duration = Duration::from_secs(15);

/// An `App` on Redis alone (no fallback): calls fail while it is away.
async fn app(redis: RedisConfig, namespace: &str) -> App {
    app_on(&Config::default(), &redis, namespace).await
}

async fn publish(app: &App, channel: &str, payload: &str) -> Result<Published, String> {
    let options = PublishOptions {
        durable: true,
        ..Default::default()
    };
    app.pubsub
        .publish_with(
            channel,
            Bytes::from(payload.to_string()),
            BTreeMap::new(),
            options,
        )
        .await
        .map_err(|e| e.to_string())
}

/// Publishes m0..m{n-1}; their offsets and the epoch.
async fn publish_n(
    app: &App,
    channel: &str,
    range: std::ops::Range<usize>,
) -> (Vec<Offset>, String) {
    let mut offsets = vec![];
    let mut epoch = None;
    for i in range {
        let p = publish(app, channel, &format!("m{i}")).await.unwrap();
        offsets.push(p.offset.unwrap());
        let e = p.epoch.unwrap();
        assert!(epoch.get_or_insert(e.clone()) == &e, "one epoch");
    }
    (offsets, epoch.unwrap())
}

/// Resumes `channel` after `offset` (of `epoch`, if given) once the store
/// answers, accepting the first marker `ready` says is from the store the
/// test waits for; that marker and the subscription.
async fn resume_when(
    app: &App,
    channel: &str,
    offset: Offset,
    epoch: Option<&str>,
    ready: impl Fn(&Resumed) -> bool,
) -> (Resumed, Subscription) {
    eventually(BACK, "a resume the store answers", || async {
        let from = ResumeFrom {
            offset,
            epoch: epoch.map(str::to_string),
        };
        let mut sub = app
            .pubsub
            .subscribe(vec![channel.into()], vec![], Some(from))
            .await
            .ok()?;
        let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
        match first {
            Ok(Some(Ok(Delivery::Resumed(r)))) if ready(&r) => Some((r, sub)),
            _ => None,
        }
    })
    .await
}

async fn resume(
    app: &App,
    channel: &str,
    offset: Offset,
    epoch: Option<&str>,
) -> (Resumed, Subscription) {
    resume_when(app, channel, offset, epoch, |_| true).await
}

/// The payloads a subscription replays, up to its end-of-replay marker.
async fn replayed(sub: &mut Subscription) -> Vec<String> {
    let mut got = vec![];
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
        match next
            .expect("the replay goes on")
            .expect("open")
            .expect("no error")
        {
            Delivery::Message(m) => got.push(String::from_utf8(m.payload.to_vec()).unwrap()),
            Delivery::Replayed(_) => return got,
            other => panic!("during the replay: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_resume_after_redis_restarted_empty_is_not_recovered() {
    let mut redis = RedisServer::start().await;
    let app = app(redis_at(redis.port), &unique("loss")).await;
    let (o, epoch) = publish_n(&app, "room", 0..3).await;
    redis.restart().await;
    // Redis knows nothing of the channel now: whatever came after m2 may
    // have been lost with it.
    let (r, mut sub) = resume(&app, "room", o[2], Some(&epoch)).await;
    assert!(!r.recovered && r.from.is_none(), "{r:?}");
    assert_ne!(r.epoch, epoch, "a new epoch");
    assert!(replayed(&mut sub).await.is_empty());
    // What is published now is of the new epoch, and delivered.
    let after = publish(&app, "room", "m3").await.unwrap();
    assert_eq!(after.epoch.as_ref(), Some(&r.epoch));
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    match next.unwrap().unwrap().unwrap() {
        Delivery::Message(m) => assert_eq!(m.offset, after.offset),
        other => panic!("{other:?}"),
    }
    // A subscriber that kept only its offset is told too: the offset is
    // older than the epoch.
    let (r, mut sub) = resume(&app, "room", o[1], None).await;
    assert!(!r.recovered);
    assert_eq!(r.from, after.offset);
    assert_eq!(replayed(&mut sub).await, ["m3"]);
}

#[tokio::test]
async fn a_resume_across_a_failover_to_a_lagging_replica_is_not_recovered() {
    let mut pair = StallablePair::start().await;
    let app = app(redis_at(pair.port()), &unique("failover")).await;
    let (o, epoch) = publish_n(&app, "room", 0..2).await;
    pair.in_sync().await;
    // The link stalls: m2 and m3 reach the primary, and subscribers, but
    // never the replica.
    pair.stall();
    let (lost, same) = publish_n(&app, "room", 2..4).await;
    assert_eq!(same, epoch);
    pair.fail_over().await;
    // The first write after the failover is of a new epoch: the promoted
    // replica cannot know what it lacks.
    let m4 = eventually(BACK, "a publish to the promoted replica", || async {
        publish(&app, "room", "m4").await.ok()
    })
    .await;
    let new_epoch = m4.epoch.clone().unwrap();
    assert_ne!(new_epoch, epoch);
    // Had m1, missed m2 and m3 (gone with the primary): told so, with or
    // without its epoch, and given what there is after m1.
    for known in [Some(epoch.as_str()), None] {
        let (r, mut sub) = resume(&app, "room", o[1], known).await;
        assert_eq!(
            r,
            Resumed {
                recovered: false,
                epoch: new_epoch.clone(),
                from: m4.offset,
            }
        );
        assert_eq!(replayed(&mut sub).await, ["m4"]);
    }
    // Had everything: still of the old epoch, so told too (nothing says
    // which offsets the replica had).
    let (r, _) = resume(&app, "room", lost[1], Some(&epoch)).await;
    assert!(!r.recovered);
    // Of the new epoch: recovered.
    let (r, _) = resume(&app, "room", m4.offset.unwrap(), Some(&new_epoch)).await;
    assert!(r.recovered);
}

#[tokio::test]
async fn the_fallback_history_and_redis_history_are_different_epochs() {
    let mut redis = RedisServer::start().await;
    let mut config = Config {
        namespace: unique("fallback"),
        redis: redis_at(redis.port),
        ..Config::default()
    };
    config.failover.probe_interval = Duration::from_millis(50);
    config.failover.flush_delay = Duration::from_millis(10);
    let app = App::new(&config).await.expect("the app");
    let (o, redis_epoch) = publish_n(&app, "room", 0..2).await;
    redis.kill().await;
    // While Redis is down, resumes read this sidecar's own history: another
    // epoch, which cannot vouch for the offset.
    let local = |r: &Resumed| r.epoch.contains("@local-");
    let (r, _) = resume_when(&app, "room", o[1], Some(&redis_epoch), local).await;
    assert!(!r.recovered, "{r:?}");
    let during = publish(&app, "room", "during").await.unwrap();
    assert_eq!(during.epoch.as_ref(), Some(&r.epoch));
    // Back on Redis, an offset of the fallback's epoch means nothing.
    redis.restart().await;
    let shared = |r: &Resumed| !r.epoch.contains("@local-");
    let (r, _) = resume_when(
        &app,
        "room",
        during.offset.unwrap(),
        during.epoch.as_deref(),
        shared,
    )
    .await;
    assert!(!r.recovered, "{r:?}");
}
