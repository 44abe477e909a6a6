//! The cache conformance suite: the same assertions against the memory
//! backend and the Redis backend (a real `redis-server` per test). If the
//! two disagree on semantics, one of them fails here.
//!
//! Each case is written once in `cases`; `conformance!` instantiates it in
//! `on_memory` and `on_redis`. Backend-specific checks (what each one stores
//! underneath) follow at the end.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use outrigger::backend::BackendError;
use outrigger::backend::redis::RedisStore;
use outrigger::config::Config;
use outrigger::primitives::cache::memory::MemoryStore;
use outrigger::primitives::cache::redis::RedisCache;
use outrigger::primitives::cache::store::{
    CacheStore, Condition, Described, Entry, KeyPage, LeaseRead, LeaseRequest, SetOutcome,
    StoreStats, Write,
};
use outrigger_tests::{RedisServer, Topology, conformance, eventually, unique};

/// A store under test, and the Redis behind it when there is one. With
/// the near cache, a read is made again until L1 answers (a few times at
/// most), and the last answer counts: the first read fills L1 (unless the
/// echo of the case's own write evicts it again) and the next is served
/// from it, so each case's assertions hold of what L1 serves, proving that
/// L1 never answers what Redis would not.
struct Backend {
    store: Arc<dyn CacheStore>,
    /// Whether `store` keeps a near cache.
    near: bool,
    _redis: Option<RedisServer>,
}

async fn setup(topology: Topology) -> Backend {
    let deployment = topology.deploy(&Config::default(), "conformance").await;
    Backend {
        store: deployment.stores.cache,
        near: topology == Topology::RedisNear,
        _redis: deployment.server,
    }
}

impl Backend {
    async fn read<T, F: Future<Output = Result<T, BackendError>>>(
        &self,
        read: impl Fn() -> F,
    ) -> Result<T, BackendError> {
        if !self.near {
            return read().await;
        }
        let hits = || self.store.stats().near.expect("near cache stats").hits;
        let before = hits();
        let mut answer = read().await?;
        for _ in 0..4 {
            if hits() > before {
                break;
            }
            answer = read().await?;
        }
        Ok(answer)
    }
}

#[async_trait::async_trait]
impl CacheStore for Backend {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
    async fn get(&self, key: &str, refresh_ttl: bool) -> Result<Option<Entry>, BackendError> {
        self.read(|| self.store.get(key, refresh_ttl)).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, BackendError> {
        self.read(|| self.store.get_many(keys)).await
    }
    async fn set(&self, key: &str, write: Write) -> Result<SetOutcome, BackendError> {
        self.store.set(key, write).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.store.delete(key).await
    }
    async fn get_or_lease(&self, key: &str, req: LeaseRequest) -> Result<LeaseRead, BackendError> {
        self.store.get_or_lease(key, req).await
    }
    async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, BackendError> {
        self.store.invalidate_tags(tags).await
    }
    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        self.store.invalidate_pattern(pattern).await
    }
    async fn list_keys(
        &self,
        pattern: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<KeyPage, BackendError> {
        self.store.list_keys(pattern, cursor, limit).await
    }
    async fn describe(&self, key: &str) -> Result<Option<Described>, BackendError> {
        self.store.describe(key).await
    }
    fn stats(&self) -> StoreStats {
        self.store.stats()
    }
}

/// With the near cache: L1 stayed in use throughout, and answered the
/// reads of whatever it kept.
fn near_cache_served(backend: &Backend) {
    if backend.near {
        let near = backend.store.stats().near.expect("near stats");
        assert!(near.live, "{near:?}");
        assert!(
            near.fills == 0 || near.hits > 0,
            "L1 served nothing: {near:?}"
        );
    }
}

conformance!(
    setup;
    [
        on_memory: Memory,
        on_redis: Redis,
        on_cluster: Cluster,
        on_sentinel: Sentinel,
        on_redis_with_near_cache: RedisNear,
    ];
    cases {
        get_of_an_absent_key_is_none,
        set_then_get_returns_value_and_version,
        describe_shows_all_but_the_value,
        values_are_arbitrary_bytes,
        versions_strictly_increase_even_across_delete,
        if_absent_writes_only_new_keys,
        if_present_writes_only_existing_keys,
        if_version_is_compare_and_set,
        ttl_is_reported_and_entries_expire,
        a_write_without_ttl_clears_the_old_ttl,
        refresh_ttl_restarts_the_ttl,
        get_many_keeps_request_order,
        delete_reports_whether_the_key_existed,
        tag_invalidation_removes_exactly_the_tagged_keys,
        retagged_keys_follow_their_latest_tags,
        a_key_under_several_invalidated_tags_counts_once,
        pattern_invalidation_uses_redis_globs,
        listing_pages_through_every_matching_key,
        an_unknown_cursor_is_rejected,
        keys_with_braces_and_glob_characters_stay_apart,
        one_lease_per_miss_and_waiters_get_the_fill,
        a_lease_that_runs_out_is_granted_again,
        stale_values_serve_lease_waiters_until_deleted,
    };
    after near_cache_served
);

mod cases {
    use super::*;

