//! `vip`: the address, lease, renewal and replica settings and their checks.

use super::*;

#[test]
fn vip_settings_parse_and_are_checked() {
    let text = format!(
        "store: {{ kind: redis }}\nvip: {{ address: 198.18.0.100/24, interface: eth0, name: node-a }}\n{BASE}"
    );
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    let v = snap.vip.clone().expect("vip");
    assert_eq!(v.address.to_string(), "198.18.0.100/24");
    assert_eq!((v.interface.as_str(), v.name.as_str()), ("eth0", "node-a"));
    assert_eq!(v.lease, Duration::from_secs(1));
    assert_eq!(
        v.renew,
        Duration::from_secs(1) / 3,
        "renew defaults to lease/3"
    );
    assert_eq!((v.priority, v.preempt), (100, false));
    assert!(snap.warnings().iter().all(|w| !w.contains("vip")));

    let v6 = format!("store: {{ kind: redis }}\nvip: {{ address: \"fd00::100/64\", interface: br0, lease: 3s, renew: 1s, priority: 200, preempt: true }}\n{BASE}");
    let v = config::parse(file(), &v6)
        .unwrap_or_else(|e| panic!("{e}"))
        .vip
        .expect("vip");
    assert_eq!(
        (v.lease, v.renew, v.priority, v.preempt),
        (Duration::from_secs(3), Duration::from_secs(1), 200, true)
    );

    // A lease that is not whole seconds is valid, but takes over as slowly as
    // the next whole second (the address's kernel lifetime is whole seconds).
    let odd = format!("store: {{ kind: redis }}\nvip: {{ address: 198.18.0.100/24, interface: eth0, lease: 1500ms }}\n{BASE}");
    let w = config::parse(file(), &odd)
        .unwrap_or_else(|e| panic!("{e}"))
        .warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("vip.lease 1.5s is not whole seconds") && w.contains("`lease: 2s`")),
        "{w:?}"
    );

    let bad = |vip: &str, store: &str| -> String {
        errors(&format!("{store}vip: {vip}\n{BASE}")).to_string()
    };
    let redis = "store: { kind: redis }\n";
    let e = bad("{ address: 198.18.0.100/24, interface: eth0 }", "");
    assert!(
        e.contains("test.yaml:1:") && e.contains("vip: vip needs `store.kind: redis`"),
        "{e}"
    );
    let e = bad("{ address: 198.18.0.0/24, interface: eth0 }", redis);
    assert!(
        e.contains("vip.address") && e.contains("is a network address"),
        "{e}"
    );
    let e = bad("{ address: 198.18.0.100, interface: eth0 }", redis);
    assert!(
        e.contains("vip.address") && e.contains("prefix length"),
        "{e}"
    );
    let e = bad(
        "{ address: 198.18.0.100/24, interface: eth0, lease: 2s, renew: 1500ms }",
        redis,
    );
    assert!(
        e.contains("vip.renew") && e.contains("at most half the lease"),
        "{e}"
    );
    let e = bad(
        "{ address: 198.18.0.100/24, interface: a-very-long-interface-name }",
        redis,
    );
    assert!(e.contains("vip.interface"), "{e}");
    let e = bad(
        "{ address: 198.18.0.100/24, interface: eth0, weight: 3 }",
        redis,
    );
    assert!(
        e.contains("vip.weight") && e.contains("unknown field"),
        "{e}"
    );
}

#[test]
fn vip_min_replicas_defaults_to_one_with_sentinel_only() {
    let vip = "vip: { address: 198.18.0.100/24, interface: eth0, name: node-a }";
    let parse = |store: &str, vip: &str| {
        config::parse(file(), &format!("{store}\n{vip}\n{BASE}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .vip
            .expect("vip")
            .min_replicas
    };
    let plain = "store: { kind: redis }";
    let sentinel =
        "store: { kind: redis, redis: { sentinel: { master: m, nodes: [\"127.0.0.1:26379\"] } } }";
    assert_eq!(parse(plain, vip), 0);
    assert_eq!(parse(sentinel, vip), 1);
    let two = "vip: { address: 198.18.0.100/24, interface: eth0, min_replicas: 2 }";
    assert_eq!(parse(plain, two), 2);
    let none = "vip: { address: 198.18.0.100/24, interface: eth0, min_replicas: 0 }";
    assert_eq!(parse(sentinel, none), 0);
    let e = errors(&format!(
        "{plain}\nvip: {{ address: 198.18.0.100/24, interface: eth0, min_replicas: -1 }}\n{BASE}"
    ))
    .to_string();
    assert!(
        e.contains("test.yaml:2:") && e.contains("min_replicas"),
        "{e}"
    );
}
