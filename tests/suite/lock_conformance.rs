//! The lock, semaphore and rate-limit conformance suites: the same
//! assertions against the memory backend and a real Redis, through the
//! primitives (`Locks`, `RateLimits`) so that waiting, keep-alive and
//! validation are covered on both.

use std::time::{Duration, Instant};

use outrigger::app::App;
use outrigger::config::{Config, PolicyConfig};
use outrigger::error::Error;
use outrigger::plugins::Classified;
use outrigger::primitives::lock::KeepAlive;
use outrigger::primitives::lock::store::{InUse, Kind};
use outrigger::primitives::ratelimit::InlineLimit;
use outrigger_tests::{AppOn, Topology, conformance};

fn config() -> Config {
    let mut config = Config::default();
    let policy = |algorithm: &str, limit, period_ms, burst| PolicyConfig {
        algorithm: serde_json::from_value(serde_json::json!(algorithm)).unwrap(),
        limit,
        period: Duration::from_millis(period_ms),
        burst,
    };
    let policies = &mut config.ratelimit.policies;
    policies.insert("login".into(), policy("gcra", 5, 60_000, None));
    policies.insert("bursty".into(), policy("gcra", 10, 1_000, Some(3)));
    policies.insert("sliding".into(), policy("sliding_window", 4, 60_000, None));
    policies.insert("fixed".into(), policy("fixed_window", 3, 60_000, None));
    policies.insert("fast".into(), policy("gcra", 20, 1_000, Some(2)));
    config
}

async fn setup(topology: Topology) -> AppOn {
    topology.app(&config(), "locks").await
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
        acquire_release_and_reacquire,
        try_lock_fails_at_once_while_held,
        only_the_current_token_releases_or_extends,
        fences_strictly_increase_and_survive_expiry,
        an_expired_holder_loses_to_the_next,
        extend_keeps_the_lock_past_its_first_ttl,
        a_waiter_is_woken_by_the_release_not_the_ttl,
        wait_ms_bounds_the_wait,
        bad_lock_input_is_rejected,
        keep_alive_renews_until_stopped,
        keep_alive_reports_lost_when_the_lock_is_taken,
        semaphore_grants_exactly_limit_permits,
        semaphore_permits_expire_and_wake_waiters,
        operators_see_what_is_held_but_never_a_token,
        gcra_allows_the_burst_then_denies_with_retry_after,
        gcra_honours_retry_after,
        gcra_cost_counts_several_units,
        cost_above_the_burst_is_rejected,
        sliding_window_limits_any_period,
        fixed_window_limits_each_window,
        inline_limits_and_unknown_policies,
        keys_and_policies_have_separate_counters,
        peek_decides_without_taking,
        reset_makes_the_whole_limit_available,
        a_multi_check_takes_all_or_nothing,
        a_multi_check_is_validated_whole,
    }
);

// Keys without a shared hash tag: one atomic multi-check needs one slot,
// which only a Cluster lacks.
conformance!(
    setup;
    [untagged_on_memory: Memory, untagged_on_redis: Redis, untagged_on_sentinel: Sentinel];
    untagged { a_multi_check_of_untagged_keys_works }
);
conformance!(
    setup;
    [untagged_on_cluster: Cluster];
    untagged { a_multi_check_of_untagged_keys_is_refused_on_cluster }
);

type Checks = Vec<(Classified, Option<InlineLimit>)>;

fn checks(list: &[(&str, &str, u32)]) -> Checks {
    list.iter()
        .map(|(policy, key, cost)| {
            let check = Classified {
                policy: policy.to_string(),
                key: key.to_string(),
                cost: *cost,
            };
            (check, None)
        })
        .collect()
}

mod untagged {
    use super::*;

    pub async fn a_multi_check_of_untagged_keys_works(app: &App) {
        let all = checks(&[("login", "alice", 1), ("sliding", "10.0.0.1", 1)]);
        let decisions = app.ratelimits.check_all(all).await.unwrap();
        assert!(decisions.iter().all(|d| d.allowed), "{decisions:?}");
    }

    pub async fn a_multi_check_of_untagged_keys_is_refused_on_cluster(app: &App) {
        let all = checks(&[("login", "alice", 1), ("sliding", "10.0.0.1", 1)]);
        let err = app.ratelimits.check_all(all).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(msg) if msg.contains("hash tag")),
            "{err:?}"
        );
        // Nothing was taken.
        let peek = app
            .ratelimits
            .peek("login", None, "alice", 1)
            .await
            .unwrap();
        assert_eq!(peek.remaining, 4);
    }
}

