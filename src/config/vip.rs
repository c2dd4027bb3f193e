//! `vip:`: the virtual IP this node contends for (see `crate::vip`).

use std::time::Duration;

use ipnet::IpNet;

use super::error::Report;
use super::locate::KeyPath;
use super::model::{StoreKind, Vip};
use super::raw::{RawVip, VIP_LEASE, VIP_PRIORITY};
use super::values::{self, Zero};

/// Below this a lease cannot outlive one Redis round trip and a scheduling hiccup.
const MIN_LEASE: Duration = Duration::from_millis(500);

pub(crate) fn vip(
    r: &mut Report,
    path: &KeyPath,
    raw: RawVip,
    store: Option<&StoreKind>,
) -> Option<Vip> {
    let ap = path.key("address");
    let text = raw.address.as_str().trim().to_owned();
    let address = match text.parse::<IpNet>() {
        Ok(net) if net.addr() == net.network() && net.prefix_len() < net.max_prefix_len() => {
            r.err(
                &ap,
                format!(
                    "`{text}` is a network address: give the virtual IP itself, like {}/{}",
                    next_host(&net),
                    net.prefix_len()
                ),
            );
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            r.err(&ap, format!("`{text}` is not an address with its prefix length (like 198.18.0.100/24 or fd00::100/64)"));
            None
        }
    };
    let interface = raw.interface.as_str().trim().to_owned();
    let bad_if = interface.is_empty()
        || interface.len() > 15
        || interface.contains(['/', ' ', '\t'])
        || interface == "."
        || interface == "..";
    if bad_if {
        r.err(
            &path.key("interface"),
            format!("`{interface}` is not an interface name (1-15 characters, no `/` or spaces)"),
        );
    }
    let lease = values::duration(
        r,
        &path.key("lease"),
        raw.lease.as_ref(),
        VIP_LEASE,
        Zero::Rejected,
    );
    if lease < MIN_LEASE {
        r.err(
            &path.key("lease"),
            format!("lease must be at least {MIN_LEASE:?}"),
        );
    }
    let renew = values::duration(
        r,
        &path.key("renew"),
        raw.renew.as_ref(),
        lease / 3,
        Zero::Rejected,
    );
    if renew > lease / 2 {
        r.err(&path.key("renew"), format!("renew ({renew:?}) must be at most half the lease ({lease:?}): a leader needs a second chance before its lease ends"));
    }
    let name = match &raw.name {
        Some(n) => n.as_str().trim().to_owned(),
        None => host_name(),
    };
    if let Some(problem) = values::id_problem("node name", &name) {
        r.err(&path.key("name"), problem);
    }
    if !matches!(store, Some(StoreKind::Redis(_)) | None) {
        r.err(path, "vip needs `store.kind: redis`: the lease that decides the leader lives in the shared store");
    }
    if matches!(store, Some(StoreKind::Redis(rc)) if rc.cluster.is_some()) {
        r.err(path, "vip needs a single Redis or Sentinel, not `store.redis.cluster`: the lease's keys would sit in different slots");
    }
    // With Sentinel a failover promotes a replica: a renewal only it lacks
    // would be forgotten. Without Sentinel nothing is promoted automatically.
    let sentinel = matches!(store, Some(StoreKind::Redis(rc)) if rc.sentinel.is_some());
    let v = Vip {
        address: address?,
        interface,
        lease,
        renew,
        priority: raw.priority.unwrap_or(VIP_PRIORITY),
        preempt: raw.preempt.unwrap_or(false),
        name,
        min_replicas: raw.min_replicas.unwrap_or(u32::from(sentinel)),
    };
    (!bad_if).then_some(v)
}

/// Said by `tether check` and at start: a lease that is not whole seconds
/// takes over as slowly as the next whole second (the address's kernel
/// lifetime is whole seconds, `crate::vip`), with less time for renewals.
pub(crate) fn lease_warning(v: &Vip) -> Option<String> {
    let fraction = v.lease.subsec_nanos() > 0;
    let up = v.lease.as_secs() + u64::from(fraction);
    fraction.then(|| {
        format!(
            "vip.lease {:?} is not whole seconds: the address's kernel lifetime is rounded up to {up} s, \
             so a takeover takes as long as with `lease: {up}s`, with less time for each renewal",
            v.lease
        )
    })
}

fn next_host(net: &IpNet) -> std::net::IpAddr {
    match net.hosts().next() {
        Some(h) => h,
        None => net.addr(),
    }
}

/// The kernel's host name (the default node name).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tether".to_owned())
}
