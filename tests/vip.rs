//! The virtual IP (issue #7) on a real network: two tether nodes share
//! 198.18.0.100 through a lease in a real redis-server; the client, the nodes,
//! the backends and Redis are network namespaces on a bridge
//! (`tests/common/netns.rs`). Each node has its own link to Redis, so one can
//! be cut from Redis alone.
//!
//! The feature tests only use the config text, the admin API (`/api/vip`,
//! `/api/vip/release`, `/metrics`), the addresses on the interfaces and what a
//! client sees: no library type. `lab_self_test` checks the lab itself
//! (a tether without `vip:`).
//!
//! Everything here needs root (namespaces); without it the tests fail saying
//! so, they never pass silently. CI runs them as root. Each test is bounded
//! (`TEST_LIMIT`) and removes its namespaces and processes even when it fails.

mod common;

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
/// What issue #7 promises: a client is served again this soon after a machine dies...
const TAKEOVER: Duration = Duration::from_secs(3);
/// ...and the standby owns the address this soon after a graceful stop or a release.
const HANDOVER: Duration = Duration::from_secs(1);
const WEB: u16 = 8080;
const TCP: u16 = 9000;
/// Extra client addresses: one TCP (source IP) session each, plus CLIENT_IP.
const CLIENT_EXTRA: [&str; 2] = ["198.18.0.31", "198.18.0.32"];
/// Address sampling period (issue #7: "sample every 50 ms").
const SAMPLE: Duration = Duration::from_millis(50);

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
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         vip: {{ address: {VIP}/24, interface: eth0, lease: 2s, renew: 600ms, name: {name}{vip_extra} }}\n\
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

/// Machine death of the leader (kill -9 and its LAN link down): the standby
/// owns the VIP and the client's next connection succeeds within 3 s, on the
/// same backend for every session (cookie over HTTP, source IP over TCP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_death_of_the_leader_moves_the_vip_and_keeps_sessions() {
    let lab = Lab::new();
    bounded(async {
        let (_redis, _backends, mut a, b) = a_leads_b_stands_by(&lab).await;
        let mut sessions = Sessions::open(&lab).await;

        let killed = Instant::now();
        a.kill9();
        lab.link_down("a");
        // The client's next connections: one cookie session and one TCP session, at once.
        let (web, tcp) = {
            let (w, t) = (&mut sessions.web[0], &mut sessions.tcp[0]);
            tokio::join!(
                w.0.get_within(sock(VIP, WEB), "/", TAKEOVER + Duration::from_secs(2)),
                t.0.get_within(sock(VIP, TCP), "/", TAKEOVER + Duration::from_secs(2)),
            )
        };
        let after = killed.elapsed();
        let (web, web_took) = web.unwrap_or_else(|e| panic!("HTTP after the death of node-a: {e}\n{}", b.log_text()));
        let (tcp, tcp_took) = tcp.unwrap_or_else(|e| panic!("TCP after the death of node-a: {e}\n{}", b.log_text()));
        assert!(
            web_took < TAKEOVER && tcp_took < TAKEOVER,
            "served again {web_took:?} (HTTP) / {tcp_took:?} (TCP) after the kill, not within {TAKEOVER:?}\n{}",
            b.log_text()
        );
        assert!(after < TAKEOVER + Duration::from_secs(2));
        eprintln!("machine death: served again after {web_took:?} (HTTP) / {tcp_took:?} (TCP)");
        assert_eq!(backend_of(&web), sessions.web[0].1, "the cookie session moved");
        assert_eq!(backend_of(&tcp), sessions.tcp[0].1, "the source-IP session moved");
        assert!(lab.has_address("b", VIP), "node-b serves without the address?");
        b.wait_role("leader", Duration::from_millis(500)).await;
        assert_eq!(b.vip().await["holder"], "node-b");
        assert_eq!(b.metric("tether_vip_leader").await, 1.0);
        sessions.check("after the takeover").await;
    })
    .await;
}