    pub fn write(value: &str) -> Write {
        Write {
            value: Bytes::copy_from_slice(value.as_bytes()),
            ttl: None,
            tags: vec![],
            condition: Condition::None,
            stale: None,
        }
    }

    fn tagged(value: &str, tags: &[&str]) -> Write {
        Write {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..write(value)
        }
    }

    fn when(value: &str, condition: Condition) -> Write {
        Write {
            condition,
            ..write(value)
        }
    }

    async fn set(s: &dyn CacheStore, key: &str, w: Write) -> u64 {
        match s.set(key, w).await.expect("set") {
            SetOutcome::Written { version } => version,
            SetOutcome::ConditionFailed => panic!("unconditional write of {key} failed"),
        }
    }

    async fn value(s: &dyn CacheStore, key: &str) -> Option<String> {
        s.get(key, false)
            .await
            .expect("get")
            .map(|e| String::from_utf8(e.value.to_vec()).expect("utf-8"))
    }

    /// A lease request whose waits are never cut short by the safety
    /// poll: a waiter answered before its deadline was woken by a write
    /// (or by the lease running out).
    fn lease(wait: Duration, stale_ok: bool) -> LeaseRequest {
        LeaseRequest {
            lease: Duration::from_secs(30),
            deadline: tokio::time::Instant::now() + wait,
            stale_ok,
            poll: Duration::from_secs(60),
        }
    }

    fn text(entry: &Entry) -> &str {
        std::str::from_utf8(&entry.value).expect("utf-8")
    }

