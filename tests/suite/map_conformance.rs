//! The map conformance suite: the same assertions on every topology,
//! through the primitive (`Maps`), so validation, conditions, atomicity,
//! increments, expiry and events are covered on each backend.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use outrigger::app::App;
use outrigger::backend::{Feed, FeedItem};
use outrigger::config::Config;
use outrigger::error::Error;
use outrigger::primitives::map::store::{
    Condition, FieldChange, MapEvent, MapEventKind, Number, Outcome,
};
use outrigger::primitives::map::{ChangeRequest, TtlRequest, UpdateRequest};
use outrigger_tests::{AppOn, Topology, conformance, eventually};

fn config() -> Config {
    let mut config = Config::default();
    config.maps.reap_interval = Duration::from_millis(50);
    config.maps.max_fields = 300;
    config
}

async fn setup(topology: Topology) -> AppOn {
    topology.app(&config(), "maps").await
}

/// A map whose reaper only runs when the case says (`reap_once`).
async fn setup_unreaped(topology: Topology) -> AppOn {
    let mut config = config();
    config.maps.reap_interval = Duration::from_secs(3600);
    topology.app(&config, "maps").await
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
        fields_are_set_read_and_versioned,
        values_are_binary_safe,
        field_conditions_hold_or_refuse,
        an_update_applies_every_change_or_none,
        the_map_version_condition_guards_an_update,
        increments_keep_integers_and_floats_apart,
        versions_never_repeat_across_a_delete,
        a_field_ttl_expires_the_field_and_is_announced_once,
        a_fixed_map_ttl_ends_the_map,
        a_sliding_map_ttl_restarts_on_access,
        fields_list_in_pages,
        watchers_see_each_update_as_one_event,
        the_field_count_is_limited,
        concurrent_increments_are_all_counted,
        bad_map_input_is_rejected,
    }
);

conformance!(
    setup_unreaped;
    [
        unreaped_on_memory: Memory,
        unreaped_on_redis: Redis,
        unreaped_on_cluster: Cluster,
    ];
    unreaped {
        an_expired_field_is_invisible_before_it_is_reaped,
    }
);

fn set(field: &str, value: &str) -> ChangeRequest {
    ChangeRequest::Set {
        field: field.into(),
        value: Bytes::from(value.to_string()),
        ttl_ms: 0,
        condition: Condition::None,
    }
}

fn set_if(field: &str, value: &str, condition: Condition) -> ChangeRequest {
    ChangeRequest::Set {
        field: field.into(),
        value: Bytes::from(value.to_string()),
        ttl_ms: 0,
        condition,
    }
}

fn set_ttl(field: &str, value: &str, ttl_ms: u64) -> ChangeRequest {
    ChangeRequest::Set {
        field: field.into(),
        value: Bytes::from(value.to_string()),
        ttl_ms,
        condition: Condition::None,
    }
}

fn delete(field: &str) -> ChangeRequest {
    ChangeRequest::Delete {
        field: field.into(),
    }
}

fn incr(field: &str, by: Number) -> ChangeRequest {
    ChangeRequest::Increment {
        field: field.into(),
        by,
    }
}

fn changes(changes: Vec<ChangeRequest>) -> UpdateRequest {
    UpdateRequest {
        changes,
        ..UpdateRequest::default()
    }
}

/// One field's value as text, `None` when absent.
async fn text(app: &App, map: &str, field: &str) -> Option<String> {
    let read = app.maps.get(map, &[field.to_string()]).await.unwrap();
    read.fields[0]
        .as_ref()
        .map(|f| String::from_utf8(f.value.to_vec()).unwrap())
}

/// The next event of a feed, within a bound.
async fn next_event(feed: &mut Feed<MapEvent>) -> MapEvent {
    match tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("an event within 5 s")
        .expect("the feed goes on")
    {
        FeedItem::Item(event) => event,
        FeedItem::Lagged(n) => panic!("lagged by {n}"),
    }
}

mod cases {
    use super::*;