/// Process crash of the leader (kill -9, links up): the standby takes over
/// once the lease has run out. Restarted (as systemd would), tether on node-a
/// first removes the stale address it finds on its interface, and is standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_restarts_as_standby_and_removes_its_stale_address() {
    let lab = Lab::new();
    bounded(async {
        let (_redis, backends) = infra(&lab);
        let (ya, yb) = (
            node_yaml(&lab, "a", &backends, ""),
            node_yaml(&lab, "b", &backends, ""),
        );
        let (mut a, b) = leader_then_standby(&lab, ("a", &ya), ("b", &yb)).await;

        a.kill9();
        let took = lab
            .wait_address("b", VIP, true, LEASE + Duration::from_secs(2))
            .await;
        // The lease was renewed at most `renew` before the crash: it cannot have expired sooner.
        assert!(
            took + Duration::from_millis(200) >= LEASE - RENEW,
            "node-b took the VIP {took:?} after the crash: before node-a's lease could expire"
        );
        eprintln!("process crash: node-b has the VIP {took:?} after the kill");
        b.wait_role("leader", Duration::from_millis(500)).await;
        // Nobody removed node-a's copy: the precondition of the restart below.
        assert!(
            lab.has_address("a", VIP),
            "node-a's address vanished without its process"
        );

        let a = lab.tether("a", &ya);
        let removed = lab
            .wait_address("a", VIP, false, Duration::from_secs(1))
            .await;
        assert!(
            lab.has_address("b", VIP),
            "node-b lost the VIP when node-a restarted"
        );
        let v = wait_holder(&a, "node-b", LEASE).await;
        assert_eq!(v["role"], "standby", "{v}");
        assert_eq!(a.metric("tether_vip_leader").await, 0.0);
        assert_eq!(b.metric("tether_vip_leader").await, 1.0);

        // And it stays that way: node-a does not take the address back.
        let watch = lab.watch_address(VIP, SAMPLE);
        tokio::time::sleep(LEASE).await;
        let samples = watch.stop();
        assert!(
            samples.0.iter().all(|s| !s.a && s.b),
            "after the restart (stale address removed {removed:?} after ready): {}",
            samples.timeline()
        );
    })
    .await;
}

/// SIGTERM on the leader: it releases at once, the standby owns the VIP within 1 s,
/// and at no sampled moment do both have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_vip_over_within_a_second() {
    let lab = Lab::new();
    bounded(async {
        let (_redis, _backends, mut a, b) = a_leads_b_stands_by(&lab).await;
        let mut sessions = Sessions::open(&lab).await;

        let watch = lab.watch_address(VIP, SAMPLE);
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.terminate();
        let took = lab.wait_address("b", VIP, true, LEASE + Duration::from_secs(2)).await;
        eprintln!("SIGTERM: node-b has the VIP {took:?} after the signal");
        assert!(
            took <= HANDOVER,
            "node-b owned the VIP {took:?} after SIGTERM on node-a, not within {HANDOVER:?}\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "node-a did not exit on SIGTERM");
        assert!(!lab.has_address("a", VIP), "node-a left the address on its interface");
        b.wait_role("leader", Duration::from_millis(500)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let samples = watch.stop();
        assert_eq!(samples.both(), 0, "two owners: {}", samples.timeline());
        sessions.check("after the hand-over").await;
    })
    .await;
}

/// The leader cut from Redis (its link to Redis only): it drops the VIP before
/// its lease can expire, so before the standby acquires it. Sampled every 50 ms
/// for the whole test: never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_from_redis_drops_the_vip_before_the_standby_takes_it() {
    let lab = Lab::new();
    bounded(async {
        let watch = lab.watch_address(VIP, SAMPLE);
        let (_redis, _backends, a, b) = a_leads_b_stands_by(&lab).await;
        let mut sessions = Sessions::open(&lab).await;

        let cut_at = watch.start.elapsed();
        lab.cut_redis("a");
        let dropped = lab.wait_address("a", VIP, false, LEASE + Duration::from_secs(1)).await;
        assert!(
            dropped < LEASE,
            "node-a kept the VIP {dropped:?} after losing Redis: its lease ({LEASE:?}) may have expired"
        );
        let acquired = lab.wait_address("b", VIP, true, LEASE + Duration::from_secs(2)).await;
        eprintln!("cut from Redis: node-a dropped the VIP {dropped:?} after the cut, node-b had it {acquired:?} after that");
        b.wait_role("leader", Duration::from_millis(500)).await;
        a.wait_role("standby", Duration::from_millis(500)).await;
        assert_eq!(a.metric("tether_vip_leader").await, 0.0);
        sessions.check("after the leader lost Redis").await;

        // Redis comes back for node-a: it stays standby (no preemption), still never both.
        lab.restore_redis("a");
        wait_holder(&a, "node-b", LEASE + RENEW).await;
        tokio::time::sleep(LEASE).await;
        assert_eq!(lab.holders(VIP), ["b"]);

        let samples = watch.stop();
        let tl = samples.timeline();
        assert_eq!(samples.both(), 0, "two owners: {tl}");
        let a_gone = samples.first(cut_at, |s| !s.a).expect(&tl);
        let b_has = samples.first(cut_at, |s| s.b).expect(&tl);
        assert!(a_gone < b_has, "node-b had the VIP before node-a dropped it: {tl}");
    })
    .await;
}

