//! Several instances (stores) on one Redis: they agree on owners, settle
//! concurrent re-pins on one owner with one moved-from, see each other's changes
//! within 100 ms, and share drains and the cookie secret.

use std::sync::Arc;
use std::time::Duration;

use super::{eventually, instance, RedisServer};
use crate::store::{MoveReason, OperatorEvent, PoolStore, Session, Store};

fn moved(backend: &str, from: &str) -> Session {
    Session {
        moved_from: Some(from.into()),
        move_reason: Some(MoveReason::Down),
        ..Session::new(backend.into())
    }
}

/// Waits until `n` instances listen on the events channel, so that no test
/// change is published before everyone subscribed.
async fn subscribed(server: &RedisServer, n: i64) {
    let mut c = server.client().await;
    for _ in 0..400 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("tt:events")
            .query_async(&mut c)
            .await
            .expect("numsub");
        if count >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} subscribers expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_through_one_instance_is_adopted_by_the_other() {
    let server = RedisServer::start();
    let (a, _) = instance(server.port).await;
    let (b, _) = instance(server.port).await;
    let (pa, pb) = (a.pool("app"), b.pool("app"));
    for i in 0..100 {
        let (key, other) = (format!("a{i}"), format!("b{i}"));
        let owner = format!("be{}", i % 3);
        assert_eq!(
            &*pa.insert_if_absent(&key, owner.as_str().into())
                .await
                .expect("insert")
                .backend,
            owner
        );
        assert_eq!(
            &*pb.insert_if_absent(&other, owner.as_str().into())
                .await
                .expect("insert")
                .backend,
            owner
        );
    }
    for i in 0..100 {
        let owner = format!("be{}", i % 3);
        // Not cached yet (lazy warm-up), then adopted from Redis, whatever was proposed.
        assert!(pb.lookup(&format!("a{i}")).is_none());
        let hit = pb
            .insert_if_absent(&format!("a{i}"), "zz".into())
            .await
            .expect("adopt");
        assert_eq!(&*hit.backend, owner);
        let hit = pa
            .insert_if_absent(&format!("b{i}"), "zz".into())
            .await
            .expect("adopt");
        assert_eq!(&*hit.backend, owner);
        assert_eq!(
            &*pb.lookup(&format!("a{i}")).expect("cached").backend,
            owner
        );
    }
    assert_eq!((pa.sessions_of("zz"), pb.sessions_of("zz")), (0, 0));
    assert_eq!(pa.len(), 200);
    let s = pb.get("a0").await.expect("get").expect("some");
    assert_eq!(&*s.backend, "be0");
    assert_eq!(a.kind(), "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repins_settle_on_one_owner_and_one_moved_from() {
    let server = RedisServer::start();
    let (a, _) = instance(server.port).await;
    let (b, _) = instance(server.port).await;
    let (pa, pb) = (a.pool("app"), b.pool("app"));
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    for key in &keys {
        pa.insert_if_absent(key, "old".into())
            .await
            .expect("insert");
        pb.insert_if_absent(key, "x".into()).await.expect("adopt");
    }
    // Each instance fails over every session at once, each to its own choice,
    // then routes one request per session as the router does (follow).
    let run = |pool: Arc<dyn PoolStore>, to: &'static str| {
        let keys = keys.clone();
        tokio::spawn(async move {
            let (mut won, mut announced) = (0, Vec::new());
            for key in &keys {
                won += usize::from(
                    pool.compare_and_set(key, "old", moved(to, "old"))
                        .await
                        .expect("cas"),
                );
                let hit = pool.lookup(key).expect("owner cached after cas");
                if hit.moved.is_some() && pool.take_moved(key, &hit.backend).await.expect("take") {
                    announced.push(key.clone());
                }
            }
            (won, announced)
        })
    };
    let (ta, tb) = (run(pa.clone(), "to-a"), run(pb.clone(), "to-b"));
    let ((won_a, ann_a), (won_b, ann_b)) = (ta.await.expect("a"), tb.await.expect("b"));
    assert_eq!(won_a + won_b, 200, "exactly one re-pin per session");
    let mut announced = [ann_a, ann_b].concat();
    announced.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(announced, expected, "exactly one moved-from per session");
    for key in &keys {
        let (ha, hb) = (pa.lookup(key).expect("a"), pb.lookup(key).expect("b"));
        assert_eq!(ha.backend, hb.backend, "{key}");
        assert!(ha.moved.is_none() && hb.moved.is_none(), "{key}");
    }
    assert_eq!(pa.sessions_of("to-a") + pa.sessions_of("to-b"), 200);
    assert_eq!(pa.sessions_of("to-a"), pb.sessions_of("to-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_other_cache_within_100ms() {
    let server = RedisServer::start();
    let (a, _) = instance(server.port).await;
    let (b, _) = instance(server.port).await;
    subscribed(&server, 2).await;
    let (pa, pb) = (a.pool("app"), b.pool("app"));
    pa.insert_if_absent("k", "b1".into()).await.expect("insert");
    pb.insert_if_absent("k", "zz".into()).await.expect("adopt");
    assert!(pa
        .compare_and_set("k", "b1", moved("b2", "b1"))
        .await
        .expect("cas"));
    let took = eventually("re-pin seen by B", Duration::from_secs(2), || {
        pb.lookup("k")
            .is_some_and(|h| &*h.backend == "b2" && h.moved.is_some())
    })
    .await;
    assert!(took < Duration::from_millis(100), "re-pin took {took:?}");
    assert!(pa.take_moved("k", "b2").await.expect("take"));
    eventually(
        "moved-from cleared on B",
        Duration::from_millis(100),
        || pb.lookup("k").is_some_and(|h| h.moved.is_none()),
    )
    .await;
    assert!(pa.delete("k").await.expect("delete"));
    let took = eventually("delete seen by B", Duration::from_secs(2), || {
        pb.lookup("k").is_none()
    })
    .await;
    assert!(took < Duration::from_millis(100), "delete took {took:?}");
    assert_eq!(pb.sessions_of("b2"), 0);
    assert!(pb.get("k").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_and_cookie_secret_are_shared() {
    let server = RedisServer::start();
    let (a, _) = instance(server.port).await;
    let (b, _) = instance(server.port).await;
    subscribed(&server, 2).await;
    let mut events_a = a.operator_events().expect("shared store");
    let mut events_b = b.operator_events().expect("shared store");
    a.set_drain("app", "b1", Some(1_900_000_000_000))
        .await
        .expect("drain");
    let got = tokio::time::timeout(Duration::from_secs(1), events_b.recv()).await;
    let expected = OperatorEvent::Drain {
        pool: "app".into(),
        backend: "b1".into(),
        deadline_unix_ms: 1_900_000_000_000,
    };
    assert_eq!(got.expect("in time").expect("event"), expected);
    // A new instance reads the drain at start.
    let (c, _) = instance(server.port).await;
    let drain = ("app".to_owned(), "b1".to_owned(), 1_900_000_000_000);
    assert_eq!(c.drains().await.expect("drains"), vec![drain.clone()]);
    assert_eq!(b.drains().await.expect("drains"), vec![drain]);
    a.set_drain("app", "b1", None).await.expect("enable");
    let got = tokio::time::timeout(Duration::from_secs(1), events_b.recv()).await;
    let enable = OperatorEvent::Enable {
        pool: "app".into(),
        backend: "b1".into(),
    };
    assert_eq!(got.expect("in time").expect("event"), enable);
    assert!(c.drains().await.expect("drains").is_empty());
    // A never hears about its own changes.
    let own = events_a.try_recv();
    assert!(own.is_err(), "{own:?}");

    let secret = a.cookie_secret().await.expect("secret");
    assert_eq!(secret.len(), 32);
    assert_eq!(secret, b.cookie_secret().await.expect("secret"));
    assert_eq!(secret, c.cookie_secret().await.expect("secret"));
}
