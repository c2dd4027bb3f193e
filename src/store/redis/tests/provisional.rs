//! Provisional sessions with the Redis store: never a Redis key (not even by
//! the write-back after an outage) until the cookie comes back; then written
//! insert-if-absent, so the instance that sees the cookie first decides and
//! the other adopts its owner, keeping its live connections.

use std::time::Duration;

use super::{instance, RedisServer};
use crate::store::{LiveGuard, Store};

async fn session_keys(server: &RedisServer) -> Vec<String> {
    let mut c = server.client().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("tt:s:*")
        .query_async(&mut c)
        .await
        .expect("keys");
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_sessions_reach_redis_only_when_their_cookie_comes_back() {
    let server = RedisServer::start();
    let (a, _) = instance(server.port).await;
    let (b, _) = instance(server.port).await;
    let (pa, pb) = (a.pool("app"), b.pool("app"));
    for i in 0..50 {
        let hit = pa.insert_provisional(&format!("p{i}"), "b1".into());
        assert!(hit.provisional);
    }
    assert!(
        session_keys(&server).await.is_empty(),
        "no Redis key for a provisional session"
    );
    assert_eq!((pa.len(), pa.provisional_len()), (0, 50));

    // p3's cookie comes back to B first: B never saw it, records the hash pick.
    assert!(pb.confirm("p3").await.expect("confirm").is_none());
    pb.insert_if_absent("p3", "b1".into())
        .await
        .expect("insert");
    // Then to A, where a connection of it is still open: A adopts Redis's owner
    // and the connection still pins the session.
    let pinned = pa.lookup("p3").expect("provisional");
    let _guard = LiveGuard::new(pinned.meta.clone());
    let hit = pa.confirm("p3").await.expect("confirm").expect("known");
    assert!(!hit.provisional && &*hit.backend == "b1");
    assert_eq!(hit.meta.live(), 1);
    // A sees p4's cookie first: written for everyone.
    assert_eq!(
        &*pa.confirm("p4")
            .await
            .expect("confirm")
            .expect("known")
            .backend,
        "b1"
    );
    assert_eq!(
        &*pb.insert_if_absent("p4", "b9".into())
            .await
            .expect("adopt")
            .backend,
        "b1"
    );
    // B recorded another owner for p5 first (its ring differed): A adopts it.
    pb.insert_if_absent("p5", "b2".into())
        .await
        .expect("insert");
    assert_eq!(
        &*pa.confirm("p5")
            .await
            .expect("confirm")
            .expect("known")
            .backend,
        "b2"
    );
    assert_eq!(
        session_keys(&server).await,
        ["tt:s:app:p3", "tt:s:app:p4", "tt:s:app:p5"]
    );
    assert_eq!(a.stats().provisional.confirmed, 3);

    // Redis loses everything; the write-back restores what A confirmed, nothing more.
    let mut c = server.client().await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut c)
        .await
        .expect("flushall");
    a.shared.request_revalidate(true);
    let start = std::time::Instant::now();
    while session_keys(&server).await.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never written back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        session_keys(&server).await.len(),
        3,
        "{:?}",
        session_keys(&server).await
    );
}
