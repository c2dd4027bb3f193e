//! Tests of `netlink` against the real kernel, and the network-namespace
//! helpers that `announce`'s tests share. Each test makes its own namespace
//! with `ip netns add`, runs the code under test on a thread that has
//! entered it, checks the result with `ip -n`, and deletes the namespace
//! when its guard drops, panicking test or not. They need root, as in CI.

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};

use super::{NetError, Netlink};

static SEQ: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` makes /run/netns a shared mount the first time; two doing
/// that at once can stack mounts, so namespaces are made one at a time.
static CREATE: Mutex<()> = Mutex::new(());

/// A named network namespace, deleted on drop.
pub(in crate::vip) struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (it creates network namespaces, veth pairs and raw sockets): \
             run `cargo test` as root, as CI does"
        );
        let name = format!(
            "tvip-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        {
            let _one = CREATE.lock().unwrap_or_else(|e| e.into_inner());
            run_ip(&["netns", "add", &name]);
        }
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args…`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Moves the calling thread into the namespace (for threads of its own).
    pub fn enter(&self) {
        let path = format!("/run/netns/{}", self.name);
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        setns(&f, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
    }

    /// Runs `f` to completion on a fresh thread inside the namespace, on a
    /// current-thread runtime (so everything it spawns stays in there too).
    pub fn block_on<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                self.enter();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(f())
            });
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `name`'s MAC in the namespace, as `ip` prints it.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let out = self.ip(&["link", "show", "dev", dev]);
        let hex = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in {out}"));
        let mut mac = [0u8; 6];
        for (b, h) in mac.iter_mut().zip(hex.split(':')) {
            *b = u8::from_str_radix(h, 16).expect("MAC hex");
        }
        mac
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Not run_ip: a panic here, while unwinding from a failed test,
        // would abort the whole test binary.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?} (is iproute2 installed?): {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace with a veth pair t0/t1, both up (IPv6 addresses on a link
/// without carrier would stay tentative).
fn with_veth() -> NetNs {
    let ns = NetNs::new();
    ns.ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"]);
    ns.ip(&["link", "set", "t0", "up"]);
    ns.ip(&["link", "set", "t1", "up"]);
    ns
}

fn add_and_remove(vip: &str, family: &str) {
    let ns = with_veth();
    let addr: ipnet::IpNet = vip.parse().expect("vip");
    let (has_before, has_after) = ns.block_on(|| async {
        let net = Netlink::new().expect("netlink");
        let idx = net.ifindex("t0").await.expect("t0");
        let before = net.has_address(idx, addr).await.expect("has");
        net.set_address(idx, addr, 30).await.expect("add");
        net.set_address(idx, addr, 30)
            .await
            .expect("add again is Ok");
        let after = net.has_address(idx, addr).await.expect("has");
        (before, after)
    });
    assert!(!has_before, "{vip} there before it was added");
    assert!(has_after, "has_address false after adding {vip}");
    let shown = ns.ip(&[family, "addr", "show", "dev", "t0"]);
    let line = shown
        .lines()
        .find(|l| l.contains(vip))
        .unwrap_or_else(|| panic!("{vip} not on t0:\n{shown}"));
    assert!(
        !line.contains("tentative"),
        "{vip} is tentative (DAD not skipped): {line}"
    );
    let lft = shown
        .lines()
        .skip_while(|l| !l.contains(vip))
        .nth(1)
        .unwrap_or_default();
    assert!(
        lft.contains("valid_lft 30sec") || lft.contains("valid_lft 29sec"),
        "{vip} has no finite lifetime:\n{shown}"
    );

    let still = ns.block_on(|| async {
        let net = Netlink::new().expect("netlink");
        let idx = net.ifindex("t0").await.expect("t0");
        net.del_address(idx, addr).await.expect("del");
        net.del_address(idx, addr).await.expect("del again is Ok");
        net.has_address(idx, addr).await.expect("has")
    });
    assert!(!still, "has_address true after removing {vip}");
    let shown = ns.ip(&[family, "addr", "show", "dev", "t0"]);
    assert!(
        !shown.contains(vip),
        "{vip} still on t0 after del:\n{shown}"
    );
}

#[test]
fn ipv4_add_is_idempotent_and_del_removes_it() {
    add_and_remove("198.18.0.100/24", "-4");
}

#[test]
fn ipv6_add_skips_dad_and_del_removes_it() {
    add_and_remove("fd00::100/64", "-6");
}

