//! A pool at runtime: its backends' live state and the routing decision
//! (spec routing rules 2, 3 and 6).
//!
//! `route(key)` first asks the pool's store for the key's owner (a local hit:
//! no I/O, no allocation). A pinned owner that is still usable wins. Otherwise
//! the pool's hash picks over the eligible backends (bounded load if set) and the
//! choice is recorded insert-if-absent, so racing proxies agree on one owner.
//! A pin whose backend is gone from the config is re-pinned by compare-and-set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};

use crate::affinity::hash::{hash_key, Member, Ring};
use crate::config;
use crate::metrics::Metrics;
use crate::store::{Hit, LiveGuard, MoveReason, PoolStore, Session, StoreError};

/// A backend's health as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// No check has completed yet.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

pub struct BackendRt {
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    health: AtomicU8,
    pub upstream_active: IntGauge,
    up_gauge: IntGauge,
}

impl BackendRt {
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    pub fn set_health(&self, h: Health) {
        self.health.store(h as u8, Ordering::Release);
        self.up_gauge.set(i64::from(h == Health::Up));
    }

    /// May a pinned session stay here? (rule 2: `up`, or `unknown` while its first check is pending)
    fn keeps_sessions(&self) -> bool {
        self.health() != Health::Down
    }
}

/// The hash ring over the backends eligible for new sessions, with the mapping
/// from ring members back to backend indices.
struct Eligible {
    ring: Ring,
    backend_of: Vec<usize>,
}

struct Lookups {
    hit: IntCounter,
    new: IntCounter,
    moved: IntCounter,
}

pub struct PoolRt {
    pub cfg: config::Pool,
    pub backends: Vec<Arc<BackendRt>>,
    pub store: Arc<dyn PoolStore>,
    eligible: ArcSwap<Eligible>,
    lookups: Lookups,
    metrics: Arc<Metrics>,
}

/// Where a request goes.
pub enum Decision {
    Backend {
        backend: Arc<BackendRt>,
        /// Held while the request or tunnel lives: the session is not idle meanwhile.
        live: Option<LiveGuard>,
        /// The session moved here and this request is the first to learn it.
        moved: Option<(Arc<str>, MoveReason)>,
    },
    /// No live backend (rule 6).
    NoBackend,
}

impl PoolRt {
    pub fn new(cfg: config::Pool, store: Arc<dyn PoolStore>, metrics: Arc<Metrics>) -> Self {
        let backends: Vec<_> = cfg
            .backends
            .iter()
            .map(|b| {
                let labels = [&*cfg.name, &*b.id];
                let be = BackendRt {
                    id: b.id.clone(),
                    addr: b.addr,
                    weight: b.weight,
                    health: AtomicU8::new(Health::Unknown as u8),
                    upstream_active: metrics
                        .upstream_connections_active
                        .with_label_values(&labels),
                    up_gauge: metrics.backend_up.with_label_values(&labels),
                };
                // Without active checks a backend is trusted; with them it waits for its first result.
                if matches!(cfg.health.kind, config::HealthKind::None) {
                    be.set_health(Health::Up);
                }
                Arc::new(be)
            })
            .collect();
        let lookups = Lookups {
            hit: metrics
                .affinity_lookups
                .with_label_values(&[&*cfg.name, "hit"]),
            new: metrics
                .affinity_lookups
                .with_label_values(&[&*cfg.name, "new"]),
            moved: metrics
                .affinity_lookups
                .with_label_values(&[&*cfg.name, "moved"]),
        };
        let pool = PoolRt {
            eligible: ArcSwap::from_pointee(Eligible {
                ring: Ring::build(cfg.hash, &[]),
                backend_of: Vec::new(),
            }),
            cfg,
            backends,
            store,
            lookups,
            metrics,
        };
        pool.rebuild_ring();
        pool
    }

