//! Two tether instances on one shared Redis store, whatever its topology
//! (Cluster, Sentinel, TLS): their config, sessions made through both in
//! turn, and the check that both instances and Redis agree on every owner.

use std::time::{Duration, Instant};

use super::redis_ha::{new_session, owner_via, Made};
use super::{backend_yaml, whoami, Client, Tether};

/// A config on `redis` (what goes inside `store.redis` besides the prefix and
/// timeouts: `url: ...`, `cluster: { nodes: ... }`, `sentinel: ...`).
pub fn yaml(b: &[whoami::Running], redis: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         store: {{ kind: redis, redis: {{ {redis}, prefix: t, command_timeout: 200ms, connect_timeout: 500ms }} }}\n\
         pools:\n  app:\n    health: {{ kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 100 }}\n    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n",
        backend_yaml(b)
    )
}

/// The Redis key of the session a cookie names (prefix `t`, pool `app`).
pub fn redis_key(cookie: &str) -> String {
    format!("t:s:app:{}", &cookie[..22])
}

pub async fn metrics(t: &Tether) -> String {
    Client::new(t.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text()
}

pub async fn store_up(t: &Tether) -> bool {
    metrics(t)
        .await
        .contains("tether_store_up{store=\"redis\"} 1")
}

pub async fn wait_store_up(t: &Tether, limit: Duration) {
    let t0 = Instant::now();
    while !store_up(t).await {
        assert!(
            t0.elapsed() < limit,
            "store not up within {limit:?}:\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` sessions made through the two instances in turn, each confirmed by
/// its cookie coming back through the other (only then is it in Redis).
pub async fn sessions(a: &Tether, b: &Tether, n: usize) -> Vec<Made> {
    let mut out = Vec::new();
    for i in 0..n {
        let (t, other) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let m = new_session(t.addr("web")).await.expect("new session");
        let owner = owner_via(other.addr("web"), &m.cookie).await;
        assert_eq!(
            owner.as_deref(),
            Ok(m.owner.as_str()),
            "the other instance agrees"
        );
        out.push(m);
    }
    out
}

/// Both instances route every session to its owner, and `stored(key)` (what
/// Redis holds) names that owner within `limit` (write-backs).
pub async fn all_agree(
    a: &Tether,
    b: &Tether,
    list: &[Made],
    limit: Duration,
    stored: impl Fn(&str) -> String,
) {
    let t0 = Instant::now();
    for m in list {
        for t in [a, b] {
            let owner = owner_via(t.addr("web"), &m.cookie).await;
            assert_eq!(owner.as_deref(), Ok(m.owner.as_str()), "{}", m.cookie);
        }
        loop {
            let value = stored(&redis_key(&m.cookie));
            if value.contains(&format!("\"backend\":\"{}\"", m.owner)) {
                break;
            }
            assert!(
                t0.elapsed() < limit,
                "session {} (made {:?} ago) not in Redis with owner {}: `{value}`",
                m.cookie,
                m.at.elapsed(),
                m.owner
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
