//! The counter conformance suite: the same assertions on every topology,
//! through the primitive (`Counters`), so validation, bounds and windows
//! are covered on each backend.

use std::sync::Arc;
use std::time::Duration;

use outrigger::app::{App, Stores};
use outrigger::backend::redis::RedisStore;
use outrigger::config::Config;
use outrigger::error::Error;
use outrigger::primitives::counter::IncrementRequest;
use outrigger::primitives::counter::store::MAX_MAGNITUDE;
use outrigger_tests::{AppOn, RedisServer, Topology, conformance, eventually, unique};

async fn setup(topology: Topology) -> AppOn {
    topology.app(&Config::default(), "counters").await
}

conformance!(
    setup;
    [
        on_memory: Memory,
        on_redis: Redis,
        on_cluster: Cluster,
        on_sentinel: Sentinel,
        on_replicas: Replicas,
    ];
    cases {
        an_absent_counter_reads_zero_and_the_first_increment_creates_it,
        a_bound_refuses_the_increment_and_leaves_the_counter_unchanged,
        the_largest_magnitude_is_a_bound_too,
        a_window_starts_with_the_counter_and_ends_it,
        reset_deletes_the_counter,
        concurrent_increments_are_all_counted,
        bad_counter_input_is_rejected,
    }
);

fn by(by: i64) -> IncrementRequest {
    IncrementRequest {
        by,
        ..IncrementRequest::default()
    }
}

mod cases {
    use super::*;

    pub async fn an_absent_counter_reads_zero_and_the_first_increment_creates_it(app: &App) {
        let c = &app.counters;
        let absent = c.get("visits").await.unwrap();
        assert_eq!((absent.value, absent.exists, absent.ttl), (0, false, None));
        let created = c.increment("visits", by(5)).await.unwrap();
        assert_eq!(
            (created.value, created.exists, created.ttl),
            (5, true, None)
        );
        assert_eq!(c.increment("visits", by(-7)).await.unwrap().value, -2);
        let read = c.get("visits").await.unwrap();
        assert_eq!((read.value, read.exists), (-2, true));
        // Names are independent.
        assert_eq!(c.get("other").await.unwrap().value, 0);
    }

    pub async fn a_bound_refuses_the_increment_and_leaves_the_counter_unchanged(app: &App) {
        let c = &app.counters;
        let capped = |n, max| IncrementRequest {
            by: n,
            max: Some(max),
            ..IncrementRequest::default()
        };
        assert_eq!(c.increment("seats", capped(3, 5)).await.unwrap().value, 3);
        let err = c.increment("seats", capped(3, 5)).await.unwrap_err();
        assert!(
            matches!(&err, Error::PreconditionFailed(m) if m.contains("is 3") && m.contains("maximum 5")),
            "{err:?}"
        );
        assert_eq!(c.get("seats").await.unwrap().value, 3);
        assert_eq!(c.increment("seats", capped(2, 5)).await.unwrap().value, 5);
        let floored = |n, min| IncrementRequest {
            by: n,
            min: Some(min),
            ..IncrementRequest::default()
        };
        let err = c.increment("seats", floored(-6, 0)).await.unwrap_err();
        assert!(
            matches!(&err, Error::PreconditionFailed(m) if m.contains("minimum 0")),
            "{err:?}"
        );
        assert_eq!(c.increment("seats", floored(-5, 0)).await.unwrap().value, 0);
        // A refused first increment creates nothing.
        let err = c.increment("empty", capped(1, 0)).await.unwrap_err();
        assert!(matches!(err, Error::PreconditionFailed(_)), "{err:?}");
        assert!(!c.get("empty").await.unwrap().exists);
    }

    pub async fn the_largest_magnitude_is_a_bound_too(app: &App) {
        let c = &app.counters;
        assert_eq!(
            c.increment("big", by(MAX_MAGNITUDE)).await.unwrap().value,
            MAX_MAGNITUDE
        );
        let err = c.increment("big", by(1)).await.unwrap_err();
        assert!(
            matches!(&err, Error::PreconditionFailed(m) if m.contains("largest value")),
            "{err:?}"
        );
        // Exact at the edge: the value is not rounded.
        assert_eq!(c.get("big").await.unwrap().value, MAX_MAGNITUDE);
        assert_eq!(
            c.increment("big", by(-1)).await.unwrap().value,
            MAX_MAGNITUDE - 1
        );
        assert_eq!(
            c.increment("small", by(-MAX_MAGNITUDE))
                .await
                .unwrap()
                .value,
            -MAX_MAGNITUDE
        );
        assert!(c.increment("small", by(-1)).await.is_err());
    }