    pub async fn one_lease_per_miss_and_waiters_get_the_fill(s: &dyn CacheStore) {
        let first = s.get_or_lease("k", lease(Duration::ZERO, false)).await;
        assert_eq!(first.unwrap(), LeaseRead::Lease { stale: None });
        // Held: without waiting, nobody else gets it.
        for _ in 0..3 {
            let again = s.get_or_lease("k", lease(Duration::ZERO, true)).await;
            assert_eq!(again.unwrap(), LeaseRead::Pending);
        }
        // Waiters get the value as soon as the holder writes it: woken by
        // the write, since nothing else ends their 20 s wait within 10 s
        // (the lease is 30 s, the poll 60 s). The fill lands after they
        // have all looked once.
        let waiters = futures::future::join_all(
            (0..5).map(|_| s.get_or_lease("k", lease(Duration::from_secs(20), false))),
        );
        let fill = async {
            tokio::time::sleep(Duration::from_millis(130)).await;
            set(s, "k", write("computed")).await
        };
        let (results, version) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(waiters, fill)
        })
        .await
        .expect("the waiters woken by the fill");
        for result in results {
            match result.unwrap() {
                LeaseRead::Hit(entry) => {
                    assert_eq!(text(&entry), "computed");
                    assert_eq!(entry.version, version);
                }
                other => panic!("a waiter got {other:?}"),
            }
        }
        // The write ended the lease: once the key is gone again, a new one
        // is granted at once.
        assert!(s.delete("k").await.unwrap());
        let next = s.get_or_lease("k", lease(Duration::ZERO, false)).await;
        assert_eq!(next.unwrap(), LeaseRead::Lease { stale: None });
    }

    pub async fn a_lease_that_runs_out_is_granted_again(s: &dyn CacheStore) {
        let short = LeaseRequest {
            lease: Duration::from_millis(200),
            ..lease(Duration::ZERO, false)
        };
        assert_eq!(
            s.get_or_lease("k", short).await.unwrap(),
            LeaseRead::Lease { stale: None }
        );
        // The holder never fills: a waiter is granted the lease once it
        // runs out, well before its own deadline.
        let started = std::time::Instant::now();
        let waited = s
            .get_or_lease("k", lease(Duration::from_secs(10), false))
            .await;
        assert_eq!(waited.unwrap(), LeaseRead::Lease { stale: None });
        let took = started.elapsed();
        // Not before the 200 ms lease ran out (less the first grant's round
        // trip), and long before the waiter's own 10 s.
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // A waiter whose deadline comes first is told so.
        let started = std::time::Instant::now();
        let timed_out = s
            .get_or_lease("k", lease(Duration::from_millis(300), false))
            .await;
        assert_eq!(timed_out.unwrap(), LeaseRead::Pending);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    pub async fn stale_values_serve_lease_waiters_until_deleted(s: &dyn CacheStore) {
        for key in ["k", "tagged"] {
            let w = Write {
                ttl: Some(Duration::from_millis(100)),
                stale: Some(Duration::from_secs(60)),
                ..tagged("old", &["t"])
            };
            set(s, key, w).await;
        }
        let written = set(
            s,
            "plain",
            Write {
                ttl: Some(Duration::from_millis(100)),
                ..write("old")
            },
        )
        .await;
        assert!(written > 0);
        eventually(Duration::from_secs(5), "the entries to expire", || async {
            (value(s, "k").await.is_none() && value(s, "plain").await.is_none()).then_some(())
        })
        .await;
        // The first caller gets the lease and the stale value with it...
        match s
            .get_or_lease("k", lease(Duration::ZERO, true))
            .await
            .unwrap()
        {
            LeaseRead::Lease { stale: Some(e) } => assert_eq!(text(&e), "old"),
            other => panic!("{other:?}"),
        }
        // ...the others take the stale value rather than wait (at once,
        // not at the end of their 10 s)...
        let asked = std::time::Instant::now();
        match s
            .get_or_lease("k", lease(Duration::from_secs(10), true))
            .await
            .unwrap()
        {
            LeaseRead::Stale(e) => assert_eq!(text(&e), "old"),
            other => panic!("{other:?}"),
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        // ...unless they do not accept it.
        let strict = s.get_or_lease("k", lease(Duration::ZERO, false)).await;
        assert_eq!(strict.unwrap(), LeaseRead::Pending);
        // Without a stale window there is nothing stale to give.
        assert_eq!(
            s.get_or_lease("plain", lease(Duration::ZERO, true))
                .await
                .unwrap(),
            LeaseRead::Lease { stale: None }
        );
        // Deletes and invalidations remove stale values at once.
        s.delete("k").await.unwrap();
        assert_eq!(
            s.get_or_lease("k", lease(Duration::ZERO, true))
                .await
                .unwrap(),
            LeaseRead::Pending
        );
        s.invalidate_tags(&["t".into()]).await.unwrap();
        assert_eq!(
            s.get_or_lease("tagged", lease(Duration::ZERO, true))
                .await
                .unwrap(),
            LeaseRead::Lease { stale: None }
        );
    }

    pub async fn get_of_an_absent_key_is_none(s: &dyn CacheStore) {
        assert_eq!(s.get("nothing-here", false).await.unwrap(), None);
        assert_eq!(s.get("nothing-here", true).await.unwrap(), None);
    }

    pub async fn set_then_get_returns_value_and_version(s: &dyn CacheStore) {
        let version = set(s, "k", write("hello")).await;
        let entry = s.get("k", false).await.unwrap().expect("present");
        assert_eq!(entry.value, Bytes::from_static(b"hello"));
        assert_eq!(entry.version, version);
        assert_eq!(entry.ttl, None, "no TTL given: never expires");
    }

    pub async fn describe_shows_all_but_the_value(s: &dyn CacheStore) {
        assert_eq!(s.describe("k").await.unwrap(), None);
        let w = Write {
            ttl: Some(Duration::from_secs(60)),
            ..tagged("hello", &["users", "user:7"])
        };
        let version = set(s, "k", w).await;
        let d = s.describe("k").await.unwrap().expect("present");
        assert_eq!(
            (d.version, d.size, d.tags.clone()),
            (version, 5, vec!["user:7".to_string(), "users".to_string()])
        );
        let ttl = d.ttl.expect("a TTL");
        assert!(
            ttl > Duration::from_secs(55) && ttl <= Duration::from_secs(60),
            "{ttl:?}"
        );
        set(s, "plain", write("")).await;
        let plain: Described = s.describe("plain").await.unwrap().unwrap();
        assert_eq!((plain.ttl, plain.tags, plain.size), (None, vec![], 0));
        assert!(s.delete("k").await.unwrap());
        assert_eq!(s.describe("k").await.unwrap(), None);
    }

    pub async fn values_are_arbitrary_bytes(s: &dyn CacheStore) {
        let raw = Bytes::from_static(&[0, 159, 146, 150, 255, b'\n', 0]);
        let w = Write {
            value: raw.clone(),
            ..write("")
        };
        s.set("bin", w).await.unwrap();
        assert_eq!(s.get("bin", false).await.unwrap().unwrap().value, raw);
        s.set("empty", write("")).await.unwrap();
        let empty = s.get("empty", false).await.unwrap();
        assert_eq!(empty.expect("an empty value is a value").value.len(), 0);
    }

    pub async fn versions_strictly_increase_even_across_delete(s: &dyn CacheStore) {
        let v1 = set(s, "k", write("1")).await;
        let v2 = set(s, "k", write("2")).await;
        assert!(v2 > v1, "{v2} > {v1}");
        assert!(s.delete("k").await.unwrap());
        let v3 = set(s, "k", write("3")).await;
        assert!(
            v3 > v2,
            "a recreated key must not reuse a version: {v3} > {v2}"
        );
    }

    pub async fn if_absent_writes_only_new_keys(s: &dyn CacheStore) {
        let first = s.set("k", when("a", Condition::IfAbsent)).await.unwrap();
        assert!(matches!(first, SetOutcome::Written { .. }));
        let second = s.set("k", when("b", Condition::IfAbsent)).await.unwrap();
        assert_eq!(second, SetOutcome::ConditionFailed);
        assert_eq!(
            value(s, "k").await.as_deref(),
            Some("a"),
            "failed write changes nothing"
        );
    }

    pub async fn if_present_writes_only_existing_keys(s: &dyn CacheStore) {
        let missing = s.set("k", when("a", Condition::IfPresent)).await.unwrap();
        assert_eq!(missing, SetOutcome::ConditionFailed);
        assert_eq!(value(s, "k").await, None);
        set(s, "k", write("a")).await;
        let present = s.set("k", when("b", Condition::IfPresent)).await.unwrap();
        assert!(matches!(present, SetOutcome::Written { .. }));
        assert_eq!(value(s, "k").await.as_deref(), Some("b"));
    }

    pub async fn if_version_is_compare_and_set(s: &dyn CacheStore) {
        let absent = s
            .set("k", when("x", Condition::IfVersion(1)))
            .await
            .unwrap();
        assert_eq!(
            absent,
            SetOutcome::ConditionFailed,
            "no key, no version match"
        );
        let v1 = set(s, "k", write("a")).await;
        let SetOutcome::Written { version: v2 } = s
            .set("k", when("b", Condition::IfVersion(v1)))
            .await
            .unwrap()
        else {
            panic!("CAS with the current version must succeed");
        };
        assert!(v2 > v1);
        let stale = s
            .set("k", when("c", Condition::IfVersion(v1)))
            .await
            .unwrap();
        assert_eq!(stale, SetOutcome::ConditionFailed, "stale version");
        assert_eq!(value(s, "k").await.as_deref(), Some("b"));
        // Delete and recreate: the old version must not match (no ABA).
        s.delete("k").await.unwrap();
        set(s, "k", write("d")).await;
        let aba = s
            .set("k", when("e", Condition::IfVersion(v2)))
            .await
            .unwrap();
        assert_eq!(aba, SetOutcome::ConditionFailed);
    }

    pub async fn ttl_is_reported_and_entries_expire(s: &dyn CacheStore) {
        let w = Write {
            ttl: Some(Duration::from_millis(300)),
            ..write("v")
        };
        s.set("short", w).await.unwrap();
        let ttl = s
            .get("short", false)
            .await
            .unwrap()
            .unwrap()
            .ttl
            .expect("has a TTL");
        assert!(
            ttl <= Duration::from_millis(300) && ttl > Duration::ZERO,
            "{ttl:?}"
        );
        eventually(Duration::from_secs(5), "the entry to expire", || async {
            s.get("short", false).await.unwrap().is_none().then_some(())
        })
        .await;
        assert!(
            !s.delete("short").await.unwrap(),
            "expired entries are gone"
        );
        let listed = s.list_keys("*", "", 100).await.unwrap();
        assert!(!listed.keys.contains(&"short".to_string()));
    }

    pub async fn a_write_without_ttl_clears_the_old_ttl(s: &dyn CacheStore) {
        let w = Write {
            ttl: Some(Duration::from_secs(60)),
            ..write("v")
        };
        s.set("k", w).await.unwrap();
        s.set("k", write("w")).await.unwrap();
        assert_eq!(s.get("k", false).await.unwrap().unwrap().ttl, None);
    }

    pub async fn refresh_ttl_restarts_the_ttl(s: &dyn CacheStore) {
        let ttl = Duration::from_secs(10);
        let w = Write {
            ttl: Some(ttl),
            tags: vec!["session".into()],
            ..write("v")
        };
        s.set("session", w).await.unwrap();
        // Wait until the clock has visibly eaten into the TTL...
        eventually(Duration::from_secs(5), "the TTL to run down", || async {
            let left = s.get("session", false).await.unwrap().unwrap().ttl.unwrap();
            (left < ttl - Duration::from_millis(50)).then_some(())
        })
        .await;
        // ...then a refreshing read restores it.
        let refreshed = s.get("session", true).await.unwrap().unwrap();
        assert!(
            refreshed.ttl.unwrap() >= ttl - Duration::from_millis(10),
            "{refreshed:?}"
        );
        let after = s.get("session", false).await.unwrap().unwrap().ttl.unwrap();
        assert!(after > ttl - Duration::from_millis(50), "{after:?}");
        // A refreshed entry is still found through its tag.
        assert_eq!(s.invalidate_tags(&["session".into()]).await.unwrap(), 1);
        // Refreshing an entry without a TTL leaves it without one.
        s.set("forever", write("v")).await.unwrap();
        assert_eq!(s.get("forever", true).await.unwrap().unwrap().ttl, None);
    }

    pub async fn get_many_keeps_request_order(s: &dyn CacheStore) {
        set(s, "a", write("1")).await;
        set(s, "c", write("3")).await;
        let keys: Vec<String> = ["c", "b", "a", "c"].map(String::from).to_vec();
        let got = s.get_many(&keys).await.unwrap();
        let values: Vec<Option<&[u8]>> = got
            .iter()
            .map(|e| e.as_ref().map(|e| &e.value[..]))
            .collect();
        assert_eq!(values, vec![Some(&b"3"[..]), None, Some(b"1"), Some(b"3")]);
        assert_eq!(s.get_many(&[]).await.unwrap(), vec![]);
    }

    pub async fn delete_reports_whether_the_key_existed(s: &dyn CacheStore) {
        set(s, "k", write("v")).await;
        assert!(s.delete("k").await.unwrap());
        assert!(!s.delete("k").await.unwrap());
        assert_eq!(value(s, "k").await, None);
    }

    pub async fn tag_invalidation_removes_exactly_the_tagged_keys(s: &dyn CacheStore) {
        set(s, "k1", tagged("1", &["a"])).await;
        set(s, "k2", tagged("2", &["b"])).await;
        set(s, "k3", tagged("3", &["a", "b"])).await;
        set(s, "k4", write("4")).await;
        assert_eq!(s.invalidate_tags(&["a".into()]).await.unwrap(), 2);
        assert_eq!(value(s, "k1").await, None);
        assert_eq!(value(s, "k3").await, None);
        assert_eq!(value(s, "k2").await.as_deref(), Some("2"));
        assert_eq!(value(s, "k4").await.as_deref(), Some("4"));
        assert_eq!(
            s.invalidate_tags(&["a".into()]).await.unwrap(),
            0,
            "nothing left under a"
        );
        assert_eq!(s.invalidate_tags(&["never-used".into()]).await.unwrap(), 0);
    }

    pub async fn retagged_keys_follow_their_latest_tags(s: &dyn CacheStore) {
        set(s, "k", tagged("v1", &["old"])).await;
        set(s, "k", tagged("v2", &["new"])).await;
        assert_eq!(s.invalidate_tags(&["old".into()]).await.unwrap(), 0);
        assert_eq!(
            value(s, "k").await.as_deref(),
            Some("v2"),
            "no longer tagged old"
        );
        assert_eq!(s.invalidate_tags(&["new".into()]).await.unwrap(), 1);
        assert_eq!(value(s, "k").await, None);
        // Re-tagged back to a tag it had before: found through it again.
        set(s, "j", tagged("1", &["x"])).await;
        set(s, "j", write("2")).await;
        set(s, "j", tagged("3", &["x"])).await;
        assert_eq!(s.invalidate_tags(&["x".into()]).await.unwrap(), 1);
        assert_eq!(value(s, "j").await, None);
    }

    pub async fn a_key_under_several_invalidated_tags_counts_once(s: &dyn CacheStore) {
        set(s, "k", tagged("v", &["a", "b"])).await;
        set(s, "j", tagged("v", &["b"])).await;
        let deleted = s.invalidate_tags(&["a".into(), "b".into()]).await.unwrap();
        assert_eq!(deleted, 2);
    }

    pub async fn pattern_invalidation_uses_redis_globs(s: &dyn CacheStore) {
        for key in ["user:1", "user:2", "users:x", "session:1", "user:10"] {
            set(s, key, write("v")).await;
        }
        assert_eq!(s.invalidate_pattern("user:?").await.unwrap(), 2);
        assert_eq!(value(s, "user:10").await.as_deref(), Some("v"));
        assert_eq!(s.invalidate_pattern("user*").await.unwrap(), 2);
        assert_eq!(value(s, "session:1").await.as_deref(), Some("v"));
        assert_eq!(s.invalidate_pattern("nomatch*").await.unwrap(), 0);
    }

    pub async fn listing_pages_through_every_matching_key(s: &dyn CacheStore) {
        let expected: BTreeSet<String> = (0..25).map(|i| format!("p:{i:02}")).collect();
        for key in &expected {
            set(s, key, write("v")).await;
        }
        set(s, "other", write("v")).await;
        let mut seen = BTreeSet::new();
        let mut cursor = String::new();
        for _page in 0..1000 {
            let page = s.list_keys("p:*", &cursor, 7).await.unwrap();
            seen.extend(page.keys);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!(seen, expected);
    }

    pub async fn an_unknown_cursor_is_rejected(s: &dyn CacheStore) {
        let err = s.list_keys("*", "not a cursor", 10).await.unwrap_err();
        assert_eq!(err, BackendError::InvalidCursor);
    }

    pub async fn keys_with_braces_and_glob_characters_stay_apart(s: &dyn CacheStore) {
        for key in ["a}b", "{x}", "a*b", "axb", "a b"] {
            set(s, key, tagged(key, &["{t}"])).await;
            assert_eq!(value(s, key).await.as_deref(), Some(key));
        }
        assert_eq!(
            s.invalidate_pattern("a\\*b").await.unwrap(),
            1,
            "escaped * is literal"
        );
        assert_eq!(value(s, "axb").await.as_deref(), Some("axb"));
        assert_eq!(s.invalidate_tags(&["{t}".into()]).await.unwrap(), 4);
    }
}

// ---- backend specifics -------------------------------------------------

#[tokio::test]
async fn memory_tag_index_forgets_deleted_expired_and_retagged_keys() {
    let store = MemoryStore::new(Config::default().memory);
    let s: &dyn CacheStore = &*store;
    s.set("deleted", cases_tagged("t")).await.unwrap();
    s.delete("deleted").await.unwrap();
    s.set("retagged", cases_tagged("t")).await.unwrap();
    s.set("retagged", cases::write("v")).await.unwrap();
    let mut short = cases_tagged("t");
    short.ttl = Some(Duration::from_millis(20));
    s.set("expiring", short).await.unwrap();
    assert_eq!(store.tag_index_len("t"), 1);
    eventually(
        Duration::from_secs(5),
        "the sweep to drop the expired key",
        || async {
            store.sweep_expired();
            (store.tag_index_len("t") == 0).then_some(())
        },
    )
    .await;
}

fn cases_tagged(tag: &str) -> Write {
    Write {
        tags: vec![tag.into()],
        ..cases::write("v")
    }
}

#[tokio::test]
async fn redis_keys_carry_the_namespace_and_expired_keys_leave_no_tag_index() {
    let server = RedisServer::start().await;
    let ns = unique("ns");
    let store = RedisCache::new(Arc::new(
        RedisStore::connect(&server.redis_config(), &ns)
            .await
            .unwrap(),
    ));
    let mut short = cases_tagged("t");
    short.ttl = Some(Duration::from_millis(100));
    store.set("k", short).await.unwrap();
    let mut conn = server.client().await;
    let keys: BTreeSet<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        keys,
        BTreeSet::from([format!("{ns}:c:{{k}}"), format!("{ns}:t:{{t}}")]),
        "every key starts with the namespace; the object's name is the hash tag"
    );
    // The index expires on its own shortly after its last key (1 s slack).
    eventually(Duration::from_secs(5), "the tag index to expire", || {
        let mut conn = conn.clone();
        let index = format!("{ns}:t:{{t}}");
        async move {
            let exists: bool = redis::cmd("EXISTS")
                .arg(index)
                .query_async(&mut conn)
                .await
                .unwrap();
            (!exists).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn redis_calls_are_bounded_by_the_deadline() {
    let server = RedisServer::start().await;
    let mut config = server.redis_config();
    config.timeout = Duration::from_millis(200);
    let store = RedisCache::new(Arc::new(
        RedisStore::connect(&config, &unique("ns")).await.unwrap(),
    ));
    let mut conn = server.client().await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "3000", "ALL"][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = store.get("k", false).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, BackendError::Timeout(_) | BackendError::Unavailable(_)),
        "{err:?}"
    );
    assert!(
        waited < Duration::from_millis(1000),
        "waited {waited:?} on a paused Redis"
    );
}

#[tokio::test]
async fn redis_that_is_gone_fails_fast_at_connect() {
    let mut server = RedisServer::start().await;
    let config = server.redis_config();
    server.kill().await;
    let started = std::time::Instant::now();
    let result = RedisStore::connect(&config, "ns").await;
    assert!(result.is_err(), "connecting to a dead Redis must fail");
    assert!(started.elapsed() < config.connect_timeout * 4);
}

/// Differential test of key and pattern handling, with Redis as the
/// oracle: many generated keys and glob patterns (every metacharacter,
/// braces, escapes, classes, non-ASCII), listed through the memory backend
/// and through the Redis backend (where the pattern is embedded in the
/// namespace and hash tag and handed to `SCAN MATCH`). Every pattern the
/// validator accepts must list exactly the same keys on both; the seed is
/// printed so a failure can be replayed (`GLOB_SEED=...`).
#[tokio::test]
async fn generated_globs_list_the_same_keys_on_memory_and_redis() {
    use outrigger::backend::glob;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let seed: u64 = std::env::var("GLOB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("GLOB_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    const ALPHABET: &[&str] = &[
        "a", "b", "c", "-", "*", "?", "[", "]", "\\", "^", "{", "}", ":", "é", " ",
    ];
    let word = |rng: &mut StdRng, max: usize| -> String {
        let len = rng.random_range(1..=max);
        (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect()
    };
    let keys: BTreeSet<String> = (0..150).map(|_| word(&mut rng, 6)).collect();

    let memory = setup(Topology::Memory).await;
    let server = RedisServer::start().await;
    let redis = RedisCache::new(Arc::new(
        RedisStore::connect(&server.redis_config(), &unique("glob"))
            .await
            .expect("connect"),
    ));
    for key in &keys {
        let write = || Write {
            value: Bytes::from_static(b"v"),
            ttl: None,
            tags: vec![],
            condition: Condition::None,
            stale: None,
        };
        memory.store.set(key, write()).await.unwrap();
        redis.set(key, write()).await.unwrap();
    }

    async fn listed(store: &dyn CacheStore, pattern: &str) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        let mut cursor = String::new();
        loop {
            let page = store.list_keys(pattern, &cursor, 1000).await.unwrap();
            all.extend(page.keys);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => return all,
            }
        }
    }

    let mut checked = 0;
    let mut matched_some = 0;
    // Patterns from the alphabet, and keys turned into patterns (so that
    // many patterns match something).
    let key_list: Vec<&String> = keys.iter().collect();
    while checked < 400 {
        let pattern = if rng.random_bool(0.5) {
            word(&mut rng, 7)
        } else {
            let key = key_list[rng.random_range(0..key_list.len())];
            let mut p: String = key.clone();
            if rng.random_bool(0.5) {
                p.push('*');
            }
            if rng.random_bool(0.3) {
                p.insert(0, '*');
            }
            p
        };
        if glob::validate(&pattern).is_err() {
            continue;
        }
        checked += 1;
        let on_memory = listed(&*memory.store, &pattern).await;
        let on_redis = listed(&redis, &pattern).await;
        assert_eq!(
            on_memory, on_redis,
            "pattern {pattern:?} (GLOB_SEED={seed}): memory and Redis disagree"
        );
        let expected: BTreeSet<String> = keys
            .iter()
            .filter(|k| glob::matches(&pattern, k))
            .cloned()
            .collect();
        assert_eq!(on_memory, expected, "pattern {pattern:?}");
        if !on_memory.is_empty() {
            matched_some += 1;
        }
    }
    assert!(
        matched_some > 100,
        "only {matched_some} patterns matched anything"
    );
}
