//! A pool at runtime: its backends' live state and the routing decision
//! (spec routing rules 2, 3 and 6).
//!
//! `route(key)` first asks the pool's store for the key's owner (a local hit:
//! no I/O, no allocation). A pinned owner that is still usable wins. Otherwise
//! the pool's hash picks over the eligible backends (bounded load if set) and the
//! choice is recorded insert-if-absent, so racing proxies agree on one owner.
//! A pin whose backend is gone from the config is re-pinned by compare-and-set.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;

use crate::affinity::hash::{hash_key, Member, Ring};
pub use crate::backend::{BackendRt, CloseReason, Health};
use crate::config;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::{Hit, LiveGuard, MoveReason, PoolStore, Session, StoreError};

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
    notifier: Option<Notifier>,
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
                let be = BackendRt::new(
                    b.id.clone(),
                    b.addr,
                    b.weight,
                    metrics
                        .upstream_connections_active
                        .with_label_values(&labels),
                    metrics.backend_up.with_label_values(&labels),
                );
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
            notifier: cfg
                .notify
                .as_ref()
                .map(|n| Notifier::spawn(n.webhook.clone(), metrics.clone())),
            cfg,
            backends,
            store,
            lookups,
            metrics,
        };
        pool.rebuild_ring();
        pool
    }

    /// Recompute the ring after a change in health, drain or membership: only
    /// backends that take new sessions are on it (rule 3).
    pub fn rebuild_ring(&self) {
        let mut members = Vec::new();
        let mut backend_of = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            if b.takes_new() {
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

    /// Apply a health transition (active check or passive failures).
    pub fn mark_health(&self, idx: usize, h: Health, cause: &'static str) {
        let Some(b) = self.backends.get(idx) else {
            return;
        };
        let old = b.set_health(h);
        if old == h {
            return;
        }
        match h {
            Health::Down => {
                tracing::warn!(pool = %self.cfg.name, backend = %b.id, cause, "backend down")
            }
            _ => {
                tracing::info!(pool = %self.cfg.name, backend = %b.id, cause, state = h.as_str(), "backend state")
            }
        }
        self.rebuild_ring();
        if h == Health::Down && self.cfg.on_backend_down == config::OnBackendDown::Migrate {
            // Frozen or blackholed backends keep their sockets open: only we can end them.
            b.close_tunnels(CloseReason::Moved, Duration::ZERO);
        }
    }

    /// Drain backend `idx`: no new sessions now; at the deadline its sessions
    /// move (reason `drain`) and its live connections close, spread out.
    pub fn drain(self: &Arc<Self>, idx: usize, deadline: Duration) -> Option<()> {
        let b = self.backends.get(idx)?.clone();
        let token = b.start_drain(deadline);
        tracing::info!(pool = %self.cfg.name, backend = %b.id, ?deadline, "draining");
        self.rebuild_ring();
        let pool = Arc::downgrade(self);
        let end = tokio::time::Instant::now() + deadline;
        tokio::spawn(async move {
            let notice = pool
                .upgrade()
                .and_then(|p| p.cfg.notify.as_ref().map(|n| n.before));
            if let Some(before) = notice {
                tokio::time::sleep_until(end.checked_sub(before).unwrap_or(end)).await;
                if let Some(p) = pool.upgrade().filter(|_| b.drain_is(token)) {
                    if let Some(n) = &p.notifier {
                        let left = end.saturating_duration_since(tokio::time::Instant::now());
                        let at = crate::store::now_ms() + left.as_millis() as u64;
                        n.drain_pending(&p.cfg.name, &b.id, at, p.store.sessions_of(&b.id));
                    }
                }
            }
            tokio::time::sleep_until(end).await;
            if let Some(p) = pool.upgrade().filter(|_| b.drain_is(token)) {
                b.close_tunnels(CloseReason::Moved, p.cfg.close_spread);
            }
        });
        Some(())
    }

    /// Undo a drain: back in rotation.
    pub fn enable(&self, idx: usize) -> Option<()> {
        let b = self.backends.get(idx)?;
        b.stop_drain();
        tracing::info!(pool = %self.cfg.name, backend = %b.id, "enabled");
        self.rebuild_ring();
        Some(())
    }

    /// Another live backend for a retry of one request, avoiding `tried` (no re-pin).
    pub fn pick_alternative(&self, key_hash: u64, tried: &[usize]) -> Option<usize> {
        let el = self.eligible.load();
        let m = el.ring.pick_bounded(key_hash, |m| {
            !tried.contains(&el.backend_of[m]) && self.backends[el.backend_of[m]].takes_new()
        })?;
        el.backend_of
            .get(m)
            .copied()
            .filter(|&i| !tried.contains(&i) && self.backends[i].takes_new())
    }

    /// Do request outcomes count towards marking backends down? (Without active
    /// checks nothing would bring a passively downed backend back.)
    pub fn passive_enabled(&self) -> bool {
        self.cfg.health.passive.enabled && !matches!(self.cfg.health.kind, config::HealthKind::None)
    }

    /// Do 5xx answers count as passive failures?
    pub fn passive_5xx(&self) -> bool {
        self.passive_enabled() && self.cfg.health.passive.on_5xx
    }

    /// Slow start: may a new session with hash `h` land on backend `i` yet?
    /// Decided from the key's own bits, so every instance agrees.
    fn ramped(&self, i: usize, h: u64) -> bool {
        let ss = self.cfg.health.slowstart;
        if ss.is_zero() {
            return true;
        }
        let ramp = crate::health::slowstart_ramp(self.backends[i].since_revived(), ss);
        // The top bits pick the ring slot; the low 32 bits are independent of it.
        ramp >= 1.0 || ((h & 0xffff_ffff) as f64 / 4_294_967_296.0) < ramp
    }

    pub fn backend_index(&self, id: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.id == id)
    }

    pub fn backend(&self, id: &str) -> Option<&Arc<BackendRt>> {
        self.backends.iter().find(|b| &*b.id == id)
    }

    /// The hot path: a cached owner that is still usable and has no move to
    /// announce. No I/O, no allocation, no lock beyond the store's shard read.
    pub fn route_hit(&self, key: &str) -> Option<Decision> {
        let hit = self.store.lookup(key)?;
        if hit.moved.is_some() || self.wants_failback(&hit).is_some() {
            return None;
        }
        let b = self.backend(&hit.backend).filter(|b| b.keeps_sessions())?;
        self.lookups.hit.inc();
        Some(self.decide(b.clone(), hit, None))
    }

    /// With `failback: return`, the home backend to move a session back to, once
    /// it takes sessions again.
    fn wants_failback(&self, hit: &Hit) -> Option<usize> {
        if self.cfg.failback != config::Failback::Return {
            return None;
        }
        let home = hit
            .home
            .as_ref()
            .filter(|h| h.as_ref() != hit.backend.as_ref())?;
        let i = self.backend_index(home)?;
        self.backends[i].takes_new().then_some(i)
    }

    /// Route a request carrying session key `key` (rules 2, 3, 4, 6).
    pub async fn route(&self, key: &str) -> Result<Decision, StoreError> {
        if let Some(d) = self.route_hit(key) {
            return Ok(d);
        }
        if let Some(hit) = self.store.lookup(key) {
            if let Some(home) = self.wants_failback(&hit) {
                return self.relocate(key, hit, home, MoveReason::Failback).await;
            }
            if self
                .backend(&hit.backend)
                .is_some_and(|b| b.keeps_sessions())
            {
                return self.follow(key).await;
            }
            return self.repin(key, hit).await;
        }
        let Some(idx) = self.pick(key) else {
            return Ok(self.no_backend());
        };
        let hit = self
            .store
            .insert_if_absent(key, self.backends[idx].id.clone())
            .await?;
        self.lookups.new.inc();
        match self.backend(&hit.backend).filter(|b| b.keeps_sessions()) {
            Some(b) => Ok(self.decide(b.clone(), hit, None)),
            // Another instance won the race with a backend we cannot use: move it.
            None => self.repin(key, hit).await,
        }
    }

    fn no_backend(&self) -> Decision {
        self.metrics
            .no_backend
            .with_label_values(&[&*self.cfg.name])
            .inc();
        Decision::NoBackend
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

    fn decide(
        &self,
        backend: Arc<BackendRt>,
        hit: Hit,
        moved: Option<(Arc<str>, MoveReason)>,
    ) -> Decision {
        Decision::Backend {
            backend,
            live: Some(LiveGuard::new(hit.meta)),
            moved,
        }
    }

    /// The pool hash's choice for `key` over the eligible backends, honouring
    /// bounded load and slow start.
    fn pick(&self, key: &str) -> Option<usize> {
        let el = self.eligible.load();
        let h = hash_key(key.as_bytes());
        let cap = self.cfg.bounded_load.map(|c| {
            let n = el.backend_of.len() as f64;
            let total: u64 = el
                .backend_of
                .iter()
                .map(|&i| self.store.sessions_of(&self.backends[i].id))
                .sum();
            (c * (total + 1) as f64 / n).ceil() as u64
        });
        // `takes_new` again here: a backend marked down a moment ago may still be
        // on this ring until `mark_health` has rebuilt it.
        let m = el.ring.pick_bounded(h, |m| {
            let i = el.backend_of[m];
            let b = &self.backends[i];
            b.takes_new()
                && cap.is_none_or(|cap| self.store.sessions_of(&b.id) < cap)
                && self.ramped(i, h)
        })?;
        let i = el.backend_of.get(m).copied()?;
        if self.backends[i].takes_new() {
            return Some(i);
        }
        // Every candidate refused: the plain pick is only good if it takes sessions.
        el.backend_of
            .iter()
            .copied()
            .find(|&i| self.backends[i].takes_new())
    }

    /// The pinned backend is unusable: move the session to the hash's choice
    /// among live backends (rule 4).
    async fn repin(&self, key: &str, old: Hit) -> Result<Decision, StoreError> {
        let Some(idx) = self.pick(key) else {
            return Ok(self.no_backend());
        };
        let reason = match self.backend(&old.backend) {
            None => MoveReason::Removed,
            Some(b) if b.health() == Health::Down => MoveReason::Down,
            Some(_) => MoveReason::Drain,
        };
        self.relocate(key, old, idx, reason).await
    }

    /// Move `key` from `old` to backend `idx` by compare-and-set, then follow
    /// whatever owner the store settled on (another instance may have won).
    async fn relocate(
        &self,
        key: &str,
        old: Hit,
        idx: usize,
        reason: MoveReason,
    ) -> Result<Decision, StoreError> {
        let to = self.backends[idx].clone();
        let mut rec = Session::new(to.id.clone());
        rec.moved_from = Some(old.backend.clone());
        rec.move_reason = Some(reason);
        // Remember where a session came from while its home may come back.
        rec.home = match reason {
            MoveReason::Down | MoveReason::Drain => {
                old.home.clone().or_else(|| Some(old.backend.clone()))
            }
            MoveReason::Removed | MoveReason::Failback => None,
        };
        if self.store.compare_and_set(key, &old.backend, rec).await? {
            self.lookups.moved.inc();
            self.metrics
                .session_moves
                .with_label_values(&[&*self.cfg.name, &*old.backend, &*to.id, reason.as_str()])
                .inc();
            if let Some(n) = &self.notifier {
                n.moved(&self.cfg.name, &old.backend, &to.id, reason);
            }
        }
        self.follow(key).await
    }

    /// Route to the owner the store holds now, announcing a pending move once.
    async fn follow(&self, key: &str) -> Result<Decision, StoreError> {
        let Some(hit) = self.store.lookup(key) else {
            return Ok(self.no_backend());
        };
        let Some(b) = self
            .backend(&hit.backend)
            .filter(|b| b.keeps_sessions())
            .cloned()
        else {
            return Ok(self.no_backend());
        };
        self.lookups.hit.inc();
        let moved = match &hit.moved {
            Some(_) if self.store.take_moved(key, &hit.backend).await? => hit.moved.clone(),
            _ => None,
        };
        Ok(self.decide(b, hit, moved))
    }

    /// Time since `backend` went down (for the move-latency histogram).
    pub fn observe_move(&self, from: &str, reason: MoveReason) {
        if reason != MoveReason::Down {
            return;
        }
        if let Some(d) = self.backend(from).and_then(|b| b.since_change()) {
            self.metrics
                .move_latency
                .with_label_values(&[&*self.cfg.name])
                .observe(d.as_secs_f64());
        }
    }
}