    pub async fn fields_are_set_read_and_versioned(app: &App) {
        let m = &app.maps;
        let absent = m.get("session", &["user".into()]).await.unwrap();
        assert_eq!((absent.version, absent.ttl), (0, None));
        assert_eq!(absent.fields, vec![None]);

        let first = m
            .update(
                "session",
                changes(vec![set("user", "ada"), set("theme", "dark")]),
            )
            .await
            .unwrap();
        assert!(first.version > 0);
        assert_eq!(first.outcomes, vec![Outcome::Set, Outcome::Set]);
        let second = m
            .update("session", changes(vec![set("theme", "light")]))
            .await
            .unwrap();
        assert!(second.version > first.version, "{second:?} after {first:?}");

        let fields = ["user", "theme", "missing"].map(String::from);
        let read = m.get("session", &fields).await.unwrap();
        assert_eq!(read.version, second.version);
        let [user, theme, missing] = &read.fields[..] else {
            panic!("{read:?}")
        };
        let (user, theme) = (user.as_ref().unwrap(), theme.as_ref().unwrap());
        assert_eq!(
            (&user.value[..], user.version),
            (&b"ada"[..], first.version)
        );
        assert_eq!(
            (&theme.value[..], theme.version),
            (&b"light"[..], second.version)
        );
        assert_eq!((user.ttl, theme.ttl), (None, None));
        assert!(missing.is_none());

        let deleted = m
            .update("session", changes(vec![delete("theme"), delete("nope")]))
            .await
            .unwrap();
        assert_eq!(
            deleted.outcomes,
            vec![
                Outcome::Deleted { existed: true },
                Outcome::Deleted { existed: false }
            ]
        );
        assert_eq!(text(app, "session", "theme").await, None);
        assert_eq!(text(app, "session", "user").await.as_deref(), Some("ada"));
        // Maps are independent.
        assert_eq!(text(app, "other", "user").await, None);
        // The last field gone, the map is gone.
        m.update("session", changes(vec![delete("user")]))
            .await
            .unwrap();
        assert_eq!(m.get("session", &["user".into()]).await.unwrap().version, 0);
        assert!(!m.delete("session").await.unwrap());
    }

    pub async fn values_are_binary_safe(app: &App) {
        let value = Bytes::from_static(b"\x00\xff:1:2:\n\r\nend");
        let field = "f:with:colons and spaces";
        app.maps
            .update(
                "bin",
                changes(vec![ChangeRequest::Set {
                    field: field.into(),
                    value: value.clone(),
                    ttl_ms: 0,
                    condition: Condition::None,
                }]),
            )
            .await
            .unwrap();
        let read = app.maps.get("bin", &[field.to_string()]).await.unwrap();
        assert_eq!(read.fields[0].as_ref().unwrap().value, value);
        let page = app.maps.scan("bin", "", 10).await.unwrap();
        assert_eq!(page.fields.len(), 1);
        assert_eq!(
            (page.fields[0].0.as_str(), &page.fields[0].1.value),
            (field, &value)
        );
        // An empty value is a value.
        app.maps
            .update("bin", changes(vec![set("empty", "")]))
            .await
            .unwrap();
        assert_eq!(text(app, "bin", "empty").await.as_deref(), Some(""));
    }

