//! Hand-overs between live nodes: SIGTERM, a leader cut from Redis,
//! preemption, the admin API's release, and a binary upgrade of the leader.

use super::*;

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
