//! Leases (the VIP's leadership) on a real Redis: one holder at a time, only
//! the holder renews or releases, expiry, takeover requests, how the previous
//! hold ended, and confirmation on a real replica on the leases' own
//! connection.

use std::time::{Duration, Instant};

use super::{instance, ops, redis_config, store_up, RedisServer};
use crate::store::lease::{Acquire, Leases, Previous, Renew};
use crate::store::Store;

const TTL: Duration = Duration::from_millis(400);

fn taken(previous: Previous) -> Acquire {
    Acquire::Taken { previous }
}

#[tokio::test]
async fn one_holder_and_only_it_renews_or_releases() {
    let redis = RedisServer::start();
    let (a, _) = instance(redis.port).await;
    let (b, _) = instance(redis.port).await;
    assert_eq!(
        a.acquire("vip", "tok-a 100 a", TTL, 0).await.unwrap(),
        taken(Previous::Lapsed)
    );
    // Taking it again is a renewal of our own.
    assert_eq!(
        a.acquire("vip", "tok-a 100 a", TTL, 0).await.unwrap(),
        taken(Previous::Ours)
    );
    match b.acquire("vip", "tok-b 100 b", TTL, 0).await.unwrap() {
        Acquire::Held { holder, left } => {
            assert_eq!(holder, "tok-a 100 a");
            assert!(left > Duration::ZERO && left <= TTL, "{left:?}");
        }
        other => panic!("b took a held lease: {other:?}"),
    }
    assert_eq!(
        b.renew("vip", "tok-b 100 b", TTL, 0).await.unwrap(),
        Renew::Lost
    );
    assert!(
        !b.release("vip", "tok-b 100 b", true).await.unwrap(),
        "not b's to release"
    );
    assert_eq!(
        a.renew("vip", "tok-a 100 a", TTL, 0).await.unwrap(),
        Renew::Extended { wanted_by: None }
    );
    assert_eq!(
        b.holder("vip").await.unwrap().as_deref(),
        Some("tok-a 100 a")
    );

    // A takeover request reaches the holder with its next renewal.
    b.request("vip", "tok-b 200 b", TTL).await.unwrap();
    assert_eq!(
        a.renew("vip", "tok-a 100 a", TTL, 0).await.unwrap(),
        Renew::Extended {
            wanted_by: Some("tok-b 200 b".into())
        }
    );
    assert!(a.release("vip", "tok-a 100 a", true).await.unwrap());
    assert_eq!(
        b.acquire("vip", "tok-b 200 b", TTL, 0).await.unwrap(),
        taken(Previous::Released)
    );
}

/// The next holder learns whether it may use what the lease guards at once:
/// only after a clean release, and only the first taker after it.
#[tokio::test]
async fn the_taker_learns_how_the_previous_hold_ended() {
    let redis = RedisServer::start();
    let (a, _) = instance(redis.port).await;
    let (b, _) = instance(redis.port).await;
    assert_eq!(
        a.acquire("vip", "a", TTL, 0).await.unwrap(),
        taken(Previous::Lapsed)
    );
    assert!(a.release("vip", "a", false).await.unwrap());
    assert_eq!(
        b.acquire("vip", "b", TTL, 0).await.unwrap(),
        taken(Previous::Lapsed),
        "released without cleaning up"
    );
    assert!(b.release("vip", "b", true).await.unwrap());
    assert_eq!(
        a.acquire("vip", "a", TTL, 0).await.unwrap(),
        taken(Previous::Released)
    );
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(
        b.acquire("vip", "b", TTL, 0).await.unwrap(),
        taken(Previous::Lapsed),
        "expired: the clean mark was a's to consume"
    );
}

