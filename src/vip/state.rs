//! What the VIP task shares with the admin API and metrics: this node's lease
//! value, its role, the current holder and since when; and with its own
//! announcements: until when the address may be announced.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::time::Instant;

use crate::config;
use crate::metrics::Metrics;
use crate::store::now_ms;

/// A lease value, `"{token} {priority} {name}"`.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub value: String,
    pub priority: u32,
    pub name: String,
}

impl Holder {
    /// This node's value. The token is stable for one machine, node name and
    /// config file, so a successor or a restart continues the same lease.
    pub fn mine(cfg: &config::Vip, config_path: &std::path::Path) -> Holder {
        let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        let path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in machine
            .trim()
            .bytes()
            .chain(cfg.name.bytes())
            .chain(path.to_string_lossy().bytes())
        {
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

/// `GET /api/vip`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub address: String,
    pub role: &'static str,
    /// The leader's node name, as last seen ("" when unknown).
    pub holder: String,
    /// Unix ms of this node's last change of role (or its start).
    pub since: u64,
}

pub(super) struct Shared {
    pub cfg: config::Vip,
    pub me: Holder,
    leader: AtomicBool,
    /// When our copy of the address runs out in the kernel, unless refreshed.
    address_until: Mutex<Option<Instant>>,
    holder: Mutex<String>,
    since: AtomicU64,
    leader_gauge: IntGauge,
    transitions: IntCounter,
}

impl Shared {
    pub fn new(cfg: config::Vip, me: Holder, metrics: &Metrics) -> Shared {
        let leader_gauge = metrics.vip_leader.clone();
        leader_gauge.set(0);
        Shared {
            cfg,
            me,
            leader: AtomicBool::new(false),
            address_until: Mutex::new(None),
            holder: Mutex::new(String::new()),
            since: AtomicU64::new(now_ms()),
            leader_gauge,
            transitions: metrics.vip_transitions.clone(),
        }
    }

    pub fn became(&self, leader: bool) {
        if self.leader.swap(leader, Ordering::AcqRel) != leader {
            self.since.store(now_ms(), Ordering::Release);
            self.transitions.inc();
        }
        self.leader_gauge.set(i64::from(leader));
        if leader {
            self.set_holder(&self.me.name);
        }
    }

    pub fn set_address_until(&self, until: Option<Instant>) {
        if let Ok(mut u) = self.address_until.lock() {
            *u = until;
        }
    }

    /// Whether announcing the address is still right: we lead and our copy
    /// has not run out (a process resumed after a stop must not announce an
    /// address the kernel already took away and another node now holds).
    pub fn may_announce(&self) -> bool {
        let until = self.address_until.lock().map(|u| *u).unwrap_or(None);
        self.leader.load(Ordering::Acquire) && until.is_some_and(|u| Instant::now() < u)
    }

    pub fn set_holder(&self, name: &str) {
        if let Ok(mut h) = self.holder.lock() {
            if *h != name {
                *h = name.to_owned();
            }
        }
    }

    pub fn status(&self) -> Status {
        let leader = self.leader.load(Ordering::Acquire);
        Status {
            address: self.cfg.address.to_string(),
            role: if leader { "leader" } else { "standby" },
            holder: self.holder.lock().map(|h| h.clone()).unwrap_or_default(),
            since: self.since.load(Ordering::Acquire),
        }
    }
}