mod cases {
    use super::*;

    pub async fn a_multi_check_takes_all_or_nothing(app: &App) {
        let rl = &app.ratelimits;
        // Keys sharing a hash tag: one slot, on a Cluster too.
        let login = [
            ("login", "{u1}:user", 1),
            ("sliding", "{u1}:ip", 2),
            ("fixed", "{u1}:device", 1),
        ];
        let taken = rl.check_all(checks(&login)).await.unwrap();
        let remaining: Vec<_> = taken.iter().map(|d| (d.allowed, d.remaining)).collect();
        assert_eq!(remaining, vec![(true, 4), (true, 2), (true, 2)]);
        // Use up the device's limit alone...
        for _ in 0..2 {
            assert!(
                rl.check("fixed", None, "{u1}:device", 1)
                    .await
                    .unwrap()
                    .allowed
            );
        }
        // ...and the next multi-check takes nothing: it says which did not
        // fit and when to retry, and what the others would have left.
        let refused = rl.check_all(checks(&login)).await.unwrap();
        let outcome: Vec<_> = refused.iter().map(|d| (d.allowed, d.remaining)).collect();
        assert_eq!(outcome, vec![(true, 3), (true, 0), (false, 0)]);
        assert!(refused[2].retry_after.is_some());
        assert_eq!(
            rl.peek("login", None, "{u1}:user", 1)
                .await
                .unwrap()
                .remaining,
            3
        );
        assert_eq!(
            rl.peek("sliding", None, "{u1}:ip", 2)
                .await
                .unwrap()
                .remaining,
            0
        );
        // A single check sees the same state as a multi-check.
        assert!(
            rl.check("login", None, "{u1}:user", 1)
                .await
                .unwrap()
                .allowed
        );
        assert_eq!(
            rl.peek("login", None, "{u1}:user", 1)
                .await
                .unwrap()
                .remaining,
            2
        );
        // Resetting the blocking key lets the whole multi-check through.
        assert!(rl.reset("fixed", "{u1}:device").await.unwrap());
        let again = rl.check_all(checks(&login)).await.unwrap();
        assert!(again.iter().all(|d| d.allowed), "{again:?}");
    }