#[tokio::test]
async fn an_unrenewed_lease_expires_and_is_lost() {
    let redis = RedisServer::start();
    let (a, _) = instance(redis.port).await;
    let (b, _) = instance(redis.port).await;
    assert_eq!(
        a.acquire("vip", "a", TTL, 0).await.unwrap(),
        taken(Previous::Lapsed)
    );
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(
        b.acquire("vip", "b", TTL, 0).await.unwrap(),
        taken(Previous::Lapsed)
    );
    assert_eq!(
        a.renew("vip", "a", TTL, 0).await.unwrap(),
        Renew::Lost,
        "expired and taken"
    );
    // No replica is connected (a master just promoted may have none): there
    // is nothing to wait for, and waiting would fail every renewal.
    assert_eq!(
        b.renew("vip", "b", TTL, 1).await.unwrap(),
        Renew::Extended { wanted_by: None }
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hold() {
    let redis = RedisServer::start();
    let (a, _) = instance(redis.port).await;
    assert_eq!(
        a.acquire("vip", "a", TTL, 0).await.unwrap(),
        taken(Previous::Lapsed)
    );
    drop(redis);
    assert!(a.renew("vip", "a", TTL, 0).await.is_err());
    assert!(a.acquire("vip", "a", TTL, 0).await.is_err());
}

/// A replica of `master`, once the master counts it online.
async fn replica_of(master: &RedisServer) -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let master_port = master.port.to_string();
    let replica = RedisServer::start_with(
        port,
        tempfile::TempDir::new().expect("tempdir"),
        &["--replicaof", "127.0.0.1", &master_port],
    );
    let mut c = master.client().await;
    let t0 = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .expect("info");
        if info.contains("state=online") {
            return replica;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "replica not online: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With a real replica `WAIT` gets its acknowledgement. With the replica
/// stopped, renewals fail (counted as `unacked`) within the command timeout,
/// while the store stays up and its session commands, running meanwhile, are
/// not held up behind the `WAIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_fails_renewals_not_the_store() {
    let master = RedisServer::start();
    let replica = replica_of(&master).await;
    let (store, metrics) = instance(master.port).await;
    let limit = redis_config(master.port).command_timeout;
    assert_eq!(
        store
            .acquire("vip", "a", Duration::from_secs(30), 1)
            .await
            .unwrap(),
        taken(Previous::Lapsed)
    );
    assert_eq!(
        store
            .renew("vip", "a", Duration::from_secs(30), 1)
            .await
            .unwrap(),
        Renew::Extended { wanted_by: None },
        "the replica acknowledged"
    );
    assert_eq!(ops(&metrics, "lease_renew", "ok"), 1);

    replica.pause();
    let renewing = {
        let store = store.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = store.renew("vip", "a", Duration::from_secs(30), 1).await;
            (r, t0.elapsed())
        })
    };
    // Meanwhile (the WAIT blocks its connection inside Redis for half the
    // command timeout) sessions go to Redis and back at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pool = store.pool("app");
    for i in 0..5 {
        let t0 = Instant::now();
        let s = pool
            .insert_if_absent(&format!("k{i}"), "b1".into())
            .await
            .expect("insert");
        assert_eq!(&*s.backend, "b1");
        assert!(
            t0.elapsed() < Duration::from_millis(300),
            "a session command waited {:?} behind the lease's WAIT",
            t0.elapsed()
        );
    }
    let (renewed, took) = renewing.await.expect("task");
    let e = renewed.expect_err("a renewal no replica acknowledged counts");
    assert!(e.to_string().contains("acknowledged by 0 of 1"), "{e}");
    assert!(
        took < limit,
        "the WAIT ran into the command timeout: {took:?}"
    );
    assert_eq!(ops(&metrics, "lease_renew", "unacked"), 1);
    assert!(
        store.is_up(),
        "a missing acknowledgement marked the store down"
    );
    assert_eq!(store_up(&metrics), 1);
    let mut c = master.client().await;
    let kept: Option<String> = redis::cmd("GET")
        .arg("tt:s:app:k4")
        .query_async(&mut c)
        .await
        .expect("get");
    assert!(kept.is_some(), "the session written meanwhile is in Redis");

    // Taking a lease no replica confirms does not count either.
    let e = store
        .acquire("vip2", "a", TTL, 1)
        .await
        .expect_err("unconfirmed take");
    assert!(e.to_string().contains("acknowledged"), "{e}");

    // The replica back: renewals count again, on the same connection.
    replica.resume();
    let t0 = Instant::now();
    loop {
        match store.renew("vip", "a", Duration::from_secs(30), 1).await {
            Ok(r) => {
                assert_eq!(r, Renew::Extended { wanted_by: None });
                break;
            }
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(5), "{e}"),
        }
    }
    assert!(store.is_up());
}
