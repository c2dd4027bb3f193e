//! This node's lease value, `"{token} {priority} {name}"`, and the token's
//! identity.
//!
//! The token must differ between any two nodes, even machines cloned from
//! one image with the same host name and config path (same `/etc/machine-id`
//! too), and must stay the same for a `tether --upgrade` successor (and a
//! restart by systemd), which continues the node's lease instead of waiting
//! it out. It hashes:
//! - the kernel's `boot_id`: random at every boot, so two machines (clones
//!   included) never share it;
//! - the network namespace (`/proc/thread-self/ns/net`'s inode): unique among the
//!   namespaces alive on one kernel, so two nodes sharing a kernel
//!   (containers, the test lab) differ. A successor always shares it: it can
//!   only find its predecessor's upgrade rendezvous, an abstract socket, from
//!   inside the same namespace;
//! - the node name and the config file's canonical path, for two tethers in
//!   one namespace (two VIPs).
//!
//! Not the interface's MAC: it is cloned with VM images or set by hand, is
//! absent on tun or WireGuard links, and changes with a bond's ports, which
//! would break the continuity an upgrade needs for nothing the namespace
//! does not already give. A reboot or a new namespace changes the token:
//! such a node starts as a standby, as it should (its address is gone).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config;

/// What makes this node's token unique, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub boot_id: String,
    pub netns: u64,
}

impl Identity {
    /// This process's boot and network namespace. When either cannot be
    /// read, a random stand-in keeps the token unique, at the price of
    /// continuity (logged).
    pub fn current() -> Identity {
        let boot_id = match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            other => {
                let e = other
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "empty".into());
                tracing::warn!(error = %e, "vip: no kernel boot_id; a random token is used, so an upgrade's successor will not continue this node's lease");
                format!("random-{:032x}", rand::random::<u128>())
            }
        };
        // The calling thread's namespace, which its netlink socket uses too.
        let netns = match std::fs::metadata("/proc/thread-self/ns/net") {
            Ok(m) => m.ino(),
            Err(e) => {
                tracing::warn!(error = %e, "vip: cannot tell the network namespace; a random token is used, so an upgrade's successor will not continue this node's lease");
                rand::random::<u64>()
            }
        };
        Identity { boot_id, netns }
    }
}

/// A lease value, `"{token} {priority} {name}"`.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub value: String,
    pub priority: u32,
    pub name: String,
}

impl Holder {
    /// This node's value (see the module doc for the token).
    pub fn mine(cfg: &config::Vip, config_path: &Path, id: &Identity) -> Holder {
        let path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
        let netns = id.netns.to_string();
        let path = path.to_string_lossy();
        let parts = [
            id.boot_id.as_str(),
            netns.as_str(),
            cfg.name.as_str(),
            &path,
        ];
        // FNV-1a 64 over the fields, each ended by a NUL so that no two
        // different field lists hash the same bytes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in parts.iter().flat_map(|p| p.bytes().chain([0])) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Holder {
            value: format!("{h:016x} {} {}", cfg.priority, cfg.name),
            priority: cfg.priority,
            name: cfg.name.clone(),
        }
    }

    pub fn parse(value: &str) -> Option<Holder> {
        let mut it = value.splitn(3, ' ');
        let (_token, priority, name) = (it.next()?, it.next()?, it.next()?);
        Some(Holder {
            value: value.to_owned(),
            priority: priority.parse().ok()?,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> config::Vip {
        config::Vip {
            address: "198.18.0.100/24".parse().expect("net"),
            interface: "eth0".into(),
            lease: std::time::Duration::from_secs(2),
            renew: std::time::Duration::from_millis(600),
            priority: 100,
            preempt: false,
            name: "node".into(),
            min_replicas: 0,
        }
    }

    fn token(id: &Identity) -> String {
        Holder::mine(&cfg(), Path::new("/etc/tether/proxy.yaml"), id).value
    }

    #[test]
    fn same_boot_namespace_name_and_path_same_token() {
        let id = Identity {
            boot_id: "b".into(),
            netns: 7,
        };
        assert_eq!(token(&id), token(&id.clone()));
        let h = Holder::parse(&token(&id)).expect("parses");
        assert_eq!((h.priority, h.name.as_str()), (100, "node"));
    }

    #[test]
    fn clones_and_namespaces_get_their_own_tokens() {
        let a = Identity {
            boot_id: "boot-1".into(),
            netns: 4026531840,
        };
        let clone = Identity {
            boot_id: "boot-2".into(),
            ..a.clone()
        };
        let other_ns = Identity {
            netns: 4026532001,
            ..a.clone()
        };
        assert_ne!(token(&a), token(&clone));
        assert_ne!(token(&a), token(&other_ns));
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        let x = Identity {
            boot_id: "1".into(),
            netns: 23,
        };
        let y = Identity {
            boot_id: "12".into(),
            netns: 3,
        };
        assert_ne!(token(&x), token(&y));
    }

    #[test]
    fn this_process_has_a_stable_identity_and_another_namespace_another() {
        let here = Identity::current();
        assert_eq!(here, Identity::current());
        let ns = crate::vip::netlink::tests::NetNs::new();
        let there = ns.block_on(|| async { Identity::current() });
        assert_eq!(there.boot_id, here.boot_id, "one kernel");
        assert_ne!(there.netns, here.netns, "another namespace");
        assert_ne!(token(&here), token(&there));
    }
}