    /// Recompute the ring after a change in health or membership.
    pub fn rebuild_ring(&self) {
        let mut members = Vec::new();
        let mut backend_of = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            // Until active health checks run (and pass), `unknown` backends are
            // routable: otherwise a pool with checks configured would take nothing.
            if b.health() != Health::Down {
                members.push(Member {
                    id: b.id.clone(),
                    weight: b.weight,
                });
                backend_of.push(i);
            }
        }
        self.eligible.store(Arc::new(Eligible {
            ring: Ring::build(self.cfg.hash, &members),
            backend_of,
        }));
    }

    pub fn backend(&self, id: &str) -> Option<&Arc<BackendRt>> {
        self.backends.iter().find(|b| &*b.id == id)
    }

    /// The hot path: a cached owner that is still usable and has no move to
    /// announce. No I/O, no allocation, no lock beyond the store's shard read.
    pub fn route_hit(&self, key: &str) -> Option<Decision> {
        let hit = self.store.lookup(key)?;
        if hit.moved.is_some() {
            return None;
        }
        let b = self.backend(&hit.backend).filter(|b| b.keeps_sessions())?;
        self.lookups.hit.inc();
        Some(self.decide(b.clone(), hit, None))
    }

    /// Route a request carrying session key `key` (rules 2, 3, 6).
    pub async fn route(&self, key: &str) -> Result<Decision, StoreError> {
        if let Some(d) = self.route_hit(key) {
            return Ok(d);
        }
        if let Some(hit) = self.store.lookup(key) {
            if let Some(b) = self.backend(&hit.backend).filter(|b| b.keeps_sessions()) {
                self.lookups.hit.inc();
                let moved = match &hit.moved {
                    Some(_) if self.store.take_moved(key, &hit.backend).await? => hit.moved.clone(),
                    _ => None,
                };
                return Ok(self.decide(b.clone(), hit, moved));
            }
            return self.repin(key, hit).await;
        }
        let Some(idx) = self.pick(key) else {
            return Ok(Decision::NoBackend);
        };
        let hit = self
            .store
            .insert_if_absent(key, self.backends[idx].id.clone())
            .await?;
        self.lookups.new.inc();
        self.metrics
            .store_operations
            .with_label_values(&[self.store_kind(), "insert", "ok"])
            .inc();
        match self.backend(&hit.backend).filter(|b| b.keeps_sessions()) {
            Some(b) => Ok(self.decide(b.clone(), hit, None)),
            // Another instance won the race with a backend we cannot use: move it.
            None => self.repin(key, hit).await,
        }
    }

    /// A backend for a request that records nothing (`fallback: random`).
    pub fn route_random(&self) -> Decision {
        let el = self.eligible.load();
        if el.backend_of.is_empty() {
            return Decision::NoBackend;
        }
        let i = el.backend_of[rand::random::<usize>() % el.backend_of.len()];
        Decision::Backend {
            backend: self.backends[i].clone(),
            live: None,
            moved: None,
        }
    }

    fn store_kind(&self) -> &'static str {
        "embedded"
    }

    fn decide(
        &self,
        backend: Arc<BackendRt>,
        hit: Hit,
        moved: Option<(Arc<str>, MoveReason)>,
    ) -> Decision {
        Decision::Backend {
            backend,
            live: Some(LiveGuard::new(hit.live)),
            moved,
        }
    }

    /// The pool hash's choice for `key` over the eligible backends.
    fn pick(&self, key: &str) -> Option<usize> {
        let el = self.eligible.load();
        let h = hash_key(key.as_bytes());
        let m = match self.cfg.bounded_load {
            None => el.ring.pick(h)?,
            Some(c) => {
                let n = el.backend_of.len() as f64;
                let total: u64 = el
                    .backend_of
                    .iter()
                    .map(|&i| self.store.sessions_of(&self.backends[i].id))
                    .sum();
                let cap = (c * (total + 1) as f64 / n).ceil() as u64;
                el.ring.pick_bounded(h, |m| {
                    self.store.sessions_of(&self.backends[el.backend_of[m]].id) < cap
                })?
            }
        };
        el.backend_of.get(m).copied()
    }

    /// The pinned backend is unusable: move the session to the hash's choice
    /// among live backends (compare-and-set against the old owner).
    async fn repin(&self, key: &str, old: Hit) -> Result<Decision, StoreError> {
        let Some(idx) = self.pick(key) else {
            return Ok(Decision::NoBackend);
        };
        let to = self.backends[idx].clone();
        let reason = if self.backend(&old.backend).is_some() {
            MoveReason::Down
        } else {
            MoveReason::Removed
        };
        let mut rec = Session::new(to.id.clone());
        rec.moved_from = Some(old.backend.clone());
        rec.move_reason = Some(reason);
        if self.store.compare_and_set(key, &old.backend, rec).await? {
            self.lookups.moved.inc();
            self.metrics
                .session_moves
                .with_label_values(&[&*self.cfg.name, &*old.backend, &*to.id, reason.as_str()])
                .inc();
        }
        // Whoever won the CAS, the store now holds the owner: follow it.
        match self.store.lookup(key) {
            Some(hit) => match self.backend(&hit.backend).filter(|b| b.keeps_sessions()) {
                Some(b) => {
                    let moved = match &hit.moved {
                        Some(_) if self.store.take_moved(key, &hit.backend).await? => {
                            hit.moved.clone()
                        }
                        _ => None,
                    };
                    Ok(self.decide(b.clone(), hit, moved))
                }
                None => Ok(Decision::NoBackend),
            },
            None => Ok(Decision::Backend {
                backend: to,
                live: None,
                moved: None,
            }),
        }
    }
}