/// `preempt: true`: node-b (priority 100) leads first; node-a (priority 200)
/// starts and takes the VIP within a few leases, never both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempt_on_lets_the_higher_priority_node_retake_the_vip() {
    let lab = Lab::new();
    bounded(async {
        let (_redis, backends) = infra(&lab);
        let ya = node_yaml(&lab, "a", &backends, ", priority: 200, preempt: true");
        let yb = node_yaml(&lab, "b", &backends, ", priority: 100, preempt: true");
        let b = lab.tether("b", &yb);
        b.wait_role("leader", LEASE + RENEW).await;
        lab.wait_address("b", VIP, true, Duration::from_secs(1))
            .await;
        let mut browser = lab.browser("client");
        browser
            .get_within(sock(VIP, WEB), "/", Duration::from_secs(2))
            .await
            .expect("via node-b");

        let watch = lab.watch_address(VIP, SAMPLE);
        let a = lab.tether("a", &ya);
        let took = lab.wait_address("a", VIP, true, 3 * LEASE).await;
        eprintln!("preempt: node-a has the VIP {took:?} after it was ready");
        a.wait_role("leader", Duration::from_millis(500)).await;
        b.wait_role("standby", Duration::from_millis(500)).await;
        assert!(!lab.has_address("b", VIP));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let samples = watch.stop();
        assert_eq!(
            samples.both(),
            0,
            "two owners (A took it {took:?} after ready): {}",
            samples.timeline()
        );
        wait_holder(&b, "node-a", LEASE).await;
        browser
            .get_within(sock(VIP, WEB), "/", Duration::from_secs(2))
            .await
            .expect("via node-a");
    })
    .await;
}

/// `preempt: false`: node-a (priority 200) starting after node-b (100) stays standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempt_off_keeps_the_current_leader() {
    let lab = Lab::new();
    bounded(async {
        let (_redis, backends) = infra(&lab);
        let ya = node_yaml(&lab, "a", &backends, ", priority: 200, preempt: false");
        let yb = node_yaml(&lab, "b", &backends, ", priority: 100, preempt: false");
        let (b, a) = leader_then_standby(&lab, ("b", &yb), ("a", &ya)).await;
        let watch = lab.watch_address(VIP, SAMPLE);
        tokio::time::sleep(3 * LEASE).await;
        let samples = watch.stop();
        assert!(
            samples.0.iter().all(|s| s.b && !s.a),
            "the VIP moved without preemption: {}",
            samples.timeline()
        );
        assert_eq!(a.role().await, "standby");
        assert_eq!(b.role().await, "leader");
    })
    .await;
}

