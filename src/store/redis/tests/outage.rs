//! Redis outages: killed (then back empty, with one conflicting record), stalled
//! by SIGSTOP, and a full queue. Nothing fails, nothing waits past the timeout.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tempfile::TempDir;

use super::{config, eventually, instance, instance_with, ops, store_up, strict, strict_config};
use super::{RedisServer, COMMAND_TIMEOUT};
use crate::store::{MoveReason, Session, Store};

/// Every call while Redis is down or stalled returns within this.
const BOUND: Duration = Duration::from_millis(200 + 150);

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let t0 = Instant::now();
    let out = f.await;
    assert!(t0.elapsed() < BOUND, "{what} took {:?}", t0.elapsed());
    out
}

/// A directory holding a dump with `tt:s:app:k3 -> b9`, as if another instance
/// had recorded it in the fresh Redis before this one came back.
async fn seed_conflict() -> TempDir {
    let seed = RedisServer::start();
    let mut c = seed.client().await;
    let record = r#"{"v":1,"backend":"b9","since":1,"last_seen":1}"#;
    let _: () = c.set_ex("tt:s:app:k3", record, 600).await.expect("seed");
    let _: () = redis::cmd("SAVE").query_async(&mut c).await.expect("save");
    seed.kill()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_then_an_empty_one_loses_nothing() {
    let server = RedisServer::start();
    let port = server.port;
    let (a, ma) = strict(port).await;
    let (b, _) = strict(port).await;
    let (pa, pb) = (a.pool("app"), b.pool("app"));
    for i in 1..=6 {
        pa.insert_if_absent(&format!("k{i}"), "b1".into())
            .await
            .expect("insert");
    }
    // B caches all but k6: a delete during an outage cannot win over an
    // instance that writes the key back to an empty Redis afterwards.
    for i in 1..=5 {
        pb.insert_if_absent(&format!("k{i}"), "zz".into())
            .await
            .expect("adopt");
    }
    let dir = seed_conflict().await;
    drop(server.kill());
    // Lookups keep hitting; changes return at once and are queued.
    assert_eq!(&*pa.lookup("k1").expect("hit").backend, "b1");
    let hit = timed("insert", pa.insert_if_absent("n1", "b2".into()))
        .await
        .expect("insert");
    assert_eq!(&*hit.backend, "b2");
    eventually("store_up 0", Duration::from_secs(3), || store_up(&ma) == 0).await;
    let moved = Session {
        moved_from: Some("b1".into()),
        move_reason: Some(MoveReason::Down),
        ..Session::new("b3".into())
    };
    assert!(timed("cas", pa.compare_and_set("k2", "b1", moved))
        .await
        .expect("cas"));
    assert!(timed("take", pa.take_moved("k2", "b3"))
        .await
        .expect("take"));
    assert!(timed("delete", pa.delete("k6")).await.expect("delete"));
    assert_eq!(
        &*timed("get", pa.get("k1"))
            .await
            .expect("get")
            .expect("cached")
            .backend,
        "b1"
    );
    timed("drain", a.set_drain("app", "b1", Some(5)))
        .await
        .expect("drain");
    assert!(a.queued() >= 5, "queued {}", a.queued());
    assert!(ops(&ma, "queue", "queued") >= 5);

    // Redis comes back empty but for someone else's owner of k3.
    let server = RedisServer::start_with(port, dir, &[]);
    eventually("queue replayed", Duration::from_secs(5), || {
        a.queued() == 0 && store_up(&ma) == 1
    })
    .await;
    eventually("k3 adopted by A", Duration::from_secs(5), || {
        pa.lookup("k3").is_some_and(|h| &*h.backend == "b9")
    })
    .await;
    let (c, _) = instance(port).await;
    let pc = c.pool("app");
    let expect = [
        ("k1", "b1"),
        ("k2", "b3"),
        ("k3", "b9"),
        ("k4", "b1"),
        ("k5", "b1"),
        ("n1", "b2"),
    ];
    for (key, owner) in expect {
        let s = pc.get(key).await.expect("get");
        assert_eq!(
            s.map(|s| s.backend.to_string()).as_deref(),
            Some(owner),
            "{key} in redis"
        );
    }
    assert!(
        pc.get("k6").await.expect("get").is_none(),
        "the delete was replayed"
    );
    assert!(pc
        .get("k2")
        .await
        .expect("get")
        .expect("k2")
        .moved_from
        .is_none());
    assert_eq!(
        c.drains().await.expect("drains"),
        vec![("app".into(), "b1".into(), 5)]
    );
    for (key, owner) in expect {
        eventually("B agrees", Duration::from_secs(5), || {
            pb.lookup(key).is_none_or(|h| &*h.backend == owner)
        })
        .await;
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_redis_never_holds_a_call_past_the_timeout() {
    let server = RedisServer::start();
    let (a, ma) = strict(server.port).await;
    let pa = a.pool("app");
    pa.insert_if_absent("k", "b1".into()).await.expect("insert");
    let secret = a.cookie_secret().await.expect("secret");
    server.pause();
    let hit = timed("first insert", pa.insert_if_absent("n0", "b2".into()))
        .await
        .expect("insert");
    assert_eq!(&*hit.backend, "b2");
    for i in 1..20 {
        timed("insert", pa.insert_if_absent(&format!("n{i}"), "b2".into()))
            .await
            .expect("insert");
    }
    timed("get", pa.get("k")).await.expect("get");
    let s = Session::new("b3".into());
    assert!(timed("cas", pa.compare_and_set("k", "b1", s))
        .await
        .expect("cas"));
    timed("take", pa.take_moved("k", "b3")).await.expect("take");
    timed("delete", pa.delete("n19")).await.expect("delete");
    timed("drain", a.set_drain("app", "b1", None))
        .await
        .expect("drain");
    timed("drains", a.drains()).await.expect("drains");
    assert_eq!(
        timed("secret", a.cookie_secret()).await.expect("secret"),
        secret
    );
    assert_eq!(&*pa.lookup("k").expect("hit").backend, "b3");
    assert_eq!(store_up(&ma), 0);
    // The first call waited for the timeout (or the ping did, if it came first).
    assert!(ops(&ma, "insert", "timeout") + ops(&ma, "ping", "timeout") >= 1);
    let t0 = Instant::now();
    a.flush().await.expect("flush");
    assert!(t0.elapsed() < Duration::from_secs(3));

    server.resume();
    eventually("caught up", Duration::from_secs(5), || {
        a.queued() == 0 && a.is_up()
    })
    .await;
    let (c, _) = instance(server.port).await;
    let pc = c.pool("app");
    assert_eq!(
        &*pc.insert_if_absent("n5", "zz".into())
            .await
            .expect("adopt")
            .backend,
        "b2"
    );
    assert_eq!(
        &*pc.insert_if_absent("k", "zz".into())
            .await
            .expect("adopt")
            .backend,
        "b3"
    );
    assert!(pc.get("n19").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_and_counts_drops() {
    let server = RedisServer::start();
    let cfg = config(strict_config(server.port), Duration::from_secs(60));
    let (a, ma) = instance_with(cfg, 5).await;
    let pa = a.pool("app");
    drop(server.kill());
    for i in 0..8 {
        timed("insert", pa.insert_if_absent(&format!("k{i}"), "b1".into()))
            .await
            .expect("insert");
    }
    assert_eq!(a.queued(), 5);
    assert_eq!(ops(&ma, "queue", "dropped"), 3);
    // Dropped writes still route locally.
    assert_eq!(pa.len(), 8);
    assert!(COMMAND_TIMEOUT < BOUND);
}