    pub async fn a_window_starts_with_the_counter_and_ends_it(app: &App) {
        let c = &app.counters;
        let windowed = |ttl_ms| IncrementRequest {
            by: 1,
            ttl_ms,
            ..IncrementRequest::default()
        };
        let first = c.increment("attempts", windowed(400)).await.unwrap();
        let ttl = first.ttl.expect("a window");
        assert!(
            ttl > Duration::ZERO && ttl <= Duration::from_millis(400),
            "{ttl:?}"
        );
        // A later increment counts within the window; it does not restart it.
        let second = c.increment("attempts", windowed(60_000)).await.unwrap();
        assert_eq!(second.value, 2);
        assert!(second.ttl.expect("a window") <= Duration::from_millis(400));
        eventually(Duration::from_secs(5), "the window to end", || async {
            (!c.get("attempts").await.unwrap().exists).then_some(())
        })
        .await;
        // A new counter after the window; without `ttl_ms` it never expires.
        let again = c.increment("attempts", by(1)).await.unwrap();
        assert_eq!((again.value, again.ttl), (1, None));
    }

    pub async fn reset_deletes_the_counter(app: &App) {
        let c = &app.counters;
        c.increment("failures", by(2)).await.unwrap();
        assert!(c.reset("failures").await.unwrap());
        let read = c.get("failures").await.unwrap();
        assert_eq!((read.value, read.exists), (0, false));
        assert!(!c.reset("failures").await.unwrap());
        assert_eq!(c.increment("failures", by(1)).await.unwrap().value, 1);
    }

    pub async fn concurrent_increments_are_all_counted(app: &App) {
        let c = &app.counters;
        let tasks = (0..8).map(|_| async {
            for _ in 0..50 {
                c.increment("hits", by(1)).await.unwrap();
            }
        });
        futures::future::join_all(tasks).await;
        assert_eq!(c.get("hits").await.unwrap().value, 400);
    }

    pub async fn bad_counter_input_is_rejected(app: &App) {
        let c = &app.counters;
        let invalid = |r: Result<_, Error>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(invalid(c.increment("n", by(0)).await), "by 0");
        assert!(invalid(c.increment("n", by(MAX_MAGNITUDE + 1)).await));
        assert!(invalid(c.increment("n", by(i64::MIN)).await), "i64::MIN");
        let floor = IncrementRequest {
            by: 1,
            min: Some(i64::MIN),
            ..IncrementRequest::default()
        };
        assert!(invalid(c.increment("n", floor).await), "min i64::MIN");
        let inverted = IncrementRequest {
            by: 1,
            min: Some(5),
            max: Some(4),
            ..IncrementRequest::default()
        };
        assert!(invalid(c.increment("n", inverted).await), "min > max");
        let forever = IncrementRequest {
            by: 1,
            ttl_ms: u64::MAX,
            ..IncrementRequest::default()
        };
        assert!(invalid(c.increment("n", forever).await), "ttl over max_ttl");
        assert!(invalid(c.get("").await), "empty name");
        let long = "x".repeat(513);
        assert!(matches!(c.reset(&long).await, Err(Error::TooLarge(_))));
        // Nothing was created by the refused calls.
        assert!(!c.get("n").await.unwrap().exists);
    }
}

/// Two namespaces on one Redis never see each other's counters.
#[tokio::test]
async fn namespaces_isolate_counters() {
    let server = RedisServer::start().await;
    let config = Config::default();
    let app = |namespace: String| {
        let config = config.clone();
        let redis = server.redis_config();
        async move {
            let store = RedisStore::connect(&redis, &namespace).await.unwrap();
            let stores = Stores::redis(Arc::new(store), &config).await.unwrap();
            App::with_stores(&config, stores)
        }
    };
    let (a, b) = (app(unique("a")).await, app(unique("b")).await);
    a.counters.increment("shared-name", by(3)).await.unwrap();
    assert_eq!(b.counters.get("shared-name").await.unwrap().value, 0);
    b.counters.increment("shared-name", by(1)).await.unwrap();
    assert_eq!(a.counters.get("shared-name").await.unwrap().value, 3);
}
