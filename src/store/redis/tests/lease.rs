//! Leases (the VIP's leadership) on a real Redis: one holder at a time, only
//! the holder renews or releases, expiry, takeover requests.

use std::time::Duration;

use super::{instance, RedisServer};
use crate::store::lease::{Acquire, Leases, Renew};

const TTL: Duration = Duration::from_millis(400);

#[tokio::test]
async fn one_holder_and_only_it_renews_or_releases() {
    let redis = RedisServer::start();
    let (a, _) = instance(redis.port).await;
    let (b, _) = instance(redis.port).await;
    assert_eq!(
        a.acquire("vip", "tok-a 100 a", TTL).await.unwrap(),
        Acquire::Taken
    );
    // Taking it again is a renewal of our own.
    assert_eq!(
        a.acquire("vip", "tok-a 100 a", TTL).await.unwrap(),
        Acquire::Taken
    );
    match b.acquire("vip", "tok-b 100 b", TTL).await.unwrap() {
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
        !b.release("vip", "tok-b 100 b").await.unwrap(),
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
    assert!(a.release("vip", "tok-a 100 a").await.unwrap());
    assert_eq!(
        b.acquire("vip", "tok-b 200 b", TTL).await.unwrap(),
        Acquire::Taken
    );
}

#[tokio::test]
async fn an_unrenewed_lease_expires_and_is_lost() {
    let redis = RedisServer::start();
    let (a, _) = instance(redis.port).await;
    let (b, _) = instance(redis.port).await;
    assert_eq!(a.acquire("vip", "a", TTL).await.unwrap(), Acquire::Taken);
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(b.acquire("vip", "b", TTL).await.unwrap(), Acquire::Taken);
    assert_eq!(
        a.renew("vip", "a", TTL, 0).await.unwrap(),
        Renew::Lost,
        "expired and taken"
    );
    // Without replicas, a renewal that must reach one is not confirmed.
    assert!(
        b.renew("vip", "b", TTL, 1).await.is_err(),
        "WAIT 1 with no replica"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hold() {
    let redis = RedisServer::start();
    let (a, _) = instance(redis.port).await;
    assert_eq!(a.acquire("vip", "a", TTL).await.unwrap(), Acquire::Taken);
    drop(redis);
    assert!(a.renew("vip", "a", TTL, 0).await.is_err());
    assert!(a.acquire("vip", "a", TTL).await.is_err());
}
