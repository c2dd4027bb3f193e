//! `store.kind: redis`: URLs, Sentinel, Cluster, CA files and their checks.

use super::*;

#[test]
fn redis_store_settings_parse() {
    let snap = config::parse(file(), &format!("store: {{ kind: redis }}\n{BASE}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert_eq!(
        (r.host.as_str(), r.port, r.db, r.tls),
        ("127.0.0.1", 6379, 0, false)
    );
    assert_eq!((r.prefix.as_str(), r.password.as_deref()), ("tether", None));
    assert_eq!(r.connect_timeout, Duration::from_secs(1));
    assert_eq!(r.command_timeout, Duration::from_millis(200));
    assert!(config::summary(&snap).ends_with("store redis"));

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), "from-file\n").expect("write");
    let redis = "  redis:\n    url: \"rediss://app:from%40url@redis.internal:6380/2\"\n    prefix: t1\n    \
                 connect_timeout: 2s\n    command_timeout: 50ms\n    \
                 sentinel: { master: mymaster, nodes: [\"10.0.0.1:26379\", \"[::1]\", s.internal:1] }\n";
    let text = format!("store:\n  kind: redis\n{redis}{BASE}");
    let snap = config::parse(&dir.path().join("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert_eq!(
        (r.host.as_str(), r.port, r.db, r.tls),
        ("redis.internal", 6380, 2, true)
    );
    assert_eq!(
        (r.username.as_deref(), r.password.as_deref()),
        (Some("app"), Some("from@url"))
    );
    assert_eq!(
        (r.prefix.as_str(), r.command_timeout),
        ("t1", Duration::from_millis(50))
    );
    assert_eq!(r.connect_timeout, Duration::from_secs(2));
    let s = r.sentinel.as_ref().expect("sentinel");
    assert_eq!(s.master, "mymaster");
    let nodes = [("10.0.0.1", 26379), ("::1", 26379), ("s.internal", 1)];
    assert_eq!(s.nodes, nodes.map(|(h, p)| (h.to_owned(), p)).to_vec());
    assert_eq!(r.target(), "sentinel master mymaster");
    assert!(
        !format!("{r:?}").contains("from@url"),
        "the password never shows"
    );

    let text = text.replace(
        "    prefix: t1\n",
        "    prefix: t1\n    password_file: pw\n",
    );
    let snap = config::parse(&dir.path().join("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert_eq!(
        r.password.as_deref(),
        Some("from-file"),
        "password_file wins"
    );
}

#[test]
fn redis_cluster_and_ca_settings_parse() {
    let dir = tls_dir();
    let redis = "  redis:\n    url: \"rediss://:pw@/0\"\n    ca: ca.pem\n    \
                 cluster: { nodes: [\"10.0.0.1:7000\", \"[::1]\", c.internal] }\n";
    let text = format!("store:\n  kind: redis\n{redis}{BASE}");
    let snap = config::parse(&dir.path().join("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert!(
        r.tls
            && r.ca
                .as_ref()
                .is_some_and(|pem| pem.starts_with(b"-----BEGIN"))
    );
    assert_eq!(r.password.as_deref(), Some("pw"));
    let c = r.cluster.as_ref().expect("cluster");
    let nodes = [("10.0.0.1", 7000), ("::1", 6379), ("c.internal", 6379)];
    assert_eq!(c.nodes, nodes.map(|(h, p)| (h.to_owned(), p)).to_vec());
    assert_eq!(
        r.target(),
        "cluster 10.0.0.1:7000,[::1]:6379,c.internal:6379"
    );
    // The lease's keys cannot share a slot: no VIP on a cluster.
    let vip = format!("{text}vip: {{ address: 10.0.0.100/24, interface: lo }}\n");
    let err = config::parse(&dir.path().join("t.yaml"), &vip).expect_err("vip on a cluster");
    assert!(
        err.to_string().contains("not `store.redis.cluster`"),
        "{err}"
    );
}