    pub async fn field_conditions_hold_or_refuse(app: &App) {
        let m = &app.maps;
        let created = m
            .update("c", changes(vec![set_if("f", "1", Condition::IfAbsent)]))
            .await
            .unwrap();
        let err = m
            .update("c", changes(vec![set_if("f", "2", Condition::IfAbsent)]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::PreconditionFailed(msg) if msg.contains("\"f\"") && msg.contains("is present")),
            "{err:?}"
        );
        let err = m
            .update("c", changes(vec![set_if("g", "2", Condition::IfPresent)]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::PreconditionFailed(msg) if msg.contains("is absent")),
            "{err:?}"
        );
        assert_eq!(text(app, "c", "g").await, None);
        m.update("c", changes(vec![set_if("f", "3", Condition::IfPresent)]))
            .await
            .unwrap();
        // Compare-and-set on the field's version: the version it was set at.
        let err = m
            .update(
                "c",
                changes(vec![set_if(
                    "f",
                    "4",
                    Condition::IfVersion(created.version),
                )]),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::PreconditionFailed(msg) if msg.contains("is not at version")),
            "{err:?}"
        );
        let now = m.get("c", &["f".into()]).await.unwrap().fields[0]
            .clone()
            .unwrap();
        assert_eq!(now.value, "3");
        m.update(
            "c",
            changes(vec![set_if("f", "5", Condition::IfVersion(now.version))]),
        )
        .await
        .unwrap();
        assert_eq!(text(app, "c", "f").await.as_deref(), Some("5"));
    }

    pub async fn an_update_applies_every_change_or_none(app: &App) {
        let m = &app.maps;
        m.update(
            "u",
            changes(vec![set("a", "1"), set("b", "x"), set("c", "7")]),
        )
        .await
        .unwrap();
        let before = m.get("u", &["a".into()]).await.unwrap().version;
        // The last change fails (b is not a number): nothing applies.
        let err = m
            .update(
                "u",
                changes(vec![
                    set("a", "changed"),
                    delete("c"),
                    set("new", "n"),
                    incr("b", Number::Int(1)),
                ]),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Conflict(msg) if msg.contains("\"b\"") && msg.contains("not hold a number") && msg.contains("nothing")),
            "{err:?}"
        );
        let fields = ["a", "b", "c", "new"].map(String::from);
        let after = m.get("u", &fields).await.unwrap();
        assert_eq!(after.version, before, "a refused update leaves the version");
        let values: Vec<Option<&[u8]>> = after
            .fields
            .iter()
            .map(|f| f.as_ref().map(|f| &f.value[..]))
            .collect();
        assert_eq!(values, vec![Some(&b"1"[..]), Some(b"x"), Some(b"7"), None]);
        // And the same update without the failing change applies whole,
        // changes seeing the ones before them.
        let applied = m
            .update(
                "u",
                changes(vec![
                    set("a", "changed"),
                    delete("c"),
                    incr("a2", Number::Int(2)),
                    incr("a2", Number::Int(3)),
                    set_if("c", "again", Condition::IfAbsent),
                ]),
            )
            .await
            .unwrap();
        assert_eq!(
            applied.outcomes,
            vec![
                Outcome::Set,
                Outcome::Deleted { existed: true },
                Outcome::Incremented(Number::Int(2)),
                Outcome::Incremented(Number::Int(5)),
                Outcome::Set,
            ]
        );
        let fields = ["a", "c", "a2"].map(String::from);
        let read = m.get("u", &fields).await.unwrap();
        for f in &read.fields {
            assert_eq!(f.as_ref().unwrap().version, applied.version);
        }
        assert_eq!(read.fields[1].as_ref().unwrap().value, "again");
        assert_eq!(read.fields[2].as_ref().unwrap().value, "5");
    }

    pub async fn the_map_version_condition_guards_an_update(app: &App) {
        let m = &app.maps;
        let guarded = |v: u64, c: Vec<ChangeRequest>| UpdateRequest {
            changes: c,
            if_version: Some(v),
            ..UpdateRequest::default()
        };
        // 0: only if the map does not exist.
        let created = m
            .update("g", guarded(0, vec![set("a", "1")]))
            .await
            .unwrap();
        let err = m
            .update("g", guarded(0, vec![set("a", "2")]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::PreconditionFailed(msg) if msg.contains(&format!("version {}", created.version))),
            "{err:?}"
        );
        let next = m
            .update("g", guarded(created.version, vec![set("b", "2")]))
            .await
            .unwrap();
        let err = m
            .update("g", guarded(created.version, vec![set("c", "3")]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PreconditionFailed(_)), "{err:?}");
        assert_eq!(text(app, "g", "c").await, None);
        assert_eq!(
            m.get("g", &["a".into()]).await.unwrap().version,
            next.version
        );
    }

    pub async fn increments_keep_integers_and_floats_apart(app: &App) {
        let m = &app.maps;
        let add = |field: &'static str, by: Number| async move {
            let applied = m.update("n", changes(vec![incr(field, by)])).await?;
            match applied.outcomes[..] {
                [Outcome::Incremented(n)] => Ok(n),
                _ => panic!("{applied:?}"),
            }
        };
        assert_eq!(add("hits", Number::Int(5)).await.unwrap(), Number::Int(5));
        assert_eq!(add("hits", Number::Int(-7)).await.unwrap(), Number::Int(-2));
        assert_eq!(text(app, "n", "hits").await.as_deref(), Some("-2"));
        // Floats, stored in the shortest form that reads back exactly.
        assert_eq!(
            add("f", Number::Float(0.1)).await.unwrap(),
            Number::Float(0.1)
        );
        assert_eq!(
            add("f", Number::Float(0.2)).await.unwrap(),
            Number::Float(0.30000000000000004)
        );
        assert_eq!(
            text(app, "n", "f").await.as_deref(),
            Some("0.30000000000000004")
        );
        // An integer added to a float field makes a float; a whole float
        // reads as an integer again.
        assert_eq!(
            add("h", Number::Float(1.5)).await.unwrap(),
            Number::Float(1.5)
        );
        assert_eq!(add("h", Number::Float(1.5)).await.unwrap(), Number::Int(3));
        assert_eq!(text(app, "n", "h").await.as_deref(), Some("3"));
        assert_eq!(
            add("big", Number::Float(1e300)).await.unwrap(),
            Number::Float(1e300)
        );
        assert_eq!(text(app, "n", "big").await.as_deref(), Some("1e+300"));
        let err = add("big", Number::Float(f64::MAX)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Conflict(msg) if msg.contains("range")),
            "{err:?}"
        );
        // Integers stay within 2^53 - 1.
        let max = (1i64 << 53) - 1;
        assert_eq!(add("i", Number::Int(max)).await.unwrap(), Number::Int(max));
        let err = add("i", Number::Int(1)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Conflict(msg) if msg.contains("9007199254740991")),
            "{err:?}"
        );
        assert_eq!(text(app, "n", "i").await, Some(max.to_string()));
        // What is not a number is refused.
        for text in ["x", "1.2.3", "0x10", " 1", "1e", "inf", "NaN", ""] {
            m.update("n", changes(vec![set("text", text)]))
                .await
                .unwrap();
            let err = add("text", Number::Int(1)).await.unwrap_err();
            assert!(matches!(&err, Error::Conflict(_)), "{text:?}: {err:?}");
        }
        // Numbers written by the client are numbers.
        for (text, by, sum) in [
            ("41", Number::Int(1), Number::Int(42)),
            ("-1.25", Number::Int(1), Number::Float(-0.25)),
            ("2.", Number::Int(1), Number::Int(3)),
            ("1e3", Number::Int(1), Number::Int(1001)),
            ("9007199254740991", Number::Int(-1), Number::Int(max - 1)),
        ] {
            m.update("n", changes(vec![set("text", text)]))
                .await
                .unwrap();
            assert_eq!(add("text", by).await.unwrap(), sum, "{text:?}");
        }
        // An increment keeps the field's TTL.
        m.update("n", changes(vec![set_ttl("t", "1", 60_000)]))
            .await
            .unwrap();
        add("t", Number::Int(1)).await.unwrap();
        let t = m.get("n", &["t".into()]).await.unwrap().fields[0]
            .clone()
            .unwrap();
        assert!(
            t.ttl.is_some_and(|ttl| ttl <= Duration::from_secs(60)),
            "{t:?}"
        );
    }

    pub async fn versions_never_repeat_across_a_delete(app: &App) {
        let m = &app.maps;
        let mut seen = BTreeSet::new();
        for round in 0..3 {
            for i in 0..5 {
                let v = m
                    .update("v", changes(vec![set("f", &i.to_string())]))
                    .await
                    .unwrap()
                    .version;
                assert!(
                    seen.iter().all(|&s| s < v),
                    "round {round}: version {v} after {seen:?}"
                );
                seen.insert(v);
            }
            assert!(m.delete("v").await.unwrap());
            assert_eq!(m.get("v", &["f".into()]).await.unwrap().version, 0);
        }
    }

    pub async fn a_field_ttl_expires_the_field_and_is_announced_once(app: &App) {
        let m = &app.maps;
        let mut feed = m.watch("ttl").await.unwrap();
        m.update(
            "ttl",
            changes(vec![set_ttl("typing", "ada", 150), set("name", "chat")]),
        )
        .await
        .unwrap();
        let set_event = next_event(&mut feed).await;
        assert_eq!(set_event.kind, MapEventKind::Updated);
        let read = m.get("ttl", &["typing".into()]).await.unwrap();
        let ttl = read.fields[0].as_ref().unwrap().ttl.unwrap();
        assert!(ttl <= Duration::from_millis(150), "{ttl:?}");
        // The reaper takes it out and says so, once.
        let expired = next_event(&mut feed).await;
        assert_eq!(expired.kind, MapEventKind::Expired);
        assert_eq!(
            expired.changes,
            vec![("typing".to_string(), FieldChange::Expired)]
        );
        assert_eq!(text(app, "ttl", "typing").await, None);
        assert_eq!(text(app, "ttl", "name").await.as_deref(), Some("chat"));
        assert_eq!(app.maps.reap_once().await, 0, "reaped once only");
        // A TTL is replaced by the next set (none: the field stays).
        m.update("ttl", changes(vec![set_ttl("x", "1", 100)]))
            .await
            .unwrap();
        m.update("ttl", changes(vec![set("x", "2")])).await.unwrap();
        m.update("ttl", changes(vec![set_ttl("marker", "m", 100)]))
            .await
            .unwrap();
        // Events arrive in order: the marker's expiry comes after x's
        // would have, and x is not announced.
        loop {
            let event = next_event(&mut feed).await;
            assert!(
                !event.changes.contains(&("x".into(), FieldChange::Expired)),
                "{event:?}"
            );
            if event
                .changes
                .contains(&("marker".into(), FieldChange::Expired))
            {
                break;
            }
        }
        assert_eq!(text(app, "ttl", "x").await.as_deref(), Some("2"));
    }

    pub async fn a_fixed_map_ttl_ends_the_map(app: &App) {
        let m = &app.maps;
        let fixed = UpdateRequest {
            changes: vec![set("a", "1")],
            ttl: TtlRequest {
                ttl_ms: 200,
                ..TtlRequest::default()
            },
            ..UpdateRequest::default()
        };
        m.update("fixed", fixed).await.unwrap();
        let ttl = m.get("fixed", &["a".into()]).await.unwrap().ttl.unwrap();
        assert!(ttl <= Duration::from_millis(200), "{ttl:?}");
        // Writes without a TTL leave the lifetime; the map ends whole.
        m.update("fixed", changes(vec![set("b", "2")]))
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "the map to end", || async {
            let read = m.get("fixed", &["a".into(), "b".into()]).await.unwrap();
            (read.version == 0 && read.fields == vec![None, None]).then_some(())
        })
        .await;
        // An update that empties the map and fills it again keeps its
        // lifetime.
        let refill = UpdateRequest {
            changes: vec![set("a", "1")],
            ttl: TtlRequest {
                ttl_ms: 60_000,
                ..TtlRequest::default()
            },
            ..UpdateRequest::default()
        };
        m.update("refill", refill).await.unwrap();
        m.update("refill", changes(vec![delete("a"), set("b", "2")]))
            .await
            .unwrap();
        let ttl = m.get("refill", &["b".into()]).await.unwrap().ttl;
        assert!(ttl.is_some_and(|t| t <= Duration::from_secs(60)), "{ttl:?}");
        // Persist removes a lifetime.
        let with_ttl = UpdateRequest {
            changes: vec![set("a", "1")],
            ttl: TtlRequest {
                ttl_ms: 60_000,
                ..TtlRequest::default()
            },
            ..UpdateRequest::default()
        };
        m.update("kept", with_ttl).await.unwrap();
        let persist = UpdateRequest {
            changes: vec![set("b", "2")],
            ttl: TtlRequest {
                persist: true,
                ..TtlRequest::default()
            },
            ..UpdateRequest::default()
        };
        m.update("kept", persist).await.unwrap();
        assert_eq!(m.get("kept", &["a".into()]).await.unwrap().ttl, None);
    }

    pub async fn a_sliding_map_ttl_restarts_on_access(app: &App) {
        let m = &app.maps;
        let sliding = UpdateRequest {
            changes: vec![set("user", "ada")],
            ttl: TtlRequest {
                ttl_ms: 600,
                sliding: true,
                persist: false,
            },
            ..UpdateRequest::default()
        };
        m.update("s", sliding).await.unwrap();
        // Read for twice the lifetime: each read restarts it.
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_millis(1200) {
            let read = m.get("s", &["user".into()]).await.unwrap();
            assert!(read.fields[0].is_some(), "alive at {:?}", start.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Listing is an access too.
        assert_eq!(m.scan("s", "", 10).await.unwrap().fields.len(), 1);
        // Left alone, it ends. (Every read is an access, so no polling:
        // one read once the lifetime has surely passed; a slower machine
        // only lets more of it pass.)
        tokio::time::sleep(Duration::from_millis(900)).await;
        let page = m.scan("s", "", 10).await.unwrap();
        assert!(page.fields.is_empty(), "{page:?}");
    }

    pub async fn fields_list_in_pages(app: &App) {
        let m = &app.maps;
        let all: Vec<String> = (0..250).map(|i| format!("field-{i:03}")).collect();
        for chunk in all.chunks(100) {
            let sets = chunk.iter().map(|f| set(f, f)).collect();
            m.update("p", changes(sets)).await.unwrap();
        }
        // Fields that expire are not listed once expired.
        m.update("p", changes(vec![set_ttl("zz-gone", "x", 1)]))
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "the field to expire", || async {
            text(app, "p", "zz-gone").await.is_none().then_some(())
        })
        .await;
        for limit in [1, 7, 100, 1000] {
            let mut seen = vec![];
            let mut cursor = String::new();
            let mut pages = 0;
            loop {
                let page = m.scan("p", &cursor, limit).await.unwrap();
                assert!(
                    page.fields.len() <= limit,
                    "{} > {limit}",
                    page.fields.len()
                );
                pages += 1;
                assert!(pages <= 300, "listing does not end");
                for (name, value) in page.fields {
                    assert_eq!(value.value, name.as_bytes());
                    seen.push(name);
                }
                match page.next_cursor {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
            seen.sort();
            assert_eq!(seen, all, "limit {limit}: every field once");
        }
        let err = m.scan("p", "not a cursor", 10).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let empty = m.scan("nothing", "", 10).await.unwrap();
        assert_eq!(
            (empty.version, empty.fields.len(), empty.next_cursor),
            (0, 0, None)
        );
    }

    pub async fn watchers_see_each_update_as_one_event(app: &App) {
        let m = &app.maps;
        let mut feed = m.watch("w").await.unwrap();
        let first = m
            .update(
                "w",
                changes(vec![
                    set("b", "1"),
                    set("a", "2"),
                    incr("n", Number::Int(4)),
                ]),
            )
            .await
            .unwrap();
        let event = next_event(&mut feed).await;
        assert_eq!(
            event,
            MapEvent {
                map: "w".into(),
                version: first.version,
                kind: MapEventKind::Updated,
                changes: vec![
                    ("b".into(), FieldChange::Set(Bytes::from_static(b"1"))),
                    ("a".into(), FieldChange::Set(Bytes::from_static(b"2"))),
                    ("n".into(), FieldChange::Set(Bytes::from_static(b"4"))),
                ],
            }
        );
        // Deleting what is absent is no change to announce.
        let second = m
            .update("w", changes(vec![delete("a"), delete("absent")]))
            .await
            .unwrap();
        let event = next_event(&mut feed).await;
        assert_eq!(event.version, second.version);
        assert_eq!(event.changes, vec![("a".into(), FieldChange::Deleted)]);
        // A refused update says nothing; the map's deletion does.
        m.update("w", changes(vec![set_if("b", "x", Condition::IfAbsent)]))
            .await
            .unwrap_err();
        assert!(m.delete("w").await.unwrap());
        let event = next_event(&mut feed).await;
        assert_eq!(
            (event.kind, event.changes.len()),
            (MapEventKind::Deleted, 0)
        );
        // Another map's events are not this one's.
        m.update("other", changes(vec![set("a", "1")]))
            .await
            .unwrap();
        m.update("w", changes(vec![set("z", "1")])).await.unwrap();
        let event = next_event(&mut feed).await;
        assert_eq!((event.map.as_str(), &event.changes[0].0[..]), ("w", "z"));
    }

    pub async fn the_field_count_is_limited(app: &App) {
        let m = &app.maps;
        // maps.max_fields is 300 here.
        let fill: Vec<ChangeRequest> = (0..300).map(|i| set(&format!("f{i}"), "x")).collect();
        for chunk in fill.chunks(100) {
            m.update("full", changes(chunk.to_vec())).await.unwrap();
        }
        let err = m
            .update("full", changes(vec![set("one-more", "x")]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::TooLarge(msg) if msg.contains("maps.max_fields (300)")),
            "{err:?}"
        );
        // Replacing, or adding one while deleting one, is within it.
        m.update("full", changes(vec![set("f0", "y")]))
            .await
            .unwrap();
        m.update("full", changes(vec![delete("f1"), set("one-more", "x")]))
            .await
            .unwrap();
        assert_eq!(text(app, "full", "one-more").await.as_deref(), Some("x"));
    }

    pub async fn concurrent_increments_are_all_counted(app: &App) {
        let tasks = (0..8).map(|_| async {
            for _ in 0..25 {
                app.maps
                    .update(
                        "hot",
                        changes(vec![incr("n", Number::Int(1)), incr("m", Number::Int(2))]),
                    )
                    .await
                    .unwrap();
            }
        });
        futures::future::join_all(tasks).await;
        assert_eq!(text(app, "hot", "n").await.as_deref(), Some("200"));
        assert_eq!(text(app, "hot", "m").await.as_deref(), Some("400"));
    }

    pub async fn bad_map_input_is_rejected(app: &App) {
        let m = &app.maps;
        let invalid = |r: Result<_, Error>, what: &str| match r {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains(what), "{what}: {msg}"),
            other => panic!("{what}: {other:?}"),
        };
        invalid(m.update("", changes(vec![set("a", "1")])).await, "map name");
        invalid(m.update("m", changes(vec![])).await, "at least one change");
        let mut huge = changes(vec![set("a", "1")]);
        huge.if_version = Some(1 << 63);
        invalid(m.update("m", huge).await, "if_version");
        invalid(m.update("m", changes(vec![set("", "1")])).await, "field");
        invalid(
            m.update("m", changes(vec![incr("a", Number::Int(0))]))
                .await,
            "not be 0",
        );
        invalid(
            m.update("m", changes(vec![incr("a", Number::Float(f64::NAN))]))
                .await,
            "finite",
        );
        invalid(
            m.update("m", changes(vec![incr("a", Number::Int(1 << 60))]))
                .await,
            "2^53",
        );
        invalid(
            m.update(
                "m",
                UpdateRequest {
                    changes: vec![set("a", "1")],
                    ttl: TtlRequest {
                        sliding: true,
                        ..TtlRequest::default()
                    },
                    ..UpdateRequest::default()
                },
            )
            .await,
            "sliding",
        );
        let err = m.get("m", &[]).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(msg) if msg.contains("at least one field")),
            "{err:?}"
        );
        let huge = Bytes::from(vec![b'x'; Config::default().limits.max_value_bytes + 1]);
        let err = m
            .update(
                "m",
                changes(vec![ChangeRequest::Set {
                    field: "a".into(),
                    value: huge,
                    ttl_ms: 0,
                    condition: Condition::None,
                }]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
        let err = m.scan("m", "", 1_000_000).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
        // Nothing of it was written.
        assert_eq!(m.get("m", &["a".into()]).await.unwrap().version, 0);
    }
}

mod unreaped {
    use super::*;

    pub async fn an_expired_field_is_invisible_before_it_is_reaped(app: &App) {
        let m = &app.maps;
        let mut feed = m.watch("late").await.unwrap();
        m.update("late", changes(vec![set_ttl("f", "v", 100), set("g", "w")]))
            .await
            .unwrap();
        assert_eq!(next_event(&mut feed).await.kind, MapEventKind::Updated);
        eventually(Duration::from_secs(5), "the field to expire", || async {
            text(app, "late", "f").await.is_none().then_some(())
        })
        .await;
        // Expired but not reaped: absent to every read and every condition.
        let page = m.scan("late", "", 10).await.unwrap();
        assert_eq!(page.fields.len(), 1, "{page:?}");
        m.update(
            "late",
            changes(vec![set_if("f", "again", Condition::IfAbsent)]),
        )
        .await
        .unwrap();
        // Its expiry is still announced, before the write that replaced it.
        let expired = next_event(&mut feed).await;
        assert_eq!(
            (expired.kind, expired.changes),
            (
                MapEventKind::Expired,
                vec![("f".into(), FieldChange::Expired)]
            )
        );
        assert_eq!(next_event(&mut feed).await.kind, MapEventKind::Updated);
        assert_eq!(m.reap_once().await, 0);
        assert_eq!(text(app, "late", "f").await.as_deref(), Some("again"));
    }
}
