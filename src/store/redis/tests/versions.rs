//! Per-key versions beside records of earlier releases, which numbered every
//! change from one global counter (`{prefix}:ver`, INCR): their records are
//! read as they are, any new change outranks them, and the counter is kept in
//! step so that an earlier release still running beside this one (a rolling
//! upgrade) outranks the new versions in turn.

use std::time::Duration;

use super::{eventually, instance, RedisServer};
use crate::store::{now_ms, Session, Store};

async fn query<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await.expect("redis command")
}

fn version(record: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(record).expect("record json");
    v["v"].as_u64().expect("numeric v")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_earlier_releases_are_read_and_outranked_both_ways() {
    let server = RedisServer::start();
    let mut c = server.client().await;
    let t = now_ms();
    let old = format!(r#"{{"v":41,"backend":"be1","since":{t},"last_seen":{t}}}"#);
    query::<()>(&mut c, &["SET", "tt:ver", "41"]).await;
    query::<()>(&mut c, &["SET", "tt:s:app:k", &old, "PX", "60000"]).await;

    let (a, _) = instance(server.port).await;
    let (b, _) = instance(server.port).await;
    let (pa, pb) = (a.pool("app"), b.pool("app"));
    // Both listen before anything is published.
    for _ in 0..400 {
        let (_, n): (String, i64) = query(&mut c, &["PUBSUB", "NUMSUB", "tt:events"]).await;
        if n >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in [&pa, &pb] {
        let hit = p.insert_if_absent("k", "be2".into()).await.expect("insert");
        assert_eq!(
            &*hit.backend, "be1",
            "the earlier release's owner is adopted"
        );
    }

    // A re-pin: a clock version, above the old one, and the counter follows it.
    assert!(pa
        .compare_and_set("k", "be1", Session::new("be2".into()))
        .await
        .expect("cas"));
    let stored: String = query(&mut c, &["GET", "tt:s:app:k"]).await;
    let v = version(&stored);
    assert!(v >= t, "a clock version: {v} (now {t})");
    let counter: u64 = query(&mut c, &["GET", "tt:ver"]).await;
    assert_eq!(counter, v, "the legacy counter is kept in step");
    eventually("B follows A's re-pin", Duration::from_secs(1), || {
        pb.lookup("k").is_some_and(|h| &*h.backend == "be2")
    })
    .await;

    // An earlier release's change, as its script made it: INCR, SET, PUBLISH.
    let next: u64 = query(&mut c, &["INCR", "tt:ver"]).await;
    assert!(next > v);
    let rec = format!(r#"{{"v":{next},"backend":"be3","since":{t},"last_seen":{t}}}"#);
    query::<()>(&mut c, &["SET", "tt:s:app:k", &rec, "PX", "60000"]).await;
    let msg = format!("{{\"i\":\"old\",\"t\":\"set\",\"p\":\"app\",\"k\":\"k\"}}\n{rec}");
    query::<i64>(&mut c, &["PUBLISH", "tt:events", &msg]).await;
    for (name, p) in [("A", &pa), ("B", &pb)] {
        eventually(
            &format!("{name} follows the earlier release"),
            Duration::from_secs(1),
            || p.lookup("k").is_some_and(|h| &*h.backend == "be3"),
        )
        .await;
    }
    // And the next change of this release outranks that one again.
    assert!(pb
        .compare_and_set("k", "be3", Session::new("be1".into()))
        .await
        .expect("cas"));
    let stored: String = query(&mut c, &["GET", "tt:s:app:k"]).await;
    assert!(version(&stored) > next);
    eventually("A follows B", Duration::from_secs(1), || {
        pa.lookup("k").is_some_and(|h| &*h.backend == "be1")
    })
    .await;
    // A delete is versioned the same way: both caches forget the key.
    assert!(pa.delete("k").await.expect("delete"));
    eventually("B forgets the key", Duration::from_secs(1), || {
        pb.lookup("k").is_none()
    })
    .await;
}