#[test]
fn a_copy_with_another_prefix_counts_and_is_removed() {
    let ns = with_veth();
    ns.ip(&["addr", "add", "198.18.0.100/16", "dev", "t0"]);
    ns.ip(&["addr", "add", "198.18.0.101/24", "dev", "t0"]);
    let addr: ipnet::IpNet = "198.18.0.100/24".parse().expect("vip");
    let had = ns.block_on(|| async {
        let net = Netlink::new().expect("netlink");
        let idx = net.ifindex("t0").await.expect("t0");
        let had = net.has_address(idx, addr).await.expect("has");
        net.del_address(idx, addr).await.expect("del");
        had
    });
    assert!(had, "the /16 copy of the VIP was not seen");
    let shown = ns.ip(&["-4", "addr", "show", "dev", "t0"]);
    assert!(
        !shown.contains("198.18.0.100/"),
        "the /16 copy survived:\n{shown}"
    );
    assert!(
        shown.contains("198.18.0.101/24"),
        "a neighbouring address was removed too:\n{shown}"
    );
}

#[test]
fn unknown_interfaces_are_named() {
    let ns = NetNs::new();
    let (missing, too_long) = ns.block_on(|| async {
        let net = Netlink::new().expect("netlink");
        (
            net.ifindex("nosuch0").await,
            net.ifindex("a-name-longer-than-15").await,
        )
    });
    assert!(
        matches!(missing, Err(NetError::NoInterface(ref n)) if n == "nosuch0"),
        "{missing:?}"
    );
    assert!(
        matches!(too_long, Err(NetError::NoInterface(_))),
        "{too_long:?}"
    );
    let msg = missing.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("nosuch0"), "{msg}");
}

#[test]
fn errors_name_the_interface_and_address() {
    let ns = NetNs::new();
    let addr: ipnet::IpNet = "198.18.0.100/24".parse().expect("vip");
    let err = ns.block_on(|| async {
        let net = Netlink::new().expect("netlink");
        net.set_address(99_999, addr, 2).await
    });
    let msg = err
        .expect_err("adding to a missing interface index")
        .to_string();
    assert!(
        msg.contains("198.18.0.100/24") && msg.contains("99999"),
        "{msg}"
    );
}

#[test]
fn new_outside_a_runtime_is_an_error() {
    assert!(matches!(Netlink::new(), Err(NetError::Io { .. })));
}

/// `(valid_lft, preferred_lft)` of `vip` on t0 as `ip` shows them (`None`
/// when the address is not there; `forever` is `u32::MAX`).
fn lifetimes(ns: &NetNs, vip: &str) -> Option<(u32, u32)> {
    let shown = ns.ip(&["addr", "show", "dev", "t0"]);
    let line = shown
        .lines()
        .skip_while(|l| !l.contains(&format!(" {vip}/")))
        .nth(1)?;
    let secs = |key: &str| -> u32 {
        let w = line
            .split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        match w {
            "forever" => u32::MAX,
            w => w.trim_end_matches("sec").parse().expect("seconds"),
        }
    };
    Some((secs("valid_lft"), secs("preferred_lft")))
}

/// A copy left without a lifetime (by hand, or by an older tether) gets one
/// when set; a refresh (`NLM_F_REPLACE`) restarts it; unrefreshed, the
/// kernel removes the address by itself within the lifetime plus a second.
#[test]
fn the_kernel_removes_an_address_whose_lifetime_ran_out() {
    use std::time::{Duration, Instant};
    let ns = with_veth();
    // .101 first: the primary of the subnet, whose removal would take the
    // secondaries with it (promote_secondaries is off by default).
    ns.ip(&["addr", "add", "198.18.0.101/24", "dev", "t0"]);
    ns.ip(&["addr", "add", "198.18.0.100/24", "dev", "t0"]);
    assert_eq!(lifetimes(&ns, "198.18.0.100"), Some((u32::MAX, u32::MAX)));
    let addr: ipnet::IpNet = "198.18.0.100/24".parse().expect("vip");
    let (first, still, refreshed) = ns.block_on(|| async {
        let net = Netlink::new().expect("netlink");
        let idx = net.ifindex("t0").await.expect("t0");
        net.set_address(idx, addr, 1).await.expect("set 1 s");
        let first = lifetimes(&ns, "198.18.0.100");
        // Refreshed before it runs out: it lives on past the first second.
        tokio::time::sleep(Duration::from_millis(700)).await;
        net.set_address(idx, addr, 1).await.expect("refresh");
        let refreshed = Instant::now();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let still = net.has_address(idx, addr).await.expect("has");
        (first, still, refreshed)
    });
    assert_eq!(
        first,
        Some((1, 1)),
        "the manual copy did not get the lifetime"
    );
    assert!(
        still,
        "the refreshed address vanished before its new lifetime ran out"
    );
    loop {
        let t = refreshed.elapsed();
        if lifetimes(&ns, "198.18.0.100").is_none() {
            assert!(
                t >= Duration::from_millis(950),
                "gone {t:?} after a 1 s refresh"
            );
            break;
        }
        assert!(
            t < Duration::from_millis(1000 + 1000 + 200),
            "still there {t:?} after a refresh to 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        lifetimes(&ns, "198.18.0.101"),
        Some((u32::MAX, u32::MAX)),
        "a neighbouring address went too"
    );
}
