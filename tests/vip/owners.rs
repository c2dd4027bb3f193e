//! Leaders that cannot hand over (killed, crashed, stopped), and nodes that
//! look alike: the address never has two owners at once.

use super::*;

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
