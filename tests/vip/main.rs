//! The virtual IP (issue #7) on a real network: two tether nodes share
//! 198.18.0.100 through a lease in a real redis-server; the client, the nodes,
//! the backends and Redis are network namespaces on a bridge
//! (`tests/common/netns/`). Each node has its own link to Redis, so one can
//! be cut from Redis alone.
//!
//! `owners.rs`: leaders that cannot hand over (killed, stopped) and nodes
//! that look alike; `handover.rs`: SIGTERM, a cut from Redis, preemption,
//! the admin API, an upgrade; `takeover.rs`: how fast SIGKILLed leaders are
//! replaced at a 1 s lease (issue 15).
//!
//! The feature tests only use the config text, the admin API (`/api/vip`,
//! `/api/vip/release`, `/metrics`), the addresses on the interfaces and what a
//! client sees: no library type. `lab_self_test` checks the lab itself
//! (a tether without `vip:`).
//!
//! Everything here needs root (namespaces); without it the tests fail saying
//! so, they never pass silently. CI runs them as root. Each test is bounded
//! (`TEST_LIMIT`) and removes its namespaces and processes even when it fails.

#[path = "../common/mod.rs"]
mod common;
mod handover;
mod owners;
mod takeover;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::backend_of;
use common::netns::{
    self, backends_yaml, sock, Backend, Browser, Lab, NodeTether, Redis, CLIENT_IP, VIP,
};

/// Every test's body (after the lab is built) ends within this.
const TEST_LIMIT: Duration = Duration::from_secs(30);
/// The lease and renewal the nodes are configured with.
const LEASE: Duration = Duration::from_secs(2);
const RENEW: Duration = Duration::from_millis(600);
/// A client is served again this soon after the leader dies: the lease, then
/// the 1.1 s a dead leader's copy of the address may still live
/// (`src/vip/lifetime.rs`), then the announcement...
const TAKEOVER: Duration = Duration::from_millis(3500);
/// ...and the standby owns the address this soon after a graceful stop or a release.
const HANDOVER: Duration = Duration::from_secs(1);
const WEB: u16 = 8080;
const TCP: u16 = 9000;
/// Extra client addresses: one TCP (source IP) session each, plus CLIENT_IP.
const CLIENT_EXTRA: [&str; 2] = ["198.18.0.31", "198.18.0.32"];
/// Address sampling period (issue #7: "sample every 50 ms").
const SAMPLE: Duration = Duration::from_millis(50);
/// Sampling period while a leader dies or stops (issue #13: 20-50 ms).
const FINE_SAMPLE: Duration = Duration::from_millis(20);

