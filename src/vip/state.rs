//! What the VIP task shares with the admin API and metrics: this node's lease
//! value, its role, the current holder and since when; and with its own
//! announcements: until when the address may be announced.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::time::Instant;

use super::holder::Holder;
use crate::config;
use crate::metrics::Metrics;
use crate::store::now_ms;

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