    pub async fn a_multi_check_is_validated_whole(app: &App) {
        let rl = &app.ratelimits;
        let twice = checks(&[
            ("login", "{k}a", 1),
            ("fixed", "{k}b", 1),
            ("login", "{k}a", 2),
        ]);
        let err = rl.check_all(twice).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(msg) if msg.contains("checked twice")),
            "{err:?}"
        );
        let err = rl.check_all(vec![]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let unknown = checks(&[("login", "{k}a", 1), ("nope", "{k}b", 1)]);
        assert!(matches!(
            rl.check_all(unknown).await,
            Err(Error::NotFound(_))
        ));
        let too_costly = checks(&[("login", "{k}a", 1), ("fixed", "{k}b", 4)]);
        assert!(matches!(
            rl.check_all(too_costly).await,
            Err(Error::InvalidArgument(_))
        ));
        // Nothing of the refused ones was taken.
        assert_eq!(
            rl.peek("login", None, "{k}a", 1).await.unwrap().remaining,
            4
        );
    }

    pub async fn peek_decides_without_taking(app: &App) {
        let rl = &app.ratelimits;
        for (policy, most) in [("login", 5), ("sliding", 4), ("fixed", 3)] {
            // A fresh key: a peek sees the whole limit and takes nothing.
            let peek = rl.peek(policy, None, "p", 1).await.unwrap();
            assert!(peek.allowed, "{policy}");
            assert_eq!(peek.remaining, most - 1, "{policy}: remaining after one");
            let first = rl.check(policy, None, "p", 1).await.unwrap();
            assert_eq!(first.remaining, most - 1, "{policy}: the peek took nothing");
            // Use up the rest: a peek then says no, with when to retry,
            // and still takes nothing.
            for _ in 1..most {
                assert!(rl.check(policy, None, "p", 1).await.unwrap().allowed);
            }
            let full = rl.peek(policy, None, "p", 1).await.unwrap();
            assert!(!full.allowed, "{policy}");
            assert_eq!(full.remaining, 0, "{policy}");
            assert!(full.retry_after.is_some(), "{policy}");
            assert!(full.reset_after > Duration::ZERO, "{policy}");
            assert!(!rl.check(policy, None, "p", 1).await.unwrap().allowed);
        }
        // Peeks are validated like checks.
        assert!(matches!(
            rl.peek("nope", None, "p", 1).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            rl.peek("login", None, "p", 6).await,
            Err(Error::InvalidArgument(_))
        ));
    }

    pub async fn reset_makes_the_whole_limit_available(app: &App) {
        let rl = &app.ratelimits;
        for (policy, most) in [("login", 5), ("sliding", 4), ("fixed", 3)] {
            for _ in 0..most {
                assert!(rl.check(policy, None, "r", 1).await.unwrap().allowed);
            }
            assert!(!rl.check(policy, None, "r", 1).await.unwrap().allowed);
            assert!(rl.reset(policy, "r").await.unwrap(), "{policy}");
            let after = rl.check(policy, None, "r", 1).await.unwrap();
            assert!(after.allowed, "{policy}");
            assert_eq!(after.remaining, most - 1, "{policy}");
        }
        // Only that key, under that policy.
        assert!(rl.check("login", None, "other", 1).await.unwrap().allowed);
        assert!(rl.reset("login", "r").await.unwrap());
        assert_eq!(
            rl.check("login", None, "other", 1).await.unwrap().remaining,
            3
        );
        assert!(!rl.reset("login", "never").await.unwrap());
        assert!(matches!(
            rl.reset("", "r").await,
            Err(Error::InvalidArgument(_))
        ));
    }

    pub async fn acquire_release_and_reacquire(app: &App) {
        let lease = app
            .locks
            .acquire("orders", 10_000, 0)
            .await
            .unwrap()
            .expect("free lock");
        assert_eq!(lease.token.len(), 32);
        assert!(app.locks.release("orders", &lease.token).await.unwrap());
        let again = app
            .locks
            .acquire("orders", 10_000, 0)
            .await
            .unwrap()
            .expect("released");
        assert_ne!(
            again.token, lease.token,
            "every acquisition gets its own token"
        );
    }

    pub async fn try_lock_fails_at_once_while_held(app: &App) {
        let _held = app.locks.acquire("l", 10_000, 0).await.unwrap().unwrap();
        let started = Instant::now();
        assert_eq!(app.locks.acquire("l", 10_000, 0).await.unwrap(), None);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "wait 0 is a try-lock"
        );
        assert!(
            app.locks
                .acquire("other", 10_000, 0)
                .await
                .unwrap()
                .is_some(),
            "names are independent"
        );
    }

    pub async fn only_the_current_token_releases_or_extends(app: &App) {
        let lease = app.locks.acquire("l", 10_000, 0).await.unwrap().unwrap();
        assert!(!app.locks.release("l", "not-the-token").await.unwrap());
        assert!(
            !app.locks
                .extend("l", "not-the-token", 10_000)
                .await
                .unwrap()
        );
        assert!(!app.locks.release("never-held", &lease.token).await.unwrap());
        assert_eq!(
            app.locks.acquire("l", 10_000, 0).await.unwrap(),
            None,
            "still held"
        );
        assert!(app.locks.extend("l", &lease.token, 10_000).await.unwrap());
        assert!(app.locks.release("l", &lease.token).await.unwrap());
        assert!(
            !app.locks.release("l", &lease.token).await.unwrap(),
            "released once"
        );
    }

    pub async fn fences_strictly_increase_and_survive_expiry(app: &App) {
        let mut last = 0;
        for _ in 0..5 {
            let lease = app.locks.acquire("f", 10_000, 0).await.unwrap().unwrap();
            assert!(lease.fence > last, "{} > {last}", lease.fence);
            last = lease.fence;
            app.locks.release("f", &lease.token).await.unwrap();
        }
        // Let a lease expire instead of releasing it: the fence still grows.
        let expired = app.locks.acquire("f", 50, 0).await.unwrap().unwrap();
        assert!(expired.fence > last, "{} > {last}", expired.fence);
        let after = app
            .locks
            .acquire("f", 10_000, 2_000)
            .await
            .unwrap()
            .expect("after expiry");
        assert!(
            after.fence > last + 1,
            "{} > {} (the expired one had {})",
            after.fence,
            last + 1,
            last + 1
        );
    }

    pub async fn an_expired_holder_loses_to_the_next(app: &App) {
        let started = Instant::now();
        let stale = app.locks.acquire("e", 100, 0).await.unwrap().unwrap();
        let next = app
            .locks
            .acquire("e", 10_000, 3_000)
            .await
            .unwrap()
            .expect("after TTL");
        // Once the 100 ms TTL ran out: not before, and long before the
        // waiter's own 3 s.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(95) && waited < Duration::from_secs(1),
            "granted after {waited:?}"
        );
        assert!(next.fence > stale.fence);
        assert!(
            !app.locks.release("e", &stale.token).await.unwrap(),
            "stale release fails"
        );
        assert!(
            !app.locks.extend("e", &stale.token, 10_000).await.unwrap(),
            "stale extend fails"
        );
        assert!(app.locks.release("e", &next.token).await.unwrap());
    }

    pub async fn extend_keeps_the_lock_past_its_first_ttl(app: &App) {
        let lease = app.locks.acquire("x", 300, 0).await.unwrap().unwrap();
        assert!(app.locks.extend("x", &lease.token, 10_000).await.unwrap());
        // Well past the first TTL, a try-lock still fails.
        let waited = app.locks.acquire("x", 1_000, 600).await.unwrap();
        assert_eq!(waited, None, "extended lease still held");
    }

    pub async fn a_waiter_is_woken_by_the_release_not_the_ttl(app: &App) {
        let held = app.locks.acquire("w", 30_000, 0).await.unwrap().unwrap();
        let (got, released_at) = tokio::join!(app.locks.acquire("w", 30_000, 10_000), async {
            // Give the waiter time to fail its first attempt and start
            // napping; if it had not, it would simply acquire at once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(app.locks.release("w", &held.token).await.unwrap());
            Instant::now()
        });
        let got = got.unwrap().expect("woken by the release");
        assert!(got.fence > held.fence);
        // Without the notification the waiter would only look again at its
        // safety-net poll, 500 ms after its first attempt (~400 ms after the
        // release); the 30 s lease would keep it out for good.
        let delay = released_at.elapsed();
        assert!(
            delay < Duration::from_millis(250),
            "woken {delay:?} after the release"
        );
    }

    pub async fn wait_ms_bounds_the_wait(app: &App) {
        let _held = app.locks.acquire("b", 30_000, 0).await.unwrap().unwrap();
        let started = Instant::now();
        assert_eq!(app.locks.acquire("b", 1_000, 300).await.unwrap(), None);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "gave up early: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(1_500),
            "waited too long: {waited:?}"
        );
    }

    pub async fn bad_lock_input_is_rejected(app: &App) {
        fn invalid<T>(r: Result<T, Error>) -> bool {
            matches!(r, Err(Error::InvalidArgument(_)))
        }
        assert!(invalid(app.locks.acquire("", 1_000, 0).await));
        assert!(invalid(app.locks.acquire("l", 0, 0).await), "ttl 0");
        assert!(
            invalid(app.locks.acquire("l", u64::MAX, 0).await),
            "ttl over max"
        );
        assert!(
            invalid(app.locks.acquire("l", 1_000, 3_600_000).await),
            "wait over max"
        );
        assert!(invalid(app.locks.release("l", "").await));
        assert!(
            invalid(app.locks.acquire_permit("s", 0, 1_000, 0).await),
            "limit 0"
        );
        assert!(matches!(
            app.locks.acquire("n".repeat(600).as_str(), 1_000, 0).await,
            Err(Error::TooLarge(_))
        ));
    }

    pub async fn keep_alive_renews_until_stopped(app: &App) {
        let ttl = Duration::from_millis(300);
        let lease = app.locks.acquire("k", 300, 0).await.unwrap().unwrap();
        // Stop after three TTLs: without renewals the lock would be gone.
        let stop = tokio::time::sleep(ttl * 3);
        assert_eq!(
            app.locks.keep_alive("k", &lease, ttl, stop).await,
            KeepAlive::Stopped
        );
        assert_eq!(
            app.locks.acquire("k", 1_000, 0).await.unwrap(),
            None,
            "renewed"
        );
        assert!(app.locks.release("k", &lease.token).await.unwrap());
    }

    pub async fn keep_alive_reports_lost_when_the_lock_is_taken(app: &App) {
        let ttl = Duration::from_millis(300);
        let lease = app.locks.acquire("t", 300, 0).await.unwrap().unwrap();
        // Someone releases it with the token (as a buggy second user would)
        // and another holder takes it.
        assert!(app.locks.release("t", &lease.token).await.unwrap());
        let _thief = app.locks.acquire("t", 10_000, 0).await.unwrap().unwrap();
        let started = Instant::now();
        // Bounded: a keep-alive that never noticed would hang here forever.
        let end = tokio::time::timeout(
            ttl * 10,
            app.locks
                .keep_alive("t", &lease, ttl, std::future::pending()),
        )
        .await
        .expect("the keep-alive ends once the lock is taken");
        assert!(matches!(end, KeepAlive::Lost(_)), "{end:?}");
        assert!(
            started.elapsed() < ttl,
            "lost is reported at the first renewal"
        );
    }

    pub async fn semaphore_grants_exactly_limit_permits(app: &App) {
        let mut tokens = vec![];
        for _ in 0..3 {
            tokens.push(
                app.locks
                    .acquire_permit("pool", 3, 10_000, 0)
                    .await
                    .unwrap()
                    .expect("free"),
            );
        }
        assert_eq!(
            app.locks
                .acquire_permit("pool", 3, 10_000, 0)
                .await
                .unwrap(),
            None
        );
        assert!(app.locks.release_permit("pool", &tokens[0]).await.unwrap());
        assert!(
            !app.locks.release_permit("pool", &tokens[0]).await.unwrap(),
            "once"
        );
        assert!(!app.locks.release_permit("pool", "bogus").await.unwrap());
        assert!(
            app.locks
                .acquire_permit("pool", 3, 10_000, 0)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            app.locks
                .acquire_permit("pool", 3, 10_000, 0)
                .await
                .unwrap(),
            None
        );
    }

    /// Every name a listing returns, page after page of `limit`. On Redis
    /// a page is a SCAN step over the whole server, which other tests'
    /// keys share: small pages take many steps.
    async fn all_in_use(app: &App, kind: Kind, pattern: &str, limit: usize) -> Vec<InUse> {
        let (mut all, mut cursor) = (vec![], String::new());
        for _ in 0..100_000 {
            let page = app
                .locks
                .list_in_use(kind, pattern, &cursor, limit)
                .await
                .unwrap();
            all.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => {
                    all.sort_by(|a, b| a.name.cmp(&b.name));
                    all.dedup_by(|a, b| a.name == b.name);
                    return all;
                }
            }
        }
        panic!("the listing never ended");
    }

    fn names(items: &[InUse]) -> Vec<&str> {
        items.iter().map(|u| u.name.as_str()).collect()
    }

    pub async fn operators_see_what_is_held_but_never_a_token(app: &App) {
        assert_eq!(app.locks.in_use(Kind::Lock, "orders").await.unwrap(), None);
        let orders = app
            .locks
            .acquire("orders", 10_000, 0)
            .await
            .unwrap()
            .unwrap();
        let other = app
            .locks
            .acquire("orders-2", 10_000, 0)
            .await
            .unwrap()
            .unwrap();
        app.locks
            .acquire("invoices", 10_000, 0)
            .await
            .unwrap()
            .unwrap();
        let seen = app
            .locks
            .in_use(Kind::Lock, "orders")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((seen.fence, seen.held), (orders.fence, 1));
        assert!(
            seen.ttl > Duration::from_secs(8) && seen.ttl <= Duration::from_secs(10),
            "{:?}",
            seen.ttl
        );
        // By glob, a page of one at a time or all at once.
        for limit in [1, 100] {
            let found = all_in_use(app, Kind::Lock, "orders*", limit).await;
            assert_eq!(names(&found), ["orders", "orders-2"], "pages of {limit}");
            assert_eq!(found[1].fence, other.fence);
        }
        assert_eq!(
            names(&all_in_use(app, Kind::Lock, "", 100).await),
            ["invoices", "orders", "orders-2"]
        );
        // Released: free, and gone from the listing.
        assert!(app.locks.release("orders", &orders.token).await.unwrap());
        assert_eq!(app.locks.in_use(Kind::Lock, "orders").await.unwrap(), None);
        assert_eq!(
            names(&all_in_use(app, Kind::Lock, "orders*", 100).await),
            ["orders-2"]
        );
        // A lease that runs out is not shown as held.
        app.locks.acquire("brief", 50, 0).await.unwrap().unwrap();
        outrigger_tests::eventually(Duration::from_secs(5), "the lease to end", || async {
            app.locks
                .in_use(Kind::Lock, "brief")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;

        // Semaphores: permits held, and the lease that ends first.
        let first = app
            .locks
            .acquire_permit("pool", 3, 5_000, 0)
            .await
            .unwrap()
            .unwrap();
        app.locks
            .acquire_permit("pool", 3, 10_000, 0)
            .await
            .unwrap()
            .unwrap();
        let pool = app
            .locks
            .in_use(Kind::Semaphore, "pool")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((pool.held, pool.fence), (2, 0));
        assert!(pool.ttl <= Duration::from_secs(5), "{:?}", pool.ttl);
        assert!(app.locks.release_permit("pool", &first).await.unwrap());
        let pool = app
            .locks
            .in_use(Kind::Semaphore, "pool")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pool.held, 1);
        assert!(pool.ttl > Duration::from_secs(5), "{:?}", pool.ttl);
        assert_eq!(
            names(&all_in_use(app, Kind::Semaphore, "*", 100).await),
            ["pool"]
        );
        // Locks and semaphores are apart.
        assert_eq!(
            app.locks.in_use(Kind::Semaphore, "orders-2").await.unwrap(),
            None
        );
        assert_eq!(app.locks.in_use(Kind::Lock, "pool").await.unwrap(), None);

        assert!(matches!(
            app.locks.list_in_use(Kind::Lock, "[a", "", 10).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            app.locks.in_use(Kind::Lock, "").await,
            Err(Error::InvalidArgument(_))
        ));
    }

    pub async fn semaphore_permits_expire_and_wake_waiters(app: &App) {
        let a = app
            .locks
            .acquire_permit("s", 2, 200, 0)
            .await
            .unwrap()
            .unwrap();
        let held = app
            .locks
            .acquire_permit("s", 2, 30_000, 0)
            .await
            .unwrap()
            .unwrap();
        // The short permit expires: a waiter gets it.
        let got = app
            .locks
            .acquire_permit("s", 2, 30_000, 3_000)
            .await
            .unwrap();
        assert!(got.is_some(), "an expired permit frees a slot");
        assert!(
            !app.locks.release_permit("s", &a).await.unwrap(),
            "expired permit"
        );
        // A release wakes a waiter long before the 30 s leases run out.
        let started = Instant::now();
        let (got, ()) = tokio::join!(app.locks.acquire_permit("s", 2, 30_000, 10_000), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(app.locks.release_permit("s", &held).await.unwrap());
        });
        assert!(got.unwrap().is_some());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    pub async fn gcra_allows_the_burst_then_denies_with_retry_after(app: &App) {
        for remaining in [4, 3, 2, 1, 0] {
            let d = app
                .ratelimits
                .check("login", None, "alice", 1)
                .await
                .unwrap();
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (5, remaining));
        }
        let denied = app
            .ratelimits
            .check("login", None, "alice", 1)
            .await
            .unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 0);
        let retry = denied.retry_after.expect("retry_after when denied");
        // One emission interval (60 s / 5 = 12 s), less the time the checks took.
        assert!(
            retry > Duration::from_secs(11) && retry <= Duration::from_secs(12),
            "{retry:?}"
        );
        assert!(
            denied.reset_after > Duration::from_secs(59)
                && denied.reset_after <= Duration::from_secs(60)
        );
    }

    pub async fn gcra_honours_retry_after(app: &App) {
        // burst 3, then 10 per second
        for _ in 0..3 {
            assert!(
                app.ratelimits
                    .check("bursty", None, "k", 1)
                    .await
                    .unwrap()
                    .allowed
            );
        }
        let denied = app.ratelimits.check("bursty", None, "k", 1).await.unwrap();
        assert!(!denied.allowed);
        let retry = denied.retry_after.unwrap();
        assert!(retry <= Duration::from_millis(100), "{retry:?}");
        tokio::time::sleep(retry).await;
        let d = app.ratelimits.check("bursty", None, "k", 1).await.unwrap();
        assert!(d.allowed, "a request at retry_after is allowed: {d:?}");
    }

    pub async fn gcra_cost_counts_several_units(app: &App) {
        let d = app
            .ratelimits
            .check("login", None, "bulk", 4)
            .await
            .unwrap();
        assert!(d.allowed && d.remaining == 1, "{d:?}");
        let d = app
            .ratelimits
            .check("login", None, "bulk", 2)
            .await
            .unwrap();
        assert!(!d.allowed && d.remaining == 1, "{d:?}");
        assert!(
            app.ratelimits
                .check("login", None, "bulk", 1)
                .await
                .unwrap()
                .allowed
        );
        // cost 0 counts as 1
        assert!(
            !app.ratelimits
                .check("login", None, "bulk", 0)
                .await
                .unwrap()
                .allowed
        );
    }

    pub async fn cost_above_the_burst_is_rejected(app: &App) {
        let err = app
            .ratelimits
            .check("login", None, "k", 6)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("never")),
            "{err:?}"
        );
        let err = app
            .ratelimits
            .check("fixed", None, "k", 4)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        // Nothing was taken by the rejected call.
        assert_eq!(
            app.ratelimits
                .check("login", None, "k", 1)
                .await
                .unwrap()
                .remaining,
            4
        );
    }

    pub async fn sliding_window_limits_any_period(app: &App) {
        for remaining in [3, 2, 1, 0] {
            let d = app.ratelimits.check("sliding", None, "u", 1).await.unwrap();
            assert!(d.allowed, "{d:?}");
            assert_eq!(d.remaining, remaining);
        }
        let d = app.ratelimits.check("sliding", None, "u", 1).await.unwrap();
        assert!(!d.allowed);
        assert!(
            d.retry_after
                .is_some_and(|r| r > Duration::ZERO && r <= Duration::from_secs(120))
        );
    }

    pub async fn fixed_window_limits_each_window(app: &App) {
        for _ in 0..3 {
            assert!(
                app.ratelimits
                    .check("fixed", None, "u", 1)
                    .await
                    .unwrap()
                    .allowed
            );
        }
        let d = app.ratelimits.check("fixed", None, "u", 1).await.unwrap();
        assert!(!d.allowed);
        let retry = d.retry_after.unwrap();
        assert!(
            retry <= Duration::from_secs(60) && retry == d.reset_after,
            "{d:?}"
        );
    }

    pub async fn inline_limits_and_unknown_policies(app: &App) {
        let inline = || InlineLimit {
            algorithm: "fixed_window".into(),
            limit: 2,
            period_ms: 60_000,
            burst: 0,
        };
        assert!(
            app.ratelimits
                .check("adhoc", Some(inline()), "k", 1)
                .await
                .unwrap()
                .allowed
        );
        assert!(
            app.ratelimits
                .check("adhoc", Some(inline()), "k", 1)
                .await
                .unwrap()
                .allowed
        );
        assert!(
            !app.ratelimits
                .check("adhoc", Some(inline()), "k", 1)
                .await
                .unwrap()
                .allowed
        );
        let err = app
            .ratelimits
            .check("nope", None, "k", 1)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        let bad = InlineLimit {
            algorithm: "leaky".into(),
            ..inline()
        };
        assert!(matches!(
            app.ratelimits.check("adhoc", Some(bad), "k", 1).await,
            Err(Error::InvalidArgument(_))
        ));
        let zero = InlineLimit {
            limit: 0,
            ..inline()
        };
        assert!(matches!(
            app.ratelimits.check("adhoc2", Some(zero), "k", 1).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            app.ratelimits.check("login", None, "", 1).await,
            Err(Error::InvalidArgument(_))
        ));
    }

    pub async fn keys_and_policies_have_separate_counters(app: &App) {
        for _ in 0..3 {
            app.ratelimits.check("fixed", None, "a", 1).await.unwrap();
        }
        assert!(
            !app.ratelimits
                .check("fixed", None, "a", 1)
                .await
                .unwrap()
                .allowed
        );
        assert!(
            app.ratelimits
                .check("fixed", None, "b", 1)
                .await
                .unwrap()
                .allowed
        );
        assert!(
            app.ratelimits
                .check("login", None, "a", 1)
                .await
                .unwrap()
                .allowed
        );
    }
}
