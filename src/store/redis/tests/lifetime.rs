//! Session lifetimes in Redis (TTL refreshed while live, idle ones expire) and
//! what `open` says about settings Redis rejects.

use std::time::Duration;

use redis::AsyncCommands;
use tempfile::TempDir;

use super::{config, instance, instance_with, redis_config, store_up, RedisServer};
use crate::metrics::Metrics;
use crate::store::{LiveGuard, RedisStore, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_are_refreshed_idle_ones_expire() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(1000);
    let (a, ma) = instance_with(config(redis_config(server.port), ttl), 100).await;
    let pa = a.pool("app");
    let live = pa
        .insert_if_absent("live", "b1".into())
        .await
        .expect("insert");
    let _guard = LiveGuard::new(live.meta);
    pa.insert_if_absent("idle", "b1".into())
        .await
        .expect("insert");
    let mut c = server.client().await;
    // Refresh batches must reload scripts Redis forgot.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .expect("flush");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // On a loaded machine a refresh may miss the 200 ms timeout: the store then
    // counts Redis as down and writes the key back once it answers again.
    let mut ttl_live: i64 = -2;
    for _ in 0..100 {
        ttl_live = c.pttl("tt:s:app:live").await.expect("pttl");
        if ttl_live > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ttl_live > 0, "a live session keeps its key: {ttl_live}");
    let idle: Option<String> = c.get("tt:s:app:idle").await.expect("get");
    assert!(idle.is_none(), "an idle session expires in Redis");
    assert!(pa.lookup("idle").is_none(), "and leaves the cache");
    assert_eq!((pa.len(), pa.sessions_of("b1")), (1, 1));
    assert!(a.stats().expirations >= 1);
    // Refreshes are batched and throttled: a few per second, not one per hit.
    for _ in 0..1000 {
        assert!(pa.lookup("live").is_some());
    }
    let touches = ma
        .store_operations
        .with_label_values(&["redis", "touch", "ok"])
        .get();
    assert!((1..=30).contains(&touches), "{touches} touch batches");
    let s = pa.get("live").await.expect("get").expect("live");
    assert!(s.last_seen > s.since, "last_seen moves while live");
}

#[tokio::test]
async fn wrong_password_and_missing_database_are_clear_errors() {
    let dir = TempDir::new().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let server = RedisServer::start_with(port, dir, &["--requirepass", "s3cret"]);
    let open = |password: Option<&str>, db: i64| {
        let mut rc = redis_config(server.port);
        rc.password = password.map(str::to_owned);
        rc.db = db;
        async move {
            let cfg = config(rc, Duration::from_secs(60));
            RedisStore::open(&cfg, std::sync::Arc::new(Metrics::new())).await
        }
    };
    let want = format!("redis at 127.0.0.1:{port}: authentication failed");
    for password in [Some("wrong"), None] {
        match open(password, 0).await {
            Err(StoreError::Config(m)) => assert!(m.starts_with(&want), "{m}"),
            Err(e) => panic!("{password:?}: {e}"),
            Ok(_) => panic!("{password:?}: opened"),
        }
    }
    match open(Some("s3cret"), 99).await {
        Err(e) => assert_eq!(
            e.to_string(),
            format!("redis at 127.0.0.1:{port}: database 99 does not exist")
        ),
        Ok(_) => panic!("db 99 opened"),
    }
    let store = open(Some("s3cret"), 1).await.expect("right password");
    assert!(store.is_up());
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_not_an_error() {
    let server = RedisServer::start();
    let port = server.port;
    drop(server.kill());
    let (a, ma) = instance(port).await;
    assert_eq!(store_up(&ma), 0);
    let hit = a
        .pool("app")
        .insert_if_absent("k", "b1".into())
        .await
        .expect("insert");
    assert_eq!(&*hit.backend, "b1");
    assert_eq!(a.queued(), 1);
    // Signed with a secret of its own for now, never an error.
    assert_eq!(a.cookie_secret().await.expect("secret").len(), 32);
}

#[tokio::test]
async fn background_tasks_end_with_the_store() {
    let server = RedisServer::start();
    let (a, _) = instance(server.port).await;
    let pool = a.pool("app");
    pool.insert_if_absent("k", "b1".into())
        .await
        .expect("insert");
    let weak = std::sync::Arc::downgrade(&a.shared);
    drop((a, pool));
    super::eventually("store dropped", Duration::from_secs(3), || {
        weak.upgrade().is_none()
    })
    .await;
    // No subscriber left on the events channel either.
    let mut c = server.client().await;
    for _ in 0..300 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("tt:events")
            .query_async(&mut c)
            .await
            .expect("numsub");
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the subscriber outlived the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_is_found_through_sentinels() {
    let master = RedisServer::start();
    let sentinel = RedisServer::sentinel("mymaster", master.port);
    let mut rc = redis_config(0);
    rc.host = String::new();
    rc.sentinel = Some(crate::config::RedisSentinel {
        master: "mymaster".into(),
        // The first node is down: the next one answers.
        nodes: vec![("127.0.0.1".into(), 1), ("127.0.0.1".into(), sentinel.port)],
    });
    let (a, _) = instance_with(config(rc.clone(), Duration::from_secs(60)), 10).await;
    assert!(a.is_up());
    a.pool("app")
        .insert_if_absent("k", "b1".into())
        .await
        .expect("insert");
    let mut c = master.client().await;
    let stored: Option<String> = c.get("tt:s:app:k").await.expect("get");
    assert!(stored.is_some_and(|s| s.contains("\"b1\"")));
    rc.sentinel = Some(crate::config::RedisSentinel {
        master: "nosuch".into(),
        nodes: vec![("127.0.0.1".into(), sentinel.port)],
    });
    // An unknown master is what sentinels also say while the master is down:
    // not an error at start, the store keeps trying.
    let (b, mb) = instance_with(config(rc, Duration::from_secs(60)), 10).await;
    assert!(!b.is_up());
    assert_eq!(store_up(&mb), 0);
}