/// `GET /api/vip`, `POST /api/vip/release` and the metrics agree with who has
/// the address, before and after a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_and_metrics_agree_with_the_address() {
    let lab = Lab::new();
    bounded(async {
        let started = unix_ms();
        let (_redis, _backends, a, b) = a_leads_b_stands_by(&lab).await;

        let va = a.vip().await;
        assert_eq!(va["address"], format!("{VIP}/24"), "{va}");
        assert_eq!(va["role"], "leader", "{va}");
        assert_eq!(va["holder"], "node-a", "{va}");
        let since = va["since"]
            .as_u64()
            .unwrap_or_else(|| panic!("since: {va}"));
        assert!(
            (started..=unix_ms()).contains(&since),
            "since {since} not in this test: {va}"
        );
        let vb = b.vip().await;
        assert_eq!(vb["address"], format!("{VIP}/24"), "{vb}");
        assert_eq!(
            (&vb["role"], &vb["holder"]),
            (&"standby".into(), &"node-a".into()),
            "{vb}"
        );
        assert_eq!(lab.holders(VIP), ["a"]);
        // The status page reads the same status from /api/pools.
        let pools = a.admin("GET", "/api/pools").await.unwrap().json();
        assert_eq!(pools["vip"]["role"], "leader", "{pools}");
        assert_eq!(a.metric("tether_vip_leader").await, 1.0);
        assert_eq!(b.metric("tether_vip_leader").await, 0.0);
        let ta = a.metric("tether_vip_transitions_total").await;
        let tb = b.metric("tether_vip_transitions_total").await;
        assert!(ta >= 1.0, "node-a became leader without a transition");

        let watch = lab.watch_address(VIP, SAMPLE);
        let released = unix_ms();
        let r = a.release().await;
        assert_eq!(r.status, 200, "release: {}", r.text());
        let took = lab
            .wait_address("b", VIP, true, LEASE + Duration::from_secs(1))
            .await;
        eprintln!("release: node-b has the VIP {took:?} after POST /api/vip/release");
        assert!(
            took <= HANDOVER,
            "node-b owned the VIP {took:?} after the release"
        );
        assert!(!lab.has_address("a", VIP));
        b.wait_role("leader", Duration::from_millis(500)).await;
        let va = wait_holder(&a, "node-b", LEASE + RENEW).await;
        assert_eq!(va["role"], "standby", "{va}");
        let vb = b.vip().await;
        assert_eq!(vb["holder"], "node-b", "{vb}");
        let since = vb["since"]
            .as_u64()
            .unwrap_or_else(|| panic!("since: {vb}"));
        assert!(
            since >= released,
            "node-b leads since {since}, before the release at {released}"
        );
        assert_eq!(a.metric("tether_vip_leader").await, 0.0);
        assert_eq!(b.metric("tether_vip_leader").await, 1.0);
        assert!(a.metric("tether_vip_transitions_total").await > ta);
        assert!(b.metric("tether_vip_transitions_total").await > tb);

        // node-a does not grab it back.
        tokio::time::sleep(LEASE).await;
        assert_eq!(lab.holders(VIP), ["b"]);
        assert_eq!(a.role().await, "standby");
        let samples = watch.stop();
        assert_eq!(samples.both(), 0, "two owners: {}", samples.timeline());
    })
    .await;
}

/// A binary upgrade of the leader (`tether --upgrade` on node-a) keeps the VIP
/// on node-a's interface the whole time: the successor continues the node's
/// lease, the standby never gets it, and the predecessor leaves the address
/// to its successor when it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_the_leader_keeps_the_vip_on_its_interface() {
    let lab = Lab::new();
    bounded(async {
        let (_redis, backends) = infra(&lab);
        let ya = format!(
            "server: {{ upgrade_grace: 1s }}\n{}",
            node_yaml(&lab, "a", &backends, "")
        );
        let yb = node_yaml(&lab, "b", &backends, "");
        let (mut a, b) = leader_then_standby(&lab, ("a", &ya), ("b", &yb)).await;
        let mut sessions = Sessions::open(&lab).await;
        let watch = lab.watch_address(VIP, SAMPLE);

        let a2 = tokio::task::block_in_place(|| lab.successor(&a));
        let exited = tokio::task::block_in_place(|| a.wait_exit(Duration::from_secs(10)));
        assert!(
            exited.is_some(),
            "the predecessor exits after its grace\n{}",
            a.log_text()
        );
        // Past the predecessor's exit and one more lease: still node-a's.
        tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
        let samples = watch.stop();
        assert_eq!(
            samples.first(Duration::ZERO, |s| !s.a || s.b),
            None,
            "the address left node-a during the upgrade: {}",
            samples.timeline()
        );
        a2.wait_role("leader", Duration::from_millis(500)).await;
        assert_eq!(b.role().await, "standby");
        assert!(
            a.log_text().contains("the successor took over"),
            "{}",
            a.log_text()
        );
        sessions.check("after the upgrade").await;
    })
    .await;
}