async fn bounded<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(TEST_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("test not done within {TEST_LIMIT:?}"),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A node's config: the VIP on `eth0`, lease 2 s / renew 600 ms, node name
/// `node-a` / `node-b`, `vip_extra` appended inside `vip: { ... }` (like
/// `", priority: 200, preempt: true"`), the shared Redis over the node's own
/// link, and two listeners bound to the VIP: `web` (HTTP, inserted cookie)
/// and `tcp` (L4, source IP).
fn node_yaml(lab: &Lab, node: &str, backends: &[Backend], vip_extra: &str) -> String {
    node_yaml_timed(lab, node, backends, "lease: 2s, renew: 600ms", vip_extra)
}

/// `node_yaml` with `timing` (like `"lease: 1s"`) instead of lease 2 s / renew 600 ms.
fn node_yaml_timed(
    lab: &Lab,
    node: &str,
    backends: &[Backend],
    timing: &str,
    vip_extra: &str,
) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         vip: {{ address: {VIP}/24, interface: eth0, {timing}, name: {name}{vip_extra} }}\n\
         store: {{ kind: redis, redis: {{ url: \"{url}\", prefix: tether, command_timeout: 200ms, connect_timeout: 500ms }} }}\n\
         pools:\n  app:\n    backends:\n{list}\
         listeners:\n\
         \x20 - {{ name: web, bind: \"{VIP}:{WEB}\", protocol: http, pool: app, affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }} }}\n\
         \x20 - {{ name: tcp, bind: \"{VIP}:{TCP}\", protocol: tcp, pool: app, affinity: {{ key: source_ip }} }}\n",
        name = netns::host(node),
        url = lab.redis_url(node),
        list = backends_yaml(backends),
    )
}

/// Redis and three whoami backends.
fn infra(lab: &Lab) -> (Redis, Vec<Backend>) {
    (lab.redis(), lab.backends(3))
}

/// Start `first`, wait until it leads and has the address, then start `second`
/// and wait until it is a standby that knows who leads.
async fn leader_then_standby(
    lab: &Lab,
    first: (&str, &str),
    second: (&str, &str),
) -> (NodeTether, NodeTether) {
    let l = lab.tether(first.0, first.1);
    l.wait_role("leader", LEASE + RENEW).await;
    lab.wait_address(first.0, VIP, true, Duration::from_secs(1))
        .await;
    let s = lab.tether(second.0, second.1);
    wait_holder(&s, l.host, LEASE).await;
    assert_eq!(s.role().await, "standby");
    assert!(!lab.has_address(second.0, VIP), "the standby has the VIP");
    (l, s)
}

/// Redis, three backends, node-a leading and node-b standing by, both on the
/// default VIP settings. Everything returned must live as long as the test.
async fn a_leads_b_stands_by(lab: &Lab) -> (Redis, Vec<Backend>, NodeTether, NodeTether) {
    let (redis, backends) = infra(lab);
    let (ya, yb) = (
        node_yaml(lab, "a", &backends, ""),
        node_yaml(lab, "b", &backends, ""),
    );
    let (a, b) = leader_then_standby(lab, ("a", &ya), ("b", &yb)).await;
    (redis, backends, a, b)
}

/// Both nodes' logs, for failure messages (`a` and `b` in either order).
fn both_logs(a: &NodeTether, b: &NodeTether) -> String {
    format!(
        "--- {}:\n{}\n--- {}:\n{}",
        a.host,
        a.log_text(),
        b.host,
        b.log_text()
    )
}

/// Poll `GET /api/vip` on `t` until its `holder` is `holder`.
async fn wait_holder(t: &NodeTether, holder: &str, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = t.vip().await;
        if v["holder"] == holder {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{} does not see {holder} as the holder after {limit:?}: {v}\n{}",
            t.host,
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The client's sessions: cookie sessions over HTTP and source-IP sessions
/// over TCP, each with the backend it is pinned to.
struct Sessions {
    web: Vec<(Browser, String)>,
    tcp: Vec<(Browser, String)>,
}

impl Sessions {
    /// Open 3 cookie sessions and 3 source-IP sessions through the VIP, each
    /// checked to stick (a second request lands on the same backend).
    async fn open(lab: &Lab) -> Sessions {
        for a in CLIENT_EXTRA {
            lab.add_address("client", &format!("{a}/24"));
        }
        let mut web = Vec::new();
        for _ in 0..3 {
            let mut b = lab.browser("client");
            let r = b
                .get(sock(VIP, WEB), "/")
                .await
                .expect("GET through the VIP");
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(b.cookie("TETHER").is_some(), "no TETHER cookie: {r:?}");
            let id = backend_of(&r);
            let again = backend_of(&b.get(sock(VIP, WEB), "/").await.unwrap());
            assert_eq!(again, id, "cookie session does not stick");
            web.push((b, id));
        }
        let mut tcp = Vec::new();
        for src in [CLIENT_IP].into_iter().chain(CLIENT_EXTRA) {
            let mut b = lab.browser("client").bound_to(src);
            let r = b
                .get(sock(VIP, TCP), "/")
                .await
                .expect("TCP through the VIP");
            assert_eq!(r.status, 200, "{}", r.text());
            let id = backend_of(&r);
            let again = backend_of(&b.get(sock(VIP, TCP), "/").await.unwrap());
            assert_eq!(again, id, "source-IP session from {src} does not stick");
            tcp.push((b, id));
        }
        Sessions { web, tcp }
    }

    /// Every session lands on its backend again (new connections, one try each).
    async fn check(&mut self, when: &str) {
        for (b, id) in self.web.iter_mut().chain(self.tcp.iter_mut()) {
            let port = if b.src.is_some() { TCP } else { WEB };
            let r = b
                .get(sock(VIP, port), "/")
                .await
                .unwrap_or_else(|e| panic!("{when}: session to {id} (port {port}) failed: {e}"));
            assert_eq!(r.status, 200, "{when}: {}", r.text());
            assert_eq!(
                &backend_of(&r),
                id,
                "{when}: the session moved (port {port}, src {:?})",
                b.src
            );
        }
    }
}

/// The lab itself, with today's binary (no `vip:`): Redis reachable from each
/// node over its own link (and cut alone), whoami reachable from the client,
/// a tether in node-a serving the client on node-a's own address, the address
/// sampler, a LAN link going down and up, kill -9, and a teardown that leaves
/// no namespace and no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_self_test() {
    let lab = Lab::new();
    let id = lab.id.clone();
    let pids = bounded(async {
        assert_eq!(lab.namespaces().len(), 6, "{:?}", lab.namespaces());
        for who in ["client", "a", "b", "backend", "redis", "lan"] {
            let lo = lab.exec(who, "ip", &["-o", "link", "show", "lo"]);
            assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"), "lo down in {who}");
        }
        assert!(lab.has_address("a", netns::NODE_A_IP));
        assert!(!lab.has_address("a", netns::NODE_B_IP));

        // Redis, over each node's own link; cutting a's link leaves b's.
        let redis = lab.redis();
        let redis_pid = redis.proc.pid();
        for node in ["a", "b"] {
            let r = lab.redis_from(node, &["PING"]).expect("redis from the node");
            assert!(r.starts_with("+PONG"), "{node}: {r:?}");
        }
        assert!(
            lab.connect_std("client", netns::sock("198.19.1.1", 6379), Duration::from_millis(300)).is_err(),
            "the client reaches Redis: it must only be on the nodes' links"
        );
        lab.cut_redis("a");
        assert!(lab.redis_from("a", &["PING"]).is_err(), "a still reaches Redis when cut");
        assert!(lab.redis_from("b", &["PING"]).unwrap().starts_with("+PONG"));
        lab.restore_redis("a");
        let start = Instant::now();
        while lab.redis_from("a", &["PING"]).is_err() {
            assert!(start.elapsed() < Duration::from_secs(3), "a cannot reach Redis after restore");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(redis.command(&["SET", "k", "v"]).unwrap().starts_with("+OK"));
        assert_eq!(lab.redis_from("b", &["GET", "k"]).unwrap(), "$1\r\nv\r\n");

        // Backends, from the client.
        let backends = lab.backends(2);
        let backend_pid = backends[0].proc.pid();
        let r = lab
            .http_get("client", backends[0].addr, "/")
            .await
            .expect("whoami from the client");
        assert_eq!(backend_of(&r), "b1");
        assert!(
            lab.http_get("client", sock("127.0.0.1", 9001), "/").await.is_err(),
            "the backend's port must not be on the client's own loopback"
        );

        // tether in node-a, on node-a's address.
        let yaml = format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}\n\
             pools:\n  app:\n    backends:\n{}\
             listeners:\n\
             \x20 - {{ name: web, bind: \"{a}:{WEB}\", protocol: http, pool: app, affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }} }}\n\
             \x20 - {{ name: tcp, bind: \"{a}:{TCP}\", protocol: tcp, pool: app, affinity: {{ key: source_ip }} }}\n",
            backends_yaml(&backends),
            a = netns::NODE_A_IP,
        );
        let mut t = lab.tether("a", &yaml);
        let tether_pid = t.pid();
        assert_eq!(t.addr("web"), sock(netns::NODE_A_IP, WEB));
        let web = sock(netns::NODE_A_IP, WEB);
        let mut browser = lab.browser("client");
        let r = browser.get(web, "/").await.expect("client -> tether in node-a");
        assert_eq!(r.status, 200, "{}", r.text());
        let pinned = backend_of(&r);
        assert!(browser.cookie("TETHER").is_some(), "{r:?}");
        for _ in 0..3 {
            assert_eq!(backend_of(&browser.get(web, "/").await.unwrap()), pinned);
        }
        let mut tcp = lab.browser("client").bound_to(CLIENT_IP);
        let r = tcp.get(sock(netns::NODE_A_IP, TCP), "/").await.expect("tcp listener");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["host"], format!("{}:{TCP}", netns::NODE_A_IP));
        let pools = t.admin("GET", "/api/pools").await.expect("admin from inside node-a");
        assert_eq!(pools.status, 200, "{}", pools.text());
        assert!(t.metrics().await.contains("tether_"));

        // Addresses: `ip` and the in-process sampler agree, and an overlap is seen.
        let watch = lab.watch_address(VIP, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
        lab.add_address("a", &format!("{VIP}/24"));
        assert!(lab.has_address("a", VIP));
        assert_eq!(lab.holders(VIP), ["a"]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        lab.add_address("b", &format!("{VIP}/24"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        lab.del_address("a", &format!("{VIP}/24"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        lab.del_address("b", &format!("{VIP}/24"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let samples = watch.stop();
        let tl = samples.timeline();
        assert!(samples.both() >= 3, "overlap not seen: {tl}");
        let first_a = samples.first(Duration::ZERO, |s| s.a).expect(&tl);
        let first_b = samples.first(Duration::ZERO, |s| s.b).expect(&tl);
        assert!(first_a < first_b, "{tl}");
        let last = samples.0.last().expect(&tl);
        assert!(!last.a && !last.b, "{tl}");
        assert!(lab.holders(VIP).is_empty());

        // The node's LAN link: down cuts the client off, up brings it back.
        lab.link_down("a");
        assert!(browser.get(web, "/").await.is_err(), "served with node-a's link down");
        lab.link_up("a");
        let (r, _) = browser.get_within(web, "/", Duration::from_secs(5)).await.expect("link back up");
        assert_eq!(backend_of(&r), pinned);

        // kill -9: the tether process and a lab process.
        t.kill9();
        assert!(t.child.try_wait().unwrap().is_some());
        assert!(browser.get(web, "/").await.is_err(), "served after kill -9");
        lab.kill9(backends[1].proc.pid());
        assert!(!backends[1].proc.running());
        drop(backends);
        drop(redis);
        [redis_pid, backend_pid, tether_pid]
    })
    .await;

    drop(lab);
    assert!(
        netns::namespaces_of(&id).is_empty(),
        "namespaces left behind: {:?}",
        netns::namespaces_of(&id)
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
    }
}
